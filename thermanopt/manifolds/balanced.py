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

from .._backend import (
    check_compatible,
    check_finite,
    check_real_float,
    eps,
    expm,
    namespace,
    quiet_overflow,
    to_float,
)
from .._backend import matrix_transpose as _mT
from ._frames import BalancedFrames, layer_signs, retract, retract_checked
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
        validate: geometry methods check that the point is finite, balanced and of full
            rank and that vectors are finite (``ValueError``), see
            :mod:`thermanopt.manifolds.base`; shapes and dtypes are always checked.
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

    def _constraint_residual(self, point: Array) -> Array:
        """max_p |W_(p+1)^T W_(p+1) - W_p W_p^T| / max_p |W_p|^2 (NaN for non-finite W)."""
        xp = namespace(point)
        if self.depth == 1:
            return xp.sum(point * 0.0)
        r = balance_residual(point)
        scale = xp.max(xp.sum(point * point, axis=(-2, -1)))
        err = xp.sqrt(xp.max(xp.sum(r * r, axis=(-2, -1))))
        tiny = float(np.finfo(np.float64).tiny)
        return err / xp.maximum(scale, xp.full_like(scale, tiny)) + xp.sum(point * 0.0)

    def _constraint_message(self, value: float, point: Array) -> str:
        if value != value:
            return "its squared entries overflow"
        return f"not balanced, max_p |W_(p+1)^T W_(p+1) - W_p W_p^T| / |W|^2 = {value:.3g}"

    def _frames_of(self, W: Array, *vectors: tuple[str, Array]) -> BalancedFrames:
        """Frames of a checked point (values and rank with ``validate``)."""
        self._check_values(W, *vectors)
        fr = BalancedFrames(W)
        self._check_rank(fr.s, "point")
        return fr

    def _check_covector(self, point: Array, G: Array, name: str = "covector") -> None:
        """``G`` must be a (..., d, d) array like ``point`` with the point's batch shape."""
        self._check_shape(point, "point", batched=True)
        check_real_float(G, name)
        check_compatible(point, G, names=("point", name))
        want = tuple(point.shape[:-3]) + (self.width, self.width)
        if tuple(G.shape) != want:
            raise ValueError(f"{name} has shape {tuple(G.shape)}, expected {want}")

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
        """phi(W) = W[N-1] @ ... @ W[0] (batched; shape checks only, safe in autodiff)."""
        self._check_shape(point, "point", batched=True)
        return end_to_end(point)

    def end_to_end_differential(self, point: Array, tangent_vector: Array) -> Array:
        """dphi_W(V) = sum_p W_N..W_{p+1} V_p W_{p-1}..W_1."""
        self._check_pair(point, tangent_vector)
        return end_to_end_differential(point, tangent_vector)

    def end_to_end_adjoint(self, point: Array, covector: Array) -> Array:
        """dphi_W^*(G)_p = (W_N..W_{p+1})^T G (W_{p-1}..W_1)^T."""
        self._check_covector(point, covector)
        return end_to_end_adjoint(point, covector)

    def end_to_end_adjoint_derivative(self, point: Array, vector: Array, covector: Array):
        self._check_pair(point, vector, "vector")
        self._check_covector(point, covector)
        return end_to_end_adjoint_derivative(point, vector, covector)

    def to_balanced(self, point: Array) -> Array:
        """W itself."""
        self._check_shape(point, "point", batched=True)
        return point

    def from_balanced(self, W: Array) -> Array:
        """W itself."""
        self._check_shape(W, "W", batched=True)
        return W

    def pull_back(self, W: Array, covector: Array) -> Array:
        """The covector itself (the points are the balanced stacks)."""
        self._check_pair(W, covector, "covector", "W")
        return covector

    @property
    def total_space(self) -> BalancedManifold:
        """The manifold itself."""
        return self

    def reproject(self, point: Array) -> Array:
        """The balanced stack over phi(W) with the polar frames of W (W itself when on M).

        ``point`` may be unbalanced (that is its purpose); with ``validate`` it must be
        finite with a full-rank end-to-end matrix.
        """
        self._check_shape(point, "point", batched=True)
        if self.checks_values:
            check_finite(point, "point")
        f = svd(end_to_end(point))
        self._check_rank(f.s, "point")
        if self.depth == 1:
            return point * 1
        return BalancedFrames(point, svd_of_X=f, orthogonalize=True).point()

    def balanced_from(self, X: Array | SVD, frames: Array | None = None) -> Array:
        """The balanced point W_p = Q_p diag(s^(1/N)) Q_{p-1}^T over X (frames Q_1..Q_{N-1}).

        ``X`` is a (..., d, d) array of full rank (or its :class:`SVD`), ``frames`` an
        orthogonal (..., N-1, d, d) array.
        """
        d, N = self.width, self.depth
        if not isinstance(X, tuple):
            check_real_float(X, "X")
            if tuple(X.shape[-2:]) != (d, d) or len(X.shape) < 2:
                raise ValueError(f"X has shape {tuple(X.shape)}, expected (..., {d}, {d})")
            if self.checks_values:
                check_finite(X, "X")
            X = svd(X)
            self._check_rank(X.s, "X")
        if frames is not None:
            check_real_float(frames, "frames")
            if len(frames.shape) < 3 or tuple(frames.shape[-3:]) != (N - 1, d, d):
                raise ValueError(
                    f"frames has shape {tuple(frames.shape)}, expected (..., {N - 1}, {d}, {d})"
                )
            self._check_orthogonal(frames, "frames")
        return balanced_from(X, frames, N)

    def _check_orthogonal(self, R: Array, name: str) -> None:
        """With ``validate``: ``ValueError`` unless R^T R = I (to 1e3 eps) and finite."""
        if not self.checks_values:
            return
        xp = namespace(R)
        eye = xp.eye(R.shape[-1], dtype=R.dtype, device=_device_of(R))
        err = to_float(xp.max(xp.abs(_mT(R) @ R - eye))) if R.shape[-3] else 0.0
        if not err <= max(1e-6, 1e3 * eps(R)):
            check_finite(R, name)
            raise ValueError(f"{name} must be orthogonal matrices: |R^T R - I| = {err:.3g}")

    def frames(self, W: Array) -> Array:
        """Q_0..Q_N (shape (..., N+1, d, d)): Q_0 = V, Q_p = W_p Q_{p-1} diag(lam)^{-1}."""
        self._check_shape(W, "W", batched=True)
        return self._frames_of(W).Q

    def horizontal_lift(self, W: Array, Z: Array) -> Array:
        """Minimum-norm solution of dphi_W(V) = Z: Q_p [(U^T Z V / K) o M_p] Q_{p-1}^T."""
        self._check_covector(W, Z, "Z")
        fr = self._frames_of(W, ("Z", Z))
        return fr.from_frame(fr.lift(_mT(fr.Q[..., -1, :, :]) @ Z @ fr.Q[..., 0, :, :]))

    def horizontal_part(self, W: Array, V: Array) -> Array:
        """Orthogonal projection onto the horizontal space: lift(dphi_W(V))."""
        self._check_pair(W, V, "V", "W")
        return self._in_frames(W, V, BalancedFrames.horizontal)

    def vertical_part(self, W: Array, V: Array) -> Array:
        """Orthogonal projection onto the vertical space (orbit directions)."""
        self._check_pair(W, V, "V", "W")
        return self._in_frames(W, V, BalancedFrames.vertical)

    def normal_part(self, W: Array, V: Array) -> Array:
        """Orthogonal projection onto the normal space (range of the balance Jacobian^T)."""
        self._check_pair(W, V, "V", "W")
        return self._in_frames(W, V, BalancedFrames.normal)

    def _check_layers(self, W: Array, A: Array, name: str) -> None:
        """``A`` must be a (..., N-1, d, d) array like ``W`` with the point's batch shape."""
        self._check_shape(W, "W", batched=True)
        check_real_float(A, name)
        check_compatible(W, A, names=("W", name))
        want = tuple(W.shape[:-3]) + (self.depth - 1, self.width, self.width)
        if tuple(A.shape) != want:
            raise ValueError(f"{name} has shape {tuple(A.shape)}, expected {want}")

    def vertical_vector(self, W: Array, Omega: Array) -> Array:
        """Orbit generator (Om_p W_p - W_p Om_{p-1})_p, skew Om_1..Om_{N-1} (Om_0 = Om_N = 0)."""
        self._check_layers(W, Omega, "Omega")
        self._check_values(W, ("Omega", Omega))
        xp = namespace(W, Omega)
        z = xp.zeros_like(W[..., :1, :, :])
        Op = xp.concat([z, Omega, z], axis=-3)
        return Op[..., 1:, :, :] @ W - W @ Op[..., :-1, :, :]

    def orbit_action(self, W: Array, R: Array) -> Array:
        """W_p -> R_p W_p R_{p-1}^T, R_0 = R_N = I, for R (N-1, d, d) in O(d)^{N-1}."""
        self._check_layers(W, R, "R")
        self._check_values(W)
        self._check_orthogonal(R, "R")
        xp = namespace(W, R)
        eye = xp.zeros_like(W[..., :1, :, :]) + xp.eye(self.width, dtype=W.dtype)
        Rf = xp.concat([eye, R, eye], axis=-3)
        return Rf[..., 1:, :, :] @ W @ _mT(Rf[..., :-1, :, :])

    def _in_frames(self, W: Array, E: Array, frame_map: Any, name: str = "V") -> Array:
        fr = self._frames_of(W, (name, E))
        return fr.from_frame(frame_map(fr, fr.to_frame(E)))

    # ------------------------------------------------------------ Riemannian API
    def inner_product_array(self, point: Array, tangent_vector_a: Array, tangent_vector_b: Array):
        """Frobenius <U, V> = sum_p tr(U_p^T V_p) (0-d array per batch entry)."""
        self._check_pair(point, tangent_vector_a, "tangent_vector_a")
        self._check_pair(point, tangent_vector_b, "tangent_vector_b")
        xp = namespace(tangent_vector_a, tangent_vector_b)
        return xp.sum(tangent_vector_a * tangent_vector_b, axis=(-3, -2, -1))

    def projection(self, point: Array, vector: Array, frames: Any = None) -> Array:
        """Exact orthogonal projection onto T_W M: lift(dphi(E)) + vertical part of E.

        ``frames``: the (Q, s) of ``point`` from :meth:`frame_data` or
        :meth:`retraction_with_frames` (skips the SVD of phi(W)).
        """
        self._check_pair(point, vector, "vector")
        if self.depth == 1:
            self._check_step_start(point, vector)
            return vector * 1
        if frames is None:
            return self._in_frames(point, vector, BalancedFrames.project, "vector")
        self._check_values(point, ("vector", vector))
        fr = BalancedFrames.from_frames(*self._check_frames(point, frames))
        return fr.from_frame(fr.project(fr.to_frame(vector)))

    def _check_frames(self, point: Array, frames: Any) -> tuple[Array, Array]:
        """``frames`` must be (Q, s) like ``point``: (..., N+1, d, d) and (..., d)."""
        batch, d, N = tuple(point.shape[:-3]), self.width, self.depth
        want = (batch + (N + 1, d, d), batch + (d,))
        if not isinstance(frames, tuple) or len(frames) != 2:
            raise ValueError(f"frames must be a pair (Q, s), got {type(frames).__name__}")
        for name, a, shape in zip(("frames Q", "frames s"), frames, want):
            check_real_float(a, name)
            check_compatible(point, a, names=("point", name))
            if tuple(a.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(a.shape)}, expected {shape}")
        return frames

    # ------------------------------------------------------------ frames carried by samplers
    def frame_data(self, point: Array) -> tuple[Array, Array]:
        """(Q, s): frames Q_0..Q_N (..., N+1, d, d) and singular values of phi(W) (one SVD)."""
        self._check_shape(point, "point", batched=True)
        fr = self._frames_of(point)
        return fr.Q, fr.s

    def layer_signs(self, point: Array) -> Array:
        """sign(det W_p), shape (..., N): constant on each of the 2^N components."""
        self._check_shape(point, "point", batched=True)
        return layer_signs(point)

    def retraction_with_frames(
        self, point: Array, tangent_vector: Array, signs: Array | None = None
    ) -> tuple[Array, Array, Array, Array]:
        """(ok, R_W(V), Q, s): the retraction's kernel for step rules that carry frames.

        ``ok`` masks the batch entries where the step exists (X' finite and of full rank,
        the point finite; NaN points elsewhere), Q and s are the frames of the result
        (:meth:`frame_data`); ``signs`` the layer signs of W (:meth:`layer_signs`, computed
        when None). No value checks and no host read (the step rule's mode).
        """
        self._check_pair(point, tangent_vector, "tangent_vector")
        with quiet_overflow():
            out, fr, ok = retract_checked(point, tangent_vector, signs)
        return ok, out, fr.Q, fr.s

    def euclidean_to_riemannian_hessian(
        self,
        point: Array,
        euclidean_gradient: Array,
        euclidean_hessian: Array,
        tangent_vector: Array,
    ) -> Array:
        """P_W(H[V]) + Weingarten(V, G - P_W G) (Pymanopt's ``RiemannianSubmanifold``)."""
        self._check_pair(point, euclidean_gradient, "euclidean_gradient")
        self._check_pair(point, euclidean_hessian, "euclidean_hessian")
        self._check_pair(point, tangent_vector, "tangent_vector")
        return super().euclidean_to_riemannian_hessian(
            point, euclidean_gradient, euclidean_hessian, tangent_vector
        )

    def weingarten(self, point: Array, tangent_vector: Array, normal_vector: Array) -> Array:
        """W(U, G(S)) = P_W(-(U_p S_{p-1} - S_p U_p)) for a normal vector G(S)."""
        self._check_pair(point, tangent_vector, "tangent_vector")
        self._check_pair(point, normal_vector, "normal_vector")
        if self.depth == 1:
            self._check_step_start(point, tangent_vector)
            return tangent_vector * 0
        fr = self._frames_of(
            point, ("tangent_vector", tangent_vector), ("normal_vector", normal_vector)
        )
        Hp = fr.weingarten(fr.to_frame(tangent_vector), fr.to_frame(normal_vector))
        return fr.from_frame(fr.project(Hp))

    def retraction_second_order(self, point: Array, tangent_vector: Array) -> Array:
        """Aligned reprojection of W + V (second order, global; see :mod:`._frames`).

        ``ValueError`` for a bad point or vector (with ``validate``) and when the step
        overflows or lands on a rank-deficient X' (take a shorter step); NaN there in
        :meth:`unchecked` mode (the step rule's).
        """
        return super().retraction_second_order(point, tangent_vector)

    def _check_step_start(self, point: Array, tangent_vector: Array) -> None:
        """Values of (point, vector) and the rank of the point (one SVD of X)."""
        self._check_values(point, ("tangent_vector", tangent_vector))
        if self.checks_values:
            self._check_rank(namespace(point).linalg.svdvals(end_to_end(point)), "point")

    def _retract(self, point: Array, tangent_vector: Array) -> Array:
        return retract(point, tangent_vector)

    def retraction_first_order(self, point: Array, tangent_vector: Array) -> Array:
        """Chart retraction through GL(d) x O(d)^{N-1}: X expm(X^{-1} dX), O_p expm(Om_p).

        First order (the polar factors O_p = Q_p Q_{p-1}^T move by Om'_p = (V'_p - V'_p^T) /
        (lam_i + lam_j)); kept to show what a second-order retraction buys.
        """
        self._check_pair(point, tangent_vector, "tangent_vector")
        out = self._retraction_first_order(point, tangent_vector)
        xp = namespace(out)
        if not bool(to_float(xp.all(xp.isfinite(out)))):
            raise ValueError(
                "retraction_first_order: the step along tangent_vector overflows; take a "
                "shorter step"
            )
        return out

    def _retraction_first_order(self, point: Array, tangent_vector: Array) -> Array:
        xp = namespace(point)
        fr = self._frames_of(point, ("tangent_vector", tangent_vector))
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
        self._check_pair(point_b, point_a, "point_a", "point_b")
        self._check_pair(point_a, tangent_vector_a, "tangent_vector_a", "point_a")
        self._check_step_start(point_a, tangent_vector_a)
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


def _device_of(x: Array) -> Any:
    dev = getattr(x, "device", None)
    return None if isinstance(dev, str) or dev is None else dev


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
