"""Benchmark: Riemannian Langevin chain-steps per second (width 8, 4096 batched chains).

Measures, in one run, on one device:

- balanced manifold (depth 3), gradient of a batched cost (one autograd call for all
  chains), 4096 chains;
- the same with the per-chain loop over gradients (few chains: the loop is slow),
  giving the speed-up of batching per chain-step;
- the observable quotient (second-order retraction scheme with the free-energy drift).

Usage::

    python benchmarks/bench_langevin.py [--quick] [--device cpu|cuda] [--dtype float32]
        [--width 8] [--depth 3] [--chains 4096] [--threads k] [--json PATH]

Prints a table of chain-steps per second and the ratios (no assertions on timings).
"""

from __future__ import annotations

import argparse
import time

import pymanopt
import torch
from _report import add_common_arguments, emit  # noqa: E402

import thermanopt.function
from thermanopt.manifolds import BalancedManifold, ObservableQuotient, balanced_from, end_to_end
from thermanopt.optimizers import RiemannianLangevin


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _problem(manifold, target, balanced: bool):
    @thermanopt.function.torch(manifold)
    def cost(x):
        X = end_to_end(x) if balanced else x
        return 0.5 * ((X - target) ** 2).sum()

    return pymanopt.Problem(manifold, cost)


def _rate(sampler, problem, x0, steps, chains, batched, device) -> float:
    sampler.sample(problem, x0, 2, n_chains=chains, generator=0, batched_cost=batched)  # warm-up
    _sync(device)
    t = time.perf_counter()
    sampler.sample(
        problem, x0, steps, n_chains=chains, thin=steps, generator=1, batched_cost=batched
    )
    _sync(device)
    return chains * steps / (time.perf_counter() - t)


def main() -> None:
    ap = add_common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--chains", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    d, N = args.width, args.depth
    chains = 512 if args.quick else args.chains
    steps = 5 if args.quick else 20
    loop_chains = 8 if args.quick else 32
    g = torch.Generator(device=args.device).manual_seed(0)
    X0 = torch.eye(d, dtype=dtype, device=args.device) + 0.3 * torch.randn(
        (chains, d, d), generator=g, dtype=dtype, device=args.device
    )
    target = torch.eye(d, dtype=dtype, device=args.device)

    Mb = BalancedManifold(d, N, backend="torch", device=args.device, dtype=dtype)
    Mq = ObservableQuotient(d, N, backend="torch", device=args.device, dtype=dtype)
    pb, pq = _problem(Mb, target, True), _problem(Mq, target, False)
    W0 = balanced_from(X0, None, N)
    sampler = RiemannianLangevin(0.1, 1e-3)

    r_batched = _rate(sampler, pb, W0, steps, chains, True, args.device)
    reproj = sampler.log["rescues"]
    r_loop = _rate(sampler, pb, W0[:loop_chains], steps, loop_chains, False, args.device)
    mode = sampler.log["gradient_mode"]
    r_quot = _rate(sampler, pq, X0, steps, chains, True, args.device)
    size = f"d{d} N{N} B{chains}"
    rows = [
        {
            "benchmark": "langevin balanced batched",
            "size": size,
            "time_s": 1.0 / r_batched,
            "ratio": r_batched,
            "note": f"chain-steps/s (time_s = per chain-step); {reproj} re-projections",
        },
        {
            "benchmark": f"langevin balanced {mode}",
            "size": f"d{d} N{N} B{loop_chains}",
            "time_s": 1.0 / r_loop,
            "ratio": r_batched / r_loop,
            "note": f"speed-up of batching per chain-step (gradient {mode})",
        },
        {
            "benchmark": "langevin quotient batched",
            "size": size,
            "time_s": 1.0 / r_quot,
            "ratio": r_quot / r_batched,
            "note": "quotient / balanced chain-steps per second",
        },
    ]
    emit(
        rows,
        args.json,
        title=f"Riemannian Langevin, {args.dtype}, {args.device}, {steps} steps "
        f"({r_batched:.0f} balanced chain-steps/s)",
    )


if __name__ == "__main__":
    main()
