"""Batched kernels of the balanced manifold, in the frame coordinates of its points.

Every balanced point is W_p = Q_p L Q_{p-1}^T (1-based layers, L = diag(lam), lam = s^(1/N),
X = phi(W) = U diag(s) V^T, Q_0 = V, Q_N = U; Menon & Yu, arXiv 2509.09088). For an
ambient vector E write E'_p = Q_p^T E_p Q_{p-1} and, for A_1..A_{N-1} (A_0 = A_N = 0),

    G(A)_p = L A_{p-1} - A_p L        (p = 1..N),
    G^T(E')_p = L E'_{p+1} - E'_p L   (p = 1..N-1),   G^T G = T / 2,

where T acts on each entry (i, j) along the depth axis as the tridiagonal Toeplitz
("Jacobi") matrix with diagonal 2(lam_i^2 + lam_j^2) and off-diagonal -2 lam_i lam_j. Its
eigenvectors are the discrete sine vectors sqrt(2/N) sin(p k pi / N), with eigenvalues
2(lam_i - lam_j)^2 + 8 lam_i lam_j sin^2(k pi / (2N)) > 0, so T^{-1} is one fixed sine
transform along depth, a division and the transform back.

The ambient space splits orthogonally (F = G^T(E')):

- vertical space (orbit directions of O(d)^{N-1}):   G(A), A skew;  A = T^{-1}(F - F^T);
- normal space (range of the transposed balance Jacobian):  G(S), S symmetric;
  S = T^{-1}(F + F^T);
- horizontal space (dimension d^2):  lift(dphi(E)), with the closed-form horizontal lift
  lift(Z)'_p = (Z' / K) o M_p, (M_p)_ij = lam_i^(N-p) lam_j^(p-1), Z' = U^T Z V and K the
  multiplier of the metric g_N; |lift Z|^2 = g_N(X)(Z, Z) (phi is a Riemannian submersion).

Second-order retraction ("aligned reprojection", :func:`retract`): for a tangent vector V at
W, Y = W + V and X' = phi(Y). Since ker dphi_W = vertical + normal space and the geodesic
through W with velocity V has acceleration II(V, V) in the normal space,
phi(Exp_W(V)) = X' + O(|V|^3). The retraction returns the balanced point over X' that is
closest to Y: frames Q_p = polar(Y_p Q_{p-1} L'^{-1}) (Q_0 = V', Q_N = U'), then one
Gauss-Newton step along the fibre, Q_p <- Q_p cay(-A_p) with G(A) the vertical part of
Y - W~ (the residual of a nearest point is orthogonal to the fibre, so the curve's
acceleration is normal: second order). The point never leaves the component of W: if det X'
changed sign the smallest singular direction of X' is reflected, and each frame Q_p keeps
det W_p's sign (a reflection of the smallest-lam column), which is the reflecting boundary of
the Langevin diffusion at the rank-deficient set.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

from .._backend import device_of, einsum, eps, namespace, quiet_overflow
from .._backend import matrix_transpose as _mT
from ._svd import SVD, log_K, svd
from .dln import end_to_end

Array = Any

__all__ = [
    "BalancedFrames",
    "retract",
    "retract_checked",
    "retract_frames",
    "layer_signs",
    "polar_factor",
]


def _arange(xp, n: int, like: Array) -> Array:
    return xp.arange(n, dtype=like.dtype, device=device_of(like))


class BalancedFrames:
    """Frame coordinates of balanced points W (..., N, d, d) and the batched kernels.

    Holds Q (..., N+1, d, d), s, lam = s^(1/N) and log s (..., d); the weights M_p, 1/K and
    the sine transform with the eigenvalues of T are built on first use. Every leading axis
    is a batch axis (for example the chains of a Langevin sampler). The frames are
    Q_p = W_p Q_{p-1} L^{-1} (exact at balanced points); with ``orthogonalize`` the inner
    frames are their polar factors and Q_N = U, so that the formulas act exactly at the
    balanced point over phi(W) of a drifted stack (this is :meth:`reproject`).
    """

    def __init__(
        self, W: Array, *, svd_of_X: SVD | None = None, orthogonalize: bool = False
    ) -> None:
        xp = namespace(W)
        N = int(W.shape[-3])
        f = svd(end_to_end(W)) if svd_of_X is None else svd_of_X
        self.N = N
        self.s = f.s
        self.logs = xp.log(f.s)
        self.lam = xp.exp(self.logs / N)
        Q = [f.V]
        for p in range(N - 1 if orthogonalize else N):
            A = (W[..., p, :, :] @ Q[-1]) / self.lam[..., None, :]
            if orthogonalize:
                A = polar_factor(A)
            Q.append(A)
        if orthogonalize:
            Q.append(f.U)
        self.Q = xp.stack(Q, axis=-3)

    @classmethod
    def from_frames(cls, Q: Array, s: Array) -> BalancedFrames:
        """Frames of the balanced point with frames Q (..., N+1, d, d) and singular values s."""
        self = cls.__new__(cls)
        xp = namespace(Q)
        self.N = int(Q.shape[-3]) - 1
        self.s = s
        self.logs = xp.log(s)
        self.lam = xp.exp(self.logs / self.N)
        self.Q = Q
        return self

    # cached spectral data -------------------------------------------------
    @cached_property
    def inv_K(self) -> Array:
        """1 / K_ij (..., d, d)."""
        return namespace(self.s).exp(-log_K(self.s, self.N))

    @cached_property
    def M(self) -> Array:
        """(M_p)_ij = lam_i^(N-p) lam_j^(p-1), p = 1..N, shape (..., N, d, d) (from log s)."""
        xp = namespace(self.logs)
        N = self.N
        p = _arange(xp, N, self.logs)
        li = self.logs[..., None, :, None] / N
        lj = self.logs[..., None, None, :] / N
        return xp.exp((N - 1 - p)[:, None, None] * li + p[:, None, None] * lj)

    @cached_property
    def sine(self) -> Array:
        """The orthogonal symmetric sine transform sqrt(2/N) sin(p k pi / N), p, k = 1..N-1."""
        xp = namespace(self.lam)
        k = _arange(xp, self.N - 1, self.lam) + 1.0
        return math.sqrt(2.0 / self.N) * xp.sin((math.pi / self.N) * k[:, None] * k[None, :])

    @cached_property
    def mu(self) -> Array:
        """Eigenvalues 2(lam_i - lam_j)^2 + 8 lam_i lam_j sin^2(k pi / 2N), (..., N-1, d, d)."""
        xp = namespace(self.lam)
        k = _arange(xp, self.N - 1, self.lam) + 1.0
        li = self.lam[..., None, :, None]
        lj = self.lam[..., None, None, :]
        s2 = (xp.sin((0.5 * math.pi / self.N) * k) ** 2)[:, None, None]
        return 2.0 * (li - lj) ** 2 + 8.0 * (li * lj) * s2

    # frame maps -----------------------------------------------------------
    def to_frame(self, E: Array) -> Array:
        """E'_p = Q_p^T E_p Q_{p-1}."""
        return _mT(self.Q[..., 1:, :, :]) @ E @ self.Q[..., :-1, :, :]

    def from_frame(self, Ep: Array) -> Array:
        """E_p = Q_p E'_p Q_{p-1}^T."""
        return self.Q[..., 1:, :, :] @ Ep @ _mT(self.Q[..., :-1, :, :])

    def point(self) -> Array:
        """The balanced stack Q_p L Q_{p-1}^T (one batched product)."""
        return (self.Q[..., 1:, :, :] * self.lam[..., None, None, :]) @ _mT(self.Q[..., :-1, :, :])

    # the three orthogonal pieces ----------------------------------------
    def dphi(self, Ep: Array) -> Array:
        """U^T dphi(E) V = sum_p E'_p o M_p (shape (..., d, d))."""
        return namespace(Ep).sum(Ep * self.M, axis=-3)

    def lift(self, Zh: Array) -> Array:
        """Horizontal lift in frames: (Z' / K) o M_p for Z' = U^T Z V."""
        return (Zh * self.inv_K)[..., None, :, :] * self.M

    def horizontal(self, Ep: Array) -> Array:
        """Horizontal part lift(dphi(E)) in frames."""
        return self.lift(self.dphi(Ep))

    def G(self, A: Array) -> Array:
        """G(A)_p = L A_{p-1} - A_p L, p = 1..N, for A of shape (..., N-1, d, d)."""
        xp = namespace(A)
        li, lj = self.lam[..., None, :, None], self.lam[..., None, None, :]
        LA, AL = li * A, A * lj  # A_0 = A_N = 0: the first layer is -A_1 L, the last L A_{N-1}
        inner = LA[..., :-1, :, :] - AL[..., 1:, :, :]
        return xp.concat([-AL[..., :1, :, :], inner, LA[..., -1:, :, :]], axis=-3)

    def GT(self, Ep: Array) -> Array:
        """G^T(E')_p = L E'_{p+1} - E'_p L, p = 1..N-1."""
        li, lj = self.lam[..., None, :, None], self.lam[..., None, None, :]
        return li * Ep[..., 1:, :, :] - Ep[..., :-1, :, :] * lj

    def jacobi_solve(self, B: Array) -> Array:
        """T^{-1} B entrywise along depth (axis -3), by the fixed discrete sine transform."""
        Bh = einsum("kp,...pij->...kij", self.sine, B) / self.mu
        return einsum("kp,...pij->...kij", self.sine, Bh)

    def vertical_coords(self, Ep: Array) -> Array:
        """A (skew, (..., N-1, d, d)) with vertical part of E equal to G(A)."""
        F = self.GT(Ep)
        return self.jacobi_solve(F - _mT(F))

    def normal_coords(self, Ep: Array) -> Array:
        """S (symmetric, (..., N-1, d, d)) with normal part of E equal to G(S)."""
        F = self.GT(Ep)
        return self.jacobi_solve(F + _mT(F))

    def vertical(self, Ep: Array) -> Array:
        """Vertical part in frames."""
        return self.G(self.vertical_coords(Ep)) if self.N > 1 else 0.0 * Ep

    def normal(self, Ep: Array) -> Array:
        """Normal part in frames."""
        return self.G(self.normal_coords(Ep)) if self.N > 1 else 0.0 * Ep

    def project(self, Ep: Array) -> Array:
        """Tangent projection in frames: E' minus its normal part (= horizontal + vertical)."""
        return Ep - self.normal(Ep)

    def weingarten(self, Up: Array, Gp: Array) -> Array:
        """-(U'_p S_{p-1} - S_p U'_p) in frames, G(S) the normal part of G' (before projection)."""
        if self.N == 1:
            return 0.0 * Up
        xp = namespace(Up)
        S = self.normal_coords(Gp)
        z = xp.zeros_like(S[..., :1, :, :])
        Sp = xp.concat([z, S, z], axis=-3)
        return -(Up @ Sp[..., :-1, :, :] - Sp[..., 1:, :, :] @ Up)


