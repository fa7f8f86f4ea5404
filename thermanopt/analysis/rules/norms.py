"""Normalisation layers: LayerNorm, RMSNorm, BatchNorm (train and eval), GroupNorm.

``LN(a x) = LN(x)`` for ``a > 0`` (with eps = 0): the input space keeps one positive scale
(absorbed, "approximate: eps") and its permutations; the normalised output is a new space
whose permutation part is linked to the input's, and the per-channel affine ``g, b`` starts
a further space with signed diagonal maps (Ziyin, Xu & Chuang, arXiv 2505.12387, §2.3).
Train-mode BatchNorm absorbs a positive scale *per channel* and removes any bias written
into it. Eval-mode BatchNorm is the per-channel affine map ``y = A x + B`` with
``A = g / sqrt(v + eps)``, ``B = b - A m`` (running statistics ``m, v`` fixed): it behaves like
a product with a parameter (:func:`~.elementwise.diag`) in the coordinates ``(A, B)``, which
the actions use through :attr:`SymmetryAnalysis.reparams`.
"""

from __future__ import annotations

from typing import Any

from ..unionfind import MONOMIAL, PERM, RELU, SCALE
from .registry import Rule, register


def _affine(an: Any, node: Any, xa: list, dims: list[int], why: str) -> list:
    """Normalised output spaces over ``dims`` and the per-channel affine after them."""
    _x, w, b = node.args[:3]
    out = list(xa)
    for d in dims:
        nrm = an.new_axis(node.shape[d])
        an.link(xa[d], nrm, why)
        an.restrict(nrm, PERM, f"{why}: normalized output")
        y = nrm
        if w is not None and len(dims) == 1:
            y = an.new_axis(node.shape[d])
            an.link(nrm, y, why)
            an.restrict(y, MONOMIAL, f"{why}: per-channel affine")
            an.unify(an.ax(w)[0], y, 0, why)
            an.diagonal.add(an.param_of.get(w.name, ""))
        elif w is not None:
            an.fix(an.ax(w)[dims.index(d)], why)
        if b is not None and len(dims) == 1:
            an.unify(an.ax(b)[0], y, 0, why)
            an.bias_of[node.name] = b.name
        elif b is not None:
            an.fix(an.ax(b)[dims.index(d)], why)
        out[d] = y
    return out


@register
class LayerNormRule(Rule):
    """LayerNorm / RMSNorm over the last axes: one absorbed positive scale on the input."""

    ops = ("layer_norm", "rms_norm")

    def apply(self, an: Any, node: Any) -> None:
        why = f"{node.name}({node.op})"
        x, w, b = node.args[:3]
        xa = list(an.ax(x))
        ns = node.kwargs["normalized_shape"]
        if len(ns) != 1:
            for axis in xa[-len(ns):]:
                an.fix(axis, f"{why}: normalization over several axes")
            dims = list(range(len(xa) - len(ns), len(xa)))
        else:
            dims = [len(xa) - 1]
            an.restrict(xa[-1], SCALE, why)
            an.absorb(xa[-1], why)
            an.notes.append(f"{why}: scale symmetry exact only with eps = 0 "
                            "(approximate: eps)")
        for k, axis in enumerate(xa):
            if k not in dims:
                an.restrict(axis, PERM, f"{why}: batched normalization")
        an.set_axes(node, _affine(an, node, xa, dims, why))
        if node.op == "layer_norm" and len(dims) == 1:
            an.ln_out[node.name] = (an.param_of.get(w.name) if w is not None else None,
                                    an.param_of.get(b.name) if b is not None else None)


@register
class BatchNormRule(Rule):
    """BatchNorm over the channel axis (1, or 0 for 2-D input without batch)."""

    ops = ("batch_norm",)

    def apply(self, an: Any, node: Any) -> None:
        why = f"{node.name}({node.op})"
        x, w, b = node.args[:3]
        xa = list(an.ax(x))
        ch = 1 if len(xa) > 1 else 0
        for k, axis in enumerate(xa):
            if k != ch:
                an.restrict(axis, PERM, f"{why}: batched normalization")
        if node.kwargs.get("training", True):
            an.restrict(xa[ch], RELU, why)
            an.absorb(xa[ch], why)
            an.null_writer_bias(x, why)
            an.notes.append(f"{why}: scale symmetry exact in train mode with eps = 0 "
                            "(approximate: eps)")
            an.set_axes(node, _affine(an, node, xa, [ch], why))
            return
        stats = node.kwargs.get("stats")
        if w is None or b is None or stats is None:
            an.fix(xa[ch], f"{why}: eval-mode BatchNorm without affine parameters")
            an.set_axes(node, _affine(an, node, xa, [ch], why))
            return
        y = an.new_axis(node.shape[ch])
        an.link(xa[ch], y, why)
        an.restrict(xa[ch], MONOMIAL, why)
        an.restrict(y, MONOMIAL, why)
        an.unify(an.ax(w)[0], y, 0, why)
        an.unify(an.ax(b)[0], y, 0, why)
        an.add_dual_piece(w, [(0, xa[ch])], why)
        an.bias_of[node.name] = b.name
        an.reparams.append({"gamma": an.param_of[w.name], "beta": an.param_of[b.name],
                            "mean": stats[0], "var": stats[1], "eps": stats[2]})
        an.bn_links.append({"x": list(xa[ch]), "y": list(y), "why": why,
                            "gamma": an.param_of[w.name], "beta": an.param_of[b.name]})
        out = list(xa)
        out[ch] = y
        an.set_axes(node, out)


