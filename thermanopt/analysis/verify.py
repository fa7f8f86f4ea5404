"""Numerical verification of reported symmetries.

1. Group-element check: apply a random non-identity element ``g`` of one symmetry to the
   parameters and measure ``||f(x; g.theta) - f(x; theta)|| / ||f(x; theta)||`` on the
   example inputs (for loss-level translations: on the log-softmax of the outputs). Models up
   to ``VERIFY_ALL_MAX_PARAMS`` parameters: one element per symmetry, in float64 (exact
   symmetries give round-off, < 1e-6; a wrong claim gives O(1)). Larger models: one element
   composed of an element of every exact function-level symmetry (a composition of
   symmetries is a symmetry), one forward pass in the model's own dtype (:func:`eval_dtype`)
   with the tolerance :func:`verify_tol` scaled to its machine epsilon, bisected only when it
   fails; the loss-level and the approximate (eps) symmetries get one composed element each.
   The reference output is computed once per call, the parameters are the model's own
   tensors (never copied when no conversion is needed; an action that writes into them is
   an error).
2. Jacobian nullity: ``J = d f(x_i; theta) / d theta`` stacked over many random inputs
   (``torch.func.jacrev``); ``dim ker J`` is the dimension of the orbit through ``theta`` of
   all function-level continuous symmetries and must equal ``continuous_dim``. Models above
   ``jacobian_max_params`` parameters are checked on a subspace spanned by the reported
   tangent vectors and random coordinate directions ("sampled": the extra null dimensions
   found there are added, missing ones subtracted). Under- and over-reporting are reported
   in ``report.jacobian_details`` and ``report.complete``; nothing is hidden.
"""

from __future__ import annotations

import random

import torch
from torch import nn

from .actions import MapAction, Monomial, from_affine, make_action, to_affine
from .evaluation import Evaluation, eval_dtype, parameters64
from .evaluation import forward as _forward  # noqa: F401 - part of the verification API
from .evaluation import model64 as _model64  # noqa: F401 - part of the verification API
from .nullity import FLOAT32_FLOOR, jacobian_nullity
from .report import Symmetry, SymmetryReport

__all__ = ["verify_report", "verify_symmetry", "verify_jointly", "apply_symmetry",
           "random_element", "verify_tol", "evaluation",
           "tangent_vectors", "jacobian_nullity", "parameters64", "make_claim"]
# jacobian_nullity lives in .nullity; re-exported here as part of the verification API

JACOBIAN_MAX_PARAMS = 4096
VERIFY_ALL_MAX_PARAMS = 100_000
VERIFY_TOL = 1e-6  # relative output change above which a (non-approximate) claim fails
EPS_FACTOR = 1000.0  # the tolerance in a low-precision dtype: EPS_FACTOR machine epsilons
SAMPLED_JACOBIAN_MAX_PARAMS = 2_000_000  # default sampled Jacobian check up to this size


def verify_tol(dtype: torch.dtype) -> float:
    """Relative output change above which an exact claim fails when the model is evaluated
    in ``dtype``: ``max(VERIFY_TOL, EPS_FACTOR * eps)`` (1e-6 in float64, 1.2e-4 in
    float32, whose round-off in a 12-layer transformer is about 3e-6)."""
    return max(VERIFY_TOL, EPS_FACTOR * torch.finfo(dtype).eps)


VERIFY_TOL_FLOAT32 = verify_tol(torch.float32)


# ---------------------------------------------------------------- group elements
def random_element(sym: Symmetry, gen: torch.Generator | int = 0):
    """A random non-identity group element of ``sym`` (see :meth:`Action.random_element`);
    permutations, sign flips and diagonals as dense matrices."""
    if isinstance(gen, int):
        gen = torch.Generator().manual_seed(gen)
    element = sym.action.random_element(sym, gen)
    return element.dense() if isinstance(element, Monomial) else element


def _untouched(params: dict, versions: dict, what: object) -> None:
    """Raise when a tensor of ``params`` was written in place since ``versions`` (the
    tensors may be the model's own: actions must replace entries instead)."""
    for k, v in params.items():
        if v._version != versions[k]:
            raise RuntimeError(f"{what} wrote into parameter {k} in place; actions must "
                               "replace dict entries (see Action.apply)")


def _versions(params: dict) -> dict:
    return {k: v._version for k, v in params.items()}


def apply_symmetry(params: dict, report: SymmetryReport, sym: Symmetry, element) -> dict:
    """``params`` transformed by the group element ``element`` of ``sym``: a new dict that
    shares the tensors the action leaves alone (``params`` is never modified)."""
    out, versions = dict(params), _versions(params)
    sym.action.apply(out, report.context, sym, element)
    _untouched(params, versions, sym.action)
    return out


