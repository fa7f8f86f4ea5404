"""Boltzmann entropy of the deep linear network (DLN) fibre, in closed form.

Menon & Yu, "An entropy formula for the Deep Linear Network", arXiv 2509.09088
(the volume of the group orbit O_X). A balanced point W over the
end-to-end matrix X = U diag(s) V^T (width d, depth N) has the fibre
phi^{-1}(X) = O(d)^{N-1} . W, whose Riemannian volume (Frobenius metric) is

    vol(O_X) = c_d^{N-1} sqrt(van(s^2) / van(s^{2/N})) = c_d^{N-1} prod_{i<j} sqrt(K_ij),
    K_ij     = sum_{k=0}^{N-1} a_i^{N-1-k} a_j^k,   a_i = s_i^{2/N},

with c_d = vol(O(d)) for the metric <A, B> = tr(A^T B), both components
(:func:`orthogonal_group_volume`). The entropy is its logarithm,

    S_N(X) = (1/2) sum_{i<j} log K_ij(s)  [+ (N-1) log c_d].

Convention: ``reduced=True`` (default) omits the additive constant
(N-1) log c_d, which does not depend on X; ``reduced=False`` includes it and
then equals log vol(O_X) exactly. N = 1 gives S = 0; N = 2 gives
(1/2) sum_{i<j} log(s_i + s_j); S(tX) = S(X) + (d(d-1)/2)((N-1)/N) log t.

Stable evaluation (pairs i < j only, so the work is d(d-1)/2 per matrix).
With x = log s^2 and a = |x_i - x_j| / 2, the log-sinhc form of
:func:`thermanopt.manifolds._svd.log_K` rearranges to

    log K_ij = ((N-1)/(2N))(x_i + x_j) + (1 - 1/N) a + log(expm1(-2a) / expm1(-2a/N)),

with limit log N at a = 0 (accurate through s_i = s_j, no overflow for any s).
The gradient in the singular values is

    dS/ds_i = (1/s_i) sum_{j != i} g(x_i - x_j),
    g(delta) = (N-1)/(2N) + (1/2) [L(delta/2) - L(delta/(2N)) / N]
             = (N-1)/(2N) + (1/2) [coth(delta/2) - coth(delta/(2N)) / N],

where L(y) = coth(y) - 1/y is the Langevin function (the derivative of
h(y) = log(sinh(y)/y)); near delta = 0 it is summed as one Bernoulli series,
so the gradient is finite and exact at coincident singular values
(g(0) = (N-1)/(2N)). The Euclidean gradient in X is U diag(dS/ds) V^T; the
exact Hessian-vector product follows the Lewis-Sendov formula for spectral
functions, with every divided difference written in a cancellation-free form
(see :func:`dln_entropy_hvp`).

Rank deficiency: one zero singular value keeps S finite (K_ij -> s_i^{2(N-1)/N}
as s_j -> 0, used exactly for s_j = 0); two or more make K_ij = 0 and
S = -infinity, and :func:`dln_entropy` raises :class:`RankDeficientError` (a
``ValueError``).

What counts as zero. A backward-stable SVD returns each singular value with an
absolute error of order eps * s_max, so a computed singular value below the
resolution d * eps * s_max (the ``numpy.linalg.matrix_rank`` threshold) cannot
be told from zero. :func:`dln_entropy` therefore raises when two or more
singular values of X are exactly zero (S = -infinity), and also when two or more
lie below the resolution: then S may be -infinity or finite, and floating point
cannot say which (the message says so and does not call S -infinity). Diagonal X
is the exception: its singular values are |X_ii|, exact whatever their spread,
so only exact zeros count and diag(1e150, 1, 1e-150) has its finite entropy. For
any other X known to have full rank, pass its exact singular values to
:func:`entropy_from_singular_values`, which judges rank by exact zeros only.

The gradient is unbounded at singular X (for N >= 3):
:func:`dln_entropy_gradient` raises for an exactly zero singular value.

Autodiff: :func:`dln_entropy` works inside torch autograd (a custom
``torch.autograd.Function`` whose backward is :func:`dln_entropy_gradient`
and whose double backward is the exact Hessian-vector product, so it is finite
where the SVD backward is not) and inside HIPS ``autograd`` costs of Pymanopt
(registered primitives, gradient and Hessian-vector products).
"""

from __future__ import annotations

import math
import operator
from fractions import Fraction
from typing import Any

import array_api_compat
import numpy as np

from .._backend import check_finite, eps, is_torch, matrix_transpose, namespace
from ..manifolds._svd import log_K, log_sinhc, svd

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

Array = Any


class RankDeficientError(ValueError):
    """X has two or more (numerically) zero singular values: S_N(X) = -infinity."""


__all__ = [
    "RankDeficientError",
    "dln_entropy",
    "dln_entropy_gradient",
    "dln_entropy_and_gradient",
    "dln_entropy_hvp",
    "entropy_from_singular_values",
    "entropy_gradient_from_singular_values",
    "log_K",
    "orthogonal_group_volume",
    "log_orthogonal_group_volume",
]


# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------


def log_orthogonal_group_volume(d: int) -> float:
    """log vol(O(d)) for the Frobenius metric <A, B> = tr(A^T B), both components.

    c_d = 2 * 2^{d(d-1)/4} * prod_{k=1}^{d-1} |S^k|,  |S^k| = 2 pi^{(k+1)/2} / Gamma((k+1)/2).
    (SO(d) has volume prod |S^k| for the metric (1/2) tr(A^T B); the Frobenius
    metric scales lengths by sqrt(2), volumes by 2^{dim/2}; O(d) has two components.)
    """
    d = int(d)
    if d < 1:
        raise ValueError(f"width d must be >= 1, got {d}")
    out = math.log(2.0) + (d * (d - 1) / 4.0) * math.log(2.0)
    for k in range(1, d):
        out += math.log(2.0) + ((k + 1) / 2.0) * math.log(math.pi) - math.lgamma((k + 1) / 2.0)
    return out


def orthogonal_group_volume(d: int) -> float:
    """vol(O(d)) = c_d for the Frobenius metric, both components.

    c_1 = 2, c_2 = 4 sqrt(2) pi, c_3 ~ 446.647, c_4 ~ 24936.73. Overflows to inf
    for very large d; use :func:`log_orthogonal_group_volume` there.
    """
    try:
        return math.exp(log_orthogonal_group_volume(d))
    except OverflowError:
        return math.inf


# --------------------------------------------------------------------------------------
# The Langevin function L(y) = coth(y) - 1/y and its divided difference
# --------------------------------------------------------------------------------------


def _bernoulli_even(n_terms: int) -> list[Fraction]:
    """B_0, B_1, ..., B_{2 n_terms} by the standard recurrence (exact rationals)."""
    m = 2 * n_terms
    B = [Fraction(0)] * (m + 1)
    B[0] = Fraction(1)
    for n in range(1, m + 1):
        B[n] = -sum(math.comb(n + 1, k) * B[k] for k in range(n)) / Fraction(n + 1)
    return B


def _langevin_coefficients(n_terms: int = 14) -> tuple[float, ...]:
    """c_n with L(y) = sum_{n>=1} c_n y^{2n-1}, c_n = 2^{2n} B_{2n} / (2n)!."""
    B = _bernoulli_even(n_terms)
    return tuple(
        float(Fraction(2 ** (2 * n)) * B[2 * n] / math.factorial(2 * n))
        for n in range(1, n_terms + 1)
    )


_L_COEF = _langevin_coefficients()  # series converges for |y| < pi; used for |y| < 0.6


_L_SMALL = 0.25  # series below, 1/tanh(y) - 1/y above (cancellation <= 3/y^2 = 48 ulp)
_L_COEF_SHORT = _L_COEF[:8]  # truncation (0.25/pi)^16 ~ 3e-18 relative


def _langevin(y: Array) -> Array:
    """L(y) = coth(y) - 1/y (odd, L(0) = 0), accurate to a few ulp for every y."""
    xp = namespace(y)
    small = xp.abs(y) < _L_SMALL
    ys = xp.where(small, y, xp.zeros_like(y))
    y2 = ys * ys
    acc = xp.zeros_like(y) + _L_COEF_SHORT[-1]
    for c in reversed(_L_COEF_SHORT[:-1]):
        acc = acc * y2 + c
    series = ys * acc
    yb = xp.where(small, xp.ones_like(y), y)
    direct = 1.0 / xp.tanh(yb) - 1.0 / yb
    return xp.where(small, series, direct)


def _log_sinh(a: Array) -> Array:
    """log sinh(a) for a >= 0.5 without overflow."""
    xp = namespace(a)
    return a + xp.log1p(-xp.exp(-2.0 * a)) - math.log(2.0)


def _langevin_dd(u: Array, v: Array) -> Array:
    """Divided difference D(u, v) = (L(u) - L(v)) / (u - v), D(u, u) = L'(u).

    Three cancellation-free branches: the Bernoulli series of the divided
    difference (sum_n c_n sum_k u^k v^{2n-2-k}) when max(|u|, |v|) < 0.6; the
    identity D = 1/(uv) - sinhc(u - v) / (sinh u sinh v) when u, v have the same
    sign and min(|u|, |v|) >= 0.5; the plain quotient otherwise (then |u - v| >= 0.1).
    """
    xp = namespace(u, v)
    u, v = xp.broadcast_arrays(u, v)
    au, av = xp.abs(u), xp.abs(v)
    zero = xp.zeros_like(u)
    one = xp.ones_like(u)
    # series branch
    ser_mask = xp.maximum(au, av) < 0.6
    us = xp.where(ser_mask, u, zero)
    vs = xp.where(ser_mask, v, zero)
    h = one  # h_m(u, v) = sum_{k=0}^m u^k v^{m-k}
    vm = one
    series = _L_COEF[0] * h
    for c in _L_COEF[1:]:
        for _ in range(2):
            vm = vm * vs
            h = us * h + vm
        series = series + c * h
    # same-sign branch
    same_mask = (~ser_mask) & (u * v > 0) & (xp.minimum(au, av) >= 0.5)
    a = xp.where(same_mask, au, one)
    b = xp.where(same_mask, av, one)
    second = xp.exp(log_sinhc(xp.abs(a - b)) - _log_sinh(a) - _log_sinh(b))
    same = 1.0 / (a * b) - second
    # plain quotient (|u - v| >= 0.1 here)
    plain_mask = (~ser_mask) & (~same_mask)
    safe_gap = xp.where(plain_mask, u - v, one)
    plain = (_langevin(u) - _langevin(v)) / safe_gap
    return xp.where(ser_mask, series, xp.where(same_mask, same, plain))


