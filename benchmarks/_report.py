"""Shared output of the benchmark scripts: one table on stdout, optional JSON rows.

Every benchmark builds rows ``{"benchmark", "size", "time_s", "ratio", "note"}``
(``ratio`` is the headline ratio of that row, e.g. ours / baseline; ``note``
says what it compares) and calls :func:`emit`. ``--json PATH`` writes the rows
so that ``gpu_check.py`` can assemble one table over CPU and CUDA runs.
"""

from __future__ import annotations

import argparse
import json


def add_common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--quick``, ``--device`` and ``--json`` shared by every benchmark."""
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")
    return parser


def emit(rows: list[dict], json_path: str | None = None, title: str = "") -> list[dict]:
    """Print ``rows`` as a table and optionally save them as JSON."""
    if title:
        print(title)
    print(f"{'benchmark':<34}{'size':>16}{'time [s]':>12}{'ratio':>10}  note")
    for r in rows:
        print(
            f"{r['benchmark']:<34}{str(r['size']):>16}{r['time_s']:>12.3e}"
            f"{r['ratio']:>10.2f}  {r.get('note', '')}"
        )
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows
