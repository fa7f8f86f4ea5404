"""Measured symmetry breaking along training (Ziyin, Xu & Chuang arXiv 2505.12387).

For every continuous symmetry with a symmetric generator ``A`` (rescale, scale, the
symmetric part of GL) the charge ``C_A(theta) = theta^T A theta`` is conserved by gradient
flow; one step of GD/SGD with step ``eta`` (no momentum, no weight decay) changes it by
exactly (``entropic-forces.md`` §2.0, [D])::

    C_A(theta_{t+1}) - C_A(theta_t) = eta^2 g_B^T A g_B,

i.e. ``O(eta^2)`` per step: halving ``eta`` divides the per-step drift by 4. Because
``C_A`` is quadratic, ``g_B^T A g_B`` is the same formula evaluated at the gradient. The
entropic force drives the charge to the *gradient balance* ``E_B[g_B^T A g_B] = 0``; the
balance residual ``g^T A g / g^T |A| g`` is recorded. Examples of ``C_A``:
``|W_in[i,:]|^2 + b_in[i]^2 - |W_out[:,i]|^2`` (ReLU unit), ``W1 W1^T - W2^T W2`` (linear
chain), ``|w|^2`` (weights feeding a normalization). Translations (softmax) have the charge
``<a, theta>`` (column sums of the logit weights), conserved exactly by GD/SGD.
Discrete symmetries (permutations, sign flips) have no charge; they are checked to stay
exact, and the distance of two units (or of one unit to the sign-flip fixed set) is
recorded as order parameter: it stays exactly 0 when training starts on the fixed set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .report import Symmetry, SymmetryReport
from .verify import verify_symmetry

__all__ = ["BreakingHistory", "track_breaking", "classify_breaking", "charges"]

def charges(tensors: dict, report: SymmetryReport, sym: Symmetry) -> tuple[np.ndarray, np.ndarray]:
    """(charge ``theta^T A theta``, its absolute version ``theta^T |A| theta``) of ``sym``
    (:meth:`Action.charge`)."""
    return sym.action.charge(tensors, report.context, sym)


@dataclass
class BreakingHistory:
    """Per-step record of :func:`track_breaking`.

    Charges (conserved quantities / order parameters) per symmetry label, their
    absolute scale, g^T A g of the step's gradients, losses, the learning rate
    and the invariance errors of discrete symmetries.
    """
    labels: list[str]
    symmetries: list[Symmetry]
    charge: dict[str, list] = field(default_factory=dict)
    absolute: dict[str, list] = field(default_factory=dict)
    grad_charge: dict[str, list] = field(default_factory=dict)
    grad_absolute: dict[str, list] = field(default_factory=dict)
    loss: list = field(default_factory=list)
    lr: float | None = None
    invariance_error: dict[str, tuple] = field(default_factory=dict)


def _label(k: int, s: Symmetry) -> str:
    return f"{k}:{s.kind}:{s.group}"


def track_breaking(model: nn.Module, report: SymmetryReport, step_fn: Callable[[nn.Module], object],
                   n_steps: int, *, lr: float | None = None,
                   symmetries: list[Symmetry] | None = None) -> BreakingHistory:
    """Run ``step_fn(model)`` ``n_steps`` times (one optimizer step each, returning the loss or
    None) and record the charge / order parameter of every symmetry before and after each
    step, and ``g^T A g`` of the gradients left in ``.grad`` by the step. With ``lr`` the
    exact one-step prediction ``lr^2 g^T A g`` of plain GD/SGD is available to
    :func:`classify_breaking`.
    """
    if n_steps < 1:
        raise ValueError("n_steps must be >= 1")
    syms = symmetries if symmetries is not None else report.symmetries
    labels = [_label(k, s) for k, s in enumerate(syms)]
    h = BreakingHistory(labels, list(syms), lr=lr)

    def snapshot(grad: bool):
        with torch.no_grad():
            ts = {}
            for n, p in model.named_parameters():
                src = p.grad if grad else p
                if src is None:
                    return None
                ts[n] = src.detach().to(torch.float64).clone()  # a copy, not a live view
        out = {}
        for lab, s in zip(labels, syms):
            out[lab] = charges(ts, report, s)
        return out

    def push(store_q, store_a, snap):
        for lab in labels:
            store_q.setdefault(lab, []).append(snap[lab][0])
            store_a.setdefault(lab, []).append(snap[lab][1])

    for lab, s in zip(labels, syms):
        if not s.continuous:
            h.invariance_error[lab] = (verify_symmetry(model, report, s),)
    push(h.charge, h.absolute, snapshot(False))
    for _ in range(n_steps):
        loss = step_fn(model)
        h.loss.append(float(loss) if loss is not None else float("nan"))
        gs = snapshot(True)
        if gs is not None:
            push(h.grad_charge, h.grad_absolute, gs)
        push(h.charge, h.absolute, snapshot(False))
    for lab, s in zip(labels, syms):
        if not s.continuous:
            h.invariance_error[lab] = h.invariance_error[lab] + (
                verify_symmetry(model, report, s),)
    return h


def classify_breaking(history: BreakingHistory, *, tol: float = 0.05,
                      plot: str | None = None) -> dict[str, dict]:
    """Which continuous symmetries were broken and that the discrete ones were not.

    Per symmetry: ``drift`` = ``|C_T - C_0| / |A-charge|_0`` (relative change of the charge;
    gradient flow predicts 0), ``step_prediction_error`` (``|Delta C - lr^2 g^T A g|`` summed,
    relative to the drift; round-off for plain GD/SGD), ``balance_start/end`` (window means of
    ``g^T A g / g^T|A| g`` over the first / last 10 % of the steps), and ``verdict``:
    ``broken`` (drift > tol), ``conserved``, ``untracked`` (bias trades and the LayerNorm
    free direction: their generator depends on theta, so no charge is conserved), or for
    discrete ones ``unbroken`` (the
    symmetry stays exact; the fixed-set order parameter is reported).
    """
    out: dict[str, dict] = {}
    for lab, s in zip(history.labels, history.symmetries):
        q = np.array(history.charge[lab], dtype=float)
        a = np.array(history.absolute[lab], dtype=float)
        rec: dict = {"kind": s.kind, "group": s.group, "continuous": s.continuous}
        if not s.continuous:
            errs = history.invariance_error.get(lab, (None, None))
            rec.update({"order_parameter_start": float(np.abs(q[0]).max()),
                        "order_parameter_end": float(np.abs(q[-1]).max()),
                        "invariance_error_start": errs[0], "invariance_error_end": errs[-1]})
            exact = errs[-1] is not None and errs[-1] < 1e-6
            rec["verdict"] = "unbroken" if exact else "broken"
            out[lab] = rec
            continue
        if not s.action.tracked:
            rec["verdict"] = "untracked"
            rec["reason"] = "theta-dependent generator: no conserved quantity to track"
            out[lab] = rec
            continue
        scale = float(np.linalg.norm(a[0])) or 1.0
        drift = float(np.linalg.norm(q[-1] - q[0])) / scale
        steps = np.diff(q, axis=0)
        rec.update({"drift": drift, "mean_step_drift": float(
            np.mean([np.linalg.norm(x) for x in steps])) / scale})
        if history.lr is not None and lab in history.grad_charge and \
                s.action.quadratic:
            gq = np.array(history.grad_charge[lab], dtype=float)
            pred = history.lr ** 2 * gq
            err = float(np.linalg.norm((steps - pred).reshape(len(steps), -1)))
            rec["predicted_drift"] = float(np.linalg.norm(pred.sum(0))) / scale
            rec["step_prediction_error"] = err / max(float(np.linalg.norm(
                steps.reshape(len(steps), -1))), 1e-300)
            ga = np.array(history.grad_absolute[lab], dtype=float)
            if s.action.kind in ("gl", "orth"):
                gqs = np.array([np.trace(x) for x in gq]) if gq.ndim == 3 else gq
                gas = np.array([np.trace(x) for x in ga]) if ga.ndim == 3 else ga
            else:
                gqs = gq.reshape(len(gq), -1).sum(1)
                gas = ga.reshape(len(ga), -1).sum(1)
            w = max(1, len(gqs) // 10)
            rec["balance_start"] = float(gqs[:w].mean() / max(gas[:w].mean(), 1e-300))
            rec["balance_end"] = float(gqs[-w:].mean() / max(gas[-w:].mean(), 1e-300))
        rec["verdict"] = "broken" if drift > tol else "conserved"
        out[lab] = rec
    if plot is not None:
        _plot(history, plot)
    return out


def _plot(history: BreakingHistory, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(history.labels)
    fig, axes = plt.subplots(n, 1, figsize=(7, 2.2 * n), squeeze=False)
    for ax, lab in zip(axes[:, 0], history.labels):
        q = np.array(history.charge[lab], dtype=float)
        q = q.reshape(len(q), -1)
        if q.shape[1] > 8:
            q = q[:, :8]
        ax.plot(q)
        ax.set_title(lab, fontsize=8)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
