"""A user's trivial subclass of a DLN manifold behaves bit for bit like the manifold.

Optimizers, samplers and adapters call manifold methods; nothing looks at class names or
probes attributes, so ``class MyBalanced(BalancedManifold): pass`` changes nothing.
"""

from __future__ import annotations

import geoopt
import numpy as np
import pymanopt
import pytest
import torch

import thermanopt.function
from thermanopt.manifolds import BalancedManifold, ObservableQuotient, as_geoopt
from thermanopt.optimizers import (
    FreeEnergyDescent,
    RiemannianAdam,
    RiemannianLangevin,
    RiemannianSGD,
    StochasticProblem,
    ThermalRiemannianSGD,
)


class MyBalanced(BalancedManifold):
    pass


class MyQuotient(ObservableQuotient):
    pass


PAIRS = [(BalancedManifold, MyBalanced), (ObservableQuotient, MyQuotient)]
TARGET = torch.diag(torch.tensor([1.6, 1.0, 0.4], dtype=torch.float64))


def _make(cls):
    return cls(3, 3, backend="torch")


def _cost(manifold):
    def cost(x, batch=None):
        return 0.5 * ((manifold.end_to_end(x) - TARGET) ** 2).sum()

    return cost


def _start(manifold):
    X0 = TARGET * 0.5
    return manifold.balanced_from(X0) if isinstance(manifold, BalancedManifold) else X0


def _free_energy(cls):
    M = _make(cls)
    problem = pymanopt.Problem(M, thermanopt.function.torch(M)(_cost(M)))
    return FreeEnergyDescent(0.1, max_iterations=15).run(problem, initial_point=_start(M)).point


def _stochastic(cls, opt_cls):
    M = _make(cls)
    problem = StochasticProblem(M, _cost(M), n_samples=1)
    opt = opt_cls(0.05, temperature=0.02, max_iterations=25, generator=0)
    return opt.run(problem, initial_point=_start(M)).point


def _langevin(cls):
    M = _make(cls)
    problem = pymanopt.Problem(M, thermanopt.function.torch(M)(_cost(M)))
    return RiemannianLangevin(0.5, 0.01).sample(
        problem, _start(M), 20, n_chains=4, generator=3, batched_cost=False
    )


def _thermal(cls):
    M = as_geoopt(_make(cls))
    x = geoopt.ManifoldParameter(_start(M.manifold).clone(), manifold=M)
    opt = ThermalRiemannianSGD([x], lr=0.05, momentum=0.5, temperature=0.02, generator=0)
    for _ in range(20):
        opt.zero_grad()
        _cost(M.manifold)(x).backward()
        opt.step()
    return x.detach()


def _geoopt_adam(cls):
    M = as_geoopt(_make(cls))
    x = geoopt.ManifoldParameter(_start(M.manifold).clone(), manifold=M)
    opt = geoopt.optim.RiemannianAdam([x], lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        _cost(M.manifold)(x).backward()
        opt.step()
    return x.detach(), M.reversible


RUNS = {
    "FreeEnergyDescent": _free_energy,
    "RiemannianSGD": lambda cls: _stochastic(cls, RiemannianSGD),
    "RiemannianAdam": lambda cls: _stochastic(cls, RiemannianAdam),
    "RiemannianLangevin": _langevin,
    "ThermalRiemannianSGD": _thermal,
    "as_geoopt": _geoopt_adam,
}


@pytest.mark.parametrize("name", list(RUNS))
@pytest.mark.parametrize("base, sub", PAIRS, ids=["balanced", "quotient"])
def test_trivial_subclass_is_bit_for_bit_identical(name, base, sub):
    a, b = RUNS[name](base), RUNS[name](sub)
    if isinstance(a, tuple):
        assert a[1] == b[1]
        a, b = a[0], b[0]
    assert torch.equal(a, b), name
    assert bool(torch.isfinite(a).all())
    # and the run did something: it moved away from the start
    M = _make(base)
    start = _start(M)
    moved = a[-1] if a.shape != start.shape else a
    assert float(torch.linalg.norm(M.end_to_end(moved) - M.end_to_end(start))) > 1e-3


def test_subclass_overriding_a_method_is_honoured():
    """Behaviour comes from methods: a subclass's own retraction is the one optimizers use."""
    calls = {"n": 0}

    class Counting(ObservableQuotient):
        def retraction(self, point, tangent_vector):
            calls["n"] += 1
            return super().retraction(point, tangent_vector)

    M = Counting(3, 3, backend="torch")
    problem = StochasticProblem(M, _cost(M), n_samples=1)
    RiemannianSGD(0.05, max_iterations=7).run(problem, initial_point=_start(M))
    assert calls["n"] == 7
    np.testing.assert_allclose(as_geoopt(M).retr(_start(M), 0 * TARGET), _start(M), atol=1e-15)
    assert calls["n"] == 8
