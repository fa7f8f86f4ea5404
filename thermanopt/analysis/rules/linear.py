"""Linear maps with parameters: ``linear``, ``matmul``, (grouped) convolution, embedding.

``y = W x + b``: the input space of ``W`` (its columns) carries ``M_x^{-T}`` and its output
space (rows, bias) a new map ``M_y``; any invertible ``M`` passes through (GL), the
nonlinearities around restrict it (Ziyin, Xu & Chuang, arXiv 2505.12387, §2.2).
"""

from __future__ import annotations

import math
from typing import Any

from ..tracing import Ref
from ..unionfind import MONOMIAL
from .elementwise import diag
from .registry import Rule, register


@register
class LinearRule(Rule):
    """``linear(x, W, b)``: ``x[..., i]`` contracts with ``W[:, i]``; ``b`` and ``W`` rows share
    the output space."""

    ops = ("linear",)

    def apply(self, an: Any, node: Any) -> None:
        x, w, bias = node.args
        why = f"{node.name}({node.op})"
        xa, wa = an.ax(x), an.ax(w)
        an.unify(xa[-1], wa[1], 1, why)
        if bias is not None:
            an.unify(an.ax(bias)[0], wa[0], 0, why)
            an.bias_of[node.name] = bias.name
            an.linear_trade(node, x, w, bias, why)
        an.ln_consumer(x, w, bias, ())
        an.set_axes(node, list(xa[:-1]) + [wa[0]])


@register
class AddmmRule(Rule):
    """``addmm(b, x, W) = b + x @ W`` with ``W`` stored ``(in, out)`` (GPT-2's ``Conv1D``): the
    columns of ``x`` contract with the rows of ``W``; ``b`` shares the output space."""

    ops = ("addmm",)

    def apply(self, an: Any, node: Any) -> None:
        x, w, bias = node.args[:3]
        why = f"{node.name}({node.op})"
        xa, wa = an.ax(x), an.ax(w)
        an.unify(xa[-1], wa[0], 1, why)
        if isinstance(bias, Ref) and len(an.shp(bias)) == 1:
            an.unify(an.ax(bias)[0], wa[1], 0, why)
            an.bias_of[node.name] = bias.name
            an.linear_trade(node, x, w, bias, why, transposed=True)
            an.ln_consumer(x, w, bias, (), transposed=True)
        elif isinstance(bias, Ref):
            an.fix(wa[1], f"{why}: broadcast bias")
        an.set_axes(node, list(xa[:-1]) + [wa[1]])


@register
class MatmulRule(Rule):
    """``x @ y``: the last axis of ``x`` contracts with the second-last of ``y``; batch axes
    broadcast. A 1-D operand is a barrier."""

    ops = ("matmul",)

    def apply(self, an: Any, node: Any) -> None:
        x, y = node.args[:2]
        why = f"{node.name}({node.op})"
        sx, sy = an.shp(x), an.shp(y)
        if len(sx) < 2 or len(sy) < 2:
            an.barrier(node, "matmul with a 1-D operand")
            return
        xa, ya = an.ax(x), an.ax(y)
        an.unify(xa[-1], ya[-2], 1, why)
        nb = len(node.shape) - 2
        out = []
        for k in range(nb):
            ia, ib = k - (nb - (len(sx) - 2)), k - (nb - (len(sy) - 2))
            za = sx[ia] if ia >= 0 else 1
            zb = sy[ib] if ib >= 0 else 1
            if za > 1 and zb > 1:
                an.unify(xa[ia], ya[ib], 0, why)
            out.append(xa[ia] if za > 1 else (ya[ib] if zb > 1 else []))
        an.set_axes(node, out + [xa[-2], ya[-1]])
        an.scores_key[node.name] = _untransposed(an, y)


def _untransposed(an: Any, y: Ref) -> str:
    """The keys before ``k.transpose(-2, -1)`` (their bias is recorded on the last axis)."""
    node = an.producer.get(y.name)
    if node is not None and node.op == "transpose" and isinstance(node.args[0], Ref):
        n = len(node.shape)
        if sorted(d % n for d in node.kwargs["dims"]) == [n - 2, n - 1]:
            return node.args[0].name
    return y.name


