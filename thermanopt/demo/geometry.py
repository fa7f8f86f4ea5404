"""Demo stages 1-2: DLN matrix sensing on the two manifolds vs Adam, and the entropy."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ._plot import figure


def sensing_task(width: int, n_measurements: int, seed: int, device: str):
    """Matrix sensing y_k = <A_k, X*> with E(X) = (1/2) sum_k (<A_k, X> - y_k)^2.

    X* = U diag(s) V^T with s spread over [0.5, 2] and det X* > 0 (the component
    of the identity, where every solver starts). Returns (A, y, X*) as float64
    torch tensors on ``device``.
    """
    import torch

    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((width, width)))
    V, _ = np.linalg.qr(rng.standard_normal((width, width)))
    s = np.linspace(2.0, 0.5, width)
    X_star = U @ np.diag(s) @ V.T
    if np.linalg.det(X_star) < 0:
        X_star[0] *= -1
    A = rng.standard_normal((n_measurements, width, width)) / np.sqrt(n_measurements)
    y = np.einsum("kij,ij->k", A, X_star)
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=device)  # noqa: E731
    return as_t(A), as_t(y), as_t(X_star)


def _energy(A, y):
    def E(X):
        r = (A * X).sum(dim=(-2, -1)) - y
        return 0.5 * (r * r).sum()

    return E


def _recorded(decorated_cost, energy_of_point):
    """Record (time, point, loss) at every gradient evaluation of a Pymanopt cost.

    Pymanopt's TrustRegions keeps no per-iteration log; it evaluates the
    gradient at every new iterate, so the distinct points recorded here are
    its accepted iterates.
    """
    import torch

    grad = decorated_cost.get_gradient_operator()
    history: dict[str, list] = {"iteration": [], "time": [], "loss": [], "points": []}
    t0 = time.perf_counter()

    def recording_gradient(x):
        # Pymanopt also calls the gradient inside every Hessian-vector product
        # (for the Weingarten/connection term): record each point once
        if history["points"] and torch.equal(history["points"][-1], x):
            return grad(x)
        with torch.no_grad():
            history["loss"].append(float(energy_of_point(x)))
        history["points"].append(x.detach().clone())
        history["iteration"].append(len(history["iteration"]))
        history["time"].append(time.perf_counter() - t0)
        return grad(x)

    decorated_cost._gradient = recording_gradient
    return history


def stage_geometry(ctx) -> Any:
    """Pymanopt TrustRegions on ObservableQuotient and BalancedManifold vs Adam on factors."""
    import pymanopt
    import torch
    from pymanopt.optimizers import TrustRegions

    import thermanopt.function
    from thermanopt.manifolds import BalancedManifold, ObservableQuotient

    from . import StageResult

    width, depth = (3, 3) if ctx.quick else (5, 4)
    m = 3 * width * width
    A, y, X_star = sensing_task(width, m, ctx.seed, ctx.device)
    E = _energy(A, y)
    kw = {"backend": "torch", "device": ctx.device}
    opts = {"verbosity": 0, "min_gradient_norm": 1e-10}
    histories: dict[str, dict] = {}

    quotient = ObservableQuotient(width, depth, **kw)

    @thermanopt.function.torch(quotient)
    def cost_q(X):
        return E(X)

    X0 = torch.eye(width, dtype=torch.float64, device=ctx.device)
    hq = _recorded(cost_q, E)
    TrustRegions(max_iterations=100, **opts).run(
        pymanopt.Problem(quotient, cost_q), initial_point=X0
    )
    histories["TrustRegions on ObservableQuotient"] = hq
    ctx.tick()

    balanced = BalancedManifold(width, depth, **kw)

    @thermanopt.function.torch(balanced)
    def cost_b(W):
        return E(balanced.end_to_end(W))

    W0 = balanced.balanced_from(X0)
    hb = _recorded(cost_b, lambda W: E(balanced.end_to_end(W)))
    TrustRegions(max_iterations=100, **opts).run(
        pymanopt.Problem(balanced, cost_b), initial_point=W0
    )
    hb["points"] = [balanced.end_to_end(W) for W in hb["points"]]
    histories["TrustRegions on BalancedManifold"] = hb
    ctx.tick()

    W = W0.clone().requires_grad_(True)
    adam = torch.optim.Adam([W], lr=1e-2)
    steps = 400 if ctx.quick else 2000
    ha: dict[str, list] = {"iteration": [], "time": [], "loss": [], "points": []}
    t0 = time.perf_counter()
    for k in range(steps):
        adam.zero_grad()
        X = balanced.end_to_end(W)
        loss = E(X)
        loss.backward()
        adam.step()
        if k % 10 == 0 or k == steps - 1:
            ha["iteration"].append(k)
            ha["time"].append(time.perf_counter() - t0)
            ha["loss"].append(float(loss.detach()))
            ha["points"].append(X.detach())
    histories["Euclidean Adam on the factors"] = ha
    ctx.tick()

    numbers: dict[str, Any] = {"width": width, "depth": depth, "measurements": m}
    for name, h in histories.items():
        Xf = h["points"][-1]
        numbers[name] = {
            "final_loss": h["loss"][-1],
            "relative_error": float(torch.linalg.norm(Xf - X_star) / torch.linalg.norm(X_star)),
            "iterations": h["iteration"][-1],
            "wall_time_s": h["time"][-1],
        }
    figs = []
    path = ctx.out / "geometry_loss.png"
    with figure(path, ncols=2) as (fig, (ax1, ax2)):
        for name, h in histories.items():
            loss = np.maximum(np.array(h["loss"]), 1e-30)
            ax1.semilogy(h["iteration"], loss, ".-", label=name)
            ax2.semilogy(h["time"], loss, ".-", label=name)
        ax1.set_xlabel("iteration")
        ax2.set_xlabel("wall time [s]")
        for ax in (ax1, ax2):
            ax.set_ylabel("loss E(X)")
            ax.legend(fontsize=8)
        ax1.set_xscale("symlog", linthresh=10)
        fig.suptitle(f"DLN matrix sensing, width {width}, depth {depth}")
    figs.append(str(path))
    ctx.shared["trajectories"] = {k: h["points"] for k, h in histories.items()}
    ctx.shared["depth"] = depth
    q, b, a = (numbers[k] for k in histories)
    text = (
        f"Matrix sensing of a {width}x{width} end-to-end matrix with depth {depth} "
        f"from {m} measurements. Pymanopt's TrustRegions reaches loss "
        f"{q['final_loss']:.1e} in {q['iterations']} iterations on the observable "
        f"quotient ({q['wall_time_s']:.2f} s) and {b['final_loss']:.1e} in "
        f"{b['iterations']} iterations on the balanced manifold ({b['wall_time_s']:.2f} s); "
        f"Euclidean Adam on the factors is at {a['final_loss']:.1e} after "
        f"{a['iterations'] + 1} steps ({a['wall_time_s']:.2f} s)."
    )
    return StageResult(numbers=numbers, figures=figs, text=text)


def stage_entropy(ctx) -> Any:
    """S_N over the singular values of a 2x2 matrix, and S along the stage-1 paths."""
    from thermanopt.entropy import dln_entropy, entropy_from_singular_values

    from . import StageResult

    depths = (2, 4, 16)
    n = 60 if ctx.quick else 150
    s = np.linspace(0.05, 3.0, n)
    S1, S2 = np.meshgrid(s, s, indexing="ij")
    grid = np.stack([np.maximum(S1, S2), np.minimum(S1, S2)], axis=-1)
    path = ctx.out / "entropy_landscape.png"
    numbers: dict[str, Any] = {}
    with figure(path, ncols=len(depths), width=4.2) as (fig, axes):
        for ax, N in zip(axes, depths):
            S = np.asarray(entropy_from_singular_values(grid, N))
            im = ax.pcolormesh(s, s, S.T, shading="auto", cmap="viridis")
            ax.plot(s, s, "w--", lw=0.8, label="s1 = s2")
            ax.set_xlabel("singular value s1")
            ax.set_ylabel("singular value s2")
            ax.set_title(f"reduced entropy S_{N}")
            ax.legend(fontsize=8, loc="upper left")
            fig.colorbar(im, ax=ax)
            numbers[f"S_{N}_range"] = [float(S.min()), float(S.max())]
    ctx.tick()
    figs = [str(path)]
    trajectories = ctx.shared.get("trajectories")
    if trajectories:
        depth = ctx.shared["depth"]
        path2 = ctx.out / "entropy_trajectory.png"
        with figure(path2) as (fig, ax):
            for name, pts in trajectories.items():
                S = [float(dln_entropy(X, depth)) for X in pts]
                ax.plot(np.linspace(0, 1, len(S)), S, ".-", label=name)
                numbers[f"final_entropy[{name}]"] = S[-1]
            ax.set_xlabel("fraction of the run")
            ax.set_ylabel(f"entropy S_{depth}(X)")
            ax.set_title("entropy along the stage-1 trajectories")
            ax.legend(fontsize=8)
        figs.append(str(path2))
    ctx.tick()
    text = (
        "The Boltzmann entropy S_N(X) = (1/2) sum_{i<j} log K_ij(s) of the fibre over X "
        "(Menon & Yu) depends only on the singular values, is largest where they are equal "
        "and grows with depth; the second figure follows it along the solvers' paths."
    )
    return StageResult(numbers=numbers, figures=figs, text=text)
