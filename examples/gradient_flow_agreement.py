"""Riemannian vs Euclidean gradient flow of a deep linear network (Menon & Yu; Arora et al.).

Result (Arora, Cohen & Hazan 2018; Menon & Yu, arXiv 2509.09088): for a *balanced* start
``W_{p+1}^T W_{p+1} = W_p W_p^T``, the Euclidean gradient flow of ``E(phi(W))`` on the
factors, pushed forward by ``phi(W) = W_N ... W_1``, is the Riemannian gradient flow of
``E`` on the observable quotient ``(GL(d), g_N)``::

    dX/dt = -grad_{g_N} E(X) = -sum_{j=1}^N (X X^T)^{(N-j)/N} nabla E(X) (X^T X)^{(j-1)/N}.

Both flows are integrated with ``scipy.integrate.solve_ivp`` (rtol 1e-10) for a least-squares
energy ``E(X) = |X - Y|^2 / 2``; their gap stays at the integrator's tolerance. Discrete
gradient descent on the factors with step h is a first-order scheme for the same flow: its
gap to the Riemannian flow at a fixed time roughly halves with h.

Usage::

    python examples/gradient_flow_agreement.py [--quick] [--out examples/figures] [--seed 0]

Figure: ``gradient_flow_agreement.png`` (gap vs time, log scale; gap at t = 1 vs h).
"""

from __future__ import annotations

import argparse
import os

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

from thermanopt.manifolds import BalancedManifold, ObservableQuotient  # noqa: E402


def end_to_end(W: np.ndarray) -> np.ndarray:
    """phi(W) = W[N-1] @ ... @ W[0]."""
    X = W[0]
    for p in range(1, W.shape[0]):
        X = W[p] @ X
    return X


def factor_gradient(W: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Euclidean gradient of E(phi(W)) w.r.t. each factor, given G = nabla E(phi(W))."""
    N, d, _ = W.shape
    out = np.empty_like(W)
    for p in range(N):
        left = np.eye(d)  # W[N-1] ... W[p+1]
        for q in range(p + 1, N):
            left = W[q] @ left
        right = np.eye(d)  # W[p-1] ... W[0]
        for q in range(p):
            right = W[q] @ right
        out[p] = left.T @ G @ right.T
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run for tests")
    parser.add_argument("--out", default=os.path.join("examples", "figures"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    width, depth, t_end = 3, 3, 1.0
    rng = np.random.default_rng(args.seed)
    Y = rng.standard_normal((width, width))
    X0 = np.eye(width) + 0.3 * rng.standard_normal((width, width))
    if np.linalg.det(X0) < 0:
        X0[0] *= -1

    quotient = ObservableQuotient(width, depth)
    balanced = BalancedManifold(width, depth)
    W0 = np.asarray(balanced.balanced_from(X0))

    def grad_E(X):
        return X - Y

    def riemannian_rhs(_t, x):
        X = x.reshape(width, width)
        return -np.asarray(quotient.euclidean_to_riemannian_gradient(X, grad_E(X))).ravel()

    def euclidean_rhs(_t, w):
        W = w.reshape(depth, width, width)
        return -factor_gradient(W, grad_E(end_to_end(W))).ravel()

    n_eval = 41 if args.quick else 201
    t_eval = np.linspace(0.0, t_end, n_eval)
    tol = {"rtol": 1e-10, "atol": 1e-12, "method": "DOP853", "t_eval": t_eval}
    sol_r = solve_ivp(riemannian_rhs, (0.0, t_end), X0.ravel(), **tol)
    sol_e = solve_ivp(euclidean_rhs, (0.0, t_end), W0.ravel(), **tol)
    X_r = sol_r.y.T.reshape(-1, width, width)
    X_e = np.stack([end_to_end(w.reshape(depth, width, width)) for w in sol_e.y.T])
    gap_flow = np.linalg.norm(X_r - X_e, axis=(1, 2))
    print(f"ODE flows, max |X_riem - phi(W_eucl)| over t in [0, {t_end}]: {gap_flow.max():.3e}")

    # discrete GD on the factors vs the Riemannian flow at t_end
    hs = [0.02, 0.01, 0.005] if args.quick else [0.04, 0.02, 0.01, 0.005, 0.0025]
    X_ref = X_r[-1]
    gaps_h = []
    for h in hs:
        W = W0.copy()
        for _ in range(int(round(t_end / h))):
            W = W - h * factor_gradient(W, grad_E(end_to_end(W)))
        gaps_h.append(float(np.linalg.norm(end_to_end(W) - X_ref)))
    ratios = [gaps_h[i] / gaps_h[i + 1] for i in range(len(hs) - 1)]
    print(
        "discrete GD gap at t=1 for h = " + ", ".join(f"{h:g}: {g:.3e}" for h, g in zip(hs, gaps_h))
    )
    print("gap ratio per halving of h: " + ", ".join(f"{r:.3f}" for r in ratios))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax1.semilogy(
        t_eval[1:],
        np.maximum(gap_flow[1:], 1e-17),
        "C0.-",
        label="gap between the two ODE flows (solve_ivp, rtol 1e-10)",
    )
    moved = np.linalg.norm(X_r - X0, axis=(1, 2))
    ax1.semilogy(t_eval[1:], moved[1:], "k:", label="for scale: |X(t) - X(0)|_F")
    ax1.set_xlabel("time t")
    ax1.set_ylabel("gap |X_g_N(t) - phi(W(t))|_F")
    ax1.set_title(f"gradient flows, width {width}, depth {depth}")
    ax1.legend(fontsize=8)
    ax2.loglog(hs, gaps_h, "C1o-", label="GD on factors vs g_N flow")
    ax2.loglog(hs, gaps_h[-1] * np.array(hs) / hs[-1], "k--", label="slope 1 (O(h))")
    ax2.set_xticks(hs)
    ax2.set_xticklabels([f"{h:g}" for h in hs])
    ax2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.set_xlabel("step size h")
    ax2.set_ylabel(f"gap at t = {t_end:g}")
    ax2.set_title("discrete GD: first-order agreement")
    ax2.legend()
    path = os.path.join(args.out, "gradient_flow_agreement.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"figure: {path}")
    return {"max_flow_gap": float(gap_flow.max()), "gd_gaps": gaps_h, "ratios": ratios}


if __name__ == "__main__":
    main()
