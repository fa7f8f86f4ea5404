"""DeepLinear: forward = product of the factors; balanced training with geoopt stays balanced."""

import geoopt
import pytest
import torch

from thermanopt.manifolds import BalancedManifold
from thermanopt.nn import DeepLinear

f64 = torch.float64


def _data(d, n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    Xs = torch.linalg.qr(torch.randn(d, d, dtype=f64, generator=g))[0]
    if torch.linalg.det(Xs) < 0:
        Xs[:, 0] *= -1
    Xs = Xs * torch.linspace(1.5, 0.7, d, dtype=f64)
    x = torch.randn(n, d, dtype=f64, generator=g)
    return x, x @ Xs.mT


def test_forward_is_product_of_factors():
    m = DeepLinear(4, 3, balanced=False, dtype=f64, generator=0)
    W = m.weight.detach()
    x = torch.randn(5, 4, dtype=f64)
    h = x
    for p in range(3):  # W[0] is the first layer
        h = h @ W[p].mT
    torch.testing.assert_close(m(x), h)
    torch.testing.assert_close(m.end_to_end(), W[2] @ W[1] @ W[0])


def test_same_initial_function_balanced_or_not():
    a = DeepLinear(3, 4, balanced=True, dtype=f64, generator=7)
    b = DeepLinear(3, 4, balanced=False, dtype=f64, generator=7)
    torch.testing.assert_close(a.weight.detach(), b.weight.detach())
    assert isinstance(a.weight, geoopt.ManifoldParameter)
    assert not isinstance(b.weight, geoopt.ManifoldParameter)
    X0 = torch.diag(torch.tensor([2.0, 1.0, 0.5], dtype=f64))
    c = DeepLinear(3, 2, end_to_end=X0, dtype=f64)
    torch.testing.assert_close(c.end_to_end().detach(), X0)
    BalancedManifold(3, 2, backend="torch").check_point(c.weight.detach())


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: geoopt.optim.RiemannianSGD(p, lr=0.05),
        lambda p: geoopt.optim.RiemannianSGD(p, lr=0.03, momentum=0.5),
        lambda p: geoopt.optim.RiemannianAdam(p, lr=0.1),
    ],
)
def test_balanced_training_with_geoopt_stays_balanced(make_opt):
    d, N = 4, 3
    x, y = _data(d)
    m = DeepLinear(d, N, dtype=f64, end_to_end=0.8 * torch.eye(d, dtype=f64))
    opt = make_opt(m.parameters())
    first = None
    for _ in range(80):
        opt.zero_grad()
        loss = 0.5 * ((m(x) - y) ** 2).sum(-1).mean()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < 0.1 * first
    assert float(m.balance_residual()) < 1e-10
    m._base.check_point(m.weight.detach())


def test_euclidean_training_drifts_off_balance():
    d, N = 4, 3
    x, y = _data(d)
    m = DeepLinear(d, N, balanced=False, dtype=f64, end_to_end=0.8 * torch.eye(d, dtype=f64))
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        loss = 0.5 * ((m(x) - y) ** 2).sum(-1).mean()
        loss.backward()
        opt.step()
    assert float(m.balance_residual()) > 1e-4  # O(lr) drift of the balance charges


def test_float32_default_and_bad_input():
    m = DeepLinear(3, 2)
    assert m.weight.dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match="features"):
        m(torch.randn(2, 4))
    with pytest.raises(ValueError, match="float64|dtype"):
        m(torch.randn(2, 3, dtype=f64))
    with pytest.raises(ValueError, match="depth"):
        DeepLinear(3, 0)
    with pytest.raises(ValueError, match="shape"):
        DeepLinear(3, 2, end_to_end=torch.eye(4))
    with pytest.raises(ValueError, match="rank"):
        DeepLinear(3, 2, end_to_end=torch.zeros(3, 3, dtype=f64), dtype=f64)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training():
    d, N = 4, 3
    x, y = (t.cuda() for t in _data(d))
    m = DeepLinear(d, N, dtype=f64, device="cuda", end_to_end=0.8 * torch.eye(d, dtype=f64))
    opt = geoopt.optim.RiemannianAdam(m.parameters(), lr=0.03)
    for _ in range(100):
        opt.zero_grad()
        loss = 0.5 * ((m(x) - y) ** 2).sum(-1).mean()
        loss.backward()
        opt.step()
    assert m.weight.device.type == "cuda"
    assert float(m.balance_residual()) < 1e-10
