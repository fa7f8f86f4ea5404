"""entropic_loss / entropic_force under torch.distributed, against single-process values.

Two processes on the ``gloo`` backend (CPU, 127.0.0.1, a free port), started once per
module with :func:`thermanopt.distributed.launch`. Each rank holds a shard of one global batch
(shards of unequal size: 5 and 7 samples) and computes, in float64,

- the parts of ``entropic_loss`` (GD, SGD with ghost norms, SGD with per-sample gradients
  by ``vmap``, with and without replacement, weight decay, a diagonal preconditioner),
- ``entropic_force``,
- the gradient of ``total`` after ``backward()`` averaged over ranks (what DDP stores),
- three SGD steps of a ``DistributedDataParallel`` model trained on ``total``, with the
  entropic loss recorded at each step.

The main process computes the same things on the concatenated batch in one process and
compares to 1e-10. A control shows the comparison can fail: the value of a shard alone
(no process group) differs from the global value by far more than the tolerance.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from thermanopt.distributed import launch
from thermanopt.entropy import entropic_force, entropic_loss

DT = torch.float64
WORLD = 2
SHARDS = (slice(0, 5), slice(5, 12))  # unequal shards of a global batch of 12
TOL = 1e-10
mse = nn.functional.mse_loss

# name -> (model factory, keyword arguments of entropic_loss)
CASES = {
    "gd": ("mlp", {"weight_decay": 0.01}),
    "ghost": ("mlp", {"batch_size": 3, "weight_decay": 0.01, "noise_method": "ghost"}),
    "ghost_noreplace": ("mlp", {"batch_size": 4, "replacement": False}),
    "vmap": ("norm", {"batch_size": 3, "weight_decay": 0.02}),
    "vmap_precond": ("norm", {"batch_size": 2, "preconditioner": "diag"}),
    "vmap_noreplace": ("mlp", {"batch_size": 5, "replacement": False, "noise_method": "vmap"}),
}
LR = 0.3


class NormNet(nn.Module):
    """Not all nn.Linear (LayerNorm, a free scale): the noise term takes the vmap path."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.scale = nn.Parameter(torch.tensor(1.3))
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.scale * self.norm(self.inp(x))))


def make_model(kind: str) -> nn.Module:
    torch.manual_seed(3)
    if kind == "mlp":
        model = nn.Sequential(
            nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)
        )
    else:
        model = NormNet()
    return model.to(DT)


def global_batch():
    g = torch.Generator().manual_seed(11)
    return torch.randn(12, 4, generator=g, dtype=DT), torch.randn(12, 2, generator=g, dtype=DT)


def kwargs_for(model: nn.Module, kw: dict) -> dict:
    kw = dict(kw)
    if kw.get("preconditioner") == "diag":
        gen = torch.Generator().manual_seed(5)
        kw["preconditioner"] = {
            n: 0.5 + torch.rand(p.shape, generator=gen, dtype=DT)
            for n, p in model.named_parameters()
        }
    return kw


def unwrap_names(d: dict) -> dict:
    return {k.removeprefix("module."): v for k, v in d.items()}


def compute(kind: str, kw: dict, batch, **extra) -> dict:
    """Parts, force and gradient of total for one case (single process or one rank)."""
    model = make_model(kind)
    kw = kwargs_for(model, kw)
    parts = entropic_loss(model, mse, batch, LR, **kw, **extra)
    parts.total.backward()
    grad = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    force = entropic_force(model, mse, batch, LR, **kw, **extra)
    return {
        "parts": torch.stack([t.detach() for t in parts]),
        "grad": grad,
        "force": force,
    }


