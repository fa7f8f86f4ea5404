"""Conformance kit for thermanopt manifolds (used by our tests and by users).

Example::

    from thermanopt.testing import check_manifold
    numbers = check_manifold(MyManifold(...), generator=0)
"""

from .conformance import check_manifold, distance_cost, smooth_cost

__all__ = ["check_manifold", "distance_cost", "smooth_cost"]
