"""Cost of ``thermanopt.entropy.entropic_loss`` relative to one forward+backward pass.

Models: a ~10M-parameter MLP (784-2048-2048-2048-10, batch 64) and a small transformer
encoder (2 layers, d_model 128, 4 heads, sequence 32, batch 32), cross-entropy loss.
Baseline: ``loss_fn(model(x), y).backward()``. Rows (ratio = time / baseline):

- ``gd value``: ``entropic_loss`` under ``torch.no_grad()`` (GD term: one forward, one
  backward);
- ``gd train``: ``entropic_loss(...).total.backward()`` (double backward), target <= 2.5;
- ``sgd value`` / ``sgd train``: the same with the per-sample noise term
  (``batch_size=8``), target <= 4; both models get ghost norms by default (the MLP's
  ``nn.Linear`` layers; the transformer's ``nn.Linear``, ``nn.LayerNorm`` and
  ``nn.MultiheadAttention`` rules of ``thermanopt.entropy.ghost``; before issue 12's ghost
  rules for attention and LayerNorm, the transformer took per-sample gradients by
  ``torch.func.vmap``); the ``(vmap)`` rows force the generic vmap path (on the MLP with
  ``chunk_size=16``).

Before/after in one run: ``--before REV`` (default ``e69e220``, the state before issue 12)
loads ``thermanopt/entropy/entropic_loss.py`` of that git revision as a separate module and
times it beside the current one, round-robin over the same inputs; the ``before`` column is
that version's ratio. Each round times the baseline, "after" and "before" back to back;
a ratio is the median over rounds of the per-round ratios (robust to the drifting load
of a shared machine) and ``time`` the minimum. Times are CPU time of the process on the
CPU (``--wall``: wall clock) and wall clock on CUDA. ``--no-before`` skips the old
version (no git needed).

Usage: python benchmarks/bench_entropic_loss.py [--quick] [--device cuda] [--json PATH]
       [--threads N] [--repeats R] [--before REV | --no-before] [--wall]
       [--models mlp,transformer]
"""

from __future__ import annotations

import argparse
import time

import torch
from _before import load_package, submodule  # noqa: E402
from _report import add_common_arguments, emit, median_ratio, time_rounds  # noqa: E402
from torch import nn

from thermanopt.entropy.entropic_loss import entropic_loss


def load_before(rev: str):
    """``entropic_loss`` of git revision ``rev`` (None if git or the revision is missing)."""
    package = load_package(rev)
    return None if package is None else submodule(package, "entropy.entropic_loss").entropic_loss


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


def bench(name, factory, quick, device, repeats, before=None, batch_size=8, clock=None):
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

    def value(fn, bs, **kw):
        def run():
            with torch.no_grad():
                fn(model, loss_fn, (x, y), lr, batch_size=bs, **kw)

        return run

    def train(fn, bs, **kw):
        def run():
            model.zero_grad(set_to_none=True)
            fn(model, loss_fn, (x, y), lr, batch_size=bs, **kw).total.backward()

        return run

    cases = [
        ("gd value", None, {}, False, 2),
        ("gd train", None, {}, True, 2.5),
        ("sgd value", batch_size, {}, False, 4),
        ("sgd train", batch_size, {}, True, 4),
    ]
    # "auto" uses ghost norms on both models; the (vmap) rows show the generic path
    vm = {"noise_method": "vmap", "chunk_size": 16} if name == "mlp" else {"noise_method": "vmap"}
    cases += [
        ("sgd value (vmap)", batch_size, vm, False, 4),
        ("sgd train (vmap)", batch_size, vm, True, 4),
    ]
    size = f"{n_params / 1e6:.1f}M x {n}"
    rows = []
    for label, bs, kw, is_train, target in cases:
        make = train if is_train else value
        fns = {"base": base, "after": make(entropic_loss, bs, **kw)}
        if before is not None:
            fns["before"] = make(before, bs, **kw)
        try:
            t = time_rounds(fns, device, repeats, clock=clock)
        except RuntimeError as exc:  # e.g. out of memory for per-sample gradients
            print(f"{name} {label}: failed ({str(exc).splitlines()[0]})")
            continue
        note = f"target <= {target}x"
        if "before" in t:
            note = f"before {median_ratio(t, 'before', 'base'):.2f}x; " + note
        rows.append(
            {
                "benchmark": f"{name}: {label}",
                "size": size,
                "time_s": min(t["after"]),
                "ratio": median_ratio(t, "after", "base"),
                "note": note,
            }
        )
    return rows


def main(argv=None):
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--before", default="e69e220", help="git revision of 'before'")
    parser.add_argument("--no-before", action="store_true", help="skip the 'before' timing")
    parser.add_argument("--wall", action="store_true", help="wall clock instead of CPU time")
    parser.add_argument("--models", default="mlp,transformer", help="comma-separated subset")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 10)
    before = None if args.no_before else load_before(args.before)
    rows = []
    for name, factory in (("mlp", mlp), ("transformer", transformer)):
        if name not in args.models.split(","):
            continue
        clock = time.perf_counter if args.wall else None
        rows += bench(name, factory, args.quick, args.device, repeats, before, clock=clock)
    title = f"entropic_loss on {args.device}: ratio = time / fwd+bwd (median of {repeats} rounds)"
    emit(rows, args.json, title=title)
    return rows


if __name__ == "__main__":
    main()
