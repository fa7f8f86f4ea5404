"""Tests of FreeEnergyDescent (F = E - T S on the DLN manifolds) and the shared helpers."""

from __future__ import annotations

import autograd
import autograd.numpy as anp
import numpy as np
import pymanopt
import pytest
import torch
from pymanopt.optimizers import SteepestDescent, TrustRegions
from scipy.optimize import root

from thermanopt.entropy import (
    EntropyModel,
    dln_entropy,
    dln_entropy_gradient,
    entropy_gradient_from_singular_values,
    free_energy,
)
from thermanopt.manifolds import BalancedManifold, ObservableQuotient, end_to_end_adjoint
from thermanopt.optimizers import FreeEnergyDescent, as_schedule, constant, geometric
from thermanopt.optimizers._common import FiniteMonitor, check_finite_at


def _e2e(W):
    X = W[0]
    for p in range(1, W.shape[0]):
        X = W[p] @ X
    return X


def _regression(manifold, A, B):
    """E = 1/2 |X A - B|^2 on the quotient (X) or the balanced manifold (X = phi(W))."""
    if isinstance(manifold, ObservableQuotient):

        @pymanopt.function.autograd(manifold)
        def cost(X):
            return 0.5 * anp.sum((X @ A - B) ** 2)

    else:

        @pymanopt.function.autograd(manifold)
        def cost(W):
            return 0.5 * anp.sum((_e2e(W) @ A - B) ** 2)

    return pymanopt.Problem(manifold, cost)


def _spectral_target(manifold, y):
    """E = 1/2 |X - diag(y)|^2: minimiser of E - T S is diag(s) with s from the 1-D reduction."""
    Y = np.diag(y)
    return _regression(manifold, np.eye(len(y)), Y)


# ----------------------------------------------------------------------------- helpers


def test_schedules():
    assert constant(0.5)(7) == 0.5
    g = geometric(1.0, 0.5, t_min=1e-3)
    assert g(0) == 1.0 and g(3) == 0.125
    assert g(10) == 0.0 and g(100) == 0.0  # reaches exactly 0
    assert as_schedule(lambda k: 1.0 / (k + 1))(3) == 0.25
    with pytest.raises(ValueError, match="iteration 2"):
        as_schedule(lambda k: 1.0 - k)(2)
    with pytest.raises(ValueError, match=">= 0"):
        constant(-1.0)
    with pytest.raises(ValueError, match="rate"):
        geometric(1.0, 1.5)


def test_tolerances_and_checks():
    with pytest.raises(ValueError, match="cost at iteration 4"):
        check_finite_at(float("nan"), "cost", 4)
    mon = FiniteMonitor()
    mon.update(1, torch.ones(3))
    mon.update(2, torch.tensor([1.0, float("inf")]))
    mon.update(3, torch.tensor([float("nan")]))
    assert mon.first_bad() == 2
    with pytest.raises(ValueError, match="iteration 2"):
        mon.raise_if_bad("gradient")


def test_end_to_end_adjoint_is_chain_rule():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3, 3, 3))
    G = rng.standard_normal((3, 3))
    ref = autograd.grad(lambda W: anp.sum(_e2e(W) * G))(W)
    np.testing.assert_allclose(end_to_end_adjoint(W, G), ref, rtol=1e-12, atol=1e-12)


def test_balanced_entropy_gradient_matches_autodiff():
    """Euclidean gradient in W of S(phi(W)) against finite differences of S."""
    M = BalancedManifold(3, 3)
    W = M.random_point(3)
    model = EntropyModel(M)
    g = model.euclidean_gradient(W)
    D = np.random.default_rng(1).standard_normal(W.shape)
    t = 1e-6
    fd = (dln_entropy(_e2e(W + t * D), 3) - dln_entropy(_e2e(W - t * D), 3)) / (2 * t)
    assert np.sum(g * D) == pytest.approx(fd, rel=1e-7)
    # Riemannian gradient = tangent projection
    rg = model.riemannian_gradient(W)
    np.testing.assert_allclose(M.projection(W, rg), rg, atol=1e-12)


# ----------------------------------------------------------------------------- T = 0


