"""Shape operations: views, transposes, indexing, concatenation, splitting, padding,
pooling and reductions.

Views and transposes move axes without touching values: every action passes. Indexing,
slicing, padding, rolling or concatenating *along* an axis pins that axis (a map acting on
it would have to commute with the selection); the other axes pass. Reductions over an axis
allow only its permutations (sums, means) and keep the other axes; a maximum keeps
positive rescalings only (Ziyin, Xu & Chuang, arXiv 2505.12387, §2).
"""

from __future__ import annotations

from typing import Any

from ..tracing import Ref
from ..unionfind import PERM, RELU
from .blocks import block_axes, block_biases, split_blocks
from .registry import Rule, register


def _all(axes: list) -> list:
    return [i for axis in axes for i in axis]


@register
class ReshapeRule(Rule):
    """``view``/``reshape``/``flatten``: factors of merged or split axes are aligned
    (``d -> (heads, head_dim)``); a reshape that mixes axes pins them."""

    ops = ("reshape",)

    def apply(self, an: Any, node: Any) -> None:
        x = node.args[0]
        sin, sout = list(an.shp(x)), list(node.shape)
        xa = an.ax(x)
        why = f"{node.name}(reshape)"
        factors = [i for s, axis in zip(sin, xa) if s > 1 for i in axis]
        out: list = []
        pos = 0
        for s in sout:
            if s == 1:
                out.append([])
                continue
            take, prod = [], 1
            while prod < s:
                lf = an.leaves(factors)
                if pos >= len(lf):
                    an.inconsistent.append(why)
                    an.set_axes(node, [an.new_axis(z, True) for z in sout])
                    return
                seg, p = lf[pos]
                size = an.segs[seg].size
                need = s // prod
                if s % prod == 0 and need % size == 0:
                    take.append((seg, p))
                    prod *= size
                    pos += 1
                elif s % prod == 0 and size % need == 0:
                    an.split(seg, need)
                else:
                    for z, _ in an.leaves(factors):
                        an.fix_seg(z, f"{why}: reshape mixes axes")
                    an.set_axes(node, [an.new_axis(z, True) for z in sout])
                    return
            out.append([seg if p == 0 else an.alias(seg) for seg, p in take])
        an.set_axes(node, out)
        an.propagate_meta(node, x)


@register
class ExpandRule(Rule):
    """Broadcast to a larger shape: new and expanded axes are fixed."""

    ops = ("expand",)

    def apply(self, an: Any, node: Any) -> None:
        x, sx = an.ax(node.args[0]), an.shp(node.args[0])
        n = len(node.shape)
        out = []
        for k in range(n):
            ia = k - (n - len(sx))
            if ia >= 0 and sx[ia] == node.shape[k]:
                out.append(x[ia])
            else:
                out.append(an.new_axis(node.shape[k], True))
        an.set_axes(node, out)


@register
class TransposeRule(Rule):
    """``transpose``/``permute``: the axes are reordered."""

    ops = ("transpose", "permute")

    def apply(self, an: Any, node: Any) -> None:
        x = an.ax(node.args[0])
        n = len(x)
        if node.op == "transpose":
            d0, d1 = (d % n for d in node.kwargs["dims"])
            perm = list(range(n))
            perm[d0], perm[d1] = perm[d1], perm[d0]
        else:
            perm = [d % n for d in node.kwargs["dims"]]
        an.set_axes(node, [x[p] for p in perm])
        an.propagate_meta(node, node.args[0])


@register
class SelectRule(Rule):
    """``select``/``slice``/basic ``getitem``: an indexed or sliced axis is pinned."""

    ops = ("getitem", "slice", "select")

    def apply(self, an: Any, node: Any) -> None:  # noqa: C901 - python indexing forms
        x = node.args[0]
        xa, sx = an.ax(x), an.shp(x)
        why = f"{node.name}({node.op})"
        if node.op == "select":
            select_axis(an, node, x, xa)
            return
        if node.op == "slice":
            d = node.kwargs["dim"] % len(xa)
            out = list(xa)
            if node.shape[d] != sx[d]:
                an.fix(xa[d], f"{why}: slicing an axis")
                out[d] = an.new_axis(node.shape[d], True)
            an.set_axes(node, out)
            return
        idx = node.kwargs["index"]
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, Ref) for i in idx):
            an.barrier(node, "advanced (tensor) indexing in getitem")
            return
        n_expl = sum(1 for i in idx if i is not None and i is not Ellipsis)
        out, d = [], 0
        for i in idx:
            if i is Ellipsis:
                for _ in range(len(xa) - n_expl):
                    out.append(xa[d])
                    d += 1
            elif i is None:
                out.append([])
            elif isinstance(i, int):
                an.fix(xa[d], f"{why}: indexing an axis")
                d += 1
            elif isinstance(i, slice):
                if i == slice(None) or (i.start in (None, 0) and i.stop is not None
                                        and i.stop >= sx[d] and i.step in (None, 1)):
                    out.append(xa[d])
                else:
                    an.fix(xa[d], f"{why}: slicing an axis")
                    out.append(None)
                d += 1
            else:
                an.barrier(node, f"indexing with {type(i).__name__}")
                return
        out.extend(xa[d:])
        an.set_axes(node, [an.new_axis(node.shape[k], True) if o is None else o
                           for k, o in enumerate(out)])