def _g_tilde(delta: Array, N: int) -> Array:
    """g(delta) - (N-1)/(2N) = (1/2)[L(delta/2) - L(delta/(2N))/N] (odd in delta).

    The 1/y parts of the two Langevin functions cancel exactly, leaving
    (1/2)[coth(y) - coth(y/N)/N] with y = delta/2, used for |y| >= 0.25
    (cancellation <= 48 ulp); below, one series
    sum_n (c_n/2)(1 - N^{-2n}) y^{2n-1} (truncation ~ 3e-18 relative).
    """
    xp = namespace(delta)
    y = delta / 2.0
    small = xp.abs(y) < _L_SMALL
    ys = xp.where(small, y, xp.zeros_like(y))
    y2 = ys * ys
    coef = [0.5 * c * (1.0 - float(N) ** (-2 * n)) for n, c in enumerate(_L_COEF_SHORT, 1)]
    acc = y2 * coef[-1] + coef[-2]
    for c in reversed(coef[:-2]):
        acc = acc * y2 + c
    series = ys * acc
    yb = xp.where(small, xp.ones_like(y), y)
    direct = 0.5 / xp.tanh(yb) - (0.5 / N) / xp.tanh(yb / N)
    return xp.where(small, series, direct)


def _dg(a: Array, b: Array, N: int) -> Array:
    """(g(a) - g(b)) / (a - b) = D(a/2, b/2)/4 - D(a/(2N), b/(2N)) / (4 N^2); g'(a) at a = b."""
    return 0.25 * _langevin_dd(a / 2.0, b / 2.0) - _langevin_dd(a / (2.0 * N), b / (2.0 * N)) / (
        4.0 * N * N
    )


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------


def _check_depth(depth: int) -> int:
    """``depth`` as a Python int >= 1: ``TypeError`` for non-numbers (None, str,
    bool), ``ValueError`` for NaN, inf, non-integral or < 1 values."""
    if isinstance(depth, bool) or depth is None or isinstance(depth, (str, bytes)):
        raise TypeError(f"depth must be an integer >= 1, got {depth!r}")
    try:
        value = operator.index(depth)
    except TypeError:
        try:
            f = float(depth)
        except (TypeError, ValueError):
            raise TypeError(
                f"depth must be an integer >= 1, got {type(depth).__name__} {depth!r}"
            ) from None
        if not math.isfinite(f) or f != int(f):
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}") from None
        value = int(f)
    if value < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    return int(value)


def _check_square(X: Array, name: str = "X") -> None:
    shape = tuple(X.shape)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ValueError(f"{name} must be square (shape (..., d, d)), got shape {shape}")
    if shape[-1] < 1:
        raise ValueError(f"{name} must have width >= 1, got shape {shape}")


_SVD_DTYPES = ("float32", "float64")


def _check_floating(X: Array, name: str = "X") -> None:
    """X must be float32 or float64: the SVD has no kernels for other dtypes."""
    dtype = X.dtype if is_torch(X) else np.asarray(X).dtype
    text = str(dtype).replace("torch.", "")
    floating = dtype.is_floating_point if is_torch(X) else np.issubdtype(dtype, np.floating)
    if not floating:
        raise ValueError(f"{name} must have a real floating dtype, got {text}")
    if text not in _SVD_DTYPES:
        raise ValueError(
            f"{name} has dtype {text}, which the SVD does not support; use float32 or float64 "
            f"(e.g. {name}.double() or {name}.astype(numpy.float64))"
        )


def _first_bad(mask: Array) -> str:
    """Human-readable index of the first True entry of a batch mask."""
    m = np.asarray(mask.detach().cpu()) if is_torch(mask) else np.asarray(mask)
    if m.ndim == 0:
        return ""
    idx = tuple(int(i) for i in np.argwhere(m)[0])
    return f" (batch index {idx})"


def _rank_tolerance(s: Array, d: int, X: Array | None = None) -> Array:
    """Resolution d * eps * s_max of the computed singular values (the
    ``numpy.linalg.matrix_rank`` default); 0 for diagonal X, whose singular
    values |X_ii| are exact."""
    xp = namespace(s)
    tol = d * eps(s) * xp.max(s, axis=-1, keepdims=True)
    if X is not None and d > 1:
        off = X * (1.0 - xp.eye(d, dtype=X.dtype, device=array_api_compat.device(X)))
        diagonal = xp.all(off == 0, axis=(-2, -1))
        tol = xp.where(diagonal[..., None], xp.zeros_like(tol), tol)
    return tol


