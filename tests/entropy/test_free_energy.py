"""Tests of thermanopt.entropy.free_energy (F = E - T S_N as a Pymanopt problem).

Independent checks: Taylor slopes of gradient and Hessian (thermanopt.diagnostics), finite
differences of the Euclidean gradient, the exact 1-D reduction of the g_N gradient flow for
spectral energies (grad_{g_N} f = U diag(N s^{2(N-1)/N} df/ds) V^T) and its equilibrium
dE/ds_i = T dS/ds_i solved by scipy on the singular values, against Pymanopt solvers.
"""

from __future__ import annotations

import autograd.numpy as anp
import numpy as np
import pymanopt
import pytest
import torch
from scipy.optimize import root

import thermanopt.function
from thermanopt.diagnostics import check_gradient, check_hessian
from thermanopt.entropy import (
    dln_entropy,
    dln_entropy_gradient,
    entropy_gradient_from_singular_values,
    free_energy,
)

try:
    from thermanopt.manifolds import ObservableQuotient
except ImportError:  # pragma: no cover - written in parallel
    ObservableQuotient = None
try:
    from thermanopt.manifolds import BalancedManifold
except ImportError:  # pragma: no cover
    BalancedManifold = None

needs_quotient = pytest.mark.skipif(ObservableQuotient is None, reason="no ObservableQuotient")
needs_balanced = pytest.mark.skipif(BalancedManifold is None, reason="no BalancedManifold")

A_DIAG = np.array([3.0, 1.5, 0.8])


def _quadratic_problem(manifold):
    """E(X) = |X - A|^2 / 2 on X (or on phi(W) for a balanced manifold)."""
    A = np.diag(A_DIAG)
    if BalancedManifold is not None and isinstance(manifold, BalancedManifold):
        N = manifold.depth

        @pymanopt.function.autograd(manifold)
        def cost(W):
            X = W[0]
            for p in range(1, N):
                X = W[p] @ X
            return 0.5 * anp.sum((X - A) ** 2)

    else:

        @pymanopt.function.autograd(manifold)
        def cost(X):
            return 0.5 * anp.sum((X - A) ** 2)

    return cost


def _manifolds(d=3, N=3):
    out = [("euclidean", pymanopt.manifolds.Euclidean(d, d))]
    if ObservableQuotient is not None:
        out.append(("quotient", ObservableQuotient(d, N)))
    if BalancedManifold is not None:
        out.append(("balanced", BalancedManifold(d, N)))
    return out


def _point(name, manifold, rng):
    if name == "euclidean":
        return np.eye(3) + 0.3 * rng.standard_normal((3, 3))
    return manifold.random_point(generator=1)


