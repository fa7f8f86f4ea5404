"""Coupled index spaces: a union-find over tensor axes with a parity bit.

Model of a symmetry (Ziyin, Xu & Chuang, arXiv 2505.12387, §2): every axis of every tensor
carries a linear map ``M`` acting on that index. An activation ``v`` becomes ``M v``; a
parameter axis transforms either *contravariantly* (``M``: rows of a weight, a bias) or
*covariantly* (``M^{-T}``: columns of a weight, contracted with the space). Axes that must
carry the same map are merged; the parity bit of an edge says whether the two ends carry
``M`` (0) or ``M^{-T}`` (1). A parity conflict (a tied parameter that both produces and
reads a space) forces ``M = M^{-T}``: the orthogonal group.

Each class (a *segment* root) also carries the set of actions still allowed on it
(:data:`ALL` features, intersected by every operation that touches it) and may be split into
factors (``d -> (heads, head_dim)``); the later factor then carries one independent map per
index of the earlier one (``copies_of``). Permutation-only couplings of two spaces (a
normalisation, a per-channel affine) are recorded as *links*, resolved by a second, plain
union-find (:func:`group_links`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["ALL", "MONOMIAL", "RELU", "PERM", "ORTH", "SIGN", "SCALE", "Seg", "CoupledAxes",
           "group_links"]

#: every action: sign flips, positive diagonal rescaling, one positive scalar, rotations
ALL = frozenset({"sign", "pdiag", "homog", "rotate"})
#: signed diagonal maps (monomial matrices once combined with permutations)
MONOMIAL = frozenset({"sign", "pdiag", "homog"})
#: positive diagonal maps (positively homogeneous activations: ReLU, max-pool)
RELU = frozenset({"pdiag", "homog"})
#: permutations only
PERM = frozenset()
#: orthogonal maps (a space used both as itself and as its dual)
ORTH = frozenset({"sign", "rotate"})
#: sign flips only (odd activations: tanh)
SIGN = frozenset({"sign"})
#: one positive scalar (the input of a normalisation over the axis)
SCALE = frozenset({"homog"})


@dataclass
class Seg:
    """One index segment: a union-find node (``parent``, parity ``par`` to the parent)."""

    id: int
    size: int
    parent: int
    par: int = 0
    feat: frozenset = ALL
    fixed: bool = False
    children: list | None = None
    copies_of: int | None = None
    shared: bool = False
    absorbed: set = field(default_factory=set)  # normalisation layers absorbing a scale
    reasons: list = field(default_factory=list)  # (why, features or "fixed") constraints


class CoupledAxes:
    """The union-find of axes: create, merge, split, restrict and fix segments.

    ``edges`` records every coupling ``(x, y, kind, why)`` (kind ``same``, ``dual`` or
    ``perm``) for the graph export.
    """

    def __init__(self) -> None:
        self.segs: list[Seg] = []
        self.links: list[tuple[list, list, str]] = []
        self.edges: list[tuple[int, int, str, str]] = []
        self.inconsistent: list[str] = []  # couplings whose factor sizes disagreed

    def new_seg(self, size: int, fixed: bool = False) -> int:
        """New segment of ``size``; a ``fixed`` segment allows no transformation."""
        s = Seg(len(self.segs), int(size), len(self.segs), fixed=fixed)
        if fixed:
            s.feat = PERM
        self.segs.append(s)
        return s.id

    def new_axis(self, size: int, fixed: bool = False) -> list:
        """Segments of a new axis of ``size`` (none for a singleton axis)."""
        return [] if size == 1 else [self.new_seg(size, fixed)]

    def alias(self, root: int) -> int:
        """A new id that resolves to ``root`` with parity 1 (the dual space)."""
        s = Seg(len(self.segs), self.segs[root].size, root, par=1)
        self.segs.append(s)
        return s.id

    def find(self, i: int) -> tuple[int, int]:
        """Root of segment ``i`` and the parity from ``i`` to it (path compressing)."""
        par, root, path = 0, i, []
        while self.segs[root].parent != root:
            path.append(root)
            par ^= self.segs[root].par
            root = self.segs[root].parent
        acc = par
        for p in path:
            nxt = self.segs[p].par
            self.segs[p].parent, self.segs[p].par = root, acc
            acc ^= nxt
        return root, par

    def leaves(self, ids: list) -> list[tuple[int, int]]:
        """The finest segments ``(root, parity)`` that an axis (segment ids) resolves to."""
        out = []
        for i in ids:
            r, p = self.find(i)
            ch = self.segs[r].children
            if ch:
                out.extend((lf, q ^ p) for lf, q in self.leaves(ch))
            else:
                out.append((r, p))
        return out

    def split(self, root: int, first: int) -> None:
        """Split segment ``root`` into ``first`` x ``size / first`` factors (heads)."""
        s = self.segs[root]
        c0, c1 = self.new_seg(first, s.fixed), self.new_seg(s.size // first, s.fixed)
        for c in (c0, c1):
            self.segs[c].feat = s.feat
            self.segs[c].absorbed = set(s.absorbed)
            self.segs[c].reasons = list(s.reasons)
        self.segs[c1].copies_of = c0
        s.children = [c0, c1]

    def _size(self, i: int) -> int:
        """Total size of the leaves segment ``i`` resolves to."""
        return math.prod(self.segs[x].size for x, _ in self.leaves([i]))

    def _union_roots(self, a: int, b: int, p: int, why: str) -> None:
        ra, pa = self.find(a)
        rb, pb = self.find(b)
        if ra == rb:
            if pa ^ pb != p:
                self.restrict_seg(ra, ORTH, f"{why}: tied (dual) use, orthogonal only")
            return
        sa, sb = self.segs[ra], self.segs[rb]
        if sa.children or sb.children:
            if sa.children and sb.children:
                self.unify([ra], [rb], pa ^ pb ^ p, why)
                return
            if sb.children:
                ra, rb, sa, sb = rb, ra, sb, sa
        sb.parent, sb.par = ra, pa ^ pb ^ p
        sa.feat = sa.feat & sb.feat
        sa.fixed = sa.fixed or sb.fixed
        sa.absorbed |= sb.absorbed
        sa.reasons += sb.reasons
        if sa.copies_of is None:
            sa.copies_of = sb.copies_of
            if sb.copies_of is not None:
                sa.shared = True
        elif sb.copies_of is None:
            sa.shared = True
        elif self._size(sa.copies_of) == self._size(sb.copies_of):
            self._union_roots(sa.copies_of, sb.copies_of, 0, why)
        else:  # copies over axes of different sizes (query vs key/value heads): one map
            sa.shared = True
        sa.shared = sa.shared or sb.shared
        if sa.children:
            for c in sa.children:
                self.restrict_seg(c, sb.feat, why)
                if sb.fixed:
                    self.fix_seg(c, why)

    def unify(self, fa: list, fb: list, p: int, why: str) -> None:
        """Merge two axes (factor lists): ``M_b = M_a`` (p=0) or ``M_a^{-T}`` (p=1).

        Factors of different sizes are split until they align; axes that cannot be aligned
        (incompatible reshapes) are fixed.
        """
        for _ in range(64):
            la, lb = self.leaves(fa), self.leaves(fb)
            if math.prod(self.segs[x].size for x, _ in la) != math.prod(
                    self.segs[x].size for x, _ in lb):
                # factor bookkeeping that no longer matches the shapes: pin both (never fatal)
                for z, _ in la + lb:
                    self.fix_seg(z, f"{why}: inconsistent factors")
                self.inconsistent.append(why)
                return
            i = j = 0
            redo = False
            while i < len(la) and j < len(lb):
                (x, px), (y, py) = la[i], lb[j]
                sx, sy = self.segs[x].size, self.segs[y].size
                if sx == sy:
                    self._union_roots(x, y, px ^ py ^ p, why)
                    self.edges.append((x, y, "dual" if p else "same", why))
                    i += 1
                    j += 1
                elif sx > sy and sx % sy == 0:
                    self.split(x, sy)
                    redo = True
                    break
                elif sy > sx and sy % sx == 0:
                    self.split(y, sx)
                    redo = True
                    break
                else:
                    for z, _ in la + lb:
                        self.fix_seg(z, f"{why}: incompatible reshapes")
                    return
            if not redo:
                return
        raise ValueError(f"internal: could not align axes at {why}")

    def restrict_seg(self, i: int, feat: frozenset, why: str) -> None:
        """Intersect the allowed actions of segment ``i`` with ``feat``; record ``why``."""
        r, _ = self.find(i)
        s = self.segs[r]
        if not feat >= s.feat:
            s.reasons.append((why, tuple(sorted(feat))))
        s.feat = s.feat & feat
        for c in s.children or ():
            self.restrict_seg(c, feat, why)

    def restrict(self, axis: list, feat: frozenset, why: str) -> None:
        """Intersect the allowed actions of every segment of ``axis`` with ``feat``."""
        for i in axis:
            self.restrict_seg(i, feat, why)

    def fix_seg(self, i: int, why: str) -> None:
        """Mark segment ``i`` fixed (no symmetry acts on it); record ``why``."""
        r, _ = self.find(i)
        s = self.segs[r]
        if not s.fixed:
            s.reasons.append((why, "fixed"))
        s.fixed = True
        s.feat = PERM
        for c in s.children or ():
            self.fix_seg(c, why)

    def fix(self, axis: list, why: str) -> None:
        """Mark every segment of ``axis`` fixed."""
        for i in axis:
            self.fix_seg(i, why)

    def link(self, fa: list, fb: list, why: str) -> None:
        """Share the permutation part of two axes (normalisation, per-channel affine)."""
        self.links.append((list(fa), list(fb), why))


def group_links(axes: CoupledAxes, used: set[int]) -> list[list[int]]:
    """Permutation groups: the leaves joined by the recorded links, plus every ``used`` leaf.

    A link between axes whose factor sizes differ fixes both sides. Leaves of one group of
    more than one member lose their rotations (``feat & MONOMIAL``): only a permutation (and
    a diagonal) can be shared across a normalisation.
    """
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for fa, fb, why in axes.links:
        la, lb = axes.leaves(fa), axes.leaves(fb)
        if [axes.segs[x].size for x, _ in la] != [axes.segs[x].size for x, _ in lb]:
            for z, _ in la + lb:
                axes.fix_seg(z, f"{why}: incompatible permutation link")
            continue
        for (x, _), (y, _) in zip(la, lb):
            parent[root(x)] = root(y)
            axes.edges.append((x, y, "perm", why))
    groups: dict[int, list] = {}
    for leaf in set(parent) | used:
        groups.setdefault(root(leaf), []).append(leaf)
    for members in groups.values():
        if len(members) > 1:
            for m in members:
                axes.segs[m].feat = axes.segs[m].feat & MONOMIAL
    return [sorted(m) for m in groups.values()]
