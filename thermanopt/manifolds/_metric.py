"""The metric g_N of the deep linear network on observables, in the SVD basis.

For an end-to-end matrix X = U diag(s) V^T in GL(d) and depth N (Menon & Yu,
arXiv 2509.09088; Bah, Rauhut, Terstiege & Westdickenberg, arXiv 1910.05505)

    A_{N,X}(P) = sum_{p=1}^N (X X^T)^{(N-p)/N} P (X^T X)^{(p-1)/N}
               = U (K o (U^T P V)) V^T,
    K_ij = sum_{k=0}^{N-1} a_i^{N-1-k} a_j^k,   a_i = s_i^(2/N),

and g_N(X)(Z1, Z2) = <Z1, A_{N,X}^{-1} Z2>. Everything in this module works
in the SVD basis: "hatted" matrices are P^ = U^T P V. K comes from the shared,
stable :func:`thermanopt.manifolds._svd.multiplier_K` (no 0/0 when singular
values coincide).

Derivative of A (Daleckii-Krein)
--------------------------------
With M = X X^T, M' = X^T X, lambda = s^2 and f_m(lambda) = lambda^(m/N) = a^m,
A = sum_m M^(m/N) P M'^((N-1-m)/N). The divided differences of f_m are

    F_m[i, j] = (a_i^m - a_j^m) / (a_i^N - a_j^N) = K^(m)_ij / K_ij,

where K^(m) is the sum form with m terms, i.e. ``multiplier_K(s^(m/N), m)``:
every F_m is a ratio of two positive sums, exact and stable at s_i = s_j
(F_0 = 0). Since U^T dM U = Z^ S + S Z^^T and V^T dM' V = Z^^T S + S Z^,

    (DA_X[Z](P))^ = sum_{m=1}^{N-1} (F_m o (Z^ S + S Z^^T)) P^ diag(a^{N-1-m})
                                  + diag(a^{N-1-m}) P^ (F_m o (Z^^T S + S Z^)).

Levi-Civita connection
----------------------
In the flat coordinates X (GL(d) is open in R^{d x d}) the Koszul formula for
g(a, b) = <a, B b>, B = A^{-1}, DB[Z] = -B DA[Z] B, gives

    Gamma_X(Z1, Z2) = -1/2 (DA[Z1](P2) + DA[Z2](P1)) + 1/2 A(T(P1, P2)),
    P_i = A^{-1} Z_i,   <T(P1, P2), W> = <P1, DA[W](P2)> for all W,

so that nabla_Z Y = DY[Z] + Gamma_X(Z, Y) and the geodesic equation is
x'' = -Gamma_x(x', x'). The Riemannian Hessian of f is

    Hess f(X)[Z] = A(H[Z]) + DA_X[Z](G) + Gamma_X(Z, A G),

with G the Euclidean gradient and H[Z] the Euclidean Hessian-vector product.

All functions are batched over leading axes and keep device and dtype; they
accept either X or its precomputed :class:`~thermanopt.manifolds._svd.SVD`.
"""

from __future__ import annotations

from typing import Any

from .._backend import matrix_transpose, namespace
from ._svd import SVD, multiplier_K
from .dln import check_depth as _check_depth
from .dln import svd_of

Array = Any

__all__ = [
    "Spectral",
    "spectral",
    "as_svd",
    "multiplier",
    "apply_A",
    "apply_A_inv",
    "apply_DA",
    "christoffel",
    "riemannian_hessian",
    "metric_inner",
    "to_hat",
    "from_hat",
]


def as_svd(X_or_svd: Any) -> SVD:
    """The SVD of X (or of the SVD / :class:`Spectral` passed in place of X)."""
    if isinstance(X_or_svd, Spectral):
        return X_or_svd.f
    return svd_of(X_or_svd)


def to_hat(f: SVD, P: Array) -> Array:
    """P^ = U^T P V."""
    return matrix_transpose(f.U) @ P @ f.V


def from_hat(f: SVD, Ph: Array) -> Array:
    """P = U P^ V^T."""
    return f.U @ Ph @ matrix_transpose(f.V)


def multiplier(X_or_svd: Any, depth: int) -> Array:
    """K_ij(s) of X (shape (..., d, d)); A_{N,X} is U (K o (U^T . V)) V^T."""
    return spectral(X_or_svd, depth).K


