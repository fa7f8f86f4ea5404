"""Manifolds of the deep linear network, as Pymanopt manifolds on NumPy and torch.

- :class:`BalancedManifold` -- balanced factorisations W = (W_1, ..., W_N) of the deep
  linear network, a Riemannian submanifold of (R^{d x d})^N;
- :class:`ObservableQuotient` -- end-to-end matrices X in GL(d) with the metric g_N, the
  quotient of the balanced manifold by O(d)^(N-1);
- :class:`DLNManifold` -- their shared base: the bundle maps between points, observables
  and balanced stacks;
- the maps of the network: :func:`end_to_end` (phi), :func:`end_to_end_differential`,
  :func:`end_to_end_adjoint`, :func:`balanced_from` (the balanced lift),
  :func:`balance_residual`, :func:`polar`;
- spectral helpers shared with :mod:`thermanopt.entropy`: :func:`svd`, :class:`SVD`,
  :func:`log_K`, :func:`multiplier_K`, :func:`log_sinhc`;
- :class:`Sphere` -- the unit sphere, a reference manifold for the backends;
- :func:`as_geoopt` -- a geoopt view of any of them.
"""

from ._svd import SVD, log_K, log_sinhc, multiplier_K, svd
from .balanced import BalancedManifold
from .base import DLNManifold
from .dln import (
    balance_residual,
    balanced_from,
    check_depth,
    end_to_end,
    end_to_end_adjoint,
    end_to_end_adjoint_derivative,
    end_to_end_differential,
    polar,
)
from .observable import ObservableQuotient
from .sphere import Sphere

__all__ = [
    "BalancedManifold",
    "ObservableQuotient",
    "DLNManifold",
    "Sphere",
    "as_geoopt",
    "end_to_end",
    "end_to_end_differential",
    "end_to_end_adjoint",
    "end_to_end_adjoint_derivative",
    "balanced_from",
    "balance_residual",
    "polar",
    "check_depth",
    "SVD",
    "svd",
    "log_K",
    "log_sinhc",
    "multiplier_K",
]


def __getattr__(name):  # lazy: the geoopt adapter imports geoopt
    if name == "as_geoopt":
        from .geoopt import as_geoopt

        return as_geoopt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
