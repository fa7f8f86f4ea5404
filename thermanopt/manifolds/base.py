"""What the two manifolds of the deep linear network share: the fibre bundle over observables.

The balanced manifold M (stacks W, shape (N, d, d)) and the observable quotient
(GL(d), g_N) (matrices X) are the total space and the base of one Riemannian submersion
phi: M -> GL(d), phi(W) = W[N-1] ... W[0] (Menon & Yu, arXiv 2509.09088). Following
Geomstats' ``FiberBundle``, every DLN manifold exposes the maps between its points and the
balanced stacks:

- ``end_to_end(x)``: the observable X of a point (phi(W), or X itself);
- ``end_to_end_differential(x, v)`` and ``end_to_end_adjoint(x, G)``: dphi and its adjoint
  (the gradient of f(X) pulled back to the point), ``end_to_end_adjoint_derivative`` for
  second-order chain rules;
- ``to_balanced(x)`` / ``from_balanced(W)``: a balanced stack over the point and back;
- ``reproject(x)``: the map that brings a drifted point back onto the manifold;
- ``retraction`` is second order on both manifolds and never leaves the component of its
  base point (two components of GL(d), 2^N of M), so optimizers and samplers call it
  without asking which manifold they have.

Everything else (metric, projection, Hessian) is the subclasses' own geometry.
"""

from __future__ import annotations

import math
from typing import Any

from pymanopt.manifolds.manifold import Manifold

from .._backend import (
    ArraySpec,
    check_compatible,
    check_finite,
    device_of,
    eps,
    namespace,
    random_normal,
    spec_of,
    to_float,
)
from ._svd import svd
from .dln import check_width_depth

Array = Any

__all__ = ["ThermanoptManifold", "DLNManifold"]


class ThermanoptManifold(Manifold):
    """Base of thermanopt's manifolds: what optimizers, samplers and adapters call.

    Beyond Pymanopt's interface every thermanopt manifold has ``point_shape``,
    ``inner_product_array`` (the metric as an array on the input's device, no host
    transfer), ``reproject`` (a drifted point back onto the manifold), ``regular`` (a
    batched mask of usable points) and a ``retraction`` that is second order.
    """

    @property
    def point_shape(self) -> tuple[int, ...]:
        """Shape of one point."""
        raise NotImplementedError

    def inner_product_array(self, point: Array, tangent_vector_a: Array, tangent_vector_b: Array):
        """<u, v>_x as a 0-d array (one per leading batch entry) on the input's device."""
        raise NotImplementedError

    def reproject(self, point: Array) -> Array:
        """A point of the manifold close to a drifted ``point`` (exactly it when on M)."""
        raise NotImplementedError

    def regular(self, points: Array) -> Array:
        """Boolean mask over leading batch axes: points with finite entries."""
        xp = namespace(points)
        axes = tuple(range(-len(self.point_shape), 0))
        return xp.all(xp.isfinite(points), axis=axes)