@pytest.mark.parametrize("kind", ["quotient", "balanced"])
def test_zero_temperature_reproduces_steepest_descent(kind):
    rng = np.random.default_rng(0)
    d, N = 2, 3
    A, B = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    M = ObservableQuotient(d, N) if kind == "quotient" else BalancedManifold(d, N)
    problem = _regression(M, A, B)
    x0 = M.random_point(1)
    kw = dict(max_iterations=12, log_verbosity=1)
    ref = SteepestDescent(verbosity=0, **kw).run(problem, initial_point=x0)
    res = FreeEnergyDescent(0.0, **kw).run(problem, initial_point=x0)
    pts_ref = ref.log["iterations"]["point"]
    pts = res.log["iterations"]["point"]
    assert len(pts) == len(pts_ref) == 12
    for a, b in zip(pts, pts_ref):
        assert np.array_equal(a, b)  # bit for bit
    assert np.array_equal(res.point, ref.point)
    assert res.cost == ref.cost
    recs = res.log["records"]
    assert len(recs) == 12 and recs[0]["T"] == 0.0
    assert set(recs[0]) >= {"E", "S", "F", "T", "gradient_norm", "step_size", "time"}
    assert all(r["F"] == r["E"] for r in recs)


# ----------------------------------------------------------------------------- T > 0


def _solve_reduction(y, T, depth):
    """Exact 1-D reduction of min 1/2 sum (s_i - y_i)^2 - T S(s): s - y - T dS/ds = 0."""

    def eq(s):
        return s - y - T * entropy_gradient_from_singular_values(np.abs(s), depth)

    sol = root(eq, np.asarray(y, float), tol=1e-14)
    assert np.max(np.abs(eq(sol.x))) < 1e-12  # solved (hybr may still flag xtol)
    return np.sort(sol.x)[::-1]


def test_spectral_minimiser_matches_exact_reduction():
    y = np.array([2.0, 1.0, 0.5])
    N, T = 3, 0.3
    M = ObservableQuotient(3, N)
    problem = _spectral_target(M, y)
    opt = FreeEnergyDescent(T, max_iterations=400, min_gradient_norm=1e-11)
    res = opt.run(problem, initial_point=np.diag(y))
    s = np.linalg.svd(res.point, compute_uv=False)
    s_exact = _solve_reduction(y, T, N)
    np.testing.assert_allclose(s, s_exact, rtol=1e-7)
    # first-order condition grad E = T grad S (relative, Riemannian gradients)
    X = res.point
    gE = M.euclidean_to_riemannian_gradient(X, X - np.diag(y))
    gS = EntropyModel(M).riemannian_gradient(X)
    rel = np.linalg.norm(gE - T * gS) / np.linalg.norm(gE)
    assert rel < 1e-6
    # the records are consistent
    rec = res.log["records"][-1]
    assert rec["F"] == pytest.approx(rec["E"] - T * rec["S"], abs=1e-12)
    assert rec["S"] == pytest.approx(dln_entropy(X, N), abs=1e-6)


def test_regression_first_order_condition_and_entropy_increases_with_T():
    rng = np.random.default_rng(2)
    d, N = 2, 2
    A = np.eye(d) + 0.3 * rng.standard_normal((d, d))
    B = np.diag([2.0, 0.4]) @ A + 0.1 * rng.standard_normal((d, d))
    M = ObservableQuotient(d, N)
    problem = _regression(M, A, B)
    X0 = np.eye(d)
    entropies, ratios = [], []
    for T in (0.0, 0.2, 0.6):
        res = FreeEnergyDescent(T, max_iterations=400, min_gradient_norm=1e-10).run(
            problem, initial_point=X0
        )
        X = res.point
        if T > 0:

            def rel_residual(X, T=T):
                gE = M.euclidean_to_riemannian_gradient(X, (X @ A - B) @ A.T)
                gS = EntropyModel(M).riemannian_gradient(X)
                return np.linalg.norm(gE - T * gS) / np.linalg.norm(gE)

            # Armijo descent alone stalls near its cost resolution (measured ~1e-6 relative);
            assert rel_residual(X) < 1e-5
            # a few trust-region Newton steps on free_energy's problem polish it
            polished = TrustRegions(verbosity=0, max_iterations=20, min_gradient_norm=1e-13).run(
                free_energy(problem, None, T), initial_point=X
            )
            assert rel_residual(polished.point) < 1e-9
            np.testing.assert_allclose(polished.point, X, atol=1e-5)
            X = polished.point
        s = np.linalg.svd(X, compute_uv=False)
        entropies.append(dln_entropy(X, N))
        ratios.append(s[0] / s[-1])
    assert entropies[0] < entropies[1] < entropies[2]
    assert ratios[0] > ratios[1] > ratios[2]  # more balanced singular values


def test_annealing_reaches_minimiser_of_energy():
    rng = np.random.default_rng(3)
    d, N = 2, 3
    A = np.eye(d) + 0.2 * rng.standard_normal((d, d))
    Xstar = np.diag([1.5, 0.7])
    B = Xstar @ A
    M = ObservableQuotient(d, N)
    problem = _regression(M, A, B)
    sched = geometric(1.0, 0.8, t_min=1e-10)
    res = FreeEnergyDescent(schedule=sched, max_iterations=600, min_gradient_norm=1e-9).run(
        problem, initial_point=np.eye(d)
    )
    recs = res.log["records"]
    assert recs[0]["T"] == 1.0 and recs[-1]["T"] == 0.0
    np.testing.assert_allclose(res.point, Xstar, atol=1e-6)
    # the run did not stop while T was still moving
    assert "min grad norm" in res.stopping_criterion or "step" in res.stopping_criterion


