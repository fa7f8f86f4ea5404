"""RiemannianSGD / RiemannianAdam: convergence, entropy regularisation, Langevin noise, errors."""

import math

import numpy as np
import pytest
import torch
from pymanopt.manifolds import Sphere, Stiefel

from thermanopt.entropy import EntropyModel
from thermanopt.manifolds import BalancedManifold, ObservableQuotient
from thermanopt.optimizers import (
    RiemannianAdam,
    RiemannianSGD,
    StochasticProblem,
    cosine,
    inverse_time,
    step_decay,
)


def _pca_problem(manifold, n=8, m=240, batch=24, seed=0):
    """Finite sum f(X) = -mean_i |a_i^T X|^2 / 2 (leading subspace of A^T A / m)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n)) * np.linspace(2.0, 0.5, n)
    C = A.T @ A / m

    def cost(X, b):
        return -0.5 * np.mean(np.sum((A[b] @ X) ** 2, axis=-1))

    def egrad(X, b):
        Ab = A[b]
        return -(Ab.T @ (Ab @ X)) / len(b)

    return StochasticProblem(manifold, cost, m, batch, euclidean_gradient=egrad), C


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda: RiemannianSGD(inverse_time(0.05, 0.005), momentum=0.9, generator=0),
        lambda: RiemannianSGD(cosine(0.05, 2000), momentum=0.5, nesterov=True, generator=0),
        lambda: RiemannianAdam(cosine(0.02, 2000), generator=0),
        lambda: RiemannianAdam(cosine(0.02, 2000), adaptivity="elementwise", generator=0),
    ],
)
def test_converges_on_pymanopt_sphere(make_opt):
    n = 8
    manifold = Sphere(n)
    problem, C = _pca_problem(manifold, n)
    top = np.linalg.eigh(C)[1][:, -1]
    opt = make_opt()
    opt._max_iterations = 2000
    x0 = np.ones(n) / math.sqrt(n)
    result = opt.run(problem, initial_point=x0)
    assert abs(result.point @ top) > 1 - 1e-3
    assert abs(np.linalg.norm(result.point) - 1) < 1e-12


@pytest.mark.parametrize("adam", [False, True])
def test_converges_on_pymanopt_stiefel(adam):
    n, p = 8, 2
    manifold = Stiefel(n, p)
    problem, C = _pca_problem(manifold, n)
    top = np.linalg.eigh(C)[1][:, -p:]
    opt = (
        RiemannianAdam(cosine(0.02, 2000), generator=1, max_iterations=2000)
        if adam
        else RiemannianSGD(cosine(0.03, 2000), momentum=0.5, generator=1, max_iterations=2000)
    )
    X0 = np.linalg.qr(np.random.default_rng(3).standard_normal((n, p)))[0]
    X = opt.run(problem, initial_point=X0).point
    # principal angles between span(X) and the top-p eigenspace
    cosines = np.linalg.svd(top.T @ X, compute_uv=False)
    assert cosines.min() > 1 - 1e-3
    assert np.allclose(X.T @ X, np.eye(p), atol=1e-10)


def _regression(d, depth, backend, n=96, batch=16, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((d, d)))
    V, _ = np.linalg.qr(rng.standard_normal((d, d)))
    if np.linalg.det(U @ V.T) < 0:
        U[:, 0] *= -1
    Xs = (U * np.linspace(1.5, 0.7, d)) @ V.T
    x = rng.standard_normal((n, d))
    y = x @ Xs.T
    if backend == "torch":
        x, y, Xs = (torch.as_tensor(a, dtype=getattr(torch, dtype)) for a in (x, y, Xs))

    def cost(X, b):
        r = x[b] @ X.T - y[b]
        return 0.5 * (r * r).sum(-1).mean()

    return cost, Xs, n


@pytest.mark.parametrize("adam", [False, True])
def test_converges_on_observable_quotient_torch(adam):
    d, N = 4, 3
    manifold = ObservableQuotient(d, N, backend="torch")
    cost, Xs, n = _regression(d, N, "torch")
    problem = StochasticProblem(manifold, cost, n, batch_size=16)
    X0 = 0.7 * torch.eye(d, dtype=torch.float64)
    opt = (
        RiemannianAdam(0.03, adaptivity="elementwise", generator=0, max_iterations=500)
        if adam
        else RiemannianSGD(0.05, generator=0, max_iterations=500)
    )
    result = opt.run(problem, initial_point=X0)
    assert isinstance(result.point, torch.Tensor)
    assert float(torch.linalg.norm(result.point - Xs)) < 2e-2


@pytest.mark.parametrize(
    "make",
    [
        lambda: RiemannianSGD(0.05, generator=0, max_iterations=7),
        lambda: RiemannianSGD(0.05, momentum=0.9, generator=0, max_iterations=7),
        lambda: RiemannianAdam(0.03, generator=0, max_iterations=7),
        lambda: RiemannianAdam(0.03, adaptivity="elementwise", generator=0, max_iterations=7),
    ],
)
def test_one_svd_per_quotient_step(make, monkeypatch):
    """The step rule's regularity test computes the new point's SVD; the gradient conversion,
    the metric (Adam "norm"), the transport and the retraction at that point reuse it."""
    import thermanopt.manifolds.observable as observable

    calls = []
    svd = observable.svd
    monkeypatch.setattr(observable, "svd", lambda X: calls.append(1) or svd(X))
    d, N = 4, 4
    manifold = ObservableQuotient(d, N, backend="torch")
    cost, Xs, n = _regression(d, N, "torch")
    problem = StochasticProblem(manifold, cost, n, batch_size=16)
    make().run(problem, initial_point=0.7 * torch.eye(d, dtype=torch.float64))
    assert len(calls) == 7 + 1  # the start's SVD, then one per step


def test_converges_on_balanced_manifold():
    d, N = 3, 3
    manifold = BalancedManifold(d, N, backend="torch")
    cost0, Xs, n = _regression(d, N, "torch")
    problem = StochasticProblem(manifold, lambda W, b: cost0(W[2] @ W[1] @ W[0], b), n, 32)
    W0 = manifold.balanced_from(0.8 * torch.eye(d, dtype=torch.float64))
    result = RiemannianSGD(0.1, momentum=0.5, generator=0, max_iterations=150).run(
        problem, initial_point=W0
    )
    W = result.point
    manifold.check_point(W)  # still balanced
    assert float(torch.linalg.norm(W[2] @ W[1] @ W[0] - Xs)) < 1e-2


def test_full_batch_sgd_is_gradient_descent():
    """Batch size None: the iterates are x_{k+1} = R(x_k - h grad f(x_k)) exactly."""
    manifold = Sphere(5)
    problem, _ = _pca_problem(manifold, 5, batch=None)
    x = np.ones(5) / math.sqrt(5)
    h = 0.1
    ref = x.copy()
    for _ in range(7):
        g = manifold.euclidean_to_riemannian_gradient(ref, problem.euclidean_gradient(ref))
        ref = manifold.retraction(ref, -h * g)
    out = RiemannianSGD(h, max_iterations=7).run(problem, initial_point=x).point
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-15)


def test_entropy_gradient_balanced_matches_finite_differences():
    from thermanopt.entropy import dln_entropy

    manifold = BalancedManifold(3, 3)
    W = manifold.random_point(0)
    V = manifold.random_tangent_vector(W, 1)
    g = EntropyModel(manifold).riemannian_gradient(W)
    t = 1e-5
    fd = (
        dln_entropy(manifold.end_to_end(W + t * V), 3)
        - dln_entropy(manifold.end_to_end(W - t * V), 3)
    ) / (2 * t)
    assert abs(np.sum(g * V) - fd) < 1e-7 * max(1.0, abs(fd))
    np.testing.assert_allclose(manifold.projection(W, g), g, atol=1e-12)  # tangent


def test_entropy_regularisation_reaches_free_energy_stationary_point():
    """Full-batch RSGD with T > 0 on the quotient stops where grad E = T grad S."""
    from thermanopt.entropy import dln_entropy

    d, N, T = 3, 3, 0.05
    manifold = ObservableQuotient(d, N, backend="torch")
    Xs = torch.diag(torch.tensor([1.5, 1.0, 0.4], dtype=torch.float64))

    def cost(X, b):
        return 0.5 * ((X - Xs) ** 2).sum()

    problem = StochasticProblem(manifold, cost, 1)
    X0 = torch.eye(d, dtype=torch.float64)
    out = {}
    for temp in (0.0, T):
        opt = RiemannianSGD(0.15, temperature=temp, max_iterations=500)
        out[temp] = opt.run(problem, initial_point=X0).point
    X = out[T]
    gE = manifold.euclidean_to_riemannian_gradient(X, X - Xs)
    gS = EntropyModel(manifold).riemannian_gradient(X)
    assert float(torch.linalg.norm(gE - T * gS)) < 1e-8 * float(torch.linalg.norm(gE))
    assert float(torch.linalg.norm(gE)) > 1e-3  # the entropy force is really acting
    assert float(dln_entropy(X, N)) > float(dln_entropy(out[0.0], N))


@pytest.mark.slow
def test_langevin_noise_samples_von_mises_fisher_on_sphere():
    """E = -kappa x_3 on S^2 at T = 1: E[x_3] = coth(kappa) - 1/kappa (and not at 2T)."""
    kappa = 2.0
    manifold = Sphere(3)
    e3 = np.array([0.0, 0.0, 1.0])

    def cost(x, b):
        return -kappa * x[2]

    def egrad(x, b):
        return -kappa * e3

    problem = StochasticProblem(manifold, cost, 1, euclidean_gradient=egrad)
    samples = []

    def callback(k, x, record):
        if k >= 500:
            samples.append(x[2])

    opt = RiemannianSGD(0.03, noise_temperature=1.0, generator=0, max_iterations=15000)
    opt.run(problem, initial_point=e3.copy(), callback=callback)
    mean = np.mean(samples)
    exact = 1 / math.tanh(kappa) - 1 / kappa
    exact_2T = 1 / math.tanh(kappa / 2) - 2 / kappa  # the law at twice the temperature
    assert abs(mean - exact) < 0.03
    assert abs(mean - exact_2T) > 0.15


def test_langevin_noise_refused_on_quotient():
    manifold = ObservableQuotient(2, 2, backend="torch")
    problem = StochasticProblem(manifold, lambda X, b: (X * X).sum(), 1)
    with pytest.raises(ValueError, match="metric"):
        RiemannianSGD(0.1, noise_temperature=0.5, max_iterations=2).run(
            problem, initial_point=torch.eye(2, dtype=torch.float64)
        )


def test_schedules_and_log():
    manifold = Sphere(4)
    problem, _ = _pca_problem(manifold, 4, batch=8)
    opt = RiemannianSGD(step_decay(0.1, 0.5, 3), max_iterations=7, log_verbosity=1, generator=0)
    res = opt.run(problem, initial_point=np.ones(4) / 2)
    assert res.log["iterations"]["step_size"] == [0.1] * 3 + [0.05] * 3 + [0.025]
    assert res.iterations == 7
    stop = RiemannianSGD(0.1, max_iterations=100).run(
        problem, initial_point=np.ones(4) / 2, callback=lambda k, x, r: k == 4
    )
    assert stop.iterations == 5 and "callback" in stop.stopping_criterion


def test_bad_input():
    manifold = Sphere(4)
    problem, _ = _pca_problem(manifold, 4, batch=8)
    x0 = np.ones(4) / 2
    with pytest.raises(ValueError, match="temperature"):
        RiemannianSGD(0.1, temperature=-1.0)
    with pytest.raises(ValueError, match="step_size"):
        RiemannianSGD(0.0)
    with pytest.raises(ValueError, match="step_size"):
        RiemannianAdam(-1e-3)
    with pytest.raises(ValueError, match="iteration 3"):
        RiemannianSGD(lambda k: 0.1 if k < 3 else -1.0, max_iterations=10).run(
            problem, initial_point=x0
        )
    with pytest.raises(ValueError, match="StochasticProblem"):
        RiemannianSGD(0.1).run(object())

    calls = {"n": 0}

    def bad_egrad(x, b):
        calls["n"] += 1
        return np.full(4, np.nan) if calls["n"] == 4 else -x

    bad = StochasticProblem(manifold, lambda x, b: 0.0, 1, euclidean_gradient=bad_egrad)
    with pytest.raises(ValueError, match="non-finite .* iteration 3"):
        RiemannianSGD(0.1, max_iterations=10).run(bad, initial_point=x0)

    # torch: NaN found at the periodic check, naming the first bad iteration
    q = ObservableQuotient(2, 2, backend="torch")

    def nan_cost(X, b):
        return (X * X).sum() * (float("nan") if nan_cost.k >= 5 else 1.0)

    nan_cost.k = 0

    def counting(X, b):
        nan_cost.k += 1
        return nan_cost(X, b)

    tp = StochasticProblem(q, counting, 1)
    with pytest.raises(ValueError, match="iteration 4"):
        RiemannianSGD(0.01, max_iterations=40, check_every=10).run(
            tp, initial_point=torch.eye(2, dtype=torch.float64)
        )
    # mismatched array type / dtype
    with pytest.raises(ValueError, match="tensor|NumPy"):
        RiemannianSGD(0.1, max_iterations=2).run(tp, initial_point=np.eye(2))
    q32 = ObservableQuotient(2, 2, backend="torch", dtype=torch.float64)
    tp32 = StochasticProblem(q32, lambda X, b: (X * X).sum(), 1)
    with pytest.raises(ValueError, match="dtype"):
        RiemannianSGD(0.1, max_iterations=2).run(
            tp32, initial_point=torch.eye(2, dtype=torch.float32)
        )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_quotient_sgd_stays_on_device():
    d, N = 4, 3
    manifold = ObservableQuotient(d, N, backend="torch", device="cuda")
    Xs = torch.eye(d, dtype=torch.float64, device="cuda") * 1.3
    x = torch.randn(64, d, dtype=torch.float64, device="cuda")
    y = x @ Xs.T
    problem = StochasticProblem(
        manifold, lambda X, b: 0.5 * ((x[b] @ X.T - y[b]) ** 2).sum(-1).mean(), 64, 16
    )
    res = RiemannianAdam(0.03, generator=0, max_iterations=300).run(
        problem, initial_point=torch.eye(d, dtype=torch.float64, device="cuda")
    )
    assert res.point.device.type == "cuda"
    assert float(torch.linalg.norm(res.point - Xs)) < 0.05


def test_steps_that_overflow_are_rescued_and_counted():
    """A huge step overflows phi(W + V): the step rule halves it, counts it, stays on M."""
    d, N = 3, 3
    manifold = BalancedManifold(d, N, backend="torch")
    cost0, Xs, n = _regression(d, N, "torch")
    problem = StochasticProblem(manifold, lambda W, b: cost0(W[2] @ W[1] @ W[0], b), n, 32)
    W0 = manifold.balanced_from(0.8 * torch.eye(d, dtype=torch.float64))
    opt = RiemannianSGD(lambda k: 1e120 if k == 2 else 0.05, max_iterations=20, generator=0)
    res = opt.run(problem, initial_point=W0)
    assert res.log["rescues"] == 1
    manifold.check_point(res.point)


def test_float32_quotient_run_keeps_dtype():
    d, N = 3, 3
    manifold = ObservableQuotient(d, N, backend="torch", dtype=torch.float32)
    cost, Xs, n = _regression(d, N, "torch", dtype="float32")
    problem = StochasticProblem(manifold, cost, n, batch_size=None)
    res = RiemannianSGD(0.1, max_iterations=200).run(problem, initial_point=0.8 * torch.eye(d))
    assert res.point.dtype == torch.float32
    assert float(torch.linalg.norm(res.point - Xs)) < 1e-4
