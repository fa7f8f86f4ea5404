"""Benchmark: the g_N Riemannian gradient at a new point against one SVD and the literal sum.

    A_{N,X}(G) = U (K o (U^T G V)) V^T                               (SVD route)
               = sum_{p=1}^N (X X^T)^{(N-p)/N} G (X^T X)^{(p-1)/N}    (literal sum)

``route`` is ``ObservableQuotient(d, N).euclidean_to_riemannian_gradient(X, G)`` at a point
it has not seen (no cache hit: two points alternate), validation included. Baselines, timed
in the same rounds on the same matrices:

- ``svd``: one SVD of X (the route's unavoidable part; target route / svd <= 1.2);
- ``reference``: the six-line NumPy/torch route (SVD, K as a sum of N outer products, four
  matrix products), the floor of what the library can reach;
- ``literal``: the literal sum with powers from one eigh of X X^T and of X^T X;
- ``fmp``: the literal sum with SciPy's ``fractional_matrix_power`` (NumPy only; target
  fmp / route >= 100 at d = 256, N = 8);
- ``before`` (``--before REV``, default 26ab453, the revision before issue 12): the method of
  that revision's package, loaded beside the current one (:mod:`_before`).

Times are CPU time of the process (one BLAS thread: set OMP_NUM_THREADS=1 or --threads 1),
wall clock on CUDA; every ratio is the median over rounds of the per-round ratio (robust to
the drifting load of a shared machine), ``time`` the median of the route. The results are
compared as a sanity check (max relative difference to the eigh literal sum).

Usage::

    python benchmarks/bench_observable.py [--quick] [--device cpu|cuda]
        [--backend numpy|torch] [--dtype float64|float32] [--widths 64 256]
        [--depths 2 4 8] [--before REV | --no-before] [--no-naive] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _before import load_package, submodule  # noqa: E402
from _report import add_common_arguments, emit  # noqa: E402

from thermanopt._backend import ArraySpec, matrix_transpose, namespace
from thermanopt.manifolds import ObservableQuotient, svd

BEFORE = "26ab453"


def literal_A(X, G, depth):
    """sum_p (X X^T)^{(N-p)/N} G (X^T X)^{(p-1)/N} with powers from eigh."""
    xp = namespace(X)
    Xt = matrix_transpose(X)
    wl, Ql = xp.linalg.eigh(X @ Xt)
    wr, Qr = xp.linalg.eigh(Xt @ X)
    wl = xp.clip(wl, 0.0, None)
    wr = xp.clip(wr, 0.0, None)
    out = None
    for p in range(1, depth + 1):
        left = (Ql * wl[None, :] ** ((depth - p) / depth)) @ matrix_transpose(Ql)
        right = (Qr * wr[None, :] ** ((p - 1) / depth)) @ matrix_transpose(Qr)
        term = left @ G @ right
        out = term if out is None else out + term
    return out


def literal_A_fmp(X, G, depth):
    """The literal sum with scipy's fractional_matrix_power (NumPy only, the naive way)."""
    from scipy.linalg import fractional_matrix_power as fmp

    L, R = X @ X.T, X.T @ X
    return sum(
        np.real(fmp(L, (depth - p) / depth)) @ G @ np.real(fmp(R, (p - 1) / depth))
        for p in range(1, depth + 1)
    )


def reference_A(X, G, depth):
    """The six-line route: U (K o (U^T G V)) V^T with K = sum_k a_i^(N-1-k) a_j^k."""
    U, s, V = svd(X)
    a = s ** (2.0 / depth)
    K = sum(a[:, None] ** (depth - 1 - k) * a[None, :] ** k for k in range(depth))
    return U @ (K * (matrix_transpose(U) @ G @ V)) @ matrix_transpose(V)


def _sync(spec: ArraySpec) -> None:
    if spec.backend == "torch" and spec.resolved_device.type == "cuda":
        torch.cuda.synchronize()


def _race(spec: ArraySpec, fns: dict, reps: int) -> tuple[dict, dict]:
    """Per-round times of each function, run interleaved after one warm-up round.

    Returns (median time, median over rounds of time / time of ``svd``) per function.
    """
    clock = (
        time.perf_counter
        if spec.backend == "torch" and spec.resolved_device.type == "cuda"
        else time.process_time
    )
    times = {k: [] for k in fns}
    for r in range(reps + 1):
        for k, fn in fns.items():
            _sync(spec)
            t0 = clock()
            fn()
            _sync(spec)
            if r:
                times[k].append(clock() - t0)
    per_svd = {
        k: statistics.median(a / b for a, b in zip(v, times["svd"], strict=True))
        for k, v in times.items()
    }
    return {k: statistics.median(v) for k, v in times.items()}, per_svd


def _fresh_points(manifold, X):
    """A callable G -> gradient at X or at a copy of X, alternating: never a cache hit."""
    points = [X, X * 1.0]
    state = {"k": 0}

    def call(G):
        state["k"] += 1
        return manifold.euclidean_to_riemannian_gradient(points[state["k"] % 2], G)

    return call


