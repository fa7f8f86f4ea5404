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

import copy
import math
import random

import torch
from torch import nn

from .actions import make_action
from .report import Symmetry, SymmetryReport

__all__ = ["verify_report", "verify_symmetry", "apply_symmetry", "random_element",
           "tangent_vectors", "jacobian_nullity", "parameters64", "make_claim"]

JACOBIAN_MAX_PARAMS = 3000
VERIFY_ALL_MAX_PARAMS = 100_000
VERIFY_TOL = 1e-6  # relative output change above which a (non-approximate) claim fails


def parameters64(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached float64 copies of the model's named parameters (the model is not modified)."""
    return {n: p.detach().to(torch.float64).clone() for n, p in model.named_parameters()}


def _model64(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).to(torch.float64)
    for mod in m.modules():
        if isinstance(mod, (nn.Dropout, nn.Dropout1d, nn.Dropout2d)):
            mod.eval()
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training:
            # batch statistics without buffer updates (pure function for torch.func)
            mod.track_running_stats = False
            mod.running_mean = mod.running_var = mod.num_batches_tracked = None
    return m


def _inputs64(inputs: tuple) -> tuple:
    return tuple(x.to(torch.float64) if isinstance(x, torch.Tensor) and x.is_floating_point()
                 else x for x in inputs)


def _forward(m64: nn.Module, params: dict, inputs: tuple) -> torch.Tensor:
    out = torch.func.functional_call(m64, params, inputs)
    if isinstance(out, (tuple, list)):
        out = torch.cat([o.reshape(-1) for o in out if isinstance(o, torch.Tensor)])
    return out


# ---------------------------------------------------------------- group elements
def random_element(sym: Symmetry, gen: torch.Generator | int = 0):
    """A random non-identity group element of ``sym`` (see :meth:`Action.random_element`)."""
    if isinstance(gen, int):
        gen = torch.Generator().manual_seed(gen)
    return sym.action.random_element(sym, gen)


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


def _random_inputs(model, inputs: tuple, gen: torch.Generator) -> tuple:
    vocab = max([m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)],
                default=None)
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            out.append(torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device))
        elif isinstance(x, torch.Tensor):
            high = vocab or int(x.max()) + 1
            out.append(torch.randint(0, high, x.shape, generator=gen).to(x.device))
        else:
            out.append(x)
    return tuple(out)


def _row_rank(t: torch.Tensor) -> int:
    """Rank of a wide matrix (few rows) through the R factor of its transpose."""
    if t.shape[0] == 0:
        return 0
    r = torch.linalg.qr(t.T, mode="r")[1]
    d = torch.diagonal(r).abs()
    return int((d > d.max() * 1e-10).sum())


def _nullity(j: torch.Tensor) -> tuple[int, dict]:
    if j.shape[1] == 0:
        return 0, {}
    s = torch.linalg.svdvals(j)
    s0 = float(s[0]) if s.numel() else 0.0
    tol = s0 * max(j.shape) * 1e-13
    rank = int((s > tol).sum())
    null = j.shape[1] - rank
    small = float(s[rank - 1] / s0) if rank > 0 else 0.0
    nxt = float(s[rank] / s0) if rank < s.numel() else 0.0
    return null, {"rows": j.shape[0], "cols": j.shape[1], "smallest_kept": small,
                  "largest_dropped": nxt}