def _check_rank_entropy(s: Array, depth: int, X: Array | None = None) -> None:
    """Two or more zero singular values make S = -inf; two or more below the SVD's
    resolution make S undecidable in floating point: raise in both cases."""
    if depth == 1:
        return
    xp = namespace(s)
    d = s.shape[-1]
    if d < 2:  # d = 1: S = 0 whatever s is
        return
    exact = xp.sum(xp.astype(s == 0, s.dtype), axis=-1) >= 2
    if bool(xp.any(exact)):
        raise RankDeficientError(
            "X is rank-deficient: two or more singular values are zero, so the entropy is "
            f"-infinity{_first_bad(exact)}"
        )
    tol = _rank_tolerance(s, d, X)
    bad = xp.sum(xp.astype(s <= tol, s.dtype), axis=-1) >= 2
    if bool(xp.any(bad)):
        raise RankDeficientError(
            "X is numerically rank-deficient: two or more singular values are below the SVD's "
            "resolution d * eps * s_max, so they cannot be told from zero and the entropy "
            "(-infinity if they are zero) cannot be computed from X; if X has full rank, pass "
            f"its exact singular values to entropy_from_singular_values{_first_bad(bad)}"
        )


def _check_full_rank(s: Array, what: str) -> None:
    """Raise for an exactly zero singular value (tiny positive ones give large, finite values)."""
    xp = namespace(s)
    bad = xp.any(s <= 0, axis=-1)
    if bool(xp.any(bad)):
        raise ValueError(
            f"X is singular (a zero singular value); {what} is unbounded there{_first_bad(bad)}"
        )


def _check_singular_values(s: Array, depth: int) -> None:
    if len(tuple(s.shape)) < 1:
        raise ValueError("s must have shape (..., d)")
    check_finite(s, "singular values s")
    xp = namespace(s)
    if bool(xp.any(s < 0)):
        raise ValueError("singular values s must be non-negative")
    if depth > 1 and s.shape[-1] >= 2:
        nzero = xp.sum(xp.astype(s == 0, s.dtype), axis=-1)
        bad = nzero >= 2
        if bool(xp.any(bad)):
            raise RankDeficientError(
                "rank-deficient: two or more singular values are zero, so the entropy is "
                f"-infinity{_first_bad(bad)}"
            )


def _scalar_out(S: Array) -> Array:
    """A Python float for one NumPy matrix; arrays/tensors are returned as they are."""
    if not is_torch(S) and np.ndim(S) == 0:
        return float(S)
    return S


# --------------------------------------------------------------------------------------
# Spectral kernels (no validation; s > 0 except where stated)
# --------------------------------------------------------------------------------------


def _entropy_kernel(s: Array, depth: int) -> Array:
    """Reduced S from s (..., d); s >= 0 with at most one exact zero per row.

    Evaluated on the pairs i < j only. With x = log s^2 and a = |x_i - x_j| / 2,
    log K_ij = ((N-1)/(2N))(x_i + x_j) + log(sinh(a) / sinh(a/N))
             = ((N-1)/(2N))(x_i + x_j) + (1 - 1/N) a + log(expm1(-2a) / expm1(-2a/N)),
    (limit log N at a = 0), which is the log-sinhc form of
    :func:`thermanopt.manifolds._svd.log_K` rearranged into three transcendental
    calls per pair, free of overflow and cancellation; the tests check it
    against ``log_K`` itself and against mpmath.
    """
    xp = namespace(s)
    N = depth
    d = s.shape[-1]
    if N == 1 or d == 1:
        return xp.sum(xp.zeros_like(s), axis=-1)
    zero = s == 0
    any_zero = bool(xp.any(zero))
    s_safe = xp.where(zero, xp.ones_like(s), s) if any_zero else s
    x = 2.0 * xp.log(s_safe)
    iu, ju, _ = _pair_incidence(d, s)
    xi = xp.take(x, iu, axis=-1)
    xj = xp.take(x, ju, axis=-1)
    a = xp.abs(xi - xj) / 2.0
    tied = a == 0
    a_safe = xp.where(tied, xp.ones_like(a), a)
    ratio = xp.where(
        tied, xp.zeros_like(a) + N, xp.expm1(-2.0 * a_safe) / xp.expm1(-2.0 * a_safe / N)
    )
    lk = ((N - 1) / (2.0 * N)) * (xi + xj) + ((1.0 - 1.0 / N) * a + xp.log(ratio))
    if any_zero:  # exact limits: K_ij = s_i^{2(N-1)/N} when s_j = 0; K_ij = 0 when both are
        zi = xp.take(zero, iu, axis=-1)
        zj = xp.take(zero, ju, axis=-1)
        lk = xp.where(zj & ~zi, ((N - 1) / N) * xi, lk)
        lk = xp.where(zi & ~zj, ((N - 1) / N) * xj, lk)
        lk = xp.where(zi & zj, xp.zeros_like(lk) - math.inf, lk)
    return 0.5 * xp.sum(lk, axis=-1)


