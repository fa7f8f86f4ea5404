"""geoopt adapters: train torch parameters on any thermanopt (or Pymanopt) manifold.

``as_geoopt(manifold)`` wraps a manifold with the Pymanopt interface
(``projection``, ``euclidean_to_riemannian_gradient``, ``retraction``,
``transport``, ``inner_product``, ``check_point``...) in a
:class:`geoopt.Manifold`, so that ``geoopt.ManifoldParameter`` and geoopt's
``RiemannianSGD`` / ``RiemannianAdam`` (or
:class:`thermanopt.optimizers.torch_optim.ThermalRiemannianSGD`) update it:

============================  ==============================================
geoopt                        thermanopt / Pymanopt
============================  ==============================================
``proju(x, u)``               ``projection(x, u)``
``egrad2rgrad(x, g)``         ``euclidean_to_riemannian_gradient(x, g)``
``retr(x, u)``                ``retraction(x, u)``
``expmap(x, u)``              ``exp(x, u)`` if implemented, else the
                              (second-order, when available) retraction
``transp(x, y, v)``           ``transport(x, y, v)``
``inner(x, u, v)``            Frobenius sum for embedded manifolds,
                              ``<u, metric(x, v)>`` when the manifold
                              lowers indices (``ObservableQuotient``: g_N)
``projx(x)``                  :func:`project_point` (nearest balanced point
                              over phi(x) for ``BalancedManifold``)
``check_point_on_manifold``   ``check_point`` / ``is_on_manifold``
============================  ==============================================

Everything stays a torch tensor on the device of the parameter: inner products
are 0-d tensors (no host transfer), so geoopt's Adam (whose second moment is
``component_inner``, one scalar per manifold point here) runs on a GPU without
synchronising.

The DLN manifolds are not batched: a parameter is one point of shape
``(depth, width, width)`` (balanced) or ``(width, width)`` (quotient).
"""

from __future__ import annotations

from typing import Any

import geoopt
import numpy as np
import torch

from .._backend import is_torch, namespace, to_float
from .balanced import polar, reproject_balanced

Array = Any

__all__ = [
    "GeooptManifold",
    "as_geoopt",
    "project_point",
    "inner_array",
    "point_shape",
    "euclidean_metric",
]


def _kind(manifold: Any) -> str:
    return type(manifold).__name__


def euclidean_metric(manifold: Any) -> bool:
    """True when the manifold's metric is the ambient Frobenius one (embedded submanifold)."""
    flag = getattr(manifold, "euclidean_metric", None)
    if flag is not None:
        return bool(flag)
    return _kind(manifold) in {
        "BalancedManifold",
        "Sphere",
        "Stiefel",
        "Euclidean",
        "Oblique",
    } and (not hasattr(manifold, "metric"))


def inner_array(manifold: Any, point: Array, u: Array, v: Array) -> Array:
    """<u, v>_x as a 0-d array of the type and device of ``u`` (no host transfer).

    Frobenius sum for Riemannian submanifolds of Euclidean space; sum(u * metric(x, v))
    when the manifold lowers indices (``ObservableQuotient.metric`` = A_{N,X}^{-1});
    otherwise the manifold's ``inner_product`` (a host float) wrapped back into an array.
    """
    xp = namespace(u, v)
    if euclidean_metric(manifold):
        return xp.sum(u * v)
    if hasattr(manifold, "metric"):
        return xp.sum(u * manifold.metric(point, v))
    value = manifold.inner_product(point, u, v)
    if is_torch(u):
        return torch.as_tensor(value, dtype=u.dtype, device=u.device)
    return np.asarray(value, dtype=np.asarray(u).dtype)


def point_shape(manifold: Any) -> tuple[int, ...]:
    """Shape of one point: (depth, width, width) balanced, (width, width) quotient, else probed."""
    kind = _kind(manifold)
    if kind == "BalancedManifold":
        return (manifold.depth, manifold.width, manifold.width)
    if kind == "ObservableQuotient":
        return (manifold.width, manifold.width)
    return tuple(np.shape(manifold.random_point()))


def project_point(manifold: Any, x: Array) -> Array:
    """A point of ``manifold`` close to ``x`` (used to re-project drifting iterates).

    - BalancedManifold: keep X = phi(x) and rebuild the balanced stack over it,
      with frames Q_p = polar(x_p Q_{p-1} diag(lam)^{-1}) taken from x (exactly
      x when x is balanced; Q_0 = V, Q_N = U from the SVD of X);
    - Sphere / Stiefel-like manifolds with a nearest-point map: x / |x| or the
      polar factor;
    - ObservableQuotient (open subset of R^{d x d}): x itself;
    - otherwise the manifold's ``projx``/``project_point`` if it has one, else x.
    """
    kind = _kind(manifold)
    if kind == "BalancedManifold":
        return reproject_balanced(x, x.shape[0])
    if kind == "Sphere":
        xp = namespace(x)
        return x / xp.sqrt(xp.sum(x * x))
    if kind == "Stiefel":
        return polar(x)
    for name in ("project_point", "projx"):
        if hasattr(manifold, name):
            return getattr(manifold, name)(x)
    return x * 1