def jacobian_nullity(model: nn.Module, report: SymmetryReport, *, max_params: int = \
                     JACOBIAN_MAX_PARAMS, seed: int = 0, oversample: float = 4.0,
                     perturb: float = 0.1) -> dict:
    """Jacobian check (see module docstring). Returns a dict of results. Normalization
    layers get eps = 0 in the copy used here, where their scale symmetries are exact."""
    m64 = _model64(model)
    for mod in m64.modules():
        if hasattr(mod, "eps") and isinstance(mod.eps, float):
            mod.eps = 1e-300 if isinstance(mod, nn.modules.batchnorm._BatchNorm) else 0.0
    p64 = parameters64(model)
    names, sizes = _flat_layout(p64)
    P = sum(sizes)
    gen = torch.Generator().manual_seed(seed)
    # a generic point near theta: fresh initialisations are not generic (LayerNorm gamma = 1,
    # beta = 0, zero biases) and have accidental extra null directions
    for k in names:
        v = p64[k]
        scale = float(v.std()) if v.numel() > 1 and float(v.std()) > 0 else 1.0
        p64[k] = v + perturb * scale * torch.randn(v.shape, generator=gen,
                                                   dtype=v.dtype).to(v.device)
    flat0 = torch.cat([p64[k].reshape(-1) for k in names])
    base_inputs = report.context["inputs"]

    def unflat(v):
        out, o = {}, 0
        for k, n in zip(names, sizes):
            out[k] = v[o:o + n].reshape(p64[k].shape)
            o += n
        return out

    loss_level = report.context.get("output") == "logits"
    with torch.no_grad():
        n_out = _forward(m64, p64, _inputs64(base_inputs)).numel()
    if P <= max_params:
        mode, cols = "full", P
        basis = None
    else:
        mode = "sampled"
        tang = tangent_vectors(report, p64, max_per_symmetry=64, seed=seed)
        if tang.shape[0] > 100:
            tang = tang[torch.randperm(tang.shape[0], generator=gen)[:100]]
        coords = torch.randperm(P, generator=gen)[:150].to(flat0.device)
        basis = (tang, coords)
        cols = tang.shape[0] + coords.numel()
    if mode == "sampled":
        oversample = min(oversample, 2.0)
    n_calls = math.ceil(oversample * cols / n_out) + 1
    rows, rows_c = [], []
    for _ in range(n_calls):
        xin = _random_inputs(model, base_inputs, gen)

        if basis is None:
            def f(v, xin=xin):
                return _forward(m64, unflat(v), xin).reshape(-1)
            out_shape = _forward(m64, p64, xin).shape
            j = torch.func.jacrev(f)(flat0)
        else:
            tang, coords = basis

            def f(v, xin=xin):
                return _forward(m64, unflat(v), xin).reshape(-1)
            out_shape = _forward(m64, p64, xin).shape
            _, vjp_fn = torch.func.vjp(f, flat0)
            eye = torch.eye(n_out, dtype=torch.float64, device=flat0.device)
            k = max(1, int(2e7 // P))
            parts = []
            for s0 in range(0, n_out, k):
                jc = torch.func.vmap(vjp_fn)(eye[s0:s0 + k])[0]  # rows of J, (k, P)
                parts.append(torch.cat([jc @ tang.T, jc[:, coords]], dim=1))
            j = torch.cat(parts)
        rows.append(j)
        if loss_level and len(out_shape) >= 1:
            jj = j.reshape(*out_shape, cols)
            rows_c.append((jj - jj.mean(dim=-2, keepdim=True)).reshape(-1, cols))
    J = torch.cat(rows)
    null, det = _nullity(J)
    res = {"mode": mode, "nullity": null, "details": det, "n_params": P}
    if rows_c:
        res["loss_nullity"], _ = _nullity(torch.cat(rows_c))
    if basis is not None:
        tang = basis[0]
        t_rank = _row_rank(tang)
        res["sampled_tangents"] = tang.shape[0]
        res["sampled_tangent_rank"] = t_rank
    else:
        tang = tangent_vectors(report, p64)
        if tang.shape[0]:
            jt = J @ tang.T
            res["tangent_residual"] = float(jt.norm() / (J.norm() * tang.norm()))
            res["tangent_rank"] = _row_rank(tang)
    return res


def verify_report(model: nn.Module, report: SymmetryReport, *, jacobian: bool | None = None,
                  seed: int = 0, max_params: int = JACOBIAN_MAX_PARAMS) -> SymmetryReport:
    """Run both checks and fill ``verified_error``, ``jacobian_nullity`` and ``complete``."""
    n = report.n_parameters
    cache: dict = {}
    syms = report.symmetries
    if n > VERIFY_ALL_MAX_PARAMS and len(syms) > 8:
        rng = random.Random(seed)
        syms = rng.sample(syms, 8)
        report.verification = f"sampled: {len(syms)} of {len(report.symmetries)} symmetries"
    else:
        report.verification = "all symmetries"
    for k, s in enumerate(syms):
        s.verified_error = verify_symmetry(model, report, s, seed=seed + k, _cache=cache)
        # NaN errors count as failures; approximate (eps) symmetries are exempt
        s.verified = bool(s.approximate) or bool(s.verified_error <= VERIFY_TOL)
    bad = [s for s in syms if s.verified is False]
    if bad:
        report.notes.append("verification FAILED for: " + ", ".join(
            f"{s.kind} {s.group} (error {s.verified_error:.2e})" for s in bad))
    if bad:
        report.complete = False
    if jacobian is None:
        jacobian = n <= VERIFY_ALL_MAX_PARAMS
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
        # a symmetry that fails its own check is never part of a complete report
        report.complete = report.jacobian_nullity == report.continuous_dim and not bad
        if report.jacobian_nullity > report.continuous_dim:
            report.notes.append(
                f"under-reporting: the Jacobian has {report.jacobian_nullity} null directions "
                f"but only {report.continuous_dim} continuous symmetry dimensions were found")
        elif report.jacobian_nullity < report.continuous_dim:
            report.notes.append(
                f"over-reporting: {report.continuous_dim} continuous dimensions reported but "
                f"the Jacobian has only {report.jacobian_nullity} null directions")
    return report