def select_axis(an: Any, node: Any, x: Ref, xa: list) -> None:
    """``x.select(d, j)``: block ``j`` of a fused projection (:func:`.blocks.split_blocks`),
    or an indexed (pinned) axis."""
    d = node.kwargs["dim"] % len(xa)
    j = node.kwargs["index"]
    rest = [a for k, a in enumerate(xa) if k != d]
    blocks = split_blocks(an, node, x, d, [], outer=True) if isinstance(j, int) else None
    if blocks is None:
        an.fix(xa[d], f"{node.name}({node.op}): indexing an axis")
        an.set_axes(node, rest)
        if d != len(xa) - 1 and x.name in an.ln_out:  # a token of a LayerNorm output
            an.ln_out[node.name] = an.ln_out[x.name]
        return
    j %= len(blocks)
    an.set_axes(node, block_axes(an, rest, blocks[j]))
    bias = block_biases(an, x, len(blocks))[j]
    if bias is not None:
        an.bias_of[node.name] = bias


@register
class IndexRule(Rule):
    """``index``/``index_select``/``gather`` with tensor indices along one axis: that axis
    is pinned, the others pass (relative-position tables, token gathers)."""

    ops = ("index", "index_select")

    def apply(self, an: Any, node: Any) -> None:
        why = f"{node.name}({node.op})"
        x = node.args[0]
        xa, sx = an.ax(x), an.shp(x)
        if node.op == "index_select":
            dims, idx_shape = [node.kwargs["dim"] % len(xa)], None
        else:
            ind = node.kwargs["indices"]
            dims = [k for k, i in enumerate(ind) if i is not None]
            shapes = {tuple(an.shp(i)) for i in ind if isinstance(i, Ref)}
            if len(shapes) != 1 or dims != list(range(dims[0], dims[0] + len(dims))):
                an.barrier(node, "index with non-adjacent or broadcast index tensors")
                return
            idx_shape = shapes.pop()
        for d in dims:
            an.fix(xa[d], f"{why}: indexing an axis")
        d0 = dims[0]
        mid = [an.new_axis(s, True) for s in (idx_shape if idx_shape is not None
                                                 else (node.shape[d0],))]
        out = list(xa[:d0]) + mid + list(xa[dims[-1] + 1:])
        sizes = list(sx[:d0]) + list(idx_shape or (node.shape[d0],)) + list(sx[dims[-1] + 1:])
        if sizes == list(node.shape):
            an.set_axes(node, out)
        else:
            an.barrier(node, "index with an unexpected output shape")


@register
class CatRule(Rule):
    """``cat``/``stack``: the other axes of all operands are coupled; the concatenation axis
    is pinned (conservative)."""

    ops = ("cat", "stack")

    def apply(self, an: Any, node: Any) -> None:
        ts = [t for t in node.args if isinstance(t, Ref)]
        n = len(node.shape)
        d = node.kwargs["dim"] % n
        why = f"{node.name}({node.op})"
        first = list(an.ax(ts[0]))
        rank = len(first)
        for t in ts[1:]:
            for k in range(rank):
                if node.op == "stack" or k != d:
                    an.unify(first[k], an.ax(t)[k], 0, why)
        if node.op == "stack":
            out = first[:d] + [an.new_axis(node.shape[d], True)] + first[d:]
        else:
            for t in ts:
                an.fix(an.ax(t)[d], f"{why}: concatenation axis (conservative)")
            out = list(first)
            out[d] = an.new_axis(node.shape[d], True)
        an.set_axes(node, out)


@register
class SplitRule(Rule):
    """``split``/``unbind``/``chunk`` (several outputs): the other axes are shared by every
    output. The split axis is cut into independent blocks where :func:`.blocks.split_blocks`
    can re-piece its parameters (a fused projection); otherwise it is pinned (removed by
    ``unbind``)."""

    ops = ("split", "unbind")

    def apply(self, an: Any, node: Any) -> None:
        x = node.args[0]
        xa = an.ax(x)
        d = node.kwargs["dim"] % len(xa)
        why = f"{node.name}({node.op})"
        shapes = node.meta["shapes"]
        unbind = node.op == "unbind"
        blocks = split_blocks(an, node, x, d, [sh[d] for sh in shapes] if not unbind else [],
                              outer=unbind)
        if blocks is None:
            an.fix(xa[d], f"{why}: split axis")
        outs = []
        for j, shape in enumerate(shapes):
            if unbind:
                o = [a for k, a in enumerate(xa) if k != d]
                outs.append(o if blocks is None else block_axes(an, o, blocks[j]))
            else:
                o = list(xa)
                o[d] = an.new_axis(shape[d], True) if blocks is None else \
                    block_axes(an, [xa[d]], blocks[j])[0]
                outs.append(o)
        if blocks is not None:
            an.multi_bias[node.name] = block_biases(an, x, len(shapes))
        an.set_multi(node, outs)