def layer_signs(W: Array) -> Array:
    """sign(det W_p) per layer (shape (..., N)); constant on each component of the manifold."""
    xp = namespace(W)
    sign, _ = xp.linalg.slogdet(W)
    return sign


def _cayley(A: Array) -> Array:
    """cay(A) = (I - A/2)^{-1} (I + A/2) = 2 (I - A/2)^{-1} - I: orthogonal for skew A,
    = expm(A) + O(|A|^3) (I - A/2 is normal with singular values >= 1: one inverse)."""
    xp = namespace(A)
    eye = xp.eye(A.shape[-1], dtype=A.dtype, device=device_of(A))
    return 2.0 * xp.linalg.inv(eye - 0.5 * A) - eye


def _flip_last_column(Q: Array, flip: Array) -> Array:
    """Q with its last column negated where ``flip`` (boolean, shape Q.shape[:-2])."""
    xp = namespace(Q)
    d = Q.shape[-1]
    col = xp.where(flip[..., None], -xp.ones_like(Q[..., 0, :1]), xp.ones_like(Q[..., 0, :1]))
    ones = xp.ones_like(Q[..., 0, : d - 1])
    return Q * xp.concat([ones, col], axis=-1)[..., None, :]


_SCHULZ_STEPS = 3


def polar_factor(A: Array) -> Array:
    """Orthogonal polar factor U V^T of A = U diag(s) V^T, batched, without a host read.

    Newton-Schulz: X_0 = A, X_{k+1} = X_k (3 I - X_k^T X_k) / 2 = U f_k(s) V^T with
    1 - f_{k+1} = (3/2) (1 - f_k)^2 + O((1 - f_k)^3), so it keeps the polar factor of A and
    converges quadratically when every s_i is near 1 (matrix products only). After
    ``_SCHULZ_STEPS`` steps an entry whose residual max |X^T X - I| is below sqrt(eps)
    takes one more step (residual about eps: X is U V^T to rounding); every other entry
    (ill-conditioned or far from orthogonal A, non-finite iterates) takes U V^T from the SVD
    of A, which is computed for all entries with the converged ones replaced by I (cheap).
    Entries of A with a NaN or infinite element give NaN.
    """
    xp = namespace(A)
    eye = xp.eye(A.shape[-1], dtype=A.dtype, device=device_of(A))
    X = A
    with quiet_overflow():  # diverging entries (s_i > sqrt 3) go to the SVD below
        for _ in range(_SCHULZ_STEPS):
            X = X @ (1.5 * eye - 0.5 * (_mT(X) @ X))
        R = _mT(X) @ X - eye
        done = xp.all(xp.abs(R) <= math.sqrt(eps(A)), axis=(-2, -1))
        X = X - 0.5 * (X @ R)
    skip = (done | ~xp.isfinite(xp.sum(A, axis=(-2, -1))))[..., None, None]
    g = svd(xp.where(skip, eye, A))
    return xp.where(done[..., None, None], X, xp.where(skip, A * math.nan, g.U @ _mT(g.V)))


