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
Langevin chains) is treated on its own, by masks (``where`` over the batch). The optimizers,
the sampler, ``ThermalRiemannianSGD`` and the geoopt adapter's ``retr`` all step through this
rule; :meth:`StepRule.step` applies it to any retraction kernel that returns its own regular
mask and extra arrays (the balanced sampler's carries the frames of the new points).

Host reads: the counters stay arrays on the device until read. One boolean per call is read
(does any entry need a halving?): a rule without it would run all ``max_halvings`` retries
on every call, far dearer than the read, and ``torch.linalg.svd`` synchronises a CUDA device
with the host anyway (torch documents it), so a DLN step holds that synchronisation already.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


def _where(ok: Array, a: Array, b: Array) -> Array:
    """a where ``ok`` (over the leading batch axes), else b."""
    xp = namespace(a, b)
    return xp.where(ok[(...,) + (None,) * (len(a.shape) - len(ok.shape))], a, b)


def _count(mask: Array) -> Array:
    xp = namespace(mask)
    return xp.sum(xp.astype(mask, xp.int64))


def _any(mask: Array) -> bool:
    """The rule's one host read: does any batch entry need a halving?"""
    xp = namespace(mask)
    return bool(to_float(xp.any(mask)))


class StepRule:
    """x' = R_x(v) with the counted rescue rule of the module docstring.

    Attributes (read on the host only when asked; kept on the arrays' device meanwhile):
        steps: points stepped (a batch of B points counts B).
        rescues: points whose first retraction was not regular.
        rejected: points kept where they were after ``max_halvings`` halvings.

    Host reads: one per call (whether any entry needs a rescue) and one per halving while
    some entry still fails (module docstring).
    """

    def __init__(self, max_halvings: int = 8) -> None:
        self.max_halvings = int(max_halvings)
        self.steps = 0
        self._rescues: Any = 0
        self._rejected: Any = 0

    @property
    def rescues(self) -> int:
        """Points whose first retraction was not regular."""
        return int(to_float(self._rescues))

    @property
    def rejected(self) -> int:
        """Points kept where they were after ``max_halvings`` halvings."""
        return int(to_float(self._rejected))

    @property
    def rescue_rate(self) -> float:
        """rescues / steps (0 before the first step)."""
        return self.rescues / self.steps if self.steps else 0.0

    def __call__(self, manifold: Any, x: Array, v: Array) -> Array:
        def retract(u: Array) -> tuple[Array, Array]:
            y = _retract(manifold, x, u)
            return _regular(manifold, y), y

        (y,) = self.step(retract, v, (x,))
        return y

    def step(
        self, retract: Callable[[Array], tuple[Array, ...]], v: Array, stay: tuple[Array, ...]
    ) -> tuple[Array, ...]:
        """The rule for any retraction kernel: ``retract(u)`` returns (ok, y, extras...).

        ``ok`` is the batched mask of regular results, ``y`` the stepped points and
        ``extras`` arrays carried with them (e.g. the frames of y), all with the batch axes
        of ``ok`` in front; ``stay`` holds (x, extras of x), kept where every halving fails.
        Returns (y, extras...) with each entry from its first regular try (v, v/2, ...).
        """
        ok, *out = retract(v)
        self.steps += math.prod(tuple(ok.shape))
        bad = ~ok
        self._rescues = self._rescues + _count(bad)
        if not _any(bad):
            return tuple(out)
        out = [_where(ok, a, b) for a, b in zip(out, stay)]
        scale = 1.0
        for _ in range(self.max_halvings):
            scale *= 0.5
            good, *trial = retract(scale * v)
            good = good & ~ok
            out = [_where(good, a, b) for a, b in zip(trial, out)]
            ok = ok | good
            if not _any(~ok):
                return tuple(out)
        self._rejected = self._rejected + _count(~ok)
        return tuple(out)
