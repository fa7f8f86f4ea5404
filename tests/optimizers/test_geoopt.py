"""as_geoopt adapters and the ThermalRiemannianSGD torch optimizer."""

import math

import geoopt
import numpy as np
import pytest
import torch

from thermanopt.entropy import EntropyModel
from thermanopt.manifolds import BalancedManifold, ObservableQuotient, Sphere, as_geoopt
from thermanopt.optimizers.torch_optim import ThermalRiemannianSGD

f64 = torch.float64


@pytest.fixture
def balanced():
    return BalancedManifold(3, 3, backend="torch")


def test_adapter_matches_manifold_balanced(balanced):
    M = as_geoopt(balanced)
    assert isinstance(M, geoopt.Manifold) and M.shape == (3, 3, 3)
    W = balanced.random_point(0)
    E = torch.randn(3, 3, 3, dtype=f64, generator=torch.Generator().manual_seed(1))
    V = balanced.projection(W, E)
    torch.testing.assert_close(M.proju(W, E), V)
    torch.testing.assert_close(M.egrad2rgrad(W, E), balanced.euclidean_to_riemannian_gradient(W, E))
    inner = M.inner(W, V, E)
    assert isinstance(inner, torch.Tensor) and inner.ndim == 0
    assert math.isclose(float(inner), balanced.inner_product(W, V, E), rel_tol=1e-12)
    assert M.component_inner(W, V).shape == (1, 1, 1)
    ok, reason = M.check_point_on_manifold(W, explain=True)
    assert ok, reason
    assert not M.check_point_on_manifold(W + 0.1 * E)
    assert M.check_vector_on_tangent(W, V) and not M.check_vector_on_tangent(W, E)
    Y = M.retr(W, 0.1 * V)
    balanced.check_point(Y)
    torch.testing.assert_close(M.transp(W, Y, V), balanced.projection(Y, V))
    with pytest.raises(ValueError, match="shape"):
        geoopt.ManifoldParameter(torch.zeros(2, 3, 3, dtype=f64), manifold=M)


def test_projx_restores_balance_and_keeps_end_to_end(balanced):
    W = balanced.random_point(2)
    P = as_geoopt(balanced).projx(W)
    torch.testing.assert_close(P, W, atol=1e-12, rtol=0)  # a balanced point is fixed
    noise = 1e-3 * torch.randn(W.shape, dtype=f64, generator=torch.Generator().manual_seed(3))
    Wp = W + noise
    P = as_geoopt(balanced).projx(Wp)
    balanced.check_point(P)
    torch.testing.assert_close(balanced.end_to_end(P), balanced.end_to_end(Wp))
    assert float(torch.linalg.norm(P - W)) < 10 * float(torch.linalg.norm(noise))


