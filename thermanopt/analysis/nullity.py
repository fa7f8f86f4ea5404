"""Jacobian nullity: the dimension of the continuous symmetries a model really has.

Every function-level continuous symmetry direction ``t`` satisfies ``J(x) t = 0`` for every
input ``x``, where ``J(x) = d f(x; theta) / d theta``; at a generic ``theta`` the kernel of the
Jacobian stacked over enough inputs is exactly the tangent space of the symmetry orbit
(Ziyin, Xu & Chuang, arXiv 2505.12387, §2). Two modes:

- ``full`` (up to ``max_params`` parameters): rows of ``J`` for random inputs are folded into
  a triangular factor ``R`` (QR of ``[R; J_new]``, memory ``O(P^2)``) until the nullity is
  stable: at least 1.5 P rows and unchanged over the last two chunks (each of P/2 rows and
  at least 8 input draws), or 6 P rows (20 P, up to 10^4 rows, for small models).
- ``sampled`` (larger models): the Jacobian restricted to the span of sampled tangent vectors
  of the reported symmetries and random coordinate directions, computed matrix-free with
  Jacobian-vector products (no dense rows of length P); extra null directions found there
  are added to the reported dimension, missing ones subtracted.

The rank is cut at the first drop by at least ``GAP`` to below ``CUT`` times the largest
singular value; the null values of a float64 model sit near 1e-16, those of a model that
round-trips through float32 (RMSNorm, eager attention upcasts) near 1e-7: ``floor`` records
where they sit, and a floor above 1e-10 is reported instead of silently losing symmetries.
"""

from __future__ import annotations

import math
import random

import torch
from torch import nn

from .evaluation import forward, inputs64, model64, parameters64

__all__ = ["rank_cut", "random_inputs", "jacobian_nullity", "GAP", "CUT", "FLOAT32_FLOOR"]

GAP = 1e3  # smallest ratio between the last kept and the first null singular value
CUT = 1e-5  # null singular values lie below CUT * largest
FLOAT32_FLOOR = 1e-10  # null values above this (relative) come from a float32 round trip
MIN_DRAWS = 8  # input draws per chunk of rows


def rank_cut(singular: torch.Tensor) -> tuple[int, float, float]:
    """``(rank, floor, gap)`` of a descending singular spectrum (see module docstring)."""
    if singular.numel() == 0 or float(singular[0]) == 0.0:
        return 0, 0.0, math.inf
    rel = (singular / singular[0]).clamp_min(1e-300)
    ratios = rel[:-1] / rel[1:]
    drops = ((ratios >= GAP) & (rel[1:] < CUT)).nonzero().flatten()
    if drops.numel():
        k = int(drops[0]) + 1
        return k, float(rel[k]), float(ratios[k - 1])
    k = int((rel > CUT).sum())
    return k, float(rel[k]) if k < rel.numel() else 0.0, math.inf


def random_inputs(model: nn.Module, inputs: tuple, gen: torch.Generator) -> tuple:
    """Fresh inputs shaped like ``inputs``: standard normal floats, token ids below the
    largest embedding table (or the largest example id)."""
    vocab = max([m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)],
                default=None)
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            out.append(torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device))
        elif isinstance(x, torch.Tensor) and x.dtype != torch.bool:
            high = vocab or int(x.max()) + 1
            out.append(torch.randint(0, high, x.shape, generator=gen).to(x.device))
        else:
            out.append(x)
    return tuple(out)


def _generic_point(model: nn.Module, gen: torch.Generator, perturb: float) -> dict:
    """Parameters moved off special initial values (LayerNorm gamma = 1, zero biases), where
    accidental extra null directions would appear."""
    p64 = parameters64(model)
    for k, v in p64.items():
        scale = float(v.std()) if v.numel() > 1 and float(v.std()) > 0 else 1.0
        p64[k] = v + perturb * scale * torch.randn(v.shape, generator=gen,
                                                   dtype=v.dtype).to(v.device)
    return p64


def _jacobian_rows(f, flat0: torch.Tensor, draws: list[tuple]) -> torch.Tensor:
    """Rows ``d f(x) / d theta`` for every input tuple in ``draws``, stacked: one vmapped
    reverse-mode Jacobian over the draws (each draw is a full example batch, so any input
    layout works), or a loop when an op has no batching rule."""
    try:
        stacked = tuple(torch.stack([d[i] for d in draws]) if isinstance(draws[0][i],
                                                                          torch.Tensor)
                        else draws[0][i] for i in range(len(draws[0])))
        dims = tuple(0 if isinstance(x, torch.Tensor) else None for x in draws[0])
        j = torch.func.vmap(torch.func.jacrev(f), in_dims=(None, dims))(flat0, stacked)
        return j.reshape(-1, flat0.numel())
    except Exception:  # noqa: BLE001 - ops without vmap rules (in-place, data-dependent)
        return torch.cat([torch.func.jacrev(f)(flat0, d).reshape(-1, flat0.numel())
                          for d in draws])


