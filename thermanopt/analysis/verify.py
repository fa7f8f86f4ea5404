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

from .symmetries import Symmetry, SymmetryReport

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
def _rand_matrix(kind: str, n: int, c: int, gen: torch.Generator) -> torch.Tensor:
    def one():
        if kind == "perm":
            return torch.eye(n, dtype=torch.float64)[torch.randperm(n, generator=gen)]
        if kind == "sign":
            s = torch.randint(0, 2, (n,), generator=gen).to(torch.float64) * 2 - 1
            return torch.diag(s)
        if kind == "pdiag":
            return torch.diag(torch.exp(0.5 * torch.randn(n, generator=gen, dtype=torch.float64)))
        if kind == "homog":
            return torch.eye(n, dtype=torch.float64) * math.exp(
                0.5 * torch.randn(1, generator=gen, dtype=torch.float64).item())
        if kind == "gl":
            a = torch.randn(n, n, generator=gen, dtype=torch.float64) * (0.5 / math.sqrt(n))
            return torch.linalg.matrix_exp(a)
        if kind == "orth":
            q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
            return q * torch.sign(torch.diagonal(r))
        raise ValueError(f"unknown group type {kind}")

    return torch.stack([one() for _ in range(c)]) if c > 1 else one()


def random_element(sym: Symmetry, gen: torch.Generator | int = 0):
    """A random group element of ``sym`` (matrix, batch of matrices, or a shift)."""
    if isinstance(gen, int):
        gen = torch.Generator().manual_seed(gen)
    t = sym.action["type"]
    if t in ("null", "translation", "trade", "ln_null", "center", "ln_shift"):
        return gen
    if t == "ln_orth":
        n = sym.size
        r = _rand_matrix("orth", n - 1, 1, gen)
        b = _ones_complement(n)
        return torch.outer(torch.ones(n, dtype=torch.float64), torch.ones(
            n, dtype=torch.float64)) / n + b @ r @ b.T
    c = sym.copies
    return _rand_matrix(t, sym.size, c, gen)


def _leaf_positions(ctx, k):
    """Expanded (leaf-level) shape of piece k and the flat position of every leaf."""
    dims = ctx["piece_axes"][k]
    segs = ctx["segs"]
    shape, where, flat = [], {}, 0
    offsets = []
    for lf in dims:
        offsets.append(flat)
        if not lf:
            shape.append(1)
            flat += 1
            continue
        for leaf, _p in lf:
            shape.append(segs[leaf].size)
            where.setdefault(leaf, flat)
            flat += 1
    return shape, where, offsets


def _apply_axis(t: torch.Tensor, shape, target: int, copies_at: int | None, mat: torch.Tensor):
    te = t.reshape(shape)
    if mat.dim() == 2:
        te = torch.movedim(te, target, -1)
        te = te @ mat.transpose(0, 1)
        te = torch.movedim(te, -1, target)
    else:
        te = torch.movedim(te, (copies_at, target), (-2, -1))
        te = torch.einsum("...cb,cab->...ca", te, mat)
        te = torch.movedim(te, (-2, -1), (copies_at, target))
    return te.reshape(t.shape)


def _act_leaf(params, ctx, leaf: int, mat: torch.Tensor, linear: bool = False) -> None:
    """Transform every parameter axis of coupled space ``leaf`` by ``mat`` (or its dual)."""
    an = ctx["analysis"]
    segs = ctx["segs"]
    for k, d, pos, par in ctx["leaf_index"].get(leaf, []):
        pc = ctx["pieces"][k]
        shape, where, offsets = _leaf_positions(ctx, k)
        target = offsets[d] + pos
        copies_at = None
        if mat.dim() == 3:
            cleaves = an.leaves([segs[leaf].copies_of])
            if len(cleaves) != 1 or cleaves[0][0] not in where:
                raise ValueError(f"per-copy map on {pc.name} without its copy axis")
            copies_at = where[cleaves[0][0]]
        if par:
            m = -mat.transpose(-1, -2) if linear else torch.linalg.inv(mat).transpose(-1, -2)
        else:
            m = mat
        view = params[pc.name][pc.index] if pc.index else params[pc.name]
        new = _apply_axis(view, shape, target, copies_at, m.to(view))
        if pc.index:
            params[pc.name][pc.index] = new
        else:
            params[pc.name] = new