@register
class ConvRule(Rule):
    """Convolution ``(N, C_in, *S) * (C_out, C_in / g, *K)``.

    ``groups == 1``: the input channels contract with ``W[:, c]`` (GL on the channel space);
    kernel positions and spatial axes are fixed. Depthwise (``C_in == C_out == groups``):
    each channel is scaled by its own filter, a diagonal map (:func:`diag`). Other grouped
    convolutions: the channel axes are fixed (conservative; noted).
    """

    ops = ("conv",)

    def apply(self, an: Any, node: Any) -> None:
        x, w, bias = node.args
        why = f"{node.name}({node.op})"
        xa, wa = an.ax(x), an.ax(w)
        groups = node.kwargs.get("groups", 1)
        sw = an.shp(w)
        for k in range(2, len(wa)):
            an.fix(wa[k], f"{why}: kernel position")
        spatial = [an.new_axis(s, True) for s in node.shape[2:]]
        if groups == 1:
            an.unify(xa[1], wa[1], 1, why)
            out_ch = wa[0]
        elif sw[1] == 1 and sw[0] == groups == an.shp(x)[1]:
            y = an.new_axis(sw[0])
            depthwise(an, node, xa[1], wa[0], y, why)
            out_ch = y
        else:
            an.fix(xa[1], f"{why}: grouped convolution (channels fixed, conservative)")
            an.fix(wa[0], why)
            an.fix(wa[1], why)
            an.gaps.append(f"{why}: grouped convolution with {groups} groups: channel "
                           "symmetries not analysed")
            out_ch = wa[0]
        if bias is not None:
            an.unify(an.ax(bias)[0], out_ch, 0, why)
            an.bias_of[node.name] = bias.name
        an.set_axes(node, [xa[0], out_ch] + spatial)
        null_taps(an, node, why)


def _per_dim(v: Any, n: int, default: int) -> list[int] | None:
    """A conv geometry argument (int or sequence, None for the default) as ``n`` ints."""
    if v is None:
        return [default] * n
    if isinstance(v, int):
        return [v] * n
    if isinstance(v, (list, tuple)) and all(isinstance(a, int) for a in v):
        return list(v) * n if len(v) == 1 else list(v)
    return None  # "same"/"valid" strings, non-zero padding modes: not analysed


def used_taps(size: int, out: int, k: int, stride: int, pad: int, dil: int) -> tuple[int, int]:
    """``[lo, hi)``: kernel taps ``j`` that meet a real input element for some output
    position ``o`` (``0 <= o stride - pad + j dil < size``); the others only ever multiply
    the zero padding."""
    used = [j for j in range(k) if any(0 <= o * stride - pad + j * dil < size
                                       for o in range(out))]
    return (used[0], used[-1] + 1) if used else (0, 0)


def null_taps(an: Any, node: Any, why: str) -> None:
    """Weight entries at kernel taps that only see zero padding (a 7x7 kernel on a 2x2
    map uses 3x3 of its taps): null directions, one record per slab of unused taps."""
    x, w = node.args[:2]
    sx, sw = an.shp(x), an.shp(w)
    nd = len(sw) - 2
    geo = [_per_dim(node.kwargs.get(k), nd, d) for k, d in
           (("stride", 1), ("padding", 0), ("dilation", 1))]
    if w.name not in an.param_of or any(g is None or len(g) != nd for g in geo) or \
            len(sx) != nd + 2:
        return
    pname = an.param_of[w.name]
    if an.tied(pname):
        return
    ranges = [used_taps(sx[2 + i], node.shape[2 + i], sw[2 + i], geo[0][i], geo[1][i],
                        geo[2][i]) for i in range(nd)]
    lead = (slice(None), slice(None))
    for i, (lo, hi) in enumerate(ranges):
        inner = tuple(slice(a, b) for a, b in ranges[:i])
        for a, b in ((0, lo), (hi, sw[2 + i])):
            if b > a:
                index = lead + inner + (slice(a, b),)
                dim = sw[0] * sw[1] * (b - a) * math.prod(
                    hb - ha for ha, hb in ranges[:i]) * math.prod(sw[3 + i:])
                reason = ("kernel taps that only meet zero padding at the example input's "
                          f"spatial size ({why})")
                an.nulls.append({"param": pname, "index": index, "dim": dim, "reason": reason})


def depthwise(an: Any, node: Any, xc: list, wc: list, y: list, why: str) -> None:
    """Depthwise filter ``y_c = w_c * x_c``: a diagonal map as in :func:`diag`; the filter's
    channel axis carries ``D_y`` and, through a dual piece, ``D_x^{-1}``."""
    an.link(xc, y, why)
    an.restrict(xc, MONOMIAL, why)
    an.restrict(y, MONOMIAL, why)
    an.unify(wc, y, 0, why)
    an.add_dual_piece(node.args[1], [(0, xc)], why)


@register
class EmbeddingRule(Rule):
    """``embedding(W, idx)``: rows are vocabulary entries (fixed); the feature axis is free."""

    ops = ("embedding",)

    def apply(self, an: Any, node: Any) -> None:
        w, idx = node.args[:2]
        wa = an.ax(w)
        an.fix(wa[0], f"{node.name}({node.op}): vocabulary index")
        ia = an.ax(idx) if isinstance(idx, Ref) else []
        an.set_axes(node, list(ia) + [wa[1]])


__all__ = ["LinearRule", "MatmulRule", "ConvRule", "EmbeddingRule", "depthwise", "diag"]