_PAIR_CACHE: dict = {}


def _pair_incidence(d: int, like: Array) -> tuple[Array, Array, Array]:
    """Index arrays (iu, ju) of the pairs i < j and the incidence matrix B (P x d),
    B[p, iu_p] = +1, B[p, ju_p] = -1, as arrays like ``like`` (cached per device/dtype)."""
    key = (d, is_torch(like), str(like.dtype), str(array_api_compat.device(like)))
    hit = _PAIR_CACHE.get(key)
    if hit is None:
        iu, ju = np.triu_indices(d, 1)
        B = np.zeros((iu.size, d))
        B[np.arange(iu.size), iu] = 1.0
        B[np.arange(iu.size), ju] = -1.0
        if is_torch(like):
            dev = like.device
            hit = (
                torch.as_tensor(iu, device=dev),
                torch.as_tensor(ju, device=dev),
                torch.as_tensor(B, dtype=like.dtype, device=dev),
            )
        else:
            hit = (iu, ju, B.astype(like.dtype))
        if len(_PAIR_CACHE) > 64:
            _PAIR_CACHE.clear()
        _PAIR_CACHE[key] = hit
    return hit


def _gradient_kernel(s: Array, depth: int) -> Array:
    """dS/ds_i = (1/s_i) sum_{j != i} g(x_i - x_j), x = log s^2 (s > 0).

    g - (N-1)/(2N) is odd, so it is evaluated once per pair i < j and scattered
    with the incidence matrix of the pairs (one small matmul).
    """
    xp = namespace(s)
    N = depth
    d = s.shape[-1]
    if N == 1 or d == 1:
        return xp.zeros_like(s)
    x = 2.0 * xp.log(s)
    iu, ju, B = _pair_incidence(d, s)
    delta = xp.take(x, iu, axis=-1) - xp.take(x, ju, axis=-1)
    G = (d - 1) * (N - 1) / (2.0 * N) + xp.matmul(_g_tilde(delta, N)[..., None, :], B)[..., 0, :]
    return G / s


_CPU_CHUNK = 1 << 17  # pair entries per chunk on the CPU (cache-sized temporaries)


def _on_cpu(x: Array) -> bool:
    return not is_torch(x) or x.device.type == "cpu"