def apply_symmetry(params: dict, report: SymmetryReport, sym: Symmetry, element) -> dict:
    """Return a copy of ``params`` transformed by the group element ``element`` of ``sym``."""
    ctx = report.context
    out = {k: v.clone() for k, v in params.items()}
    t = sym.action["type"]
    if t == "null":
        gen = element
        name, idx = sym.action["param"], sym.action["index"]
        view = out[name][idx] if idx else out[name]
        shift = torch.randn(view.shape, generator=gen, dtype=torch.float64).to(view)
        if idx:
            out[name][idx] = view + shift
        else:
            out[name] = view + shift
        return out
    if t == "trade":
        gen = element
        u = torch.randn(sym.size, generator=gen, dtype=torch.float64)
        _trade_apply(out, sym.action, u)
        return out
    if t == "ln_shift":
        c = torch.randn(1, generator=element, dtype=torch.float64).item()
        out[sym.action["src"]] = out[sym.action["src"]] + c
        out[sym.action["dst"]] = out[sym.action["dst"]] - c
        return out
    if t == "ln_orth":
        _ln_orth_apply(out, ctx, sym.action, element, linear=False)
        return out
    if t == "ln_null":
        act = sym.action
        c = torch.randn(act["rows"], generator=element, dtype=torch.float64)
        dw, db = _ln_null_delta(out, act, c.to(out[act["weight"]]))
        out[act["weight"]] = out[act["weight"]] + dw.to(out[act["weight"]].dtype)
        if db is not None:
            out[act["bias"]] = out[act["bias"]] + db.to(out[act["bias"]].dtype)
        return out
    if t == "center":
        for k, d, pos in sym.action["producers"]:
            pc, delta = _center_delta(out, ctx, k, d, pos, a_gen=element)
            if pc.index:
                out[pc.name][pc.index] = out[pc.name][pc.index] + delta
            else:
                out[pc.name] = out[pc.name] + delta
        return out
    if t == "translation":
        gen = element
        w = out[sym.action["weight"]]
        v = torch.randn(w.shape[1], generator=gen, dtype=torch.float64).to(w)
        out[sym.action["weight"]] = w + v[None, :]
        if sym.action.get("bias"):
            out[sym.action["bias"]] = out[sym.action["bias"]] + torch.randn(
                1, generator=gen, dtype=torch.float64).item()
        return out
    if t == "custom":
        for name, dim, par in sym.action["axes"]:
            m = element if par == 0 else torch.linalg.inv(element).T
            x = torch.movedim(out[name], dim, -1) @ m.T.to(out[name])
            out[name] = torch.movedim(x, -1, dim)
        return out
    for leaf in sym.action["leaves"]:
        _act_leaf(out, ctx, leaf, element)
    return out


def _ones_complement(n: int) -> torch.Tensor:
    """Orthonormal basis (n, n-1) of the complement of the all-ones vector."""
    a = torch.cat([torch.ones(n, 1, dtype=torch.float64),
                   torch.eye(n, dtype=torch.float64)[:, : n - 1]], dim=1)
    return torch.linalg.qr(a)[0][:, 1:]


def _ln_orth_apply(out: dict, ctx: dict, action: dict, m: torch.Tensor, linear: bool) -> None:
    """Residual rotation fixing 1 (group element M, or Lie-algebra element A when
    ``linear``: the result is then the derivative, written into ``out`` as a delta):
    every parameter axis of the space by M, each LayerNorm reader
    ``W' = W diag(g) M^T diag(1/g)``, ``b' = b + (W - W') beta``."""
    base = {k: v.clone() for k, v in out.items()} if linear else out
    if linear:
        for k in out:
            out[k].zero_()
        tmp = {k: v.clone() for k, v in base.items()}
        for k, dd, pos, par in ctx["leaf_index"].get(action["leaf"], []):
            pc = ctx["pieces"][k]
            shape, _where, offs = _leaf_positions(ctx, k)
            view = tmp[pc.name][pc.index] if pc.index else tmp[pc.name]
            mm = -m.transpose(0, 1) if par else m
            delta = _apply_axis(view, shape, offs[dd] + pos, None, mm.to(view))
            if pc.index:
                out[pc.name][pc.index] += delta
            else:
                out[pc.name] += delta
    else:
        _act_leaf(out, ctx, action["leaf"], m)
    for nrm in action["norms"]:
        for wname, bname in nrm["readers"]:
            w = base[wname]
            g = base[nrm["gamma"]] if nrm["gamma"] else torch.ones(w.shape[1]).to(w)
            # group: W diag(g) M^T diag(1/g); algebra (M = I + A): dW = W diag(g) A^T diag(1/g)
            c = (g[:, None] * m.transpose(0, 1).to(w)) / g[None, :]
            w_new = w @ c
            if linear:
                out[wname] += w_new
            else:
                out[wname] = w_new
            if nrm["beta"] is not None and bname is not None:
                be = base[nrm["beta"]]
                if linear:
                    out[bname] += -(w_new @ be)
                else:
                    out[bname] = out[bname] + (w - w_new) @ be