class GeooptManifold(geoopt.Manifold):
    """A :class:`geoopt.Manifold` view of a thermanopt / Pymanopt manifold (torch tensors).

    Build it with :func:`as_geoopt`. ``.manifold`` is the wrapped manifold,
    ``.shape`` the shape of one point (``ndim`` trailing dimensions).
    """

    reversible = False

    def __init__(self, manifold: Any) -> None:
        super().__init__()
        self.manifold = manifold
        self.shape = tuple(int(n) for n in point_shape(manifold))
        self.ndim = len(self.shape)
        self.name = f"geoopt({getattr(manifold, '_name', None) or _kind(manifold)})"
        self._second = getattr(manifold, "retraction_second_order", None)

    def extra_repr(self) -> str:
        return self.name

    # ----------------------------------------------------------- checks
    def _check_shape(self, shape, name):
        shape = tuple(shape)
        if shape != self.shape:
            return False, f"{name} has shape {shape}, {self.name} needs {self.shape}"
        return True, None

    def _check_point_on_manifold(self, x, *, atol=1e-5, rtol=1e-5):
        check = getattr(self.manifold, "check_point", None)
        if check is not None:
            try:
                check(x)
            except ValueError as exc:
                return False, str(exc)
            return True, None
        ok = bool(torch.allclose(x, project_point(self.manifold, x), atol=atol, rtol=rtol))
        return ok, None if ok else "point differs from its projection onto the manifold"

    def _check_vector_on_tangent(self, x, u, *, atol=1e-5, rtol=1e-5):
        pu = self.manifold.projection(x, u)
        err = float((u - pu).norm())
        ok = err <= atol + rtol * float(u.norm())
        return ok, None if ok else f"|u - P_x u| = {err:.3g} exceeds the tolerance"

    # ----------------------------------------------------------- geometry
    def projx(self, x: torch.Tensor) -> torch.Tensor:
        return project_point(self.manifold, x)

    def proju(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.manifold.projection(x, u)

    def egrad2rgrad(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.manifold.euclidean_to_riemannian_gradient(x, u)

    def retr(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.manifold.retraction(x, u)

    def retr_second_order(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """A second-order retraction (Langevin steps need one): the manifold's, or exp."""
        if self._second is not None:
            return self._second(x, u)
        if _kind(self.manifold) in ("Sphere", "Euclidean", "Stiefel"):
            return project_point(self.manifold, x + u)  # metric projection: second order
        return self.expmap(x, u)

    def expmap(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        try:
            return self.manifold.exp(x, u)
        except NotImplementedError:
            if self._second is not None:
                return self._second(x, u)
            return self.manifold.retraction(x, u)

    def transp(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.manifold.transport(x, y, v)

    def inner(self, x, u, v=None, *, keepdim=False):
        value = inner_array(self.manifold, x, u, u if v is None else v)
        if keepdim:
            value = value.reshape((1,) * self.ndim)
        return value

    def component_inner(self, x, u, v=None):
        return self.inner(x, u, v, keepdim=True)

    def norm(self, x, u, *, keepdim=False):
        return self.inner(x, u, keepdim=keepdim).clamp_min(0).sqrt()

    def dist(self, x, y, *, keepdim=False):
        value = self.manifold.dist(x, y)
        out = torch.as_tensor(
            to_float(value) if not is_torch(value) else value, dtype=x.dtype, device=x.device
        )
        return out.reshape((1,) * self.ndim) if keepdim else out

    # ----------------------------------------------------------- points
    def random(
        self, *size, generator: Any = None, dtype=None, device=None
    ) -> geoopt.ManifoldTensor:
        """A random point (``manifold.random_point``) as a :class:`geoopt.ManifoldTensor`."""
        if size and tuple(size) not in ((), self.shape):
            raise ValueError(f"{self.name} points have shape {self.shape}, got size {size}")
        x = self.manifold.random_point(generator)
        if not is_torch(x):
            x = torch.as_tensor(np.asarray(x))
        x = x.to(dtype=dtype or x.dtype, device=device or x.device)
        return geoopt.ManifoldTensor(x, manifold=self)

    random_point = random

    # thermanopt extras, forwarded when present
    def entropy_gradient(self, x: torch.Tensor) -> torch.Tensor:
        """Riemannian gradient of the DLN entropy at x (see ``stochastic.entropy_gradient``)."""
        from ..optimizers.stochastic import entropy_gradient

        return entropy_gradient(self.manifold, x)

    @property
    def euclidean_metric(self) -> bool:
        return euclidean_metric(self.manifold)


def as_geoopt(manifold: Any) -> GeooptManifold:
    """A :class:`geoopt.Manifold` for ``manifold`` (ours or Pymanopt's; torch points).

    Example::

        M = as_geoopt(BalancedManifold(8, 3, backend="torch"))
        W = geoopt.ManifoldParameter(M.manifold.random_point(0), manifold=M)
        opt = geoopt.optim.RiemannianAdam([W], lr=1e-2)
    """
    if isinstance(manifold, GeooptManifold):
        return manifold
    if isinstance(manifold, geoopt.Manifold):
        raise ValueError("as_geoopt: the manifold is already a geoopt manifold")
    for attr in ("projection", "retraction", "euclidean_to_riemannian_gradient"):
        if not hasattr(manifold, attr):
            raise ValueError(f"as_geoopt: {type(manifold).__name__} has no {attr}()")
    return GeooptManifold(manifold)
