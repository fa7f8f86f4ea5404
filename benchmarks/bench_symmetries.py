"""Symmetry analysis of ResNet-50 and GPT-2 small against Torch-Pruning and torch.export.

    python benchmarks/bench_symmetries.py [--quick] [--device cpu] [--repeats N] [--json PATH]

Times are CPU process time on ``--device cpu`` (other processes on a shared machine do not
count; use ``OMP_NUM_THREADS=1``), wall time after a synchronisation on CUDA; warm columns
are the median of N rounds. For each model (random init, eval mode) one run measures:

- ``ours cold``: ``find_symmetries(verify=False)`` with the trace cache cleared (it exports),
  after one warm-up export of a toy model, so that the one-time import cost of the exporter
  counts for neither side;
- ``export``: then a plain first call of ``torch.export.export(strict=False)`` on a copy of
  the model (second, so whatever the first export warmed up favours the baseline);
- ``ours``: ``find_symmetries(verify=False)`` again (the export is cached);
- ``ours + verify``: ``find_symmetries(verify=True)`` after the first call;
- ``forward``: one plain forward pass of the model (no grad), the unit of the verification;
- ``TP``: Torch-Pruning's ``DependencyGraph().build_dependency`` + ``get_all_groups``.

Printed ratios: ours / TP (issue 13 target: <= 2 without verification), ours cold / TP,
ours cold / export, ours + verify / 5 s (target: < 1) and ours + verify / forward (how many
forward passes the verification costs: the reference, the composite element of the exact
symmetries, the one of the approximate ones, plus parameter traffic); the largest
verification error of an exact symmetry is printed with the tolerance. ``--json`` writes
the rows.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import _torchvision_shim
import torch
from _report import add_common_arguments, emit
from torch import nn

from thermanopt.analysis import find_symmetries

_torchvision_shim.install()  # before torchvision or transformers (which imports it) loads

VERIFY_TARGET_S = 5.0
TP_TARGET = 2.0


def _resnet50(quick: bool) -> tuple[nn.Module, tuple]:
    from torchvision.models import resnet50

    size = 64 if quick else 224
    return resnet50(weights=None).eval(), (torch.randn(1, 3, size, size),)


def _gpt2(quick: bool) -> tuple[nn.Module, tuple]:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(use_cache=False)).eval()
    return model, (torch.randint(0, 50257, (1, 16 if quick else 64)),)


def _clock(device: str) -> Callable[[], float]:
    """CPU process time on the CPU; wall time after a synchronisation on CUDA."""
    if device.startswith("cuda"):
        def wall() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()
        return wall
    return time.process_time


CLOCK: Callable[[], float] = time.process_time


def _seconds(fn: Callable[[], object]) -> float:
    t = CLOCK()
    fn()
    return CLOCK() - t


def _median(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(_seconds(fn) for _ in range(repeats))


def _clear_trace_cache() -> None:
    from thermanopt.analysis import tracing

    if hasattr(tracing, "clear_cache"):
        tracing.clear_cache()


def _warm_up_export() -> None:
    toy = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.export.export(toy, (torch.randn(1, 4),), strict=False)


def _torch_pruning_seconds(model: nn.Module, inputs: tuple, repeats: int) -> float | None:
    try:
        import torch_pruning as tp
    except ImportError:
        print("  Torch-Pruning: not installed (pip install torch-pruning)")
        return None

    def build() -> None:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
        list(graph.get_all_groups())

    try:
        return _median(build, repeats)
    except Exception as e:  # noqa: BLE001 - report and go on with the other columns
        print(f"  Torch-Pruning failed: {type(e).__name__}: {e}")
        return None


def measure(model: nn.Module, inputs: tuple, repeats: int) -> dict:
    """Seconds of each column for one model (see the module docstring)."""
    out = {"params": sum(p.numel() for p in model.parameters())}
    _clear_trace_cache()
    report = None

    def cold() -> None:
        nonlocal report
        report = find_symmetries(model, inputs, verify=False)

    out["cold"] = _seconds(cold)
    # second: it may reuse what the first export warmed up
    out["export"] = _seconds(lambda: torch.export.export(copy.deepcopy(model), inputs,
                                                         strict=False))
    out["ours"] = _median(lambda: find_symmetries(model, inputs, verify=False), repeats)
    verified = []
    out["verify"] = _median(lambda: verified.append(find_symmetries(model, inputs)), repeats)
    with torch.no_grad():
        out["forward"] = _median(lambda: model(*inputs), repeats)
    out["tp"] = _torch_pruning_seconds(model, inputs, repeats)
    exact = [s.verified_error for s in verified[-1].symmetries if not s.approximate]
    out["error"] = max(exact, default=0.0)
    out["verification"] = verified[-1].verification
    out["failed"] = [s.group for s in verified[-1].symmetries if s.verified is False]
    out["groups"] = len(report.by_kind("permutation"))
    out["unhandled"] = list(getattr(report, "unhandled_ops", []))
    return out


def _rows(name: str, m: dict, device: str) -> list[dict]:
    size = f"{m['params'] / 1e6:.1f}M params"
    rows = []
    if m["tp"]:
        rows.append({"benchmark": f"symmetries {name}: ours / Torch-Pruning", "size": size,
                     "time_s": m["ours"], "ratio": m["ours"] / m["tp"],
                     "note": f"verify=False, cached export; TP {m['tp']:.3f} s; target <= "
                             f"{TP_TARGET:g}; {m['groups']} permutation groups; {device}"})
    if m["tp"]:
        rows.append({"benchmark": f"symmetries {name}: first call / TP", "size": size,
                     "time_s": m["cold"], "ratio": m["cold"] / m["tp"],
                     "note": "verify=False, trace cache cleared (includes the export)"})
    rows.append({"benchmark": f"symmetries {name}: first call / export", "size": size,
                 "time_s": m["cold"], "ratio": m["cold"] / m["export"],
                 "note": f"verify=False, trace cache cleared; torch.export {m['export']:.2f} s"})
    rows.append({"benchmark": f"{name}: verify / 5 s", "size": size,
                 "time_s": m["verify"], "ratio": m["verify"] / VERIFY_TARGET_S,
                 "note": "verify=True after the first call; target < 1"})
    rows.append({"benchmark": f"{name}: verify / forward", "size": size,
                 "time_s": m["verify"], "ratio": m["verify"] / m["forward"],
                 "note": f"one forward pass {m['forward']:.3f} s; max exact error "
                         f"{m['error']:.1e}, {m['verification']}; failed: {m['failed']}"})
    return rows


def main() -> list[dict]:
    ap = add_common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--repeats", type=int, default=3, help="best of N for the warm timings")
    a = ap.parse_args()
    repeats = 1 if a.quick else a.repeats
    global CLOCK
    CLOCK = _clock(a.device)
    _warm_up_export()
    header = (f"{'model':<12}{'params':>12}{'export':>9}{'cold':>8}{'ours':>8}{'+verify':>9}"
              f"{'fwd':>7}{'TP':>8}{'ours/TP':>9}{'cold/TP':>9}{'cold/exp':>9}"
              "  groups, unhandled ops")
    print(header)
    rows = []
    for name, make in (("ResNet-50", _resnet50), ("GPT-2 small", _gpt2)):
        try:
            model, inputs = make(a.quick)
        except ImportError as e:
            print(f"{name:<12} skipped: {e}")
            continue
        model, inputs = model.to(a.device), tuple(x.to(a.device) for x in inputs)
        m = measure(model, inputs, repeats)
        tp, ratio, cold = ("-",) * 3 if m["tp"] is None else (
            f"{m['tp']:.3f}", f"{m['ours'] / m['tp']:.2f}", f"{m['cold'] / m['tp']:.2f}")
        print(f"{name:<12}{m['params']:>12,}{m['export']:>9.2f}{m['cold']:>8.2f}"
              f"{m['ours']:>8.3f}{m['verify']:>9.2f}{m['forward']:>7.2f}{tp:>8}{ratio:>9}{cold:>9}"
              f"{m['cold'] / m['export']:>9.2f}  {m['groups']}, {m['unhandled']}")
        rows += _rows(name, m, a.device)
    print()
    return emit(rows, a.json, title="summary")


if __name__ == "__main__":
    main()
