"""The balanced manifold of the deep linear network (DLN) as a Pymanopt manifold.

Points are stacks W of shape (N, d, d) (``depth`` N, ``width`` d), W[0] the first
layer, with end-to-end map phi(W) = W[N-1] ... W[0] = X (Menon & Yu, arXiv
2509.09088; Bah, Rauhut, Terstiege & Westdickenberg, arXiv 1910.05505). With
1-based layers W_p = W[p-1], the balanced manifold is

    M = { W : W_{p+1}^T W_{p+1} = W_p W_p^T (p = 1..N-1), X of full rank },

a Riemannian submanifold of the Frobenius space R^{N x d x d} of dimension
d^2 + (N-1) d(d-1)/2. Every point is W_p = Q_p L Q_{p-1}^T with L = diag(lam),
lam = s^(1/N) (X = U diag(s) V^T), Q_0 = V, Q_N = U and free Q_1..Q_{N-1} in
O(d); the frames follow from W by Q_p = W_p Q_{p-1} L^{-1}.

Frame coordinates
-----------------
All geometry is diagonal in the frames. For an ambient vector E write
E'_p = Q_p^T E_p Q_{p-1} and, for A_1..A_{N-1} (A_0 = A_N = 0),

    G(A)_p = L A_{p-1} - A_p L        (p = 1..N),
    G^T(E')_p = L E'_{p+1} - E'_p L   (p = 1..N-1),   G^T G = T / 2,

where T acts on each entry (i, j) along the depth axis as the tridiagonal
Toeplitz ("Jacobi") matrix with diagonal 2(lam_i^2 + lam_j^2) and off-diagonal
-2 lam_i lam_j. Its eigenvectors are the discrete sine vectors
sqrt(2/N) sin(p k pi / N) for every (i, j), with eigenvalues
2(lam_i - lam_j)^2 + 8 lam_i lam_j sin^2(k pi / (2N)) > 0, so T^{-1} is one
fixed sine transform along depth, a division, and the transform back.

The ambient space splits orthogonally into three pieces (F = G^T(E')):

- vertical space (orbit directions of O(d)^{N-1}, W_p -> R_p W_p R_{p-1}^T):
  { G(A) : A skew };  projection  G(T^{-1}(F - F^T));
- normal space (range of the transposed balance-constraint Jacobian):
  { G(S) : S symmetric };  projection  G(T^{-1}(F + F^T));
- horizontal space (range of dphi^*, dimension d^2):  lift(dphi(E)) with the
  closed-form horizontal lift, for Z' = U^T Z V,

      lift(Z)'_p = (Z' / K) o M_p,   (M_p)_ij = lam_i^(N-p) lam_j^(p-1),

  K the Hadamard multiplier of the metric g_N (``_svd.multiplier_K``); then
  dphi(E)' = sum_p E'_p o M_p and |lift Z|^2 = sum_ij Z'_ij^2 / K_ij = g_N(X)(Z, Z)
  (phi is a Riemannian submersion onto (GL(d), g_N)).

The tangent projection is horizontal + vertical. The Riemannian Hessian of a
submanifold adds the Weingarten term: with the normal part of the Euclidean
gradient written as G(S') (S' = T^{-1}(F + F^T) in frames, S_p = Q_p S'_p Q_p^T
in the world frame), Hess f(W)[U] = P_W(ehess[U] - (U_p S_{p-1} - S_p U_p)_p).

Retractions and components
--------------------------
``retraction`` uses the global chart M ~ GL(d) x O(d)^{N-1},
W -> (X, O_1, ..., O_{N-1}) with O_p = Q_p Q_{p-1}^T the orthogonal polar factor
of W_p: X -> X expm(X^{-1} dX) and O_p -> O_p expm(Omega_p), with the exact
differentials dX = dphi(V) and Omega'_p = (V'_p - V'_p^T) / (lam_i + lam_j) (the
derivative of the polar factor). It is a first-order retraction defined for
every tangent vector. ``retraction_second_order`` is the orthographic
retraction W + V + G(S) with S found by a (chord) Newton iteration on the
balance constraints, whose Jacobian J J^T = T is inverted by the sine
transform; it falls back to the chart retraction when the iteration does not
converge (large steps).

The signs of det W_p (p = 1..N) are constant on connected components: M has
2^N of them (det X has the sign of their product). Retractions never leave a
component; ``random_point(component=...)`` chooses the sign of det X or of
every layer.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import numpy as np
from pymanopt.manifolds.manifold import Manifold

from .._backend import (
    ArraySpec,
    check_compatible,
    check_finite,
    einsum,
    eps,
    expm,
    is_torch,
    namespace,
    random_normal,
    spec_of,
    to_float,
)
from .._backend import matrix_transpose as _mT
from ._metric import balanced_from as _balanced_from
from ._metric import check_width_depth, end_to_end
from ._svd import SVD, log_K, svd

Array = Any

__all__ = [
    "BalancedManifold",
    "end_to_end",
    "balance_residual",
    "constraint_jacobian",
    "dense_projection",
    "BalancedFrames",
    "polar",
    "phi_adjoint",
    "reproject_balanced",
]


# --------------------------------------------------------------------------
# helpers


def _device(x: Array):
    return x.device if is_torch(x) else None


def _arange(xp, n: int, like: Array) -> Array:
    return xp.arange(n, dtype=like.dtype, device=_device(like))


def _zeros(xp, shape, like: Array) -> Array:
    return xp.zeros(shape, dtype=like.dtype, device=_device(like))


def _eye_like(xp, x: Array) -> Array:
    return xp.eye(x.shape[-1], dtype=x.dtype, device=_device(x))


def balance_residual(W: Array) -> Array:
    """h(W)_p = W_{p+1}^T W_{p+1} - W_p W_p^T, p = 1..N-1 (shape (..., N-1, d, d), batched)."""
    hi, lo = W[..., 1:, :, :], W[..., :-1, :, :]
    return _mT(hi) @ hi - lo @ _mT(lo)


def _apply_constraint_jacobian(W: Array, E: Array) -> Array:
    """J(W)[E]_p = E_{p+1}^T W_{p+1} + W_{p+1}^T E_{p+1} - E_p W_p^T - W_p E_p^T (batched E)."""
    a = _mT(E[..., 1:, :, :]) @ W[1:]
    b = E[..., :-1, :, :] @ _mT(W[:-1])
    return a + _mT(a) - b - _mT(b)


def constraint_jacobian(W: Array) -> Array:
    """Dense Jacobian of the independent balance constraints (brute force, for tests).

    Rows: the entries i <= j of each symmetric h_p, p = 1..N-1; columns: the
    N d^2 entries of W in C order. Shape ((N-1) d (d+1)/2, N d^2).
    """
    xp = namespace(W)
    N, d = W.shape[0], W.shape[-1]
    n = N * d * d
    basis = xp.reshape(xp.eye(n, dtype=W.dtype, device=_device(W)), (n, N, d, d))
    Jfull = _apply_constraint_jacobian(W, basis)  # (n, N-1, d, d)
    iu, ju = np.triu_indices(d)
    rows = Jfull[:, :, iu, ju] if not is_torch(W) else Jfull[:, :, iu.tolist(), ju.tolist()]
    return xp.reshape(xp.permute_dims(rows, (1, 2, 0)), (-1, n))


def dense_projection(W: Array, E: Array) -> Array:
    """Orthogonal projection onto ker J(W) by dense least squares (reference, slow).

    Builds the constraint Jacobian J and returns E - J^T mu with
    mu = argmin |J^T mu - E| (``lstsq``).
    """
    xp = namespace(W, E)
    J = constraint_jacobian(W)
    e = xp.reshape(E, (-1, 1))
    if J.shape[0] == 0:
        return E * 1
    mu = xp.linalg.lstsq(_mT(J), e)[0] if is_torch(W) else np.linalg.lstsq(J.T, e, rcond=None)[0]
    return E - xp.reshape(_mT(J) @ mu, E.shape)


def polar(A: Array) -> Array:
    """Orthogonal polar factor U V^T of A = U diag(s) V^T (batched over leading axes)."""
    xp = namespace(A)
    u, _, vt = xp.linalg.svd(A, full_matrices=False)
    return u @ vt


class BalancedFrames:
    """Frame coordinates of balanced points W of shape (..., N, d, d) (batched).

    Holds Q (..., N+1, d, d) (Q_0 = V, Q_p = W_p Q_{p-1} diag(lam)^{-1}), s, lam = s^(1/N)
    and log s (shape (..., d)), and caches what the batched kernels reuse: the weights
    M_p (``M``), 1 / K (``inv_K``) and the sine transform and eigenvalues of T
    (``sine``, ``mu``); see the module docstring for the formulas. Every leading axis
    is a batch axis (e.g. the chains of a Langevin sampler).

    Args:
        W: the points.
        depth: N (default ``W.shape[-3]``).
        svd_of_X: the SVD of phi(W), if already known.
        orthogonalize: take the polar factor of Q_1..Q_{N-1} and Q_N = U. Near rank
            deficiency the division by a tiny lam amplifies the O(tol) imbalance of
            W; with this option the formulas act exactly at the balanced point
            Q_p L Q_{p-1}^T over phi(W) (used by the Langevin sampler).
    """

    def __init__(
        self,
        W: Array,
        depth: int | None = None,
        *,
        svd_of_X: SVD | None = None,
        orthogonalize: bool = False,
    ) -> None:
        xp = namespace(W)
        N = int(W.shape[-3] if depth is None else depth)
        f = svd(end_to_end(W)) if svd_of_X is None else svd_of_X
        self.N = N
        self.s = f.s
        self.logs = xp.log(f.s)
        self.lam = xp.exp(self.logs / N)
        Q = [f.V]
        for p in range(N - 1 if orthogonalize else N):
            Qp = (W[..., p, :, :] @ Q[-1]) / self.lam[..., None, :]
            Q.append(polar(Qp) if orthogonalize else Qp)
        if orthogonalize:
            Q.append(f.U)
        self.Q = xp.stack(Q, axis=-3)

    @property
    def K(self) -> Array:
        """The metric multiplier K_ij (shape (..., d, d))."""
        return namespace(self.s).exp(log_K(self.s, self.N))

    @cached_property
    def inv_K(self) -> Array:
        return namespace(self.s).exp(-log_K(self.s, self.N))

    @cached_property
    def M(self) -> Array:
        """(M_p)_ij = lam_i^(N-p) lam_j^(p-1), p = 1..N, shape (..., N, d, d) (from logs)."""
        xp = namespace(self.logs)
        N = self.N
        p = _arange(xp, N, self.logs)  # p - 1 = 0..N-1
        li = self.logs[..., None, :, None] / N
        lj = self.logs[..., None, None, :] / N
        return xp.exp((N - 1 - p)[:, None, None] * li + p[:, None, None] * lj)

    @cached_property
    def sine(self) -> Array:
        """Orthogonal symmetric sine transform sqrt(2/N) sin(p k pi / N), p, k = 1..N-1."""
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
        return (
            2.0 * (li - lj) ** 2
            + 8.0 * (li * lj) * (xp.sin((0.5 * math.pi / self.N) * k) ** 2)[:, None, None]
        )

    # batched geometry -------------------------------------------------------
    def to_frame(self, E: Array) -> Array:
        """E'_p = Q_p^T E_p Q_{p-1}."""
        return _to_frame(self, E)

    def from_frame(self, Ep: Array) -> Array:
        """E_p = Q_p E'_p Q_{p-1}^T."""
        return _from_frame(self, Ep)

    def project_frame(self, Ep: Array) -> Array:
        """Tangent projection in frame coordinates: horizontal + vertical part."""
        if self.N == 1:
            return _horizontal_frame(self, Ep)
        return _project_frame(self, Ep)

    def projection(self, E: Array) -> Array:
        """Orthogonal projection of E (..., N, d, d) onto the tangent spaces."""
        return self.from_frame(self.project_frame(self.to_frame(E)))

    def retraction_second_order(
        self, Vp: Array, rtol: float, max_iterations: int = 50
    ) -> tuple[Array, Array, int]:
        """Batched orthographic retraction W + V + G(S) of frame-coordinate tangent vectors Vp.

        Chord Newton S <- S - T^{-1} h(Y) per batch entry (the frame coordinates of W
        are diag(lam) in every layer) until the relative balance residual is <= rtol.
        Returns (W', relative balance residual per batch entry, Newton iterations); an
        entry whose residual grows, or whose normal correction |G(S)| exceeds |V|
        (Newton found a far-away solution, or none), gets residual inf. Unlike
        :meth:`BalancedManifold.retraction_second_order` there is no fallback: the
        caller re-projects the failed entries.
        """
        return _orthographic_batch(self, Vp, rtol, max_iterations)


