"""Riemannian vs Euclidean training of a deep linear network (DLN).

``compare_training(task, methods, steps, out, device)`` trains one DLN task
with

- Euclidean GD / SGD / Adam on the factors W (``torch.optim``), from a
  balanced initial stack W0;
- Riemannian GD / SGD / Adam on the observable quotient (GL(d), g_N)
  (:class:`thermanopt.optimizers.RiemannianSGD` / ``RiemannianAdam``) and
  free-energy descent (:class:`thermanopt.optimizers.FreeEnergyDescent`,
  F = E - T S_N), from X0 = phi(W0),

so every method starts from the same end-to-end matrix X0. The loss is a
function of X = phi(W) only (a finite sum over samples, evaluated on
minibatches for the stochastic methods).

What the comparison shows (Menon & Yu, arXiv 2509.09088; Ziyin, Xu & Chuang,
arXiv 2505.12387; the theory pages "Geometry of the DLN" and "Entropic forces"
of the documentation):

- Gradient flow of E(phi(W)) on the factors from a balanced start projects
  exactly onto the g_N gradient flow of E on X (Arora et al. 2018; Bah et
  al.), so full-batch Euclidean GD and Riemannian GD with the same step h are
  two O(h)-consistent discretisations of one curve: their end-to-end
  trajectories differ by O(h) over a fixed time and coincide as h -> 0.
- Discrete steps break the conservation of the balance charges
  Q_p = W_{p+1}^T W_{p+1} - W_p W_p^T. For plain GD/SGD with step eta the
  Noether identity W_{p+1}^T G_{p+1} = G_p W_p^T gives the exact one-step law

      Q_p' = Q_p + eta^2 (G_{p+1}^T G_{p+1} - G_p G_p^T),

  so the factors drift off the balanced manifold by O(eta) over a fixed time
  under GD, and keep drifting at the minimum under SGD (minibatch noise,
  rate ~ eta^2 / B): the entropic force. The harness accumulates the
  right-hand side (``balance_drift_predicted``) next to the measured drift
  (``balance_drift``); they agree to rounding for plain GD/SGD (not for Adam
  or momentum, whose steps are not of this form). Quotient methods stay
  balanced by construction (drift 0).

Table columns: ``method``, ``space`` (factors/quotient), ``lr``,
``batch_size``, ``final_loss``, ``min_loss``, ``steps_to_target``,
``wall_to_target`` (seconds, optimisation only), ``wall_time``,
``final_entropy`` (S_N(X), reduced), ``balance_drift`` (|Q|_F over all
p), ``balance_drift_relative`` (divided by sum_p |W_p|_F^2),
``balance_drift_predicted``, ``distance_to_reference_final`` and
``distance_to_reference_max`` (|X_method - X_reference|_F over the recorded
steps; the reference is the first method), ``target_loss``. The histories
hold, per method, ``step``, ``time`` (step * lr, the flow time; None for
line-search methods), ``wall``, ``loss``, ``entropy``, ``singular_values``,
``balance_drift``, and ``distances`` between every pair of methods over the
common recorded steps. ``out`` receives ``compare_<task>.json`` and
``compare_<task>.png`` (loss, entropy, and the largest and smallest singular
values of X against steps, with the target's singular values for reference).

A method that fails (a non-finite iterate, an optimizer error) stops the
comparison with :class:`MethodFailedError`, which names the method and the step
settings; the other methods can be run with ``methods=``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["compare_training", "make_task", "DEFAULT_METHODS", "Task", "MethodFailedError"]


class MethodFailedError(RuntimeError):
    """One method of :func:`compare_training` failed; ``method`` names it."""

    def __init__(self, method: str, detail: str, hint: str = ""):
        super().__init__(f"{detail}; {hint}" if hint else detail)
        self.method = method
        self.detail = detail

DEFAULT_METHODS = (
    "euclidean_gd",
    "euclidean_sgd",
    "euclidean_adam",
    "riemannian_gd",
    "riemannian_sgd",
    "riemannian_adam",
    "free_energy",
)

_METHOD_SPECS = {
    "euclidean_gd": {"space": "factors", "optimizer": "sgd", "stochastic": False},
    "euclidean_sgd": {"space": "factors", "optimizer": "sgd", "stochastic": True},
    "euclidean_adam": {"space": "factors", "optimizer": "adam", "stochastic": True},
    "riemannian_gd": {"space": "quotient", "optimizer": "sgd", "stochastic": False},
    "riemannian_sgd": {"space": "quotient", "optimizer": "sgd", "stochastic": True},
    "riemannian_adam": {"space": "quotient", "optimizer": "adam", "stochastic": True},
    "free_energy": {"space": "quotient", "optimizer": "free_energy", "stochastic": False},
}


@dataclass
class Task:
    """A DLN task: a finite-sum loss of the end-to-end matrix X.

    ``loss(X, batch)`` is the mean loss over the samples indexed by ``batch``
    (a ``torch.long`` tensor), differentiable in X.
    """

    name: str
    width: int
    n_samples: int
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    target: torch.Tensor | None = None
    lr: float = 0.05
    adam_lr: float = 0.01


def _target_matrix(d: int, gen: torch.Generator, s: torch.Tensor, **kw) -> torch.Tensor:
    G = torch.randn(2, d, d, generator=gen, **kw)
    U, _ = torch.linalg.qr(G[0])
    V, _ = torch.linalg.qr(G[1])
    if float(torch.linalg.det(U) * torch.linalg.det(V)) < 0:
        U = torch.cat([-U[:, :1], U[:, 1:]], dim=1)  # det X* > 0: the component of X0
    return (U * s) @ V.mT


def make_task(
    task: Any,
    width: int = 8,
    *,
    device: Any = "cpu",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    noise: float = 0.1,
) -> Task:
    """Build a :class:`Task` (all data on ``device``; seeded).

    - ``"matrix_sensing"``: y_i = <A_i, X*> + noise, A_i i.i.d. N(0, 1) entries,
      n = 4 d^2; loss_i = (<A_i, X> - y_i)^2 / 2.
    - ``"dln_regression"``: x_i ~ N(0, I_d), y_i = X* x_i + noise, n = 64 d;
      loss_i = |X x_i - y_i|^2 / 2.
    - ``"matrix_completion"``: half of the entries of X* observed with noise,
      loss_k = d^2 (X_{i_k j_k} - y_k)^2 / 2 (so the full-observation loss is
      |X - X*|_F^2 / 2).
    - ``(dataset, loss_fn)``: dataset a ``TensorDataset`` or a pair
      (inputs (n, d), targets (n, d)); loss_i = loss_fn(inputs @ X^T, targets)
      on the batch (loss_fn returns the batch mean).

    X* has det X* > 0, the connected component of GL(d) of the initial point
    (quotient retractions never change the sign of det X). X* is effectively
    low rank for sensing and completion (max(1, d // 4) singular values in
    [1, 2], the rest 0.1, so X* stays in GL(d)) and has singular values
    geomspace(2, 0.5) for regression.
    """
    kw = {"device": device, "dtype": dtype}
    gen = torch.Generator(device=device).manual_seed(int(seed))
    if isinstance(task, str):
        d = int(width)
        r = max(1, d // 4)
        if task in ("matrix_sensing", "matrix_completion"):
            s = torch.full((d,), 0.1, **kw)
            s[:r] = torch.linspace(2.0, 1.0, r, **kw)
        elif task == "dln_regression":
            s = torch.logspace(math.log10(2.0), math.log10(0.5), d, **kw)
        else:
            raise ValueError(
                f"unknown task {task!r}: use matrix_sensing, dln_regression, matrix_completion "
                "or a (dataset, loss) pair"
            )
        Xs = _target_matrix(d, gen, s, **kw)
        if task == "matrix_sensing":
            n = 4 * d * d
            A = torch.randn(n, d, d, generator=gen, **kw)
            y = torch.einsum("nij,ij->n", A, Xs) + noise * torch.randn(n, generator=gen, **kw)

            def loss(X, batch):
                r_ = torch.einsum("nij,ij->n", A[batch], X) - y[batch]
                return 0.5 * (r_ * r_).mean()

            return Task(task, d, n, loss, Xs, lr=0.05, adam_lr=0.02)
        if task == "dln_regression":
            n = 64 * d
            x = torch.randn(n, d, generator=gen, **kw)
            y = x @ Xs.mT + noise * torch.randn(n, d, generator=gen, **kw)

            def loss(X, batch):
                r_ = x[batch] @ X.mT - y[batch]
                return 0.5 * (r_ * r_).sum(-1).mean()

            return Task(task, d, n, loss, Xs, lr=0.05, adam_lr=0.02)
        perm = torch.randperm(d * d, generator=gen, device=device)[: max(1, d * d // 2)]
        rows, cols = perm // d, perm % d
        y = Xs[rows, cols] + noise * torch.randn(perm.numel(), generator=gen, **kw)

        def loss(X, batch):
            r_ = X[rows[batch], cols[batch]] - y[batch]
            return 0.5 * d * d * (r_ * r_).mean()

        return Task(task, d, int(perm.numel()), loss, Xs, lr=0.05, adam_lr=0.02)

    if not (isinstance(task, (tuple, list)) and len(task) == 2 and callable(task[1])):
        raise ValueError("a user task is a pair (dataset, loss_fn) with loss_fn(pred, target)")
    dataset, loss_fn = task
    tensors = getattr(dataset, "tensors", dataset)
    if not (isinstance(tensors, (tuple, list)) and len(tensors) == 2):
        raise ValueError("the dataset must be a TensorDataset or a pair (inputs, targets)")
    inputs, targets = (torch.as_tensor(t).to(**kw) for t in tensors)
    if inputs.ndim != 2 or targets.shape != inputs.shape:
        raise ValueError(
            "a DLN task needs inputs and targets of the same shape (n, width), got "
            f"{tuple(inputs.shape)} and {tuple(targets.shape)}"
        )

    def user_loss(X, batch):
        return loss_fn(inputs[batch] @ X.mT, targets[batch])

    return Task("custom", int(inputs.shape[1]), int(inputs.shape[0]), user_loss, None)


# --------------------------------------------------------------- helpers


def _phi(W: torch.Tensor) -> torch.Tensor:
    from ..manifolds import end_to_end

    return end_to_end(W)


def _charges(W: torch.Tensor) -> torch.Tensor:
    return W[1:].mT @ W[1:] - W[:-1] @ W[:-1].mT


def _float(x: Any) -> float | None:
    v = float(x.item()) if isinstance(x, torch.Tensor) else float(x)
    return v if math.isfinite(v) else None


class _Recorder:
    def __init__(
        self, task: Task, depth: int, steps: int, record_every: int, lr: float | None, name: str
    ):
        self.task, self.depth, self.lr = task, depth, lr
        self.name = name
        self.marks = set(range(0, steps + 1, record_every)) | {steps}
        self.h = {
            "step": [],
            "time": [],
            "wall": [],
            "loss": [],
            "entropy": [],
            "singular_values": [],
            "balance_drift": [],
        }
        self.X: list[np.ndarray] = []
        self.overhead = 0.0

    def __call__(self, step: int, X: torch.Tensor, wall: float, W: torch.Tensor | None = None):
        if step not in self.marks:
            return
        t0 = time.perf_counter()
        from ..entropy import dln_entropy

        with torch.no_grad():
            X = X.detach()
            if not bool(torch.isfinite(X).all()):
                raise ValueError(f"{self.name}: non-finite end-to-end matrix at step {step}")
            full = torch.arange(self.task.n_samples, device=X.device)
            self.h["step"].append(step)
            self.h["time"].append(None if self.lr is None else step * self.lr)
            self.h["wall"].append(wall)
            self.h["loss"].append(_float(self.task.loss(X, full)))
            try:
                S = dln_entropy(X, self.depth, validate=False)
            except ValueError:
                S = math.nan
            self.h["entropy"].append(_float(S))
            self.h["singular_values"].append([_float(v) for v in torch.linalg.svdvals(X).cpu()])
            drift = 0.0
            if W is not None and self.depth > 1:
                drift = float(torch.linalg.vector_norm(_charges(W.detach())))
            self.h["balance_drift"].append(drift)
            self.X.append(X.cpu().numpy().copy())
        self.overhead += time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_factors(task, W0, cfg, steps, rec, sampler, gen, device, bar):
    from ..manifolds import end_to_end

    W = W0.clone().requires_grad_(True)
    lr = cfg["lr"]
    if cfg["optimizer"] == "adam":
        opt = torch.optim.Adam([W], lr=lr)
    else:
        opt = torch.optim.SGD([W], lr=lr, momentum=cfg.get("momentum", 0.0))
    plain = cfg["optimizer"] == "sgd" and cfg.get("momentum", 0.0) == 0.0
    predicted = torch.zeros_like(_charges(W0)) if W0.shape[0] > 1 else None
    wall = 0.0
    rec(0, end_to_end(W), 0.0, W)
    for k in range(1, steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        batch = sampler.sample_batch(W, gen)
        opt.zero_grad(set_to_none=True)
        loss = task.loss(end_to_end(W), batch)
        loss.backward()
        if plain and predicted is not None:
            with torch.no_grad():
                G = W.grad
                predicted += lr * lr * (G[1:].mT @ G[1:] - G[:-1] @ G[:-1].mT)
        opt.step()
        _sync(device)
        wall += time.perf_counter() - t0
        if k % 50 == 0 or k == steps:
            if not bool(torch.isfinite(W).all()):
                raise ValueError(f"{cfg['name']}: non-finite factors at step {k}")
        with torch.no_grad():
            rec(k, end_to_end(W), wall, W)
        bar.update(1)
    extra = {}
    if plain and predicted is not None:
        extra["balance_drift_predicted"] = float(torch.linalg.vector_norm(predicted))
        actual = _charges(W.detach())
        denom = max(float(torch.linalg.vector_norm(actual)), 1e-300)
        extra["balance_identity_error"] = (
            float(torch.linalg.vector_norm(actual - predicted)) / denom
        )
    extra["balance_drift_relative"] = (
        float(torch.linalg.vector_norm(_charges(W.detach()))) / float((W.detach() ** 2).sum())
        if W0.shape[0] > 1
        else 0.0
    )
    return wall, extra


def _run_quotient(task, X0, cfg, steps, rec, depth, device, dtype, gen_seed, bar):
    from ..manifolds.observable import ObservableQuotient
    from ..optimizers import RiemannianAdam, RiemannianSGD, StochasticProblem

    manifold = ObservableQuotient(task.width, depth, backend="torch", device=device, dtype=dtype)
    state = {"t0": None, "wall": 0.0, "rec": 0.0}
    rec(0, X0, 0.0)

    def callback(iteration, point, record):
        now = time.perf_counter()
        _sync(device)
        wall = now - state["t0"] - state["rec"]
        r0 = time.perf_counter()
        rec(iteration + 1, point, wall)
        bar.update(1)
        state["rec"] += time.perf_counter() - r0
        state["wall"] = wall
        return False

    if cfg["optimizer"] == "free_energy":
        import pymanopt

        from ..function import torch as torch_backend
        from ..optimizers import FreeEnergyDescent

        full = torch.arange(task.n_samples, device=device)

        @torch_backend(manifold)
        def cost(X):
            return task.loss(X, full)

        from ..entropy import EntropyModel, dln_entropy

        def entropy_or_minus_inf(X):
            # the line search may try a nearly singular X: there S = -inf, F = +inf (reject)
            try:
                return float(dln_entropy(X, depth))
            except ValueError:
                return -math.inf

        problem = pymanopt.Problem(manifold, cost)
        opt = FreeEnergyDescent(
            cfg.get("temperature", 1e-3),
            entropy=(entropy_or_minus_inf, EntropyModel(manifold).riemannian_gradient),
            max_iterations=steps + 1,
            min_gradient_norm=0.0,
            min_step_size=0.0,
            max_cost_evaluations=10**9,
        )
        count = {"k": 0}

        def fe_callback(iteration, point, record):
            count["k"] += 1
            callback(count["k"] - 1, point, record)
            return count["k"] >= steps

        state["t0"] = time.perf_counter()
        opt.run(problem, initial_point=X0.clone(), callback=fe_callback)
        return state["wall"], {}

    problem = StochasticProblem(
        manifold,
        task.loss,
        task.n_samples,
        batch_size=cfg["batch_size"] if cfg["stochastic"] else None,
    )
    kwargs = dict(
        max_iterations=steps,
        generator=gen_seed,
        temperature=cfg.get("temperature", 0.0),
    )
    if cfg["optimizer"] == "adam":
        opt = RiemannianAdam(cfg["lr"], adaptivity=cfg.get("adaptivity", "elementwise"), **kwargs)
    else:
        opt = RiemannianSGD(cfg["lr"], momentum=cfg.get("momentum", 0.0), **kwargs)
    state["t0"] = time.perf_counter()
    opt.run(problem, initial_point=X0.clone(), callback=callback)
    return state["wall"], {}


def _method_configs(methods: Any, task: Task, batch_size: int, lr: float | None) -> list[dict]:
    if methods is None:
        methods = DEFAULT_METHODS
    if isinstance(methods, str):
        methods = [methods]
    items = list(methods.items()) if isinstance(methods, dict) else [(m, {}) for m in methods]
    out = []
    for name, overrides in items:
        base = name if name in _METHOD_SPECS else (overrides or {}).get("base")
        if base not in _METHOD_SPECS:
            raise ValueError(f"unknown method {name!r}; known: {', '.join(_METHOD_SPECS)}")
        cfg = dict(_METHOD_SPECS[base])
        cfg["name"] = name
        is_adam = cfg["optimizer"] == "adam"
        cfg["lr"] = task.adam_lr if is_adam else (lr if lr is not None else task.lr)
        cfg["batch_size"] = batch_size if cfg["stochastic"] else None
        if cfg["optimizer"] == "free_energy":
            cfg["lr"] = None  # Armijo line search
        cfg.update({k: v for k, v in (overrides or {}).items() if k != "base"})
        if cfg["optimizer"] != "free_energy" and not cfg["lr"] > 0:
            raise ValueError(f"{name}: learning rate must be > 0, got {cfg['lr']}")
        if cfg.get("temperature", 0.0) < 0:
            raise ValueError(f"{name}: temperature must be >= 0, got {cfg['temperature']}")
        out.append(cfg)
    return out


def _figure(path: str, histories: dict, task_name: str,
            target_singular_values: list[float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, h) in enumerate(histories["methods"].items()):
        c = colors[i % len(colors)]
        steps = h["step"]
        loss = [np.nan if v is None else v for v in h["loss"]]
        ent = [np.nan if v is None else v for v in h["entropy"]]
        axes[0].semilogy(steps, loss, color=c, label=name)
        axes[1].plot(steps, ent, color=c, label=name)
        sv = np.array([[np.nan if v is None else v for v in row] for row in h["singular_values"]])
        axes[2].semilogy(steps, np.nanmax(sv, axis=1), color=c, lw=1.2)
        axes[2].semilogy(steps, np.nanmin(sv, axis=1), color=c, lw=1.2, ls="--")
    if target_singular_values:
        for v in (max(target_singular_values), min(target_singular_values)):
            axes[2].axhline(v, color="0.5", lw=0.8, ls=":")
    axes[0].set(xlabel="step", ylabel="loss (full batch)", title=f"{task_name}: loss")
    axes[1].set(xlabel="step", ylabel="S_N(X) (reduced)", title="entropy of the end-to-end matrix")
    axes[2].set(xlabel="step", ylabel="singular value of X",
                title="largest and smallest singular value of X")
    axes[0].legend(fontsize=7, title="method", title_fontsize=7)
    style = [Line2D([], [], color="0.2", label="largest s_1"),
             Line2D([], [], color="0.2", ls="--", label="smallest s_d")]
    if target_singular_values:
        style.append(Line2D([], [], color="0.5", ls=":", label="s_1, s_d of the target X*"))
    axes[2].legend(handles=style, fontsize=7, title="colour = method", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_training(
    task: Any,
    methods: Sequence[str] | dict | None = None,
    steps: int = 500,
    out: str | os.PathLike | None = None,
    device: Any = None,
    seed: int = 0,
    *,
    width: int = 8,
    depth: int = 3,
    lr: float | None = None,
    batch_size: int = 16,
    target_loss: float | None = None,
    record_every: int | None = None,
    dtype: torch.dtype = torch.float64,
    init_scale: float = 0.5,
    noise: float = 0.1,
    progress: bool = True,
) -> tuple[list[dict], dict]:
    """Train one DLN task with Euclidean and Riemannian methods and compare them.

    Args:
        task: ``"matrix_sensing"``, ``"dln_regression"``, ``"matrix_completion"``,
            a :class:`Task`, or a ``(dataset, loss_fn)`` pair (see :func:`make_task`).
        methods: names from :data:`DEFAULT_METHODS` (default: all), or a dict
            ``name -> overrides`` (``lr``, ``batch_size``, ``momentum``,
            ``temperature``, ``base`` for a renamed copy).
        steps: optimisation steps per method (> 0).
        out: folder for ``compare_<task>.json`` and ``compare_<task>.png``; it is
            checked and created before any training (``ValueError`` when a file
            is in the way or it cannot be written).
        device: ``"cpu"`` (default) or ``"cuda"``.
        seed: seeds the data, the common initial point and the minibatches
            (all stochastic methods see the same batch sequence).
        width, depth: d and N of the network.
        lr: step of the GD/SGD methods (default: the task's); Adam uses the
            task's ``adam_lr``. Same h for Euclidean and Riemannian GD/SGD.
        batch_size: minibatch size of the stochastic methods.
        target_loss: loss level for ``steps_to_target``/``wall_to_target``;
            default L_min + 0.05 (L_0 - L_min), L_min the lowest recorded loss.
        record_every: steps between recorded states (default ~ steps / 100).
        dtype: float64 (default) or float32.
        init_scale: X0 = init_scale * (random point of the quotient).
        progress: show a tqdm progress bar.

    Returns:
        (table, histories): one dict per method (see the module docstring) and
        ``{"methods": {name: history}, "distances": {"a|b": [...]}, "settings": ...}``.
    """
    from tqdm.auto import tqdm

    from ..manifolds import balanced_from
    from ..manifolds.observable import ObservableQuotient
    from ..optimizers import StochasticProblem

    if int(steps) != steps or int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    steps = int(steps)
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if int(depth) < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if out is not None:
        from .cli_support import prepare_output_dir

        out = prepare_output_dir(out, option="out")
    task_obj = (
        task
        if isinstance(task, Task)
        else make_task(task, width, device=device, dtype=dtype, seed=seed, noise=noise)
    )
    configs = _method_configs(methods, task_obj, int(batch_size), lr)
    record_every = int(record_every or max(1, steps // 100))

    # common initial point: X0 on the quotient, W0 the balanced stack over it (Haar frames)
    quotient = ObservableQuotient(
        task_obj.width, depth, backend="torch", device=device, dtype=dtype
    )
    gen = torch.Generator(device=device).manual_seed(int(seed) + 1)
    X0 = init_scale * quotient.random_point(gen)
    frames = None
    if depth > 1:
        G = torch.randn(
            depth - 1, task_obj.width, task_obj.width, generator=gen, device=device, dtype=dtype
        )
        frames, _ = torch.linalg.qr(G)
    W0 = balanced_from(X0, frames, depth)

    # warm-up (first-call costs of autograd and linalg stay out of the wall times)
    Ww = W0.clone().requires_grad_(True)
    task_obj.loss(_phi(Ww), torch.arange(min(2, task_obj.n_samples), device=device)).backward()
    quotient.euclidean_to_riemannian_gradient(X0, X0)

    histories: dict = {"methods": {}, "distances": {}}
    table: list[dict] = []
    Xs: dict = {}
    bar = tqdm(total=steps * len(configs), disable=not progress, desc=f"compare {task_obj.name}")
    try:
        for cfg in configs:
            bar.set_postfix_str(cfg["name"])
            lr_axis = None if cfg["optimizer"] in ("free_energy", "adam") else cfg["lr"]
            rec = _Recorder(task_obj, depth, steps, record_every, lr_axis, cfg["name"])
            batch_gen_seed = int(seed) + 2
            try:
                if cfg["space"] == "factors":
                    sampler = StochasticProblem(
                        None, task_obj.loss, task_obj.n_samples, cfg["batch_size"]
                    )
                    bgen = torch.Generator(device=device).manual_seed(batch_gen_seed)
                    wall, extra = _run_factors(
                        task_obj, W0, cfg, steps, rec, sampler, bgen, device, bar
                    )
                else:
                    wall, extra = _run_quotient(
                        task_obj, X0, cfg, steps, rec, depth, device, dtype, batch_gen_seed,
                        bar,
                    )
                    extra = {"balance_drift_relative": 0.0, **extra}
            except Exception as e:  # noqa: BLE001 - name the method that failed
                done = rec.h["step"][-1] if rec.h["step"] else 0
                detail = " ".join(str(e).split())
                if detail.startswith(cfg["name"] + ": "):
                    detail = detail[len(cfg["name"]) + 2:]
                raise MethodFailedError(
                    cfg["name"],
                    f"method {cfg['name']} failed after {done} of {steps} steps "
                    f"(lr {cfg.get('lr')}, seed {seed}): {type(e).__name__}: {detail}",
                    "leave it out with methods=... or change its lr",
                ) from e
            histories["methods"][cfg["name"]] = rec.h
            Xs[cfg["name"]] = (rec.h["step"], rec.X)
            row = {
                "method": cfg["name"],
                "space": cfg["space"],
                "optimizer": cfg["optimizer"],
                "lr": cfg.get("lr"),
                "batch_size": cfg["batch_size"],
                "steps": rec.h["step"][-1],
                "final_loss": rec.h["loss"][-1],
                "min_loss": min((v for v in rec.h["loss"] if v is not None), default=None),
                "wall_time": wall,
                "final_entropy": rec.h["entropy"][-1],
                "balance_drift": rec.h["balance_drift"][-1],
                **extra,
            }
            table.append(row)
    finally:
        bar.close()

    # target loss and time to reach it
    losses = [v for h in histories["methods"].values() for v in h["loss"] if v is not None]
    L0 = histories["methods"][configs[0]["name"]]["loss"][0]
    if target_loss is None and losses and L0 is not None:
        Lmin = min(losses)
        target_loss = Lmin + 0.05 * (L0 - Lmin)
    for row in table:
        h = histories["methods"][row["method"]]
        hit = next((i for i, v in enumerate(h["loss"]) if v is not None and v <= target_loss), None)
        row["target_loss"] = target_loss
        row["steps_to_target"] = None if hit is None else h["step"][hit]
        row["wall_to_target"] = None if hit is None else h["wall"][hit]

    # end-to-end distances between methods over the common recorded steps
    names = list(Xs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sa, Xa = Xs[a]
            sb, Xb = Xs[b]
            idx_b = {s: j for j, s in enumerate(sb)}
            pairs = [(s, Xa[j], Xb[idx_b[s]]) for j, s in enumerate(sa) if s in idx_b]
            histories["distances"][f"{a}|{b}"] = {
                "step": [p[0] for p in pairs],
                "distance": [float(np.linalg.norm(p[1] - p[2])) for p in pairs],
            }
    ref = names[0]
    for row in table:
        if row["method"] == ref:
            row["distance_to_reference_final"] = 0.0
            row["distance_to_reference_max"] = 0.0
        else:
            dist = histories["distances"][f"{ref}|{row['method']}"]["distance"]
            row["distance_to_reference_final"] = dist[-1] if dist else None
            row["distance_to_reference_max"] = max(dist) if dist else None
        row["reference"] = ref

    histories["settings"] = {
        "task": task_obj.name,
        "width": task_obj.width,
        "depth": depth,
        "steps": steps,
        "seed": seed,
        "device": str(device),
        "dtype": str(dtype),
        "batch_size": batch_size,
        "record_every": record_every,
        "target_loss": target_loss,
    }
    if out is not None:
        stem = os.path.join(os.fspath(out), f"compare_{task_obj.name}")
        with open(stem + ".json", "w") as fh:
            json.dump({"table": table, "histories": histories}, fh, indent=1, allow_nan=False)
        target_sv = None
        if task_obj.target is not None:
            target_sv = [float(v) for v in torch.linalg.svdvals(task_obj.target).cpu()]
        _figure(stem + ".png", histories, task_obj.name, target_sv)
    return table, histories
