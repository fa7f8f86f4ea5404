"""Symmetry actions: one class per kind of group action on the parameters.

Every action knows its random (non-identity) group element, how that element acts on a dict
of parameters, the tangent vectors of its Lie algebra at a point (continuous kinds) and its
charge: the Noether quantity ``theta^T A theta`` of a symmetric generator ``A``, conserved by
gradient flow, or ``<a, theta>`` for a translation (Ziyin, Xu & Chuang, arXiv 2505.12387,
§2; for discrete kinds an order parameter, the distance to the fixed set).

Map actions (:class:`MapAction`) act with one matrix ``M`` per coupled space: every parameter
axis on the space is multiplied by ``M`` (it produces the space) or ``M^{-T}`` (it reads it).
Eval-mode BatchNorms are handled in the coordinates ``A = g / s``, ``B = b - A m``
(``s = sqrt(v + eps)``), in which they are a per-channel affine map.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch

__all__ = ["Action", "MapAction", "Monomial", "make_action", "random_matrix",
           "random_monomial", "leaf_positions", "apply_axis", "apply_monomial", "to_affine",
           "from_affine", "ACTIONS"]


# ---------------------------------------------------------------- shared helpers
class Monomial:
    """A matrix with one non-zero per row: ``M[i, idx[i]] = scale[i]`` (permutations, sign
    flips, positive diagonals) stored without its zeros."""

    def __init__(self, idx: torch.Tensor, scale: torch.Tensor, *, permutes: bool = True,
                 scales: bool = True) -> None:
        self.idx, self.scale = idx, scale
        #: ``False`` when known without looking at the values: ``idx`` is the identity
        #: (diagonals), ``scale`` is all ones (permutations); the work is then skipped
        self.permutes, self.scales = permutes, scales

    def parts(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(idx, scale)`` for :func:`apply_monomial`, ``None`` for a part known to be the
        identity."""
        return (self.idx if self.permutes else None), (self.scale if self.scales else None)

    def dense(self) -> torch.Tensor:
        """The ``n x n`` matrix."""
        n = self.idx.numel()
        m = torch.zeros(n, n, dtype=self.scale.dtype)
        m[torch.arange(n), self.idx] = self.scale
        return m

    def dim(self) -> int:
        """2, like the dense matrix it stands for."""
        return 2


def random_monomial(kind: str, n: int, gen: torch.Generator) -> Monomial:
    """A random non-identity permutation, sign flip, positive diagonal or scale on ``n``
    units, without building the ``n x n`` matrix."""
    idx = torch.arange(n)
    scale = torch.ones(n, dtype=torch.float64)
    if kind == "perm":
        idx = torch.randperm(n, generator=gen)
        if n > 1 and bool((idx == torch.arange(n)).all()):
            idx = torch.roll(idx, 1)
    elif kind == "sign":
        scale = torch.randint(0, 2, (n,), generator=gen).to(torch.float64) * 2 - 1
        if bool((scale > 0).all()):
            scale[torch.randint(0, n, (1,), generator=gen)] = -1.0
    elif kind == "pdiag":
        scale = torch.exp(0.5 * torch.randn(n, generator=gen, dtype=torch.float64))
    elif kind == "homog":
        scale = scale * math.exp(0.5 * torch.randn(1, generator=gen, dtype=torch.float64).item())
    else:
        raise ValueError(f"{kind} is not a monomial group")
    return Monomial(idx, scale, permutes=kind == "perm", scales=kind != "perm")


def random_matrix(kind: str, n: int, c: int, gen: torch.Generator) -> torch.Tensor:
    """A random non-identity element of ``kind`` (``perm``, ``sign``, ``pdiag``, ``homog``,
    ``gl``, ``orth``) on ``n`` units, ``c`` independent copies (a batch when ``c > 1``)."""
    def one():
        eye = torch.eye(n, dtype=torch.float64)
        if kind == "perm":
            p = torch.randperm(n, generator=gen)
            if n > 1 and bool((p == torch.arange(n)).all()):
                p = torch.roll(p, 1)
            return eye[p]
        if kind == "sign":
            s = torch.randint(0, 2, (n,), generator=gen).to(torch.float64) * 2 - 1
            if bool((s > 0).all()):
                s[torch.randint(0, n, (1,), generator=gen)] = -1.0
            return torch.diag(s)
        if kind == "pdiag":
            return torch.diag(torch.exp(0.5 * torch.randn(n, generator=gen, dtype=torch.float64)))
        if kind == "homog":
            return eye * math.exp(0.5 * torch.randn(1, generator=gen, dtype=torch.float64).item())
        if kind == "gl":
            a = torch.randn(n, n, generator=gen, dtype=torch.float64) * (0.5 / math.sqrt(n))
            return torch.linalg.matrix_exp(a)
        if kind == "orth":
            q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
            return q * torch.sign(torch.diagonal(r))
        raise ValueError(f"unknown group type {kind}")

    return torch.stack([one() for _ in range(c)]) if c > 1 else one()


