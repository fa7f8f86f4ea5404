"""Shared spectral helpers of the deep linear network (DLN).

All geometry of the DLN observable space is diagonal in the SVD basis of the
end-to-end matrix X = U diag(s) V^T. This module computes that SVD and the
Hadamard multiplier of the metric g_N once, for every consumer (metric, lift,
projection, entropy):

    K_ij = sum_{k=0}^{N-1} a_i^{N-1-k} a_j^k,   a_i = s_i^(2/N),

which equals (s_i^2 - s_j^2) / (s_i^(2/N) - s_j^(2/N)) off the diagonal and
N s_i^(2(N-1)/N) when s_i = s_j (Menon & Yu, arXiv 2509.09088; Bah et al.,
arXiv 1910.05505). With x = log s^2 and delta = x_i - x_j,

    log K_ij = ((N-1)/(2N)) (x_i + x_j) + log N + h(|delta|/2) - h(|delta|/(2N)),
    h(y) = log(sinh(y) / y),

which has no 0/0 at coinciding singular values (h(0) = 0) and keeps K to a
few ulps for gaps down to 0 and singular values from 1e-300 upward. K itself
(:func:`multiplier_K`) is the sum form scaled by its largest term: as exact, and
no transcendental function of a d x d array.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._backend import matrix_transpose, namespace

Array = Any

__all__ = ["SVD", "svd", "log_K", "multiplier_K", "log_sinhc"]


class SVD(NamedTuple):
    """X = U diag(s) V^T with s sorted in decreasing order."""

    U: Array
    s: Array
    V: Array


def svd(X: Array) -> SVD:
    """Thin SVD over the last two axes, returning (U, s, V) with X = U diag(s) V^T.

    Singular values are non-negative and decreasing (the LAPACK convention).
    Batched over leading axes; keeps device and dtype.
    """
    xp = namespace(X)
    U, s, Vt = xp.linalg.svd(X, full_matrices=False)
    return SVD(U, s, matrix_transpose(Vt))


def log_sinhc(y: Array) -> Array:
    """h(y) = log(sinh(y) / y) for y >= 0, with h(0) = 0, for every y without overflow.

    Evaluated as h(y) = y + log(-expm1(-2y) / (2y)): ``expm1`` keeps the ratio
    accurate to a few ulps near y = 0 (absolute error of h about eps, which is
    what log K needs), and nothing overflows for large y. Exactly 0 at y = 0.
    """
    xp = namespace(y)
    positive = y > 0
    safe = xp.where(positive, y, xp.ones_like(y))
    h = safe + xp.log(-xp.expm1(-2.0 * safe) / (2.0 * safe))
    return xp.where(positive, h, xp.zeros_like(y))


def log_K(s: Array, depth: int) -> Array:
    """log K_ij(s) for singular values ``s`` (shape (..., d)) -> shape (..., d, d).

    Stable through s_i = s_j (limit log N + ((N-1)/N) log s_i^2) and for tiny or
    huge s; depth 1 gives 0. Requires s > 0 (log s enters).
    """
    xp = namespace(s)
    N = int(depth)
    if N < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    x = 2.0 * xp.log(s)
    xi = x[..., :, None]
    xj = x[..., None, :]
    y = xp.abs(xi - xj) / 2.0
    if N == 1:
        return xp.zeros_like(y)
    return ((N - 1) / (2.0 * N)) * (xi + xj) + math.log(N) + log_sinhc(y) - log_sinhc(y / N)


def multiplier_K(s: Array, depth: int) -> Array:
    """The Hadamard multiplier K_ij(s) of A_{N,X} (shape (..., d, d)), positive.

    K_ij = max(a_i, a_j)^(N-1) sum_{k=0}^{N-1} r_ij^k with r_ij = min(a_i, a_j) / max(a_i, a_j)
    in [0, 1] and a = s^(2/N): the sum form of the module docstring scaled by its largest
    term, so it is exact at s_i = s_j (r = 1, K = N a_i^(N-1)) and at s_j = 0 (r = 0), with
    no cancellation and no transcendental function of a d x d array (a few ulps, like
    exp(log_K)). K overflows only where K itself exceeds the floating-point range.
    """
    xp = namespace(s)
    N = int(depth)
    if N < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if N == 1:
        return xp.ones_like(s[..., :, None]) * xp.ones_like(s[..., None, :])
    a = s ** (2.0 / N)
    ai, aj = a[..., :, None], a[..., None, :]
    b = s ** (2.0 * (N - 1) / N)  # a^(N-1): max(a_i, a_j)^(N-1) = max(b_i, b_j)
    r = xp.minimum(ai, aj) / xp.maximum(ai, aj)
    g = r + 1.0  # Horner: sum_{k<N} r^k (one live temporary: cheaper than fewer operations)
    for _ in range(N - 2):
        g = g * r + 1.0
    return xp.maximum(b[..., :, None], b[..., None, :]) * g
