"""Benchmark of the balanced-manifold projection (frames + sine transform) against dense.

Prints, measured in one run:

1. the closed-form tangent projection of :class:`BalancedManifold` against the
   dense least-squares projection (build the constraint Jacobian J, solve
   min |J^T mu - E|, return E - J^T mu) at small widths (target: >= 50x at
   width 16, depth 4), with the agreement of the two results;
2. the closed-form projection alone at width 64 and 256, depth 2..8, against
   one SVD of a width x width matrix (the floor of anything spectral), and the
   chart (first-order) and aligned (second-order) retractions.

Usage::

    python benchmarks/bench_balanced.py [--quick] [--device cpu|cuda] [--dtype float64]
                                        [--threads 1] [--json PATH]

``--device`` runs on torch tensors on that device (default: NumPy on the CPU;
``--device cpu`` is torch on the CPU, ``--device cuda`` torch on CUDA). The
headline rows (ratio dense / fast; time / one SVD) go through ``_report.emit``.
On a shared, loaded machine pass ``--threads 1``: oversubscribed BLAS/OpenMP
threads slow the dense LAPACK calls (and torch on the CPU) by 20x or more and
make every ratio meaningless.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _report import add_common_arguments, emit  # noqa: E402


def _sync(spec) -> None:
    if spec.backend == "torch" and spec.resolved_device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def timeit(fn, spec, repeats: int, min_time: float = 0.05) -> float:
    """Median wall time of ``fn()`` in seconds (after one warm-up call)."""
    fn()
    _sync(spec)
    times = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            _sync(spec)
            el = time.perf_counter() - t0
            if el >= min_time or n >= 1000:
                break
        times.append(el / n)
    return statistics.median(times)


def main() -> list[dict]:
    ap = add_common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.set_defaults(device=None)  # None: NumPy; cpu / cuda: torch on that device
    for action in ap._actions:
        if action.dest == "device":
            action.help = "torch device (cpu, cuda); default NumPy on the CPU"
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--threads", type=int, default=None, help="BLAS / torch CPU threads")
    args = ap.parse_args()
    if args.threads is not None:  # before NumPy / torch load their thread pools
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import torch

    from thermanopt._backend import ArraySpec
    from thermanopt.manifolds import BalancedManifold, svd
    from thermanopt.testing.reference import dense_projection

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    backend = "numpy" if args.device is None else "torch"
    spec = ArraySpec(backend, args.device, args.dtype)
    repeats = 3 if args.quick else 5
    rows: list[dict] = []
    where = f"{backend} {args.device or 'cpu'} {args.dtype}"
    print(
        f"backend={backend} device={args.device or 'cpu'} dtype={args.dtype} "
        f"threads={args.threads or 'default'}"
    )

    print("\n1. tangent projection: closed form vs dense least squares")
    head = ("width", "depth", "fast [s]", "dense [s]", "ratio", "max diff")
    print("{:>6} {:>6} {:>11} {:>11} {:>9} {:>10}".format(*head))
    dense_sizes = [(16, 4)] if args.quick else [(8, 4), (16, 2), (16, 4), (16, 8), (32, 4)]
    for d, N in dense_sizes:
        M = BalancedManifold(d, N, backend=backend, device=args.device, dtype=args.dtype)
        W = M.random_point(0)
        E = spec.randn(tuple(W.shape), 1)
        t_fast = timeit(lambda M=M, W=W, E=E: M.projection(W, E), spec, repeats)
        t_dense = timeit(lambda W=W, E=E: dense_projection(W, E), spec, 1 if d > 16 else repeats)
        diff = float(abs(M.projection(W, E) - dense_projection(W, E)).max())
        ratio = t_dense / t_fast
        print(f"{d:>6} {N:>6} {t_fast:>11.3e} {t_dense:>11.3e} {ratio:>8.0f}x {diff:>10.2e}")
        rows.append({
            "benchmark": "balanced projection vs dense", "size": f"d={d} N={N}",
            "time_s": t_fast, "ratio": ratio,
            "note": f"dense lstsq / closed form, {where} (target >= 50 at d=16 N=4)"
            f"; max diff {diff:.1e}",
        })  # fmt: skip

    print("\n2. closed form at larger widths (ratio = time / one SVD of a width x width matrix)")
    print(
        f"{'width':>6} {'depth':>6} {'svd [s]':>11} {'projection':>11} {'ratio':>7} "
        f"{'retraction':>11} {'ratio':>7} {'retr 2nd':>11} {'ratio':>7} {'iters':>6}"
    )
    widths = [64] if args.quick else [64, 256]
    depths = [2, 8] if args.quick else [2, 3, 4, 6, 8]
    for d in widths:
        X = spec.randn((d, d), 2)
        t_svd = timeit(lambda X=X: svd(X), spec, repeats)
        for N in depths:
            M = BalancedManifold(d, N, backend=backend, device=args.device, dtype=args.dtype)
            W = M.random_point(0)
            E = spec.randn(tuple(W.shape), 1)
            V = M.projection(W, E)
            V = V * (0.01 * M.norm(W, W) / M.norm(W, V))  # a 1 % step
            t_p = timeit(lambda M=M, W=W, E=E: M.projection(W, E), spec, repeats)
            t_r = timeit(lambda M=M, W=W, V=V: M.retraction_first_order(W, V), spec, repeats)
            t_r2 = timeit(lambda M=M, W=W, V=V: M.retraction(W, V), spec, repeats)
            it = 1  # the aligned retraction: one Gauss-Newton step, no iteration
            print(
                f"{d:>6} {N:>6} {t_svd:>11.3e} {t_p:>11.3e} {t_p / t_svd:>7.1f} "
                f"{t_r:>11.3e} {t_r / t_svd:>7.1f} {t_r2:>11.3e} {t_r2 / t_svd:>7.1f} {it:>6}"
            )
            for label, t in (
                ("balanced projection", t_p),
                ("balanced retraction 1st order (chart)", t_r),
                ("balanced retraction 2nd order", t_r2),
            ):
                rows.append({
                    "benchmark": label, "size": f"d={d} N={N}", "time_s": t,
                    "ratio": t / t_svd, "note": f"time / one {d}x{d} SVD, {where}",
                })  # fmt: skip
    print()
    return emit(rows, args.json, title="summary (ratio: see note)")


if __name__ == "__main__":
    main()
