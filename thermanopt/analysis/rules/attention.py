"""Attention: softmax, ``scaled_dot_product_attention`` and ``nn.MultiheadAttention``.

``softmax(q k^T) v``: the query-key contraction allows any ``M`` on the query side with
``M^{-T}`` on the key side (GL per head); the value space passes to the output unchanged
(GL per head); heads may be permuted together; the sequence axes only by permutations. A
bias added to the keys shifts each query's scores by a constant: it is a null direction
of the softmax over keys (Ziyin, Xu & Chuang, arXiv 2505.12387, §2.4).
"""

from __future__ import annotations

import math
from typing import Any

from ..tracing import Ref
from ..unionfind import PERM
from .registry import Rule, register


def _size(an: Any, axis: list) -> int:
    return math.prod(an.segs[x].size for x, _p in an.leaves(axis))


def attention_core(an: Any, why: str, qa: list, ka: list, va: list) -> list:
    """Couple ``q (..., L, E)``, ``k (..., S, E)``, ``v (..., S, Ev)``; axes of the output
    ``(..., L, Ev)``. Grouped-query attention (``Hq = g Hkv`` query heads): the query head
    axis splits as ``Hkv x g``; the ``g`` heads sharing a key/value head may be permuted."""
    an.unify(qa[-1], ka[-1], 1, f"{why}: query-key contraction")
    nb = len(qa) - 2
    for k in range(nb):
        nq, nk = _size(an, qa[k]), _size(an, ka[k])
        if nq != nk and nk > 0 and nq % nk == 0:
            grp = an.new_axis(nq // nk)
            an.restrict(grp, PERM, f"{why}: query heads of one key/value head")
            an.unify(qa[k], list(ka[k]) + grp, 0, f"{why}: grouped-query heads")
            an.unify(ka[k], va[k], 0, why)
        else:
            an.unify(qa[k], ka[k], 0, why)
            an.unify(qa[k], va[k], 0, why)
        an.restrict(qa[k], PERM, f"{why}: batched attention (heads)")
    an.unify(ka[-2], va[-2], 0, why)
    an.restrict(ka[-2], PERM, why)
    an.restrict(qa[-2], PERM, why)
    return list(qa[:-1]) + [va[-1]]


@register
class SoftmaxRule(Rule):
    """Softmax / log-softmax: permutations only; over keys it makes a key bias null."""

    ops = ("softmax",)

    def apply(self, an: Any, node: Any) -> None:
        why = f"{node.name}({node.op})"
        x = an.ax(node.args[0])
        dim = node.kwargs["dim"] % len(node.shape)
        an.restrict([i for axis in x for i in axis], PERM, why)
        an.set_axes(node, list(x))
        key = an.scores_key.get(node.args[0].name)
        if key is not None and dim == len(node.shape) - 1:
            an.null_bias(key, why)


@register
class SDPARule(Rule):
    """``scaled_dot_product_attention(q, k, v, attn_mask)``; a mask computed from parameters
    (relative position biases) is coupled to the score axes, permutations only."""

    ops = ("sdpa",)

    def apply(self, an: Any, node: Any) -> None:
        q, k, v, mask = (list(node.args) + [None] * 4)[:4]
        why = f"{node.name}(attention)"
        qa, ka, va = an.ax(q), an.ax(k), an.ax(v)
        out = attention_core(an, why, qa, ka, va)
        if isinstance(mask, Ref):
            sm, n = an.shp(mask), len(qa)
            ma = an.ax(mask)
            target = list(qa[:-2]) + [qa[-2], ka[-2]]
            full = list(an.shp(q)[:-2]) + [an.shp(q)[-2], an.shp(k)[-2]]
            for j in range(len(sm)):
                t = j - len(sm) + n
                if sm[j] > 1 and t >= 0 and full[t] == sm[j]:
                    an.unify(ma[j], target[t], 0, why)
                an.restrict(ma[j], PERM, f"{why}: attention mask")
        an.set_axes(node, out)
        an.null_bias(k.name, why)
        vb = an.bias_of.get(v.name)
        if vb is not None and vb in an.param_of:
            an.trade_src[node.name] = (an.param_of[vb], an.slice_of.get(vb, ()))
            an.trade_via[node.name] = v.name


@register
class MHARule(Rule):
    """``nn.MultiheadAttention`` (packed in-projection): three pieces of the packed weight,
    split into ``heads x head_dim`` with one map per head."""

    ops = ("mha",)

    def apply(self, an: Any, node: Any) -> None:  # noqa: C901 - one coupled block
        q, k, v, inw, inb, outw, outb = node.args[:7]
        why = f"{node.name}(MultiheadAttention)"
        h = node.kwargs["num_heads"]
        E = an.shapes[inw.name][1]
        dh = E // h
        bf = node.kwargs["batch_first"]
        if len(an.shp(q)) != 3:
            an.barrier(node, "MultiheadAttention on unbatched input")
            return
        pname = an.param_of[inw.name]
        slices = []
        for j in range(3):
            rows = slice(j * E, (j + 1) * E)
            axes = [[an.new_seg(E)], [an.new_seg(E)]]
            an.add_piece(pname, (rows,), (E, E), axes)
            bax = None
            if inb is not None:
                bax = [[an.new_seg(E)]]
                an.unify(bax[0], axes[0], 0, why)
                an.add_piece(an.param_of[inb.name], (rows,), (E,), bax)
            slices.append((axes, bax))
        whole = {an.param_of[inw.name]} | ({an.param_of[inb.name]} if inb else set())
        an.pieces = [pc for pc in an.pieces if not (pc.name in whole and pc.index == ())]
        xs = [an.ax(t) for t in (q, k, v)]
        proj = []
        for (axes, _bax), xa in zip(slices, xs):
            an.unify(xa[-1], axes[1], 1, why)
            h_ax, d_ax = an.new_seg(h), an.new_seg(dh)
            an.segs[d_ax].copies_of = h_ax
            an.unify(axes[0], [h_ax, d_ax], 0, why)
            proj.append((list(xa[:-1]), [h_ax], [d_ax]))
        (qb, qh, qd), (kb, kh, kd), (vb, vh, vd) = proj
        if bf:
            qB, qL, kS = qb[0], qb[1], kb[1]
        else:
            qL, qB, kS = qb[0], qb[1], kb[0]
        kB = kb[0] if bf else kb[1]
        vB, vS = (vb[0], vb[1]) if bf else (vb[1], vb[0])
        out = attention_core(an, why, [qB, qh, qL, qd], [kB, kh, kS, kd], [vB, vh, vS, vd])
        _, oh, _oL, od = out
        oa = an.ax(outw)
        an.unify(oa[1], oh + od, 1, why)
        if outb is not None:
            an.unify(an.ax(outb)[0], oa[0], 0, why)
        res = [qB, qL, oa[0]] if bf else [qL, qB, oa[0]]
        if len(node.shape) == 2:
            res = [qb[0], oa[0]]
        an.set_axes(node, res)
        if q.name == k.name == v.name:
            an.ln_consumer(q, inw, inb, (), rows=3 * E)
            bq = an.bias_of.get(q.name)
            if inb is not None and bq in an.param_of and len(an.shp(Ref(bq))) == 1:
                an.trade_candidate((an.param_of[bq], ()), an.origin(q.name, an.bias_of),
                                   node.name, (an.param_of[inw.name], ()),
                                   an.param_of[inb.name], why)
        if inb is not None and outb is not None:
            an.trade((an.param_of[inb.name], (slice(2 * E, 3 * E),)),
                     (an.param_of[outw.name], ()), an.param_of[outb.name], why)
        if inb is not None:
            an.nulls.append({"param": an.param_of[inb.name], "index": (slice(E, 2 * E),),
                             "dim": E, "reason": f"key bias before a softmax over keys ({why})"})


__all__ = ["SoftmaxRule", "SDPARule", "MHARule", "attention_core"]
