"""The balanced manifold of the deep linear network (DLN) as a Pymanopt manifold.

Points are stacks W of shape (N, d, d) (``depth`` N, ``width`` d), W[0] the first layer,
with end-to-end map phi(W) = W[N-1] ... W[0] = X (Menon & Yu, arXiv 2509.09088; Bah,
Rauhut, Terstiege & Westdickenberg, arXiv 1910.05505). With 1-based layers W_p = W[p-1],

    M = { W : W_{p+1}^T W_{p+1} = W_p W_p^T (p = 1..N-1), X of full rank },

a Riemannian submanifold of the Frobenius space R^{N x d x d} of dimension
d^2 + (N-1) d(d-1)/2, foliated by the orbits of O(d)^{N-1} (W_p -> R_p W_p R_{p-1}^T),
which are the fibres of phi. The geometry is a thin class over the batched kernels of
:mod:`._frames` (frames, the horizontal / vertical / normal splitting by one sine
transform along depth, the Weingarten map and the aligned second-order retraction):

- projection onto T_W M = horizontal part lift(dphi(E)) + vertical part;
- Riemannian Hessian from Pymanopt's ``RiemannianSubmanifold`` and the Weingarten map
  W(U, G(S)) = P_W(-(U_p S_{p-1} - S_p U_p)), G(S) a normal vector;
- ``retraction`` (= ``retraction_second_order``): the aligned reprojection of W + V, second
  order, defined for every tangent vector, never leaving the component of W.

The signs of det W_p are constant on connected components: M has 2^N of them (det X has
the sign of their product). ``random_point(component=...)`` chooses them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pymanopt.manifolds.manifold import RiemannianSubmanifold

from .._backend import eps, expm, namespace, to_float
from .._backend import matrix_transpose as _mT
from ._frames import BalancedFrames, retract
from ._svd import SVD, svd
from .base import DLNManifold
from .dln import (
    balance_residual,
    balanced_from,
    end_to_end,
    end_to_end_adjoint,
    end_to_end_adjoint_derivative,
    end_to_end_differential,
)

Array = Any

__all__ = ["BalancedManifold"]


def _haar(spec: Any, shape: tuple[int, ...], gen: Any) -> Array:
    """Haar-distributed orthogonal matrices (QR of a Gaussian with the sign fix)."""
    G = spec.randn(shape, gen)
    xp = namespace(G)
    Qm, R = xp.linalg.qr(G)
    diag = xp.linalg.diagonal(R)
    return Qm * xp.where(diag < 0, -xp.ones_like(diag), xp.ones_like(diag))[..., None, :]


def _flip_first(xp, Q: Array, flip: bool) -> Array:
    return xp.concat([-Q[..., :1], Q[..., 1:]], axis=-1) if flip else Q


class BalancedManifold(DLNManifold, RiemannianSubmanifold):
    """Balanced deep-linear-network parameters, a Riemannian submanifold of R^{N x d x d}.

    Points are arrays W of shape (depth, width, width) with W[0] the first layer,
    W_{p+1}^T W_{p+1} = W_p W_p^T and a full-rank end-to-end matrix. Tangent vectors are
    arrays of the same shape, the metric is the Frobenius one. Geometry methods accept a
    leading batch of points and vectors of the same shape.

    Args:
        width: d.
        depth: N >= 1.
        backend, device, dtype: where :meth:`random_point` allocates (NumPy float64 by
            default); other methods keep the array type, device and dtype of their input.
    """

    def _label(self) -> str:
        return f"Balanced DLN manifold (width {self.width}, depth {self.depth})"

    def _dimension(self) -> int:
        """d^2 + (N-1) d(d-1)/2."""
        d, N = self.width, self.depth
        return d * d + (N - 1) * d * (d - 1) // 2

    # ------------------------------------------------------------ shape
    @property
    def point_shape(self) -> tuple[int, int, int]:
        return (self.depth, self.width, self.width)

    @property
    def typical_dist(self) -> float:
        return math.sqrt(self.depth * self.width)

    def _check_constraint(self, W: Array, rtol: float | None) -> None:
        """Balance: max_p |W_{p+1}^T W_{p+1} - W_p W_p^T| <= rtol max_p |W_p|^2."""
        if self.depth == 1:
            return
        xp = namespace(W)
        scale = to_float(xp.max(xp.sum(W * W, axis=(-2, -1))))
        if scale == 0.0:
            raise ValueError("point is zero: its end-to-end matrix is rank deficient")
        rtol = max(1e-7, 1e3 * eps(W)) if rtol is None else float(rtol)
        r = balance_residual(W)
        err = to_float(xp.sqrt(xp.max(xp.sum(r * r, axis=(-2, -1))))) / scale
        if err > rtol:
            raise ValueError(
                f"point is not balanced: max_p |W_(p+1)^T W_(p+1) - W_p W_p^T| / |W|^2 "
                f"= {err:.3g} > {rtol:.3g}"
            )

    # ------------------------------------------------------------ the bundle
    def end_to_end(self, point: Array) -> Array:
        """phi(W) = W[N-1] @ ... @ W[0] (batched)."""
        return end_to_end(point)

    def end_to_end_differential(self, point: Array, tangent_vector: Array) -> Array:
        """dphi_W(V) = sum_p W_N..W_{p+1} V_p W_{p-1}..W_1."""
        return end_to_end_differential(point, tangent_vector)

    def end_to_end_adjoint(self, point: Array, covector: Array) -> Array:
        """dphi_W^*(G)_p = (W_N..W_{p+1})^T G (W_{p-1}..W_1)^T."""
        return end_to_end_adjoint(point, covector)

    def end_to_end_adjoint_derivative(self, point: Array, vector: Array, covector: Array):
        return end_to_end_adjoint_derivative(point, vector, covector)

    def to_balanced(self, point: Array) -> Array:
        """W itself."""
        return point

    def from_balanced(self, W: Array) -> Array:
        """W itself."""
        return W

    def pull_back(self, W: Array, covector: Array) -> Array:
        """The covector itself (the points are the balanced stacks)."""
        return covector

    @property
    def total_space(self) -> BalancedManifold:
        """The manifold itself."""
        return self

    def reproject(self, point: Array) -> Array:
        """The balanced stack over phi(W) with the polar frames of W (W itself when on M)."""
        if self.depth == 1:
            return point * 1
        return BalancedFrames(point, orthogonalize=True).point()

    def balanced_from(self, X: Array | SVD, frames: Array | None = None) -> Array:
        """The balanced point W_p = Q_p diag(s^(1/N)) Q_{p-1}^T over X (frames Q_1..Q_{N-1})."""
        return balanced_from(X, frames, self.depth)

    def frames(self, W: Array) -> Array:
        """Q_0..Q_N (shape (..., N+1, d, d)): Q_0 = V, Q_p = W_p Q_{p-1} diag(lam)^{-1}."""
        return BalancedFrames(W).Q

    def horizontal_lift(self, W: Array, Z: Array) -> Array:
        """Minimum-norm solution of dphi_W(V) = Z: Q_p [(U^T Z V / K) o M_p] Q_{p-1}^T."""
        namespace(W, Z)
        fr = BalancedFrames(W)
        return fr.from_frame(fr.lift(_mT(fr.Q[..., -1, :, :]) @ Z @ fr.Q[..., 0, :, :]))

    def horizontal_part(self, W: Array, V: Array) -> Array:
        """Orthogonal projection onto the horizontal space: lift(dphi_W(V))."""
        return self._in_frames(W, V, BalancedFrames.horizontal)

    def vertical_part(self, W: Array, V: Array) -> Array:
        """Orthogonal projection onto the vertical space (orbit directions)."""
        return self._in_frames(W, V, BalancedFrames.vertical)

    def normal_part(self, W: Array, V: Array) -> Array:
        """Orthogonal projection onto the normal space (range of the balance Jacobian^T)."""
        return self._in_frames(W, V, BalancedFrames.normal)

    def vertical_vector(self, W: Array, Omega: Array) -> Array:
        """Orbit generator (Om_p W_p - W_p Om_{p-1})_p, skew Om_1..Om_{N-1} (Om_0 = Om_N = 0)."""
        xp = namespace(W, Omega)
        z = xp.zeros_like(W[..., :1, :, :])
        Op = xp.concat([z, Omega, z], axis=-3)
        return Op[..., 1:, :, :] @ W - W @ Op[..., :-1, :, :]

    def orbit_action(self, W: Array, R: Array) -> Array:
        """W_p -> R_p W_p R_{p-1}^T, R_0 = R_N = I, for R (N-1, d, d) in O(d)^{N-1}."""
        xp = namespace(W, R)
        eye = xp.zeros_like(W[..., :1, :, :]) + xp.eye(self.width, dtype=W.dtype)
        Rf = xp.concat([eye, R, eye], axis=-3)
        return Rf[..., 1:, :, :] @ W @ _mT(Rf[..., :-1, :, :])

    @staticmethod
    def _in_frames(W: Array, E: Array, frame_map: Any) -> Array:
        namespace(W, E)
        fr = BalancedFrames(W)
        return fr.from_frame(frame_map(fr, fr.to_frame(E)))

    # ------------------------------------------------------------ Riemannian API
    def inner_product_array(self, point: Array, tangent_vector_a: Array, tangent_vector_b: Array):
        """Frobenius <U, V> = sum_p tr(U_p^T V_p) (0-d array per batch entry)."""
        xp = namespace(tangent_vector_a, tangent_vector_b)
        return xp.sum(tangent_vector_a * tangent_vector_b, axis=(-3, -2, -1))

    def projection(self, point: Array, vector: Array) -> Array:
        """Exact orthogonal projection onto T_W M: lift(dphi(E)) + vertical part of E."""
        self._check_pair(point, vector, "vector")
        if self.depth == 1:
            return vector * 1
        return self._in_frames(point, vector, BalancedFrames.project)

    def weingarten(self, point: Array, tangent_vector: Array, normal_vector: Array) -> Array:
        """W(U, G(S)) = P_W(-(U_p S_{p-1} - S_p U_p)) for a normal vector G(S)."""
        self._check_pair(point, tangent_vector)
        if self.depth == 1:
            return tangent_vector * 0
        fr = BalancedFrames(point)
        Hp = fr.weingarten(fr.to_frame(tangent_vector), fr.to_frame(normal_vector))
        return fr.from_frame(fr.project(Hp))

    def retraction_second_order(self, point: Array, tangent_vector: Array) -> Array:
        """Aligned reprojection of W + V (second order, global; see :mod:`._frames`)."""
        self._check_pair(point, tangent_vector)
        return retract(point, tangent_vector)

    def retraction_first_order(self, point: Array, tangent_vector: Array) -> Array:
        """Chart retraction through GL(d) x O(d)^{N-1}: X expm(X^{-1} dX), O_p expm(Om_p).

        First order (the polar factors O_p = Q_p Q_{p-1}^T move by Om'_p = (V'_p - V'_p^T) /
        (lam_i + lam_j)); kept to show what a second-order retraction buys.
        """
        self._check_pair(point, tangent_vector)
        xp = namespace(point)
        fr = BalancedFrames(point)
        Vp = fr.to_frame(tangent_vector)
        Zp = fr.dphi(Vp)
        Q0, QN = fr.Q[..., 0, :, :], fr.Q[..., -1, :, :]
        Xn = (QN * fr.s[..., None, :]) @ expm(Zp / fr.s[..., :, None]) @ _mT(Q0)
        f = svd(Xn)
        if self.depth == 1:
            return Xn[..., None, :, :]
        lam = fr.lam
        Om = (Vp[..., :-1, :, :] - _mT(Vp[..., :-1, :, :])) / (
            lam[..., None, :, None] + lam[..., None, None, :]
        )
        On = fr.Q[..., 1:-1, :, :] @ expm(Om) @ _mT(fr.Q[..., :-2, :, :])
        Q = [f.V]
        for p in range(self.depth - 1):
            Q.append(On[..., p, :, :] @ Q[-1])
        return balanced_from(f, xp.stack(Q[1:], axis=-3), self.depth)

    def transport(self, point_a: Array, point_b: Array, tangent_vector_a: Array) -> Array:
        """Vector transport by orthogonal projection onto T_{point_b} M."""
        return self.projection(point_b, tangent_vector_a)

    def random_point(self, generator: Any = None, component: Any = +1) -> Array:
        """A random balanced point over X = D expm(A), A Gaussian / sqrt(2d), Haar frames.

        ``component``: +1 or -1 for the sign of det X (D = diag(-1, 1, ..., 1) flips it), or
        a sequence of N signs for det W_1, ..., det W_N (det X has the sign of their product).
        """
        d, N = self.width, self.depth
        gen = self.spec.generator(generator)
        signs = _component_signs(component, N)
        total = int(np.prod(signs)) if signs is not None else int(component)
        X = expm(self.spec.randn((d, d), gen) / math.sqrt(2.0 * d))
        xp = namespace(X)
        if total < 0:
            X = xp.concat([-X[:1, :], X[1:, :]], axis=0)
        if N == 1:
            return X[None]
        f = svd(X)
        frames = _haar(self.spec, (N - 1, d, d), gen)
        if signs is not None:  # det W_p = det Q_p det Q_{p-1}: orient each frame in turn
            prev = to_float(xp.linalg.det(f.V))
            out = []
            for p in range(N - 1):
                want = signs[p] * (1.0 if prev > 0 else -1.0)
                has = to_float(xp.linalg.det(frames[p])) > 0
                out.append(_flip_first(xp, frames[p], has != (want > 0)))
                prev = want
            frames = xp.stack(out, axis=0)
        return balanced_from(f, frames, N)


def _component_signs(component: Any, N: int) -> list[int] | None:
    """None for a sign of det X (+1 or -1), else the N layer signs."""
    if isinstance(component, (int, float)) and not isinstance(component, bool):
        if component not in (1, -1):
            raise ValueError(f"component must be +1 or -1, got {component!r}")
        return None
    try:
        signs = [int(c) for c in component]
    except TypeError:
        raise ValueError(f"component must be +1, -1 or {N} signs, got {component!r}") from None
    if len(signs) != N or any(c not in (1, -1) for c in signs):
        raise ValueError(f"component must be +1, -1 or {N} signs +-1, got {component!r}")
    return signs
