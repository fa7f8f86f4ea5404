"""The unit sphere S^{n-1} in R^n, written once for NumPy and torch.

The reference manifold of the foundation: Pymanopt's own ``Sphere`` calls NumPy
on its points, so it cannot carry torch tensors on a GPU; this one can. It is a
Riemannian submanifold of R^n with

    P_x(v) = v - <x, v> x,    R_x(v) = (x + v) / |x + v|  (second order),
    Hess f(x)[u] = P_x(ehess[u]) - <x, egrad> u,
    exp_x(v) = cos|v| x + sin|v| v / |v|.
"""

from __future__ import annotations

import math
from typing import Any

from pymanopt.manifolds.manifold import RiemannianSubmanifold

from .._backend import ArraySpec, check_finite, namespace, to_float
from .base import ThermanoptManifold

Array = Any

__all__ = ["Sphere"]


def _dot(u: Array, v: Array) -> Array:
    """sum_i u_i v_i over the last axis, by array methods that NumPy and torch share (the
    hot path of the solvers' inner loops: no array-API wrapper call per product)."""
    return (u * v).sum(-1)


class Sphere(ThermanoptManifold, RiemannianSubmanifold):
    """Unit sphere {x in R^n : |x| = 1} on NumPy arrays or torch tensors.

    Args:
        n: ambient dimension (the manifold has dimension n - 1).
        backend: ``"numpy"`` or ``"torch"``; where :meth:`random_point` allocates.
        device, dtype: device and dtype of new points (float64 by default).
    """

    def __init__(
        self, n: int, *, backend: str = "numpy", device: Any = None, dtype: Any = None
    ) -> None:
        if int(n) < 2:
            raise ValueError(f"the sphere needs n >= 2, got {n}")
        self._n = int(n)
        self.spec = ArraySpec(backend, device, dtype)
        super().__init__(f"Sphere S^{self._n - 1} ({backend})", self._n - 1)

    @property
    def typical_dist(self) -> float:
        return math.pi

    def check_point(self, x: Array) -> None:
        """Raise ``ValueError`` unless ``x`` is a finite unit vector of length n."""
        if tuple(x.shape) != (self._n,):
            raise ValueError(f"point has shape {tuple(x.shape)}, expected ({self._n},)")
        check_finite(x, "point")
        xp = namespace(x)
        err = abs(to_float(xp.linalg.vector_norm(x)) - 1.0)
        if err > 1e3 * float(xp.finfo(x.dtype).eps):
            raise ValueError(f"point is not on the sphere: | |x| - 1 | = {err:.3g}")

    def is_on_manifold(self, x: Array, atol: float | None = None) -> bool:
        """True when :meth:`check_point` accepts ``x`` (``atol`` is accepted for API parity)."""
        try:
            self.check_point(x)
        except ValueError:
            return False
        return True

    @property
    def point_shape(self) -> tuple[int]:
        return (self._n,)

    def inner_product_array(self, point: Array, u: Array, v: Array) -> Array:
        """<u, v> = sum_i u_i v_i (0-d array per batch entry)."""
        namespace(u, v)
        return _dot(u, v)

    def inner_product(self, point: Array, u: Array, v: Array) -> float:
        return to_float(self.inner_product_array(point, u, v))

    def reproject(self, point: Array) -> Array:
        """x / |x|, the nearest point of the sphere."""
        return point / _dot(point, point)[..., None] ** 0.5

    def norm(self, point: Array, u: Array) -> float:
        return math.sqrt(max(self.inner_product(point, u, u), 0.0))

    def dist(self, a: Array, b: Array) -> float:
        xp = namespace(a, b)
        c = to_float(xp.sum(a * b))
        return math.acos(min(1.0, max(-1.0, c)))

    def projection(self, point: Array, vector: Array) -> Array:
        namespace(point, vector)
        return vector - _dot(point, vector)[..., None] * point

    to_tangent_space = projection

    def euclidean_to_riemannian_gradient(self, point: Array, euclidean_gradient: Array) -> Array:
        return self.projection(point, euclidean_gradient)

    def euclidean_to_riemannian_hessian(
        self,
        point: Array,
        euclidean_gradient: Array,
        euclidean_hessian: Array,
        tangent_vector: Array,
    ) -> Array:
        namespace(point, euclidean_gradient, tangent_vector)
        return (
            self.projection(point, euclidean_hessian)
            - _dot(point, euclidean_gradient)[..., None] * tangent_vector
        )

    def retraction(self, point: Array, tangent_vector: Array) -> Array:
        """(x + v) / |x + v|: the metric projection, a second-order retraction."""
        namespace(point, tangent_vector)
        return self.reproject(point + tangent_vector)

    def exp(self, point: Array, tangent_vector: Array) -> Array:
        xp = namespace(point, tangent_vector)
        t = xp.linalg.vector_norm(tangent_vector)
        safe = xp.where(t > 0, t, xp.ones_like(t))
        sinc = xp.where(t > 0, xp.sin(safe) / safe, xp.ones_like(t))
        return xp.cos(t) * point + sinc * tangent_vector

    def log(self, a: Array, b: Array) -> Array:
        v = self.projection(a, b - a)
        nv = self.norm(a, v)
        if nv == 0.0:
            return v
        return v * (self.dist(a, b) / nv)

    def transport(self, point_a: Array, point_b: Array, tangent_vector_a: Array) -> Array:
        return self.projection(point_b, tangent_vector_a)

    def random_point(self, generator: Any = None) -> Array:
        xp_x = self.spec.randn((self._n,), generator)
        xp = namespace(xp_x)
        return xp_x / xp.linalg.vector_norm(xp_x)

    def random_tangent_vector(self, point: Array, generator: Any = None) -> Array:
        v = self.projection(point, self.spec.randn((self._n,), generator))
        return v / self.norm(point, v)

    def zero_vector(self, point: Array) -> Array:
        xp = namespace(point)
        return xp.zeros_like(point)

    def pair_mean(self, a: Array, b: Array) -> Array:
        return self.retraction(a, self.log(a, b) / 2)
