"""Manifolds of the deep linear network, as Pymanopt manifolds on NumPy and torch.

- :class:`BalancedManifold` -- balanced factorisations W = (W_1, ..., W_N) of the
  deep linear network, a Riemannian submanifold of (R^{d x d})^N;
- :class:`ObservableQuotient` -- end-to-end matrices X in GL(d) with the metric g_N,
  the quotient of the balanced manifold by O(d)^(N-1);
- :class:`Sphere` -- the unit sphere, a reference manifold for the backends.
"""

from .sphere import Sphere

__all__ = ["Sphere", "BalancedManifold", "ObservableQuotient", "as_geoopt"]


def __getattr__(name):  # lazy: each manifold lives in its own module
    if name == "BalancedManifold":
        from .balanced import BalancedManifold

        return BalancedManifold
    if name == "ObservableQuotient":
        from .observable import ObservableQuotient

        return ObservableQuotient
    if name == "as_geoopt":
        from .geoopt import as_geoopt

        return as_geoopt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
