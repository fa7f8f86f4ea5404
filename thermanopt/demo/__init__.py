"""``thermanopt demo``: the end-to-end demonstration behind the README's first command.

Each stage calls public library functions only, shows a progress bar, and
returns its numbers and figures; the report folder gets ``report.md``, the PNG
figures and ``results.json`` with every number. A stage whose capability is
not importable is listed in the report as missing and skipped, never faked.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["run_demo", "summary_table", "resolve_nproc", "Stage", "STAGES"]


@dataclass
class StageResult:
    """Numbers, figure paths and prose of one demo stage."""

    numbers: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    text: str = ""


@dataclass
class Context:
    """What every stage gets: output folder, device, size switch, seed, progress
    bar, ``shared`` (results earlier stages hand to later ones) and ``nproc``, the number
    of processes a stage may spread its work over (the Langevin chains)."""

    out: Path
    device: str
    quick: bool
    seed: int
    progress: Any = None
    shared: dict[str, Any] = field(default_factory=dict)
    nproc: int = 1

    def tick(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress.update(n)

    def set_total(self, total: int) -> None:
        """Set the number of ticks the running stage will make (its bar's total)."""
        if self.progress is not None:
            self.progress.total = int(total)
            self.progress.refresh()


@dataclass
class Stage:
    """A demo stage: ``run(ctx) -> StageResult`` with ``steps`` progress ticks."""

    key: str
    title: str
    requires: tuple[str, ...]
    run: Callable[[Context], StageResult]
    steps: int = 1


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)


def _missing(requires: tuple[str, ...]) -> list[str]:
    import importlib

    missing = []
    for spec in requires:
        module, _, attr = spec.partition(":")
        try:
            mod = importlib.import_module(module)
            if attr:
                getattr(mod, attr)
        except (ImportError, AttributeError):
            missing.append(spec)
    return missing


# ---------------------------------------------------------------- stage 0


def _stage_backend(ctx: Context) -> StageResult:
    """Pymanopt's TrustRegions on torch tensors through thermanopt.function.torch."""
    import numpy as np
    import pymanopt
    import torch
    from pymanopt.optimizers import TrustRegions

    import thermanopt.function
    from thermanopt.manifolds import Sphere

    device, seed = ctx.device, ctx.seed
    n = 64 if ctx.quick else 512
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((n, n))
    A = torch.as_tensor((B + B.T) / 2, device=device)
    manifold = Sphere(n, backend="torch", device=device)

    @thermanopt.function.torch(manifold)
    def cost(x):
        return -x @ A @ x

    problem = pymanopt.Problem(manifold, cost)
    t0 = time.perf_counter()
    result = TrustRegions(verbosity=0, max_iterations=100).run(
        problem, initial_point=manifold.random_point(generator=seed)
    )
    elapsed = time.perf_counter() - t0
    lam = float(torch.linalg.eigvalsh(A)[-1])
    ctx.tick()
    numbers = {
        "size": n,
        "device": str(result.point.device),
        "iterations": int(result.iterations),
        "wall_time_s": elapsed,
        "eigenvalue_error": abs(-result.cost - lam),
        "gradient_norm": float(result.gradient_norm),
    }
    text = (
        f"Leading eigenvector of a {n}x{n} symmetric matrix on the sphere, solved by Pymanopt's "
        f"unmodified TrustRegions with torch tensors on `{numbers['device']}` in "
        f"{numbers['iterations']} iterations ({elapsed:.2f} s); eigenvalue error "
        f"{numbers['eigenvalue_error']:.2e}."
    )
    return StageResult(numbers=numbers, text=text)


def _lazy(module: str, name: str) -> Callable[[Context], StageResult]:
    def run(ctx: Context) -> StageResult:
        import importlib

        return getattr(importlib.import_module(f"thermanopt.demo.{module}"), name)(ctx)

    return run