def _det_sign(Q: Array) -> Array:
    sign, _ = namespace(Q).linalg.slogdet(Q)
    return sign


def _safe_svd(W: Array, Y: Array) -> tuple[SVD, Array, Array]:
    """(SVD of X' = phi(Y), ok, Y) with the entries that are not ``ok`` made harmless.

    ok: X' finite and of full rank (s_min > 100 d eps s_max, the test of ``regular``). An
    entry that is not ok gets s = 1 (and the SVD of I where X' overflows) and Y = W, so that
    the kernel stays finite there without a host read; the caller marks it. A sum is finite
    only if every term is (an overflowing sum of finite terms counts as an overflow).
    """
    xp = namespace(W, Y)
    Xn = end_to_end(Y)
    finite = xp.isfinite(xp.sum(Xn, axis=(-2, -1)))
    eye = xp.eye(Xn.shape[-1], dtype=Xn.dtype, device=device_of(Xn))
    f = svd(xp.where(finite[..., None, None], Xn, eye))
    ok = finite & (f.s[..., -1] > 100 * f.s.shape[-1] * eps(Xn) * f.s[..., 0])
    s = xp.where(ok[..., None], f.s, xp.ones_like(f.s))
    return SVD(f.U, s, f.V), ok, xp.where(ok[..., None, None, None], Y, W)


