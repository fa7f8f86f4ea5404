"""Cost of ``thermanopt.entropy.entropic_loss`` relative to one forward+backward pass.

Models: a ~10M-parameter MLP (784-2048-2048-2048-10, batch 64) and a small transformer
encoder (2 layers, d_model 128, 4 heads, sequence 32, batch 32), cross-entropy loss.
Baseline: ``loss_fn(model(x), y).backward()``. Rows (ratio = time / baseline):

- ``gd value``: ``entropic_loss`` under ``torch.no_grad()`` (GD term: one forward, one
  backward);
- ``gd train``: ``entropic_loss(...).total.backward()`` (double backward), target <= 3;
- ``sgd value`` / ``sgd train``: the same with the per-sample noise term
  (``batch_size=8``), target <= 6; the MLP (all ``nn.Linear``) gets ghost norms by default,
  the transformer per-sample gradients by ``torch.func.vmap``; the ``(vmap)`` rows force
  the generic vmap path on the MLP (``chunk_size=16``).

Usage: python benchmarks/bench_entropic_loss.py [--quick] [--device cuda] [--json PATH]
       [--threads N] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _report import add_common_arguments, emit  # noqa: E402
from torch import nn

from thermanopt.entropy.entropic_loss import entropic_loss


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device, repeats):
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def mlp(quick: bool) -> tuple[nn.Module, int, tuple[int, ...]]:
    width = 512 if quick else 2048
    model = nn.Sequential(
        nn.Linear(784, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )
    return model, (16 if quick else 64), (784,)


class SmallTransformer(nn.Module):
    def __init__(self, d_model=128, layers=2, features=16, classes=10):
        super().__init__()
        self.embed = nn.Linear(features, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead=4, dim_feedforward=4 * d_model, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def transformer(quick: bool) -> tuple[nn.Module, int, tuple[int, ...]]:
    model = SmallTransformer(d_model=64 if quick else 128)
    return model, (8 if quick else 32), ((16 if quick else 32), 16)


def bench(name, factory, quick, device, repeats, batch_size=8):
    model, n, shape = factory(quick)
    model = model.to(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn((n, *shape), generator=gen).to(device)
    y = torch.randint(0, 10, (n,), generator=gen).to(device)
    loss_fn = nn.functional.cross_entropy
    n_params = sum(p.numel() for p in model.parameters())
    lr = 0.01

    def base():
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()

    def value(bs, **kw):
        def run():
            with torch.no_grad():
                entropic_loss(model, loss_fn, (x, y), lr, batch_size=bs, **kw)

        return run

    def train(bs, **kw):
        def run():
            model.zero_grad(set_to_none=True)
            entropic_loss(model, loss_fn, (x, y), lr, batch_size=bs, **kw).total.backward()

        return run

    t_base = _time(base, device, repeats)
    size = f"{n_params / 1e6:.1f}M x {n}"
    rows = [
        {
            "benchmark": f"{name}: fwd+bwd",
            "size": size,
            "time_s": t_base,
            "ratio": 1.0,
            "note": "baseline",
        }
    ]
    cases = [
        ("gd value", value(None), 3),
        ("gd train", train(None), 3),
        ("sgd value", value(batch_size), 6),
        ("sgd train", train(batch_size), 6),
    ]
    if name == "mlp":  # all-Linear model: "auto" uses ghost norms; show the generic path too
        vm = {"noise_method": "vmap", "chunk_size": 16}
        cases += [
            ("sgd value (vmap)", value(batch_size, **vm), 6),
            ("sgd train (vmap)", train(batch_size, **vm), 6),
        ]
    for label, fn, target in cases:
        try:
            t = _time(fn, device, repeats)
        except RuntimeError as exc:  # e.g. out of memory for per-sample gradients
            print(f"{name} {label}: failed ({str(exc).splitlines()[0]})")
            continue
        rows.append(
            {
                "benchmark": f"{name}: {label}",
                "size": size,
                "time_s": t,
                "ratio": t / t_base,
                "note": f"target <= {target}x",
            }
        )
    return rows


def main(argv=None):
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 10)
    rows = []
    for name, factory in (("mlp", mlp), ("transformer", transformer)):
        rows += bench(name, factory, args.quick, args.device, repeats)
    emit(rows, args.json, title=f"entropic_loss cost on {args.device} (median of {repeats})")
    return rows


if __name__ == "__main__":
    main()