def jacobian_nullity(model: nn.Module, report, *, max_params: int = 4096, seed: int = 0,
                     perturb: float = 0.1, max_factor: float = 6.0,
                     n_tangents: int = 96, n_coords: int = 64) -> dict:
    """The Jacobian check (module docstring). Returns ``mode``, ``nullity``, ``details``
    (rows, columns, history, floor, gap), ``n_params``, ``loss_nullity`` for logits, and
    for the sampled mode ``sampled_tangents`` / ``sampled_tangent_rank``. Normalisation
    layers get eps = 0 (train-mode BatchNorm 1e-300) so that their scale symmetries are
    exact; eval-mode BatchNorm keeps its eps (its symmetries hold for any eps)."""
    m64 = model64(model)
    for mod in m64.modules():
        if hasattr(mod, "eps") and isinstance(mod.eps, float):
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                if mod.training or not mod.track_running_stats:
                    mod.eps = 1e-300
            else:
                mod.eps = 0.0
    gen = torch.Generator().manual_seed(seed)
    p64 = _generic_point(model, gen, perturb)
    names = list(p64)
    sizes = [p64[k].numel() for k in names]
    P = sum(sizes)
    base = inputs64(report.context["inputs"])
    with torch.no_grad():
        n_out = forward(m64, p64, base).numel()
    loss_level = report.context.get("output") == "logits"
    if P <= max_params:
        return _full(m64, model, report, p64, names, sizes, base, n_out, gen, max_factor,
                     loss_level)
    return _sampled(m64, model, report, p64, names, base, gen, seed, n_tangents, n_coords)


def _unflat(v: torch.Tensor, names: list[str], sizes: list[int], like: dict) -> dict:
    out, o = {}, 0
    for k, n in zip(names, sizes):
        out[k] = v[o:o + n].reshape(like[k].shape)
        o += n
    return out