def _compute_frames(W: Array, f: SVD | None = None) -> BalancedFrames:
    return BalancedFrames(W, svd_of_X=f)


def _to_frame(fr: BalancedFrames, E: Array) -> Array:
    """E'_p = Q_p^T E_p Q_{p-1}."""
    return _mT(fr.Q[..., 1:, :, :]) @ E @ fr.Q[..., :-1, :, :]


def _from_frame(fr: BalancedFrames, Ep: Array) -> Array:
    """E_p = Q_p E'_p Q_{p-1}^T."""
    return fr.Q[..., 1:, :, :] @ Ep @ _mT(fr.Q[..., :-1, :, :])


def _dphi_frame(fr: BalancedFrames, Ep: Array) -> Array:
    """dphi(E)' = U^T dphi(E) V = sum_p E'_p o M_p (shape (..., d, d))."""
    return namespace(Ep).sum(Ep * fr.M, axis=-3)


def _horizontal_frame(fr: BalancedFrames, Ep: Array) -> Array:
    """lift(dphi(E))' = ((sum_q E'_q o M_q) / K) o M_p."""
    return (_dphi_frame(fr, Ep) * fr.inv_K)[..., None, :, :] * fr.M


def _G(fr: BalancedFrames, A: Array) -> Array:
    """G(A)_p = L A_{p-1} - A_p L, p = 1..N, for A of shape (..., N-1, d, d)."""
    xp = namespace(A)
    z = xp.zeros_like(A[..., :1, :, :])
    Apad = xp.concat([z, A, z], axis=-3)
    li, lj = fr.lam[..., None, :, None], fr.lam[..., None, None, :]
    return li * Apad[..., :-1, :, :] - Apad[..., 1:, :, :] * lj


