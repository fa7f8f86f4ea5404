"""Stationary law of Riemannian Langevin dynamics on the balanced manifold (Menon & Yu).

Langevin dynamics ``dW = -grad E(phi(W)) dt + sqrt(2T) dB`` on the balanced manifold
(Riemannian Brownian motion, second-order retraction) has the Gibbs law
``exp(-E/T) dvol`` upstairs. Pushed forward to ``X = phi(W)`` the fibre volume adds the
entropy S_N of Menon & Yu (arXiv 2509.09088): X has density proportional to
``exp(-(E(X) - T S_N(X)) / T) dvol_{g_N}`` (the free energy), so the singular values of
X follow the marginals of :func:`thermanopt.entropy.gibbs.singular_value_marginals`
and NOT the law without the entropy (``entropy_weight=0``, the control).

Width 2, depth 2, ``E = |X|^2 / 2``, T = 1, step 0.01; the chains are batched (the cost
broadcasts over a leading chain axis). The script prints the Kolmogorov-Smirnov p-values
of the sampled singular values against the CDFs of both laws (cumulative trapezoidal
integration of the marginal densities).

Usage::

    python examples/langevin_stationary_law.py [--quick] [--out examples/figures] [--seed 0]

Figure: ``langevin_stationary_law.png`` (histograms vs densities, largest and smallest s).
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pymanopt  # noqa: E402
import torch  # noqa: E402
from scipy.integrate import cumulative_trapezoid  # noqa: E402
from scipy.stats import kstest  # noqa: E402

import thermanopt.function  # noqa: E402
from thermanopt.entropy.gibbs import singular_value_marginals  # noqa: E402
from thermanopt.manifolds import BalancedManifold  # noqa: E402
from thermanopt.optimizers import RiemannianLangevin  # noqa: E402


def cdf_from_density(grid: np.ndarray, density: np.ndarray):
    """CDF (callable) from a density on a grid by cumulative trapezoidal integration."""
    grid = np.concatenate([[0.0], grid])
    density = np.concatenate([[0.0], density])
    c = cumulative_trapezoid(density, grid, initial=0.0)
    c /= c[-1]
    return lambda x: np.interp(x, grid, c)


def energy_s(s):
    """E as a function of the singular values: |X|^2 / 2 = sum s_i^2 / 2."""
    return 0.5 * (s**2).sum(-1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer chains and steps")
    parser.add_argument("--out", default=os.path.join("examples", "figures"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    width, depth, T, h = 2, 2, 1.0, 0.01
    n_chains = 200 if args.quick else 2000
    n_steps = 100 if args.quick else 300
    manifold = BalancedManifold(width, depth, backend="torch")

    @thermanopt.function.torch(manifold)
    def cost(W):  # broadcasts over a leading chain axis: the sum over chains
        X = W[..., 0, :, :]
        for p in range(1, W.shape[-3]):
            X = W[..., p, :, :] @ X
        return 0.5 * (X * X).sum()

    problem = pymanopt.Problem(manifold, cost)
    W0 = manifold.balanced_from(torch.eye(width, dtype=torch.float64))
    sampler = RiemannianLangevin(T, h)
    states = sampler.sample(
        problem,
        W0,
        n_steps,
        n_chains=n_chains,
        thin=n_steps,
        generator=args.seed,
        batched_cost=True,
    )
    s = torch.linalg.svdvals(manifold.end_to_end(states[-1])).numpy()

    grid, p1, p2 = singular_value_marginals(depth, energy_s, T, 7.0)
    _, q1, q2 = singular_value_marginals(depth, energy_s, T, 7.0, entropy_weight=0.0)
    pvals = {}
    for k, (name, p, q) in enumerate((("largest", p1, q1), ("smallest", p2, q2))):
        pvals[f"law_{name}"] = float(kstest(s[:, k], cdf_from_density(grid, p)).pvalue)
        pvals[f"control_{name}"] = float(kstest(s[:, k], cdf_from_density(grid, q)).pvalue)
        print(
            f"KS p-value, {name} singular value vs exp(-(E - T S)/T) law: "
            f"{pvals[f'law_{name}']:.3g}"
        )
        print(
            f"KS p-value, {name} singular value vs no-entropy control: "
            f"{pvals[f'control_{name}']:.3g}"
        )

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    bins = np.linspace(0, 3.5, 30 if args.quick else 50)
    for k, (ax, name, p, q) in enumerate(zip(axes, ("largest", "smallest"), (p1, p2), (q1, q2))):
        heights, _, _ = ax.hist(
            s[:, k],
            bins=bins,
            density=True,
            alpha=0.45,
            color=f"C{k}",
            label=f"Langevin, {n_chains} chains (p = {pvals['law_' + name]:.2g})",
        )
        ax.plot(grid, p, "k-", label="exp(-(E - T S)/T) (with entropy)")
        ax.plot(
            grid, q, "r:", lw=2, label=f"control, no entropy (p = {pvals['control_' + name]:.1e})"
        )
        ax.set_xlim(0, 3.5 if k == 0 else 2.0)
        ax.set_ylim(0, 1.5 * heights.max())  # depth 2: the smallest-s density ~ s^(-1/2) at 0
        ax.set_xlabel(f"{name} singular value of X = phi(W)")
        ax.set_ylabel("density")
        ax.set_title(f"width {width}, depth {depth}, T = {T:g}, step {h:g}")
        ax.legend(fontsize=8)
    path = os.path.join(args.out, "langevin_stationary_law.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"figure: {path}")
    return pvals


if __name__ == "__main__":
    main()