def main() -> list[dict]:
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--backend", default=None, choices=["numpy", "torch"])
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--widths", type=int, nargs="*", default=None)
    parser.add_argument("--depths", type=int, nargs="*", default=None)
    parser.add_argument("--reps", type=int, default=None, help="timed rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--no-naive", action="store_true", help="skip fractional_matrix_power")
    parser.add_argument("--before", default=BEFORE, help="git revision of the 'before' rows")
    parser.add_argument("--no-before", action="store_true", help="skip the 'before' rows")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    backend = args.backend or ("torch" if args.device != "cpu" else "numpy")
    spec = ArraySpec(backend, None if backend == "numpy" else args.device, args.dtype)
    widths = args.widths or ([64] if args.quick else [64, 256])
    depths = args.depths or ([2, 8] if args.quick else [2, 4, 8])
    reps = args.reps or (5 if args.quick else 21)
    old = None if args.no_before else load_package(args.before)
    Old = None if old is None else submodule(old, "manifolds").ObservableQuotient

    naive = backend == "numpy" and not args.no_naive
    print(
        f"backend={backend} device={args.device} dtype={args.dtype} reps={reps} "
        f"torch threads={torch.get_num_threads()} before={None if old is None else args.before}"
    )
    cols = ["route", "reference", "literal"] + (["fmp"] if naive else [])
    cols += ["before"] if Old else []
    header = (
        f"{'width':>6} {'depth':>5} {'svd[ms]':>9} "
        + " ".join(f"{c + '/svd':>13}" for c in cols)
        + (f" {'fmp/route':>10}" if naive else "")
        + f" {'max rel diff':>13}"
    )
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    where = f"{backend} {args.device} {args.dtype}"
    for d in widths:
        # a well-conditioned X (singular values in [0.5, 2]) and a random G
        U, _ = np.linalg.qr(rng.standard_normal((d, d)))
        V, _ = np.linalg.qr(rng.standard_normal((d, d)))
        s = np.exp(rng.uniform(np.log(0.5), np.log(2.0), d))
        X = spec.asarray((U * s) @ V.T)
        G = spec.asarray(rng.standard_normal((d, d)))
        for N in depths:
            route = _fresh_points(ObservableQuotient(d, N, backend=backend), X)
            fns = {
                "svd": lambda X=X: svd(X),
                "route": lambda G=G, route=route: route(G),
                "reference": lambda X=X, G=G, N=N: reference_A(X, G, N),
                "literal": lambda X=X, G=G, N=N: literal_A(X, G, N),
            }
            if naive:
                fns["fmp"] = lambda X=X, G=G, N=N: literal_A_fmp(X, G, N)
            if Old:
                before = _fresh_points(Old(d, N, backend=backend), X)
                fns["before"] = lambda G=G, before=before: before(G)
            t, r = _race(spec, fns, reps if not (naive and d > 128) else max(3, reps // 3))
            a, b = route(G), literal_A(X, G, N)
            xp = namespace(a)
            diff = float(xp.max(xp.abs(a - b)) / xp.max(xp.abs(b)))
            fmp_route = r["fmp"] / r["route"] if naive else float("nan")
            print(
                f"{d:>6} {N:>5} {1e3 * t['svd']:>9.3f} "
                + " ".join(f"{r[c]:>13.2f}" for c in cols)
                + (f" {fmp_route:>10.1f}" if naive else "")
                + f" {diff:>13.2e}",
                flush=True,
            )
            size = f"d={d} N={N}"
            rows.append({
                "benchmark": "g_N gradient: route / svd", "size": size,
                "time_s": t["route"], "ratio": r["route"],
                "note": f"method at a new point / one SVD, {where} (target <= 1.2 at d=256 N=8)"
                f"; reference {r['reference']:.2f}"
                + (f", before {r['before']:.2f}" if Old else ""),
            })  # fmt: skip
            rows.append({
                "benchmark": "g_N gradient: literal / route", "size": size,
                "time_s": t["route"], "ratio": r["literal"] / r["route"],
                "note": f"eigh literal sum / method, {where}; max rel diff {diff:.1e}",
            })  # fmt: skip
            if naive:
                rows.append({
                    "benchmark": "g_N gradient: fmp / route", "size": size,
                    "time_s": t["route"], "ratio": fmp_route,
                    "note": f"scipy fractional_matrix_power sum / method, {where}"
                    " (target >= 100 at d=256 N=8)",
                })  # fmt: skip
    print(
        "\nroute: ObservableQuotient.euclidean_to_riemannian_gradient at a new point;"
        "\nreference: SVD + K (sum of N outer products) + four matrix products;"
        "\nliteral: powers from one eigh of X X^T and of X^T X;"
        "\nfmp: powers by scipy.linalg.fractional_matrix_power (the naive literal form);"
        "\nbefore: the method of the 'before' revision. Ratios: median over rounds of"
        " time / time of one SVD in that round.\n"
    )
    return emit(rows, args.json, title="summary (time_s: route; ratio: see benchmark)")


if __name__ == "__main__":
    main()