def _trade_consumers(action: dict) -> list[tuple[str | None, str]]:
    """(weight name or None, bias name) of every reader that compensates a trade."""
    cons = action.get("consumers") or [(action["weight"], action["dst"])]
    return [(w[0] if w else None, dst) for w, dst in cons]


def _trade_apply(out, action, u):
    """``b_src += u`` and ``b_j -= W_j u`` (or ``u``) for every compensating reader j."""
    (sname, sidx) = action["src"]
    u = u.to(out[sname])
    if sidx:
        out[sname][sidx] = out[sname][sidx] + u
    else:
        out[sname] = out[sname] + u
    for wname, dst in _trade_consumers(action):
        out[dst] = out[dst] - (out[wname] @ u if wname else u)


def _ln_null_delta(p, act, c):
    """Rows of the weight move along 1/gamma; the bias compensates (beta/gamma).1."""
    w = p[act["weight"]]
    g = p[act["gamma"]] if act["gamma"] else torch.ones(w.shape[1], dtype=w.dtype,
                                                          device=w.device)
    dw = c[:, None] * (1.0 / g)[None, :]
    db = None
    if act["bias"]:
        db = -c * ((p[act["beta"]] / g).sum())
    return dw, db


def _center_delta(p, ctx, k, d, pos, a_gen=None, basis_index=None):
    """Shift along 1 of the target axis of piece k, by a random (or basis) tensor over the
    other axes."""
    pc = ctx["pieces"][k]
    shape, _where, offs = _leaf_positions(ctx, k)
    target = offs[d] + pos
    sub = list(shape)
    sub[target] = 1
    if basis_index is None:
        a = torch.randn(sub, generator=a_gen, dtype=torch.float64).to(p[pc.name])
    else:
        a = torch.zeros(sub, dtype=torch.float64, device=p[pc.name].device).reshape(-1)
        a[basis_index] = 1.0
        a = a.reshape(sub)
    delta = a.expand(shape).reshape(pc.shape)
    return pc, delta


def make_claim(kind: str, n: int, axes: list[tuple[str, int, int]], group: str = "") -> Symmetry:
    """A user-stated (possibly wrong) claim: a group acting on ``(param, dim, role)`` axes,
    role 0 = the axis produces the space (transform by M), 1 = it consumes it (M^{-T})."""
    typ = {"permutation": "perm", "rescale": "pdiag", "sign_flip": "sign",
           "general_linear": "gl", "rotation": "orth", "scale": "homog"}[kind]
    return Symmetry(kind, typ in ("pdiag", "gl", "orth", "homog"), group or kind, 0, None,
                    [{"name": a, "index": ":", "dim": d, "role": "in" if r else "out"}
                     for a, d, r in axes], size=n,
                    action={"type": "custom", "group": typ, "axes": axes})


