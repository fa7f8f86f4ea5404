"""Free energy F = E - T S of the deep linear network as a Pymanopt problem.

Chen, Kotwal & Menon, "Entropic regularization in the Deep Linear Network", arXiv
2512.06137; Menon & Yu, arXiv 2509.09088. Langevin dynamics on the balanced manifold at
temperature T with potential E(phi(W)) has X-marginal proportional to
exp(-(E - T S_N)/T) dvol_{g_N}: the free energy

    F(x) = E(x) - T S(x),    S(x) = S_N(X(x)) = (1/2) sum_{i<j} log K_ij(s)  (reduced),

is what such dynamics minimise. :func:`free_energy` wraps an energy E given as a Pymanopt
problem or decorated cost into a :class:`pymanopt.Problem` for F with its Euclidean
gradient and, when E has one, its exact Euclidean Hessian-vector product, so every Pymanopt
solver (SteepestDescent, ConjugateGradient, TrustRegions, ...) minimises free energy. S and
its derivatives come from :class:`~thermanopt.entropy.model.EntropyModel`, which uses the
manifold's own end-to-end map and its adjoint (balanced stacks W: S = S_N(phi(W)); the
quotient: S = S_N(X); a manifold of d x d matrices with ``depth=N``: S = S_N(X)).
"""

from __future__ import annotations

import math
from typing import Any

import pymanopt
from pymanopt.autodiff import Function
from pymanopt.manifolds.manifold import Manifold

from .._backend import to_float
from .model import EntropyModel

Array = Any

__all__ = ["free_energy"]


def free_energy(
    cost: pymanopt.Problem | Function,
    manifold: Any,
    temperature: float,
    *,
    depth: int | None = None,
) -> pymanopt.Problem:
    """The Pymanopt problem of minimising F = E - T S (reduced entropy) on ``manifold``.

    Parameters
    ----------
    cost
        The energy E: either a :class:`pymanopt.Problem` (its cost, Euclidean gradient and,
        if available, Euclidean Hessian are used) or a cost decorated with a Pymanopt
        backend decorator (``pymanopt.function.autograd``, ``thermanopt.function.torch``).
    manifold
        A DLN manifold (``BalancedManifold``, ``ObservableQuotient`` or a subclass), or a
        manifold of d x d matrices with ``depth``. May be ``None`` when ``cost`` is a
        problem (its manifold is used).
    temperature
        T >= 0.
    depth
        N, for manifolds that are not DLN manifolds.

    Returns
    -------
    pymanopt.Problem
        Cost F (a Python float), Euclidean gradient nabla E - T nabla S and, when E has a
        Hessian, the exact Hessian-vector product Hess E[v] - T Hess S[v]. Where two
        singular values vanish (S = -infinity) the cost is +infinity for T > 0, so line
        searches step back. The problem also carries ``energy`` (the problem of E),
        ``temperature``, ``depth``, ``entropy(point)`` (a float) and
        ``entropy_gradient(point)`` (Euclidean).
    """
    if manifold is not None and not isinstance(manifold, Manifold):
        raise TypeError(
            f"manifold must be a Pymanopt manifold (or None with a problem), got "
            f"{type(manifold).__name__}"
        )
    if isinstance(cost, pymanopt.Problem):
        base = cost
        if manifold is None:
            manifold = base.manifold
        elif manifold is not base.manifold:
            raise ValueError("the manifold differs from the manifold of the given problem")
    elif isinstance(cost, Function):
        if manifold is None:
            raise ValueError("a manifold is required when cost is a decorated function")
        base = pymanopt.Problem(manifold, cost)
    else:
        raise ValueError(
            "cost must be a pymanopt.Problem or a cost decorated with a Pymanopt backend "
            f"decorator, got {type(cost).__name__}"
        )
    try:
        T = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number, got {temperature!r}") from None
    if not T >= 0.0 or T == math.inf:
        raise ValueError(f"temperature must be finite and >= 0, got {temperature!r}")
    model = EntropyModel(manifold, depth)

    @pymanopt.function.numpy(manifold)
    def F(point):
        E = to_float(base.cost(point))
        return E if T == 0.0 else E - T * model.value_or_minus_inf(point)

    @pymanopt.function.numpy(manifold)
    def F_gradient(point):
        gE = base.euclidean_gradient(point)
        return gE if T == 0.0 else gE - T * model.euclidean_gradient(point)

    try:
        hessian_E = base.euclidean_hessian
    except NotImplementedError:
        hessian_E = None

    F_hessian = None
    if hessian_E is not None:

        @pymanopt.function.numpy(manifold)
        def F_hessian(point, vector):
            hE = hessian_E(point, vector)
            return hE if T == 0.0 else hE - T * model.euclidean_hvp(point, vector)

    problem = pymanopt.Problem(
        manifold, F, euclidean_gradient=F_gradient, euclidean_hessian=F_hessian
    )
    problem.energy = base
    problem.temperature = T
    problem.depth = model.depth
    problem.entropy = model.value_or_minus_inf
    problem.entropy_gradient = model.euclidean_gradient
    return problem
