"""Our diagnostics return slopes that tell right from wrong."""

import numpy as np
import pymanopt
import pytest

from thermanopt.diagnostics import check_gradient, check_hessian, check_retraction, fit_slope
from thermanopt.manifolds import Sphere


def _problem(backend, wrong_gradient=False, wrong_hessian=False):
    m = Sphere(7, backend=backend)
    rng = np.random.default_rng(0)
    A0 = rng.standard_normal((7, 7))
    A = m.spec.asarray(A0 + A0.T)

    @pymanopt.function.numpy(m)
    def cost(x):
        return float((x @ A @ x).sum()) if backend == "numpy" else float(x @ A @ x)

    @pymanopt.function.numpy(m)
    def egrad(x):
        return (2.2 if wrong_gradient else 2.0) * (A @ x)

    @pymanopt.function.numpy(m)
    def ehess(x, u):
        return (2.5 if wrong_hessian else 2.0) * (A @ u)

    return m, pymanopt.Problem(m, cost, euclidean_gradient=egrad, euclidean_hessian=ehess)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_gradient_check(backend, tmp_path):
    m, p = _problem(backend)
    res = check_gradient(p, generator=1, plot=str(tmp_path / "g.png"))
    assert res.ok and abs(res.slope - 2) < 0.05
    assert (tmp_path / "g.png").exists()
    assert res.extra["tangency_error"] < 1e-12
    _, bad = _problem(backend, wrong_gradient=True)
    res = check_gradient(bad, generator=1)
    assert not res.ok and abs(res.slope - 1) < 0.1


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_hessian_check(backend):
    m, p = _problem(backend)
    res = check_hessian(p, generator=2)
    assert res.ok and abs(res.slope - 3) < 0.1
    assert res.extra["symmetry_error"] < 1e-12 and res.extra["linearity_error"] < 1e-12
    _, bad = _problem(backend, wrong_hessian=True)
    assert not check_hessian(bad, generator=2).ok


def test_retraction_check_orders():
    m = Sphere(5)
    assert abs(check_retraction(m, generator=0).slope - 3) < 0.1  # vs exp: second order

    def first_order(x, v):  # a first-order but not second-order retraction
        y = x + v + 0.3 * np.linalg.norm(v) * np.roll(v, 1)
        return y / np.linalg.norm(y)

    assert abs(check_retraction(m, retraction=first_order, generator=0).slope - 2) < 0.15


def test_fit_slope_exact_and_noisy():
    t = np.logspace(-8, -1, 30)
    slope, _, exact = fit_slope(t, 3 * t**2, floor=1e-30)
    assert abs(slope - 2) < 1e-9 and not exact
    assert fit_slope(t, np.zeros_like(t), floor=1e-16)[2]
