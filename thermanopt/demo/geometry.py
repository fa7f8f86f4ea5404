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
    # iteration k = the loss after k Adam steps (k = 0 .. steps), so the last entry is
    # the state after exactly `steps` steps, as the report says
    for k in range(steps + 1):
        adam.zero_grad()
        X = balanced.end_to_end(W)
        loss = E(X)
        if k % 10 == 0 or k == steps:
            ha["iteration"].append(k)
            ha["time"].append(time.perf_counter() - t0)
            ha["loss"].append(float(loss.detach()))
            ha["points"].append(X.detach())
        if k == steps:
            break
        loss.backward()
        adam.step()
    histories["Euclidean Adam on the factors"] = ha
    ctx.tick()

    numbers: dict[str, Any] = {"width": width, "depth": depth, "measurements": m}
    for name, h in histories.items():
        Xf = h["points"][-1]
        k_min = int(np.argmin(h["loss"]))
        numbers[name] = {
            "final_loss": h["loss"][-1],
            "min_loss": h["loss"][k_min],
            "iteration_of_min": h["iteration"][k_min],
            "max_loss_after_min": max(h["loss"][k_min:]),
            "relative_error": float(torch.linalg.norm(Xf - X_star) / torch.linalg.norm(X_star)),
            "iterations": h["iteration"][-1],
            "wall_time_s": h["time"][-1],
        }
    figs = []
    path = ctx.out / "geometry_loss.png"
    with figure(path, ncols=2) as (fig, (ax1, ax2)):
        for i, (name, h) in enumerate(histories.items()):
            loss = np.maximum(np.array(h["loss"]), 1e-300)  # exact zeros only
            ax1.semilogy(h["iteration"], loss, ".-", color=f"C{i}", ms=3, label=name)
            ax2.semilogy(h["time"], loss, ".-", color=f"C{i}", ms=3, label=name)
        a = numbers["Euclidean Adam on the factors"]
        ax1.plot([a["iteration_of_min"]], [max(a["min_loss"], 1e-300)], "v", color="C2", ms=11,
                 mec="black", zorder=10,
                 label=f"Adam's lowest loss {a['min_loss']:.0e} (step {a['iteration_of_min']})")
        ax1.set_xlabel("iteration (TrustRegions) / step (Adam)")
        ax2.set_xlabel("wall time [s]")
        for ax in (ax1, ax2):
            ax.set_ylabel("loss E(X)")
        ax1.legend(fontsize=7)
        ax2.legend(fontsize=7)
        ax1.set_xscale("symlog", linthresh=10)
        fig.suptitle(f"DLN matrix sensing, width {width}, depth {depth}")
    figs.append(str(path))
    ctx.shared["trajectories"] = {k: h["points"] for k, h in histories.items()}
    ctx.shared["depth"] = depth
    q, b, a = (numbers[k] for k in histories)
    adam_text = (
        f"Euclidean Adam on the factors (step size 0.01) reaches its lowest loss "
        f"{a['min_loss']:.1e} at step {a['iteration_of_min']}"
    )
    if a["max_loss_after_min"] > 100 * max(a["min_loss"], 1e-300) and a["iteration_of_min"] < (
        a["iterations"]
    ):
        adam_text += (
            f", then does not stay there: with a fixed step size and a vanishing gradient its "
            f"normalised steps throw it back up to {a['max_loss_after_min']:.1e}, and it ends "
            f"at {a['final_loss']:.1e} after {a['iterations']} steps"
        )
    else:
        adam_text += f" and ends at {a['final_loss']:.1e} after {a['iterations']} steps"
    text = (
        f"Matrix sensing of a {width}x{width} end-to-end matrix with depth {depth} "
        f"from {m} measurements. Pymanopt's TrustRegions reaches loss "
        f"{q['final_loss']:.1e} in {q['iterations']} iterations on the observable "
        f"quotient ({q['wall_time_s']:.2f} s) and {b['final_loss']:.1e} in "
        f"{b['iterations']} iterations on the balanced manifold ({b['wall_time_s']:.2f} s). "
        f"{adam_text} ({a['wall_time_s']:.2f} s). The triangle marks Adam's lowest loss."
    )
    return StageResult(numbers=numbers, figures=figs, text=text)


