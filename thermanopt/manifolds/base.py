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

Bad input. Every public method checks, before any work, that its arrays are NumPy arrays
or torch tensors of dtype float32/float64, of the manifold's shapes, alike in array type,
device and dtype (``TypeError`` / ``ValueError`` naming the argument). With
``validate=True`` (the default) the methods whose result depends on the point also check
its values: finite, on the manifold (balanced, to ``rtol`` 1e-7 relative to |W|^2 in
float64) and with a full-rank end-to-end matrix (s_min > 100 d eps s_max, from the SVD the
method computes anyway), and that the vectors are finite. These value checks read one or
two scalars per call on the host; ``validate=False`` skips them (inner loops on a GPU).

Retraction contract: ``retraction`` (= ``retraction_second_order``) raises ``ValueError``
when the step overflows or lands on the rank-deficient set, saying to take a shorter step.
Inside ``with manifold.unchecked():`` no value checks run and such batch entries come back
NaN instead: the step rule (:class:`~thermanopt.manifolds.step.StepRule`) retracts in that
mode and rescues them by halving, and the optimizers run their inner loops in it after
checking their inputs once (they watch for non-finite values themselves).

Everything else (metric, projection, Hessian) is the subclasses' own geometry.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pymanopt.manifolds.manifold import Manifold