def leaf_positions(ctx: dict, k: int) -> tuple[list, dict, list]:
    """Expanded (leaf-level) shape of piece ``k``, the flat position of every leaf and the
    offset of every dimension."""
    segs = ctx["segs"]
    shape, where, offsets, flat = [], {}, [], 0
    for lf in ctx["piece_axes"][k]:
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


def apply_axis(t: torch.Tensor, shape: list, target: int, copies_at: int | None,
               mat: torch.Tensor) -> torch.Tensor:
    """``mat`` applied to axis ``target`` of ``t`` viewed as ``shape`` (one matrix per index of
    axis ``copies_at`` when ``mat`` is a batch)."""
    te = t.reshape(shape)
    if mat.dim() == 2:
        te = torch.movedim(te, target, -1) @ mat.transpose(0, 1)
        te = torch.movedim(te, -1, target)
    else:
        te = torch.movedim(te, (copies_at, target), (-2, -1))
        te = torch.einsum("...cb,cab->...ca", te, mat)
        te = torch.movedim(te, (-2, -1), (copies_at, target))
    return te.reshape(t.shape)


def apply_monomial(t: torch.Tensor, shape: list, target: int, idx: torch.Tensor | None,
                   scale: torch.Tensor | None) -> torch.Tensor:
    """``M`` with one non-zero per row (``M[i, idx[i]] = scale[i]``: permutations, signs,
    diagonals) applied to axis ``target``: ``y[.., i, ..] = scale[i] t[.., idx[i], ..]``, an
    index and a product instead of a dense matrix product (``idx=None``: the identity
    permutation, ``scale=None``: unit scales; that step is skipped)."""
    te = t.reshape(shape)
    if idx is not None:
        te = te.index_select(target, idx)
    if scale is not None:
        view = [1] * len(shape)
        view[target] = -1
        te = te * scale.reshape(view)
    return te.reshape(t.shape)


def _monomial_axis(t: torch.Tensor, shape: list, target: int, idx: torch.Tensor | None,
                   scale: torch.Tensor | None, inverse_t: bool) -> torch.Tensor:
    """:func:`apply_monomial` of ``M`` or (``inverse_t``) of ``M^{-T}``, which has the same
    pattern with the reciprocal values, in ``t``'s dtype and device."""
    s = None if scale is None else (1.0 / scale if inverse_t else scale).to(t)
    return apply_monomial(t, shape, target, None if idx is None else idx.to(t.device), s)


def _write(params: dict, name: str, index: tuple, value: torch.Tensor, add: bool) -> None:
    """``params[name]`` (its slice ``index``) set to ``value`` (``add``: plus ``value``) by
    replacing the entry, never by writing into the tensor: ``params`` may be a shallow copy
    sharing its tensors with the model (the contract of :meth:`Action.apply`)."""
    old = params[name]
    if index:
        new = old.clone()
        new[index] = old[index] + value if add else value
    else:
        new = old + value if add else value
    params[name] = new


def _view(params: dict, name: str, index: tuple) -> torch.Tensor:
    return params[name][index] if index else params[name]


def shift_scale(t: torch.Tensor) -> float:
    """Size of a random additive group element for parameter ``t``: half its standard
    deviation (shifts of order one on weights of order 0.02 would drown a float32 check in
    cancellation), 0.5 for constant tensors."""
    s = float(t.detach().float().std()) if t.numel() > 1 else 0.0
    return 0.5 * s if s > 0 else 0.5


def _flat(d: dict, names: list[str]) -> torch.Tensor:
    return torch.cat([d[k].reshape(-1) for k in names])


def _zeros(p: dict) -> dict:
    return {k: torch.zeros_like(v) for k, v in p.items()}