def train_ddp(batch, steps: int = 3, ddp: bool = False) -> dict:
    """SGD on the entropic loss (noise term by vmap), recording it at each step."""
    model = make_model("norm")
    net = nn.parallel.DistributedDataParallel(model) if ddp else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    group = "auto" if ddp else None
    record = []
    for _ in range(steps):
        opt.zero_grad()
        parts = entropic_loss(net, mse, batch, LR, batch_size=3, process_group=group)
        parts.total.backward()
        opt.step()
        record.append(parts.total.detach())
        with torch.no_grad():  # value-only call between steps (no backward follows)
            record.append(entropic_loss(net, mse, batch, LR, process_group=group).total)
    return {"record": torch.stack(record), "params": dict(model.named_parameters())}


def _worker(rank: int) -> dict:
    X, Y = global_batch()
    shard = (X[SHARDS[rank]], Y[SHARDS[rank]])
    results = {}
    for name, (kind, kw) in CASES.items():
        res = compute(kind, kw, shard, process_group=dist.group.WORLD)
        # the gradient of total averaged over ranks, as DDP would store it
        for v in res["grad"].values():
            dist.all_reduce(v)
            v /= WORLD
        results[name] = res
    results["auto"] = compute("norm", {"batch_size": 3}, shard, process_group="auto")
    results["train"] = train_ddp(shard, ddp=True)
    results["train"]["params"] = unwrap_names(
        {k: v.detach() for k, v in results["train"]["params"].items()}
    )
    return results


@pytest.fixture(scope="module")
def ranks():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    return launch(_worker, WORLD)


def assert_close(a, b, what):
    if isinstance(a, dict):
        assert set(a) == set(b), what
        for k in a:
            assert_close(a[k], b[k], f"{what}[{k}]")
        return
    err = float((a - b).abs().max())
    scale = max(1.0, float(b.abs().max()))
    assert err <= TOL * scale, f"{what}: max error {err:.3e}"


pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", list(CASES))
def test_every_rank_matches_single_process_on_the_global_batch(ranks, name):
    kind, kw = CASES[name]
    ref = compute(kind, kw, global_batch())
    for r, res in enumerate(ranks):
        got = res[name]
        assert_close(got["parts"], ref["parts"], f"rank {r} {name} parts")
        assert_close(got["force"], ref["force"], f"rank {r} {name} force")
        assert_close(got["grad"], ref["grad"], f"rank {r} {name} grad of total")
    if "batch_size" in kw:
        assert float(ref["parts"][3]) > 1e-6  # the noise term is really exercised


def test_auto_process_group(ranks):
    ref = compute("norm", {"batch_size": 3}, global_batch())
    for res in ranks:
        assert_close(res["auto"]["parts"], ref["parts"], "auto parts")
        assert_close(res["auto"]["force"], ref["force"], "auto force")


def test_ddp_training_on_the_entropic_loss_matches_single_process(ranks):
    ref = train_ddp(global_batch())
    ref_params = {k: v.detach() for k, v in ref["params"].items()}
    for res in ranks:
        assert_close(res["train"]["record"], ref["record"], "recorded entropic loss")
        assert_close(res["train"]["params"], ref_params, "parameters after training")


def test_a_shard_alone_differs_from_the_global_value():
    """Control: without the cross-rank sums the comparison above would fail."""
    X, Y = global_batch()
    kind, kw = CASES["vmap"]
    ref = compute(kind, kw, (X, Y))["parts"]
    local = compute(kind, kw, (X[SHARDS[0]], Y[SHARDS[0]]))["parts"]
    assert float((local - ref).abs().max()) > 1e3 * TOL


def test_process_group_argument_errors():
    X, Y = global_batch()
    model = make_model("mlp")
    with pytest.raises(ValueError, match="process_group"):
        entropic_loss(model, mse, (X, Y), LR, process_group="world")
    if not dist.is_initialized():
        with pytest.raises(ValueError, match="not initialised"):
            entropic_loss(model, mse, (X, Y), LR, process_group=object())
        a = entropic_loss(model, mse, (X, Y), LR, batch_size=2, process_group="auto")
        b = entropic_loss(model, mse, (X, Y), LR, batch_size=2)
        assert torch.equal(a.total, b.total)
