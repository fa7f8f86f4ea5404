"""Brute-force reference implementations of the balanced manifold's geometry (slow).

Independent of the frame kernels: the dense Jacobian of the balance constraints
h(W)_p = W_{p+1}^T W_{p+1} - W_p W_p^T, the tangent space as its kernel, and the
orthogonal projection onto that kernel by least squares. Tests compare the fast
kernels of :class:`thermanopt.manifolds.BalancedManifold` against these.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._backend import ArraySpec, is_torch, namespace
from .._backend import matrix_transpose as _mT

Array = Any

__all__ = ["constraint_jacobian", "dense_projection", "tangent_space_dimension"]


def _apply_constraint_jacobian(W: Array, E: Array) -> Array:
    """J(W)[E]_p = E_{p+1}^T W_{p+1} + W_{p+1}^T E_{p+1} - E_p W_p^T - W_p E_p^T (batched E)."""
    a = _mT(E[..., 1:, :, :]) @ W[1:]
    b = E[..., :-1, :, :] @ _mT(W[:-1])
    return a + _mT(a) - b - _mT(b)


def constraint_jacobian(W: Array) -> Array:
    """Dense Jacobian of the independent balance constraints.

    Rows: the entries i <= j of each symmetric h_p, p = 1..N-1; columns: the N d^2 entries
    of W in C order. Shape ((N-1) d (d+1)/2, N d^2).
    """
    xp = namespace(W)
    N, d = W.shape[0], W.shape[-1]
    n = N * d * d
    device = W.device if is_torch(W) else None
    basis = xp.reshape(xp.eye(n, dtype=W.dtype, device=device), (n, N, d, d))
    Jfull = _apply_constraint_jacobian(W, basis)  # (n, N-1, d, d)
    iu, ju = np.triu_indices(d)
    rows = Jfull[:, :, iu.tolist(), ju.tolist()] if is_torch(W) else Jfull[:, :, iu, ju]
    return xp.reshape(xp.permute_dims(rows, (1, 2, 0)), (-1, n))


def dense_projection(W: Array, E: Array) -> Array:
    """Orthogonal projection of E onto ker J(W): E - J^T mu, mu = argmin |J^T mu - E|."""
    xp = namespace(W, E)
    J = constraint_jacobian(W)
    e = xp.reshape(E, (-1, 1))
    if J.shape[0] == 0:
        return E * 1
    if is_torch(W):
        mu = xp.linalg.lstsq(_mT(J), e)[0]
    else:
        mu = np.linalg.lstsq(J.T, e, rcond=None)[0]
    return E - xp.reshape(_mT(J) @ mu, E.shape)


def tangent_space_dimension(W: Array) -> int:
    """dim ker J(W) from the rank of the dense constraint Jacobian (in float64)."""
    Wn = np.asarray(ArraySpec("numpy", None, np.float64).asarray(W))
    N, d = Wn.shape[0], Wn.shape[-1]
    if N == 1:
        return d * d
    J = constraint_jacobian(Wn)
    sv = np.linalg.svd(J, compute_uv=False)
    tol = sv[0] * max(J.shape) * 1e3 * np.finfo(np.float64).eps if sv.size else 0.0
    return int(J.shape[1] - np.sum(sv > tol))