def stage_entropy(ctx) -> Any:
    """S_N over the singular values of a 2x2 matrix, and S along the stage-1 paths."""
    from thermanopt.entropy import dln_entropy, entropy_from_singular_values

    from . import StageResult

    depths = (2, 3, 4, 16)
    n = 80 if ctx.quick else 200
    radius = 2.0  # the circle |X|_F = 2 of the right panel
    theta = np.linspace(0.5, 89.5, 179 if ctx.quick else 357)  # degrees; s1 = r cos, s2 = r sin
    s1c, s2c = radius * np.cos(np.radians(theta)), radius * np.sin(np.radians(theta))
    circle = np.stack([np.maximum(s1c, s2c), np.minimum(s1c, s2c)], axis=-1)
    path = ctx.out / "entropy_landscape.png"
    numbers: dict[str, Any] = {"frobenius_norm": radius}
    with figure(path, ncols=2, width=5.6, height=4.6) as (fig, (ax1, ax2)):
        # left: S_4 over the (s1, s2) plane, circles of constant |X|_F, their maxima
        N0 = 4
        s = np.linspace(0.05, 3.0, n)
        S1, S2 = np.meshgrid(s, s, indexing="ij")
        grid = np.stack([np.maximum(S1, S2), np.minimum(S1, S2)], axis=-1)
        S = np.asarray(entropy_from_singular_values(grid, N0))
        im = ax1.pcolormesh(s, s, S.T, shading="auto", cmap="viridis")
        fig.colorbar(im, ax=ax1, label=f"reduced entropy S_{N0}")
        for r in (1.0, 2.0, 3.0):
            t = np.radians(np.linspace(0, 90, 200))
            ax1.plot(r * np.cos(t), r * np.sin(t), "w--", lw=0.9)
            c = np.stack([r * np.cos(np.radians(theta)), r * np.sin(np.radians(theta))], -1)
            Sc = np.asarray(entropy_from_singular_values(np.sort(c, axis=-1)[:, ::-1], N0))
            k = int(np.argmax(Sc))
            ax1.plot(c[k, 0], c[k, 1], "o", color="red", ms=6)
        ax1.plot([], [], "w--", label="|X|_F = 1, 2, 3")
        ax1.plot([], [], "o", color="red", label="maximum of S on each circle")
        ax1.plot(s, s, ":", color="white", lw=0.8, label="s1 = s2")
        ax1.set_xlim(0, 3)
        ax1.set_ylim(0, 3)
        ax1.set_aspect("equal")
        ax1.set_xlabel("singular value s1")
        ax1.set_ylabel("singular value s2")
        ax1.set_title(f"S_{N0} of a 2x2 matrix X")
        ax1.legend(fontsize=7, loc="upper right", facecolor="0.85")
        # right: S_N along the circle |X|_F = 2 for several depths
        for i, N in enumerate(depths):
            Sc = np.asarray(entropy_from_singular_values(circle, N))
            k = int(np.argmax(Sc))
            ax2.plot(theta, Sc, color=f"C{i}", label=f"depth N = {N}")
            ax2.plot(theta[k], Sc[k], "o", color=f"C{i}")
            numbers[f"S_{N}_on_circle"] = {
                "max_at_angle_deg": float(theta[k]),
                "max": float(Sc[k]),
                "min": float(Sc.min()),
            }
        ax2.axvline(45.0, color="0.4", ls=":", lw=1, label="s1 = s2 (45 degrees)")
        ax2.set_xlabel("angle theta [degrees]: s1 = 2 cos theta, s2 = 2 sin theta")
        ax2.set_ylabel("reduced entropy S_N(X)")
        ax2.set_title(f"S_N on the circle |X|_F = {radius:g} (dots: maxima)")
        ax2.legend(fontsize=7)
    # at depth 2, width 2: S_2 = (1/2) log(s1 + s2), constant along s1 + s2 = const
    line = np.stack([np.linspace(1.9, 1.0, 5), np.linspace(0.1, 1.0, 5)], -1)
    S2_line = np.asarray(entropy_from_singular_values(line, 2))
    numbers["S_2_spread_along_s1_plus_s2_eq_2"] = float(S2_line.max() - S2_line.min())
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
    angles = ", ".join(
        f"{numbers[f'S_{N}_on_circle']['max_at_angle_deg']:.1f}" for N in depths
    )
    text = (
        "The Boltzmann entropy S_N(X) = (1/2) sum_{i<j} log K_ij(s) of the fibre over X "
        "(Menon & Yu) depends only on the singular values. At a fixed Frobenius norm |X|_F it "
        "is largest where the singular values are equal: on the circle |X|_F = 2 its maximum "
        f"lies at theta = {angles} degrees for depths {', '.join(map(str, depths))} (45 degrees "
        "is s1 = s2), and the red dots on the left mark the maxima of S_4 on three circles. "
        "S also grows with the overall scale of X (the colour) and with depth (the right "
        "panel). The statement is about a fixed norm: at depth 2 and width 2, "
        "S_2 = (1/2) log(s1 + s2) is constant along s1 + s2 = const (spread "
        f"{numbers['S_2_spread_along_s1_plus_s2_eq_2']:.0e} along s1 + s2 = 2)."
    )
    if "entropy_trajectory.png" in " ".join(figs):
        text += " The second figure follows S along the solvers' paths of stage 1."
    return StageResult(numbers=numbers, figures=figs, text=text)