def _GT(fr: BalancedFrames, Ep: Array) -> Array:
    """G^T(E')_p = L E'_{p+1} - E'_p L, p = 1..N-1."""
    li, lj = fr.lam[..., None, :, None], fr.lam[..., None, None, :]
    return li * Ep[..., 1:, :, :] - Ep[..., :-1, :, :] * lj


def _jacobi_solve(fr: BalancedFrames, B: Array) -> Array:
    """T^{-1} B entrywise along depth (axis -3), by the fixed discrete sine transform.

    T is tridiagonal Toeplitz in p = 1..N-1 with diagonal 2(lam_i^2 + lam_j^2)
    and off-diagonal -2 lam_i lam_j; T = S diag(mu) S with S the sine transform.
    """
    if fr.N == 1:
        return B * 1
    Bh = einsum("kp,...pij->...kij", fr.sine, B) / fr.mu
    return einsum("kp,...pij->...kij", fr.sine, Bh)


def _vertical_frame(fr: BalancedFrames, Ep: Array) -> Array:
    if fr.N == 1:
        return Ep * 0
    F = _GT(fr, Ep)
    return _G(fr, _jacobi_solve(fr, F - _mT(F)))


def _normal_coords(fr: BalancedFrames, Ep: Array) -> Array:
    """S' (symmetric, (..., N-1, d, d)) with normal part of E equal to G(S')."""
    F = _GT(fr, Ep)
    return _jacobi_solve(fr, F + _mT(F))