class DLNManifold(ThermanoptManifold):
    """Base of :class:`BalancedManifold` and :class:`ObservableQuotient` (see module doc).

    Args:
        width, depth: d and N (integers >= 1).
        backend, device, dtype: where :meth:`random_point` and friends allocate
            (NumPy float64 by default); every other method keeps the array type, device
            and dtype of its arguments.
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
        self.width, self.depth = check_width_depth(width, depth)
        self.spec = ArraySpec(backend, device, dtype)
        super().__init__(self._label(), int(self._dimension()))

    def _label(self) -> str:
        """The manifold's name (Pymanopt's ``str(manifold)``)."""
        raise NotImplementedError

    def _dimension(self) -> int:
        """dim M from ``width`` and ``depth``."""
        raise NotImplementedError

    # -------------------------------------------------------------- shapes
    @property
    def typical_dist(self) -> float:
        return math.sqrt(self.dim)

    def _check_shape(self, x: Array, name: str, batched: bool = False) -> None:
        shape = tuple(getattr(x, "shape", ()))
        want = self.point_shape
        ok = shape[len(shape) - len(want) :] == want if batched else shape == want
        if not hasattr(x, "shape") or not ok or (batched and len(shape) < len(want)):
            expected = f"(..., {', '.join(map(str, want))})" if batched else str(want)
            raise ValueError(f"{name} has shape {shape}, expected {expected}")

    def _check_pair(self, point: Array, vector: Array, name: str = "tangent vector") -> None:
        """``ValueError`` unless ``vector`` is an array like ``point`` of the same shape."""
        self._check_shape(point, "point", batched=True)
        check_compatible(point, vector, names=("point", name))
        if tuple(vector.shape) != tuple(point.shape):
            raise ValueError(
                f"{name} has shape {tuple(vector.shape)}, the point {tuple(point.shape)}"
            )

    # -------------------------------------------------------------- points
    def check_point(self, point: Array, rtol: float | None = None) -> None:
        """Raise ``ValueError`` saying why ``point`` is not a point of this manifold.

        Checks the shape, a real floating dtype, NaN/inf, the manifold's own constraint
        (balance) and the rank of the end-to-end matrix (s_min > 100 d eps s_max).
        """
        self._check_shape(point, "point")
        xp = namespace(point)
        if not xp.isdtype(point.dtype, "real floating"):
            raise ValueError(f"point must have a real floating dtype, got {point.dtype}")
        check_finite(point, "point")
        self._check_constraint(point, rtol)
        s = svd(self.end_to_end(point)).s
        smax, smin = to_float(s[0]), to_float(s[-1])
        if not (smax > 0 and smin > 100 * self.width * eps(point) * smax):
            raise ValueError(
                f"end-to-end matrix is rank deficient: smallest singular value {smin:.3g}, "
                f"largest {smax:.3g}"
            )

    def _check_constraint(self, point: Array, rtol: float | None) -> None:
        """Raise ``ValueError`` when ``point`` violates the manifold's equations."""

    def is_on_manifold(self, point: Array, atol: float | None = None) -> bool:
        """True when :meth:`check_point` accepts ``point`` (``atol``: constraint tolerance)."""
        try:
            self.check_point(point, atol)
        except ValueError:
            return False
        return True

    def regular(self, points: Array) -> Array:
        """Boolean mask over leading axes: finite points with a full-rank observable.

        Full rank means s_min > 100 d eps s_max; this is the test of the step rule's rescue.
        """
        xp = namespace(points)
        X = self.end_to_end(points)
        finite = xp.all(xp.isfinite(X), axis=(-2, -1))
        X = xp.where(
            finite[..., None, None],
            X,
            xp.zeros_like(X) + xp.eye(self.width, dtype=X.dtype, device=device_of(X)),
        )
        s = xp.linalg.svdvals(X)
        return finite & (s[..., -1] > 100 * self.width * eps(X) * s[..., 0])

    def zero_vector(self, point: Array) -> Array:
        return namespace(point).zeros_like(point)

    def random_tangent_vector(self, point: Array, generator: Any = None) -> Array:
        """A projected Gaussian (made like ``point``), scaled to unit norm."""
        E = random_normal(tuple(point.shape), spec_of(point), generator)
        v = self.projection(point, E)
        return v / self.norm(point, v)

    # -------------------------------------------------------------- metric
    def inner_product(
        self, point: Array, tangent_vector_a: Array, tangent_vector_b: Array
    ) -> float:
        self._check_pair(point, tangent_vector_a)
        self._check_pair(point, tangent_vector_b)
        return to_float(self.inner_product_array(point, tangent_vector_a, tangent_vector_b))

    def norm(self, point: Array, tangent_vector: Array) -> float:
        return math.sqrt(max(self.inner_product(point, tangent_vector, tangent_vector), 0.0))

    def to_tangent_space(self, point: Array, vector: Array) -> Array:
        return self.projection(point, vector)

    def retraction(self, point: Array, tangent_vector: Array) -> Array:
        """The second-order retraction (:meth:`retraction_second_order`)."""
        return self.retraction_second_order(point, tangent_vector)

    def retraction_second_order(self, point: Array, tangent_vector: Array) -> Array:
        """A retraction that agrees with the geodesic to second order, global, component-safe."""
        raise NotImplementedError

    # -------------------------------------------------------------- the bundle
    def end_to_end(self, point: Array) -> Array:
        """The observable X of a point (batched)."""
        raise NotImplementedError

    def end_to_end_differential(self, point: Array, tangent_vector: Array) -> Array:
        """dX along a tangent vector."""
        raise NotImplementedError

    def end_to_end_adjoint(self, point: Array, covector: Array) -> Array:
        """The adjoint of dX: the Euclidean gradient of f(X(point)) for covector = nabla f."""
        raise NotImplementedError

    def end_to_end_adjoint_derivative(self, point: Array, vector: Array, covector: Array):
        """Derivative of :meth:`end_to_end_adjoint` along ``vector`` at fixed covector."""
        raise NotImplementedError

    def to_balanced(self, point: Array) -> Array:
        """A balanced stack (..., N, d, d) over the point."""
        raise NotImplementedError

    def from_balanced(self, W: Array) -> Array:
        """The point of this manifold that a balanced stack W represents."""
        raise NotImplementedError

    def pull_back(self, W: Array, covector: Array) -> Array:
        """The gradient in W of f(from_balanced(W)), for covector = nabla f there."""
        raise NotImplementedError

    @property
    def total_space(self) -> DLNManifold:
        """The balanced manifold of the same width and depth (the bundle's total space)."""
        raise NotImplementedError
