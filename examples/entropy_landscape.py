"""Entropy landscape of the deep linear network (Menon & Yu, arXiv 2509.09088).

The Boltzmann entropy of the fibre of balanced factors over an end-to-end matrix X depends
only on its singular values s (reduced form, without the constant orbit volume)::

    S_N(X) = (1/2) sum_{i<j} log K_ij(s),   K_ij = (s_i^2 - s_j^2) / (s_i^{2/N} - s_j^{2/N})

(the metric multiplier of g_N on the off-diagonal pair (i, j), = sum_k a_i^{N-1-k} a_j^k with
a_i = s_i^{2/N}; at s_i = s_j its limit is N s_i^{2(N-1)/N}). At a fixed Frobenius norm
|X|_F it is largest where the singular values are equal (a statement about fixed norm: at
depth 2 and width 2, S_2 = (1/2) log(s1 + s2) is constant along s1 + s2 = const, and at a
fixed determinant S_N is smallest at equal singular values). It grows with the scale of X
and with depth like ``(d(d-1)/4) log N``: ``S_N - (d(d-1)/4) log N`` converges as
N -> infinity.

This script draws S_N over (s1, s2) of 2x2 matrices for several depths (heat maps), the
entropy along the diagonal s1 = s2 = s, and ``S_N(X) - (d(d-1)/4) log N`` against N.

Usage::

    python examples/entropy_landscape.py [--quick] [--out examples/figures]

Figures: ``entropy_landscape.png`` (heat maps) and ``entropy_depth.png``.
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from thermanopt.entropy import entropy_from_singular_values  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="coarse grids for tests")
    parser.add_argument("--out", default=os.path.join("examples", "figures"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    d = 2
    growth = d * (d - 1) / 4  # coefficient of log N
    depths = (2, 4, 16)
    n = 50 if args.quick else 200
    s = np.linspace(0.05, 3.0, n)
    S1, S2 = np.meshgrid(s, s, indexing="ij")
    grid = np.stack([np.maximum(S1, S2), np.minimum(S1, S2)], axis=-1)

    fig, axes = plt.subplots(
        1, len(depths), figsize=(4.4 * len(depths), 4), constrained_layout=True
    )
    for ax, N in zip(axes, depths):
        S = np.asarray(entropy_from_singular_values(grid, N))
        im = ax.pcolormesh(s, s, S.T, shading="auto", cmap="viridis")
        ax.plot(s, s, "w--", lw=0.8, label="s1 = s2: max of S on each circle")
        t = np.linspace(0.0, np.pi / 2, 100)
        for r in (1.0, 2.0, 3.0):
            ax.plot(r * np.cos(t), r * np.sin(t), "w:", lw=0.9)
        ax.plot([2.0], [0.5], "r*", ms=10, label="diag(2, 0.5)")
        ax.set_xlabel("singular value s1")
        ax.set_ylabel("singular value s2")
        ax.set_title(f"reduced entropy S_{N}(diag(s1, s2))")
        ax.legend(fontsize=8, loc="upper left")
        fig.colorbar(im, ax=ax, label=f"S_{N}")
    path1 = os.path.join(args.out, "entropy_landscape.png")
    fig.savefig(path1, dpi=110)
    plt.close(fig)

    # depth dependence
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    s_diag = np.linspace(0.1, 3.0, 40 if args.quick else 150)
    for k, N in enumerate((2, 4, 16, 64)):
        S = np.asarray(entropy_from_singular_values(np.stack([s_diag, s_diag], -1), N))
        ax1.plot(s_diag, S - growth * np.log(N), color=f"C{k}", label=f"N = {N}")
    ax1.set_xlabel("s (X = diag(s, s))")
    ax1.set_ylabel("S_N(s I) - (d(d-1)/4) log N")
    ax1.set_title("entropy along the diagonal s1 = s2")
    ax1.legend()
    Ns = np.unique(np.round(np.logspace(0, 3 if args.quick else 4, 25)).astype(int))
    Ns = Ns[Ns >= 2]
    for k, pair in enumerate(((1.0, 1.0), (2.0, 0.5), (3.0, 0.1), (0.5, 0.2))):
        S = np.array([float(entropy_from_singular_values(np.array(pair), int(N))) for N in Ns])
        ax2.semilogx(
            Ns, S - growth * np.log(Ns), "o-", ms=3, color=f"C{k}", label=f"X = diag{pair}"
        )
    ax2.set_xlabel("depth N")
    ax2.set_ylabel("S_N(X) - (d(d-1)/4) log N")
    ax2.set_title("the log N growth is universal (d = 2)")
    ax2.legend()
    path2 = os.path.join(args.out, "entropy_depth.png")
    fig.savefig(path2, dpi=110)
    plt.close(fig)

    values = {}
    for N in (2, 4, 16):
        values[N] = float(entropy_from_singular_values(np.array([2.0, 0.5]), N))
        print(
            f"S_{N}(diag(2, 0.5)) = {values[N]:.6f}"
            f"  (minus (1/2) log N: {values[N] - growth * np.log(N):.6f})"
        )
    print(f"figures: {path1}, {path2}")
    return values


if __name__ == "__main__":
    main()