@pytest.mark.parametrize(
    "name,manifold", _manifolds(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_gradient_and_hessian_slopes(name, manifold):
    rng = np.random.default_rng(0)
    problem = free_energy(_quadratic_problem(manifold), manifold, 0.7, depth=3)
    x = _point(name, manifold, rng)
    res = check_gradient(problem, x, generator=0)
    assert res.ok and abs(res.slope - 2) < 0.1
    retraction = getattr(manifold, "retraction_second_order", None)
    res = check_hessian(problem, x, generator=0, retraction=retraction)
    assert res.ok and abs(res.slope - 3) < 0.15


@pytest.mark.parametrize(
    "name,manifold", _manifolds(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_euclidean_derivatives_against_finite_differences(name, manifold):
    rng = np.random.default_rng(1)
    T = 0.7
    problem = free_energy(_quadratic_problem(manifold), manifold, T, depth=3)
    x = _point(name, manifold, rng)
    v = rng.standard_normal(x.shape)
    h = 1e-6
    fd = (problem.cost(x + h * v) - problem.cost(x - h * v)) / (2 * h)
    assert np.sum(problem.euclidean_gradient(x) * v) == pytest.approx(fd, rel=1e-7, abs=1e-9)
    h = 1e-5
    fdH = (problem.euclidean_gradient(x + h * v) - problem.euclidean_gradient(x - h * v)) / (2 * h)
    np.testing.assert_allclose(problem.euclidean_hessian(x, v), fdH, atol=1e-7)
    # F = E - T S with S the entropy of the end-to-end matrix
    X = manifold.end_to_end(x) if name == "balanced" else x
    E = problem.energy.cost(x)
    assert problem.cost(x) == pytest.approx(E - T * dln_entropy(X, 3), rel=1e-14)


@needs_quotient
@pytest.mark.parametrize("depth", [2, 3, 5])
def test_riemannian_gradient_is_the_one_dimensional_reduction(depth):
    """For spectral F at X = diag(s): grad_{g_N} F = diag(N s^{2(N-1)/N} dF/ds)."""
    d, T, b = 3, 0.4, 2.0
    manifold = ObservableQuotient(d, depth)

    @pymanopt.function.autograd(manifold)
    def cost(X):  # E = sum_i (s_i^4/4 - b s_i^2/2), spectral
        G = X.T @ X
        return 0.25 * anp.trace(G @ G) - 0.5 * b * anp.trace(G)

    problem = free_energy(cost, manifold, T)
    s = np.array([2.2, 1.1, 0.45])
    dF = s**3 - b * s - T * entropy_gradient_from_singular_values(s, depth)
    expected = np.diag(depth * s ** (2 * (depth - 1) / depth) * dF)
    np.testing.assert_allclose(problem.riemannian_gradient(np.diag(s)), expected, atol=1e-12)


def _root_singular_values(dE, T, depth, guess):
    def residual(s):
        return dE(s) - T * entropy_gradient_from_singular_values(np.abs(s), depth)

    sol = root(residual, guess, tol=1e-14)
    assert np.abs(residual(sol.x)).max() < 1e-12  # converged ("xtol too small" is fine)
    return np.sort(np.abs(sol.x))[::-1]


@needs_quotient
@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("T", [0.2, 1.0])
def test_minimiser_matches_singular_value_equilibrium(depth, T):
    """Aligned quadratic energy: the minimiser of F is diag(s*) with s* - a = T dS/ds (s*)."""
    manifold = ObservableQuotient(3, depth)
    problem = free_energy(_quadratic_problem(manifold), manifold, T)
    s_star = _root_singular_values(lambda s: s - A_DIAG, T, depth, A_DIAG)
    res = pymanopt.optimizers.TrustRegions(verbosity=0, min_gradient_norm=1e-11).run(
        problem, initial_point=np.eye(3)
    )
    np.testing.assert_allclose(np.linalg.svd(res.point, compute_uv=False), s_star, rtol=1e-9)
    np.testing.assert_allclose(res.point, np.diag(s_star), atol=1e-9)
    res = pymanopt.optimizers.SteepestDescent(verbosity=0, min_gradient_norm=1e-9).run(
        problem, initial_point=np.eye(3)
    )
    np.testing.assert_allclose(np.linalg.svd(res.point, compute_uv=False), s_star, rtol=1e-6)


@needs_quotient
def test_spectral_energy_equilibrium():
    """E = sum(s^4/4 - b s^2/2): root of s^3 - b s = T dS/ds vs TrustRegions on the quotient."""
    depth, T, b = 3, 0.6, 1.0
    manifold = ObservableQuotient(3, depth)

    @pymanopt.function.autograd(manifold)
    def cost(X):
        G = X.T @ X
        return 0.25 * anp.trace(G @ G) - 0.5 * b * anp.trace(G)

    problem = free_energy(cost, manifold, T)
    s_star = _root_singular_values(lambda s: s**3 - b * s, T, depth, np.array([1.5, 1.2, 0.9]))
    x0 = manifold.random_point(generator=3)
    res = pymanopt.optimizers.TrustRegions(verbosity=0, min_gradient_norm=1e-11).run(
        problem, initial_point=x0
    )
    np.testing.assert_allclose(np.linalg.svd(res.point, compute_uv=False), s_star, rtol=1e-9)
    # the free-energy minimiser has equal singular values (F strictly convex here, symmetric)
    assert np.ptp(s_star) < 1e-10


@needs_balanced
def test_balanced_minimiser_matches_equilibrium():
    depth, T = 3, 0.5
    manifold = BalancedManifold(3, depth)
    problem = free_energy(_quadratic_problem(manifold), manifold, T)
    s_star = _root_singular_values(lambda s: s - A_DIAG, T, depth, A_DIAG)
    res = pymanopt.optimizers.TrustRegions(verbosity=0, min_gradient_norm=1e-10).run(
        problem, initial_point=manifold.random_point(generator=2)
    )
    X = manifold.end_to_end(res.point)
    np.testing.assert_allclose(np.linalg.svd(X, compute_uv=False), s_star, rtol=1e-8)


@needs_quotient
def test_torch_quotient_with_torch_backend():
    depth, T = 3, 0.5
    manifold = ObservableQuotient(3, depth, backend="torch")
    A = torch.diag(torch.as_tensor(A_DIAG))

    @thermanopt.function.torch(manifold)
    def cost(X):
        return 0.5 * ((X - A) ** 2).sum()

    problem = free_energy(cost, manifold, T)
    x = manifold.random_point(generator=0)
    g = problem.euclidean_gradient(x)
    assert isinstance(g, torch.Tensor) and g.dtype == torch.float64
    np.testing.assert_allclose(
        g.numpy(), (x - A).numpy() - T * dln_entropy_gradient(x.numpy(), depth), atol=1e-13
    )
    assert check_gradient(problem, x, generator=0).ok
    res = pymanopt.optimizers.TrustRegions(verbosity=0, min_gradient_norm=1e-10).run(
        problem, initial_point=torch.eye(3, dtype=torch.float64)
    )
    s_star = _root_singular_values(lambda s: s - A_DIAG, T, depth, A_DIAG)
    np.testing.assert_allclose(torch.linalg.svdvals(res.point).numpy(), s_star, rtol=1e-8)


def test_problem_input_with_numpy_gradient_and_zero_temperature():
    manifold = pymanopt.manifolds.Euclidean(3, 3)
    A = np.diag(A_DIAG)

    @pymanopt.function.numpy(manifold)
    def cost(X):
        return 0.5 * np.sum((X - A) ** 2)

    @pymanopt.function.numpy(manifold)
    def grad(X):
        return X - A

    base = pymanopt.Problem(manifold, cost, euclidean_gradient=grad)
    problem = free_energy(base, None, 0.3, depth=2)
    X = np.eye(3) * 1.2
    np.testing.assert_allclose(
        problem.euclidean_gradient(X), X - A - 0.3 * dln_entropy_gradient(X, 2), atol=1e-15
    )
    with pytest.raises(NotImplementedError):  # E has no Hessian, so neither has F
        problem.euclidean_hessian(X, X)
    zero = free_energy(base, manifold, 0.0, depth=2)
    assert zero.cost(X) == pytest.approx(cost(X))
    np.testing.assert_allclose(zero.euclidean_gradient(X), X - A)


def test_errors():
    manifold = pymanopt.manifolds.Euclidean(3, 3)
    cost = _quadratic_problem(manifold)
    with pytest.raises(TypeError, match="depth"):
        free_energy(cost, manifold, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        free_energy(cost, manifold, -1.0, depth=2)
    with pytest.raises(ValueError, match="temperature"):
        free_energy(cost, manifold, float("nan"), depth=2)
    with pytest.raises(ValueError, match="decorated"):
        free_energy(lambda X: 0.0, manifold, 1.0, depth=2)
    with pytest.raises(ValueError, match="manifold"):
        free_energy(pymanopt.Problem(manifold, cost), pymanopt.manifolds.Euclidean(3, 3), 1.0)
    problem = free_energy(cost, manifold, 1.0, depth=2)
    assert problem.cost(np.diag([1.0, 0.0, 0.0])) == np.inf  # S = -inf
    with pytest.raises(ValueError, match="NaN"):
        problem.cost(np.full((3, 3), np.nan))
