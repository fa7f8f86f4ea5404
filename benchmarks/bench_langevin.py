"""Benchmark: Riemannian Langevin chain-steps per second and cost of a step (width 8).

Measures, in one run, on one device (balanced manifold, depth 3, 4096 batched chains,
gradient of a batched cost: one autograd call for all chains):

- ``step / (svd + grad)``: the time of one sampler step over the time of one batched SVD of
  all chains' end-to-end matrices plus one batched cost gradient (machine-independent: the
  headline ratio; issue 12 asks for <= 3). A step is the time of ``sample`` (``--steps``
  steps, ``validate=False``) divided by the steps, so the once-per-call setup (the frames
  of the initial points: one SVD) is spread over them;
- ``chain-steps/s``: chains * steps / time of ``sample`` (the ratio column is chain-steps
  per second; issue 12 asks for >= 3 x 5113 on the machine where 5113 was measured);
- the per-chain loop over gradients (few chains), giving the speed-up of batching, and the
  observable quotient (quotient / balanced chain-steps per second).

Before/after in one run: ``--before REV`` (default ``26ab453``, the state before issue 12's
speed work on the sampler) extracts ``thermanopt/`` of that git revision into a temporary
directory, imports it as a second package (``thermanopt_before``) and times its sampler
beside the current one, round-robin on the same chains; ``--no-before`` skips it. Each round
times the baseline, "after" and "before" back to back; a ratio is the median over rounds of
the per-round ratios and a time the median (robust to the drifting load of a shared
machine). Times are CPU time of the process on the CPU (one torch thread: busy wall time)
and wall clock on CUDA.

Usage::

    python benchmarks/bench_langevin.py [--quick] [--device cpu|cuda] [--dtype float32]
        [--width 8] [--depth 3] [--chains 4096] [--steps 10] [--repeats 7] [--threads k]
        [--before REV | --no-before] [--json PATH]

Prints a table (no assertions on timings).
"""

from __future__ import annotations

import argparse
import statistics

import pymanopt
import torch
from _before import load_package, submodule  # noqa: E402
from _report import add_common_arguments, clock_for, emit, median_ratio, sync, time_rounds  # noqa: E402

import thermanopt
import thermanopt.function
from thermanopt.manifolds import balanced_from, end_to_end


def _problem(package, manifold, target, balanced: bool):
    @thermanopt.function.torch(manifold)
    def cost(x):
        X = package.manifolds.end_to_end(x) if balanced else x
        return 0.5 * ((X - target) ** 2).sum()

    return pymanopt.Problem(manifold, cost)


class _Case:
    """A sampler of one package on the benchmark's balanced chains."""

    def __init__(self, package, d, N, dtype, device, target, W0):
        submodule(package, "optimizers")
        M = package.manifolds.BalancedManifold(d, N, backend="torch", device=device, dtype=dtype)
        self.problem = _problem(package, M, target, True)
        self.sampler = package.optimizers.RiemannianLangevin(0.1, 1e-3)
        self.W0 = W0

    def run(self, steps: int, chains: int, batched: bool = True, seed: int = 1) -> None:
        self.sampler.sample(
            self.problem,
            self.W0[:chains],
            steps,
            n_chains=chains,
            thin=steps,
            generator=seed,
            batched_cost=batched,
            validate=False,
        )


