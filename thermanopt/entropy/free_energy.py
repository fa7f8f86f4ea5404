"""Free energy F = E - T S of the deep linear network as a Pymanopt problem.

Chen, Kotwal & Menon, "Entropic regularization in the Deep Linear Network",
arXiv 2512.06137; Menon & Yu, arXiv 2509.09088. Langevin dynamics on the
balanced manifold at temperature T with potential E(phi(W)) has X-marginal
proportional to exp(-(E - T S_N)/T) dvol_{g_N}: the free energy

    F(X) = E(X) - T S_N(X),    S_N = (1/2) sum_{i<j} log K_ij(s)  (reduced entropy),

is what such dynamics minimise. :func:`free_energy` wraps an energy E given as a
Pymanopt problem or decorated cost into a :class:`pymanopt.Problem` for F with
its Euclidean gradient and, when E has one, its Euclidean Hessian-vector
product, so every Pymanopt solver (SteepestDescent, ConjugateGradient,
TrustRegions, ...) minimises free energy. The manifold supplies the geometry
(``euclidean_to_riemannian_gradient``/``_hessian``).

Two kinds of manifold, told apart by duck typing:

- points X are end-to-end matrices (``ObservableQuotient``, or any manifold of
  d x d matrices such as ``pymanopt.manifolds.Euclidean(d, d)``): S = S_N(X);
- points W are stacks (N, d, d) of balanced factors (a manifold with an
  ``end_to_end`` method, ``BalancedManifold``): S = S_N(phi(W)),
  phi(W) = W[N-1] ... W[0]. By the chain rule, with G = grad S_N(X),
  L_p = W[N-1] ... W[p+1] and R_p = W[p-1] ... W[0] (so X = L_p W[p] R_p),

      dS/dW[p] = L_p^T G R_p^T,

  and the Hessian-vector product along V differentiates this product exactly:
  d(L_p^T G R_p^T) = dL_p^T G R_p^T + L_p^T D^2 S_N(X)[dX] R_p^T + L_p^T G dR_p^T,
  dX = sum_p L_p V[p] R_p.

The entropy Hessian-vector product is exact (the Lewis-Sendov formula of
:func:`thermanopt.entropy.dln_entropy_hvp`, stable at coincident singular
values), not a finite difference.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import pymanopt
from pymanopt.autodiff import Function

from .._backend import matrix_transpose, namespace, to_float
from .dln import (
    RankDeficientError,
    dln_entropy,
    dln_entropy_and_gradient,
    dln_entropy_gradient,
    dln_entropy_hvp,
)

Array = Any

__all__ = ["free_energy", "end_to_end_products"]


def end_to_end_products(W: Array) -> tuple[list[Array], list[Array]]:
    """Lists (L, R) with X = L[p] @ W[p] @ R[p]: L[p] = W[N-1]...W[p+1], R[p] = W[p-1]...W[0]."""
    xp = namespace(W)
    N, d = W.shape[-3], W.shape[-1]
    eye = xp.zeros_like(W[..., 0, :, :]) + xp.eye(d, dtype=W.dtype, device=_device(W))
    R = [eye]
    for p in range(1, N):
        R.append(xp.matmul(W[..., p - 1, :, :], R[p - 1]))
    L = [eye] * N
    for p in range(N - 2, -1, -1):
        L[p] = xp.matmul(L[p + 1], W[..., p + 1, :, :])
    return L, R


def _device(x: Array):
    return array_api_compat.device(x)


def _stack(xp, parts: list[Array]) -> Array:
    return xp.stack(parts, axis=-3)


def _balanced_entropy_gradient(W: Array, depth: int) -> tuple[float, Array]:
    xp = namespace(W)
    L, R = end_to_end_products(W)
    X = xp.matmul(xp.matmul(L[-1], W[..., -1, :, :]), R[-1])
    S, G = dln_entropy_and_gradient(X, depth)
    parts = [xp.matmul(xp.matmul(_mT(L[p]), G), _mT(R[p])) for p in range(depth)]
    return S, _stack(xp, parts)


def _mT(x: Array) -> Array:
    return matrix_transpose(x)


def _balanced_entropy_hvp(W: Array, V: Array, depth: int) -> Array:
    xp = namespace(W, V)
    N = depth
    L, R = end_to_end_products(W)
    X = xp.matmul(xp.matmul(L[-1], W[..., -1, :, :]), R[-1])
    zero = xp.zeros_like(W[..., 0, :, :])
    # directional derivatives of the prefix/suffix products
    dR = [zero]
    for p in range(1, N):
        dR.append(
            xp.matmul(V[..., p - 1, :, :], R[p - 1]) + xp.matmul(W[..., p - 1, :, :], dR[p - 1])
        )
    dL = [zero] * N
    for p in range(N - 2, -1, -1):
        dL[p] = xp.matmul(dL[p + 1], W[..., p + 1, :, :]) + xp.matmul(L[p + 1], V[..., p + 1, :, :])
    dX = zero
    for p in range(N):
        dX = dX + xp.matmul(xp.matmul(L[p], V[..., p, :, :]), R[p])
    G = dln_entropy_gradient(X, N)
    HdX = dln_entropy_hvp(X, dX, N)
    parts = []
    for p in range(N):
        term = xp.matmul(xp.matmul(_mT(dL[p]), G), _mT(R[p]))
        term = term + xp.matmul(xp.matmul(_mT(L[p]), HdX), _mT(R[p]))
        term = term + xp.matmul(xp.matmul(_mT(L[p]), G), _mT(dR[p]))
        parts.append(term)
    return _stack(xp, parts)


def _resolve_depth(manifold, depth: int | None) -> int:
    if depth is None:
        depth = getattr(manifold, "depth", None)
    if depth is None:
        raise ValueError(
            "the depth N of the network is unknown: the manifold has no 'depth' attribute, "
            "pass depth=N"
        )
    if isinstance(depth, bool) or int(depth) != depth or int(depth) < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    return int(depth)


def free_energy(
    cost: pymanopt.Problem | Function,
    manifold: Any,
    temperature: float,
    *,
    depth: int | None = None,
) -> pymanopt.Problem:
    """The Pymanopt problem of minimising F = E - T S_N (reduced entropy) on ``manifold``.

    Parameters
    ----------
    cost
        The energy E: either a :class:`pymanopt.Problem` (its cost, Euclidean
        gradient and, if available, Euclidean Hessian are used; this is the way
        to pass a hand-written gradient with ``pymanopt.function.numpy``) or a
        cost decorated with a Pymanopt backend decorator (``pymanopt.function.
        autograd``, ``thermanopt.function.torch``), whose derivatives come from
        that backend.
    manifold
        ``ObservableQuotient``-like (points X, d x d) or ``BalancedManifold``-like
        (points W, (N, d, d), detected by an ``end_to_end`` method). May be
        ``None`` when ``cost`` is a problem (its manifold is used).
    temperature
        T >= 0.
    depth
        N; defaults to ``manifold.depth`` (needed for stand-in manifolds such
        as ``pymanopt.manifolds.Euclidean(d, d)``).

    Returns
    -------
    pymanopt.Problem
        Cost F (a Python float), Euclidean gradient grad E - T grad S and, when
        E has a Hessian, the exact Hessian-vector product Hess E[v] - T Hess S[v].
        At rank-deficient points (two zero singular values, S = -infinity) the
        cost is +infinity (for T > 0), so line searches step back.
        The problem also carries ``energy`` (the problem of E), ``temperature``,
        ``depth`` and ``entropy(point)`` (S at a point, a float).
    """
    if isinstance(cost, pymanopt.Problem):
        base = cost
        if manifold is None:
            manifold = base.manifold
        elif manifold is not base.manifold:
            raise ValueError("the manifold differs from the manifold of the given problem")
    elif isinstance(cost, Function):
        if manifold is None:
            raise ValueError("a manifold is required when cost is a decorated function")
        base = pymanopt.Problem(manifold, cost)
    else:
        raise ValueError(
            "cost must be a pymanopt.Problem or a cost decorated with a Pymanopt backend "
            f"decorator, got {type(cost).__name__}"
        )
    T = float(temperature)
    if not T >= 0.0 or T == float("inf"):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature!r}")
    N = _resolve_depth(manifold, depth)
    balanced = hasattr(manifold, "end_to_end")

    def _check_point(point: Array) -> None:
        shape = tuple(point.shape)
        if balanced:
            if len(shape) != 3 or shape[0] != N or shape[1] != shape[2]:
                raise ValueError(f"a balanced point must have shape ({N}, d, d), got {shape}")
        elif len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"a point must be a square matrix, got shape {shape}")

    def entropy(point: Array) -> float:
        _check_point(point)
        X = manifold.end_to_end(point) if balanced else point
        try:
            return to_float(dln_entropy(X, N))
        except RankDeficientError:  # S = -inf, F = +inf: line searches backtrack
            return -math.inf

    def entropy_gradient(point: Array) -> Array:
        _check_point(point)
        if balanced:
            return _balanced_entropy_gradient(point, N)[1]
        return dln_entropy_gradient(point, N)

    def entropy_hvp(point: Array, vector: Array) -> Array:
        if balanced:
            return _balanced_entropy_hvp(point, vector, N)
        return dln_entropy_hvp(point, vector, N)

    @pymanopt.function.numpy(manifold)
    def F(point):
        return float(base.cost(point)) - T * entropy(point)

    @pymanopt.function.numpy(manifold)
    def F_gradient(point):
        gE = base.euclidean_gradient(point)
        if T == 0.0:
            return gE
        return gE - T * entropy_gradient(point)

    hessian_E = None
    try:
        hessian_E = base.euclidean_hessian
    except NotImplementedError:
        hessian_E = None

    F_hessian = None
    if hessian_E is not None:

        @pymanopt.function.numpy(manifold)
        def F_hessian(point, vector):
            hE = hessian_E(point, vector)
            if T == 0.0:
                return hE
            return hE - T * entropy_hvp(point, vector)

    problem = pymanopt.Problem(
        manifold, F, euclidean_gradient=F_gradient, euclidean_hessian=F_hessian
    )
    problem.energy = base
    problem.temperature = T
    problem.depth = N
    problem.entropy = entropy
    problem.entropy_gradient = entropy_gradient
    return problem
