"""The device-native torch backend drives Pymanopt's unmodified solvers."""

import numpy as np
import pymanopt
import pytest
import torch
from pymanopt.optimizers import ConjugateGradient, SteepestDescent, TrustRegions

import thermanopt.function
from thermanopt.manifolds import Sphere

N = 12


def _matrix(seed=0):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((N, N))
    return (B + B.T) / 2


def _solvers():
    return [
        SteepestDescent(verbosity=0, max_iterations=3000, min_gradient_norm=1e-9),
        ConjugateGradient(verbosity=0, max_iterations=3000, min_gradient_norm=1e-9),
        TrustRegions(verbosity=0, max_iterations=200, min_gradient_norm=1e-9),
    ]


def _numpy_solution(solver, A, x0):
    manifold = Sphere(N)
    An = A

    @pymanopt.function.autograd(manifold)
    def cost(x):
        return -x @ An @ x

    return solver.run(pymanopt.Problem(manifold, cost), initial_point=x0).point


@pytest.fixture
def forbid_host_copies(monkeypatch):
    """Make every tensor -> NumPy conversion fail (emulates CUDA tensors on CPU)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was moved to the host inside the solve")

    monkeypatch.setattr(torch.Tensor, "numpy", refuse)
    monkeypatch.setattr(torch.Tensor, "__array__", refuse)
    monkeypatch.setattr(torch.Tensor, "tolist", refuse)
    yield


def _run_torch(solver, A, x0, device="cpu"):
    manifold = Sphere(N, backend="torch", device=device)
    At = torch.as_tensor(A, device=device)

    @thermanopt.function.torch(manifold)
    def cost(x):
        return -x @ At @ x

    return solver.run(
        pymanopt.Problem(manifold, cost), initial_point=torch.as_tensor(x0, device=device)
    )


@pytest.mark.parametrize("index", [0, 1, 2], ids=["SD", "CG", "TR"])
def test_solvers_match_numpy_autograd(index):
    A = _matrix()
    x0 = Sphere(N).random_point(generator=5)
    lam, vecs = np.linalg.eigh(A)
    x_np = _numpy_solution(_solvers()[index], A, x0)
    result = _run_torch(_solvers()[index], A, x0)
    x_t = result.point
    assert isinstance(x_t, torch.Tensor) and x_t.dtype == torch.float64
    assert isinstance(result.cost, float)
    np.testing.assert_allclose(x_t.numpy(), x_np, atol=1e-6)
    # and both reach the leading eigenvector
    v = vecs[:, -1] * np.sign(vecs[:, -1] @ x_np)
    np.testing.assert_allclose(x_np, v, atol=1e-6)
    assert abs(result.cost + lam[-1]) < 1e-10


@pytest.mark.parametrize("index", [0, 1, 2], ids=["SD", "CG", "TR"])
def test_no_host_transfer_inside_iterations(index, forbid_host_copies):
    A = _matrix(1)
    x0 = Sphere(N, backend="torch").random_point(generator=3)
    result = _run_torch(_solvers()[index], A, x0.clone())
    assert abs(result.cost + np.linalg.eigvalsh(A)[-1]) < 1e-9


def test_gradient_and_hessian_operators_match_closed_form():
    manifold = Sphere(N, backend="torch")
    At = torch.as_tensor(_matrix(2))

    @thermanopt.function.torch(manifold)
    def cost(x):
        return -x @ At @ x

    problem = pymanopt.Problem(manifold, cost)
    x = manifold.random_point(generator=0)
    u = manifold.random_tangent_vector(x, generator=1)
    torch.testing.assert_close(problem.euclidean_gradient(x), -2 * At @ x)
    torch.testing.assert_close(problem.euclidean_hessian(x, u), -2 * At @ u)


def test_multiple_arguments_and_unused_argument():
    from pymanopt.manifolds import Product

    s1, s2 = Sphere(3, backend="torch"), Sphere(4, backend="torch")
    manifold = Product([s1, s2])

    @thermanopt.function.torch(manifold)
    def cost(x, y):
        return (x**3).sum()

    grad = cost.get_gradient_operator()
    hess = cost.get_hessian_operator()
    x, y = s1.random_point(0), s2.random_point(1)
    gx, gy = grad(x, y)
    torch.testing.assert_close(gx, 3 * x**2)
    assert torch.count_nonzero(gy) == 0
    hx, hy = hess(x, y, torch.ones(3, dtype=x.dtype), torch.ones(4, dtype=x.dtype))
    torch.testing.assert_close(hx, 6 * x)
    assert torch.count_nonzero(hy) == 0


def test_one_evaluation_per_point_and_in_place_changes_are_noticed():
    """Cost, gradient and Hessian-vector products at one point share one evaluation; a
    new point, or an in-place change of the point or of a returned gradient, recomputes."""
    manifold = Sphere(N, backend="torch")
    At = torch.as_tensor(_matrix(3))
    calls = {"n": 0}

    @thermanopt.function.torch(manifold)
    def cost(x):
        calls["n"] += 1
        return -x @ At @ x

    grad, hess = cost.get_gradient_operator(), cost.get_hessian_operator()
    x = manifold.random_point(generator=0)
    us = [manifold.random_tangent_vector(x, generator=k) for k in range(4)]
    for u in us:
        torch.testing.assert_close(hess(x, u), -2 * At @ u)
    assert calls["n"] == 1  # one forward + create_graph backward for all products
    torch.testing.assert_close(grad(x), -2 * At @ x)
    assert cost(x) == pytest.approx(float(-x @ At @ x))
    assert calls["n"] == 1  # gradient and cost from the same graph
    y = manifold.random_point(generator=5)
    cost(y)
    g = grad(y)
    assert calls["n"] == 3  # cost (no graph), then the gradient's forward
    cost(y)
    assert calls["n"] == 3
    g.mul_(0.0)  # a caller modifies the returned gradient in place
    torch.testing.assert_close(grad(y), -2 * At @ y)
    with torch.no_grad():
        y.mul_(-1.0)  # the point itself changes in place
    assert cost(y) == pytest.approx(float(-y @ At @ y))
    torch.testing.assert_close(grad(y), -2 * At @ y)
    torch.testing.assert_close(hess(y, us[0]), -2 * At @ us[0])


def test_numpy_point_gives_clear_error():
    manifold = Sphere(N)

    @thermanopt.function.torch(manifold)
    def cost(x):
        return (x * x).sum()

    with pytest.raises(ValueError, match="not a torch tensor"):
        cost(np.ones(N))


def test_non_scalar_cost_gives_clear_error():
    manifold = Sphere(N, backend="torch")

    @thermanopt.function.torch(manifold)
    def cost(x):
        return x * 2

    with pytest.raises(ValueError, match="scalar"):
        cost(manifold.random_point(0))


@pytest.mark.cuda
@pytest.mark.parametrize("index", [0, 1, 2], ids=["SD", "CG", "TR"])
def test_solvers_on_cuda(index):
    A = _matrix()
    x0 = Sphere(N).random_point(generator=5)
    result = _run_torch(_solvers()[index], A, x0, device="cuda")
    assert result.point.device.type == "cuda"
    lam = np.linalg.eigvalsh(A)
    assert abs(result.cost + lam[-1]) < 1e-8