STAGES: list[Stage] = [
    Stage(
        "backend",
        "Pymanopt on torch tensors (device-native backend)",
        ("thermanopt.function",),
        _stage_backend,
    ),
    Stage(
        "geometry",
        "1. Geometry: matrix sensing on the DLN manifolds vs Euclidean Adam",
        ("thermanopt.manifolds:ObservableQuotient", "thermanopt.manifolds:BalancedManifold"),
        _lazy("geometry", "stage_geometry"),
        steps=3,
    ),
    Stage(
        "entropy",
        "2. Entropy: the Boltzmann entropy of the deep linear network",
        ("thermanopt.entropy:dln_entropy",),
        _lazy("geometry", "stage_entropy"),
        steps=2,
    ),
    Stage(
        "free_energy",
        "3. Free energy: entropy-regularised minimisers against the exact 1-D reduction",
        ("thermanopt.optimizers:FreeEnergyDescent", "thermanopt.entropy:dln_entropy"),
        _lazy("thermo", "stage_free_energy"),
        steps=4,
    ),
    Stage(
        "sampling",
        "4. Sampling: Riemannian Langevin on the balanced manifold, pushed to X",
        ("thermanopt.optimizers:RiemannianLangevin", "thermanopt.entropy.gibbs"),
        _lazy("thermo", "stage_sampling"),
        steps=2,
    ),
    Stage(
        "symmetry",
        "5. Symmetry: automatic symmetry analysis and symmetry breaking under SGD",
        ("thermanopt.analysis:find_symmetries", "thermanopt.analysis:track_breaking"),
        _lazy("symmetry", "stage_symmetry"),
        steps=3,
    ),
]


def _finite(obj: Any) -> bool:
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def _headline(key: str, numbers: dict[str, Any]) -> str:
    """One short result per stage for the final summary."""
    try:
        if key == "backend":
            return f"eigenvalue error {numbers['eigenvalue_error']:.1e}"
        if key == "geometry":
            q = numbers["TrustRegions on ObservableQuotient"]
            a = numbers["Euclidean Adam on the factors"]
            return (f"TrustRegions loss {q['final_loss']:.1e}; Adam min {a['min_loss']:.1e}, "
                    f"final {a['final_loss']:.1e}")
        if key == "entropy":
            angles = {k: v["max_at_angle_deg"] for k, v in numbers.items()
                      if k.endswith("_on_circle")}
            return "max of S at fixed |X|_F: " + ", ".join(
                f"{k.split('_')[1]}: {v:.0f} deg" for k, v in angles.items())
        if key == "free_energy":
            return f"max error vs exact 1-D reduction {numbers['max_abs_error']:.1e}"
        if key == "sampling":
            d = [numbers[f"depth_{N}_largest"] for N in numbers["depths"]]
            return "CDF gap with / without entropy: " + ", ".join(
                f"{x['cdf_distance_to_gibbs_law']:.2f} / {x['cdf_distance_to_no_entropy_law']:.2f}"
                for x in d)
        if key == "symmetry":
            sgd = numbers["breaking[SGD, batch 2]"]
            return (f"MLP complete: {numbers['relu_mlp']['complete']}; SGD rescale "
                    f"{sgd['rescale_verdict']}, GD "
                    f"{numbers['breaking[full-batch GD]']['rescale_verdict']}")
    except (KeyError, TypeError, ValueError):
        pass
    return ""


def summary_table(results: dict[str, Any]) -> str:
    """Aligned text table of a :func:`run_demo` result: stage, time, figures, headline."""
    rows = []
    for key, res in results["stages"].items():
        if "missing" in res:
            rows.append((key, "-", "-", "skipped: missing " + ", ".join(res["missing"])))
            continue
        n = res["numbers"]
        rows.append((key, f"{n.get('stage_time_s', 0.0):.1f} s", str(len(res["figures"])),
                     _headline(key, n)))
    head = ("stage", "time", "figures", "result")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]

    def line(r):
        return (f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}").rstrip()

    return "\n".join([line(head), "-" * len(line(head))] + [line(r) for r in rows])


