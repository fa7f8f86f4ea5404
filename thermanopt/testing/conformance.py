"""Conformance kit: the properties every thermanopt manifold must have.

``check_manifold(manifold)`` draws points and tangent vectors with the
manifold's own generator-aware ``random_point`` / ``random_tangent_vector`` and
checks, with tolerances scaled to the dtype:

1. random points lie on the manifold (``manifold.check_point``) and differ;
2. the projection is idempotent, self-adjoint for the inner product, and its
   image has rank ``dim``;
3. the inner product is symmetric and positive definite (Gram matrix of
   ``dim`` random tangent vectors), and ``norm`` is its square root;
4. ``random_tangent_vector`` and ``zero_vector`` are tangent;
5. the retraction satisfies R_x(0) = x, lands on the manifold, and is first
   order (slope 2 against x + t v); with ``retraction_order=2`` it must agree
   with ``exp`` (or with ``second_order_reference``) to second order (slope 3);
6. the Riemannian gradient passes the Taylor check (slope 2) on a random
   smooth cost f(x) = sum(w sin x) + |x - c|^2 / 2;
7. the Riemannian Hessian has slope 3 at a critical point of
   f(x) = |x - x*|^2 / 2 (x* on the manifold), and, along the manifold's
   second-order retraction (if any), slope 3 away from critical points, where
   the Weingarten / connection term matters; it is symmetric and linear.

Failures are collected and raised together as one ``AssertionError`` that
lists every failed property with its measured number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pymanopt

from .._backend import eps, is_torch, make_generator, namespace, spec_of, to_float
from ..diagnostics import (
    check_gradient,
    check_hessian,
    check_retraction,
    random_point,
    random_tangent_vector,
)

__all__ = ["check_manifold", "smooth_cost", "distance_cost"]

Array = Any


def _decorator(manifold, x):
    # thermanopt.function.torch for tensors, Pymanopt's pass-through NumPy backend else
    if is_torch(x):
        from ..function import torch as torch_function

        return torch_function(manifold)
    return pymanopt.function.numpy(manifold)


def smooth_cost(manifold, point: Array, generator: Any = None) -> pymanopt.Problem:
    """Problem with f(x) = sum(w * sin(x)) + |x - c|^2 / 2 (random w, c like ``point``).

    Euclidean gradient w cos x + x - c and Hessian u -> -w sin(x) u + u are given
    in closed form, so the problem runs on NumPy and torch alike.
    """
    spec = spec_of(point)
    gen = make_generator(generator, spec)
    w = spec.randn(tuple(point.shape), gen)
    c = spec.randn(tuple(point.shape), gen)
    xp = namespace(point)
    deco = _decorator(manifold, point)

    if is_torch(point):

        @deco
        def cost(x):
            return xp.sum(w * xp.sin(x)) + 0.5 * xp.sum((x - c) ** 2)

        return pymanopt.Problem(manifold, cost)

    @deco
    def cost(x):
        return to_float(xp.sum(w * xp.sin(x)) + 0.5 * xp.sum((x - c) ** 2))

    @pymanopt.function.numpy(manifold)
    def egrad(x):
        return w * xp.cos(x) + (x - c)

    @pymanopt.function.numpy(manifold)
    def ehess(x, u):
        return -w * xp.sin(x) * u + u

    return pymanopt.Problem(manifold, cost, euclidean_gradient=egrad, euclidean_hessian=ehess)


def distance_cost(manifold, target: Array) -> pymanopt.Problem:
    """Problem with f(x) = |x - target|_F^2 / 2, critical (a minimiser) at ``target``."""
    xp = namespace(target)
    if is_torch(target):
        deco = _decorator(manifold, target)

        @deco
        def cost(x):
            return 0.5 * xp.sum((x - target) ** 2)

        return pymanopt.Problem(manifold, cost)

    @pymanopt.function.numpy(manifold)
    def cost(x):
        return to_float(0.5 * xp.sum((x - target) ** 2))

    @pymanopt.function.numpy(manifold)
    def egrad(x):
        return x - target

    @pymanopt.function.numpy(manifold)
    def ehess(x, u):
        return u

    return pymanopt.Problem(manifold, cost, euclidean_gradient=egrad, euclidean_hessian=ehess)


def _on_manifold(manifold, x) -> tuple[bool, str]:
    if hasattr(manifold, "check_point"):
        try:
            manifold.check_point(x)
        except ValueError as exc:
            return False, str(exc)
    return True, ""


def _flat_basis_images(manifold, x, f: Callable[[Array], Array]) -> np.ndarray:
    """Matrix whose columns are f(e_k) for the ambient basis e_k (host, float64)."""
    spec = spec_of(x)
    n = int(np.prod(tuple(x.shape)))
    cols = []
    for k in range(n):
        e = np.zeros(n)
        e[k] = 1.0
        ek = spec.asarray(e.reshape(tuple(x.shape)))
        y = f(ek)
        cols.append(np.asarray(y.detach().cpu() if is_torch(y) else y, dtype=float).ravel())
    return np.stack(cols, axis=1)


def check_manifold(
    manifold,
    *,
    generator: Any = 0,
    rtol: float | None = None,
    slope_tol: float | None = None,
    retraction_order: int = 1,
    second_order_retraction: Callable | None = None,
    second_order_reference: Callable | None = None,
    max_ambient_basis: int = 400,
    skip: Iterable[str] = (),
) -> dict[str, float]:
    """Run the conformance checks on ``manifold`` and return the measured numbers.

    Args:
        manifold: a Pymanopt manifold whose ``random_point`` and
            ``random_tangent_vector`` accept ``generator=``.
        generator: seed or generator for every random draw.
        rtol: tolerance for identities (default ``max(1e-8, 100 eps^0.75)``:
            1e-8 in float64, about 7e-4 in float32).
        slope_tol: allowed deviation of fitted slopes (0.15 float64, 0.3 float32).
        retraction_order: 1, or 2 to also require that ``manifold.retraction``
            agrees with ``exp`` / ``second_order_reference`` to second order.
        second_order_retraction: a second-order retraction used for the Hessian
            slope away from critical points (default: ``manifold.retraction`` when
            ``retraction_order == 2``, else ``manifold.retraction_second_order``
            if present, else that check is skipped).
        second_order_reference: reference curve ``(x, v) -> point`` for the
            retraction order (default ``manifold.exp``).
        max_ambient_basis: ambient dimension above which rank checks are skipped.
        skip: names of checks to skip ("points", "projection", "inner",
            "tangent", "retraction", "gradient", "hessian").

    Raises:
        AssertionError listing every failed property.
    """
    skip = set(skip)
    results: dict[str, float] = {}
    failures: list[str] = []
    gen_seed = generator

    gen = make_generator(gen_seed, getattr(manifold, "spec", None))
    x = random_point(manifold, gen)
    spec = spec_of(x)
    e = eps(x)
    tol = rtol if rtol is not None else max(1e-8, 100.0 * e**0.75)
    stol = slope_tol if slope_tol is not None else (0.15 if e < 1e-10 else 0.3)

    def fail(name: str, msg: str) -> None:
        failures.append(f"{name}: {msg}")

    def ip(a, b):
        return manifold.inner_product(x, a, b)

    # 1. points
    if "points" not in skip:
        ok, why = _on_manifold(manifold, x)
        if not ok:
            fail("random_point", f"not on the manifold ({why})")
        y = random_point(manifold, gen)
        results["random_point_difference"] = _fro(x - y)
        if _fro(x - y) == 0.0:
            fail("random_point", "two draws are identical")

    # 2. projection
    v = spec.randn(tuple(x.shape), gen)
    w = spec.randn(tuple(x.shape), gen)
    Pv = manifold.projection(x, v)
    Pw = manifold.projection(x, w)
    if "projection" not in skip:
        idem = _fro(manifold.projection(x, Pv) - Pv) / max(_fro(Pv), 1e-300)
        results["projection_idempotency"] = idem
        if idem > tol:
            fail("projection", f"not idempotent: |P(Pv) - Pv|/|Pv| = {idem:.3g}")
        adj = abs(ip(Pv, w) - ip(v, Pw)) / max(math.sqrt(abs(ip(Pv, Pv) * ip(Pw, Pw))), 1e-300)
        results["projection_self_adjointness"] = adj
        if adj > tol:
            fail("projection", f"not self-adjoint: |<Pv,w> - <v,Pw>| rel = {adj:.3g}")
        n_amb = int(np.prod(tuple(x.shape)))
        if n_amb <= max_ambient_basis:
            P = _flat_basis_images(manifold, x, lambda ek: manifold.projection(x, ek))
            sv = np.linalg.svd(P, compute_uv=False)
            rank = int((sv > max(sv[0], 1e-300) * max(tol, 1e3 * e)).sum()) if sv.size else 0
            results["projection_rank"] = rank
            if rank != manifold.dim:
                fail("dim", f"projection has rank {rank}, manifold.dim = {manifold.dim}")

    # 3. inner product
    u1 = random_tangent_vector(manifold, x, gen)
    u2 = random_tangent_vector(manifold, x, gen)
    if "inner" not in skip:
        sym = abs(ip(u1, u2) - ip(u2, u1)) / max(abs(ip(u1, u1)), 1e-300)
        results["inner_symmetry"] = sym
        if sym > tol:
            fail("inner_product", f"not symmetric ({sym:.3g})")
        n = manifold.norm(x, u1)
        nerr = abs(n - math.sqrt(max(ip(u1, u1), 0.0))) / max(n, 1e-300)
        results["norm_consistency"] = nerr
        if nerr > tol:
            fail("norm", f"norm != sqrt(inner) (rel {nerr:.3g})")
        k = min(manifold.dim, 12)
        if k > 0:
            vs = [random_tangent_vector(manifold, x, gen) for _ in range(k)]
            G = np.array([[ip(a, b) for b in vs] for a in vs])
            lam = np.linalg.eigvalsh(0.5 * (G + G.T))
            results["inner_gram_min_eig"] = float(lam[0] / lam[-1])
            if lam[0] <= 0:
                fail("inner_product", f"Gram matrix not positive definite (min eig {lam[0]:.3g})")

    # 4. tangent vectors
    if "tangent" not in skip:
        for name, t in (("random_tangent_vector", u1), ("zero_vector", manifold.zero_vector(x))):
            err = _fro(manifold.projection(x, t) - t) / max(
                _fro(t), 1.0 if name[0] == "z" else 1e-300
            )
            results[f"{name}_tangency"] = err
            if err > tol:
                fail(name, f"not tangent: |P t - t|/|t| = {err:.3g}")
        if _fro(manifold.zero_vector(x)) != 0.0:
            fail("zero_vector", "is not zero")

    # 5. retraction
    if "retraction" not in skip:
        r0 = _fro(manifold.retraction(x, manifold.zero_vector(x)) - x) / max(_fro(x), 1e-300)
        results["retraction_at_zero"] = r0
        if r0 > tol:
            fail("retraction", f"R_x(0) != x (rel {r0:.3g})")
        un = u1 / manifold.norm(x, u1)
        ok, why = _on_manifold(manifold, manifold.retraction(x, 0.5 * un))
        if not ok:
            fail("retraction", f"R_x(v) leaves the manifold ({why})")
        first = check_retraction(manifold, x, un, reference=lambda p, t: p + t, expected_slope=2.0)
        results["retraction_first_order_slope"] = first.slope
        if not first.exact and first.slope < 2.0 - stol:
            fail("retraction", f"not first order: slope {first.slope:.3f} against x + t v")
        if retraction_order >= 2:
            ref = second_order_reference
            res = check_retraction(manifold, x, un, reference=ref, expected_slope=3.0)
            results["retraction_second_order_slope"] = res.slope
            if not res.exact and res.slope < 3.0 - stol:
                fail("retraction", f"not second order: slope {res.slope:.3f} (expected 3)")

    # 6. gradient
    if "gradient" not in skip:
        problem = smooth_cost(manifold, x, gen)
        g = check_gradient(problem, x, u1 / manifold.norm(x, u1))
        results["gradient_slope"] = g.slope
        if not g.exact and abs(g.slope - 2.0) > stol:
            fail("gradient", f"Taylor slope {g.slope:.3f}, expected 2")
        if g.exact:
            fail("gradient", "Taylor error vanished identically (cost too simple to test)")

    # 7. Hessian
    if "hessian" not in skip:
        target = x
        start_problem = distance_cost(manifold, target)
        un = u1 / manifold.norm(x, u1)
        h = check_hessian(start_problem, target, un)
        results["hessian_slope_at_critical_point"] = h.slope
        # >= 3: a symmetric retraction makes the cubic term vanish too (slope 4)
        if not h.exact and h.slope < 3.0 - stol:
            fail("hessian", f"slope {h.slope:.3f} at a critical point, expected >= 3")
        retr2 = second_order_retraction
        if retr2 is None:
            if retraction_order >= 2:
                retr2 = manifold.retraction
            else:
                retr2 = getattr(manifold, "retraction_second_order", None)
        if retr2 is not None:
            problem = smooth_cost(manifold, x, gen)
            h2 = check_hessian(problem, x, un, retraction=retr2)
            results["hessian_slope_second_order"] = h2.slope
            results["hessian_symmetry"] = h2.extra["symmetry_error"]
            results["hessian_linearity"] = h2.extra["linearity_error"]
            if not h2.exact and abs(h2.slope - 3.0) > stol:
                fail("hessian", f"slope {h2.slope:.3f} along a second-order retraction, expected 3")
            if h2.extra["symmetry_error"] > 10 * tol:
                fail("hessian", f"not symmetric ({h2.extra['symmetry_error']:.3g})")
            if h2.extra["linearity_error"] > 10 * tol:
                fail("hessian", f"not linear ({h2.extra['linearity_error']:.3g})")

    if failures:
        raise AssertionError(
            f"{type(manifold).__name__} fails conformance:\n  " + "\n  ".join(failures)
        )
    return results


def _fro(a: Array) -> float:
    xp = namespace(a)
    return math.sqrt(to_float(xp.sum(a * a)))