from .._backend import (
    ArraySpec,
    check_compatible,
    check_finite,
    check_real_float,
    device_of,
    eps,
    namespace,
    quiet_overflow,
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

    validate: bool = True
    _unchecked_depth: int = 0

    @contextmanager
    def unchecked(self) -> Iterator[ThermanoptManifold]:
        """Context without value checks: ``retraction`` returns NaN for batch entries whose
        step fails instead of raising, and points and vectors are not checked for NaN,
        balance or rank (shapes and dtypes still are).

        The mode of :class:`~thermanopt.manifolds.step.StepRule` and of the optimizers'
        inner loops, which check their inputs once and watch for non-finite values
        themselves. Not thread-safe: it changes this manifold object for the duration.
        """
        self._unchecked_depth += 1
        try:
            yield self
        finally:
            self._unchecked_depth -= 1

    @property
    def checks_values(self) -> bool:
        """True when methods check values: ``validate`` and outside :meth:`unchecked`."""
        return bool(self.validate) and self._unchecked_depth == 0


class DLNManifold(ThermanoptManifold):
    """Base of :class:`BalancedManifold` and :class:`ObservableQuotient` (see module doc).

    Args:
        width, depth: d and N (integers >= 1).
        backend, device, dtype: where :meth:`random_point` and friends allocate
            (NumPy float64 by default; dtype float32 or float64; ``ValueError`` for a
            device this machine lacks); every other method keeps the array type, device
            and dtype of its arguments.
        validate: check the values of points and vectors (finite, on the manifold, full
            rank; see the module docstring) in every method that depends on them; shapes
            and dtypes are always checked. ``False`` saves one or two host reads per call.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        *,
        backend: str = "numpy",
        device: Any = None,
        dtype: Any = None,
        validate: bool = True,
    ) -> None:
        self.width, self.depth = check_width_depth(width, depth)
        if self.width * self.width * self.depth > 2**31:
            raise ValueError(
                f"width={width!r}, depth={depth!r}: a point would have "
                f"{self.width**2 * self.depth:.3g} entries (more than 2**31)"
            )
        self.spec = ArraySpec(backend, device, dtype)
        if not isinstance(validate, bool):
            raise TypeError(f"validate must be True or False, got {validate!r}")
        self.validate = validate
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
        """``TypeError``/``ValueError`` unless ``x`` is a float32/64 array of a point's shape."""
        shape = tuple(getattr(x, "shape", ()))
        want = self.point_shape
        ok = shape[len(shape) - len(want) :] == want if batched else shape == want
        if not hasattr(x, "shape") or not ok or (batched and len(shape) < len(want)):
            expected = f"(..., {', '.join(map(str, want))})" if batched else str(want)
            raise ValueError(f"{name} has shape {shape}, expected {expected}")
        check_real_float(x, name)

    def _check_pair(
        self, point: Array, vector: Array, name: str = "tangent vector", point_name: str = "point"
    ) -> None:
        """``ValueError`` unless ``vector`` is an array like ``point`` of the same shape."""
        if (
            type(point) is type(vector)
            and point.dtype is vector.dtype
            and point.shape == vector.shape
            and getattr(point, "device", None) == getattr(vector, "device", None)
        ):  # fast path: one check of the point covers both
            self._check_shape(point, point_name, batched=True)
            return
        self._check_shape(point, point_name, batched=True)
        check_real_float(vector, name)
        check_compatible(point, vector, names=(point_name, name))
        if tuple(vector.shape) != tuple(point.shape):
            raise ValueError(
                f"{name} has shape {tuple(vector.shape)}, the {point_name} {tuple(point.shape)}"
            )

    def _check_values(self, point: Array, *vectors: tuple[str, Array]) -> None:
        """With ``validate``: ``ValueError`` for non-finite entries or a violated constraint.

        One host read: the constraint residual (NaN for a non-finite point) plus sum(v * 0)
        over the vectors (NaN iff a vector has a NaN or inf entry). The rank is checked by
        :meth:`_check_rank` on the singular values the method computes anyway.
        """
        if not self.checks_values:
            return
        xp = namespace(point)
        probe = self._constraint_residual(point)
        for _, v in vectors:
            probe = probe + xp.sum(v * 0.0)
        value = to_float(probe)
        if math.isfinite(value) and value <= self._rtol(point):
            return
        check_finite(point, "point")
        for name, v in vectors:
            check_finite(v, name)
        raise ValueError(
            f"point is not on the manifold: {self._constraint_message(value, point)}; "
            "reproject(point) maps a drifted point back"
        )

    def _check_rank(self, s: Array, name: str = "point") -> None:
        """With ``validate``: ``ValueError`` unless s_min > 100 d eps s_max (full rank)."""
        if not self.checks_values:
            return
        xp = namespace(s)
        threshold = 100 * self.width * eps(s)
        if not bool(to_float(xp.all(s[..., -1] > threshold * s[..., 0]))):
            with quiet_overflow():
                ratio = to_float(xp.min(s[..., -1] / s[..., 0]))
            raise ValueError(
                f"{name}: the end-to-end matrix is (numerically) rank deficient "
                f"(s_min / s_max = {ratio:.3g}); the geometry needs full rank"
            )

    def _rtol(self, point: Array) -> float:
        return max(1e-7, 1e3 * eps(point))

    def _constraint_residual(self, point: Array) -> Array:
        """A 0-d array: the relative violation of the manifold's equations (0 by default),
        NaN when ``point`` has a non-finite entry."""
        xp = namespace(point)
        return xp.sum(point * 0.0)

    def _constraint_message(self, value: float, point: Array) -> str:
        return f"constraint residual {value:.3g}"

    # -------------------------------------------------------------- points
    def check_point(self, point: Array, rtol: float | None = None) -> None:
        """Raise ``ValueError`` saying why ``point`` is not a point of this manifold.

        Checks the shape, a float32/float64 dtype (``TypeError`` for a non-array), NaN/inf,
        the manifold's own constraint (balance) and the rank of the end-to-end matrix
        (s_min > 100 d eps s_max). Runs whatever ``validate`` says.
        """
        self._check_shape(point, "point")
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
        self._check_shape(points, "points", batched=True)
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
        self._check_shape(point, "point", batched=True)
        return namespace(point).zeros_like(point)

    def random_tangent_vector(self, point: Array, generator: Any = None) -> Array:
        """A projected Gaussian (made like ``point``, one point), scaled to unit norm."""
        self._check_shape(point, "point")
        E = random_normal(tuple(point.shape), spec_of(point), generator)
        v = self.projection(point, E)
        return v / self.norm(point, v)

    # -------------------------------------------------------------- metric
    def inner_product(
        self, point: Array, tangent_vector_a: Array, tangent_vector_b: Array
    ) -> float:
        self._check_pair(point, tangent_vector_a, "tangent_vector_a")
        self._check_pair(point, tangent_vector_b, "tangent_vector_b")
        value = to_float(self.inner_product_array(point, tangent_vector_a, tangent_vector_b))
        if not math.isfinite(value):
            check_finite(tangent_vector_a, "tangent_vector_a")
            check_finite(tangent_vector_b, "tangent_vector_b")
            raise ValueError(f"inner product overflows ({value}): the vectors are too large")
        return value

    def norm(self, point: Array, tangent_vector: Array) -> float:
        self._check_pair(point, tangent_vector)
        return math.sqrt(max(self.inner_product(point, tangent_vector, tangent_vector), 0.0))

    def to_tangent_space(self, point: Array, vector: Array) -> Array:
        return self.projection(point, vector)

    def retraction(self, point: Array, tangent_vector: Array) -> Array:
        """The second-order retraction (:meth:`retraction_second_order`).

        ``ValueError`` when the step overflows or lands on a rank-deficient point (take a
        shorter step); :meth:`retraction_unchecked` returns NaN there instead.
        """
        return self.retraction_second_order(point, tangent_vector)

    def retraction_second_order(self, point: Array, tangent_vector: Array) -> Array:
        """A retraction that agrees with the geodesic to second order, global, component-safe.

        ``ValueError`` for a bad point or vector, and when the step overflows or lands on a
        rank-deficient point (take a shorter step); in :meth:`unchecked` mode such batch
        entries come back NaN instead.
        """
        self._check_pair(point, tangent_vector, "tangent_vector")
        checked = self.checks_values
        if checked:
            self._check_step_start(point, tangent_vector)
        with quiet_overflow():
            out = self._retract(point, tangent_vector)
        if checked:
            xp = namespace(out)
            if not bool(to_float(xp.all(xp.isfinite(out)))):
                raise ValueError(
                    "retraction: the step along tangent_vector overflows or lands on a "
                    "rank-deficient point; take a shorter step (the optimizers' step rule "
                    "halves such steps)"
                )
        return out

    def _check_step_start(self, point: Array, tangent_vector: Array) -> None:
        """Value checks of a retraction's point and vector (subclasses add the rank)."""
        self._check_values(point, ("tangent_vector", tangent_vector))

    def _retract(self, point: Array, tangent_vector: Array) -> Array:
        """The retraction's kernel: failed batch entries come back NaN (no checks)."""
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
