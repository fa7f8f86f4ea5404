"""One table over the CPU and CUDA runs of every benchmark (the GPU acceptance table).

Reads ``DIR/<name>.cpu.json`` and ``DIR/<name>.cuda.json`` (rows written by the
``--json`` option of ``benchmarks/bench_<name>.py``, see ``_report.py``), matches the
rows of the two runs by ``(benchmark, size)`` and prints one table::

    script | benchmark | size | CPU ratio | CUDA time [s] | CUDA ratio

A side without a matching row is shown as ``-``. A benchmark script with no JSON
at all is listed too, with the exit status ``gpu_check.sh`` recorded for it in
``DIR/<name>.<side>.rc`` (124 = timed out), so that a failed run is never silent.

Usage::

    python benchmarks/gpu_table.py [--markdown] DIR
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

SIDES = ("cpu", "cuda")


def _device_name() -> str:
    """``torch.cuda.get_device_name()`` when a CUDA device is visible, else a note."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "torch not installed"
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"no CUDA device visible (torch {torch.__version__})"


def _load(path: Path) -> list[dict] | None:
    if not path.exists():
        return None
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}: not valid JSON ({err})") from err
    if not isinstance(rows, list):
        raise SystemExit(f"{path}: expected a list of rows")
    return rows


def _status(directory: Path, name: str, side: str) -> str:
    rc_file = directory / f"{name}.{side}.rc"
    if not rc_file.exists():
        return "not run"
    rc = rc_file.read_text().strip()
    if rc == "skipped":
        return "skipped (gpu_check.sh time budget spent)"
    return "timed out" if rc in ("124", "137") else f"failed (exit {rc})"


def _names(directory: Path) -> list[str]:
    names = {p.name.split(".")[0] for p in directory.glob("*.json")}
    names |= {p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py")}
    return sorted(names)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def build_table(directory: Path) -> tuple[list[tuple[str, ...]], list[str]]:
    """Rows ``(script, benchmark, size, cpu ratio, cuda time, cuda ratio)`` and footnotes."""
    table, notes = [], []
    for name in _names(directory):
        runs = {side: _load(directory / f"{name}.{side}.json") for side in SIDES}
        for side in SIDES:
            if runs[side] is None:
                notes.append(f"{name} {side}: no results, {_status(directory, name, side)}")
        if all(r is None for r in runs.values()):
            table.append((name, "(no results)", "-", "-", "-", "-"))
            continue
        keyed: dict[tuple[str, str], dict[str, dict]] = {}
        for side in SIDES:
            for row in runs[side] or []:
                key = (str(row["benchmark"]), str(row["size"]))
                keyed.setdefault(key, {})[side] = row  # insertion order: CPU rows first
        for (bench, size), pair in keyed.items():
            cpu, cuda = pair.get("cpu"), pair.get("cuda")
            table.append((
                name, bench, size,
                _fmt(cpu and cpu["ratio"], ".2f"),
                _fmt(cuda and cuda["time_s"], ".3e"),
                _fmt(cuda and cuda["ratio"], ".2f"),
            ))  # fmt: skip
    return table, notes


HEADER = ("script", "benchmark", "size", "CPU ratio", "CUDA time [s]", "CUDA ratio")


def render(table: list[tuple[str, ...]], markdown: bool) -> str:
    """The table as aligned text or as a Markdown table."""
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * 3 + "---:|" * 3]
        lines += ["| " + " | ".join(row) + " |" for row in table]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [HEADER, *table]) for i in range(len(HEADER))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*HEADER), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*row) for row in table]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="folder with <name>.cpu.json / .cuda.json")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        parser.error(f"{args.directory} is not a directory")
    table, notes = build_table(args.directory)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    prefix = "- " if args.markdown else ""
    print(f"{prefix}date: {date}")
    print(f"{prefix}CUDA device: {_device_name()}")
    print(f"{prefix}results: {args.directory}")
    print()
    print(render(table, args.markdown))
    if notes:
        print()
        for note in notes:
            print(f"{prefix}{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