def verify_symmetry(model: nn.Module, report: SymmetryReport, sym: Symmetry, *, seed: int = 0,
                    inputs: tuple | None = None, _cache: dict | None = None) -> float:
    """Relative output change (float64) under a random element of ``sym``."""
    cache = _cache if _cache is not None else {}
    if "m64" not in cache:
        cache["m64"] = _model64(model)
        cache["p64"] = parameters64(model)
    m64, p64 = cache["m64"], cache["p64"]
    inputs = _inputs64(inputs if inputs is not None else report.context["inputs"])
    gen = torch.Generator().manual_seed(seed)
    if sym.action["type"] == "custom":
        element = _rand_matrix(sym.action["group"], sym.size, 1, gen)
    else:
        element = random_element(sym, gen)
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
    symmetries at ``p64``: the infinitesimal action of a basis of each Lie algebra."""
    names, sizes = _flat_layout(p64)
    offsets = dict(zip(names, [sum(sizes[:i]) for i in range(len(sizes))]))
    total = sum(sizes)
    dev = next(iter(p64.values())).device if p64 else torch.device("cpu")
    rows = []
    rng = random.Random(seed)
    for sym in report.symmetries:
        if not sym.continuous or sym.level != "function":
            continue
        t = sym.action["type"]
        gens = []
        if t == "null":
            name, idx = sym.action["param"], sym.action["index"]
            base = torch.zeros_like(p64[name])
            ids = torch.arange(base.numel()).reshape(base.shape)
            ids = ids[idx] if idx else ids
            for i in ids.reshape(-1).tolist():
                v = torch.zeros(total, dtype=torch.float64, device=dev)
                v[offsets[name] + i] = 1.0
                gens.append(v)
            if max_per_symmetry and len(gens) > max_per_symmetry:
                gens = rng.sample(gens, max_per_symmetry)
            rows.extend(gens)
            continue
        if t == "trade":
            for i in range(sym.size):
                d = {k: torch.zeros_like(v) for k, v in p64.items()}
                u = torch.zeros(sym.size, dtype=torch.float64, device=dev)
                u[i] = 1.0
                (sname, sidx) = sym.action["src"]
                if sidx:
                    d[sname][sidx] += u
                else:
                    d[sname] += u
                for wname, dst in _trade_consumers(sym.action):
                    d[dst] -= p64[wname] @ u if wname else u
                rows.append(torch.cat([d[k].reshape(-1) for k in names]))
            continue
        if t == "ln_shift":
            d = {k: torch.zeros_like(v) for k, v in p64.items()}
            d[sym.action["src"]] += 1.0
            d[sym.action["dst"]] -= 1.0
            rows.append(torch.cat([d[k].reshape(-1) for k in names]))
            continue
        if t == "ln_orth":
            n = sym.size
            b = _ones_complement(n).to(dev)
            for i in range(n - 1):
                for j in range(i + 1, n - 1):
                    a = torch.outer(b[:, i], b[:, j])
                    a = a - a.T
                    d = {k: v.clone() for k, v in p64.items()}
                    _ln_orth_apply(d, report.context, sym.action, a, linear=True)
                    rows.append(torch.cat([d[k].reshape(-1) for k in names]))
            continue
        if t == "ln_null":
            act = sym.action
            for i in range(act["rows"]):
                d = {k: torch.zeros_like(v) for k, v in p64.items()}
                c = torch.zeros(act["rows"], dtype=torch.float64, device=dev)
                c[i] = 1.0
                dw, db = _ln_null_delta(p64, act, c)
                d[act["weight"]] += dw
                if db is not None:
                    d[act["bias"]] += db
                rows.append(torch.cat([d[k].reshape(-1) for k in names]))
            continue
        if t == "center":
            for k, dd, pos in sym.action["producers"]:
                pc = report.context["pieces"][k]
                n_other = math.prod(pc.shape) // report.context["segs"][
                    sym.action["leaf"]].size
                for i in range(n_other):
                    d = {kk: torch.zeros_like(v) for kk, v in p64.items()}
                    pc, delta = _center_delta(p64, report.context, k, dd, pos, basis_index=i)
                    if pc.index:
                        d[pc.name][pc.index] += delta
                    else:
                        d[pc.name] += delta
                    rows.append(torch.cat([d[kk].reshape(-1) for kk in names]))
            continue
        n, c = sym.size, sym.copies
        if t == "gl":
            basis = [(i, j) for i in range(n) for j in range(n)]
        elif t == "orth":
            basis = [(i, j) for i in range(n) for j in range(i + 1, n)]
        elif t == "pdiag":
            basis = [(i, i) for i in range(n)]
        elif t == "homog":
            basis = [None]
        else:
            continue
        full = [(cc, b) for cc in range(c) for b in basis]
        if max_per_symmetry and len(full) > max_per_symmetry:
            full = rng.sample(full, max_per_symmetry)
        for cc, b in full:
            x = torch.zeros((c, n, n) if c > 1 else (n, n), dtype=torch.float64, device=dev)
            xv = x[cc] if c > 1 else x
            if b is None:
                xv += torch.eye(n, dtype=torch.float64, device=dev)
            else:
                i, j = b
                xv[i, j] = 1.0
                if t == "orth":
                    xv[j, i] = -1.0
            d = {k: torch.zeros_like(v) for k, v in p64.items()}
            for leaf in sym.action["leaves"]:
                for k, dd, pos, par in report.context["leaf_index"].get(leaf, []):
                    pc = report.context["pieces"][k]
                    shape, where, offs = _leaf_positions(report.context, k)
                    target = offs[dd] + pos
                    copies_at = None
                    if x.dim() == 3:
                        segs = report.context["segs"]
                        cl = report.context["analysis"].leaves([segs[leaf].copies_of])
                        copies_at = where[cl[0][0]]
                    m = -x.transpose(-1, -2) if par else x
                    view = p64[pc.name][pc.index] if pc.index else p64[pc.name]
                    if t == "pdiag" and c == 1:  # E_ii: the unit's own entries, signed
                        te = view.reshape(shape)
                        delta = torch.zeros_like(te)
                        i = b[0]
                        delta.select(target, i).copy_(te.select(target, i) * (-1 if par else 1))
                        delta = delta.reshape(view.shape)
                    else:
                        delta = _apply_axis(view, shape, target, copies_at, m)
                    if pc.index:
                        d[pc.name][pc.index] += delta
                    else:
                        d[pc.name] += delta
            rows.append(torch.cat([d[k].reshape(-1) for k in names]))
    if not rows:
        return torch.zeros(0, total, dtype=torch.float64, device=dev)
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