def group_shift(an: Any, x: Any, within: list) -> None:
    """The bias written into ``x`` just before a GroupNorm (``x`` read by nothing else) may
    shift by one constant per group: the group mean removes it. Recorded as a centring of
    the bias along the within-group factor (one direction per group)."""
    node = an.producer.get(x.name)
    if node is None or node.op not in ("conv", "linear") or node.args[2] is None or \
            node.args[2].name not in an.param_of or len(within) != 1:
        return
    if any(r is None or an.tg.node(r).op != "group_norm" for r, _v in an.readers(x.name)):
        return
    an.group_shifts.append({"bias": an.param_of[node.args[2].name], "within": within[0]})


def find_group_shifts(an: Any, piece_axes: list) -> list[dict]:
    """Centring records (:class:`~thermanopt.analysis.actions.CenterAction`) of the biases
    found by :func:`group_shift`."""
    out = []
    for rec in an.group_shifts:
        leaf = an.leaves([rec["within"]])[0][0]
        for k, pc in enumerate(an.pieces):
            hits = [(d, pos) for d, lfs in enumerate(piece_axes[k])
                    for pos, (z, _p) in enumerate(lfs) if z == leaf]
            if pc.name == rec["bias"] and len(hits) == 1 and not an.tied(pc.name):
                out.append({"leaf": leaf, "producers": [(k, *hits[0])]})
    return out


@register
class GroupNormRule(Rule):
    """GroupNorm ``(N, C, *S)`` in ``G`` groups: the channel axis splits as ``G x C/G``.

    ``GN(x)`` is unchanged by a positive scale of each group and by permutations of the
    channels within a group and of whole groups: the group factor keeps permutations, the
    within-group factor one absorbed scale and one permutation per group (``copies``). The
    normalised output and the per-channel affine after it have the same split, linked to the
    input's; the affine space keeps its signed diagonal maps.
    """

    ops = ("group_norm",)

    def apply(self, an: Any, node: Any) -> None:
        why = f"{node.name}({node.op})"
        x, w, b = node.args[:3]
        xa = list(an.ax(x))
        G, C = node.kwargs.get("groups"), node.shape[1]
        for k, axis in enumerate(xa):
            if k != 1:
                an.restrict(axis, PERM, f"{why}: batched normalization")
        if not isinstance(G, int) or G < 1 or C % G:
            an.fix(xa[1], f"{why}: group statistics")
            an.gaps.append(f"{why}: group structure not recognised")
            an.set_axes(node, _affine(an, node, xa, [1], why))
            return

        def split(axis):
            g, cg = an.new_axis(G), an.new_axis(C // G)
            if cg and g:
                an.segs[cg[0]].copies_of = g[0]
            an.unify(axis, g + cg, 0, why)
            return g, cg

        g0, c0 = split(xa[1])
        group_shift(an, x, c0)
        an.restrict(g0, PERM, f"{why}: groups have their own statistics")
        an.restrict(c0, SCALE, f"{why}: one scale per group")
        an.absorb(c0, why)
        nrm = an.new_axis(C)
        gn, cn = split(nrm)
        an.link(g0, gn, why)
        an.link(c0, cn, why)
        an.restrict(nrm, PERM, f"{why}: normalized output")
        y = nrm
        if w is not None:
            y = an.new_axis(C)
            gy, cy = split(y)
            an.link(gn, gy, why)
            an.link(cn, cy, why)
            an.restrict(y, MONOMIAL, f"{why}: per-channel affine")
            an.unify(an.ax(w)[0], y, 0, why)
            an.diagonal.add(an.param_of.get(w.name, ""))
        if b is not None:
            an.unify(an.ax(b)[0], y, 0, why)
            an.bias_of[node.name] = b.name
        out = list(xa)
        out[1] = y
        an.set_axes(node, out)


__all__ = ["LayerNormRule", "BatchNormRule", "GroupNormRule", "find_batchnorm_gl",
           "group_shift", "find_group_shifts"]


def _only_by(seg: Any, why: str) -> bool:
    """``seg`` is free but for the restrictions that ``why`` itself made."""
    return (not seg.fixed and seg.copies_of is None and not seg.shared and not seg.children
            and not seg.absorbed and all(w == why for w, _f in seg.reasons))


def find_batchnorm_gl(an: Any) -> list[dict]:
    """Eval-mode BatchNorms between two spaces that nothing else restricts (a linear
    bottleneck: conv -> BN -> conv): ``GL(n)`` passes, as ``M`` before and
    ``diag(A) M diag(A)^{-1}`` after (:class:`~thermanopt.analysis.actions.BatchNormGLAction`);
    its ``n (n - 1)`` off-diagonal directions add to the two rescalings."""
    out = []
    for rec in an.bn_links:
        lx, ly = an.leaves(rec["x"]), an.leaves(rec["y"])
        if len(lx) != 1 or len(ly) != 1 or lx[0][0] == ly[0][0]:
            continue
        x, y = lx[0][0], ly[0][0]
        n = an.segs[x].size
        if n < 2 or not all(_only_by(an.segs[z], rec["why"]) for z in (x, y)):
            continue
        mine = {x, y}
        if any({lf for lf, _p in an.leaves(list(fa) + list(fb))} & mine and w != rec["why"]
               for fa, fb, w in an.links):
            continue
        out.append({"kind": "general_linear", "group": f"GL({n})", "dim": n * (n - 1),
                    "size": n, "leaves": [x, y], "action": "bn_gl",
                    "note": f"through the eval-mode BatchNorm {rec['gamma']} (y = A x + B): "
                            "M before it, diag(A) M diag(A)^-1 after it",
                    "data": {"x": x, "y": y, "gamma": rec["gamma"], "beta": rec["beta"],
                             "parity": {"x": lx[0][1], "y": ly[0][1]}}})
    return out