def apply_A(X_or_svd: Any, P: Array, depth: int) -> Array:
    """A_{N,X}(P) = U (K o (U^T P V)) V^T: raising an index (the inverse metric).

    Maps the Euclidean gradient to the g_N gradient. One SVD (none if an
    :class:`SVD` or :class:`Spectral` is passed for X), four matrix products, no
    matrix powers. Batched over leading axes (X and P broadcast).
    """
    sp = spectral(X_or_svd, depth)
    namespace(sp.f.U, P)  # mixed type / device / dtype -> ValueError
    if sp.N == 1:
        return P * 1  # a copy: A = identity at depth 1
    return from_hat(sp.f, sp.K * to_hat(sp.f, P))


def apply_A_inv(X_or_svd: Any, P: Array, depth: int) -> Array:
    """A_{N,X}^{-1}(P) = U ((U^T P V) / K) V^T: lowering an index (the metric g_N)."""
    sp = spectral(X_or_svd, depth)
    namespace(sp.f.U, P)
    if sp.N == 1:
        return P * 1
    return from_hat(sp.f, to_hat(sp.f, P) / sp.K)


def metric_inner(X_or_svd: Any, Z1: Array, Z2: Array, depth: int) -> Array:
    """g_N(X)(Z1, Z2) = sum_ij (U^T Z1 V)_ij (U^T Z2 V)_ij / K_ij (a 0-d array per batch)."""
    sp = spectral(X_or_svd, depth)
    xp = namespace(sp.f.U, Z1, Z2)
    Z1h = to_hat(sp.f, Z1)
    Z2h = Z1h if Z2 is Z1 else to_hat(sp.f, Z2)
    return xp.sum(Z1h * Z2h / sp.K, axis=(-2, -1))


# --------------------------------------------------------------------------
# Derivatives of A in the SVD basis


class Spectral:
    """Spectral data of X for depth N, shared by the metric and its derivatives.

    Holds the SVD ``f``, ``s``, ``K`` (the shared :func:`multiplier_K`) and, built
    on first use, the powers a^k = s^(2k/N) (k = 0..N-1) and the divided
    differences F_m = K^(m) / K (m = 1..N-1). These come from the recurrence
    K^(1) = 1, K^(m+1)_ij = a_i K^(m)_ij + a_j^m (sums of positive terms, exact
    at s_i = s_j), evaluated pairwise on a / max(a_i, a_j) so that nothing
    under- or overflows needlessly. Every function of this module accepts a
    :class:`Spectral` in place of X.
    """

    def __init__(self, X_or_svd: Array | SVD, depth: int) -> None:
        f = as_svd(X_or_svd)
        self.f = f
        self.N = _check_depth(depth)
        self.s = f.s
        self.K = multiplier_K(f.s, self.N)
        self._apow: list[Array] | None = None
        self._F: dict[int, Array] | None = None

    def _build(self) -> None:
        xp = namespace(self.s)
        N = self.N
        la = (2.0 / N) * xp.log(self.s)  # log a
        lai, laj = la[..., :, None], la[..., None, :]
        lc = xp.maximum(lai, laj)  # per pair: a_i, a_j scaled by max(a_i, a_j)
        ai, aj = xp.exp(lai - lc), xp.exp(laj - lc)  # in (0, 1], one of them is 1
        sums = [None, xp.ones_like(ai)]  # K^(m)(a / c), m = 1..N; K^(N) >= 1
        ajm = aj
        for _ in range(1, N):
            sums.append(ai * sums[-1] + ajm)
            ajm = ajm * aj
        # F_m is homogeneous of degree m - N in a
        self._F = {m: sums[m] / sums[N] * xp.exp((m - N) * lc) for m in range(1, N)}
        self._apow = [xp.exp(k * la) for k in range(N)]

    @property
    def apow(self) -> list[Array]:
        if self._apow is None:
            self._build()
        return self._apow

    @property
    def F(self) -> dict[int, Array]:
        if self._F is None:
            self._build()
        return self._F


def spectral(X_or_svd: Array | SVD | Spectral, depth: int) -> Spectral:
    """The :class:`Spectral` data of X (returned as is if already one of that depth)."""
    if isinstance(X_or_svd, Spectral):
        if X_or_svd.N != int(depth):
            raise ValueError(f"spectral data of depth {X_or_svd.N} used with depth {depth}")
        return X_or_svd
    return Spectral(X_or_svd, depth)


