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

from pymanopt.manifolds.manifold import Manifold

from .._backend import (
    ArraySpec,
    check_compatible,
    eps,
    expm,
    is_torch,
    matrix_transpose,
    namespace,
    random_normal,
    spec_of,
    to_float,
)
from . import _metric
from ._svd import svd

Array = Any

__all__ = ["ObservableQuotient"]


def _copy(x: Array) -> Array:
    return x.clone() if is_torch(x) else x.copy()


class ObservableQuotient(Manifold):
    """(GL(d), g_N): the balanced deep linear network modulo O(d)^(N-1).

    Points are invertible d x d matrices X (the end-to-end map, a NumPy array
    or torch tensor); tangent vectors are arbitrary d x d matrices. ``dim`` is
    d^2. GL(d) has two connected components (sign of det X); the retractions
    never leave the component of their base point.

    Parameters
    ----------
    width, depth:
        d and N (N >= 1; N = 1 is GL(d) with the Euclidean metric).
    backend, device, dtype:
        Where :meth:`random_point` and friends allocate; all other methods work
        on whatever arrays they are given, keeping their device and dtype.

    Notes
    -----
    ``retraction`` is the second-order retraction
    X expm(X^{-1}(Z - (1/2)(Z X^{-1} Z + Gamma_X(Z, Z)))) (the default, so that
    Hessian checks away from critical points and Langevin sampling are
    accurate); ``retraction_first_order`` is X expm(X^{-1} Z). ``transport`` is
    the identity (projection-based transport: every tangent space is
    R^{d x d}, so the projection is the identity). ``dist``, ``exp`` and
    ``log`` have no closed form and raise ``NotImplementedError``.
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
        width, depth = _metric.check_width_depth(width, depth)
        self.width = int(width)
        self.depth = int(depth)
        self.spec = ArraySpec(backend, device, dtype)
        self._cache: tuple | None = None
        name = f"DLN observable quotient GL({self.width}) with metric g_{self.depth}"
        super().__init__(name, int(self.width**2))

    # ------------------------------------------------------------------
    # Points

    def check_point(self, point: Array) -> None:
        """Raise ``ValueError`` unless ``point`` is a finite, invertible d x d matrix.

        Invertible means smallest singular value > d * eps(dtype) * largest.
        """
        d = self.width
        shape = tuple(point.shape) if hasattr(point, "shape") else None
        if shape != (d, d):
            raise ValueError(f"point must have shape ({d}, {d}), got {shape}")
        xp = namespace(point)
        if not xp.isdtype(point.dtype, "real floating"):
            raise ValueError(f"point must have a real floating dtype, got {point.dtype}")
        if not bool(xp.all(xp.isfinite(point))):
            raise ValueError("point contains NaN or infinite entries")
        s = svd(point).s
        smax = to_float(s[0])
        smin = to_float(s[-1])
        tol = d * eps(point) * smax
        if not smax > 0 or not smin > tol:
            raise ValueError(
                f"point is singular (rank-deficient): smallest singular value {smin:.3g}, "
                f"largest {smax:.3g}; the observable quotient is GL({d})"
            )

    def is_on_manifold(self, point: Array, atol: float | None = None) -> bool:
        """True if :meth:`check_point` accepts ``point`` (``atol`` is unused: GL(d) is open)."""
        try:
            self.check_point(point)
        except ValueError:
            return False
        return True

    def random_point(self, generator: Any = None, component: int = 1) -> Array:
        """A random X = U diag(s) V^T with Haar U, V and log s ~ N(0, 0.3^2).

        ``component`` is +1 (det X > 0, the component of the identity) or -1.
        """
        if component not in (1, -1):
            raise ValueError(f"component must be +1 or -1 (sign of det X), got {component!r}")
        d = self.width
        gen = self.spec.generator(generator)
        G = random_normal((3, d, d), self.spec, gen)
        xp = namespace(G)
        U, _ = xp.linalg.qr(G[0])
        V, _ = xp.linalg.qr(G[1])
        s = xp.exp(0.3 * G[2][0])
        X = (U * s[None, :]) @ matrix_transpose(V)
        if to_float(xp.linalg.det(X)) * component < 0:
            X = xp.concat([-X[:1, :], X[1:, :]], axis=0)
        return X

    def random_tangent_vector(self, point: Array, generator: Any = None) -> Array:
        """A Gaussian direction scaled to unit g_N norm."""
        spec = spec_of(point)
        Z = random_normal(tuple(point.shape), spec, spec.generator(generator))
        return Z / self.norm(point, Z)

    def zero_vector(self, point: Array) -> Array:
        xp = namespace(point)
        return xp.zeros_like(point)

    @property
    def typical_dist(self) -> float:
        """sqrt(dim) = d (TrustRegions' default radius scale)."""
        return float(self.width)

    # ------------------------------------------------------------------
    # Spectral data of the last point (one SVD per point, not per call)

    def _spectral(self, point: Array) -> _metric.Spectral:
        """SVD, K and divided differences of ``point``, cached for the last point.

        Pymanopt evaluates many inner products and Hessian-vector products at the
        same point; the cache is keyed on the object and its contents (torch:
        version counter, NumPy: a stored copy), so in-place changes are seen.
        """
        cache = self._cache
        if cache is not None and cache[0] is point:
            if is_torch(point):
                if cache[1] == (point._version, point.data_ptr()):
                    return cache[2]
            elif point.shape == cache[1].shape and bool((point == cache[1]).all()):
                return cache[2]
        sp = _metric.Spectral(point, self.depth)
        key = (point._version, point.data_ptr()) if is_torch(point) else point.copy()
        self._cache = (point, key, sp)
        return sp

    # ------------------------------------------------------------------
    # Metric

    def inner_product(
        self, point: Array, tangent_vector_a: Array, tangent_vector_b: Array
    ) -> float:
        """g_N(X)(Z1, Z2) = sum_ij (U^T Z1 V)_ij (U^T Z2 V)_ij / K_ij (one SVD)."""
        return to_float(
            _metric.metric_inner(
                self._spectral(point), tangent_vector_a, tangent_vector_b, self.depth
            )
        )

    def norm(self, point: Array, tangent_vector: Array) -> float:
        return math.sqrt(max(self.inner_product(point, tangent_vector, tangent_vector), 0.0))

    def metric(self, point: Array, tangent_vector: Array) -> Array:
        """Lower an index: A_{N,X}^{-1}(Z), so g_N(X)(Y, Z) = <Y, metric(X, Z)>. Batched."""
        return _metric.apply_A_inv(self._spectral(point), tangent_vector, self.depth)

    def metric_inverse(self, point: Array, covector: Array) -> Array:
        """Raise an index: A_{N,X}(P). Batched over leading axes."""
        return _metric.apply_A(self._spectral(point), covector, self.depth)

    def christoffel(self, point: Array, tangent_vector_a: Array, tangent_vector_b: Array) -> Array:
        """Gamma_X(Z1, Z2) of g_N in the coordinates X (geodesics: x'' = -Gamma(x', x'))."""
        return _metric.christoffel(
            self._spectral(point), tangent_vector_a, tangent_vector_b, self.depth
        )

    def projection(self, point: Array, vector: Array) -> Array:
        """Identity (a copy): the tangent space at X is all of R^{d x d}."""
        check_compatible(point, vector, names=("point", "vector"))
        return _copy(vector)

    to_tangent_space = projection

    def euclidean_to_riemannian_gradient(self, point: Array, euclidean_gradient: Array) -> Array:
        """grad E(X) = A_{N,X}(nabla E(X)) = U (K o (U^T G V)) V^T."""
        return _metric.apply_A(self._spectral(point), euclidean_gradient, self.depth)

    def euclidean_to_riemannian_hessian(
        self,
        point: Array,
        euclidean_gradient: Array,
        euclidean_hessian: Array,
        tangent_vector: Array,
    ) -> Array:
        """Hess f(X)[Z] = A(H[Z]) + DA_X[Z](G) + Gamma_X(Z, A G) (Levi-Civita of g_N)."""
        return _metric.riemannian_hessian(
            self._spectral(point), euclidean_gradient, euclidean_hessian, tangent_vector, self.depth
        )

    # ------------------------------------------------------------------
    # Retractions and transport

    def retraction_first_order(self, point: Array, tangent_vector: Array) -> Array:
        """X expm(X^{-1} Z): first order for g_N; stays in the component of X."""
        xp = namespace(point, tangent_vector)
        return point @ expm(xp.linalg.solve(point, tangent_vector))

    def retraction_second_order(self, point: Array, tangent_vector: Array) -> Array:
        """X expm(X^{-1}(Z - (1/2)(Z X^{-1} Z + Gamma_X(Z, Z)))): second order for g_N.

        Its expansion is X + Z - (1/2) Gamma_X(Z, Z) + O(|Z|^3), matching the
        geodesic x'' = -Gamma(x', x'); det keeps its sign (two components).
        """
        xp = namespace(point, tangent_vector)
        Z = tangent_vector
        XiZ = xp.linalg.solve(point, Z)
        gamma = _metric.christoffel(self._spectral(point), Z, Z, self.depth)
        Y = XiZ - 0.5 * (XiZ @ XiZ + xp.linalg.solve(point, gamma))
        return point @ expm(Y)

    def retraction(self, point: Array, tangent_vector: Array) -> Array:
        """The second-order retraction (see :meth:`retraction_second_order`)."""
        return self.retraction_second_order(point, tangent_vector)

    def transport(self, point_a: Array, point_b: Array, tangent_vector_a: Array) -> Array:
        """Projection-based transport: the identity (tangent spaces are all R^{d x d})."""
        check_compatible(point_a, point_b, tangent_vector_a)
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
    # Deep linear network maps

    def lift(self, point: Array, frames: Array | None = None) -> Array:
        """A balanced stack W (shape (depth, d, d)) with end_to_end(W) = X.

        W[p-1] = Q_p diag(s^(1/N)) Q_{p-1}^T with Q_0 = V, Q_N = U and the free
        frames Q_1..Q_{N-1} (shape (depth-1, d, d), default identity).
        """
        return _metric.balanced_from(point, frames, self.depth)

    def project(self, W: Array) -> Array:
        """phi(W) = W[N-1] @ ... @ W[0]."""
        if tuple(W.shape[-3:]) != (self.depth, self.width, self.width):
            raise ValueError(
                f"W must have shape (..., {self.depth}, {self.width}, {self.width}), "
                f"got {tuple(W.shape)}"
            )
        return _metric.end_to_end(W)

    def entropy(self, point: Array) -> Array:
        """Boltzmann entropy S_N(X) of the fibre over X (:func:`thermanopt.entropy.dln_entropy`)."""
        from ..entropy import dln_entropy

        return dln_entropy(point, self.depth)

    def entropy_gradient(self, point: Array, riemannian: bool = True) -> Array:
        """Gradient of S_N at X: g_N gradient A_{N,X}(nabla S) by default, else Euclidean."""
        from ..entropy import dln_entropy_gradient

        G = dln_entropy_gradient(point, self.depth)
        return _metric.apply_A(self._spectral(point), G, self.depth) if riemannian else G