def _full(m64, model, report, p64, names, sizes, base, n_out, gen, max_factor,
          loss_level) -> dict:
    P = sum(sizes)
    flat0 = torch.cat([p64[k].reshape(-1) for k in names])
    per_call = max(1, min(64, -(-max(P // 8, 1) // n_out)))  # draws per vmapped call

    def f(v, xin):
        return forward(m64, _unflat(v, names, sizes, p64), xin).reshape(-1)

    with torch.no_grad():
        out_shape = forward(m64, p64, base).shape
    r = rc = None
    rows, n_draws, history, floor, gap = 0, 0, [], 0.0, math.inf
    while True:
        # a chunk: half the parameter count of rows and at least MIN_DRAWS input draws (the
        # rows of one draw are strongly correlated: spatial positions, sequence tokens)
        target, first = rows + max(P // 2, 1), n_draws
        while rows < target or n_draws - first < MIN_DRAWS:
            draws = [random_inputs(model, base, gen) for _ in range(per_call)]
            n_draws += len(draws)
            j = _jacobian_rows(f, flat0, draws)
            rows += j.shape[0]
            r = torch.linalg.qr(j if r is None else torch.cat([r, j]), mode="r").R
            if loss_level and len(out_shape) >= 1:
                jj = j.reshape(-1, *out_shape, P)
                jc = (jj - jj.mean(dim=-2, keepdim=True)).reshape(-1, P)
                rc = torch.linalg.qr(jc if rc is None else torch.cat([rc, jc]), mode="r").R
        rank, floor, gap = rank_cut(torch.linalg.svdvals(r))
        history.append(P - rank)
        # unchanged over the last two chunks: rarely excited directions (units active on a
        # few inputs only) make the nullity creep down slowly
        stable = len(history) >= 3 and history[-1] == history[-2] == history[-3]
        cap = max(max_factor * P, min(20 * P, 10_000))  # small models: rows are cheap
        if (rows >= 1.5 * P and stable) or (rows >= cap and n_draws >= 16 * MIN_DRAWS):
            break
    res = {"mode": "full", "nullity": P - rank, "n_params": P,
           "details": {"rows": rows, "cols": P, "history": history, "floor": floor,
                       "gap": gap, "draws": n_draws}}
    if rc is not None:
        res["loss_nullity"] = P - rank_cut(torch.linalg.svdvals(rc))[0]
    tang = _dense_tangents(report, p64, names)
    if tang.shape[0]:
        # ||J t|| = ||R t||: the reported directions must lie in the kernel
        res["tangent_residual"] = float((r @ tang.T).norm() / (r.norm() * tang.norm()))
        res["tangent_rank"] = rank_cut(torch.linalg.svdvals(tang))[0]
    if P - rank > res.get("tangent_rank", 0):
        res["missing"] = _missing(r, rank, tang, names, sizes)
    return res


def _missing(r: torch.Tensor, rank: int, tang: torch.Tensor, names: list[str],
             sizes: list[int]) -> list[tuple[str, float]]:
    """Where the null directions that no reported symmetry explains live: the share of their
    squared norm carried by each parameter (largest first)."""
    null = torch.linalg.svd(r, full_matrices=True).Vh[rank:].T  # (P, nullity)
    if tang.shape[0]:
        q, rr = torch.linalg.qr(tang.T)
        d = torch.diagonal(rr).abs()
        q = q[:, d > d.max() * 1e-10]
        null = null - q @ (q.T @ null)
    u, s, _ = torch.linalg.svd(null, full_matrices=False)
    u = u[:, s > 1e-6]
    if u.shape[1] == 0:
        return []
    mass = (u ** 2).sum(1)
    out, o = [], 0
    for k, n in zip(names, sizes):
        out.append((k, float(mass[o:o + n].sum() / mass.sum())))
        o += n
    return sorted([m for m in out if m[1] >= 0.01], key=lambda m: -m[1])


def _dense_tangents(report, p64: dict, names: list[str]) -> torch.Tensor:
    """Tangent vectors of every function-level continuous symmetry as dense rows."""
    rows = []
    rng = random.Random(0)
    for sym in report.symmetries:
        if sym.continuous and sym.level == "function":
            for d in sym.action.tangents(p64, report.context, sym, None, rng):
                rows.append(torch.cat([d[k].reshape(-1) for k in names]))
    if not rows:
        return torch.zeros(0, sum(p64[k].numel() for k in names), dtype=torch.float64)
    return torch.stack(rows)


def _sampled(m64, model, report, p64, names, base, gen, seed, n_tangents, n_coords) -> dict:
    """Matrix-free check on the span of sampled tangents and coordinate directions."""
    rng = random.Random(seed)
    tangents = []
    for sym in report.symmetries:
        if sym.continuous and sym.level == "function":
            for d in sym.action.tangents(p64, report.context, sym, 4, rng):
                tangents.append({k: v for k, v in d.items() if bool(v.any())})
    if len(tangents) > n_tangents:
        tangents = rng.sample(tangents, n_tangents)
    coords = []
    for _ in range(n_coords):
        name = rng.choices(names, weights=[p64[k].numel() for k in names])[0]
        coords.append((name, rng.randrange(p64[name].numel())))

    zero = {k: torch.zeros((), dtype=v.dtype, device=v.device).expand(v.shape)
            for k, v in p64.items()}

    def direction(i):
        d = dict(zero)
        if i < len(tangents):
            d.update(tangents[i])
            return d
        name, j = coords[i - len(tangents)]
        e = torch.zeros_like(p64[name])
        e.view(-1)[j] = 1.0
        d[name] = e
        return d

    cols = len(tangents) + len(coords)
    blocks, rows = [], 0
    while rows < 3 * cols:
        xin = random_inputs(model, base, gen)

        def f(params, xin=xin):
            return forward(m64, params, xin).reshape(-1)
        col = [torch.func.jvp(f, (p64,), (direction(i),))[1] for i in range(cols)]
        blocks.append(torch.stack(col, dim=1))
        rows += blocks[-1].shape[0]
    j = torch.cat(blocks)
    rank, floor, gap = rank_cut(torch.linalg.svdvals(j))
    t_rank = _rank(tangents) if tangents else 0
    return {"mode": "sampled", "nullity": cols - rank, "n_params": sum(
        v.numel() for v in p64.values()), "sampled_tangents": len(tangents),
        "sampled_tangent_rank": t_rank,
        "details": {"rows": rows, "cols": cols, "floor": floor, "gap": gap}}


def _rank(tangents: list[dict]) -> int:
    """Rank of sparse tangent vectors (dicts of their non-zero parameters), from their Gram
    matrix: no dense stacking."""
    n = len(tangents)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for a in range(n):
        for b in range(a, n):
            common = tangents[a].keys() & tangents[b].keys()
            v = sum(float((tangents[a][k] * tangents[b][k]).sum()) for k in common)
            gram[a, b] = gram[b, a] = v
    ev = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).sqrt()
    return rank_cut(ev)[0]
