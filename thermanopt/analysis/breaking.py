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
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..entropy.entropic_loss import data_parallel_module, resolve_process_group
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
                   symmetries: list[Symmetry] | None = None,
                   process_group: Any = None) -> BreakingHistory:
    """Run ``step_fn(model)`` ``n_steps`` times (one optimizer step each, returning the loss or
    None) and record the charge / order parameter of every symmetry before and after each
    step, and ``g^T A g`` of the gradients left in ``.grad`` by the step. With ``lr`` the
    exact one-step prediction ``lr^2 g^T A g`` of plain GD/SGD is available to
    :func:`classify_breaking`.

    **Distributed data parallelism.** ``model`` may be a ``DistributedDataParallel`` wrapper
    (``step_fn`` gets the wrapper, so its backward averages the gradients; the charges are
    read from ``model.module``, whose parameter names are those of ``report``). With
    ``process_group`` (a ``torch.distributed`` group, or ``"auto"``: see
    :func:`~thermanopt.entropy.entropic_loss.resolve_process_group`) every rank of the group
    makes the same call with its shard of each batch, and every rank returns the same
    history, equal to that of a single process on the concatenated batches (equal shards,
    as DDP's gradient average assumes):

    - charges, ``g^T A g`` and the discrete invariance errors are computed once per step,
      on the group's first rank, from the parameters and the (averaged) gradients that DDP
      keeps identical on every rank, and sent to the others in one broadcast at the end;
    - the losses returned by ``step_fn`` are this rank's; they are averaged over the ranks
      (one ``all_reduce`` at the end), so ``loss[t] = mean_r L_r = L`` of the global batch;
    - the parameters are checked to agree across ranks (one ``all_reduce`` of a checksum:
      per-tensor sum and sum of squares) before the first and after the last step;
      ``ValueError`` when they differ (a model built differently on some rank, or a
      ``step_fn`` that bypasses the DDP wrapper so that the gradients are not averaged).

    With NCCL, select each rank's GPU (``torch.cuda.set_device``) before the call, as for
    DDP itself: the collectives run on the parameters' device.
    """
    if n_steps < 1:
        raise ValueError("n_steps must be >= 1")
    group = resolve_process_group(process_group)
    module = data_parallel_module(model)
    syms = symmetries if symmetries is not None else report.symmetries
    labels = [_label(k, s) for k, s in enumerate(syms)]
    h = BreakingHistory(labels, list(syms), lr=lr)
    records = group is None or dist.get_rank(group) == 0
    if group is not None:
        _check_replicated(module, group, "before the first step")
    if records:
        _record_invariance(h, module, report)
        _push(h.charge, h.absolute, _snapshot(module, report, h, grad=False))
    losses = []
    for _ in range(n_steps):
        losses.append(step_fn(model))
        if records:
            gs = _snapshot(module, report, h, grad=True)
            if gs is not None:
                _push(h.grad_charge, h.grad_absolute, gs)
            _push(h.charge, h.absolute, _snapshot(module, report, h, grad=False))
    if records:
        _record_invariance(h, module, report)
    h.loss = _mean_losses(losses, module, group)
    if group is not None:
        _check_replicated(module, group, "after the last step")
        h = _from_first_rank(h, group)
    return h


def _snapshot(module: nn.Module, report: SymmetryReport, h: BreakingHistory,
              grad: bool) -> dict | None:
    """Charges of every symmetry of ``h`` at the parameters (or at ``.grad``; None when a
    parameter has no gradient), on float64 copies (not live views)."""
    with torch.no_grad():
        ts = {}
        for n, p in module.named_parameters():
            src = p.grad if grad else p
            if src is None:
                return None
            ts[n] = src.detach().to(torch.float64).clone()
    return {lab: charges(ts, report, s) for lab, s in zip(h.labels, h.symmetries)}


def _push(store_q: dict, store_a: dict, snap: dict) -> None:
    for lab, (q, a) in snap.items():
        store_q.setdefault(lab, []).append(q)
        store_a.setdefault(lab, []).append(a)


def _record_invariance(h: BreakingHistory, module: nn.Module, report: SymmetryReport) -> None:
    """Append the invariance error of every discrete symmetry (start, then end)."""
    for lab, s in zip(h.labels, h.symmetries):
        if not s.continuous:
            h.invariance_error[lab] = h.invariance_error.get(lab, ()) + (
                verify_symmetry(module, report, s),)


def _mean_losses(losses: list, module: nn.Module, group: Any) -> list[float]:
    """Losses as floats (None -> nan), averaged over the ranks of ``group`` in one
    ``all_reduce`` (on the parameters' device, as NCCL needs)."""
    device = next(module.parameters()).device
    vals = torch.stack([
        torch.as_tensor(float("nan") if x is None else x).detach().to(device, torch.float64)
        .reshape(()) for x in losses])
    if group is not None:
        dist.all_reduce(vals, op=dist.ReduceOp.SUM, group=group)
        vals = vals / dist.get_world_size(group)
    return vals.tolist()


def _check_replicated(module: nn.Module, group: Any, when: str) -> None:
    """``ValueError`` unless every rank of ``group`` holds the same parameters (to a
    relative 1e-12): per-tensor sum and sum of squares, max and min over ranks in one
    ``all_reduce(MAX)`` of ``[c, -c]``."""
    with torch.no_grad():
        c = torch.stack([t for p in module.parameters() for t in (
            p.detach().to(torch.float64).sum(), p.detach().to(torch.float64).square().sum())])
        both = torch.cat([c, -c])
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
        hi, lo = both[: len(c)], -both[len(c):]
        if bool(((hi - lo) > 1e-12 * (1.0 + hi.abs())).any()):
            raise ValueError(
                f"track_breaking: the parameters differ across the ranks of process_group "
                f"{when}; every rank must hold the same model (DistributedDataParallel "
                "broadcasts rank 0's parameters) and step_fn must call the DDP wrapper so "
                "that the gradients are averaged")


def _from_first_rank(h: BreakingHistory, group: Any) -> BreakingHistory:
    """Rank 0's record (charges, gradient charges, invariance errors) on every rank, with
    this rank's (already all-reduced) losses: one ``broadcast_object_list``."""
    fields = [h.charge, h.absolute, h.grad_charge, h.grad_absolute, h.invariance_error]
    dist.broadcast_object_list(fields, group=group, group_src=0)
    h.charge, h.absolute, h.grad_charge, h.grad_absolute, h.invariance_error = fields
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