def main(argv=None) -> list[dict]:
    ap = add_common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--chains", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=None, help="sampler steps per round")
    ap.add_argument("--repeats", type=int, default=None, help="rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--before", default="26ab453", help="git revision of 'before'")
    ap.add_argument("--no-before", action="store_true", help="skip the 'before' timing")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype, device = getattr(torch, args.dtype), args.device
    d, N = args.width, args.depth
    chains = 512 if args.quick else args.chains
    steps = args.steps or (2 if args.quick else 10)
    repeats = args.repeats or (3 if args.quick else 7)
    g = torch.Generator(device=device).manual_seed(0)
    X0 = torch.eye(d, dtype=dtype, device=device) + 0.3 * torch.randn(
        (chains, d, d), generator=g, dtype=dtype, device=device
    )
    target = torch.eye(d, dtype=dtype, device=device)
    W0 = balanced_from(X0, None, N)
    ours = _Case(thermanopt, d, N, dtype, device, target, W0)
    before = None if args.no_before else load_package(args.before)
    X = end_to_end(W0)

    def base():  # one step's irreducible work, `steps` times
        for _ in range(steps):
            torch.linalg.svd(X, full_matrices=False)
            ours.problem.euclidean_gradient(W0)

    fns = {"base": base, "after": lambda: ours.run(steps, chains)}
    if before is not None:
        old = _Case(before, d, N, dtype, device, target, W0)
        fns["before"] = lambda: old.run(steps, chains)
    t = time_rounds(fns, device, repeats)
    size = f"d{d} N{N} B{chains}"
    rate = {k: chains * steps / statistics.median(t[k]) for k in fns if k != "base"}
    rows = []
    for key in [k for k in ("after", "before") if k in t]:
        rows += [
            {
                "benchmark": f"langevin step / (svd + grad) {key}",
                "size": size,
                "time_s": statistics.median(t[key]) / steps,
                "ratio": median_ratio(t, key, "base"),
                "note": "time of a step / (batched SVD of X + batched gradient); target <= 3",
            },
            {
                "benchmark": f"langevin chain-steps/s {key}",
                "size": size,
                "time_s": statistics.median(t[key]) / (steps * chains),
                "ratio": rate[key],
                "note": "chain-steps per second (time_s: per chain-step)",
            },
        ]
    if before is not None:
        rows.append(
            {
                "benchmark": "langevin speed-up after / before",
                "size": size,
                "time_s": statistics.median(t["after"]) / steps,
                "ratio": median_ratio(t, "before", "after"),
                "note": f"before = {args.before}; same chains, same rounds",
            }
        )
    rows += _other_rows(ours, d, N, dtype, device, target, X0, chains, steps, rate["after"])
    emit(
        rows,
        args.json,
        title=f"Riemannian Langevin, {args.dtype}, {device}, {steps} steps x {repeats} rounds "
        f"(median; {rate['after']:.0f} balanced chain-steps/s)",
    )
    return rows


def _other_rows(ours, d, N, dtype, device, target, X0, chains, steps, r_batched):
    """The per-chain gradient loop and the quotient, against the batched balanced rate."""
    loop_chains = 8 if chains <= 512 else 32
    clock = clock_for(device)
    ours.run(1, loop_chains, batched=False)
    t0 = clock()
    ours.run(steps, loop_chains, batched=False)
    sync(device)
    r_loop = loop_chains * steps / (clock() - t0)
    mode = ours.sampler.log["gradient_mode"]
    Mq = thermanopt.manifolds.ObservableQuotient(d, N, backend="torch", device=device, dtype=dtype)
    pq = _problem(thermanopt, Mq, target, False)
    sampler = thermanopt.optimizers.RiemannianLangevin(0.1, 1e-3)
    sampler.sample(pq, X0, 1, n_chains=chains, generator=0, batched_cost=True, validate=False)
    t0 = clock()
    sampler.sample(
        pq, X0, steps, n_chains=chains, thin=steps, generator=1, batched_cost=True, validate=False
    )
    sync(device)
    r_quot = chains * steps / (clock() - t0)
    return [
        {
            "benchmark": f"langevin balanced {mode}",
            "size": f"d{d} N{N} B{loop_chains}",
            "time_s": 1.0 / r_loop,
            "ratio": r_batched / r_loop,
            "note": f"speed-up of batching per chain-step (gradient {mode})",
        },
        {
            "benchmark": "langevin quotient batched",
            "size": f"d{d} N{N} B{chains}",
            "time_s": 1.0 / r_quot,
            "ratio": r_quot / r_batched,
            "note": "quotient / balanced chain-steps per second",
        },
    ]


if __name__ == "__main__":
    main()
