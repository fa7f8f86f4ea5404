"""track_breaking under DistributedDataParallel, against a single process (issue 12).

Two gloo processes (:func:`thermanopt.distributed.launch`) train a small float64 ReLU
MLP wrapped in ``DistributedDataParallel`` with plain SGD; at every step each rank takes
its half of one global minibatch (the same index draw on every rank). The record of each
rank must equal the single-process record on the concatenated minibatches to 1e-10:
charges and ``g^T A g`` of every symmetry of the ``find_symmetries`` report, the
invariance errors of the discrete ones, and the losses (the ranks' losses averaged).
Every rank returns the same record. A model that differs across ranks is refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _models import mlp  # noqa: E402

from thermanopt.analysis import find_symmetries, track_breaking  # noqa: E402
from thermanopt.distributed import launch  # noqa: E402

WORLD, BATCH, STEPS, LR, TOL = 2, 8, 6, 0.05, 1e-10
G = torch.Generator().manual_seed(0)
X = torch.randn(32, 6, generator=G, dtype=torch.float64)
Y = X @ torch.randn(6, 3, generator=G, dtype=torch.float64) + 0.3 * torch.randn(
    32, 3, generator=G, dtype=torch.float64)


def _model() -> nn.Module:
    torch.manual_seed(1)
    model = mlp([6, 5, 3]).double()
    with torch.no_grad():  # unbalanced: the rescale charges drift visibly under SGD
        model[0].weight.mul_(2.0)
        model[-1].weight.mul_(0.5)
    return model


def _report(model):
    return find_symmetries(model, X[:4], output="raw", verify=False, tracer="fx")


def _step_fn(shard: slice):
    """Plain SGD on ``shard`` of each step's global minibatch (same draw on every rank)."""
    g = torch.Generator().manual_seed(7)

    def step(m):
        idx = torch.randint(0, len(X), (BATCH,), generator=g)[shard]
        m.zero_grad()
        loss = ((m(X[idx]) - Y[idx]) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            for p in m.parameters():
                p -= LR * p.grad
        return loss.detach()

    return step


def _record(h) -> dict:
    return {"charge": h.charge, "absolute": h.absolute, "grad_charge": h.grad_charge,
            "grad_absolute": h.grad_absolute, "loss": h.loss,
            "invariance_error": h.invariance_error, "labels": h.labels}


def _track(model, shard: slice, **kw) -> dict:
    return _record(track_breaking(model, _report(_model()), _step_fn(shard), STEPS, lr=LR, **kw))


def _worker(rank: int) -> dict:
    half = BATCH // WORLD
    shard = slice(rank * half, (rank + 1) * half)
    out = {"ddp": _track(nn.parallel.DistributedDataParallel(_model()), shard,
                         process_group=dist.group.WORLD)}
    out["auto"] = _track(nn.parallel.DistributedDataParallel(_model()), shard,
                         process_group="auto")
    differs = _model()
    if rank == 1:
        with torch.no_grad():
            differs[0].bias[0] += 1e-6
    try:
        _track(differs, shard, process_group=dist.group.WORLD)
        out["refused"] = None
    except ValueError as e:
        out["refused"] = str(e)
    return out


@pytest.fixture(scope="module")
def ranks():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    return launch(_worker, WORLD)


@pytest.fixture(scope="module")
def single():
    return _track(_model(), slice(0, BATCH))


def _max_error(a, b) -> float:
    """Largest deviation of ``a`` from ``b`` relative to max(1, |b|), over nested records."""
    if isinstance(b, dict):
        assert set(a) == set(b)
        return max([_max_error(a[k], b[k]) for k in b] or [0.0])
    if isinstance(b, (list, tuple)) and b and not isinstance(b[0], (int, float)):
        assert len(a) == len(b)
        return max(_max_error(x, y) for x, y in zip(a, b))
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


pytestmark = pytest.mark.slow


@pytest.mark.parametrize("group", ["ddp", "auto"])
def test_every_rank_records_the_single_process_history(ranks, single, group):
    for rank, out in enumerate(ranks):
        rec = out[group]
        assert rec["labels"] == single["labels"]
        for key in ("charge", "absolute", "grad_charge", "grad_absolute", "loss",
                    "invariance_error"):
            err = _max_error(rec[key], single[key])
            assert err <= TOL, f"rank {rank} {group} {key}: relative error {err:.2e}"
    assert len(single["loss"]) == STEPS and len(single["grad_charge"][single["labels"][0]]) == STEPS
    kinds = {lab.split(":")[1] for lab in single["labels"]}
    assert {"rescale", "permutation"} <= kinds  # continuous charges and discrete checks


def test_every_rank_returns_the_same_record(ranks):
    a, b = ({k: v for k, v in r["ddp"].items() if k != "labels"} for r in ranks)
    assert ranks[0]["ddp"]["labels"] == ranks[1]["ddp"]["labels"]
    assert _max_error(a, b) == 0.0


def test_a_shard_alone_differs_from_the_global_record(single):
    """Control: one rank's data alone gives another record (losses and charges)."""
    local = _track(_model(), slice(0, BATCH // WORLD))
    assert _max_error(local["loss"], single["loss"]) > 1e3 * TOL
    assert _max_error(local["grad_charge"], single["grad_charge"]) > 1e3 * TOL


def test_parameters_that_differ_across_ranks_are_refused(ranks):
    for out in ranks:
        assert out["refused"] is not None and "differ across the ranks" in out["refused"]


def test_process_group_without_torch_distributed_is_a_clear_error():
    model = _model()
    report = _report(model)
    if dist.is_initialized():
        pytest.skip("torch.distributed is initialised in this process")
    with pytest.raises(ValueError, match="not initialised"):
        track_breaking(model, report, _step_fn(slice(0, BATCH)), 1, process_group=object())
    with pytest.raises(ValueError, match="process_group"):
        track_breaking(model, report, _step_fn(slice(0, BATCH)), 1, process_group="world")
    auto = track_breaking(_model(), report, _step_fn(slice(0, BATCH)), 2, process_group="auto")
    plain = track_breaking(_model(), report, _step_fn(slice(0, BATCH)), 2)
    assert auto.loss == plain.loss