def make_claim(kind: str, n: int, axes: list[tuple[str, int, int]], group: str = "") -> Symmetry:
    """A user-stated (possibly wrong) claim: a group acting on ``(param, dim, role)`` axes,
    role 0 = the axis produces the space (transform by M), 1 = it consumes it (M^{-T})."""
    typ = {"permutation": "perm", "rescale": "pdiag", "sign_flip": "sign",
           "general_linear": "gl", "rotation": "orth", "scale": "homog"}[kind]
    return Symmetry(kind, typ in ("pdiag", "gl", "orth", "homog"), group or kind, 0, None,
                    [{"name": a, "index": ":", "dim": d, "role": "in" if r else "out"}
                     for a, d, r in axes], size=n,
                    action=make_action("custom", group=typ, axes=axes))


def evaluation(model: nn.Module, report: SymmetryReport, dtype: torch.dtype = torch.float64,
               inputs: tuple | None = None) -> Evaluation:
    """The shared evaluation of one verification call (the report's example inputs unless
    ``inputs``): pass it as ``_evaluation`` to several checks to reuse the reference."""
    return Evaluation(model, inputs if inputs is not None else report.context["inputs"],
                      dtype)


def verify_symmetry(model: nn.Module, report: SymmetryReport, sym: Symmetry, *, seed: int = 0,
                    inputs: tuple | None = None,
                    _evaluation: Evaluation | None = None) -> float:
    """Relative output change (float64, or ``_evaluation``'s dtype) under a random element
    of ``sym``."""
    ev = _evaluation if _evaluation is not None else evaluation(model, report, inputs=inputs)
    element = sym.action.random_element(sym, torch.Generator().manual_seed(seed))
    moved = apply_symmetry(ev.params, report, sym, element)
    return float(ev.relative_change(moved, sym.level == "loss"))


def _composite(ev: Evaluation, report: SymmetryReport, syms: list[Symmetry],
               block: list[int], seed: int) -> dict:
    """The parameters moved by the composition of one random element of each symmetry in
    ``block`` (element ``i`` drawn with seed ``seed + i``): map actions share one change of
    eval-BatchNorm coordinates, the others act in the model's own coordinates."""
    ctx, params, versions = report.context, dict(ev.params), _versions(ev.params)
    to_affine(params, ctx)
    for i in block:
        act = syms[i].action
        element = act.random_element(syms[i], torch.Generator().manual_seed(seed + i))
        if isinstance(act, MapAction):
            act.apply_raw(params, ctx, syms[i], element)
        else:
            from_affine(params, ctx)
            act.apply(params, ctx, syms[i], element)
            to_affine(params, ctx)
    from_affine(params, ctx)
    _untouched(ev.params, versions, [syms[i].action for i in block])
    return params


def verify_jointly(model: nn.Module, report: SymmetryReport, syms: list[Symmetry], *,
                   seed: int = 0, dtype: torch.dtype | None = None,
                   _evaluation: Evaluation | None = None) -> dict[int, float]:
    """Relative output change under the *composition* of one random element of every
    symmetry in ``syms`` (a composition of symmetries is a symmetry): one forward pass for
    all of them, in ``dtype`` (default: the model's own, :func:`eval_dtype`). When it
    exceeds :func:`verify_tol`, the list is bisected until every failing symmetry has its
    own error. Returns ``{index in syms: error}`` (shared by the members of a passing
    block). Loss-level members are compared on the log-softmax."""
    ev = _evaluation if _evaluation is not None else evaluation(
        model, report, dtype or eval_dtype(model))
    tol = verify_tol(ev.dtype)
    errors: dict[int, float] = {}

    def check(block: list[int]) -> None:
        loss = any(syms[i].level == "loss" for i in block)
        e = float(ev.relative_change(_composite(ev, report, syms, block, seed), loss))
        if e <= tol or len(block) == 1:
            errors.update(dict.fromkeys(block, e))
            return
        half = len(block) // 2
        check(block[:half])
        check(block[half:])

    if syms:
        check(list(range(len(syms))))
    return errors


# ---------------------------------------------------------------- tangents / Jacobian
def _flat_layout(p64: dict) -> tuple[list[str], list[int]]:
    names = list(p64)
    return names, [p64[n].numel() for n in names]


def tangent_vectors(report: SymmetryReport, p64: dict, max_per_symmetry: int | None = None,
                    seed: int = 0) -> torch.Tensor:
    """Tangent vectors (rows, flattened parameter order) of the function-level continuous
    symmetries at ``p64``: the infinitesimal action of a basis of each Lie algebra
    (:meth:`Action.tangents`)."""
    names, sizes = _flat_layout(p64)
    dev = next(iter(p64.values())).device if p64 else torch.device("cpu")
    rng = random.Random(seed)
    rows = []
    for sym in report.symmetries:
        if not sym.continuous or sym.level != "function":
            continue
        for d in sym.action.tangents(p64, report.context, sym, max_per_symmetry, rng):
            rows.append(torch.cat([d[k].reshape(-1) for k in names]))
    if not rows:
        return torch.zeros(0, sum(sizes), dtype=torch.float64, device=dev)
    return torch.stack(rows)