def test_balanced_manifold_agrees_with_quotient():
    """F on the balanced manifold (S of phi(W), chain rule) has the quotient's minimiser."""
    y = np.array([1.8, 0.6])
    N, T = 2, 0.25
    Mb = BalancedManifold(2, N)
    problem = _spectral_target(Mb, y)
    W0 = Mb.balanced_from(np.diag(y))
    res = FreeEnergyDescent(T, max_iterations=300, min_gradient_norm=1e-10).run(
        problem, initial_point=W0
    )
    s = np.linalg.svd(_e2e(res.point), compute_uv=False)
    np.testing.assert_allclose(s, _solve_reduction(y, T, N), rtol=1e-6)
    assert Mb.is_on_manifold(res.point)


# ----------------------------------------------------------------------------- API, errors


def test_callback_stops_and_receives_records():
    M = ObservableQuotient(2, 2)
    problem = _spectral_target(M, np.array([1.0, 0.5]))
    seen = []

    def cb(it, x, rec):
        seen.append((it, rec["T"], rec["step_size"]))
        return it >= 3

    res = FreeEnergyDescent(0.1, max_iterations=50).run(
        problem, initial_point=np.eye(2), callback=cb
    )
    assert res.iterations == 3 and "callback" in res.stopping_criterion
    assert [s[0] for s in seen] == [1, 2, 3]


def test_bad_input():
    with pytest.raises(ValueError, match=">= 0"):
        FreeEnergyDescent(-0.1)
    with pytest.raises(ValueError):
        FreeEnergyDescent(float("nan"))
    # no entropy on a plain manifold and T > 0
    sphere = pymanopt.manifolds.Sphere(3)

    @pymanopt.function.autograd(sphere)
    def c(x):
        return anp.sum(x)

    with pytest.raises(TypeError, match="entropy needs"):
        FreeEnergyDescent(0.5, max_iterations=3).run(pymanopt.Problem(sphere, c))
    # T = 0 works there
    FreeEnergyDescent(0.0, max_iterations=3).run(pymanopt.Problem(sphere, c))
    # non-finite cost names the iteration
    M = ObservableQuotient(2, 2)
    calls = {"n": 0}

    @pymanopt.function.autograd(M)
    def bad(X):
        calls["n"] += 1
        return anp.sum(X**2) * (np.nan if calls["n"] > 3 else 1.0)

    with pytest.raises(ValueError, match="non-finite .* at iteration"):
        FreeEnergyDescent(0.1, max_iterations=20).run(
            pymanopt.Problem(M, bad), initial_point=np.eye(2)
        )


def test_torch_quotient_keeps_device_and_dtype():
    import thermanopt.function

    M = ObservableQuotient(2, 2, backend="torch")
    Y = torch.diag(torch.tensor([1.5, 0.5], dtype=torch.float64))

    @thermanopt.function.torch(M)
    def cost(X):
        return 0.5 * torch.sum((X - Y) ** 2)

    res = FreeEnergyDescent(0.2, max_iterations=200, min_gradient_norm=1e-9).run(
        pymanopt.Problem(M, cost), initial_point=torch.eye(2, dtype=torch.float64)
    )
    assert isinstance(res.point, torch.Tensor) and res.point.dtype == torch.float64
    s = torch.linalg.svdvals(res.point).numpy()
    np.testing.assert_allclose(s, _solve_reduction(np.array([1.5, 0.5]), 0.2, 2), rtol=1e-6)
    assert dln_entropy_gradient(res.point, 2).dtype == torch.float64


def test_line_search_steps_back_from_rank_deficient_trial_points():
    """A trial point with S = -inf (two vanishing singular values) has F = +inf:
    the Armijo search must reject it instead of raising (regression: T = 0.2 from I)."""
    import torch

    import thermanopt.function

    m = ObservableQuotient(3, 3, backend="torch")
    Y = torch.as_tensor(np.diag([2.0, 1.0, 0.4]))

    @thermanopt.function.torch(m)
    def energy(X):
        return 0.5 * ((X - Y) ** 2).sum()

    res = FreeEnergyDescent(0.2, max_iterations=200, min_gradient_norm=1e-9).run(
        pymanopt.Problem(m, energy), initial_point=torch.eye(3, dtype=torch.float64)
    )
    s = torch.linalg.svdvals(res.point)
    assert bool((s > 0.4).all()) and res.gradient_norm < 1e-5