def test_adapter_quotient_metric_and_sphere():
    q = ObservableQuotient(3, 3, backend="torch")
    M = as_geoopt(q)
    X = q.random_point(0)
    Z1, Z2 = torch.randn(2, 3, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    assert math.isclose(float(M.inner(X, Z1, Z2)), q.inner_product(X, Z1, Z2), rel_tol=1e-12)
    torch.testing.assert_close(M.projx(X), X)
    s = as_geoopt(Sphere(5, backend="torch"))
    x = torch.randn(5, dtype=f64)
    torch.testing.assert_close(torch.linalg.norm(s.projx(x)), torch.tensor(1.0, dtype=f64))
    with pytest.raises(TypeError, match="thermanopt manifold"):
        as_geoopt(object())


@pytest.mark.parametrize("opt_cls", [geoopt.optim.RiemannianSGD, geoopt.optim.RiemannianAdam])
def test_geoopt_optimizers_train_on_quotient(opt_cls):
    d, N = 3, 3
    q = ObservableQuotient(d, N, backend="torch")
    Xs = torch.diag(torch.tensor([1.5, 1.0, 0.6], dtype=f64))
    X = geoopt.ManifoldParameter(torch.eye(d, dtype=f64), manifold=as_geoopt(q))
    opt = opt_cls([X], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = 0.5 * ((X - Xs) ** 2).sum()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 1e-6


def test_thermal_sgd_langevin_von_mises_fisher_on_sphere():
    """2000 chains on S^2 with E = -kappa x_3 at T' = 1: E[x_3] = coth kappa - 1/kappa."""
    kappa, chains = 2.0, 2000
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(chains, 3, dtype=f64, generator=gen)
    sphere = as_geoopt(Sphere(3, backend="torch"))  # a batch of points: leading axis
    x = geoopt.ManifoldParameter(x0 / x0.norm(dim=-1, keepdim=True), manifold=sphere)
    opt = ThermalRiemannianSGD([x], lr=0.02, noise_temperature=1.0, generator=1)
    for _ in range(400):
        opt.zero_grad()
        (-kappa * x[:, 2]).sum().backward()
        opt.step()
    exact = 1 / math.tanh(kappa) - 1 / kappa
    assert abs(float(x.detach()[:, 2].mean()) - exact) < 0.04  # MC error ~ 0.013
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(chains, dtype=f64))


def test_thermal_sgd_entropy_regularisation_on_balanced(balanced):
    """Stationary point of loss - T S_N(phi(W)) on the balanced manifold: grad = T grad S."""
    T = 0.05
    Xs = torch.diag(torch.tensor([1.4, 1.0, 0.5], dtype=f64))
    M = as_geoopt(balanced)
    W = geoopt.ManifoldParameter(balanced.balanced_from(torch.eye(3, dtype=f64)), manifold=M)
    opt = ThermalRiemannianSGD([W], lr=0.2, momentum=0.3, temperature=T)
    for _ in range(200):
        opt.zero_grad()
        loss = 0.5 * ((balanced.end_to_end(W) - Xs) ** 2).sum()
        loss.backward()
        opt.step()
    balanced.check_point(W.detach())
    W_ = W.detach().requires_grad_(True)
    (0.5 * ((balanced.end_to_end(W_) - Xs) ** 2).sum()).backward()
    g = balanced.projection(W_.detach(), W_.grad)
    gS = EntropyModel(balanced).riemannian_gradient(W_.detach())
    assert float(torch.linalg.norm(g - T * gS)) < 1e-7 * float(torch.linalg.norm(g))
    assert float(torch.linalg.norm(g)) > 1e-3


def test_thermal_sgd_errors():
    q = ObservableQuotient(2, 2, backend="torch")
    X = geoopt.ManifoldParameter(torch.eye(2, dtype=f64), manifold=as_geoopt(q))
    with pytest.raises(ValueError, match="temperature"):
        ThermalRiemannianSGD([X], lr=0.1, temperature=-1)
    with pytest.raises(ValueError, match="lr"):
        ThermalRiemannianSGD([X], lr=0.0)
    opt = ThermalRiemannianSGD([X], lr=0.1, noise_temperature=0.5)
    (X * X).sum().backward()
    with pytest.raises(ValueError, match="metric"):
        opt.step()
    opt = ThermalRiemannianSGD([X], lr=0.1)
    X.grad = torch.full_like(X, float("nan"))
    with pytest.raises(ValueError, match="non-finite gradient at step 1"):
        opt.step()
    e = torch.nn.Parameter(torch.ones(3, dtype=f64))
    opt = ThermalRiemannianSGD([e], lr=0.1, temperature=0.1)
    e.grad = torch.ones(3, dtype=f64)
    with pytest.raises(TypeError, match="entropy"):
        opt.step()


def test_thermal_sgd_plain_parameter_matches_sgd():
    a = torch.nn.Parameter(torch.arange(4.0, dtype=f64))
    b = torch.nn.Parameter(torch.arange(4.0, dtype=f64))
    o1 = ThermalRiemannianSGD([a], lr=0.1, momentum=0.9)
    o2 = torch.optim.SGD([b], lr=0.1, momentum=0.9)
    for _ in range(5):
        for p, o in ((a, o1), (b, o2)):
            o.zero_grad()
            ((p - 1.0) ** 4).sum().backward()
            o.step()
    torch.testing.assert_close(a, b)
    assert np.isfinite(a.detach().numpy()).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_adapter_balanced():
    m = BalancedManifold(4, 3, backend="torch", device="cuda")
    M = as_geoopt(m)
    W = geoopt.ManifoldParameter(m.random_point(0), manifold=M)
    opt = geoopt.optim.RiemannianAdam([W], lr=1e-2)
    target = torch.eye(4, dtype=f64, device="cuda") * 1.2
    for _ in range(50):
        opt.zero_grad()
        ((m.end_to_end(W) - target) ** 2).sum().backward()
        opt.step()
    assert W.device.type == "cuda"
    m.check_point(W.detach())


@pytest.mark.slow
def test_geoopt_rsgld_samples_the_free_energy_law_on_the_balanced_manifold():
    """geoopt's unmodified RSGLD on as_geoopt(BalancedManifold(2, 2)), E = |phi(W)|^2 / 2, T = 1.

    RSGLD steps retr(W, egrad2rgrad(W, (eps/2) grad log p + sqrt(eps) xi)): with the tangent
    projection and the second-order retraction that ``as_geoopt`` provides (and
    ``reversible``, which geoopt's samplers require) it is the balanced Langevin chain, so the
    singular values of phi(W) follow exp(-(E - T S_2)/T) dvol_{g_2} (quadrature as in
    tests/optimizers/test_langevin.py).
    """
    from scipy import stats
    from test_langevin import _gaussian_start, _marginals  # same folder: on sys.path

    from thermanopt.manifolds import balanced_from, end_to_end

    N, chains, h, steps = 2, 1500, 0.01, 300
    M = as_geoopt(BalancedManifold(2, N, backend="torch"))
    assert M.reversible and not as_geoopt(ObservableQuotient(2, N, backend="torch")).reversible
    W = geoopt.ManifoldParameter(
        torch.as_tensor(balanced_from(_gaussian_start(chains), None, N)), manifold=M
    )
    torch.manual_seed(0)
    sampler = geoopt.samplers.RSGLD([W], epsilon=2 * h)

    def closure():
        sampler.zero_grad()
        return -0.5 * (end_to_end(W) ** 2).sum()

    kept = []
    for k in range(steps):
        sampler.step(closure)
        if k >= steps // 3 and k % 10 == 0:
            kept.append(torch.linalg.svdvals(end_to_end(W.detach())))
    sv = torch.stack(kept).numpy()
    c1, c2, m1, m2 = _marginals(N)
    per_chain = sv.mean(0)  # time averages: independent across chains
    assert abs(per_chain[:, 0].mean() / m1 - 1) < 0.02
    assert abs(per_chain[:, 1].mean() / m2 - 1) < 0.04  # standard error ~1.5 % here
    assert stats.kstest(sv[-1, :, 0], c1).pvalue > 1e-3
    assert stats.kstest(sv[-1, :, 1], c2).pvalue > 1e-3
    d1, d2, _, _ = _marginals(N, entropy_power=0.0)  # without the entropy: rejected
    assert min(stats.kstest(sv[-1, :, 0], d1).pvalue, stats.kstest(sv[-1, :, 1], d2).pvalue) < 1e-5
    assert M.step_rule.rescues == 0
