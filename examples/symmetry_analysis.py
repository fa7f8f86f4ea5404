"""Symmetry analysis of YOUR model: the template to copy (Ziyin, Xu & Chuang, arXiv 2505.12387).

Every continuous parameter symmetry ``theta -> exp(lambda A) theta`` of a loss gives a
charge ``C(theta) = theta^T A theta`` that gradient FLOW conserves exactly. A discrete-time
optimizer changes it by exactly ``Delta C = lr^2 g^T A g`` per step (plain GD/SGD), so
minibatch noise (the "entropic force" of SGD) breaks the symmetry and drives the model
towards the noise/gradient balance ``g^T A g -> 0``, while full-batch GD at a small step
nearly conserves it. Discrete symmetries (permutations of hidden units) stay unbroken.

This script: (1) finds, classifies and verifies the symmetries of a small model you define
(``find_symmetries``) and saves the table, graph figure and JSON; (2) trains it with SGD
(batch 2) and with full-batch GD from the same unbalanced start, tracks every charge
(``track_breaking``) and prints the verdicts of ``classify_breaking``.

To analyse your own model, replace the lines marked ``# <-- REPLACE``: the model class,
the example inputs, the data and the loss. Everything else works unchanged.

Usage::

    python examples/symmetry_analysis.py [--quick] [--out examples/figures] [--seed 0]

Outputs: ``symmetry_graph.png``, ``symmetries.json``, ``symmetry_breaking.png``.
"""

from __future__ import annotations

import argparse
import copy
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from thermanopt.analysis import classify_breaking, find_symmetries, track_breaking  # noqa: E402


# ---------------------------------------------------------------------------------------
# 1. YOUR MODEL  <-- REPLACE this class with your own nn.Module
class MyModel(nn.Module):
    """A ReLU MLP with a LayerNorm: x -> Linear -> ReLU -> Linear -> LayerNorm -> Linear."""

    def __init__(self, d_in: int = 6, hidden: int = 8, d_out: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x):
        h = torch.relu(self.fc1(x))  # ReLU: rescale + permutation symmetry of fc1/fc2 units
        h = self.norm(self.fc2(h))  # LayerNorm: scale invariance of fc2 (and more)
        return self.head(h)


def make_data(n: int, generator: torch.Generator):
    """Regression data  <-- REPLACE with your own (inputs, targets)."""
    X = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    Y = torch.tanh(X @ torch.randn(6, 3, generator=generator, dtype=torch.float64))
    return X, Y + 0.3 * torch.randn(n, 3, generator=generator, dtype=torch.float64)


def loss_fn(output, target):
    """Your training loss  <-- REPLACE (e.g. nn.functional.cross_entropy)."""
    return ((output - target) ** 2).mean()


# ---------------------------------------------------------------------------------------


def train(model, report, X, Y, lr, batch, n_steps, seed):
    """Plain SGD (batch < n) or full-batch GD, tracked by ``track_breaking``."""
    g = torch.Generator().manual_seed(seed)
    n = X.shape[0]

    def step(m):  # one optimizer step; returns the loss
        idx = torch.randint(0, n, (batch,), generator=g) if batch < n else torch.arange(n)
        m.zero_grad()
        loss = loss_fn(m(X[idx]), Y[idx])
        loss.backward()
        with torch.no_grad():
            for p in m.parameters():
                p -= lr * p.grad
        return loss.item()

    history = track_breaking(model, report, step, n_steps, lr=lr)
    return history, classify_breaking(history)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short training, for tests")
    parser.add_argument("--out", default=os.path.join("examples", "figures"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    torch.manual_seed(args.seed)
    model = MyModel().double()  # <-- REPLACE: your model
    gen = torch.Generator().manual_seed(args.seed)
    X, Y = make_data(64, gen)  # <-- REPLACE: your data
    example_inputs = X  # <-- REPLACE: a batch of valid inputs for your model

    # (1) find, classify and verify the parameter symmetries. output="raw" for regression;
    # "logits" for a softmax head. Verification (random group elements + Jacobian nullity)
    # costs a few seconds; the quick mode skips it.
    report = find_symmetries(model, example_inputs, output="raw", verify=not args.quick)
    print(report.table())
    graph_path = os.path.join(args.out, "symmetry_graph.png")
    json_path = os.path.join(args.out, "symmetries.json")
    report.plot(graph_path)
    report.to_json(json_path)
    print(
        f"symmetries found: {len(report.symmetries)}, continuous dimension "
        f"{report.continuous_dim}, complete: {report.complete}"
    )

    # (2) symmetry breaking under SGD vs full-batch GD, from an unbalanced start
    base = copy.deepcopy(model)
    with torch.no_grad():
        base.fc1.weight.mul_(2.0)
        base.fc2.weight.mul_(0.5)
    n_steps = 60 if args.quick else 1500
    runs = {}
    for label, lr, batch in (("full-batch GD", 0.01, X.shape[0]), ("SGD, batch 2", 0.05, 2)):
        history, verdicts = train(copy.deepcopy(base), report, X, Y, lr, batch, n_steps, 1)
        runs[label] = (history, verdicts)
        print(f"--- {label} (lr {lr}, {n_steps} steps)")
        for name, v in verdicts.items():
            drift = f"drift {v['drift']:.3e}" if "drift" in v else ""
            print(f"  {name:40s} {v['kind']:12s} verdict {v['verdict']:10s} {drift}")

    # figure: the drift of every continuous symmetry's charge, GD vs SGD
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True, constrained_layout=True)
    for ax, (label, (history, verdicts)) in zip(axes, runs.items()):
        for k, (name, v) in enumerate(verdicts.items()):
            # quadratic charges theta^T A theta (rescale / scale symmetries); the charges of
            # additive symmetries (translation, null, trade) are tracked as raw parameter
            # blocks by this version of track_breaking, so their drift is not plotted
            if v["kind"] not in ("rescale", "scale") or name not in history.charge:
                continue
            c = np.array(history.charge[name], dtype=float).reshape(len(history.charge[name]), -1)
            scale = np.linalg.norm(np.asarray(history.absolute[name][0], dtype=float))
            dc = np.linalg.norm(c - c[0], axis=1) / max(scale, 1e-30)  # classify_breaking's
            ax.semilogy(
                np.arange(1, len(dc)),
                np.maximum(dc[1:], 1e-17),
                color=f"C{k % 10}",
                label=f"{name} ({v['verdict']})",
            )
        ax.axhline(0.05, color="k", ls="--", lw=0.8, label="verdict threshold (tol 0.05)")
        ax.set_xlabel("training step")
        ax.set_ylabel("charge drift |C_t - C_0| / |theta^T |A| theta|_0")
        ax.set_title(f"{label}: charges theta^T A theta")
        ax.legend(fontsize=7)
    path = os.path.join(args.out, "symmetry_breaking.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"figures: {graph_path}, {path}; json: {json_path}")
    return {label: v for label, (_, v) in runs.items()}


if __name__ == "__main__":
    main()
