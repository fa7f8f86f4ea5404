"""Per-iteration cost of Pymanopt solvers on torch tensors through thermanopt.function.torch.

Problem: leading eigenvector of a symmetric n x n matrix on the sphere
(f(x) = -x^T A x), sizes 64..1024. For each size and solver it prints

- ours: seconds per iteration of Pymanopt's unmodified solver on torch tensors
  through ``thermanopt.function.torch``;
- hand: a hand-written torch loop doing the same maths, written the efficient way
  (one evaluation per point): for SteepestDescent the same Armijo backtracking with
  the same constants, the cost of the accepted trial point reused as the next
  iterate's cost; for TrustRegions, per iteration one forward and one
  ``create_graph`` backward at the iterate, then a truncated conjugate gradient
  with the same number of Hessian-vector products the solver asked for (one
  backward each, graph retained) and its inner products and updates, one
  retraction and one cost at the candidate. ``ours/hand`` is the overhead of
  Pymanopt's machinery plus our backend (target <= 1.1 at n >= 256);
- same: for TrustRegions, a hand loop doing Pymanopt's own tCG arithmetic operation
  for operation (every inner product it reads and every vector update; the efficient
  "hand" loop does fewer), so ``ours/same-maths`` is the machinery alone: Pymanopt's
  ``Problem`` wrappers and bookkeeping, the manifold's methods and this backend (for
  SteepestDescent "hand" already is Pymanopt's line search, so the two rows agree);
- naive: the same loops evaluating every request from scratch (what the backend
  did before it kept the last point's evaluation), ``ours/naive``;
- stock: Pymanopt's own NumPy/autograd path on the same problem, so
  ``stock/ours`` is the speed-up (target >= 10 at n = 1024 on CUDA).

Ratios are medians over rounds of paired timings (ours, hand and naive back to back in
each round), in CPU time of the process on the CPU and wall clock on CUDA.

Usage: python benchmarks/bench_backend.py [--quick] [--device cuda] [--dtype float64]
       [--threads N] [--rounds R]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pymanopt
import torch
from _report import add_common_arguments, emit, median_ratio, sync, time_rounds  # noqa: E402
from pymanopt.optimizers import SteepestDescent, TrustRegions

import thermanopt.function
from thermanopt.manifolds import Sphere


class Counter:
    """Counts cost, gradient and Hessian-vector calls of a problem."""

    def __init__(self):
        self.cost = self.grad = self.hess = 0


def torch_problem(A, manifold, counter=None):
    """The Rayleigh problem on torch tensors; ``counter`` counts evaluations."""

    @thermanopt.function.torch(manifold)
    def cost(x):
        return -x @ A @ x

    if counter is not None:
        f, g, h = cost._function, cost.get_gradient_operator(), cost.get_hessian_operator()

        def counted(fn, field):
            def wrapper(*args):
                setattr(counter, field, getattr(counter, field) + 1)
                return fn(*args)

            return wrapper

        cost._function = counted(f, "cost")
        cost._gradient = counted(g, "grad")
        cost._hessian = counted(h, "hess")
    return pymanopt.Problem(manifold, cost)


def hand_sd(A, x, iterations, reuse=True):
    """Riemannian steepest descent doing what Pymanopt's SteepestDescent does.

    Per iteration: cost and gradient at x, the gradient norm, then the
    backtracking line search with Pymanopt's rule and constants (initial step
    from the last decrease, Armijo test, rejection of non-decreasing steps),
    with the same host scalars (cost, norms, slope).
    """
    contraction, optimism, suff, max_ls = 0.5, 2.0, 1e-4, 25

    def cost(y):
        return float(-(y @ A @ y))

    def retract(y, v):
        z = y + v
        return z / torch.linalg.vector_norm(z)

    oldf0, newf = None, None
    for _ in range(iterations):
        f0 = newf if (reuse and newf is not None) else cost(x)
        xg = x.detach().requires_grad_(True)
        (egrad,) = torch.autograd.grad(-(xg @ A @ xg), xg)
        grad = egrad - (x @ egrad) * x
        gnorm = float(torch.linalg.vector_norm(grad))
        d = -grad
        df0 = float((grad * d).sum())
        norm_d = float(torch.linalg.vector_norm(d))
        alpha = optimism * 2 * (f0 - oldf0) / df0 if oldf0 is not None else 1.0 / norm_d
        newx = retract(x, alpha * d)
        newf, k = cost(newx), 1
        while newf > f0 + suff * alpha * df0 and k <= max_ls:
            alpha *= contraction
            newx = retract(x, alpha * d)
            newf, k = cost(newx), k + 1
        if newf > f0:
            newx, newf = x, f0
        oldf0 = f0
        x = newx
        del gnorm
    return x


def hand_tr(A, x, counter, iterations):
    """TrustRegions' maths by hand, the efficient way (one gradient graph per iterate).

    Per iteration: one forward and one ``create_graph`` backward at the iterate, the
    Riemannian gradient and its norm, then a truncated conjugate gradient (Steihaug-Toint)
    with the number of Hessian-vector products the solver made per iteration (each one
    VJP of the retained gradient, turned into the sphere's Riemannian Hessian), its
    inner products and vector updates, then one retraction, the cost at the candidate and
    the model decrease.
    """
    per_iter = max(counter.hess // max(iterations, 1), 1)
    for _ in range(iterations):
        xg = x.detach().requires_grad_(True)
        (eg,) = torch.autograd.grad(-(xg @ A @ xg), xg, create_graph=True)
        egrad = eg.detach()
        xeg = x @ egrad
        grad = egrad - xeg * x
        float(torch.linalg.vector_norm(grad))
        r, eta = grad, torch.zeros_like(x)
        delta, zr = -r, float(r @ r)
        for _ in range(per_iter):
            (eh,) = torch.autograd.grad(eg, xg, grad_outputs=delta, retain_graph=True)
            hd = eh - (x @ eh) * x - xeg * delta  # Riemannian Hessian on the sphere
            d_hd = float(delta @ hd)
            alpha = zr / d_hd if d_hd else 0.0
            eta = eta + alpha * delta
            r = r + alpha * hd
            r = r - (x @ r) * x
            zr_new = float(r @ r)
            beta, zr = (zr_new / zr if zr else 0.0), zr_new
            delta = -r + beta * delta
        y = x + eta
        y = y / torch.linalg.vector_norm(y)
        float(-(y @ A @ y))
        float(eta @ grad)  # model decrease


def hand_tr_same(A, x, counter, iterations):
    """Pymanopt's TrustRegions iterate written out in torch, operation for operation.

    The same arithmetic as ``TrustRegions._truncated_conjugate_gradient`` (identity
    preconditioner, no random start): per inner iteration one Hessian-vector product
    turned into the sphere's Riemannian Hessian, the inner products it reads to the
    host (curvature, model value, residual norm, ``z'r``) and its vector updates
    (``eta``, ``Heta``, residual, direction re-projected to the tangent space); per
    outer iteration the gradient norm, the retraction, the cost of the proposal and
    the model decrease ``-<g, eta> - <eta, H eta>/2``. What is left in ``ours`` beside
    this loop is the machinery: Pymanopt's ``Problem`` wrappers and solver bookkeeping,
    the manifold's methods and this backend.
    """
    per_iter = max(counter.hess // max(iterations, 1), 1)

    def tangent(v):
        return v - (x @ v) * x

    for _ in range(iterations):
        xg = x.detach().requires_grad_(True)
        (eg,) = torch.autograd.grad(-(xg @ A @ xg), xg, create_graph=True)
        egrad = eg.detach()
        xeg = x @ egrad
        grad = tangent(egrad)
        float(torch.linalg.vector_norm(grad))
        eta, heta, r = torch.zeros_like(x), torch.zeros_like(x), grad
        z_r = d_pd = float(r @ r)
        delta, e_pe, e_pd, model = -r, 0.0, 0.0, 0.0
        for _ in range(per_iter):
            (eh,) = torch.autograd.grad(eg, xg, grad_outputs=delta, retain_graph=True)
            hdelta = tangent(eh) - xeg * delta
            d_hd = float(delta @ hdelta)
            alpha = z_r / d_hd if d_hd else 0.0
            e_pe = e_pe + 2 * alpha * e_pd + alpha**2 * d_pd
            eta, heta = eta + alpha * delta, heta + alpha * hdelta
            model = float(eta @ grad) + 0.5 * float(eta @ heta)
            r = r + alpha * hdelta
            math.sqrt(float(r @ r))
            z_old, z_r = z_r, float(r @ r)
            beta = z_r / z_old if z_old else 0.0
            delta = tangent(-r + beta * delta)
            e_pd, d_pd = beta * (e_pd + alpha * d_pd), z_r + beta * beta * d_pd
        y = x + eta
        y = y / torch.linalg.vector_norm(y)
        float(-(y @ A @ y))
        -float(grad @ eta) - 0.5 * float(eta @ heta)  # model decrease
        del model, e_pe


def hand_counted(A, x, counter, iterations):
    """The evaluations a TrustRegions run made, each done from scratch (naive)."""
    u = torch.randn_like(x)
    u = u - (x @ u) * x
    for _ in range(counter.cost):
        float(-(x @ A @ x))
    for _ in range(counter.grad):
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(-(xg @ A @ xg), xg)
        g - (x @ g) * x
    for _ in range(counter.hess):
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(-(xg @ A @ xg), xg, create_graph=True)
        (h,) = torch.autograd.grad((g * u).sum(), xg)
        float(u @ (h - (x @ h) * x))  # the inner products tCG logs
    for _ in range(iterations):
        y = x + 0.1 * u
        y / torch.linalg.vector_norm(y)


def stock_problem(A_np, n):
    manifold = Sphere(n)

    @pymanopt.function.autograd(manifold)
    def cost(x):
        return -x @ A_np @ x

    return pymanopt.Problem(manifold, cost)


def timed(fn, device, repeat=3):
    best = np.inf
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_size(n, iters, device, dtype, rounds=5):
    """Rows (solver, n, s/iter, ours/hand, ours/same-maths, ours/naive, stock/ours) for one size."""
    rng = np.random.default_rng(0)
    B = rng.standard_normal((n, n))
    A_np = (B + B.T) / 2
    A = torch.as_tensor(A_np, dtype=getattr(torch, dtype), device=device)
    manifold = Sphere(n, backend="torch", device=device, dtype=dtype)
    x0 = manifold.random_point(generator=1)
    x0_np = x0.detach().cpu().double().numpy()
    rows = []

    def sd_ours():
        opt = SteepestDescent(verbosity=0, max_iterations=iters, min_gradient_norm=0)
        return opt.run(torch_problem(A, manifold), initial_point=x0)

    def sd_stock():
        opt = SteepestDescent(verbosity=0, max_iterations=iters, min_gradient_norm=0)
        return opt.run(stock_problem(A_np, n), initial_point=x0_np)

    it = max(int(sd_ours().iterations), 1)
    t = time_rounds(
        {
            "ours": sd_ours,
            "hand": lambda: hand_sd(A, x0, it),
            "naive": lambda: hand_sd(A, x0, it, reuse=False),
        },
        device,
        rounds,
        warmup=False,
    )
    t_stock, res_s = timed(sd_stock, "cpu", repeat=2)
    per_stock = t_stock / max(int(res_s.iterations), 1)
    per_ours = min(t["ours"]) / it
    rows.append(
        (
            "SteepestDescent",
            n,
            per_ours,
            median_ratio(t, "ours", "hand"),
            median_ratio(t, "ours", "same" if "same" in t else "hand"),
            median_ratio(t, "ours", "naive"),
            per_stock / per_ours,
        )
    )

    counter = Counter()
    tr_iters = max(iters // 5, 3)

    def tr_ours():
        counter.__init__()
        opt = TrustRegions(verbosity=0, max_iterations=tr_iters, min_gradient_norm=0)
        return opt.run(torch_problem(A, manifold, counter), initial_point=x0)

    def tr_stock():
        opt = TrustRegions(verbosity=0, max_iterations=tr_iters, min_gradient_norm=0)
        return opt.run(stock_problem(A_np, n), initial_point=x0_np)

    it = max(int(tr_ours().iterations), 1)
    t = time_rounds(
        {
            "ours": tr_ours,
            "hand": lambda: hand_tr(A, x0, counter, it),
            "same": lambda: hand_tr_same(A, x0, counter, it),
            "naive": lambda: hand_counted(A, x0, counter, it),
        },
        device,
        rounds,
        warmup=False,
    )
    t_stock, res_s = timed(tr_stock, "cpu", repeat=2)
    per_stock = t_stock / max(int(res_s.iterations), 1)
    per_ours = min(t["ours"]) / it
    rows.append(
        (
            "TrustRegions",
            n,
            per_ours,
            median_ratio(t, "ours", "hand"),
            median_ratio(t, "ours", "same" if "same" in t else "hand"),
            median_ratio(t, "ours", "naive"),
            per_stock / per_ours,
        )
    )
    return rows


def main(argv=None):
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=5, help="paired timing rounds")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [64, 256] if args.quick else [64, 256, 1024]
    iters = 20 if args.quick else 50
    rows = []
    for n in sizes:
        for name, size, t, r_hand, r_same, r_naive, r_stock in bench_size(
            n, iters, args.device, args.dtype, args.rounds
        ):
            rows.append(
                {
                    "benchmark": f"{name} ours/hand",
                    "size": size,
                    "time_s": t,
                    "ratio": r_hand,
                    "note": f"s/iter; vs efficient hand loop (<= 1.1); ours/naive {r_naive:.2f}",
                }
            )
            rows.append(
                {
                    "benchmark": f"{name} ours/same-maths",
                    "size": size,
                    "time_s": t,
                    "ratio": r_same,
                    "note": "vs a hand loop doing the solver's own arithmetic (machinery only)",
                }
            )
            rows.append(
                {
                    "benchmark": f"{name} stock/ours",
                    "size": size,
                    "time_s": t,
                    "ratio": r_stock,
                    "note": "speed-up vs Pymanopt NumPy/autograd",
                }
            )
    title = f"device={args.device} dtype={args.dtype} torch={torch.__version__}"
    return emit(rows, args.json, title)


if __name__ == "__main__":
    main()