def _check_elements(model: nn.Module, report: SymmetryReport, seed: int) -> float:
    """Fill ``verified_error`` of every symmetry (module docstring, check 1) and
    ``report.verification``; returns the tolerance used."""
    syms = report.symmetries
    if report.n_parameters <= VERIFY_ALL_MAX_PARAMS:
        ev = evaluation(model, report)
        report.verification = "all symmetries"
        for k, s in enumerate(syms):
            s.verified_error = verify_symmetry(model, report, s, seed=seed + k, _evaluation=ev)
        return VERIFY_TOL
    # one composite element of all exact function-level symmetries (bisected on failure),
    # one of the loss-level ones (compared on the log-softmax: kept apart so that the
    # function-level claims are checked on the raw output) and one of the approximate (eps)
    # ones: up to three forward passes besides the reference
    ev = evaluation(model, report, eval_dtype(model))
    exact = [s for s in syms if not s.approximate]
    for group in ([s for s in exact if s.level != "loss"], [s for s in exact if s.level == "loss"],
                  [s for s in syms if s.approximate]):
        for i, e in verify_jointly(model, report, group, seed=seed, _evaluation=ev).items():
            group[i].verified_error = e
    tol = verify_tol(ev.dtype)
    report.verification = (f"jointly: all {len(syms)} symmetries composed "
                           f"({str(ev.dtype).removeprefix('torch.')}, tolerance {tol:.2g}; "
                           "bisected on failure)")
    return tol


def _check_jacobian(model: nn.Module, report: SymmetryReport, seed: int, max_params: int,
                    bad: list[Symmetry]) -> None:
    """Fill the Jacobian nullity fields and ``complete`` (module docstring, check 2)."""
    res = jacobian_nullity(model, report, max_params=max_params, seed=seed)
    report.jacobian_mode = res["mode"]
    report.jacobian_details = res
    if res["mode"] == "full":
        report.jacobian_nullity = res["nullity"]
        report.loss_jacobian_nullity = res.get("loss_nullity")
    else:
        extra = res["nullity"] - res["sampled_tangent_rank"]
        report.jacobian_nullity = report.continuous_dim + extra
        # the sampled subspace holds no loss-level tangents: no loss-level count here
    if res["details"].get("floor", 0.0) > FLOAT32_FLOOR:
        report.notes.append(
            f"the null singular values of the Jacobian sit at {res['details']['floor']:.1e} "
            "of the largest (a float32 round trip inside the model); the rank cut uses "
            "the gap above that floor")
    # a symmetry that fails its own check is never part of a complete report
    report.complete = report.jacobian_nullity == report.continuous_dim and not bad
    if report.jacobian_nullity > report.continuous_dim:
        report.notes.append(
            f"under-reporting: the Jacobian has {report.jacobian_nullity} null directions "
            f"but only {report.continuous_dim} continuous symmetry dimensions were found")
        where = ", ".join(f"{name} ({share:.0%})" for name, share in
                          res.get("missing", [])[:6])
        report.gaps.append(
            f"{report.jacobian_nullity - report.continuous_dim} null direction(s) of the "
            "Jacobian explained by no reported symmetry" +
            (f", carried by {where}" if where else ""))
    elif report.jacobian_nullity < report.continuous_dim:
        report.notes.append(
            f"over-reporting: {report.continuous_dim} continuous dimensions reported but "
            f"the Jacobian has only {report.jacobian_nullity} null directions")


def verify_report(model: nn.Module, report: SymmetryReport, *, jacobian: bool | None = None,
                  seed: int = 0, max_params: int = JACOBIAN_MAX_PARAMS) -> SymmetryReport:
    """Run both checks and fill ``verified_error``, ``verified``, ``jacobian_nullity`` and
    ``complete`` (``jacobian=None``: the full or sampled Jacobian check up to
    ``SAMPLED_JACOBIAN_MAX_PARAMS`` parameters)."""
    tol = _check_elements(model, report, seed)
    for s in report.symmetries:
        # NaN errors count as failures; approximate (eps) symmetries are exempt
        s.verified = bool(s.approximate) or bool(s.verified_error <= tol)
    bad = [s for s in report.symmetries if s.verified is False]
    if bad:
        report.notes.append("verification FAILED for: " + ", ".join(
            f"{s.kind} {s.group} (error {s.verified_error:.2e})" for s in bad))
        report.complete = False
    if jacobian is None:
        jacobian = report.n_parameters <= SAMPLED_JACOBIAN_MAX_PARAMS
    if jacobian:
        _check_jacobian(model, report, seed, max_params, bad)
    return report
