"""Shared output of the benchmark scripts: one table on stdout, optional JSON rows.

Every benchmark builds rows ``{"benchmark", "size", "time_s", "ratio", "note"}``
(``ratio`` is the headline ratio of that row, e.g. ours / baseline; ``note``
says what it compares) and calls :func:`emit`. ``--json PATH`` writes the rows
so that ``gpu_table.py`` (run by ``gpu_check.sh``) can assemble one table over
CPU and CUDA runs.

``--device`` is checked when the arguments are parsed: asking for ``cuda``
where torch sees no CUDA device exits at once (status 2) with a clear message
instead of failing deep inside torch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable


def device_argument(value: str) -> str:
    """argparse ``type`` of ``--device``: ``cpu``, ``cuda`` or ``cuda:K``, checked to exist."""
    value = value.strip()
    if value.startswith("cuda"):
        import torch  # only here: importing torch for "cpu" would fix its thread pools early

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{value!r} requested but torch {torch.__version__} sees no CUDA device "
                f"(torch.cuda.is_available() is False)"
            )
        index = value.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise argparse.ArgumentTypeError(
                f"{value!r}: no such CUDA device ({torch.cuda.device_count()} visible)"
            )
    elif value != "cpu":
        raise argparse.ArgumentTypeError(f"unknown device {value!r}; use cpu, cuda or cuda:K")
    return value


def sync(device) -> None:
    """Wait for the queued CUDA work of ``device`` (nothing on the CPU)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def clock_for(device) -> Callable[[], float]:
    """The clock of the timings: wall clock on CUDA; on the CPU the process's CPU time, which
    the other jobs of a shared machine do not inflate (with one torch thread it equals the
    busy wall time)."""
    return time.perf_counter if str(device).startswith("cuda") else time.process_time


def time_rounds(fns: dict[str, Callable[[], object]], device, rounds: int, *,
                warmup: bool = True,
                clock: Callable[[], float] | None = None) -> dict[str, list[float]]:
    """Per-round times of every function of ``fns``, run back to back in each round
    (round-robin, after one warm-up call each unless ``warmup`` is False), so that ratios of
    the same round share the machine's state. ``clock``: :func:`clock_for` by default."""
    clock = clock or clock_for(device)
    if warmup:
        for fn in fns.values():
            fn()
        sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = clock()
            fn()
            sync(device)
            times[k].append(clock() - t)
    return times


def median_ratio(times: dict[str, list[float]], key: str, base: str) -> float:
    """Median over rounds of ``times[key] / times[base]`` (the per-round ratio)."""
    return statistics.median(a / b for a, b in zip(times[key], times[base], strict=True))


def add_common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--quick``, ``--device`` and ``--json`` shared by every benchmark."""
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument(
        "--device", default="cpu", type=device_argument, help="cpu, cuda or cuda:K"
    )
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