def _np(v: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return v.detach().cpu().numpy(), v.detach().abs().cpu().numpy()


# ---------------------------------------------------------------- eval-mode BatchNorm
def _stats(ctx: dict, rp: dict, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    bufs = ctx.get("buffers", {})
    m = bufs[rp["mean"]].to(like)
    s = torch.sqrt(bufs[rp["var"]].to(like) + rp["eps"])
    return m, s


def to_affine(params: dict, ctx: dict) -> None:
    """``(g, b) -> (A, B) = (g / s, b - m g / s)`` for every eval-mode BatchNorm (in place)."""
    for rp in ctx["analysis"].reparams:
        g, b = params[rp["gamma"]], params[rp["beta"]]
        m, s = _stats(ctx, rp, g)
        a = g / s
        params[rp["gamma"]], params[rp["beta"]] = a, b - a * m


def from_affine(params: dict, ctx: dict) -> None:
    """Inverse of :func:`to_affine`: ``g = A s``, ``b = B + A m``."""
    for rp in ctx["analysis"].reparams:
        a, bb = params[rp["gamma"]], params[rp["beta"]]
        m, s = _stats(ctx, rp, a)
        params[rp["gamma"]], params[rp["beta"]] = a * s, bb + a * m


def push_affine(delta: dict, ctx: dict) -> None:
    """Tangent vector in ``(A, B)`` coordinates -> in ``(g, b)``: ``dg = s dA``,
    ``db = dB + m dA``."""
    for rp in ctx["analysis"].reparams:
        da, db = delta[rp["gamma"]], delta[rp["beta"]]
        m, s = _stats(ctx, rp, da)
        delta[rp["gamma"]], delta[rp["beta"]] = da * s, db + da * m


# ---------------------------------------------------------------- base class
class Action:
    """Base: the data of an action (``action["key"]`` reads it) and the interface."""

    kind = ""
    #: charges follow the exact per-step law ``Delta C = eta^2 g^T A g`` (symmetric ``A``)
    quadratic = False
    #: gradient flow conserves a charge of this action
    tracked = True

    def __init__(self, **data: Any) -> None:
        self.data = data

    def __getitem__(self, key: str) -> Any:
        return self.kind if key == "type" else self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``action[key]`` or ``default``."""
        return self.kind if key == "type" else self.data.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key == "type" or key in self.data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.data})"

    def random_element(self, sym: Any, gen: torch.Generator) -> Any:
        """A random non-identity group element (the generator itself for additive kinds)."""
        return gen

    def apply(self, params: dict, ctx: dict, sym: Any, element: Any) -> None:
        """Transform ``params`` by ``element``: replace its entries (a shallow copy whose
        tensors may be the model's own), never write into a tensor in place."""
        raise NotImplementedError

    def tangents(self, p: dict, ctx: dict, sym: Any, limit: int | None,
                 rng: random.Random) -> list[dict]:
        """Tangent vectors (dicts of parameter deltas) of a Lie-algebra basis at ``p``."""
        return []

    def charge(self, tensors: dict, ctx: dict, sym: Any) -> tuple[np.ndarray, np.ndarray]:
        """(charge, its absolute version) at ``tensors``."""
        raise NotImplementedError


# ---------------------------------------------------------------- one matrix per space
class MapAction(Action):
    """One matrix per coupled space (``leaves``); subclasses name the group."""

    def pieces(self, ctx: dict):
        """``(leaf, piece index, dim, position, parity)`` of every parameter axis acted on."""
        for leaf in self.data["leaves"]:
            for k, d, pos, par in ctx["leaf_index"].get(leaf, []):
                yield leaf, k, d, pos, par

    def random_element(self, sym: Any, gen: torch.Generator) -> torch.Tensor | Monomial:
        if self.monomial and sym.copies == 1:
            return random_monomial(self.kind, sym.size, gen)
        return random_matrix(self.kind, sym.size, sym.copies, gen)

    def _copies_at(self, ctx: dict, leaf: int, where: dict, name: str) -> int:
        cl = ctx["analysis"].leaves([ctx["segs"][leaf].copies_of])
        if len(cl) != 1 or cl[0][0] not in where:
            raise ValueError(f"per-copy map on {name} without its copy axis")
        return where[cl[0][0]]

    def skip(self, ctx: dict, k: int) -> bool:
        """Pieces not acted on (the dual views of a permutation, see :class:`PermAction`)."""
        return False

    #: the group's elements have one non-zero per row (fast path, no dense products)
    monomial = False

    def apply(self, params: dict, ctx: dict, sym: Any, element: Any) -> None:
        affine = bool(ctx["analysis"].reparams)
        if affine:
            to_affine(params, ctx)
        self.apply_raw(params, ctx, sym, element)
        if affine:
            from_affine(params, ctx)

    def apply_raw(self, params: dict, ctx: dict, sym: Any, element: Any) -> None:
        """:meth:`apply` in the coordinates of :func:`to_affine` (eval-mode BatchNorms as
        ``(A, B)``), so that many actions can share one change of coordinates."""
        mono = isinstance(element, Monomial) or (self.monomial and element.dim() == 2)
        if isinstance(element, Monomial):
            idx, scale = element.parts()
        elif mono:
            idx = element.abs().argmax(dim=1)
            scale = element.gather(1, idx[:, None]).flatten()
        else:
            inv_t = torch.linalg.inv(element).transpose(-1, -2)
        for leaf, k, d, pos, par in self.pieces(ctx):
            if self.skip(ctx, k):
                continue
            pc = ctx["pieces"][k]
            shape, where, offsets = leaf_positions(ctx, k)
            view = _view(params, pc.name, pc.index)
            if mono:
                new = _monomial_axis(view, shape, offsets[d] + pos, idx, scale, par)
            else:
                copies_at = self._copies_at(ctx, leaf, where, pc.name) \
                    if element.dim() == 3 else None
                m = inv_t if par else element
                new = apply_axis(view, shape, offsets[d] + pos, copies_at, m.to(view))
            _write(params, pc.name, pc.index, new, False)

    def basis(self, n: int) -> list:
        """Lie-algebra basis: index pairs ``(i, j)`` (``None``: the identity)."""
        return []

    def tangents(self, p: dict, ctx: dict, sym: Any, limit: int | None,
                 rng: random.Random) -> list[dict]:
        n, c = sym.size, sym.copies
        full = [(cc, b) for cc in range(c) for b in self.basis(n)]
        if limit and len(full) > limit:
            full = rng.sample(full, limit)
        base = dict(p)
        if ctx["analysis"].reparams:
            base = {k: v.clone() for k, v in p.items()}
            to_affine(base, ctx)
        dev = next(iter(p.values())).device
        out = []
        for cc, b in full:
            x = torch.zeros((c, n, n) if c > 1 else (n, n), dtype=torch.float64, device=dev)
            xv = x[cc] if c > 1 else x
            if b is None:
                xv += torch.eye(n, dtype=torch.float64, device=dev)
            else:
                xv[b[0], b[1]] = 1.0
                if self.kind == "orth":
                    xv[b[1], b[0]] = -1.0
            d = _zeros(p)
            for leaf, k, dd, pos, par in self.pieces(ctx):
                pc = ctx["pieces"][k]
                shape, where, offs = leaf_positions(ctx, k)
                copies_at = self._copies_at(ctx, leaf, where, pc.name) if c > 1 else None
                m = -x.transpose(-1, -2) if par else x
                view = _view(base, pc.name, pc.index)
                _write(d, pc.name, pc.index,
                       apply_axis(view, shape, offs[dd] + pos, copies_at, m.to(view)), True)
            if ctx["analysis"].reparams:
                push_affine(d, ctx)
            out.append(d)
        return out

    def blocks(self, tensors: dict, ctx: dict, sym: Any):
        """``(parity, matrix (units, rest))`` for every parameter axis acted on."""
        for leaf, k, d, pos, par in self.pieces(ctx):
            pc = ctx["pieces"][k]
            te = _view(tensors, pc.name, pc.index)
            shape, where, offs = leaf_positions(ctx, k)
            te = te.reshape(shape)
            target = offs[d] + pos
            c = ctx["segs"][leaf].copies_of
            if sym.copies > 1 and c is not None:
                ca = self._copies_at(ctx, leaf, where, pc.name)
                te = torch.movedim(te, (ca, target), (0, 1))
                yield par, te.reshape(te.shape[0] * te.shape[1], -1)
            else:
                te = torch.movedim(te, target, 0)
                yield par, te.reshape(te.shape[0], -1)

    def charge(self, tensors: dict, ctx: dict, sym: Any) -> tuple[np.ndarray, np.ndarray]:
        """Continuous: ``sum_axes +-|unit row|^2`` (the diagonal of ``theta^T A theta``; the
        Gram matrix for GL/O). Discrete: distance of units 0 and 1 (permutation) or of unit 0
        to the sign-flip fixed set."""
        if not self.quadratic:
            d2 = None
            for _par, m in self.blocks(tensors, ctx, sym):
                v = ((m[0] - m[1]) ** 2).sum() if self.kind == "perm" else (m[0] ** 2).sum()
                d2 = v if d2 is None else d2 + v
            d = torch.sqrt(d2) if d2 is not None else torch.zeros(())
            return d.cpu().numpy(), d.cpu().numpy()
        q = a = None
        for par, m in self.blocks(tensors, ctx, sym):
            if self.kind in ("gl", "orth"):
                v = m @ m.T if m.shape[0] <= 512 else (m * m).sum(1).diag()
            else:
                v = (m * m).sum(1)
            q = (v if par == 0 else -v) if q is None else q + (v if par == 0 else -v)
            a = v if a is None else a + v
        if self.kind == "homog":
            q, a = q.sum(), a.sum()
        return q.cpu().numpy(), a.cpu().numpy()


class PermAction(MapAction):
    """Permutations of the units of every space of a linked group. A parameter with a dual
    view (``p`` in ``y = p * x``) is permuted once, through its primary view."""

    kind = "perm"
    monomial = True

    def skip(self, ctx: dict, k: int) -> bool:
        return ctx["pieces"][k].dual


class SignAction(MapAction):
    """Sign flips of the units (odd activations, per-channel affine maps)."""

    kind = "sign"
    monomial = True


class DiagAction(MapAction):
    """Positive diagonal rescaling ``diag(exp(a))``; charge ``|w_in,i|^2 - |w_out,i|^2``."""

    kind = "pdiag"
    quadratic = True
    monomial = True

    def basis(self, n: int) -> list:
        return [(i, i) for i in range(n)]


class ScaleAction(MapAction):
    """One positive scalar (absorbed by a normalisation); charge ``|w|^2``."""

    kind = "homog"
    quadratic = True
    monomial = True

    def basis(self, n: int) -> list:
        return [None]


class GLAction(MapAction):
    """General linear maps ``exp(A)``; charge ``W1 W1^T - W2^T W2`` (symmetric part)."""

    kind = "gl"
    quadratic = True

    def basis(self, n: int) -> list:
        return [(i, j) for i in range(n) for j in range(n)]


class OrthAction(MapAction):
    """Orthogonal maps (tied parameters)."""

    kind = "orth"
    quadratic = True

    def basis(self, n: int) -> list:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]


# ---------------------------------------------------------------- additive actions
class NullAction(Action):
    """Any shift of a parameter (slice) that the output never sees; charge: the values."""

    kind = "null"

    def apply(self, params, ctx, sym, element):
        name, idx = self.data["param"], self.data["index"]
        view = _view(params, name, idx)
        shift = torch.randn(view.shape, generator=element, dtype=torch.float64).to(view)
        _write(params, name, idx, view + shift_scale(params[name]) * shift, False)

    def tangents(self, p, ctx, sym, limit, rng):
        name, idx = self.data["param"], self.data["index"]
        ids = torch.arange(p[name].numel()).reshape(p[name].shape)
        ids = (ids[idx] if idx else ids).reshape(-1).tolist()
        if limit and len(ids) > limit:
            ids = rng.sample(ids, limit)
        out = []
        for i in ids:
            d = _zeros(p)
            d[name].view(-1)[i] = 1.0
            out.append(d)
        return out

    def charge(self, tensors, ctx, sym):
        return _np(_view(tensors, self.data["param"], self.data["index"]).reshape(-1))


class TradeAction(Action):
    """``b_src += u``, ``b_j -= W_j u`` for every compensating reader ``j``; the generator
    depends on ``W``: no conserved charge (untracked)."""

    kind = "trade"
    tracked = False

    def consumers(self) -> list[tuple[str | None, str, tuple]]:
        """``(weight name or None, bias name, bias index)`` of every compensating reader."""
        cons = self.data.get("consumers") or [(self.data["weight"], self.data["dst"])]
        out = []
        for w, dst in cons:
            name, index = (dst, ()) if isinstance(dst, str) else dst
            out.append((w[0] if w else None, name, index))
        return out

    def _shift(self, out: dict, base: dict, u: torch.Tensor) -> None:
        sname, sidx = self.data["src"]
        u = u.to(base[sname])
        _write(out, sname, sidx, u, True)
        for wname, dst, index in self.consumers():
            _write(out, dst, index, -(base[wname] @ u if wname else u), True)

    def apply(self, params, ctx, sym, element):
        u = torch.randn(sym.size, generator=element, dtype=torch.float64)
        self._shift(params, params, u * shift_scale(params[self.data["src"][0]]))

    def tangents(self, p, ctx, sym, limit, rng):
        out = []
        for i in range(sym.size):
            d = _zeros(p)
            u = torch.zeros(sym.size, dtype=torch.float64)
            u[i] = 1.0
            self._shift(d, p, u)
            out.append(d)
        return out

    def charge(self, tensors, ctx, sym):
        _w, dst, index = self.consumers()[0]
        return _np(_view(tensors, dst, index).reshape(-1))


class ShiftAction(Action):
    """``(b1 + c 1, b2 - c 1)`` around a LayerNorm-only stream; charge ``sum b1 + sum b2``
    per unit shift (exactly conserved)."""

    kind = "ln_shift"

    def _shift(self, out: dict, c: float) -> None:
        out[self.data["src"]] = out[self.data["src"]] + c
        out[self.data["dst"]] = out[self.data["dst"]] - c

    def apply(self, params, ctx, sym, element):
        c = torch.randn(1, generator=element, dtype=torch.float64).item()
        self._shift(params, c * shift_scale(params[self.data["src"]]))

    def tangents(self, p, ctx, sym, limit, rng):
        d = _zeros(p)
        self._shift(d, 1.0)
        return [d]

    def charge(self, tensors, ctx, sym):
        v = torch.stack([tensors[self.data["src"]].sum(), -tensors[self.data["dst"]].sum()])
        return _np(v)


def ones_complement(n: int) -> torch.Tensor:
    """Orthonormal basis ``(n, n-1)`` of the complement of the all-ones vector."""
    a = torch.cat([torch.ones(n, 1, dtype=torch.float64),
                   torch.eye(n, dtype=torch.float64)[:, : n - 1]], dim=1)
    return torch.linalg.qr(a)[0][:, 1:]


class LNRotationAction(Action):
    """Rotations ``M`` with ``M 1 = 1`` of a tied stream read by LayerNorms; readers
    compensate ``W' = W diag(g) M^T diag(1/g)``, ``b' = b + (W - W') beta``."""

    kind = "ln_orth"
    tracked = False

    def random_element(self, sym, gen):
        n = sym.size
        r = random_matrix("orth", n - 1, 1, gen)
        b = ones_complement(n)
        return torch.ones(n, n, dtype=torch.float64) / n + b @ r @ b.T

    def _act(self, out: dict, ctx: dict, m: torch.Tensor, linear: bool) -> None:
        base = {k: v.clone() for k, v in out.items()} if linear else out
        if linear:
            for k in out:
                out[k] = torch.zeros_like(out[k])
            for k, dd, pos, par in ctx["leaf_index"].get(self.data["leaf"], []):
                pc = ctx["pieces"][k]
                shape, _where, offs = leaf_positions(ctx, k)
                view = _view(base, pc.name, pc.index)
                mm = -m.transpose(0, 1) if par else m
                _write(out, pc.name, pc.index,
                       apply_axis(view, shape, offs[dd] + pos, None, mm.to(view)), True)
        else:
            GLAction(leaves=[self.data["leaf"]]).apply(out, ctx, _Sized(m.shape[0]), m)
        for nrm in self.data["norms"]:
            for wname, bname in nrm["readers"]:
                w = base[wname]
                g = base[nrm["gamma"]] if nrm["gamma"] else torch.ones(w.shape[1]).to(w)
                w_new = w @ ((g[:, None] * m.transpose(0, 1).to(w)) / g[None, :])
                if linear:
                    out[wname] = out[wname] + w_new
                else:
                    out[wname] = w_new
                if nrm["beta"] is not None and bname is not None:
                    be = base[nrm["beta"]]
                    if linear:
                        out[bname] = out[bname] - w_new @ be
                    else:
                        out[bname] = out[bname] + (w - w_new) @ be

    def apply(self, params, ctx, sym, element):
        self._act(params, ctx, element, linear=False)

    def tangents(self, p, ctx, sym, limit, rng):
        n = sym.size
        b = ones_complement(n).to(next(iter(p.values())).device)
        out = []
        for i in range(n - 1):
            for j in range(i + 1, n - 1):
                a = torch.outer(b[:, i], b[:, j])
                d = {k: v.clone() for k, v in p.items()}
                self._act(d, ctx, a - a.T, linear=True)
                out.append(d)
        return out

    def charge(self, tensors, ctx, sym):
        """The Gram matrix of the stream's parameter axes (an order parameter: the
        generator depends on the LayerNorm gains, so no charge is conserved)."""
        return GLAction(leaves=[self.data["leaf"]]).charge(tensors, ctx, _Sized(sym.size))


class _Sized:
    """A stand-in symmetry record with one copy of ``size`` units."""

    def __init__(self, size: int) -> None:
        self.size, self.copies = size, 1


class LNNullAction(Action):
    """Rows of the weight after a LayerNorm move along ``1/gamma``; the bias compensates
    ``(beta/gamma).1``. Generator depends on theta: untracked."""

    kind = "ln_null"
    tracked = False

    def delta(self, p: dict, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = p[self.data["weight"]]
        g = p[self.data["gamma"]] if self.data["gamma"] else torch.ones(
            w.shape[1], dtype=w.dtype, device=w.device)
        dw = c[:, None] * (1.0 / g)[None, :]
        db = -c * ((p[self.data["beta"]] / g).sum()) if self.data["bias"] else None
        return dw, db

    def _add(self, out: dict, dw: torch.Tensor, db: torch.Tensor | None) -> None:
        out[self.data["weight"]] = out[self.data["weight"]] + dw.to(out[self.data["weight"]])
        if db is not None:
            out[self.data["bias"]] = out[self.data["bias"]] + db.to(out[self.data["bias"]])

    def apply(self, params, ctx, sym, element):
        c = torch.randn(self.data["rows"], generator=element, dtype=torch.float64)
        c = c * shift_scale(params[self.data["weight"]])
        self._add(params, *self.delta(params, c.to(params[self.data["weight"]])))

    def tangents(self, p, ctx, sym, limit, rng):
        out = []
        for i in range(self.data["rows"]):
            d = _zeros(p)
            c = torch.zeros(self.data["rows"], dtype=torch.float64)
            c[i] = 1.0
            self._add(d, *self.delta(p, c))
            out.append(d)
        return out

    def charge(self, tensors, ctx, sym):
        return _np(tensors[self.data["weight"]].reshape(-1))


class CenterAction(Action):
    """Shift along ``1`` of a space read only by LayerNorms, for every writer; charge: the
    sums over that axis (exact under GD/SGD)."""

    kind = "center"

    def delta(self, p: dict, ctx: dict, k: int, d: int, pos: int, gen=None, basis=None):
        pc = ctx["pieces"][k]
        shape, _where, offs = leaf_positions(ctx, k)
        sub = list(shape)
        sub[offs[d] + pos] = 1
        if basis is None:
            a = torch.randn(sub, generator=gen, dtype=torch.float64).to(p[pc.name])
        else:
            a = torch.zeros(math.prod(sub), dtype=torch.float64, device=p[pc.name].device)
            a[basis] = 1.0
            a = a.reshape(sub)
        return pc, a.expand(shape).reshape(pc.shape)

    def apply(self, params, ctx, sym, element):
        for k, d, pos in self.data["producers"]:
            pc, delta = self.delta(params, ctx, k, d, pos, gen=element)
            delta = delta * shift_scale(params[pc.name])
            _write(params, pc.name, pc.index, delta.to(params[pc.name]), True)

    def tangents(self, p, ctx, sym, limit, rng):
        out = []
        for k, d, pos in self.data["producers"]:
            pc = ctx["pieces"][k]
            n_other = math.prod(pc.shape) // ctx["segs"][self.data["leaf"]].size
            for i in range(n_other):
                dd = _zeros(p)
                pc, delta = self.delta(p, ctx, k, d, pos, basis=i)
                _write(dd, pc.name, pc.index, delta, True)
                out.append(dd)
        return out

    def charge(self, tensors, ctx, sym):
        parts = []
        for k, d, pos in self.data["producers"]:
            pc = ctx["pieces"][k]
            shape, _where, offs = leaf_positions(ctx, k)
            x = _view(tensors, pc.name, pc.index)
            parts.append(x.reshape(shape).sum(dim=offs[d] + pos).reshape(-1))
        return _np(torch.cat(parts))


class TranslationAction(Action):
    """Softmax translation of the logits: ``W += 1 v^T``, ``b += c 1`` (loss level); charge:
    the column sums of ``W`` (and the sum of ``b``), exactly conserved."""

    kind = "translation"

    def apply(self, params, ctx, sym, element):
        w = params[self.data["weight"]]
        v = torch.randn(w.shape[1], generator=element, dtype=torch.float64).to(w)
        params[self.data["weight"]] = w + shift_scale(w) * v[None, :]
        if self.data.get("bias"):
            params[self.data["bias"]] = params[self.data["bias"]] + torch.randn(
                1, generator=element, dtype=torch.float64).item()

    def charge(self, tensors, ctx, sym):
        parts = [tensors[self.data["weight"]].sum(0)]
        if self.data.get("bias"):
            parts.append(tensors[self.data["bias"]].sum().reshape(1))
        return _np(torch.cat(parts))


class CustomAction(Action):
    """A user-stated claim: a group acting on ``(param, dim, role)`` axes (role 0: ``M``,
    role 1: ``M^{-T}``), to be checked numerically."""

    kind = "custom"

    def random_element(self, sym, gen):
        """Permutations, signs and diagonals as a :class:`Monomial` (no ``n x n`` matrix
        to build and invert), the other groups as a dense matrix."""
        group = self.data["group"]
        if group in ("perm", "sign", "pdiag", "homog"):
            return random_monomial(group, sym.size, gen)
        return random_matrix(group, sym.size, 1, gen)

    def apply(self, params, ctx, sym, element):
        mono = isinstance(element, Monomial)
        inv_t = None if mono else torch.linalg.inv(element).T
        for name, dim, par in self.data["axes"]:
            t = params[name]
            if mono:
                params[name] = _monomial_axis(t, list(t.shape), dim, *element.parts(),
                                              bool(par))
            else:
                m = inv_t if par else element
                params[name] = apply_axis(t, list(t.shape), dim, None, m.to(t))


ACTIONS: dict[str, type[Action]] = {c.kind: c for c in (
    PermAction, SignAction, DiagAction, ScaleAction, GLAction, OrthAction, NullAction,
    TradeAction, ShiftAction, LNRotationAction, LNNullAction, CenterAction, TranslationAction,
    CustomAction)}


def make_action(kind: str, **data: Any) -> Action:
    """The action of ``kind`` (``perm``, ``sign``, ``pdiag``, ``homog``, ``gl``, ``orth``,
    ``null``, ``trade``, ``ln_shift``, ``ln_orth``, ``ln_null``, ``center``, ``translation``,
    ``custom``) with its data."""
    return ACTIONS[kind](**data)


# ---------------------------------------------------------------- weights stored (in, out)
class LNNullTransposedAction(LNNullAction):
    """:class:`LNNullAction` for a weight stored ``(in, out)`` (``y = x W + b``, GPT-2's
    ``Conv1D``): each column moves along ``1/gamma``, the bias by ``-(beta/gamma).1``."""

    kind = "ln_null_t"

    def delta(self, p: dict, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = p[self.data["weight"]]
        g = p[self.data["gamma"]] if self.data["gamma"] else torch.ones(
            w.shape[0], dtype=w.dtype, device=w.device)
        dw = (1.0 / g)[:, None] * c[None, :]
        db = -c * ((p[self.data["beta"]] / g).sum()) if self.data["bias"] else None
        return dw, db


class TradeTransposedAction(TradeAction):
    """:class:`TradeAction` whose compensating readers may store their weight ``(in, out)``
    (a weight entry ``(name, index, "t")``): ``b_j -= u W_j`` for those."""

    kind = "trade_t"

    def _shift(self, out: dict, base: dict, u: torch.Tensor) -> None:
        sname, sidx = self.data["src"]
        u = u.to(base[sname])
        _write(out, sname, sidx, u, True)
        cons = self.data.get("consumers") or [(self.data["weight"], self.data["dst"])]
        for w, dst in cons:
            name, index = (dst, ()) if isinstance(dst, str) else dst
            if not w:
                v = u
            else:
                v = u @ base[w[0]] if len(w) > 2 else base[w[0]] @ u
            _write(out, name, index, -v, True)


ACTIONS.update({c.kind: c for c in (LNNullTransposedAction, TradeTransposedAction)})


# ---------------------------------------------------------------- GL through eval BatchNorm
class BatchNormGLAction(Action):
    """General linear maps through an eval-mode BatchNorm ``y = A x + B`` (coordinates of
    :func:`to_affine`): ``M`` on the space ``x`` before it, ``M~ = diag(A) M diag(A)^{-1}`` on
    the space ``y`` after it (``A x' + B' = M~ y`` with ``B' = M~ B``); ``A`` is unchanged.
    Tangent basis: the off-diagonal generators (the diagonal ones are the rescalings of the
    two spaces, reported on their own). The generator depends on ``A``: untracked."""

    kind = "bn_gl"
    tracked = False

    def random_element(self, sym, gen):
        return random_matrix("gl", sym.size, 1, gen)

    def _act(self, out: dict, base: dict, ctx: dict, m: torch.Tensor, linear: bool) -> None:
        a = base[self.data["gamma"]].to(torch.float64)
        mats = {"x": m, "y": (a[:, None] * m.to(a)) / a[None, :]}  # maps of the two values
        for side in ("x", "y"):
            mm = mats[side]
            if self.data["parity"][side]:  # the space's root carries the dual map
                mm = -mm.transpose(0, 1) if linear else torch.linalg.inv(mm).transpose(0, 1)
            inv_t = None if linear else torch.linalg.inv(mm).transpose(0, 1)
            for k, d, pos, par in ctx["leaf_index"].get(self.data[side], []):
                pc = ctx["pieces"][k]
                if pc.name == self.data["gamma"]:
                    continue
                shape, _where, offs = leaf_positions(ctx, k)
                src = base if linear else out
                view = _view(src, pc.name, pc.index)
                g = (-mm.transpose(0, 1) if par else mm) if linear else (inv_t if par else mm)
                _write(out, pc.name, pc.index,
                       apply_axis(view, shape, offs[d] + pos, None, g.to(view)), linear)

    def apply(self, params, ctx, sym, element):
        to_affine(params, ctx)
        self._act(params, params, ctx, element, linear=False)
        from_affine(params, ctx)

    def tangents(self, p, ctx, sym, limit, rng):
        base = {k: v.clone() for k, v in p.items()}
        to_affine(base, ctx)
        n = sym.size
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        if limit and len(pairs) > limit:
            pairs = rng.sample(pairs, limit)
        out = []
        dev = next(iter(p.values())).device
        for i, j in pairs:
            x = torch.zeros(n, n, dtype=torch.float64, device=dev)
            x[i, j] = 1.0
            d = _zeros(p)
            self._act(d, base, ctx, x, linear=True)
            push_affine(d, ctx)
            out.append(d)
        return out

    def charge(self, tensors, ctx, sym):
        """The Gram matrix of the parameter axes before the BatchNorm (an order parameter)."""
        return GLAction(leaves=[self.data["x"]]).charge(tensors, ctx, _Sized(sym.size))


ACTIONS[BatchNormGLAction.kind] = BatchNormGLAction
