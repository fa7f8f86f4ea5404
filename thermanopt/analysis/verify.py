"""Numerical verification of reported symmetries.

1. Group-element check: apply a random element ``g`` of one symmetry to a float64 copy of
   the parameters and measure ``||f(x; g.theta) - f(x; theta)|| / ||f(x; theta)||`` on the
   example inputs (for loss-level translations: on the log-softmax of the outputs). Exact
   symmetries give round-off (< 1e-6); a wrong claim gives O(1).
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
from .evaluation import forward as _forward
from .evaluation import inputs64 as _inputs64
from .evaluation import model64 as _model64
from .evaluation import parameters64
from .nullity import FLOAT32_FLOOR, jacobian_nullity
from .report import Symmetry, SymmetryReport

__all__ = ["verify_report", "verify_symmetry", "verify_jointly", "apply_symmetry",
           "random_element",
           "tangent_vectors", "jacobian_nullity", "parameters64", "make_claim"]
# jacobian_nullity lives in .nullity; re-exported here as part of the verification API

JACOBIAN_MAX_PARAMS = 4096
VERIFY_ALL_MAX_PARAMS = 100_000
VERIFY_TOL = 1e-6  # relative output change above which a (non-approximate) claim fails
SAMPLED_JACOBIAN_MAX_PARAMS = 2_000_000  # default sampled Jacobian check up to this size
VERIFY_TOL_FLOAT32 = 1e-4  # the same in float32 (joint check of large models)


# ---------------------------------------------------------------- group elements
def random_element(sym: Symmetry, gen: torch.Generator | int = 0):
    """A random non-identity group element of ``sym`` (see :meth:`Action.random_element`);
    permutations, sign flips and diagonals as dense matrices."""
    if isinstance(gen, int):
        gen = torch.Generator().manual_seed(gen)
    element = sym.action.random_element(sym, gen)
    return element.dense() if isinstance(element, Monomial) else element


def apply_symmetry(params: dict, report: SymmetryReport, sym: Symmetry, element) -> dict:
    """Return a copy of ``params`` transformed by the group element ``element`` of ``sym``."""
    out = {k: v.clone() for k, v in params.items()}
    sym.action.apply(out, report.context, sym, element)
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


def verify_symmetry(model: nn.Module, report: SymmetryReport, sym: Symmetry, *, seed: int = 0,
                    inputs: tuple | None = None, _cache: dict | None = None) -> float:
    """Relative output change (float64) under a random element of ``sym``."""
    cache = _cache if _cache is not None else {}
    if "m64" not in cache:
        cache["m64"] = _model64(model)
        cache["p64"] = parameters64(model)
    m64, p64 = cache["m64"], cache["p64"]
    inputs = _inputs64(inputs if inputs is not None else report.context["inputs"])
    element = random_element(sym, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        if "base" not in cache:
            cache["base"] = _forward(m64, p64, inputs)
        base = cache["base"]
        new = _forward(m64, apply_symmetry(p64, report, sym, element), inputs)
    if sym.level == "loss":
        base = torch.log_softmax(base, dim=-1)
        new = torch.log_softmax(new, dim=-1)
    return float((new - base).norm() / base.norm().clamp_min(1e-300))


def verify_jointly(model: nn.Module, report: SymmetryReport, syms: list[Symmetry], *,
                   seed: int = 0, dtype: torch.dtype = torch.float64,
                   _cache: dict | None = None) -> dict[int, float]:
    """Relative output change under the *composition* of one random element of every
    symmetry in ``syms`` (a composition of symmetries is a symmetry): one forward pass for
    all of them. When it fails, the list is bisected until every failing symmetry has its
    own error. Returns ``{index in syms: error}`` (shared by the members of a passing
    block). Loss-level members are compared on the log-softmax. ``dtype=torch.float32``
    halves the cost for large models (tolerance :data:`VERIFY_TOL_FLOAT32`)."""
    cache = _cache if _cache is not None else {}
    if "m64" not in cache:
        cache["m64"] = _model64(model, dtype)
        cache["p64"] = parameters64(model, dtype)
    m64, p64 = cache["m64"], cache["p64"]
    tol = VERIFY_TOL if dtype == torch.float64 else VERIFY_TOL_FLOAT32
    inputs = _inputs64(report.context["inputs"], dtype)
    with torch.no_grad():
        if "base" not in cache:
            cache["base"] = _forward(m64, p64, inputs)
    base = cache["base"]
    errors: dict[int, float] = {}

    ctx = report.context

    def error(block: list[int]) -> float:
        params = {k: v.clone() for k, v in p64.items()}
        loss = any(syms[i].level == "loss" for i in block)
        to_affine(params, ctx)  # one change of coordinates for all map actions
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
        with torch.no_grad():
            new = _forward(m64, params, inputs)
        b = torch.log_softmax(base, dim=-1) if loss else base
        n = torch.log_softmax(new, dim=-1) if loss else new
        return float((n - b).norm() / b.norm().clamp_min(1e-300))

    def check(block: list[int]) -> None:
        e = error(block)
        if e <= tol or len(block) == 1:
            for i in block:
                errors[i] = e
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


def verify_report(model: nn.Module, report: SymmetryReport, *, jacobian: bool | None = None,
                  seed: int = 0, max_params: int = JACOBIAN_MAX_PARAMS) -> SymmetryReport:
    """Run both checks and fill ``verified_error``, ``jacobian_nullity`` and ``complete``."""
    n = report.n_parameters
    cache: dict = {}
    syms = report.symmetries
    if n > VERIFY_ALL_MAX_PARAMS:
        # one composite element of all exact symmetries (bisected on failure), and one of
        # the approximate (eps) ones: two or three forward passes instead of one each
        exact = [s for s in syms if not s.approximate]
        approx = [s for s in syms if s.approximate]
        for group in (exact, approx):
            for i, e in verify_jointly(model, report, group, seed=seed, dtype=torch.float32,
                                       _cache=cache).items():
                group[i].verified_error = e
        tol = VERIFY_TOL_FLOAT32
        report.verification = f"jointly: all {len(syms)} symmetries composed (float32, " \
                              f"tolerance {tol:g}; bisected on failure)"
    else:
        tol = VERIFY_TOL
        report.verification = "all symmetries"
        for k, s in enumerate(syms):
            s.verified_error = verify_symmetry(model, report, s, seed=seed + k, _cache=cache)
    for s in syms:
        # NaN errors count as failures; approximate (eps) symmetries are exempt
        s.verified = bool(s.approximate) or bool(s.verified_error <= tol)
    bad = [s for s in syms if s.verified is False]
    if bad:
        report.notes.append("verification FAILED for: " + ", ".join(
            f"{s.kind} {s.group} (error {s.verified_error:.2e})" for s in bad))
    if bad:
        report.complete = False
    if jacobian is None:  # full check, or the matrix-free sampled one up to a few million
        jacobian = n <= SAMPLED_JACOBIAN_MAX_PARAMS
    if jacobian:
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
    return report
