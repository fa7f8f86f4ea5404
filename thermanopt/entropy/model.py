"""The entropy of a point of a deep-linear-network manifold: S, grad S, Hess S in one place.

On either DLN manifold a point x has an end-to-end matrix X(x) (phi(W) on the balanced
manifold, X itself on the observable quotient), and its Boltzmann entropy is the entropy of
the fibre over X (Menon & Yu, arXiv 2509.09088):

    S(x) = S_N(X(x)),   S_N(X) = (1/2) sum_{i<j} log K_ij(s)   (reduced entropy).

Its derivatives follow from the chain rule through the manifold's own bundle maps
(:class:`~thermanopt.manifolds.DLNManifold`):

    nabla S(x)      = X^*(nabla S_N(X)),                       (end_to_end_adjoint)
    Hess S(x) v     = X^*(D^2 S_N(X) dX v) + (D_v X^*)(nabla S_N(X)),
    grad S(x)       = euclidean_to_riemannian_gradient(x, nabla S(x)),

so the same code serves both manifolds and any subclass. The Riemannian gradient on the
quotient is A_{N,X}(nabla S_N); on the balanced manifold it is the horizontal vector
dphi^*(nabla S_N) (already tangent). A manifold of d x d matrices that is not a DLN manifold
(for example ``pymanopt.manifolds.Euclidean(d, d)``) can stand in for the quotient when the
depth is given: its points are taken as end-to-end matrices.
"""

from __future__ import annotations

import math
from typing import Any

from .._backend import to_float
from ..manifolds import DLNManifold, check_depth
from .dln import RankDeficientError, dln_entropy, dln_entropy_gradient, dln_entropy_hvp

Array = Any

__all__ = ["EntropyModel"]


class _MatrixPoints:
    """The bundle maps of a manifold whose points are end-to-end matrices (identity maps)."""

    def __init__(self, manifold: Any) -> None:
        self.manifold = manifold

    @staticmethod
    def end_to_end(x: Array) -> Array:
        return x

    @staticmethod
    def end_to_end_differential(x: Array, v: Array) -> Array:
        return v

    @staticmethod
    def end_to_end_adjoint(x: Array, G: Array) -> Array:
        return G

    @staticmethod
    def end_to_end_adjoint_derivative(x: Array, v: Array, G: Array) -> Array:
        return 0.0 * G

    def euclidean_to_riemannian_gradient(self, x: Array, g: Array) -> Array:
        return self.manifold.euclidean_to_riemannian_gradient(x, g)


class EntropyModel:
    """S, nabla S, grad S and Hess S of points of a DLN manifold (see the module docstring).

    Args:
        manifold: a :class:`~thermanopt.manifolds.DLNManifold` (any subclass), or a manifold
            of d x d matrices together with ``depth``.
        depth: N; defaults to ``manifold.depth`` for DLN manifolds (and must agree).

    Raises ``TypeError`` for a manifold that is neither, without a depth.
    """

    def __init__(self, manifold: Any, depth: int | None = None) -> None:
        if isinstance(manifold, DLNManifold):
            if depth is not None and check_depth(depth) != manifold.depth:
                raise ValueError(
                    f"depth={depth} differs from the manifold's depth {manifold.depth}"
                )
            self.depth = manifold.depth
            self.maps: Any = manifold
        elif depth is not None:
            self.depth = check_depth(depth)
            self.maps = _MatrixPoints(manifold)
        else:
            raise TypeError(
                f"the entropy needs a deep-linear-network manifold (BalancedManifold, "
                f"ObservableQuotient or a subclass), or depth=N for a manifold of matrices; "
                f"got {type(manifold).__name__} without a depth"
            )
        self.manifold = manifold

    def value(self, x: Array) -> float:
        """S(x) as a Python float (``RankDeficientError`` where S = -infinity)."""
        return to_float(dln_entropy(self.maps.end_to_end(x), self.depth))

    def value_or_minus_inf(self, x: Array) -> float:
        """S(x), or -inf where two singular values vanish (so F = E - T S = +inf)."""
        try:
            return self.value(x)
        except RankDeficientError:
            return -math.inf

    def euclidean_gradient(self, x: Array) -> Array:
        """nabla S(x) = X^*(nabla S_N(X)) in the coordinates of the point."""
        X = self.maps.end_to_end(x)
        return self.maps.end_to_end_adjoint(x, dln_entropy_gradient(X, self.depth))

    def riemannian_gradient(self, x: Array) -> Array:
        """grad S(x): the manifold's Riemannian gradient of nabla S(x)."""
        return self.maps.euclidean_to_riemannian_gradient(x, self.euclidean_gradient(x))

    def euclidean_hvp(self, x: Array, v: Array) -> Array:
        """Hess S(x) v = X^*(D^2 S_N(X) dX v) + (D_v X^*)(nabla S_N(X)) (exact)."""
        m = self.maps
        X = m.end_to_end(x)
        G = dln_entropy_gradient(X, self.depth)
        H = dln_entropy_hvp(X, m.end_to_end_differential(x, v), self.depth)
        return m.end_to_end_adjoint(x, H) + m.end_to_end_adjoint_derivative(x, v, G)