def _project_frame(fr: BalancedFrames, Ep: Array) -> Array:
    return _horizontal_frame(fr, Ep) + _vertical_frame(fr, Ep)


def _in_frames(W: Array, E: Array, frame_map: Any) -> Array:
    """Apply a frame-coordinate map to an ambient vector: Q (frame_map(fr, E')) Q^T."""
    namespace(W, E)
    fr = _compute_frames(W)
    return _from_frame(fr, frame_map(fr, _to_frame(fr, E)))


def _orthographic_batch(
    fr: BalancedFrames, Vp: Array, rtol: float, max_iterations: int
) -> tuple[Array, Array, int]:
    """See :meth:`BalancedFrames.retraction_second_order`."""
    xp = namespace(Vp)
    base = fr.lam[..., None, None, :] * _eye_like(xp, Vp) + Vp
    if fr.N == 1:
        return fr.from_frame(base), xp.zeros_like(fr.s[..., 0]), 0
    S = xp.zeros_like(base[..., 1:, :, :])
    Y = base
    prev = None
    failed = None
    n_iter = 0
    while True:
        h = balance_residual(Y)
        scale = xp.max(xp.sum(Y * Y, axis=(-2, -1)), axis=-1)
        res = xp.sqrt(xp.max(xp.sum(h * h, axis=(-2, -1)), axis=-1)) / scale
        res = xp.where(xp.isfinite(res), res, xp.full_like(res, math.inf))
        if prev is None:
            failed = ~xp.isfinite(res)
        else:
            # an entry whose residual grows is beyond the reach of the chord iteration
            failed = failed | (res > 2.0 * prev) | ~xp.isfinite(res)
        active = (res > rtol) & ~failed
        if n_iter >= max_iterations or not bool(to_float(xp.any(active))):
            break
        n_iter += 1
        S = S - _jacobi_solve(fr, xp.where(active[..., None, None, None], h, 0.0 * h))
        Y = base + _G(fr, S)
        prev = xp.where(active, res, prev if prev is not None else res)
    # the normal correction of a second-order retraction is O(|V|^2 / reach): a
    # correction larger than the step itself means Newton found a far-away
    # solution (or none): such entries are reported as failed (inf residual)
    corr = xp.sum(_G(fr, S) ** 2, axis=(-3, -2, -1))
    size = xp.sum(Vp * Vp, axis=(-3, -2, -1))
    failed = failed | (corr > size)
    res = xp.where(failed, xp.full_like(res, math.inf), res)
    return fr.from_frame(Y), res, n_iter


def phi_adjoint(W: Array, G: Array) -> Array:
    """Adjoint of dphi_W applied to G: (W_N..W_{p+1})^T G (W_{p-1}..W_1)^T, p = 1..N.

    This is the Euclidean gradient in W of f(phi(W)) when G = nabla f(phi(W)).
    Batched over leading axes of W (shape (..., N, d, d)) and G (shape (..., d, d)).
    """
    xp = namespace(W, G)
    N = W.shape[-3]
    # prefix[p] = W_{p-1} ... W_0 (p = 0..N-1), suffix[p] = W_{N-1} ... W_{p+1}
    eye = _eye_like(xp, W) + 0 * W[..., 0, :, :]
    prefix = [eye]
    for p in range(1, N):
        prefix.append(W[..., p - 1, :, :] @ prefix[-1])
    suffix = [eye] * N
    for p in range(N - 2, -1, -1):
        suffix[p] = suffix[p + 1] @ W[..., p + 1, :, :]
    out = [_mT(suffix[p]) @ G @ _mT(prefix[p]) for p in range(N)]
    return xp.stack(out, axis=-3)