def _DA_hat(sp: Spectral, Zh: Array, Ph: Array) -> Array:
    """(DA_X[Z](P))^ in the SVD basis."""
    s = sp.s
    ZhT = matrix_transpose(Zh)
    YM = Zh * s[..., None, :] + s[..., :, None] * ZhT  # U^T dM U
    YN = ZhT * s[..., None, :] + s[..., :, None] * Zh  # V^T dM' V
    out = 0.0 * Ph
    for m in range(1, sp.N):
        w = sp.apow[sp.N - 1 - m]
        out = out + (sp.F[m] * YM) @ (Ph * w[..., None, :])
        out = out + (w[..., :, None] * Ph) @ (sp.F[m] * YN)
    return out


def _T_hat(sp: Spectral, P1h: Array, P2h: Array) -> Array:
    """T^ with <T(P1, P2), W> = <P1, DA_X[W](P2)> for all W (Frobenius gradient in W)."""
    s = sp.s
    out = 0.0 * P1h
    for m in range(1, sp.N):
        w = sp.apow[sp.N - 1 - m]
        C1 = sp.F[m] * ((P1h * w[..., None, :]) @ matrix_transpose(P2h))
        C2 = sp.F[m] * (matrix_transpose(P2h) @ (w[..., :, None] * P1h))
        out = out + (C1 + matrix_transpose(C1)) * s[..., None, :]
        out = out + s[..., :, None] * (C2 + matrix_transpose(C2))
    return out


def _christoffel_hat(sp: Spectral, Z1h: Array, Z2h: Array, P1h: Array, P2h: Array) -> Array:
    """Gamma^ in the SVD basis, given Z_i^ and P_i^ = Z_i^ / K."""
    return 0.5 * (sp.K * _T_hat(sp, P1h, P2h) - _DA_hat(sp, Z1h, P2h) - _DA_hat(sp, Z2h, P1h))


def apply_DA(X_or_svd: Array | SVD, Z: Array, P: Array, depth: int) -> Array:
    """DA_X[Z](P): derivative of P -> A_{N,X}(P) with respect to X along Z.

    Daleckii-Krein formula with the divided differences F_m = K^(m) / K
    (ratios of positive sums, stable at repeated singular values).
    """
    sp = spectral(X_or_svd, depth)
    f = sp.f
    namespace(f.U, Z, P)
    if sp.N == 1:
        return 0.0 * P
    return from_hat(f, _DA_hat(sp, to_hat(f, Z), to_hat(f, P)))


def christoffel(X_or_svd: Array | SVD, Z1: Array, Z2: Array, depth: int) -> Array:
    """Gamma_X(Z1, Z2): Christoffel map of g_N in the coordinates X (symmetric).

    nabla_{Z1} Y = DY[Z1] + Gamma_X(Z1, Y); geodesics solve x'' = -Gamma_x(x', x').
    From the Koszul formula: Gamma = -1/2 (DA[Z1] A^{-1} Z2 + DA[Z2] A^{-1} Z1)
    + 1/2 A(T(A^{-1} Z1, A^{-1} Z2)), see the module docstring.
    """
    sp = spectral(X_or_svd, depth)
    f = sp.f
    namespace(f.U, Z1, Z2)
    if sp.N == 1:
        return 0.0 * Z1
    Z1h = to_hat(f, Z1)
    Z2h = Z1h if Z2 is Z1 else to_hat(f, Z2)
    return from_hat(f, _christoffel_hat(sp, Z1h, Z2h, Z1h / sp.K, Z2h / sp.K))


def riemannian_hessian(
    X_or_svd: Array | SVD, egrad: Array, ehess: Array, Z: Array, depth: int
) -> Array:
    """Hess f(X)[Z] = A(H[Z]) + DA_X[Z](G) + Gamma_X(Z, A G) for g_N.

    ``egrad`` = G is the Euclidean gradient of f at X and ``ehess`` = H[Z] the
    Euclidean Hessian-vector product along Z.
    """
    sp = spectral(X_or_svd, depth)
    f = sp.f
    namespace(f.U, egrad, ehess, Z)
    if sp.N == 1:
        return ehess * 1
    Gh = to_hat(f, egrad)
    Hh = to_hat(f, ehess)
    Zh = to_hat(f, Z)
    grad_h = sp.K * Gh
    out = sp.K * Hh + _DA_hat(sp, Zh, Gh) + _christoffel_hat(sp, Zh, grad_h, Zh / sp.K, Gh)
    return from_hat(f, out)
