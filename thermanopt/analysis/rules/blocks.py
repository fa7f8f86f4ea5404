"""Direct-sum split of a coupled axis: a fused projection cut into blocks.

A fused projection ``y = x W^T + b`` with ``W = [W_1; ...; W_k]`` (rows stacked) whose output
is then cut into ``y_1, ..., y_k`` (``split``/``chunk``, or ``unbind``/``select`` over an
outer factor ``(k, n)`` of the axis) is ``k`` independent projections ``y_j = x W_j^T + b_j``.
A map acting on the split axis is block diagonal, ``M = diag(M_1, ..., M_k)``, and each
``M_j`` is coupled only to the readers of ``y_j``: with a fused ``qkv`` projection, query and
key admit ``W_q -> A W_q``, ``W_k -> A^{-T} W_k`` per head (GL(head_dim)), and the value
block with the output projection another GL(head_dim) per head (Ziyin, Xu & Chuang, arXiv
2505.12387, §2.4).

The rule re-pieces every parameter carrying the axis into ``k`` slices, each on a fresh space
(a copy of the axis' factor structure, constraints and all), and hands the fresh spaces to
the outputs. It applies only when the axis is private to the chain of operations ending at
the split (no other reader, output, permutation link or per-copy dependency sees it);
otherwise the caller pins the axis, as before.
"""

from __future__ import annotations

import math
from typing import Any

from ..tracing import Ref

__all__ = ["split_blocks", "block_axes", "block_biases"]

_CUTS = ("split", "unbind", "select")


def _unit(an: Any, axis: list) -> tuple[int, list, list] | None:
    """``(root, leaves of the root, leaves of one block)`` of the split axis, or None.

    A single leaf ``S`` is cut along itself (blocks of ``S``); the outer factor ``c0`` of a
    root ``P = c0 x c1`` selects blocks of ``P`` of size ``|c1|``."""
    lf = an.leaves(axis)
    if len(lf) != 1:
        return None
    leaf = lf[0][0]
    for r, s in enumerate(an.segs):
        if s.children and an.find(s.children[0])[0] == leaf and an.find(r)[0] == r:
            block = an.leaves([s.children[1]])
            return r, [(leaf, 0)] + block, block
    return leaf, [(leaf, 0)], [(leaf, 0)]


def _private(an: Any, node: Any, x: Ref, d: int, involved: set) -> bool:
    """Every value carrying ``involved`` leaves is read only inside the chain that ends at
    the cuts of ``x`` along ``d``; no link or per-copy map reaches outside."""
    rank = len(an.shp(x))
    names = [v for v, axes in an.vals.items()
             if any(lf in involved for a in axes for lf, _p in an.leaves(a))]
    inside = set(names)
    for v in names:
        if v in an.tg.outputs:
            return False
        for r in an.direct_readers(v):
            if r.name in inside:
                continue
            if v == x.name and r.op in _CUTS and r.kwargs.get("dim", 0) % rank == d:
                continue
            return False
    for fa, fb, _why in an.links:
        if any(lf in involved for lf, _p in an.leaves(list(fa) + list(fb))):
            return False
    for i, s in enumerate(an.segs):
        if s.copies_of is None or an.find(i)[0] != i:
            continue
        inner = {lf for lf, _p in an.leaves([i])} <= involved  # a factor inside the axis
        if not inner and any(lf in involved for lf, _p in an.leaves([s.copies_of])):
            return False
    return True


def _clone(an: Any, block: list, outer: int) -> dict[int, int]:
    """Fresh segments mirroring the leaves of one block (size, constraints, per-copy
    structure inside the block; the block index ``outer`` no longer copies anything)."""
    new = {}
    for lf, _p in block:
        s = an.segs[lf]
        c = an.new_seg(s.size, s.fixed)
        t = an.segs[c]
        t.feat, t.absorbed, t.reasons = s.feat, set(s.absorbed), list(s.reasons)
        new[lf] = c
    for lf, _p in block:
        src = an.segs[lf].copies_of
        if src is None:
            continue
        cl = an.leaves([src])
        if len(cl) == 1 and cl[0][0] in new:
            an.segs[new[lf]].copies_of = new[cl[0][0]]
        elif not (len(cl) == 1 and cl[0][0] == outer):
            an.segs[new[lf]].copies_of = src
            an.segs[new[lf]].shared = an.segs[lf].shared
    return new