def reproject_balanced(W: Array, depth: int | None = None) -> Array:
    """A balanced point close to a drifted stack W (..., N, d, d) (a rescue step).

    Keeps X = phi(W) and rebuilds the balanced stack over it with the frames
    Q_p = polar(W_p Q_{p-1} diag(lam)^{-1}), Q_0 = V, Q_N = U taken from W (exactly W
    when W is balanced). Depth 1 returns a copy.
    """
    N = int(W.shape[-3] if depth is None else depth)
    if N == 1:
        return W * 1
    f = svd(end_to_end(W))
    fr = BalancedFrames(W, N, svd_of_X=f, orthogonalize=True)
    return _balanced_from(f, fr.Q[..., 1:-1, :, :], N)


def _haar(spec: ArraySpec, shape: tuple[int, ...], gen: Any) -> Array:
    """Haar-distributed orthogonal matrices (QR of a Gaussian with the sign fix)."""
    G = spec.randn(shape, gen)
    xp = namespace(G)
    Qm, R = xp.linalg.qr(G)
    diag = xp.linalg.diagonal(R)
    sign = xp.where(diag < 0, -xp.ones_like(diag), xp.ones_like(diag))
    return Qm * sign[..., None, :]


class BalancedManifold(Manifold):
    """Balanced deep-linear-network parameters as a Riemannian submanifold of R^{N x d x d}.

    Points are arrays W of shape (depth, width, width) with W[0] the first layer,
    W_{p+1}^T W_{p+1} = W_p W_p^T and full-rank end-to-end matrix
    X = W[N-1] ... W[0]. Tangent vectors are arrays of the same shape; the
    metric is the Frobenius one. Dimension d^2 + (N-1) d(d-1)/2. See the module
    docstring for the formulas (Menon & Yu, arXiv 2509.09088).

    The manifold has 2^N connected components (signs of det W_p); retractions
    stay in the component of their base point.

    Args:
        width: d.
        depth: N >= 1.
        backend, device, dtype: where :meth:`random_point` and friends allocate
            (NumPy float64 by default). Other methods accept any NumPy array or
            torch tensor and keep its device and dtype.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        *,
        backend: str = "numpy",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        width, depth = check_width_depth(width, depth)
        self.width = int(width)
        self.depth = int(depth)
        self.spec = ArraySpec(backend, device, dtype)
        d, N = self.width, self.depth
        dim = d * d + (N - 1) * d * (d - 1) // 2
        super().__init__(f"Balanced DLN manifold (width {d}, depth {N}, {backend})", int(dim))

    # ------------------------------------------------------------------ checks

    @property
    def typical_dist(self) -> float:
        return math.sqrt(self.depth * self.width)

    def _rtol(self, W: Array) -> float:
        return max(1e-7, 1e3 * eps(W))

    def check_point(self, W: Array, rtol: float | None = None) -> None:
        """Raise ``ValueError`` saying why ``W`` is not a point of this manifold.

        Checks, in order: a sequence of layers of mixed type/dtype/device; the
        shape (depth, width, width); a floating dtype; NaN/inf; the balance
        |W_{p+1}^T W_{p+1} - W_p W_p^T| <= rtol * max_p |W_p|^2 (default
        rtol = max(1e-7, 1000 eps)); the rank of the product
        (s_min / s_max > 100 d eps).
        """
        if isinstance(W, (list, tuple)):
            check_compatible(*W, names=tuple(f"layer {i}" for i in range(len(W))))
            xp = namespace(*W)
            W = xp.stack(list(W), axis=0)
        shape = tuple(W.shape)
        want = (self.depth, self.width, self.width)
        if shape != want:
            raise ValueError(f"point has shape {shape}, expected (depth, width, width) = {want}")
        if is_torch(W):
            if not W.dtype.is_floating_point:
                raise ValueError(f"point has non-floating dtype {W.dtype}")
        elif not np.issubdtype(np.asarray(W).dtype, np.floating):
            raise ValueError(f"point has non-floating dtype {np.asarray(W).dtype}")
        check_finite(W, "point")
        xp = namespace(W)
        scale = to_float(xp.max(xp.sum(W * W, axis=(-2, -1))))
        if scale == 0.0:
            raise ValueError("point is zero: its end-to-end product is rank deficient")
        rtol = self._rtol(W) if rtol is None else float(rtol)
        if self.depth > 1:
            r = balance_residual(W)
            err = to_float(xp.sqrt(xp.max(xp.sum(r * r, axis=(-2, -1))))) / scale
            if err > rtol:
                raise ValueError(
                    f"point is not balanced: max_p |W_(p+1)^T W_(p+1) - W_p W_p^T| / |W|^2 "
                    f"= {err:.3g} > {rtol:.3g}"
                )
        s = svd(end_to_end(W)).s
        smax, smin = to_float(s[0]), to_float(s[-1])
        if not smin > 100 * self.width * eps(W) * smax:
            raise ValueError(
                f"end-to-end product is rank deficient: s_min / s_max = {smin / smax:.3g}"
            )

    def is_on_manifold(self, W: Array, atol: float | None = None) -> bool:
        """True when :meth:`check_point` passes (``atol`` is a relative balance tolerance)."""
        try:
            self.check_point(W, rtol=atol)
        except ValueError:
            return False
        return True

    def tangent_space_dimension(self, W: Array) -> int:
        """Brute force: dim ker J(W) from the rank of the dense constraint Jacobian (float64)."""
        Wn = np.asarray(ArraySpec("numpy", None, np.float64).asarray(W))
        if self.depth == 1:
            return self.width**2
        J = constraint_jacobian(Wn)
        sv = np.linalg.svd(J, compute_uv=False)
        tol = sv[0] * max(J.shape) * 1e3 * np.finfo(np.float64).eps if sv.size else 0.0
        return int(J.shape[1] - np.sum(sv > tol))

    # ------------------------------------------------------------ DLN maps

    @staticmethod
    def end_to_end(W: Array) -> Array:
        """phi(W) = W[N-1] @ ... @ W[0]."""
        return end_to_end(W)

    def balanced_from(self, X: Array | SVD, frames: Array | None = None) -> Array:
        """The balanced point W_p = Q_p diag(s^(1/N)) Q_{p-1}^T over X.

        ``frames`` holds Q_1..Q_{N-1} (shape (N-1, d, d), orthogonal; default the
        identity); Q_0 = V and Q_N = U come from the SVD of X (pass an
        :class:`~thermanopt.manifolds._svd.SVD` to fix it).
        """
        return _balanced_from(X, frames, self.depth)

    def frames(self, W: Array) -> Array:
        """Q_0..Q_N (shape (N+1, d, d)): Q_0 = V, Q_p = W_p Q_{p-1} diag(lam)^{-1}, Q_N = U.

        W is rebuilt by ``balanced_from(SVD(Q[N], s, Q[0]), Q[1:N])``.
        """
        return _compute_frames(W).Q

    def horizontal_lift(self, W: Array, Z: Array) -> Array:
        """Minimum-norm solution of dphi_W(V) = Z; it is horizontal and tangent.

        lift_p = Q_p [C o (lam_i^(N-p) lam_j^(p-1))] Q_{p-1}^T, C = (U^T Z V) / K.
        """
        namespace(W, Z)
        fr = _compute_frames(W)
        C = (_mT(fr.Q[-1]) @ Z @ fr.Q[0]) * fr.inv_K
        return _from_frame(fr, C[None, :, :] * fr.M)

    def differential(self, W: Array, V: Array) -> Array:
        """dphi_W(V) = sum_p W_N..W_{p+1} V_p W_{p-1}..W_1 (through the frames)."""
        namespace(W, V)
        fr = _compute_frames(W)
        Zp = _dphi_frame(fr, _to_frame(fr, V))
        return fr.Q[-1] @ Zp @ _mT(fr.Q[0])

    def vertical_part(self, W: Array, V: Array) -> Array:
        """Orthogonal projection onto the vertical space (orbit directions)."""
        return _in_frames(W, V, _vertical_frame)

    def horizontal_part(self, W: Array, V: Array) -> Array:
        """Orthogonal projection onto the horizontal space: lift(dphi_W(V))."""
        if W.shape[0] == 1:
            namespace(W, V)
            return V * 1
        return _in_frames(W, V, _horizontal_frame)

    def normal_part(self, W: Array, V: Array) -> Array:
        """Orthogonal projection onto the normal space (range of J(W)^T)."""
        if W.shape[0] == 1:
            namespace(W, V)
            return V * 0
        return _in_frames(W, V, lambda fr, Vp: _G(fr, _normal_coords(fr, Vp)))

    @staticmethod
    def differential_adjoint(W: Array, G: Array) -> Array:
        """dphi_W^*(G) = ((W_N..W_{p+1})^T G (W_{p-1}..W_1)^T)_p (:func:`phi_adjoint`)."""
        return phi_adjoint(W, G)

    @staticmethod
    def vertical_vector(W: Array, Omega: Array) -> Array:
        """Orbit generator (Om_p W_p - W_p Om_{p-1})_p for skew Om_1..Om_{N-1} (Om_0 = Om_N = 0)."""
        xp = namespace(W, Omega)
        z = _zeros(xp, (1,) + tuple(W.shape[1:]), W)
        Op = xp.concat([z, Omega, z], axis=0)
        return Op[1:] @ W - W @ Op[:-1]

    @staticmethod
    def orbit_action(W: Array, R: Array) -> Array:
        """W_p -> R_p W_p R_{p-1}^T, R_0 = R_N = I, for R (N-1, d, d) in O(d)^{N-1}."""
        xp = namespace(W, R)
        eye = _eye_like(xp, W)[None]
        Rf = xp.concat([eye, R, eye], axis=0)
        return Rf[1:] @ W @ _mT(Rf[:-1])

    # -------------------------------------------------------- Riemannian API

    def inner_product(
        self, point: Array, tangent_vector_a: Array, tangent_vector_b: Array
    ) -> float:
        xp = namespace(tangent_vector_a, tangent_vector_b)
        return to_float(xp.sum(tangent_vector_a * tangent_vector_b))

    def norm(self, point: Array, tangent_vector: Array) -> float:
        return math.sqrt(max(self.inner_product(point, tangent_vector, tangent_vector), 0.0))

    def projection(self, point: Array, vector: Array) -> Array:
        """Exact orthogonal projection onto T_W M: lift(dphi(E)) + vertical part of E.

        Depth 1 returns a copy of E (M is open in R^{d x d}).
        """
        if point.shape[0] == 1:
            namespace(point, vector)
            return vector * 1
        return _in_frames(point, vector, _project_frame)

    def to_tangent_space(self, point: Array, vector: Array) -> Array:
        return self.projection(point, vector)

    def euclidean_to_riemannian_gradient(self, point: Array, euclidean_gradient: Array) -> Array:
        return self.projection(point, euclidean_gradient)

    def euclidean_to_riemannian_hessian(
        self,
        point: Array,
        euclidean_gradient: Array,
        euclidean_hessian: Array,
        tangent_vector: Array,
    ) -> Array:
        """P_W(ehess[U] - (U_p S_{p-1} - S_p U_p)_p), G(S) the normal part of egrad."""
        namespace(point, euclidean_gradient, euclidean_hessian, tangent_vector)
        if point.shape[0] == 1:
            return euclidean_hessian * 1
        fr = _compute_frames(point)
        Hp = _to_frame(fr, euclidean_hessian)
        if fr.N > 1:
            S = _normal_coords(fr, _to_frame(fr, euclidean_gradient))
            xp = namespace(S)
            z = _zeros(xp, (1,) + tuple(S.shape[1:]), S)
            Sp = xp.concat([z, S, z], axis=0)
            Up = _to_frame(fr, tangent_vector)
            Hp = Hp - (Up @ Sp[:-1] - Sp[1:] @ Up)
        return _from_frame(fr, _project_frame(fr, Hp))

    def weingarten(self, point: Array, tangent_vector: Array, normal_vector: Array) -> Array:
        """Weingarten map: P_W(-(U_p S_{p-1} - S_p U_p)) with normal_vector = G(S)."""
        zero = tangent_vector * 0
        return self.euclidean_to_riemannian_hessian(point, normal_vector, zero, tangent_vector)

    def retraction(self, point: Array, tangent_vector: Array) -> Array:
        """Chart retraction through GL(d) x O(d)^{N-1} (first order, global)."""
        namespace(point, tangent_vector)
        return self._chart_retraction(_compute_frames(point), point, tangent_vector)

    def _chart_retraction(self, fr: BalancedFrames, W: Array, V: Array) -> Array:
        xp = namespace(W)
        N = fr.N
        Vp = _to_frame(fr, V)
        Zp = _dphi_frame(fr, Vp)  # U^T dphi(V) V
        # X_new = X expm(X^{-1} Z) = U S expm(S^{-1} Z') V^T
        Xn = (fr.Q[-1] * fr.s[None, :]) @ expm(Zp / fr.s[:, None]) @ _mT(fr.Q[0])
        f = svd(Xn)
        if N == 1:
            return Xn[None]
        lam = fr.lam
        Om = (Vp[:-1] - _mT(Vp[:-1])) / (lam[:, None] + lam[None, :])
        On = fr.Q[1:-1] @ expm(Om) @ _mT(fr.Q[:-2])  # new polar factors O_1..O_{N-1}
        Q = [f.V]
        for p in range(N - 1):
            Q.append(On[p] @ Q[-1])
        return _balanced_from(f, xp.stack(Q[1:], axis=0), N)

    def retraction_second_order(
        self,
        point: Array,
        tangent_vector: Array,
        *,
        rtol: float | None = None,
        max_iterations: int = 100,
        return_info: bool = False,
    ):
        """Orthographic retraction W + V + G(S), S normal coordinates found by Newton.

        Solves h(W + V + G(S)) = 0 (h the balance constraints) by the chord
        (frozen-Jacobian) Newton iteration S <- S - T^{-1} h'(Y), using that the
        constraint Jacobian at W maps G(S) to T S in frames. Iterates to rounding
        level (|h| <= 10 eps max_p |Y_p|^2) while the iteration contracts and
        accepts |h| <= rtol max_p |Y_p|^2 (default max(1e-10, 10 eps)) once it
        stagnates. If the iteration
        diverges or does not converge (steps too large for the orthographic
        retraction to exist), returns the chart retraction instead. With
        ``return_info`` returns (point, dict(iterations, residual, converged)).
        """
        namespace(point, tangent_vector)
        fr = _compute_frames(point)
        N = fr.N
        xp = namespace(point)
        tol = max(1e-10, 10 * eps(point)) if rtol is None else float(rtol)
        floor = min(tol, 10 * eps(point))
        base = _to_frame(fr, point + tangent_vector)  # Y' at S = 0
        S = _zeros(xp, (N - 1,) + tuple(point.shape[1:]), point)
        converged = N == 1  # GL(d) is open: W + V
        prev = math.inf
        res = 0.0 if converged else math.inf
        Y = base
        it = 0
        for it in range(1, max_iterations + 1 if N > 1 else 1):
            Y = base + _G(fr, S)
            h = balance_residual(Y)
            scale = to_float(xp.max(xp.sum(Y * Y, axis=(-2, -1))))
            res = to_float(xp.sqrt(xp.max(xp.sum(h * h, axis=(-2, -1))))) / max(scale, 1e-300)
            if not math.isfinite(res) or res > 10 * prev:
                break
            # iterate on to rounding level while the chord contraction lasts, so that
            # Taylor checks see a smooth curve; accept ``tol`` once it stagnates
            if res <= floor or (res <= tol and res > 0.25 * prev):
                converged = True
                break
            if it > 5 and res > 0.9 * prev:
                break
            prev = res
            S = S - _jacobi_solve(fr, h)
        if converged:
            # a large step may carry W + V + G(S) across the rank-deficient set: keep
            # the orthographic point only if every layer keeps the sign of det W'_p =
            # det L > 0 (same component) and the product stays of full rank.
            # Cheap sufficient test first: |Y'_p - L|_2 <= delta < lam_min keeps every
            # layer on the segment to L nonsingular, with cond <= (lam_max + delta) /
            # (lam_min - delta); only when it is inconclusive compute singular values.
            limit = -math.log(100 * self.width * eps(point))
            D = Y - fr.lam[None, :, None] * _eye_like(xp, Y)
            delta = math.sqrt(to_float(xp.max(xp.sum(D * D, axis=(-2, -1)))))
            lmax, lmin = to_float(xp.max(fr.lam)), to_float(xp.min(fr.lam))
            if delta < 0.5 * lmin and N * math.log((lmax + delta) / (lmin - delta)) < limit:
                pass
            else:
                sign, _ = xp.linalg.slogdet(Y)
                sv = xp.linalg.svdvals(Y)
                logcond = N * to_float(xp.max(xp.log(sv[:, 0]) - xp.log(sv[:, -1])))
                converged = bool(to_float(xp.min(sign)) > 0) and logcond < limit
        if converged:
            out = _from_frame(fr, Y)
        else:
            out = self._chart_retraction(fr, point, tangent_vector)
        info = {"iterations": it, "residual": res, "converged": converged}
        return (out, info) if return_info else out

    def transport(self, point_a: Array, point_b: Array, tangent_vector_a: Array) -> Array:
        """Vector transport by orthogonal projection onto T_{point_b} M."""
        return self.projection(point_b, tangent_vector_a)

    def random_point(self, generator: Any = None, component: Any = +1) -> Array:
        """A random balanced point over X = D expm(A), A Gaussian / sqrt(2d), Haar frames.

        ``component``: +1 or -1 for the sign of det X (D = diag(-1, 1, ..., 1)
        flips it), or a sequence of N signs for det W_1, ..., det W_N (det X has
        the sign of their product).
        """
        d, N = self.width, self.depth
        gen = self.spec.generator(generator)
        if isinstance(component, (int, float)) and not isinstance(component, bool):
            if component not in (1, -1):
                raise ValueError(f"component must be +1 or -1, got {component!r}")
            signs, total = None, int(component)
        else:
            signs = [int(c) for c in component]
            if len(signs) != N or any(c not in (1, -1) for c in signs):
                raise ValueError(f"component must be +1, -1 or {N} signs +-1, got {component!r}")
            total = int(np.prod(signs))
        X = expm(self.spec.randn((d, d), gen) / math.sqrt(2.0 * d))
        xp = namespace(X)
        flip = xp.concat(
            [
                -xp.ones((1,), dtype=X.dtype, device=_device(X)),
                xp.ones((d - 1,), dtype=X.dtype, device=_device(X)),
            ]
        )
        if total < 0:
            X = flip[:, None] * X
        if N == 1:
            return X[None]
        f = svd(X)
        frames = _haar(self.spec, (N - 1, d, d), gen)
        if signs is not None:
            # det W_p = det Q_p det Q_{p-1}: choose det Q_p = sign_p det Q_{p-1}
            cur = 1.0 if to_float(xp.linalg.det(f.V)) > 0 else -1.0
            out = []
            for p in range(N - 1):
                q = frames[p]
                want = signs[p] * cur
                if (to_float(xp.linalg.det(q)) > 0) != (want > 0):
                    q = q * flip[None, :]
                out.append(q)
                cur = want
            frames = xp.stack(out, axis=0)
        return _balanced_from(f, frames, N)

    def random_tangent_vector(self, point: Array, generator: Any = None) -> Array:
        """A projected Gaussian (made like ``point``), normalised to unit norm."""
        E = random_normal(tuple(point.shape), spec_of(point), generator)
        v = self.projection(point, E)
        return v / self.norm(point, v)

    def zero_vector(self, point: Array) -> Array:
        xp = namespace(point)
        return xp.zeros_like(point)
