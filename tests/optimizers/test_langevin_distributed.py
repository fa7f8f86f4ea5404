"""RiemannianLangevin with chains sharded over two gloo ranks: same law, reproducible.

Two processes (:func:`thermanopt.distributed.launch`, gloo on 127.0.0.1) sample the
free-energy law on the observable quotient (width 2, depth 2, T = 1, E = |X|^2 / 2) with
``process_group="auto"`` and ``gather=True``. Every rank must hold all chains, in chain
order; the pooled final states follow the quadrature law of the single-process tests;
the ranks' chains are distinct; a second run with the same seed is identical.
"""

from __future__ import annotations

import numpy as np
import pymanopt
import pytest
import torch
from scipy import stats

import thermanopt.function
from thermanopt.distributed import launch
from thermanopt.manifolds import ObservableQuotient
from thermanopt.optimizers import RiemannianLangevin
from thermanopt.optimizers.sharding import chain_shard

CHAINS, STEPS, WORLD = 801, 250, 2


def _problem():
    M = ObservableQuotient(2, 2, backend="torch")

    @thermanopt.function.torch(M)
    def cost(X):
        return 0.5 * (X**2).sum()

    return pymanopt.Problem(M, cost)


def _start():
    g = torch.Generator().manual_seed(0)
    return torch.randn(CHAINS, 2, 2, generator=g, dtype=torch.float64)


def _worker(rank: int) -> dict:
    sampler = RiemannianLangevin(1.0, 0.01)
    kw = dict(n_chains=CHAINS, thin=STEPS, generator=5, batched_cost=True)
    full = sampler.sample(_problem(), _start(), STEPS, process_group="auto", gather=True, **kw)
    own = sampler.sample(_problem(), _start(), STEPS, process_group="auto", **kw)
    return {"full": full, "own": own, "log": sampler.log}


@pytest.fixture(scope="module")
def ranks():
    return launch(_worker, WORLD)


def test_chain_shards_cover_the_chains_once():
    for n, w in ((801, 2), (7, 3), (4, 4)):
        shards = [chain_shard(n, r, w) for r in range(w)]
        assert shards[0].start == 0 and shards[-1].stop == n
        assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))
        assert max(s.stop - s.start for s in shards) - min(s.stop - s.start for s in shards) <= 1


@pytest.mark.slow
def test_sharded_chains_gather_to_every_rank_in_order(ranks):
    a, b = ranks[0]["full"], ranks[1]["full"]
    assert a.shape == (1, CHAINS, 2, 2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for r, rec in enumerate(ranks):
        torch.testing.assert_close(rec["full"][:, chain_shard(CHAINS, r, WORLD)], rec["own"])
        assert rec["log"]["world_size"] == WORLD and rec["log"]["rank"] == r
    # rank-distinct noise: the two halves are not copies of each other
    n0 = ranks[0]["own"].shape[1]
    assert not torch.allclose(ranks[0]["own"][:, :100], ranks[1]["own"][:, :100])
    assert n0 == 401 and ranks[1]["own"].shape[1] == 400


@pytest.mark.slow
def test_sharded_chains_sample_the_free_energy_law(ranks):
    from test_langevin import _marginals  # same folder: on sys.path

    s = np.linalg.svd(ranks[0]["full"][-1].numpy(), compute_uv=False)
    c1, c2, _, _ = _marginals(2)
    assert stats.kstest(s[:, 0], c1).pvalue > 1e-3
    assert stats.kstest(s[:, 1], c2).pvalue > 1e-3
    d1, d2, _, _ = _marginals(2, entropy_power=0.0)
    assert min(stats.kstest(s[:, 0], d1).pvalue, stats.kstest(s[:, 1], d2).pvalue) < 1e-5


def test_bad_shard_arguments():
    with pytest.raises(ValueError, match="process_group"):
        RiemannianLangevin(1.0, 0.01).sample(_problem(), _start(), 2, CHAINS, process_group="x")
