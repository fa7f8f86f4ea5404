"""Elementwise operations: activations, arithmetic, comparisons.

An activation ``sigma`` applied to ``M v`` equals ``M sigma(v)`` only for the maps that
commute with it: permutations for every elementwise function; positive diagonal maps for
positively homogeneous ones (ReLU, LeakyReLU: ``sigma(a v) = a sigma(v)`` for ``a > 0``);
sign flips for odd ones (tanh); anything for the identity (Ziyin, Xu & Chuang, arXiv
2505.12387, §2; entropic-forces design §2.1, §2.5).
"""

from __future__ import annotations

from typing import Any

from ..tracing import Ref
from ..unionfind import ALL, MONOMIAL, PERM, RELU, SIGN
from .registry import Rule, register

#: canonical activation -> actions that commute with it
ACTIVATIONS = {
    "relu": RELU, "leaky_relu": RELU, "tanh": SIGN, "sigmoid": PERM, "gelu": PERM,
    "silu": PERM, "other_act": PERM, "hardswish": PERM, "hardsigmoid": PERM, "identity": ALL,
    "neg": ALL,
}
#: elementwise functions of one or more tensors that commute with permutations only
PERM_ONLY = ("pointwise", "where", "maximum", "minimum", "pow", "clamp", "compare",
             "logical", "exp", "log", "sqrt", "rsqrt", "abs", "sin", "cos", "erf", "reciprocal",
             "square", "masked_fill", "bitwise")


def _all(axes: list) -> list:
    return [i for axis in axes for i in axis]


@register
class ActivationRule(Rule):
    """Unary activation: restrict the input's axes to the actions in :data:`ACTIVATIONS`."""

    ops = tuple(ACTIVATIONS)

    def apply(self, an: Any, node: Any) -> None:
        x = an.ax(node.args[0])
        an.restrict(_all(x), ACTIVATIONS[node.op], f"{node.name}({node.op})")
        an.set_axes(node, list(x))
        if node.op == "identity":
            an.propagate_meta(node, node.args[0])


@register
class PermOnlyRule(Rule):
    """Elementwise function of broadcast operands: couples them, permutations only."""

    ops = PERM_ONLY

    def apply(self, an: Any, node: Any) -> None:
        why = f"{node.name}({node.op})"
        refs = an.tensor_args(node)
        out = an.broadcast_many(node, refs)
        an.restrict(_all(out), PERM, why)
        an.set_axes(node, out)


@register
class BinaryRule(Rule):
    """``add``/``sub``/``mul``/``div``: couples broadcast operands.

    Sums allow any map shared by both operands (GL); a product of two activations passes a
    diagonal through one factor (:func:`product`), else permutations only, as a constant
    added does; a product with a parameter is a diagonal
    linear map (:meth:`diag`); multiplying by a constant keeps everything.
    """

    ops = ("add", "sub", "mul", "div")

    def apply(self, an: Any, node: Any) -> None:
        op, (x, y), why = node.op, node.args[:2], f"{node.name}({node.op})"
        xt, yt = isinstance(x, Ref), isinstance(y, Ref)
        if xt and yt:
            xp, yp = x.name in an.param_of, y.name in an.param_of
            if op in ("add", "sub"):
                an.set_axes(node, an.broadcast(node, x, y))
                an.note_sum(node, x, y, xp, yp)
                return
            if op == "mul" and xp != yp:
                diag(an, node, y if xp else x, x if xp else y)
                return
            if op == "mul" and not xp and product(an, node, x, y):
                return
            out = an.broadcast(node, x, y)
            an.restrict(_all(out), PERM, f"{why}: elementwise product")
            an.set_axes(node, out)
            return
        t = x if xt else y
        other = y if xt else x
        axes = list(an.ax(t))
        if op in ("add", "sub") and other != 0:
            an.restrict(_all(axes), PERM, f"{why}: adds a constant")
        if op == "div" and not xt:
            an.restrict(_all(axes), PERM, f"{why}: reciprocal")
        an.set_axes(node, axes)
        if op in ("mul", "div"):
            an.propagate_meta(node, t)


def _scalable(an: Any, axis: list) -> bool:
    return bool(axis) and all("pdiag" in an.segs[r].feat and not an.segs[r].fixed
                              for r, _p in an.leaves(axis))


def product(an: Any, node: Any, x: Ref, y: Ref) -> bool:
    """``z = a * b`` of two activations of one shape (a gated unit, SwiGLU's
    ``silu(W_g h) * (W_u h)``): a diagonal ``D`` on the last axis of one factor, the
    *carrier*, passes to ``z`` (``a * (D b) = D z``), so the carrier's space is ``z``'s
    (signed diagonal x permutation); the other factor keeps only the permutation it shares
    (a link). The carrier is the factor that still allows a diagonal (the second one when
    both do: the first then loses its own). False when neither does (the caller keeps
    permutations only)."""
    sa, sb = an.shp(x), an.shp(y)
    if sa != sb or not sa or sa[-1] < 2:
        return False
    xa, ya = an.ax(x), an.ax(y)
    if _scalable(an, ya[-1]):
        carrier, other = ya[-1], xa[-1]
    elif _scalable(an, xa[-1]):
        carrier, other = xa[-1], ya[-1]
    else:
        return False
    why = f"{node.name}(gated product)"
    out = []
    for k in range(len(sa) - 1):
        if sa[k] > 1:
            an.unify(xa[k], ya[k], 0, why)
            an.restrict(xa[k], PERM, why)
        out.append(xa[k])
    an.restrict(other, PERM, f"{why}: the other factor")
    an.restrict(carrier, MONOMIAL, why)
    an.link(other, carrier, why)
    an.set_axes(node, out + [carrier])
    return True


def diag(an: Any, node: Any, x: Ref, p: Ref) -> None:
    """``y = p * x`` with a parameter ``p``: a diagonal linear map between two spaces.

    ``x -> D_x x``, ``y -> D_y y`` and ``p -> D_y D_x^{-1} p`` keep ``y``: the permutation
    parts of the two spaces are linked, each keeps its signed diagonal maps, and ``p``
    carries both (a second, dual piece of ``p`` on the space of ``x``).
    """
    why = f"{node.name}(per-channel scale)"
    sx, sp = an.shp(x), an.shp(p)
    xa, pa = an.ax(x), an.ax(p)
    n = len(node.shape)
    out, dual = [], []
    for k in range(n):
        ix, ip = k - (n - len(sx)), k - (n - len(sp))
        zx = sx[ix] if ix >= 0 else 1
        zp = sp[ip] if ip >= 0 else 1
        if zp > 1 and zx > 1:
            y = an.new_axis(zx)
            an.link(xa[ix], y, why)
            an.restrict(xa[ix], MONOMIAL, why)
            an.restrict(y, MONOMIAL, why)
            an.unify(pa[ip], y, 0, why)
            dual.append((ip, xa[ix]))
            out.append(y)
        elif zx > 1:
            out.append(xa[ix])
        elif zp > 1:
            out.append(pa[ip])
        else:
            out.append([])
    an.set_axes(node, out)
    an.add_dual_piece(p, dual, why)
