"""Entropic forces of SGD: noise balance (E5) and sharpening vs flattening (E9).

Two experiments on the entropic forces of SGD (the "Entropic forces" theory page of the
documentation), after Ziyin, Xu & Chuang, arXiv 2505.12387:

E5  Two-layer linear net ``x -> W2 W1 x`` (4-3-2), anisotropic input covariance, label
    noise 0.5, online SGD (lr 0.05, B = 1). Gradient flow would conserve the layer balance
    ``Q = W1 W1^T - W2^T W2``; SGD's entropic force moves it, exactly by
    ``Q' = Q + lr^2 (G1 G1^T - G2^T G2)`` per step (checked every step with
    :func:`thermanopt.entropy.entropic_loss.layer_balance_next`), until the noise balance
    ``W2^T M_out W2 = W1 M_in W1^T`` holds. Two initialisations with opposite tr Q end at
    the same predicted tr Q and the same spectrum of ``W1^T W1``.

E9  Rank-1 model ``f(x) = u (w . x)`` (d_in 8, d_out 2), label noise 0.5, online SGD
    (lr 0.02, B = 1). The noise balance ``||w||^2 / ||u||^2 = d_in / d_out`` fixes the top
    Gauss-Newton eigenvalue at ``P (sqrt(d_in/d_out) + sqrt(d_out/d_in))``, above the orbit
    minimum ``2P``: a balanced start sharpens, unbalanced starts flatten, all to one value.
    The entropic force of :func:`thermanopt.entropy.entropic_loss.entropic_force`, projected
    on the symmetry orbit, points towards that value at the start and vanishes at the end.

Usage::

    python examples/entropic_forces.py [--quick] [--out examples/figures] [--seed 0]

``--quick`` runs 1/20 of the steps (a few seconds; used by the tests); the full run takes
about a minute per experiment. Figures: ``e5_balance.png`` and ``e9_sharpness.png``.
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from thermanopt.entropy.entropic_loss import (  # noqa: E402
    conserved_quantity_step,
    entropic_force,
    layer_balance,
    layer_balance_next,
)


def _psd_sqrt(M: np.ndarray) -> np.ndarray:
    lam, U = np.linalg.eigh((M + M.T) / 2)
    return (U * np.sqrt(np.clip(lam, 0, None))) @ U.T


def _window_mean(x: np.ndarray, k: int) -> np.ndarray:
    k = max(1, min(k, len(x)))
    return np.convolve(x, np.ones(k) / k, mode="valid")


# ---------------------------------------------------------------------------------------
# E5: noise balance of a two-layer linear network


def e5_prediction(V, Sigma_x, noise):
    """Equilibrium ``W1^T W1`` and ``W2 W2^T`` at the noise balance (note sections 2.2, 4.2).

    At the minimum the per-sample residual is the label noise, so
    ``M_out = E||x||^2 e e^T = tr(Sigma_x) noise^2 I`` and
    ``M_in = E||e||^2 x x^T = d_out noise^2 Sigma_x``. With ``X = M_out^{1/2} W2``,
    ``Y = W1 M_in^{1/2}`` the balance reads ``X^T X = Y Y^T`` and ``X Y = M_out^{1/2} V
    M_in^{1/2}`` =: Z, hence ``Y^T Y = (Z^T Z)^{1/2}`` and ``X X^T = (Z Z^T)^{1/2}``.
    """
    d_out = V.shape[0]
    M_out = np.trace(Sigma_x) * noise**2 * np.eye(d_out)
    M_in = d_out * noise**2 * Sigma_x
    Mi, Mo = _psd_sqrt(M_in), _psd_sqrt(M_out)
    Z = Mo @ V @ Mi
    W1tW1 = np.linalg.solve(Mi, np.linalg.solve(Mi, _psd_sqrt(Z.T @ Z)).T)
    W2W2t = np.linalg.solve(Mo, np.linalg.solve(Mo, _psd_sqrt(Z @ Z.T)).T)
    return W1tW1, W2W2t, M_in, M_out


def e5_run(W1, W2, V, L_x, noise, lr, steps, rng, M_in, M_out, record_every):
    """Online SGD (B = 1) on 0.5 ||W2 W1 x - y||^2; returns the recorded history."""
    d_in, d_out = W1.shape[1], W2.shape[0]
    W1, W2 = W1.copy(), W2.copy()
    Q = layer_balance(W1, W2)
    Q0 = Q.copy()
    worst, entropic_sum = 0.0, np.zeros_like(Q)
    hist = {"step": [], "residual": [], "trQ": []}
    chunk = 10000
    for start in range(0, steps, chunk):
        n = min(chunk, steps - start)
        xs = rng.standard_normal((n, d_in)) @ L_x.T
        ys = xs @ V.T + noise * rng.standard_normal((n, d_out))
        for k in range(n):
            x, y = xs[k], ys[k]
            h = W1 @ x
            e = W2 @ h - y
            G2 = np.outer(e, h)
            G1 = np.outer(W2.T @ e, x)
            Q_pred = layer_balance_next(Q, G1, G2, lr)
            entropic_sum += lr**2 * (G1 @ G1.T - G2.T @ G2)
            W1 -= lr * G1
            W2 -= lr * G2
            Q = layer_balance(W1, W2)
            worst = max(worst, float(np.abs(Q - Q_pred).max()))
            t = start + k
            if t % record_every == 0:
                A = W2.T @ M_out @ W2
                B = W1 @ M_in @ W1.T
                hist["step"].append(t)
                hist["residual"].append(np.linalg.norm(A - B) / np.linalg.norm(A + B))
                hist["trQ"].append(np.trace(Q))
    reconcile = float(np.abs((Q - Q0) - entropic_sum).max())
    hist = {k: np.asarray(v) for k, v in hist.items()}
    return W1, W2, hist, worst, reconcile


def experiment_e5(steps: int, out: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    d_in, h, d_out, noise, lr = 4, 3, 2, 0.5, 0.05
    Sigma_x = np.diag([1.5, 1.0, 0.5, 0.25])
    L_x = np.linalg.cholesky(Sigma_x)
    V = np.array([[1.0, -0.5, 0.8, 0.3], [0.4, 0.9, -0.6, 0.5]])
    W1tW1_eq, W2W2t_eq, M_in, M_out = e5_prediction(V, Sigma_x, noise)
    trQ_eq = np.trace(W1tW1_eq) - np.trace(W2W2t_eq)
    spec_eq = np.linalg.eigvalsh(W1tW1_eq)[-2:]

    # two factorisations of (nearly) V with opposite imbalance: rescaled balanced factors
    # (W1, W2) = (c W1b, W2b / c) of the SVD of V, plus a small random perturbation
    U, s, Vt = np.linalg.svd(V, full_matrices=False)
    W1b = np.vstack([np.sqrt(s)[:, None] * Vt, np.zeros((h - d_out, d_in))])
    W2b = np.hstack([U * np.sqrt(s), np.zeros((d_out, h - d_out))])
    inits = {}
    for name, c2 in (("W1-heavy", 3.5), ("W2-heavy", 0.4)):
        W1 = np.sqrt(c2) * W1b + 0.1 * rng.standard_normal((h, d_in))
        W2 = W2b / np.sqrt(c2) + 0.1 * rng.standard_normal((d_out, h))
        inits[name] = (W1, W2)

    record_every = max(1, steps // 600)
    results = {}
    for i, (name, (W1, W2)) in enumerate(inits.items()):
        tq0 = float(np.trace(layer_balance(W1, W2)))
        W1f, W2f, hist, worst, reconcile = e5_run(
            W1,
            W2,
            V,
            L_x,
            noise,
            lr,
            steps,
            np.random.default_rng(seed + 1 + i),
            M_in,
            M_out,
            record_every,
        )
        tail = slice(len(hist["step"]) // 2, None)
        results[name] = {
            "trQ0": tq0,
            "trQ_final": float(np.mean(hist["trQ"][tail])),
            "residual0": float(hist["residual"][0]),
            "residual_final": float(np.mean(hist["residual"][tail])),
            "spectrum_final": np.linalg.eigvalsh(W1f.T @ W1f)[-2:],
            "identity_max_error": worst,
            "drift_reconciliation_error": reconcile,
            "hist": hist,
        }

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        hst = r["hist"]
        k = max(1, len(hst["step"]) // 30)
        ax1.semilogy(hst["step"][k - 1 :], _window_mean(hst["residual"], k), label=name)
        ax2.plot(hst["step"], hst["trQ"], label=f"{name} (tr Q0 = {r['trQ0']:.1f})")
    ax2.axhline(trQ_eq, color="k", ls="--", label=f"predicted tr Q = {trQ_eq:.2f}")
    ax1.set_xlabel("SGD step")
    ax1.set_ylabel("balance residual ||A - B|| / ||A + B|| (window mean)")
    ax1.set_title("E5: noise balance  A = W2^T M_out W2,  B = W1 M_in W1^T")
    ax1.legend()
    ax2.set_xlabel("SGD step")
    ax2.set_ylabel("tr Q = tr(W1 W1^T - W2^T W2)")
    ax2.set_title("E5: layer balance relaxes to the noise equilibrium")
    ax2.legend()
    fig.tight_layout()
    path = os.path.join(out, "e5_balance.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)

    print(f"E5  (4-3-2 linear net, lr {lr}, B 1, {steps} steps)  -> {path}")
    print(
        f"    predicted equilibrium: tr Q = {trQ_eq:.3f}, top spectrum of W1^T W1 = "
        f"{np.array2string(spec_eq, precision=3)}"
    )
    for name, r in results.items():
        print(
            f"    {name:9s} tr Q {r['trQ0']:+7.2f} -> {r['trQ_final']:+6.2f}   residual "
            f"{r['residual0']:.2f} -> {r['residual_final']:.3f}   spectrum "
            f"{np.array2string(r['spectrum_final'], precision=3)}   exact identity max err "
            f"{r['identity_max_error']:.1e}, drift reconciled to "
            f"{r['drift_reconciliation_error']:.1e}"
        )
    return {"trQ_eq": trQ_eq, "spectrum_eq": spec_eq, "runs": results, "figure": path}


# ---------------------------------------------------------------------------------------
# E9: sharpening and flattening to the noise-balanced sharpness


class Rank1(torch.nn.Module):
    """f(x) = u (w . x)."""

    def __init__(self, u, w):
        super().__init__()
        self.u = torch.nn.Parameter(torch.as_tensor(u, dtype=torch.float64))
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float64))

    def forward(self, x):
        return (x @ self.w)[:, None] * self.u


def _half_mse(out, y):
    return 0.5 * ((out - y) ** 2).sum(-1).mean()


def gauss_newton_top(u, w):
    """Top eigenvalue of E[J^T J] for x ~ N(0, I): blocks [[|w|^2 I, u w^T], [w u^T, |u|^2 I]]."""
    d_out, d_in = len(u), len(w)
    G = np.block([[w @ w * np.eye(d_out), np.outer(u, w)], [np.outer(w, u), u @ u * np.eye(d_in)]])
    return float(np.linalg.eigvalsh(G)[-1])


def orbit_force(u, w, X, Y, lr):
    """Entropic force projected on the rescaling orbit, <F, A theta>, A = diag(+I_u, -I_w)."""
    model = Rank1(u, w)
    F = entropic_force(model, _half_mse, (X, Y), lr, batch_size=1)
    u_t, w_t = model.u.detach(), model.w.detach()
    return float((F["u"] * u_t).sum() - (F["w"] * w_t).sum())


def experiment_e9(steps: int, out: str, seed: int) -> dict:
    rng = np.random.default_rng(seed + 10)
    d_in, d_out, noise, lr = 8, 2, 0.5, 0.02
    u_hat = rng.standard_normal(d_out)
    u_hat /= np.linalg.norm(u_hat)
    w_hat = rng.standard_normal(d_in)
    w_hat /= np.linalg.norm(w_hat)
    P = 1.37
    lam_eq = P * (np.sqrt(d_in / d_out) + np.sqrt(d_out / d_in))
    lam_min = 2 * P
    inits = {
        "balanced": (np.sqrt(P) * u_hat * 1.1, np.sqrt(P) * w_hat * 1.05),
        "u-heavy": (np.sqrt(14.4) * u_hat, P / np.sqrt(14.4) * w_hat),
        "w-heavy": (P / np.sqrt(24.4) * u_hat, np.sqrt(24.4) * w_hat),
    }
    A = np.concatenate([np.ones(d_out), -np.ones(d_in)])  # rescaling generator
    gen = torch.Generator().manual_seed(seed)
    Xe = torch.randn(2048, d_in, generator=gen, dtype=torch.float64)
    Ye = (Xe @ torch.tensor(w_hat))[:, None] * torch.tensor(P * u_hat) + noise * torch.randn(
        2048, d_out, generator=gen, dtype=torch.float64
    )
    record_every = max(1, steps // 600)
    results = {}
    for i, (name, (u, w)) in enumerate(inits.items()):
        u, w = u.copy(), w.copy()
        r_data = np.random.default_rng(seed + 11 + i)
        force0 = orbit_force(u, w, Xe, Ye, lr)
        hist = {"step": [], "sharpness": [], "ratio": []}
        worst = 0.0
        lam0 = gauss_newton_top(u, w)
        chunk = 10000
        for start in range(0, steps, chunk):
            n = min(chunk, steps - start)
            xs = r_data.standard_normal((n, d_in))
            ys = np.outer(xs @ w_hat, P * u_hat) + noise * r_data.standard_normal((n, d_out))
            for k in range(n):
                x, y = xs[k], ys[k]
                s = w @ x
                e = s * u - y
                gu, gw = s * e, (u @ e) * x
                if k % 50 == 0:  # spot-check the exact charge identity
                    theta = np.concatenate([u, w])
                    pred = conserved_quantity_step(theta, A, lr, np.concatenate([gu, gw]))
                u, w = u - lr * gu, w - lr * gw
                if k % 50 == 0:
                    worst = max(worst, abs(u @ u - w @ w - float(pred.predicted)))
                t = start + k
                if t % record_every == 0:
                    hist["step"].append(t)
                    hist["sharpness"].append(gauss_newton_top(u, w))
                    hist["ratio"].append((w @ w) / (u @ u))
        hist = {k: np.asarray(v) for k, v in hist.items()}
        tail = slice(len(hist["step"]) // 2, None)
        results[name] = {
            "sharpness0": lam0,
            "sharpness_final": float(np.mean(hist["sharpness"][tail])),
            "ratio_final": float(np.mean(hist["ratio"][tail])),
            "orbit_force0": force0,
            "orbit_force_final": orbit_force(u, w, Xe, Ye, lr),
            "identity_max_error": worst,
            "hist": hist,
        }

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        hst = r["hist"]
        ax1.plot(hst["step"], hst["sharpness"], label=name)
        ax2.semilogy(hst["step"], hst["ratio"], label=name)
    ax1.axhline(lam_eq, color="k", ls="--", label=f"noise balance {lam_eq:.2f}")
    ax1.axhline(lam_min, color="gray", ls=":", label=f"orbit minimum 2P = {lam_min:.2f}")
    ax1.set_xlabel("SGD step")
    ax1.set_yscale("log")
    ax1.set_ylabel("top Gauss-Newton eigenvalue (log scale)")
    ax1.set_title("E9: sharpening (balanced) and flattening (unbalanced)")
    ax1.legend()
    ax2.axhline(d_in / d_out, color="k", ls="--", label=f"predicted d_in/d_out = {d_in / d_out:g}")
    ax2.set_xlabel("SGD step")
    ax2.set_ylabel("||w||^2 / ||u||^2")
    ax2.set_title("E9: rescaling orbit position")
    ax2.legend()
    fig.tight_layout()
    path = os.path.join(out, "e9_sharpness.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)

    print(f"E9  (f = u (w.x), d_in {d_in}, d_out {d_out}, lr {lr}, B 1, {steps} steps)  -> {path}")
    print(
        f"    predicted sharpness {lam_eq:.3f} (orbit minimum {lam_min:.3f}), "
        f"predicted ||w||^2/||u||^2 = {d_in / d_out:g}"
    )
    for name, r in results.items():
        print(
            f"    {name:8s} sharpness {r['sharpness0']:6.2f} -> {r['sharpness_final']:5.2f}   "
            f"||w||^2/||u||^2 -> {r['ratio_final']:5.2f}   orbit entropic force "
            f"{r['orbit_force0']:+.2e} -> {r['orbit_force_final']:+.2e}   "
            f"exact identity max err {r['identity_max_error']:.1e}"
        )
    return {"lambda_eq": lam_eq, "lambda_min": lam_min, "runs": results, "figure": path}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1/20 of the steps (seconds)")
    parser.add_argument("--out", default=os.path.join("examples", "figures"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    steps = 3000 if args.quick else 60000
    t0 = time.perf_counter()
    e5 = experiment_e5(steps, args.out, args.seed)
    t1 = time.perf_counter()
    e9 = experiment_e9(steps, args.out, args.seed)
    t2 = time.perf_counter()
    print(f"time: E5 {t1 - t0:.1f} s, E9 {t2 - t1:.1f} s")
    return {"e5": e5, "e9": e9}


if __name__ == "__main__":
    main()
