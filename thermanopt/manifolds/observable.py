"""The observable quotient of the deep linear network: (GL(d), g_N).

The balanced manifold M of depth-N, width-d deep linear networks, divided by
the free, isometric action of O(d)^(N-1), is represented by its end-to-end
matrices X = phi(W) in GL(d) (Menon & Yu, arXiv 2509.09088). The quotient
metric is (Bah, Rauhut, Terstiege & Westdickenberg, arXiv 1910.05505)

    g_N(X)(Z1, Z2) = <Z1, A_{N,X}^{-1} Z2> = sum_ij (U^T Z1 V)_ij (U^T Z2 V)_ij / K_ij,

with X = U diag(s) V^T, K_ij = sum_{k=0}^{N-1} a_i^{N-1-k} a_j^k and
a = s^(2/N). Tangent spaces are all of R^{d x d}; the Riemannian gradient is
A_{N,X}(nabla E), so the g_N gradient flow of E is exactly the image under phi
of the Euclidean gradient flow of E o phi on the factors from a balanced start.

GL(d) has two connected components, det X > 0 and det X < 0. Every retraction
here is X expm(...), whose determinant keeps the sign of det X, so iterates
never cross from one component to the other: a solver started at det X > 0
cannot reach a target with det X < 0. ``random_point(component=...)`` picks
the component.

Depth 1 is GL(d) with the Euclidean metric (K = 1). The formulas of the metric,
its derivative and its Christoffel map live in :mod:`._metric`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._backend import (
    check_compatible,
    check_finite,
    check_real_float,
    content_key,
    copy,
    device_of,
    eps,
    expm,
    matrix_transpose,
    namespace,
    same_content,
    to_float,
)
from . import _metric
from ._svd import SVD, svd
from .balanced import BalancedManifold
from .base import DLNManifold
from .dln import balanced_from, end_to_end, end_to_end_adjoint

Array = Any

__all__ = ["ObservableQuotient"]


def _copy(x: Array) -> Array:
    return copy(x)


class ObservableQuotient(DLNManifold):
    """(GL(d), g_N): the balanced deep linear network modulo O(d)^(N-1).

    Points are invertible d x d matrices X (the end-to-end map, a NumPy array or torch
    tensor); tangent vectors are arbitrary d x d matrices. ``dim`` is d^2. GL(d) has two
    connected components (sign of det X); the retractions never leave the component of
    their base point.

    Parameters
    ----------
    width, depth:
        d and N (N >= 1; N = 1 is GL(d) with the Euclidean metric).
    backend, device, dtype:
        Where :meth:`random_point` and friends allocate; all other methods work on
        whatever arrays they are given, keeping their device and dtype.
    validate:
        Methods that depend on the point check that it is finite and invertible (s_min >
        100 d eps s_max, from the SVD the metric needs anyway) and that vectors are finite
        (``ValueError``); shapes and dtypes are always checked.

    Notes
    -----
    ``retraction`` is the second-order retraction X' = phi(W + lift_W(Z)) through the
    balanced lift W of X (:meth:`retraction_second_order`); ``retraction_first_order`` is
    X expm(X^{-1} Z). ``transport`` is the identity (every tangent space is R^{d x d}).
    ``dist``, ``exp`` and ``log`` have no closed form and raise ``NotImplementedError``.
    """

    _cache: tuple | None = None  # spectral data of the last point (see _spectral)

    def _label(self) -> str:
        return f"DLN observable quotient GL({self.width}) with metric g_{self.depth}"

    def _dimension(self) -> int:
        """d^2."""
        return self.width**2

    @property
    def point_shape(self) -> tuple[int, int]:
        return (self.width, self.width)

    @property
    def typical_dist(self) -> float:
        """sqrt(dim) = d (TrustRegions' default radius scale)."""
        return float(self.width)

    def random_point(self, generator: Any = None, component: int = 1) -> Array:
        """A random X = U diag(s) V^T with Haar U, V and log s ~ N(0, 0.3^2).

        ``component`` is +1 (det X > 0, the component of the identity) or -1.
        """
        if isinstance(component, bool) or component not in (1, -1):
            raise ValueError(f"component must be +1 or -1 (sign of det X), got {component!r}")
        d = self.width
        G = self.spec.randn((3, d, d), self.spec.generator(generator))
        xp = namespace(G)
        U, _ = xp.linalg.qr(G[0])
        V, _ = xp.linalg.qr(G[1])
        s = xp.exp(0.3 * G[2][0])
        X = (U * s[None, :]) @ matrix_transpose(V)
        if to_float(xp.linalg.det(X)) * component < 0:
            X = xp.concat([-X[:1, :], X[1:, :]], axis=0)
        return X

    # ------------------------------------------------------------------
    # Spectral data of the last point (one SVD per point, not per call)

    def _spectral(self, point: Array) -> _metric.Spectral:
        """SVD, K and divided differences of ``point``, cached for the last point.

        Pymanopt evaluates many inner products and Hessian-vector products at the same
        point, and an optimizer step converts the gradient and retracts at the point whose
        SVD :meth:`regular` computed when it accepted it; the cache is keyed on the object
        and its contents (torch: version counter, NumPy: a stored copy), so in-place changes
        are seen. With value checks, a point is checked once (:meth:`_check_spectrum`),
        also when its data was cached without checks.
        """
        cache = self._cache
        if cache is None or cache[0] is not point or not same_content(point, cache[1]):
            self._check_shape(point, "point", batched=True)
            sp = _metric.Spectral(self._checked_svd(point), self.depth)
            self._cache = (point, content_key(point), sp, self.checks_values)
            return sp
        if self.checks_values and not cache[3]:
            self._check_spectrum(point, cache[2].s)
            self._cache = cache[:3] + (True,)
        return cache[2]

    def _checked_svd(self, point: Array) -> SVD:
        """svd(point); with value checks, ``ValueError`` for a non-finite point or one that is
        not full rank (:meth:`_check_spectrum`)."""
        if not self.checks_values:
            return svd(point)
        try:
            f = svd(point)
        except (ValueError, RuntimeError):  # LAPACK's LinAlgError (NumPy and torch) on NaN
            check_finite(point, "point")
            raise
        self._check_spectrum(point, f.s)
        return f

    def _check_spectrum(self, point: Array, s: Array) -> None:
        """``ValueError`` unless s_min > 100 d eps s_max (false for NaN s: then the message
        names the non-finite point). One host read; finiteness is read only on failure."""
        try:
            self._check_rank(s, "point")
        except ValueError:
            check_finite(point, "point")
            raise

    def regular(self, points: Array) -> Array:
        """Boolean mask over leading axes: finite points with s_min > 100 d eps s_max.

        From the full SVD, which becomes the cached spectral data of ``points`` (NaN
        singular values for the non-finite entries), so the next gradient at an accepted
        step's point costs no second SVD.
        """
        self._check_shape(points, "points", batched=True)
        xp = namespace(points)
        finite = xp.all(xp.isfinite(points), axis=(-2, -1))
        eye = xp.eye(self.width, dtype=points.dtype, device=device_of(points))
        f = svd(xp.where(finite[..., None, None], points, eye))
        s = xp.where(finite[..., None], f.s, xp.full_like(f.s, math.nan))
        sp = _metric.Spectral(SVD(f.U, s, f.V), self.depth)
        self._cache = (points, content_key(points), sp, False)
        return finite & (s[..., -1] > 100 * self.width * eps(points) * s[..., 0])

    def _checked(
        self, point: Array, *vectors: tuple[str, Array], broadcast: bool = False
    ) -> _metric.Spectral:
        """Shapes of (name, vector) pairs, finite values (``validate``), the point's spectral
        data (finite, invertible). ``broadcast``: vectors (..., d, d) broadcast with the point."""
        for name, v in vectors:
            if broadcast:
                self._check_broadcast(point, v, name)
            else:
                self._check_pair(point, v, name)
        sp = self._spectral(point)
        if vectors:
            self._check_values(point, *vectors)
        return sp

    def _constraint_residual(self, point: Array) -> Array:
        """0: GL(d) has no equations, and :meth:`_checked` has read the point's finiteness and
        rank off its SVD (:meth:`_spectral`) before the vectors' values are probed."""
        return namespace(point).zeros((), dtype=point.dtype, device=device_of(point))

    def _check_broadcast(self, point: Array, v: Array, name: str) -> None:
        """``v`` (..., d, d) like ``point``, its batch shape broadcasting with the point's."""
        self._check_shape(point, "point", batched=True)
        self._check_shape(v, name, batched=True)
        check_compatible(point, v, names=("point", name))
        try:
            np.broadcast_shapes(tuple(point.shape[:-2]), tuple(v.shape[:-2]))
        except ValueError:
            raise ValueError(
                f"{name} has shape {tuple(v.shape)}, which does not broadcast with the point "
                f"{tuple(point.shape)}"
            ) from None

    # ------------------------------------------------------------------
    # Metric

    def inner_product_array(self, point: Array, tangent_vector_a: Array, tangent_vector_b: Array):
        """g_N(X)(Z1, Z2) = sum_ij (U^T Z1 V)_ij (U^T Z2 V)_ij / K_ij (one SVD)."""
        self._check_pair(point, tangent_vector_a, "tangent_vector_a")
        self._check_pair(point, tangent_vector_b, "tangent_vector_b")
        return _metric.metric_inner(
            self._spectral(point), tangent_vector_a, tangent_vector_b, self.depth
        )

    def metric(self, point: Array, tangent_vector: Array) -> Array:
        """Lower an index: A_{N,X}^{-1}(Z), so g_N(X)(Y, Z) = <Y, metric(X, Z)>. Batched."""
        sp = self._checked(point, ("tangent_vector", tangent_vector), broadcast=True)
        return _metric.apply_A_inv(sp, tangent_vector, self.depth)

    def metric_inverse(self, point: Array, covector: Array) -> Array:
        """Raise an index: A_{N,X}(P). Batched over leading axes."""
        sp = self._checked(point, ("covector", covector), broadcast=True)
        return _metric.apply_A(sp, covector, self.depth)

    def christoffel(self, point: Array, tangent_vector_a: Array, tangent_vector_b: Array) -> Array:
        """Gamma_X(Z1, Z2) of g_N in the coordinates X (geodesics: x'' = -Gamma(x', x'))."""
        sp = self._checked(
            point, ("tangent_vector_a", tangent_vector_a), ("tangent_vector_b", tangent_vector_b)
        )
        return _metric.christoffel(sp, tangent_vector_a, tangent_vector_b, self.depth)

    def projection(self, point: Array, vector: Array) -> Array:
        """Identity (a copy): the tangent space at X is all of R^{d x d}."""
        self._checked(point, ("vector", vector))
        return _copy(vector)

    def euclidean_to_riemannian_gradient(self, point: Array, euclidean_gradient: Array) -> Array:
        """grad E(X) = A_{N,X}(nabla E(X)) = U (K o (U^T G V)) V^T."""
        sp = self._checked(point, ("euclidean_gradient", euclidean_gradient))
        return _metric.apply_A(sp, euclidean_gradient, self.depth)

    def euclidean_to_riemannian_hessian(
        self,
        point: Array,
        euclidean_gradient: Array,
        euclidean_hessian: Array,
        tangent_vector: Array,
    ) -> Array:
        """Hess f(X)[Z] = A(H[Z]) + DA_X[Z](G) + Gamma_X(Z, A G) (Levi-Civita of g_N)."""
        sp = self._checked(
            point,
            ("euclidean_gradient", euclidean_gradient),
            ("euclidean_hessian", euclidean_hessian),
            ("tangent_vector", tangent_vector),
        )
        return _metric.riemannian_hessian(
            sp, euclidean_gradient, euclidean_hessian, tangent_vector, self.depth
        )

    # ------------------------------------------------------------------
    # Retractions and transport

    def retraction_first_order(self, point: Array, tangent_vector: Array) -> Array:
        """X expm(X^{-1} Z): first order for g_N; stays in the component of X.

        ``ValueError`` for a singular or non-finite X and when the step overflows.
        """
        self._checked(point, ("tangent_vector", tangent_vector))
        xp = namespace(point, tangent_vector)
        out = point @ expm(xp.linalg.solve(point, tangent_vector))
        if not bool(to_float(xp.all(xp.isfinite(out)))):
            raise ValueError(
                "retraction_first_order: the step along tangent_vector overflows; take a "
                "shorter step"
            )
        return out

    def retraction_second_order(self, point: Array, tangent_vector: Array) -> Array:
        """X' = phi(W + lift_W(Z)), W the balanced lift of X: second order for g_N.

        phi is a Riemannian submersion, so the horizontal geodesic through W with velocity
        lift(Z) projects to the g_N geodesic through X (O'Neill), and the straight line
        W + t lift(Z) differs from that geodesic by a normal vector, which dphi_W kills:
        phi(W + t lift Z) = Exp_X(t Z) + O(t^3). In the SVD basis (frames Q = V, I, .., U)
        X' = U prod_{p=N..1} (L + C o M_p) V^T = U F (S F)^(N-1) V^T with C = (U^T Z V) / K
        and F = S^((2-N)/N) + C (:meth:`_retract`). det X' / det X has the sign of
        det(F)^N: at even depth no step changes the component; at odd depth a step that
        would reflects the smallest singular direction instead, so X' never leaves the
        component of X. A polynomial: defined for every Z.

        ``ValueError`` for a bad point or vector (with ``validate``) and when the step
        overflows (take a shorter step); NaN there in :meth:`unchecked` mode (the step
        rule's).
        """
        return super().retraction_second_order(point, tangent_vector)

    def _check_step_start(self, point: Array, tangent_vector: Array) -> None:
        self._checked(point, ("tangent_vector", tangent_vector))

    def _retract(self, point: Array, tangent_vector: Array) -> Array:
        """U P V^T with P = F (S F)^(N-1), F = S^((2-N)/N) + C, C = (U^T Z V) / K.

        The factors of the balanced product are L + C o M_p = S^((N-p)/N) F S^((p-1)/N)
        (L = S^(1/N), (M_p)_ij = s_i^((N-p)/N) s_j^((p-1)/N)), so the product telescopes.
        With Q_m = F (S F)^(m-1), Q_(a+b) = Q_a S Q_b: P = Q_N by repeated doubling
        (log2 N + popcount(N) - 1 matrix products). det P = det(F)^N det(S)^(N-1), so only
        an odd depth can change the sign of det X (one host read, then).
        """
        sp = self._spectral(point)
        xp = namespace(point, tangent_vector)
        f, N = sp.f, self.depth
        eye = xp.eye(self.width, dtype=point.dtype, device=device_of(point))
        F = _metric.to_hat(f, tangent_vector) / sp.K + (f.s ** ((2.0 - N) / N))[..., None, :] * eye
        P = _power_chain(F, f.s, N)
        finite = xp.all(xp.isfinite(P), axis=(-2, -1))  # overflow: NaN, the caller rescues
        if N % 2:
            P = xp.where(finite[..., None, None], P, f.s[..., None, :] * eye)
            P = _keep_det_sign(P, xp.linalg.slogdet(xp.where(finite[..., None, None], F, eye))[0])
        out = _metric.from_hat(f, P)
        return xp.where(finite[..., None, None], out, xp.full_like(out, math.nan))

    def transport(self, point_a: Array, point_b: Array, tangent_vector_a: Array) -> Array:
        """Projection-based transport: the identity (tangent spaces are all R^{d x d})."""
        self._check_pair(point_b, point_a, "point_a", "point_b")
        if self.checks_values:
            self._spectral(point_a)  # finite and invertible
        self._checked(point_b, ("tangent_vector_a", tangent_vector_a))
        return _copy(tangent_vector_a)

    def dist(self, point_a: Array, point_b: Array) -> float:
        raise NotImplementedError(
            "ObservableQuotient.dist: the geodesic distance of g_N has no closed form"
        )

    def exp(self, point: Array, tangent_vector: Array) -> Array:
        raise NotImplementedError(
            "ObservableQuotient.exp: geodesics of g_N have no closed form; use retraction "
            "(second order) or integrate x'' = -christoffel(x, x', x')"
        )

    def log(self, point_a: Array, point_b: Array) -> Array:
        raise NotImplementedError("ObservableQuotient.log: no closed form for g_N")

    # ------------------------------------------------------------------
    # The bundle: X is its own observable

    def end_to_end(self, point: Array) -> Array:
        """X itself (shape checks only, safe in autodiff)."""
        self._check_shape(point, "point", batched=True)
        return point

    def end_to_end_differential(self, point: Array, tangent_vector: Array) -> Array:
        """Z itself."""
        self._check_pair(point, tangent_vector)
        return tangent_vector

    def end_to_end_adjoint(self, point: Array, covector: Array) -> Array:
        """G itself."""
        self._check_pair(point, covector, "covector")
        return covector

    def end_to_end_adjoint_derivative(self, point: Array, vector: Array, covector: Array):
        """Zero: the adjoint does not depend on X."""
        self._check_pair(point, vector, "vector")
        self._check_pair(point, covector, "covector")
        return 0.0 * covector

    def to_balanced(self, point: Array, frames: Array | None = None) -> Array:
        """A balanced stack W (shape (..., depth, d, d)) with end_to_end(W) = X.

        W[p-1] = Q_p diag(s^(1/N)) Q_{p-1}^T with Q_0 = V, Q_N = U and the free frames
        Q_1..Q_{N-1} (shape (..., depth-1, d, d), default the identity).
        """
        sp = self._spectral(point)
        if frames is not None:
            d, N = self.width, self.depth
            check_real_float(frames, "frames")
            check_compatible(point, frames, names=("point", "frames"))
            if len(frames.shape) < 3 or tuple(frames.shape[-3:]) != (N - 1, d, d):
                raise ValueError(
                    f"frames has shape {tuple(frames.shape)}, expected (..., {N - 1}, {d}, {d})"
                )
            self.total_space._check_orthogonal(frames, "frames")
        return balanced_from(sp.f, frames, self.depth)

    def from_balanced(self, W: Array) -> Array:
        """phi(W) = W[N-1] @ ... @ W[0] (the point a balanced stack W represents; any stack
        of shape (..., N, d, d) is accepted, as phi is defined for all of them)."""
        self.total_space._check_shape(W, "W", batched=True)
        return end_to_end(W)

    def pull_back(self, W: Array, covector: Array) -> Array:
        """dphi_W^*(G): the gradient in W of f(phi(W))."""
        total = self.total_space
        total._check_covector(W, covector)
        return end_to_end_adjoint(W, covector)

    @property
    def total_space(self) -> Any:
        """BalancedManifold(width, depth) with this manifold's array spec and ``validate``."""
        sp = self.spec
        return BalancedManifold(
            self.width,
            self.depth,
            backend=sp.backend,
            device=sp.device,
            dtype=sp.dtype,
            validate=self.validate,
        )

    def reproject(self, point: Array) -> Array:
        """X itself (a copy): GL(d) is open, there is nothing to drift from (``validate``:
        X must be finite and invertible)."""
        self._spectral(point)
        return _copy(point)


def _power_chain(F: Array, s: Array, n: int) -> Array:
    """Q_n = F (S F)^(n-1) (S = diag(s)) by Q_(2m) = Q_m S Q_m and Q_(m+1) = Q_m S F."""
    if n == 1:
        return F
    half = _power_chain(F, s, n // 2)
    Q = (half * s[..., None, :]) @ half
    return (Q * s[..., None, :]) @ F if n % 2 else Q


def _keep_det_sign(P: Array, sign: Array) -> Array:
    """P with its smallest singular direction reflected where ``sign`` < 0 (sign of det P):
    a step that crossed det = 0 stays in the component of its base point. Reads one
    boolean on the host; the SVD of P only when some sign is negative."""
    xp = namespace(P)
    if to_float(xp.min(sign)) >= 0:
        return P
    g = svd(P)
    u, v = g.U[..., :, -1:], g.V[..., :, -1:]
    refl = P - 2.0 * g.s[..., -1:, None] * (u @ matrix_transpose(v))
    return xp.where((sign < 0)[..., None, None], refl, P)
