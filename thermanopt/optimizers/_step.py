"""What a stochastic step needs besides the step rule (:mod:`thermanopt.manifolds.step`).

Noise: :func:`tangent_noise` is a standard Gaussian on T_x M, the tangent projection of an
ambient N(0, I). It is the Brownian increment only where the metric is the ambient
Frobenius one, i.e. on Riemannian submanifolds of Euclidean space (Pymanopt's
``RiemannianSubmanifold``: the balanced manifold, spheres, Stiefel); elsewhere
``ValueError`` (the observable quotient's metric g_N needs the sampler's balanced lift).
"""

from __future__ import annotations

from typing import Any

from pymanopt.manifolds.manifold import RiemannianSubmanifold

from .._backend import namespace, random_normal, spec_of
from ..manifolds.base import ThermanoptManifold

Array = Any

__all__ = ["tangent_noise", "has_embedded_metric", "inner_array"]


def has_embedded_metric(manifold: Any) -> bool:
    """True for Riemannian submanifolds of Euclidean space (the Frobenius metric)."""
    return isinstance(manifold, RiemannianSubmanifold)


def inner_array(manifold: Any, point: Array, u: Array, v: Array) -> Array:
    """<u, v>_x as an array on the input's device (thermanopt manifolds: no host transfer)."""
    if isinstance(manifold, ThermanoptManifold):
        return manifold.inner_product_array(point, u, v)
    xp = namespace(u)
    return xp.asarray(manifold.inner_product(point, u, v), dtype=u.dtype)


def tangent_noise(manifold: Any, point: Array, generator: Any) -> Array:
    """A standard Gaussian on T_x M (tangent projection of an ambient N(0, I))."""
    if not has_embedded_metric(manifold):
        raise ValueError(
            f"Langevin noise needs a manifold with the embedded (Frobenius) metric; "
            f"{manifold!s} has another metric: use thermanopt.optimizers.RiemannianLangevin, "
            "which samples through the balanced lift"
        )
    xi = random_normal(tuple(point.shape), spec_of(point), generator)
    return manifold.projection(point, xi)