def _chunk_rows(kernel, s: Array, depth: int, per_row: int) -> Array:
    """Apply a row-wise spectral ``kernel`` to s (..., d) in batch chunks on the CPU.

    Elementwise passes over whole batches of pair arrays are memory-bound and pay
    page faults for every fresh large temporary; chunks of ~1e5 entries run several
    times faster. On accelerators the batch goes through in one piece.
    """
    xp = namespace(s)
    batch = tuple(s.shape[:-1])
    n = int(np.prod(batch)) if batch else 1
    rows = max(1, _CPU_CHUNK // max(1, per_row))
    if not _on_cpu(s) or n <= rows:
        return kernel(s, depth)
    d = s.shape[-1]
    flat = xp.reshape(s, (n, d))
    parts = [kernel(flat[i : i + rows], depth) for i in range(0, n, rows)]
    out = xp.concat(parts, axis=0)
    return xp.reshape(out, batch + tuple(out.shape[1:]))


def _entropy_spectral(s: Array, depth: int) -> Array:
    """Reduced S from s (..., d) (see :func:`_entropy_kernel`), chunked on the CPU."""
    d = s.shape[-1]
    return _chunk_rows(_entropy_kernel, s, depth, d * (d - 1) // 2)


def _gradient_spectral(s: Array, depth: int) -> Array:
    """dS/ds from s (..., d) (see :func:`_gradient_kernel`), chunked on the CPU."""
    d = s.shape[-1]
    return _chunk_rows(_gradient_kernel, s, depth, d * (d - 1) // 2)


def _spectral_to_matrix(U: Array, f: Array, V: Array) -> Array:
    """U diag(f) V^T."""
    xp = namespace(U)
    return xp.matmul(U * f[..., None, :], matrix_transpose(V))


def _hvp_spectral(U: Array, s: Array, V: Array, Z: Array, depth: int) -> Array:
    """Exact Hessian-vector product of S at X = U diag(s) V^T along Z (Lewis-Sendov).

    In the SVD basis, Zt = U^T Z V, the result is U R V^T with
      R_ii = sum_j H_ij Zt_jj                (H = Hessian of S in s),
      R_ij = P_ij (Zt_ij + Zt_ji)/2 + Q_ij (Zt_ij - Zt_ji)/2   (i != j),
      P_ij = (f_i - f_j)/(s_i - s_j),  Q_ij = (f_i + f_j)/(s_i + s_j),  f = dS/ds.
    With G_i = s_i f_i and Delta = x_i - x_j,
      P_ij = 2 T_ij / (LM_ij s_i) - G_j / (s_i s_j),
      T_ij = sum_{k != i,j} Dg(x_i - x_k, x_j - x_k) + 2 Dg(Delta, -Delta),
    LM_ij = (s_i - s_j)/(log s_i - log s_j) = exp((x_i + x_j)/4) sinhc(Delta/4) the
    logarithmic mean and Dg the divided difference of g, so nothing cancels at
    s_i = s_j.
    """
    xp = namespace(U, Z)
    N = depth
    d = s.shape[-1]
    if N == 1 or d == 1:
        return xp.zeros_like(Z)
    Zt = xp.matmul(xp.matmul(matrix_transpose(U), Z), V)
    x = 2.0 * xp.log(s)
    delta = x[..., :, None] - x[..., None, :]
    G = (d - 1) * (N - 1) / (2.0 * N) + xp.sum(_g_tilde(delta, N), axis=-1)
    f = G / s
    idx = xp.arange(d, device=array_api_compat.device(s))
    eye = idx[:, None] == idx[None, :]
    zeros_dd = xp.zeros_like(delta)
    # Hessian in s: (2/(s_i s_j)) Hx_ij - delta_ij G_i / s_i^2
    gp = _dg(delta, delta, N)
    gp_off = xp.where(eye, zeros_dd, gp)
    Hx = xp.where(eye, xp.sum(gp_off, axis=-1)[..., :, None] + zeros_dd, -gp)
    ss = s[..., :, None] * s[..., None, :]
    Hs = 2.0 * Hx / ss - xp.where(eye, (G / (s * s))[..., :, None] + zeros_dd, zeros_dd)
    zdiag = xp.sum(xp.where(eye, Zt, xp.zeros_like(Zt)), axis=-1)
    rdiag = xp.sum(Hs * zdiag[..., None, :], axis=-1)
    # P via divided differences (d^3 work)
    a = x[..., :, None, None] - x[..., None, None, :]  # x_i - x_k
    b = x[..., None, :, None] - x[..., None, None, :]  # x_j - x_k
    Dsum = xp.sum(_dg(a, b, N), axis=-1)
    T = Dsum - _dg(zeros_dd, -delta, N) - _dg(delta, zeros_dd, N) + 2.0 * _dg(delta, -delta, N)
    LM = xp.exp((x[..., :, None] + x[..., None, :]) / 4.0 + log_sinhc(xp.abs(delta) / 4.0))
    P = 2.0 * T / (LM * s[..., :, None]) - G[..., None, :] / ss
    P = 0.5 * (P + matrix_transpose(P))
    Q = (f[..., :, None] + f[..., None, :]) / (s[..., :, None] + s[..., None, :])
    ZtT = matrix_transpose(Zt)
    R = P * (0.5 * (Zt + ZtT)) + Q * (0.5 * (Zt - ZtT))
    R = xp.where(eye, rdiag[..., :, None] + xp.zeros_like(R), R)
    return xp.matmul(xp.matmul(U, R), matrix_transpose(V))


def _hvp_chunked(U: Array, s: Array, V: Array, Z: Array, depth: int) -> Array:
    """:func:`_hvp_spectral` over flattened batch chunks (the kernel is d^3 per matrix)."""
    xp = namespace(U, Z)
    d = s.shape[-1]
    batch = tuple(Z.shape[:-2])
    n = int(np.prod(batch)) if batch else 1
    per = max(1, (_CPU_CHUNK if _on_cpu(Z) else 1 << 24) // max(1, d**3))
    if n <= per:
        return _hvp_spectral(U, s, V, Z, depth)
    Uf = xp.reshape(U, (n, d, d))
    Vf = xp.reshape(V, (n, d, d))
    sf = xp.reshape(s, (n, d))
    Zf = xp.reshape(Z, (n, d, d))
    parts = [
        _hvp_spectral(Uf[i : i + per], sf[i : i + per], Vf[i : i + per], Zf[i : i + per], depth)
        for i in range(0, n, per)
    ]
    return xp.reshape(xp.concat(parts, axis=0), tuple(Z.shape))


# --------------------------------------------------------------------------------------
# Public API on singular values
# --------------------------------------------------------------------------------------


def entropy_from_singular_values(s: Array, depth: int, *, reduced: bool = True) -> Array:
    """S_N from singular values s (shape (..., d), all >= 0).

    S = (1/2) sum_{i<j} log K_ij(s) [+ (N-1) log c_d when ``reduced=False``].
    One zero singular value per row is allowed (exact limit K_ij = s_i^{2(N-1)/N});
    two make S = -infinity and raise ``ValueError``. Returns a float for one
    NumPy vector, an array (or a torch tensor) otherwise.
    """
    depth = _check_depth(depth)
    if not is_torch(s):
        s = np.asarray(s)
        _check_floating(s, "s")
    _check_singular_values(s, depth)
    S = _entropy_spectral(s, depth)
    if not reduced:
        S = S + (depth - 1) * log_orthogonal_group_volume(s.shape[-1])
    return _scalar_out(S)


def entropy_gradient_from_singular_values(s: Array, depth: int) -> Array:
    """dS/ds_i = (1/s_i) sum_{j != i} g(log s_i^2 - log s_j^2), finite at s_i = s_j (s > 0)."""
    depth = _check_depth(depth)
    if not is_torch(s):
        s = np.asarray(s)
    check_finite(s, "singular values s")
    xp = namespace(s)
    if bool(xp.any(s <= 0)):
        raise ValueError("singular values s must be positive for the entropy gradient")
    return _gradient_spectral(s, depth)


# --------------------------------------------------------------------------------------
# Public API on matrices
# --------------------------------------------------------------------------------------


def _prepare_matrix(X: Array, depth: int, validate: bool) -> tuple[Array, int]:
    depth = _check_depth(depth)
    if not is_torch(X):
        X = np.asarray(X)
    _check_square(X)
    _check_floating(X)
    if validate:
        check_finite(X, "X")
    return X, depth


def _svd_failed(exc: Exception) -> ValueError:
    return ValueError(
        "X: the SVD failed (" + " ".join(str(exc).split())[:160] + "); X contains NaN or inf "
        "or is too badly scaled (validate=True checks X for NaN and inf first)"
    )


def _safe_svdvals(X: Array) -> Array:
    """Singular values of X; a failing SVD (NaN or inf in X) is a ``ValueError``."""
    xp = namespace(X)
    try:
        s = xp.linalg.svdvals(X)
    except (np.linalg.LinAlgError, RuntimeError) as e:
        raise _svd_failed(e) from e
    if not is_torch(s) and not np.all(np.isfinite(s)):  # NumPy: free to check on the host
        raise ValueError("X: the SVD returned non-finite values; X contains NaN or inf")
    return s


def _safe_svd(X: Array) -> tuple[Array, Array, Array]:
    """(U, s, V) of X; a failing SVD (NaN or inf in X) is a ``ValueError``."""
    try:
        U, s, V = svd(X)
    except (np.linalg.LinAlgError, RuntimeError) as e:
        raise _svd_failed(e) from e
    if not is_torch(s) and not np.all(np.isfinite(s)):
        raise ValueError("X: the SVD returned non-finite values; X contains NaN or inf")
    return U, s, V


def _entropy_value(X: Array, depth: int, reduced: bool, validate: bool) -> Array:
    s = _safe_svdvals(X)
    if validate:
        _check_rank_entropy(s, depth, X)
    S = _entropy_spectral(s, depth)
    if not reduced:
        S = S + (depth - 1) * log_orthogonal_group_volume(X.shape[-1])
    return S


def dln_entropy(X: Array, depth: int, *, reduced: bool = True, validate: bool = True) -> Array:
    """Boltzmann entropy S_N(X) of the DLN fibre over X (Menon & Yu, arXiv 2509.09088).

    S_N(X) = (1/2) sum_{i<j} log K_ij(s) with s the singular values of X, plus
    (depth - 1) log vol(O(d)) when ``reduced=False`` (then S = log vol of the
    O(d)^{depth-1} orbit, Frobenius metric). Batched over leading axes of X
    (shape (..., d, d)). Returns a Python float for one NumPy matrix, an array
    for a batch, and a (differentiable) torch tensor for torch input; inside a
    HIPS-autograd trace it returns the traced value.

    Raises ``TypeError`` for a ``depth`` that is not a number (None, a string, a
    bool) and ``ValueError`` for a depth that is not an integer >= 1, for
    non-square X, X of a dtype other than float32/float64, non-finite X, and X
    with two or more zero singular values (S = -infinity) or two or more below the
    SVD's resolution d * eps * s_max (S cannot be resolved; diagonal X is exact
    and exempt; see the module docstring). ``validate=False`` skips the
    finiteness and rank checks (each costs one host synchronisation on a GPU);
    an SVD that fails on NaN or inf is still a ``ValueError``.
    """
    if _is_autograd_box(X):
        _check_square(X)
        return _ag_entropy(X, _check_depth(depth), bool(reduced))
    X, depth = _prepare_matrix(X, depth, validate)
    if is_torch(X) and X.requires_grad and torch.is_grad_enabled():
        return _EntropyFunction.apply(X, depth, bool(reduced), bool(validate))
    return _scalar_out(_entropy_value(X, depth, reduced, validate))


def dln_entropy_gradient(X: Array, depth: int, *, validate: bool = True) -> Array:
    """Euclidean gradient of S_N at X: U diag(dS/ds) V^T (reduced and full S agree).

    dS/ds_i = (1/s_i) sum_{j != i} g(log s_i^2 - log s_j^2) with
    g(delta) = (N-1)/(2N) + (1/2)[L(delta/2) - L(delta/(2N))/N], L(y) = coth y - 1/y;
    finite and exact at coincident singular values. Requires full-rank X
    (``ValueError`` for an exactly zero singular value; for N >= 3 the gradient
    grows like s_min^{2/N - 1} as s_min -> 0).
    """
    if _is_autograd_box(X):
        return _ag_gradient(X, _check_depth(depth))
    X, depth = _prepare_matrix(X, depth, validate)
    U, s, V = _safe_svd(X)
    if validate:
        _check_full_rank(s, "the entropy gradient")
    return _spectral_to_matrix(U, _gradient_spectral(s, depth), V)


def dln_entropy_and_gradient(
    X: Array, depth: int, *, reduced: bool = True, validate: bool = True
) -> tuple[Array, Array]:
    """(S_N(X), grad S_N(X)) from one SVD; see :func:`dln_entropy` and its gradient."""
    X, depth = _prepare_matrix(X, depth, validate)
    U, s, V = _safe_svd(X)
    if validate:
        _check_full_rank(s, "the entropy gradient")
    S = _entropy_spectral(s, depth)
    if not reduced:
        S = S + (depth - 1) * log_orthogonal_group_volume(X.shape[-1])
    return _scalar_out(S), _spectral_to_matrix(U, _gradient_spectral(s, depth), V)


def dln_entropy_hvp(X: Array, Z: Array, depth: int, *, validate: bool = True) -> Array:
    """Exact Euclidean Hessian-vector product D^2 S_N(X)[Z] (Lewis-Sendov formula).

    Stable at coincident singular values (all divided differences are evaluated
    in closed, cancellation-free forms). Cost O(d^3) per matrix. Requires full-rank X.
    """
    depth = _check_depth(depth)
    if not is_torch(X):
        X = np.asarray(X)
        Z = np.asarray(Z)
    _check_square(X)
    if tuple(Z.shape) != tuple(X.shape):
        raise ValueError(f"Z must have the shape of X {tuple(X.shape)}, got {tuple(Z.shape)}")
    _check_floating(X)
    namespace(X, Z)  # same type, device and dtype
    if validate:
        check_finite(X, "X")
        check_finite(Z, "Z")
    U, s, V = _safe_svd(X)
    if validate:
        _check_full_rank(s, "the entropy Hessian")
    return _hvp_chunked(U, s, V, Z, depth)


# --------------------------------------------------------------------------------------
# torch autograd
# --------------------------------------------------------------------------------------

if torch is not None:

    class _EntropyGradFunction(torch.autograd.Function):
        """X -> grad S(X) from a precomputed SVD; its backward is the exact HVP."""

        @staticmethod
        def forward(ctx, X, U, s, V, depth):  # noqa: D102
            ctx.save_for_backward(U, s, V)
            ctx.depth = depth
            return _spectral_to_matrix(U, _gradient_spectral(s, depth), V)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad_out):  # noqa: D102
            U, s, V = ctx.saved_tensors
            return _hvp_chunked(U, s, V, grad_out, ctx.depth), None, None, None, None

    class _EntropyFunction(torch.autograd.Function):
        """X -> S_N(X) with backward grad_out * dln_entropy_gradient(X) (finite at collisions)."""

        @staticmethod
        def forward(ctx, X, depth, reduced, validate):  # noqa: D102
            U, s, V = _safe_svd(X)
            if validate:
                _check_rank_entropy(s, depth, X)
            ctx.save_for_backward(X, U, s, V)
            ctx.depth = depth
            S = _entropy_spectral(s, depth)
            if not reduced:
                S = S + (depth - 1) * log_orthogonal_group_volume(X.shape[-1])
            return S

        @staticmethod
        def backward(ctx, grad_out):  # noqa: D102
            X, U, s, V = ctx.saved_tensors
            G = _EntropyGradFunction.apply(X, U, s, V, ctx.depth)
            return grad_out[..., None, None] * G, None, None, None


# --------------------------------------------------------------------------------------
# HIPS autograd (Pymanopt's autograd backend)
# --------------------------------------------------------------------------------------

try:
    import autograd.numpy as _anp
    from autograd.extend import defvjp as _defvjp
    from autograd.extend import primitive as _primitive
    from autograd.tracer import Box as _Box
except ImportError:  # pragma: no cover
    _Box = None


def _is_autograd_box(x: Array) -> bool:
    return _Box is not None and isinstance(x, _Box)


if _Box is not None:

    @_primitive
    def _ag_entropy(X, depth, reduced):
        X = np.asarray(X)
        _check_floating(X)
        check_finite(X, "X")
        return np.asarray(_entropy_value(X, depth, reduced, True))

    @_primitive
    def _ag_gradient(X, depth):
        return dln_entropy_gradient(np.asarray(X), depth)

    @_primitive
    def _ag_hvp(X, Z, depth):
        return dln_entropy_hvp(np.asarray(X), np.asarray(Z), depth)

    def _ag_entropy_vjp(ans, X, depth, reduced):
        def vjp(g):
            return _anp.reshape(g, _anp.shape(g) + (1, 1)) * _ag_gradient(X, depth)

        return vjp

    def _ag_gradient_vjp(ans, X, depth):
        return lambda g: _ag_hvp(X, g, depth)  # the Hessian is symmetric

    _defvjp(_ag_entropy, _ag_entropy_vjp)
    _defvjp(_ag_gradient, _ag_gradient_vjp)