@register
class ItemRule(Rule):
    """One output of a multi-output operation."""

    ops = ("item",)

    def apply(self, an: Any, node: Any) -> None:
        src = node.args[0]
        outs = an.multi.get(src.name)
        k = node.kwargs["index"]
        if outs is None and k == 0 and src.name in an.vals:
            outs = [an.ax(src)]  # the first output of an op with one traced output
        elif outs is None and isinstance(k, int):
            an.set_axes(node, [an.new_axis(s, True) for s in node.shape])
            return  # an integer side output (pooling indices): no parameter flows in
        if outs is None or not isinstance(k, int) or k >= len(outs):
            an.barrier(node, "output of an operation without a rule")
            return
        an.set_axes(node, list(outs[k]))
        biases = an.multi_bias.get(src.name)
        if biases and biases[k] is not None:
            an.bias_of[node.name] = biases[k]


@register
class PadRule(Rule):
    """Padding: padded axes are pinned; a non-zero fill value allows permutations only."""

    ops = ("pad",)

    def apply(self, an: Any, node: Any) -> None:
        x = node.args[0]
        xa, sx = an.ax(x), an.shp(x)
        why = f"{node.name}({node.op})"
        out = []
        for k, a in enumerate(xa):
            if sx[k] != node.shape[k] or k in node.kwargs.get("axes", ()):
                an.fix(a, f"{why}: padded axis")
                out.append(an.new_axis(node.shape[k], True))
            else:
                out.append(a)
        if node.kwargs.get("value", 0) not in (0, 0.0, None):
            an.restrict(_all(out), PERM, f"{why}: non-zero padding")
        an.set_axes(node, out)


@register
class AlongAxisRule(Rule):
    """``roll``/``flip``/``cumsum``/``repeat``/``tile``... along ``dims``: those axes are pinned,
    the others pass unchanged."""

    ops = ("along",)

    def apply(self, an: Any, node: Any) -> None:
        x = node.args[0]
        xa, sx = an.ax(x), an.shp(x)
        why = f"{node.name}({node.kwargs.get('name', node.op)})"
        dims = node.kwargs.get("dims")
        if len(node.shape) != len(sx):
            an.barrier(node, f"{node.kwargs.get('name', node.op)} changing the rank")
            return
        dims = range(len(xa)) if dims is None else [d % len(xa) for d in dims]
        out = list(xa)
        for d in dims:
            an.fix(xa[d], why)
            if node.shape[d] != sx[d]:
                out[d] = an.new_axis(node.shape[d], True)
        for k in range(len(xa)):
            if node.shape[k] != sx[k] and k not in dims:
                an.fix(xa[k], why)
                out[k] = an.new_axis(node.shape[k], True)
        an.set_axes(node, out)


@register
class PoolRule(Rule):
    """Pooling over the spatial axes of ``(N, C, *S)``: averages keep every channel map,
    maxima the positive diagonal ones; spatial axes are fixed."""

    ops = ("max_pool", "avg_pool", "upsample")

    def apply(self, an: Any, node: Any) -> None:
        x = an.ax(node.args[0])
        if node.op == "max_pool":
            an.restrict(x[1], RELU, f"{node.name}({node.op})")
        for a in x[2:]:
            an.fix(a, f"{node.name}({node.op}): spatial axis")
        an.set_axes(node, [x[0], x[1]] + [an.new_axis(s, True) for s in node.shape[2:]])


@register
class ReduceRule(Rule):
    """``sum``/``mean`` (``reduce``), ``amax`` (``reduce_max``) and ``var`` (``reduce_var``)
    over ``dim``: the reduced axes keep permutations only; the kept axes keep every map
    (sum), positive diagonal ones (max) or permutations (variance)."""

    ops = ("reduce", "reduce_max", "reduce_var")

    def apply(self, an: Any, node: Any) -> None:
        x = an.ax(node.args[0])
        why = f"{node.name}({node.op})"
        n = len(x)
        dims = node.kwargs["dim"]
        dims = list(range(n)) if dims is None or dims == [] else (
            [dims] if isinstance(dims, int) else dims)
        dims = {d % n for d in dims}
        for d in dims:
            an.restrict(x[d], PERM, f"{why}: reduction over the axis")
        kept = [x[d] for d in range(n) if d not in dims]
        if node.op == "reduce_max":
            an.restrict(_all(kept), RELU, why)
        elif node.op == "reduce_var":
            an.restrict(_all(kept), PERM, why)
        out = [([] if node.kwargs["keepdim"] else None) if d in dims else x[d]
               for d in range(n)]
        an.set_axes(node, [o for o in out if o is not None])


__all__ = ["ReshapeRule", "ExpandRule", "TransposeRule", "SelectRule", "IndexRule", "CatRule",
           "SplitRule", "ItemRule", "PadRule", "AlongAxisRule", "PoolRule", "ReduceRule"]