def _repiece(an: Any, root_leaves: list, blocks: list[dict], sizes: list[int],
             why: str) -> bool:
    """Replace every parameter piece on the split axis by one slice per block."""
    ids = [lf for lf, _p in root_leaves]
    involved = set(ids)
    plan = []
    for k, pc in enumerate(an.pieces):
        hits = [dd for dd, axis in enumerate(pc.axes)
                if any(lf in involved for lf, _p in an.leaves(axis))]
        if not hits:
            continue
        lf = an.leaves(pc.axes[hits[0]])
        if len(hits) != 1 or pc.dual or pc.index != () or [x for x, _ in lf] != ids or \
                len({p for _x, p in lf}) != 1:
            return False
        plan.append((k, hits[0], lf[0][1]))
    if not plan:
        return False
    offsets = [sum(sizes[:j]) for j in range(len(sizes))]
    for k, dd, q in plan:
        pc = an.pieces[k]
        for j, (clones, n, off) in enumerate(zip(blocks, sizes, offsets)):
            f = an.new_seg(n)
            targets = [clones[x] for x, _p in root_leaves if x in clones]
            an.unify([f], targets, q, f"{why}: block {j}")
            axes = list(pc.axes)
            axes[dd] = [f]
            shape = list(pc.shape)
            shape[dd] = n
            index = (slice(None),) * dd + (slice(off, off + n),)
            an.add_piece(pc.name, index, tuple(shape), axes)
            if len(pc.shape) == 1:
                an.bias_blocks.setdefault(pc.name, []).append((index, [f]))
    drop = {k for k, _dd, _q in plan}
    an.pieces = [pc for k, pc in enumerate(an.pieces) if k not in drop]
    return True


def split_blocks(an: Any, node: Any, x: Ref, d: int, sizes: list[int],
                 outer: bool) -> list | None:
    """Per-block maps ``old leaf -> fresh segment`` for cutting axis ``d`` of ``x`` into
    contiguous blocks (None: the axis cannot be split; the caller pins it).

    ``outer=False`` (``split``): axis ``d`` is one leaf cut into blocks of ``sizes``.
    ``outer=True`` (``unbind``/``select``): axis ``d`` is the outer factor ``c0`` of
    ``P = c0 x c1``; block ``j`` is ``P[j |c1| : (j+1) |c1|]``. Repeated cuts of the same
    axis (one ``select`` per block) reuse the first split."""
    why = f"{node.name}({node.op})"
    unit = _unit(an, an.ax(x)[d])
    if unit is None:
        return None
    root, root_leaves, block = unit
    if outer != (len(block) < len(root_leaves)):
        return None
    if root in an.block_memo:
        return an.block_memo[root]
    first = root_leaves[0][0]
    size = math.prod(an.segs[lf].size for lf, _p in root_leaves)
    if outer:  # equal blocks of the inner factor
        m = math.prod(an.segs[lf].size for lf, _p in block)
        sizes = [m] * an.segs[first].size
    if sum(sizes) != size or an.segs[root].copies_of is not None or an.segs[root].fixed:
        return None
    involved = {lf for lf, _p in root_leaves}
    if not _private(an, node, x, d, involved):
        return None
    if not outer:  # one leaf cut along itself: a fresh leaf per block
        blocks = []
        for n in sizes:
            c = an.new_seg(n)
            t, s = an.segs[c], an.segs[first]
            t.feat, t.absorbed, t.reasons = s.feat, set(s.absorbed), list(s.reasons)
            blocks.append({first: c})
    else:
        blocks = [_clone(an, block, first) for _ in sizes]
    if not _repiece(an, root_leaves, blocks, sizes, why):
        return None
    an.block_memo[root] = blocks
    return blocks


def block_axes(an: Any, axes: list, clones: dict[int, int]) -> list:
    """``axes`` with every leaf replaced by its clone (parity kept)."""
    out = []
    for axis in axes:
        new = []
        for lf, p in an.leaves(axis):
            c = clones.get(lf)
            if c is None:
                new.append(lf if p == 0 else an.alias(lf))
            else:
                new.append(c if p == 0 else an.alias(c))
        out.append(new)
    return out


def block_biases(an: Any, x: Ref, n: int) -> list[str | None]:
    """Synthetic values for the bias block written into each of the ``n`` outputs (so that
    key-bias nulls and value-bias trades see the slice ``b[a:b]`` of a fused bias)."""
    b = an.bias_of.get(x.name)
    pname = an.param_of.get(b) if b is not None else None
    blocks = an.bias_blocks.get(pname, [])
    if len(blocks) != n:
        return [None] * n
    res: list[str | None] = []
    for j, (index, _axis) in enumerate(blocks):
        syn = f"{b}[{j}]"
        an.param_of[syn] = pname
        an.shapes[syn] = (index[-1].stop - index[-1].start,)
        an.slice_of[syn] = index
        res.append(syn)
    return res
