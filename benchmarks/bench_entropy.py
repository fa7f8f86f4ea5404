"""Cost of the closed-form DLN entropy and its gradient relative to one batched SVD.

For a batch of B matrices of width d (default B = 10,000, d = 64, depth N = 4) it
times, on torch tensors of the chosen device and dtype:

- svd: one batched ``torch.linalg.svd`` (U, s, V) of the batch (the baseline);
- entropy+grad: ``dln_entropy_and_gradient`` (one SVD plus the pairwise
  log K and Langevin-function work), target ratio <= 1.5;
- entropy: ``dln_entropy`` alone (singular values only);
- autograd: ``dln_entropy`` forward + ``torch.autograd`` backward through the
  custom Function (one SVD; backward is the analytic gradient).

Every ratio is time / time(svd), measured in the same run (median over rounds of the
per-round ratio; CPU time of the process on the CPU, wall clock on CUDA).

Usage: python benchmarks/bench_entropy.py [--quick] [--device cuda] [--dtype float32]
       [--batch B] [--width d] [--depth N] [--threads k]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _report import add_common_arguments, emit, median_ratio, time_rounds  # noqa: E402

from thermanopt.entropy import dln_entropy, dln_entropy_and_gradient


def main(argv=None) -> list[dict]:
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--batch", type=int, default=None, help="number of matrices")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (500 if args.quick else 10_000)
    repeats = args.repeats or (3 if args.quick else 5)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    X = torch.randn(batch, args.width, args.width, generator=gen, device=device, dtype=dtype)
    N = args.depth

    def autograd_step():
        Y = X.detach().requires_grad_(True)
        S = dln_entropy(Y, N)
        (g,) = torch.autograd.grad(S.sum(), Y)
        return g

    times = time_rounds(
        {
            "svd": lambda: torch.linalg.svd(X, full_matrices=False),
            "both": lambda: dln_entropy_and_gradient(X, N),
            "ent": lambda: dln_entropy(X, N),
            "ag": autograd_step,
        },
        device,
        repeats,
    )
    t_svd, t_both, t_ent, t_ag = (statistics.median(times[k]) for k in ("svd", "both", "ent", "ag"))
    size = f"{batch}x{args.width}^2"
    note = f"N={N} {args.dtype} {device.type}; / one batched SVD"
    rows = [
        {"benchmark": "batched svd (baseline)", "size": size, "time_s": t_svd, "ratio": 1.0,
         "note": note},
        {"benchmark": "dln_entropy_and_gradient", "size": size, "time_s": t_both,
         "ratio": median_ratio(times, "both", "svd"), "note": note + " (target <= 1.5)"},
        {"benchmark": "dln_entropy", "size": size, "time_s": t_ent,
         "ratio": median_ratio(times, "ent", "svd"), "note": note},
        {"benchmark": "dln_entropy fwd+bwd (autograd)", "size": size, "time_s": t_ag,
         "ratio": median_ratio(times, "ag", "svd"), "note": note},
    ]  # fmt: skip
    return emit(rows, args.json, title="DLN entropy + gradient vs one batched SVD")


if __name__ == "__main__":
    main()