def retract_frames(W: Array, V: Array, signs: Array | None = None) -> tuple[BalancedFrames, Array]:
    """Frames of the aligned reprojection R_W(V) and the mask of entries where it exists.

    Returns (frames, ok): ``frames.point()`` is R_W(V) (module doc) where ``ok`` (X' finite
    and of full rank); elsewhere the frames are finite garbage. ``signs`` are the layer
    signs sign(det W_p) to keep (default: those of W). No host read.
    """
    xp = namespace(W, V)
    N = int(W.shape[-3])
    if signs is None:
        signs = layer_signs(W)
    f, ok, Y = _safe_svd(W, W + V)
    # det X' = det U det V prod s: reflect the smallest singular direction on a sign change
    det_v = _det_sign(f.V)
    flip = det_v * _det_sign(f.U) != xp.prod(signs, axis=-1)
    Vf = _flip_last_column(f.V, flip)
    lam = xp.exp(xp.log(f.s) / N)
    Q, det_prev = [Vf], xp.where(flip, -det_v, det_v)
    for p in range(N - 1):
        Qp = polar_factor((Y[..., p, :, :] @ Q[-1]) / lam[..., None, :])
        want = signs[..., p] * det_prev  # det W_p = det Q_p det Q_{p-1}
        Q.append(_flip_last_column(Qp, _det_sign(Qp) != want))
        det_prev = want
    Q.append(f.U)
    fr = BalancedFrames.from_frames(xp.stack(Q, axis=-3), f.s)
    if N > 1:
        # vertical part of Y - W~ in frames: G^T kills the frame image L of W~ exactly
        A = fr.vertical_coords(fr.to_frame(Y))
        inner = fr.Q[..., 1:-1, :, :] @ _cayley(-A)
        fr = BalancedFrames.from_frames(
            xp.concat([Vf[..., None, :, :], inner, f.U[..., None, :, :]], axis=-3), f.s
        )
    return fr, ok


def retract(W: Array, V: Array, signs: Array | None = None) -> Array:
    """Aligned reprojection R_W(V), batched: second order, defined for every V (module doc).

    ``signs`` are the layer signs sign(det W_p) to keep (default: those of W). Points whose
    X' = phi(W + V) is rank deficient or non-finite come back NaN; the caller's rescue rule
    deals with them.
    """
    out, _, _ = retract_checked(W, V, signs)
    return out


def retract_checked(
    W: Array, V: Array, signs: Array | None = None
) -> tuple[Array, BalancedFrames, Array]:
    """(R_W(V) with NaN where it does not exist, its frames, the mask ``regular``): ok of
    :func:`retract_frames` and a finite point."""
    xp = namespace(W, V)
    fr, ok = retract_frames(W, V, signs)
    out = fr.point()
    ok = ok & xp.isfinite(xp.sum(out, axis=(-3, -2, -1)))
    return xp.where(ok[..., None, None, None], out, xp.full_like(out, math.nan)), fr, ok
