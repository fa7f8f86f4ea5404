"""geoopt adapter: train torch parameters on thermanopt's manifolds with geoopt.

``as_geoopt(manifold)`` wraps a thermanopt manifold (``BalancedManifold``,
``ObservableQuotient``, ``Sphere`` or a subclass) in a :class:`geoopt.Manifold`, so that
``geoopt.ManifoldParameter`` and geoopt's optimizers and samplers (``RiemannianSGD``,
``RiemannianAdam``, ``RSGLD``) or :class:`thermanopt.optimizers.ThermalRiemannianSGD`
update it. Every geoopt method calls one method of the manifold:

============================  ==============================================
geoopt                        thermanopt
============================  ==============================================
``proju(x, u)``               ``projection(x, u)``
``egrad2rgrad(x, g)``         ``euclidean_to_riemannian_gradient(x, g)``
``retr(x, u)``, ``expmap``    ``retraction(x, u)`` (second order, stays in the
                              component of x) through the one step rule
                              (:class:`~thermanopt.manifolds.step.StepRule`)
``transp(x, y, v)``           ``transport(x, y, v)``
``inner(x, u, v)``            ``inner_product_array(x, u, v)`` (a tensor on
                              the parameter's device: no host transfer)
``projx(x)``                  ``reproject(x)``
``check_point_on_manifold``   ``check_point``
``reversible``                the metric is the embedded one (Pymanopt's
                              ``RiemannianSubmanifold``)
============================  ==============================================

geoopt's samplers require ``reversible``: RSGLD's step retr(p, egrad2rgrad(p, (eps/2)
nabla log p + sqrt(eps) xi)) is a Langevin step with the tangent projection of ambient
noise, which is Brownian motion only for the embedded metric, and it needs the
second-order retraction. So ``as_geoopt(BalancedManifold(...))`` samples
exp(log p) dvol_M with geoopt's unmodified RSGLD, while the observable quotient (metric g_N)
is not reversible (use :class:`thermanopt.optimizers.RiemannianLangevin`).

A parameter is one point (shape ``manifold.point_shape``) or a batch of points along
leading axes (the manifold's methods are batched).
"""

from __future__ import annotations

from typing import Any

import geoopt
import torch
from pymanopt.manifolds.manifold import RiemannianSubmanifold

from .base import ThermanoptManifold
from .step import StepRule

__all__ = ["GeooptManifold", "as_geoopt"]


class GeooptManifold(geoopt.Manifold):
    """A :class:`geoopt.Manifold` view of a thermanopt manifold (torch tensors).

    Build it with :func:`as_geoopt`. ``.manifold`` is the wrapped manifold, ``.shape`` the
    shape of one point (``ndim`` trailing dimensions).
    """

    def __init__(self, manifold: ThermanoptManifold) -> None:
        super().__init__()
        self.manifold = manifold
        self.shape = tuple(int(n) for n in manifold.point_shape)
        self.ndim = len(self.shape)
        self.name = f"geoopt({manifold!s})"
        self.step_rule = StepRule()

    @property
    def reversible(self) -> bool:
        """True for the embedded metric with a second-order retraction (geoopt's samplers)."""
        return isinstance(self.manifold, RiemannianSubmanifold)

    def extra_repr(self) -> str:
        return self.name

    # ----------------------------------------------------------- checks
    def _check_shape(self, shape, name):
        shape = tuple(shape)
        if shape[len(shape) - self.ndim :] != self.shape or len(shape) < self.ndim:
            return False, f"{name} has shape {shape}, {self.name} needs (..., *{self.shape})"
        return True, None

    def _check_point_on_manifold(self, x, *, atol=1e-5, rtol=1e-5):
        try:
            self.manifold.check_point(x)
        except ValueError as exc:
            return False, str(exc)
        return True, None

    def _check_vector_on_tangent(self, x, u, *, atol=1e-5, rtol=1e-5):
        err = float((u - self.manifold.projection(x, u)).norm())
        ok = err <= atol + rtol * float(u.norm())
        return ok, None if ok else f"|u - P_x u| = {err:.3g} exceeds the tolerance"

    # ----------------------------------------------------------- geometry
    def projx(self, x: torch.Tensor) -> torch.Tensor:
        return self.manifold.reproject(x)

    def proju(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.manifold.projection(x, u)

    def egrad2rgrad(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.manifold.euclidean_to_riemannian_gradient(x, u)

    def retr(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The manifold's second-order retraction through the step rule (``step_rule``
        counts its rescues)."""
        return self.step_rule(self.manifold, x, u)

    def expmap(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The second-order retraction (geoopt's optimizers call expmap only if asked)."""
        return self.retr(x, u)

    def transp(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.manifold.transport(x, y, v)

    def inner(self, x, u, v=None, *, keepdim=False):
        value = self.manifold.inner_product_array(x, u, u if v is None else v)
        return value.reshape((1,) * self.ndim) if keepdim else value

    def component_inner(self, x, u, v=None):
        return self.inner(x, u, v, keepdim=True)

    def norm(self, x, u, *, keepdim=False):
        return self.inner(x, u, keepdim=keepdim).clamp_min(0).sqrt()

    # ----------------------------------------------------------- points
    def random(self, *size, generator: Any = None, dtype=None, device=None):
        """A random point (``manifold.random_point``) as a :class:`geoopt.ManifoldTensor`."""
        if size and tuple(size) not in ((), self.shape):
            raise ValueError(f"{self.name} points have shape {self.shape}, got size {size}")
        x = self.manifold.spec.asarray(self.manifold.random_point(generator))
        x = torch.as_tensor(x).to(dtype=dtype or None, device=device or None)
        return geoopt.ManifoldTensor(x, manifold=self)

    random_point = random


def as_geoopt(manifold: ThermanoptManifold) -> GeooptManifold:
    """A :class:`geoopt.Manifold` for a thermanopt manifold (torch points).

    Example::

        M = as_geoopt(BalancedManifold(8, 3, backend="torch"))
        W = geoopt.ManifoldParameter(M.manifold.random_point(0), manifold=M)
        opt = geoopt.optim.RiemannianAdam([W], lr=1e-2)
    """
    if isinstance(manifold, GeooptManifold):
        return manifold
    if not isinstance(manifold, ThermanoptManifold):
        raise TypeError(
            f"as_geoopt needs a thermanopt manifold (BalancedManifold, ObservableQuotient, "
            f"Sphere or a subclass), got {type(manifold).__name__}"
        )
    return GeooptManifold(manifold)
