"""The one step rule: the manifold's retraction with one shared, counted rescue.

A step from x along a tangent vector v (gradient part and, for Langevin dynamics, a noise
part) is x' = R_x(v) with the manifold's ``retraction``. On thermanopt's manifolds that
retraction is second order and never leaves the component of x (both DLN manifolds,
:class:`~thermanopt.manifolds.Sphere`); Langevin steps need second order because the
O(sqrt(h)) noise makes the retraction's curvature error an O(h) drift (the Ito
correction).

The rule calls the manifold's ``retraction`` inside ``manifold.unchecked()`` on thermanopt's
manifolds, so a batch entry whose step overflows or lands on the rank-deficient set comes
back NaN instead of raising (outside that mode ``retraction`` raises ``ValueError`` there).

Rescue: a result that is not ``regular`` (non-finite, or a numerically rank-deficient
end-to-end matrix on a DLN manifold) is retried with v/2, up to ``max_halvings`` times, and
the step is rejected (x kept) if it still fails. Every point of a batch (leading axes, e.g.
Langevin chains) is treated on its own. The optimizers, the sampler, ``ThermalRiemannianSGD``
and the geoopt adapter's ``retr`` all step through this rule.
"""

from __future__ import annotations

import math
from typing import Any

from .._backend import namespace, to_float
from .base import ThermanoptManifold

Array = Any

__all__ = ["StepRule"]


def _retract(manifold: Any, x: Array, v: Array) -> Array:
    if isinstance(manifold, ThermanoptManifold):
        with manifold.unchecked():
            return manifold.retraction(x, v)
    return manifold.retraction(x, v)


def _regular(manifold: Any, points: Array) -> Array:
    if isinstance(manifold, ThermanoptManifold):
        return manifold.regular(points)
    xp = namespace(points)
    return xp.all(xp.isfinite(points))


class StepRule:
    """x' = R_x(v) with the counted rescue rule of the module docstring.

    Attributes:
        steps: points stepped (a batch of B points counts B).
        rescues: points whose first retraction was not regular.
        rejected: points kept where they were after ``max_halvings`` halvings.
    """

    def __init__(self, max_halvings: int = 8) -> None:
        self.max_halvings = int(max_halvings)
        self.steps = 0
        self.rescues = 0
        self.rejected = 0

    @property
    def rescue_rate(self) -> float:
        """rescues / steps (0 before the first step)."""
        return self.rescues / self.steps if self.steps else 0.0

    def __call__(self, manifold: Any, x: Array, v: Array) -> Array:
        xp = namespace(x, v)
        y = _retract(manifold, x, v)
        ok = _regular(manifold, y)
        self.steps += math.prod(tuple(ok.shape))
        bad = int(to_float(xp.sum(xp.astype(~ok, xp.int64))))
        if bad == 0:
            return y
        self.rescues += bad
        expand = (...,) + (None,) * (len(x.shape) - len(ok.shape))
        y = xp.where(ok[expand], y, x)
        scale = 1.0
        for _ in range(self.max_halvings):
            scale *= 0.5
            trial = _retract(manifold, x, scale * v)
            good = _regular(manifold, trial) & ~ok
            y = xp.where(good[expand], trial, y)
            ok = ok | good
            if bool(to_float(xp.all(ok))):
                return y
        self.rejected += int(to_float(xp.sum(xp.astype(~ok, xp.int64))))
        return y