def resolve_nproc(device: str, nproc: int | None = None) -> int:
    """Processes the demo runs its Langevin chains on.

    ``None``: every visible GPU when ``device`` is ``"cuda"`` (no index), else 1. A given
    number must be a positive integer; on CUDA each process takes one GPU (``cuda:0`` to
    ``cuda:{nproc-1}``), so ``nproc > 1`` needs ``device="cuda"`` and that many GPUs. On
    the CPU any number of gloo processes is allowed. ``ValueError`` otherwise.
    """
    import torch

    if nproc is None:
        return max(1, torch.cuda.device_count()) if device == "cuda" else 1
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive integer, got {nproc!r}")
    if nproc > 1 and device.startswith("cuda"):
        if device != "cuda":
            raise ValueError(f"nproc={nproc} uses cuda:0..cuda:{nproc - 1}; pass device "
                             f"'cuda' instead of {device!r}")
        if nproc > torch.cuda.device_count():
            raise ValueError(f"nproc={nproc} needs one GPU per process, but "
                             f"{torch.cuda.device_count()} CUDA device(s) are visible")
    return nproc


def run_demo(
    out: str = "thermanopt-demo", device: str = "cpu", quick: bool = False, seed: int = 0,
    nproc: int | None = None,
) -> dict[str, Any]:
    """Run every demo stage, write ``report.md``, figures and ``results.json`` to ``out``.

    ``out`` and ``device`` are checked before any stage runs (``ValueError``:
    a file in the way, an unwritable folder, an unknown or unavailable device).
    Each stage shows a progress bar whose total is its number of steps; a
    summary table follows the last stage. ``nproc`` (:func:`resolve_nproc`; by default
    every visible GPU with ``device="cuda"``, else 1) processes share the Langevin chains
    of the sampling stage (NCCL, one GPU each; gloo on the CPU); the figures are drawn
    from the gathered chains by this process. Library warnings and torch log
    records are captured into ``results["library_messages"]`` instead of being
    printed. Returns the JSON-able results: for each stage its numbers and
    figures, or ``{"missing": [...]}`` when its capability has not landed.
    """
    import torch

    from thermanopt.analysis.cli_support import captured_library_output, prepare_output_dir

    if not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but torch sees no CUDA device; use cpu")
    nproc = resolve_nproc(device, nproc)
    folder = prepare_output_dir(out)
    results: dict[str, Any] = {"device": device, "quick": quick, "seed": seed,
                               "processes": nproc, "stages": {}}
    ctx = Context(folder, device, quick, seed, nproc=nproc)
    lines = ["# thermanopt demo report", ""]
    t_start = time.perf_counter()
    with captured_library_output() as captured:
        for stage in STAGES:
            missing = _missing(stage.requires)
            lines += [f"## {stage.title}", ""]
            if missing:
                results["stages"][stage.key] = {"missing": missing}
                lines += [f"*Skipped: not available yet ({', '.join(missing)}).*", ""]
                print(f"[{stage.key}] skipped: missing {', '.join(missing)}")
                continue
            t0 = time.perf_counter()
            with _progress(stage.steps, stage.key) as bar:
                ctx.progress = bar
                res = stage.run(ctx)
            res.numbers["stage_time_s"] = time.perf_counter() - t0
            results["stages"][stage.key] = {"numbers": res.numbers, "figures": res.figures}
            lines += [res.text, ""]
            for fig in res.figures:
                lines += [f"![{stage.key}]({Path(fig).name})", ""]
    results["library_messages"] = list(captured)
    results["total_time_s"] = time.perf_counter() - t_start
    summary = summary_table(results)
    lines += ["## Summary", "", "```", summary, "```", ""]
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (folder / "report.md").write_text("\n".join(lines))
    n_fig = sum(len(r.get("figures", [])) for r in results["stages"].values())
    print()
    print(summary)
    print(
        f"\ndemo finished in {results['total_time_s']:.1f} s: {folder / 'report.md'}, "
        f"{folder / 'results.json'} and {n_fig} figures"
        + (f" ({len(captured)} library warning(s)/log record(s) captured in results.json)"
           if captured else "")
    )
    return results
