"""Symmetry graph: which index spaces (axes) of a model must be transformed together.

Model of a symmetry (convention of the analysis, Ziyin, Xu & Chuang arXiv 2505.12387 §2
and ``shared/design/entropic-forces.md`` §2): every axis of every tensor (activations and
parameters) carries a linear map ``M`` acting on that index; an activation ``v`` becomes
``M v`` and a parameter axis transforms either *contravariantly* (``M``, an axis that
produces the space: rows of a weight, a bias) or *covariantly* (``M^{-T}``, an axis that is
contracted with the space: columns of a weight). The axes that must carry the same map are
merged in a union-find structure with a parity bit (0: same map, 1: dual map ``M^{-T}``);
each class is a *coupled group*. Every operation restricts the maps it commutes with:

===============================  ============================================
operation                        allowed on the axis it touches
===============================  ============================================
linear / conv / matmul / add     GL(n) (any invertible map)
ReLU, LeakyReLU, max-pool        positive diagonal x permutation
tanh                             sign flips x permutation
sigmoid, GELU, SiLU, softmax     permutations only
LayerNorm / RMSNorm input        positive scalar (scale), permutation
BatchNorm input (train mode)     positive diagonal (scale per channel)
per-channel affine (LN/BN gamma) starts a new space: signed diagonal x permutation
attention heads                  block structure: permutations of heads x per-head maps
model input / output, constants  identity (fixed)
===============================  ============================================

A parity conflict (a tied parameter that both produces and consumes the same space)
forces ``M = M^{-T}``: the orthogonal group O(n). Normalization layers, per-channel
affines and elementwise products link the *permutation* part of two spaces without
merging their continuous parts (a second union-find, "perm links").

Reshapes split an axis into factors (``d -> (heads, head_dim)``); the later factor of a
split carries one independent map per index of the earlier one (per-head maps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx

from .tracing import OpNode, Ref, TracedGraph, UnsupportedOpError

__all__ = ["SymmetryAnalysis", "analyse_graph", "symmetry_graph", "ALL", "MONOMIAL"]

ALL = frozenset({"sign", "pdiag", "homog", "rotate"})
MONOMIAL = frozenset({"sign", "pdiag", "homog"})
RELU = frozenset({"pdiag", "homog"})
PERM = frozenset()
ORTH = frozenset({"sign", "rotate"})

_ACT_FEATURES = {
    "relu": RELU, "leaky_relu": RELU, "tanh": frozenset({"sign"}), "sigmoid": PERM,
    "gelu": PERM, "silu": PERM, "other_act": PERM, "identity": ALL, "neg": ALL,
}


@dataclass
class Seg:
    id: int
    size: int
    parent: int
    par: int = 0
    feat: frozenset = ALL
    fixed: bool = False
    children: list | None = None
    copies_of: int | None = None
    shared: bool = False
    absorbed: set = field(default_factory=set)  # normalization layers absorbing a scale
    reasons: list = field(default_factory=list)  # (op name, features) constraints applied


@dataclass
class ParamPiece:
    """A parameter (or a slice of one) with the axes (factor lists) it has in the graph."""

    name: str
    index: tuple  # tuple of slices ((), whole parameter)
    shape: tuple
    axes: list  # per dim: list of segment ids


class SymmetryAnalysis:
    """Builds the coupled groups of a traced graph (see module docstring)."""

    def __init__(self, graph: TracedGraph, param_shapes: dict[str, tuple]):
        self.tg = graph
        self.segs: list[Seg] = []
        self.vals: dict[str, list] = {}  # value name -> list of axes (list of seg ids)
        self.shapes: dict[str, tuple] = {}
        self.pieces: list[ParamPiece] = []
        self.param_of: dict[str, str] = {}  # value name -> parameter name
        self.links: list[tuple[list, list]] = []
        self.nulls: list[dict] = []
        self.notes: list[str] = list(graph.notes)
        self.bias_of: dict[str, tuple] = {}  # value -> (piece index) of the bias added last
        self.scores_key: dict[str, str] = {}  # value -> key value of attention scores
        self.producer: dict[str, OpNode] = {}
        self.param_shapes = param_shapes
        self.approx_eps: dict[int, float] = {}
        self.nx = nx.MultiDiGraph()
        self.output_linear: dict | None = None
        self.trade_src: dict[str, tuple] = {}  # value -> (param, index) of a value bias
        self.trades: list[dict] = []
        # deferred bias trades, checked against every reader once the graph is known
        self.trade_cands: list[dict] = []
        self.trade_via: dict[str, str] = {}  # attention output -> its value operand
        self.consumers: list[tuple[int, str]] = []
        self.ln_out: dict[str, tuple] = {}  # value -> (ln weight, ln bias) of a LayerNorm output
        self.ln_nulls: list[dict] = []
        for node in graph.nodes:
            self.producer[node.name] = node
            self._visit(node)
        for o in graph.outputs:
            for ax in self.vals.get(o, []):
                self.fix(ax, "model output")
                for i in ax:
                    self.consumers.append((i, "output"))
        self._final_output_translation()
        self._resolve_trades()
        seen = set(self.param_of.values())
        for pname, shape in param_shapes.items():
            if pname not in seen:
                self.nulls.append({"param": pname, "index": (), "dim": math.prod(shape),
                                   "reason": "parameter never read on the way to the output"})

    # ---------------------------------------------------------------- union-find basics
    def new_seg(self, size: int, fixed: bool = False) -> int:
        """New index segment (a union-find node) of ``size``; ``fixed`` segments allow no
        transformation.
        """
        s = Seg(len(self.segs), int(size), len(self.segs), fixed=fixed)
        if fixed:
            s.feat = PERM
        self.segs.append(s)
        return s.id

    def new_axis(self, size: int, fixed: bool = False) -> list:
        """Segments of a new axis of ``size`` (none for a singleton axis)."""
        return [] if size == 1 else [self.new_seg(size, fixed)]

    def find(self, i: int) -> tuple[int, int]:
        """Union-find root of segment ``i`` and its offset in the root (path-compressing)."""
        par = 0
        root = i
        path = []
        while self.segs[root].parent != root:
            path.append(root)
            par ^= self.segs[root].par
            root = self.segs[root].parent
        # path compression
        acc = par
        for p in path:
            nxt_par = self.segs[p].par
            self.segs[p].parent, self.segs[p].par = root, acc
            acc ^= nxt_par
        return root, par

    def leaves(self, ids: list) -> list[tuple[int, int]]:
        """The finest segments (root, offset) an axis given by segment ids resolves to."""
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
        """Split segment ``root`` into ``first`` x (size / first) sub-segments (heads)."""
        s = self.segs[root]
        a, b = first, s.size // first
        c0, c1 = self.new_seg(a, s.fixed), self.new_seg(b, s.fixed)
        for c in (c0, c1):
            self.segs[c].feat = s.feat
            self.segs[c].absorbed = set(s.absorbed)
            self.segs[c].reasons = list(s.reasons)
        self.segs[c1].copies_of = c0
        s.children = [c0, c1]

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
        else:
            self._union_roots(sa.copies_of, sb.copies_of, 0, why)
        sa.shared = sa.shared or sb.shared
        if sa.children:
            for c in sa.children:
                self.restrict_seg(c, sb.feat, why)
                if sb.fixed:
                    self.fix_seg(c, why)

    def unify(self, fa: list, fb: list, p: int, why: str) -> None:
        """Merge two axes (factor lists) so that ``M_b = M_a`` (p=0) or ``M_a^{-T}`` (p=1)."""
        for _ in range(64):
            la, lb = self.leaves(fa), self.leaves(fb)
            if math.prod(self.segs[x].size for x, _ in la) != math.prod(
                    self.segs[x].size for x, _ in lb):
                raise ValueError(f"internal: size mismatch while coupling axes at {why}")
            i = j = 0
            redo = False
            while i < len(la) and j < len(lb):
                (x, px), (y, py) = la[i], lb[j]
                sx, sy = self.segs[x].size, self.segs[y].size
                if sx == sy:
                    self._union_roots(x, y, px ^ py ^ p, why)
                    self._edge(x, y, p, why)
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
        if s.children:
            for c in s.children:
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
        if s.children:
            for c in s.children:
                self.fix_seg(c, why)

    def fix(self, axis: list, why: str) -> None:
        """Mark every segment of ``axis`` fixed."""
        for i in axis:
            self.fix_seg(i, why)

    def link(self, fa: list, fb: list, why: str) -> None:
        """Share the permutation part of two axes (normalization, per-channel affine)."""
        self.links.append((list(fa), list(fb), why))

    def _edge(self, x: int, y: int, p: int, why: str) -> None:
        self.nx.add_edge(f"axis:{x}", f"axis:{y}", key=why, coupling="dual" if p else "same",
                         op=why)

    # ---------------------------------------------------------------- graph walk
    def ax(self, r) -> list:
        """Axes (segment lists) of the traced value ``r``; an error for non-tensor operands."""
        if not isinstance(r, Ref):
            raise UnsupportedOpError("non-tensor operand", None, repr(r))
        return self.vals[r.name]

    def shp(self, r) -> tuple:
        """Shape of the traced value ``r``."""
        return self.shapes[r.name]

    def _set(self, node: OpNode, axes: list) -> None:
        self.vals[node.name] = axes
        self.shapes[node.name] = node.shape
        if len(axes) != len(node.shape or ()):
            raise ValueError(f"internal: rank mismatch at {node.name} ({node.op})")
        self.nx.add_node(f"op:{node.name}", kind="op", op=node.op, module=node.module)

    def _broadcast(self, node, a, b, p=0):
        sa, sb = self.shp(a), self.shp(b)
        xa, xb = self.ax(a), self.ax(b)
        n = len(node.shape)
        out = []
        for k in range(n):
            ia, ib = k - (n - len(sa)), k - (n - len(sb))
            fa = xa[ia] if ia >= 0 else None
            fb = xb[ib] if ib >= 0 else None
            za = sa[ia] if ia >= 0 else 1
            zb = sb[ib] if ib >= 0 else 1
            if za > 1 and zb > 1:
                self.unify(fa, fb, p, f"{node.name}({node.op})")
                out.append(fa)
            elif za > 1:
                out.append(fa)
            elif zb > 1:
                out.append(fb)
            else:
                out.append([])
        return out

    _PASS = ("add", "sub", "identity", "reshape", "transpose", "permute", "expand", "neg",
             "nontensor", "param", "input", "constant", "getitem", "slice", "select")

    def _mark_consumers(self, node: OpNode) -> None:
        """Remember which kind of op reads each axis (for the mean-centering rule)."""
        if node.op in self._PASS or (node.op in ("mul", "div") and not all(
                isinstance(x, Ref) for x in node.args[:2])):
            return
        tag = "layer_norm" if node.op == "layer_norm" else node.op
        for r in node.args:
            if isinstance(r, Ref) and r.name in self.vals and r.name not in self.param_of:
                for k, axis in enumerate(self.vals[r.name]):
                    last = k == len(self.vals[r.name]) - 1
                    for i in axis:
                        self.consumers.append((i, tag if (tag != "layer_norm" or last)
                                               else "layer_norm_batch"))

    def _visit(self, node: OpNode) -> None:  # noqa: C901 - one rule per op
        op, a, why = node.op, node.args, f"{node.name}({node.op})"
        self._mark_consumers(node)
        if op == "nontensor":
            return
        if op == "input":
            self._set(node, [self.new_axis(s, fixed=True) for s in node.shape])
            return
        if op == "constant":
            self._set(node, [self.new_axis(s, fixed=True) for s in node.shape])
            return
        if op == "param":
            axes = [self.new_axis(s) for s in node.shape]
            self._set(node, axes)
            pname = node.meta["param"]
            self.param_of[node.name] = pname
            if pname in getattr(self.tg, "unused", ()):
                self.nulls.append({"param": pname, "index": (),
                                   "dim": math.prod(node.shape),
                                   "reason": "parameter never read on the way to the output"})
                return
            self.pieces.append(ParamPiece(pname, (), tuple(node.shape), axes))
            self.nx.add_node(f"param:{pname}", kind="param", shape=tuple(node.shape))
            return
        if op in _ACT_FEATURES:
            x = self.ax(a[0])
            self.restrict([i for axis in x for i in axis], _ACT_FEATURES[op], why)
            self._set(node, list(x))
            if op == "identity":
                self._propagate_meta(node, a[0])
            return
        if op in ("add", "sub", "mul", "div"):
            self._binary(node)
            return
        if op == "linear":
            x, w, bias = a
            xa, wa = self.ax(x), self.ax(w)
            self.unify(xa[-1], wa[1], 1, why)
            if bias is not None:
                self.unify(self.ax(bias)[0], wa[0], 0, why)
                self.bias_of[node.name] = bias.name
                src, origin, via = self.trade_src.get(x.name), None, None
                if src is not None:
                    origin = self._origin(x.name, self.trade_src)
                    via = self.trade_via.get(origin)
                elif x.name in self.bias_of and self.bias_of[x.name] in \
                        self.param_of and self.shp(Ref(self.bias_of[x.name])) == (
                            self.shp(w)[1],):
                    src = (self.param_of[self.bias_of[x.name]], ())
                    origin = self._origin(x.name, self.bias_of)
                if src is not None and w.name in self.param_of and bias.name in self.param_of \
                        and src[0] != self.param_of[bias.name]:
                    checks = []
                    if via is not None:  # the value bias must reach only this attention
                        checks.append((self._origin(via, self.bias_of), origin))
                    self._trade_candidate(src, origin, node.name,
                                          (self.param_of[w.name], ()),
                                          self.param_of[bias.name], why, checks)
            self._ln_consumer(x, w, bias, ())
            self._set(node, list(xa[:-1]) + [wa[0]])
            return
        if op == "matmul":
            x, y = a
            sx, sy = self.shp(x), self.shp(y)
            if len(sx) < 2 or len(sy) < 2:
                raise UnsupportedOpError("matmul with a 1-D operand", node.module)
            xa, ya = self.ax(x), self.ax(y)
            self.unify(xa[-1], ya[-2], 1, why)
            nb = len(node.shape) - 2
            out = []
            for k in range(nb):
                ia, ib = k - (nb - (len(sx) - 2)), k - (nb - (len(sy) - 2))
                za = sx[ia] if ia >= 0 else 1
                zb = sy[ib] if ib >= 0 else 1
                if za > 1 and zb > 1:
                    self.unify(xa[ia], ya[ib], 0, why)
                out.append(xa[ia] if za > 1 else (ya[ib] if zb > 1 else []))
            self._set(node, out + [xa[-2], ya[-1]])
            self.scores_key[node.name] = y.name
            return
        if op == "conv":
            x, w, bias = a
            if node.kwargs.get("groups", 1) != 1:
                raise UnsupportedOpError("grouped convolution", node.module)
            xa, wa = self.ax(x), self.ax(w)
            self.unify(xa[1], wa[1], 1, why)
            for k in range(2, len(wa)):
                self.fix(wa[k], f"{why}: kernel position")
            if bias is not None:
                self.unify(self.ax(bias)[0], wa[0], 0, why)
                self.bias_of[node.name] = bias.name
            out = [xa[0], wa[0]] + [self.new_axis(s, True) for s in node.shape[2:]]
            self._set(node, out)
            return
        if op == "embedding":
            w, idx = a
            wa = self.ax(w)
            self.fix(wa[0], f"{why}: vocabulary index")
            self._set(node, list(self.ax(idx)) + [wa[1]])
            return
        if op in ("layer_norm", "rms_norm", "batch_norm"):
            self._norm(node)
            return
        if op == "softmax":
            x = self.ax(a[0])
            dim = node.kwargs["dim"] % len(node.shape)
            self.restrict([i for axis in x for i in axis], PERM, why)
            self._set(node, list(x))
            key = self._trace_scores(a[0].name)
            if key is not None and dim == len(node.shape) - 1:
                self._null_bias(key, why)
            return
        if op == "sdpa":
            self._sdpa(node)
            return
        if op == "mha":
            self._mha(node)
            return
        if op == "max_pool":
            x = self.ax(a[0])
            self.restrict(x[1], RELU, why)
            self._set(node, [x[0], x[1]] + [self.new_axis(s, True) for s in node.shape[2:]])
            return
        if op == "avg_pool":
            x = self.ax(a[0])
            self._set(node, [x[0], x[1]] + [self.new_axis(s, True) for s in node.shape[2:]])
            return
        if op == "reduce":
            x = self.ax(a[0])
            n = len(x)
            dims = node.kwargs["dim"]
            dims = list(range(n)) if dims is None else ([dims] if isinstance(dims, int) else dims)
            dims = {d % n for d in dims}
            for d in dims:
                self.restrict(x[d], PERM, f"{why}: sum/mean over the axis")
            out = [([] if node.kwargs["keepdim"] else None) if d in dims else x[d]
                   for d in range(n)]
            self._set(node, [o for o in out if o is not None])
            return
        if op == "reshape":
            self._reshape(node)
            return
        if op == "expand":
            x, sx = self.ax(a[0]), self.shp(a[0])
            n = len(node.shape)
            out = []
            for k in range(n):
                ia = k - (n - len(sx))
                if ia >= 0 and sx[ia] == node.shape[k]:
                    out.append(x[ia])
                else:
                    out.append(self.new_axis(node.shape[k], True))
            self._set(node, out)
            return
        if op in ("transpose", "permute"):
            x = self.ax(a[0])
            n = len(x)
            if op == "transpose":
                d0, d1 = (d % n for d in node.kwargs["dims"])
                perm = list(range(n))
                perm[d0], perm[d1] = perm[d1], perm[d0]
            else:
                perm = [d % n for d in node.kwargs["dims"]]
            self._set(node, [x[p] for p in perm])
            self._propagate_meta(node, a[0])
            return
        if op in ("getitem", "slice", "select"):
            self._index(node)
            return
        if op == "cat":
            self._cat(node)
            return
        raise UnsupportedOpError(node.target or op, node.module)

    def _propagate_meta(self, node: OpNode, src: Ref) -> None:
        if src.name in self.ln_out and node.op in ("identity", "transpose", "permute"):
            n = len(node.shape)
            dims = [d % n for d in node.kwargs.get("dims", ())]
            last_kept = (node.op == "identity" or (node.op == "transpose" and n - 1 not in dims)
                         or (node.op == "permute" and dims and dims[-1] == n - 1))
            if last_kept:  # the normalized axis is still the last one
                self.ln_out[node.name] = self.ln_out[src.name]
        if node.op in ("transpose", "permute"):
            n = len(node.shape)
            dims = [d % n for d in node.kwargs.get("dims", ())]
            if (node.op == "transpose" and n - 1 in dims) or (
                    node.op == "permute" and dims and dims[-1] != n - 1):
                return  # the feature (last) axis moved: bias bookkeeping no longer applies
        if src.name in self.trade_src:
            self.trade_src[node.name] = self.trade_src[src.name]
        if src.name in self.bias_of:
            self.bias_of[node.name] = self.bias_of[src.name]
        if src.name in self.scores_key:
            self.scores_key[node.name] = self.scores_key[src.name]

    def _trace_scores(self, name: str) -> str | None:
        return self.scores_key.get(name)

    def _null_bias(self, key_value: str, why: str) -> None:
        """A bias added to the keys only shifts each query's scores by a constant."""
        b = self.bias_of.get(key_value)
        if b is None or b not in self.param_of:
            return
        pname = self.param_of[b]
        if any(n["param"] == pname for n in self.nulls):
            return
        shape = self.param_shapes[pname]
        self.nulls.append({"param": pname, "index": (), "dim": math.prod(shape),
                           "reason": f"key bias before a softmax over keys ({why})"})

    def _ln_consumer(self, x: Ref, w: Ref, bias: Ref | None, index: tuple,
                     rows: int | None = None) -> None:
        """A LayerNorm output n is orthogonal to 1: each row of the next weight may move
        along ``1/gamma`` (with ``b -= (beta/gamma).1`` per row) without changing anything."""
        if x.name not in self.ln_out or w.name not in self.param_of:
            return
        g, be = self.ln_out[x.name]
        if be is not None and (bias is None or bias.name not in self.param_of):
            return
        wname = self.param_of[w.name]
        if any(p.name == wname for p in self.pieces if p.index == () and
               self._tied(wname)):
            return
        n = rows if rows is not None else self.param_shapes[wname][0]
        self.ln_nulls.append({"weight": wname, "index": index, "rows": n, "gamma": g,
                              "beta": be, "bias": self.param_of[bias.name] if
                              (bias is not None and be is not None) else None,
                              "reason": f"rows of {wname} along 1/gamma: the LayerNorm output "
                                        "has zero mean"})

    def _tied(self, pname: str) -> bool:
        """A parameter read by more than one operation (weight tying)."""
        uses = 0
        for n in self.tg.nodes:
            for r in n.args:
                if isinstance(r, Ref) and self.param_of.get(r.name) == pname:
                    uses += 1
        return uses > 1

    def _trade(self, src: tuple, weight: tuple | None, dst: str, why: str,
               consumers: list | None = None) -> None:
        """A bias ``b`` whose shifted output ``u`` is read only by linear maps (or a sum)
        ``y_j = W_j (. + u) + c_j``: ``(b + u, c_j - W_j u for every j)`` leaves the output
        invariant (attention rows sum to 1, so a value bias reaches the output projection
        unchanged). ``consumers``: every ``(weight or None, bias)`` that must compensate."""
        if any(t["src"] == src for t in self.trades):
            return
        size = math.prod(self.param_shapes[src[0]]) if not src[1] else \
            src[1][0].stop - src[1][0].start
        consumers = consumers if consumers is not None else [(weight, dst)]
        self.trades.append({"src": src, "weight": consumers[0][0], "dst": consumers[0][1],
                            "consumers": consumers, "dim": size,
                            "reason": f"a bias and the bias(es) of its reader(s) exchange a "
                                      f"shift ({why})"})

    _VIEW_OPS = ("identity", "transpose", "permute", "reshape")

    def _origin(self, name: str, table: dict) -> str:
        """The value where the entry ``table[name]`` (a bias, a value bias) was attached:
        walk back through the ops that only propagated it."""
        entry = table.get(name)
        for _ in range(10_000):
            node = self.producer.get(name)
            if node is None or node.op in ("linear", "conv", "sdpa", "mha", "layer_norm",
                                           "rms_norm", "batch_norm", "add", "sub"):
                return name
            src = next((r for r in node.args if isinstance(r, Ref)), None)
            if src is None or table.get(src.name) != entry:
                return name
            name = src.name
        return name

    def _readers(self, name: str) -> list[tuple[str | None, str]]:
        """Every (op node, value) that reads ``name``, looking through view ops;
        ``(None, name)`` when the value is a model output."""
        if not hasattr(self, "_reader_map"):
            rm: dict[str, list] = {}
            for n in self.tg.nodes:
                for r in {r.name for r in n.args if isinstance(r, Ref)}:
                    rm.setdefault(r, []).append(n)
            self._reader_map = rm
        out, stack, seen = [], [name], set()
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in self.tg.outputs:
                out.append((None, v))
            for n in self._reader_map.get(v, []):
                if n.op in self._VIEW_OPS:
                    stack.append(n.name)
                else:
                    out.append((n.name, v))
        return out

    def _trade_candidate(self, src: tuple, origin: str, reader: str, weight: tuple | None,
                         dst: str, why: str, checks: list | None = None) -> None:
        """Record a possible trade; kept by :meth:`_resolve_trades` only if every reader of
        ``origin`` is a compensating candidate (a bias read by q, k and v must be
        compensated in all three) and every ``(value, node)`` in ``checks`` is read only by
        ``node``."""
        self.trade_cands.append({"src": src, "origin": origin, "reader": reader,
                                 "weight": weight, "dst": dst, "why": why,
                                 "checks": list(checks or [])})

    def _resolve_trades(self) -> None:
        groups: dict[tuple, list] = {}
        for c in self.trade_cands:
            groups.setdefault((c["src"], c["origin"]), []).append(c)
        for (src, origin), cands in groups.items():
            by_reader = {c["reader"]: c for c in cands}
            readers = self._readers(origin)
            ok = bool(readers) and all(r in by_reader for r, _v in readers)
            for c in cands:
                for value, node in c["checks"]:
                    ok = ok and all(r == node for r, _v in self._readers(value))
            dsts = [c["dst"] for c in by_reader.values()]
            ok = ok and len(set(dsts)) == len(dsts) and src[0] not in dsts
            if not ok:
                self.notes.append(f"no bias trade for {src[0]}: its output is also read by an "
                                  "operation that cannot compensate the shift")
                continue
            cons = [(c["weight"], c["dst"]) for c in by_reader.values()]
            self._trade(src, cons[0][0], cons[0][1], ", ".join(c["why"] for c in
                                                                  by_reader.values()), cons)

    def _binary(self, node: OpNode) -> None:
        op, (x, y), why = node.op, node.args, f"{node.name}({node.op})"
        xt, yt = isinstance(x, Ref), isinstance(y, Ref)
        if xt and yt:
            xp, yp = x.name in self.param_of, y.name in self.param_of
            if op in ("add", "sub"):
                out = self._broadcast(node, x, y)
                bx, by = self.bias_of.get(x.name), self.bias_of.get(y.name)
                if (op == "add" and not xp and not yp and bx and by and bx != by
                        and bx in self.param_of and by in self.param_of
                        and self.shp(Ref(bx)) == self.shp(Ref(by))
                        and len(self.shp(Ref(bx))) == 1):
                    self._trade_candidate((self.param_of[by], ()),
                                          self._origin(y.name, self.bias_of), node.name, None,
                                          self.param_of[bx], why,
                                          [(self._origin(x.name, self.bias_of), node.name)])
                if yp and len(self.shp(y)) >= 1:
                    self.bias_of[node.name] = y.name
                elif xp:
                    self.bias_of[node.name] = x.name
                if x.name in self.scores_key and not yp:
                    self.scores_key[node.name] = self.scores_key[x.name]
                self._set(node, out)
                return
            if op == "mul" and (xp or yp) and not (xp and yp):
                self._diag(node, y if xp else x, x if xp else y)
                return
            out = self._broadcast(node, x, y)
            self.restrict([i for axis in out for i in axis], PERM, f"{why}: elementwise product")
            self._set(node, out)
            return
        t = x if xt else y
        if not isinstance(t, Ref):
            raise UnsupportedOpError(node.target or op, node.module, "no tensor operand")
        other = y if xt else x
        axes = list(self.ax(t))
        if op in ("add", "sub") and other != 0:
            self.restrict([i for axis in axes for i in axis], PERM, f"{why}: adds a constant")
        if op == "div" and not xt:
            self.restrict([i for axis in axes for i in axis], PERM, f"{why}: reciprocal")
        self._set(node, axes)
        if op in ("mul", "div"):
            self._propagate_meta(node, t)

    def _diag(self, node: OpNode, x: Ref, p: Ref) -> None:
        """Elementwise product with a parameter: a diagonal linear map (new space)."""
        why = f"{node.name}(per-channel scale)"
        sx, sp = self.shp(x), self.shp(p)
        xa, pa = self.ax(x), self.ax(p)
        n = len(node.shape)
        out = []
        for k in range(n):
            ix, ip = k - (n - len(sx)), k - (n - len(sp))
            zx = sx[ix] if ix >= 0 else 1
            zp = sp[ip] if ip >= 0 else 1
            if zp > 1 and zx > 1:
                y = self.new_axis(zx)
                self.link(xa[ix], y, why)
                self.restrict(xa[ix], MONOMIAL, why)
                self.restrict(y, MONOMIAL, why)
                self.unify(pa[ip], y, 0, why)
                out.append(y)
            elif zx > 1:
                out.append(xa[ix])
            elif zp > 1:
                out.append(pa[ip])
            else:
                out.append([])
        self._set(node, out)

    def _norm(self, node: OpNode) -> None:
        op, why = node.op, f"{node.name}({node.op})"
        x, w, b = node.args
        xa = list(self.ax(x))
        if op == "batch_norm":
            ch = 1 if len(xa) > 1 else 0
            if node.kwargs.get("training", True):
                self.restrict(xa[ch], RELU, why)
                for i in xa[ch]:
                    self.segs[self.find(i)[0]].absorbed.add(why)
                prod_bias = self.bias_of.get(x.name)
                if prod_bias is not None and prod_bias in self.param_of:
                    pname = self.param_of[prod_bias]
                    self.nulls.append({"param": pname, "index": (),
                                       "dim": math.prod(self.param_shapes[pname]),
                                       "reason": f"bias feeding BatchNorm ({why}) is removed by "
                                                 "the batch mean"})
                self.notes.append(f"{why}: scale symmetry exact in train mode with eps = 0 "
                                  "(approximate: eps)")
            else:
                self.fix(xa[ch], f"{why}: BatchNorm in eval mode (running statistics are "
                                 "buffers)")
            dims = [ch]
        else:
            ns = node.kwargs["normalized_shape"]
            if len(ns) != 1:
                for axis in xa[-len(ns):]:
                    self.fix(axis, f"{why}: normalization over several axes")
                dims = list(range(len(xa) - len(ns), len(xa)))
            else:
                dims = [len(xa) - 1]
                self.restrict(xa[-1], frozenset({"homog"}), why)
                for i in xa[-1]:
                    self.segs[self.find(i)[0]].absorbed.add(why)
                self.notes.append(f"{why}: scale symmetry exact only with eps = 0 "
                                  "(approximate: eps)")
        for k, axis in enumerate(xa):
            if k not in dims:
                self.restrict(axis, PERM, f"{why}: batched normalization")
        out = list(xa)
        for d in dims:
            size = node.shape[d]
            nrm = self.new_axis(size)
            self.link(xa[d], nrm, why)
            self.restrict(nrm, PERM, f"{why}: normalized output")
            y = nrm
            if w is not None and len(dims) == 1:
                y = self.new_axis(size)
                self.link(nrm, y, why)
                self.restrict(y, MONOMIAL, f"{why}: per-channel affine")
                self.unify(self.ax(w)[0], y, 0, why)
            elif w is not None:
                self.fix(self.ax(w)[dims.index(d)], why)
            if b is not None and len(dims) == 1:
                self.unify(self.ax(b)[0], y, 0, why)
                self.bias_of[node.name] = b.name
            elif b is not None:
                self.fix(self.ax(b)[dims.index(d)], why)
            out[d] = y
        self._set(node, out)
        if op == "layer_norm" and len(dims) == 1:
            self.ln_out[node.name] = (self.param_of.get(w.name) if w is not None else None,
                                      self.param_of.get(b.name) if b is not None else None)

    def _attention_core(self, why, qa, ka, va, out_rank):
        """q (..., L, E), k (..., S, E), v (..., S, Ev) -> (..., L, Ev)."""
        self.unify(qa[-1], ka[-1], 1, f"{why}: query-key contraction")
        nb = len(qa) - 2
        for k in range(nb):
            self.unify(qa[k], ka[k], 0, why)
            self.unify(qa[k], va[k], 0, why)
            self.restrict(qa[k], PERM, f"{why}: batched attention (heads)")
        self.unify(ka[-2], va[-2], 0, why)
        self.restrict(ka[-2], PERM, why)
        self.restrict(qa[-2], PERM, why)
        return list(qa[:-1]) + [va[-1]]

    def _sdpa(self, node: OpNode) -> None:
        q, k, v, mask = node.args
        why = f"{node.name}(attention)"
        out = self._attention_core(why, self.ax(q), self.ax(k), self.ax(v), len(node.shape))
        self._set(node, out)
        self._null_bias(k.name, why)
        vb = self.bias_of.get(v.name)
        if vb is not None and vb in self.param_of:
            self.trade_src[node.name] = (self.param_of[vb], ())
            self.trade_via[node.name] = v.name

    def _mha(self, node: OpNode) -> None:
        q, k, v, inw, inb, outw, outb = node.args[:7]
        why = f"{node.name}(MultiheadAttention)"
        h = node.kwargs["num_heads"]
        E = self.shapes[inw.name][1]
        dh = E // h
        bf = node.kwargs["batch_first"]
        if len(self.shp(q)) != 3:
            raise UnsupportedOpError("MultiheadAttention on unbatched input", node.module)
        pname = self.param_of[inw.name]
        # the packed in-projection is used as three slices: one parameter piece each
        slices = []
        for j in range(3):
            rows = slice(j * E, (j + 1) * E)
            axes = [[self.new_seg(E)], [self.new_seg(E)]]
            self.pieces.append(ParamPiece(pname, (rows,), (E, E), axes))
            bax = None
            if inb is not None:
                bax = [[self.new_seg(E)]]
                self.unify(bax[0], axes[0], 0, why)
                self.pieces.append(ParamPiece(self.param_of[inb.name], (rows,), (E,), bax))
            slices.append((axes, bax))
        # drop the whole-parameter pieces created for in_proj (used only through slices)
        whole = {self.param_of[inw.name]} | ({self.param_of[inb.name]} if inb else set())
        self.pieces = [pc for pc in self.pieces if not (pc.name in whole and pc.index == ())]
        xs = [self.ax(t) for t in (q, k, v)]
        proj = []
        for (axes, _bax), xa in zip(slices, xs):
            self.unify(xa[-1], axes[1], 1, why)
            h_ax, d_ax = self.new_seg(h), self.new_seg(dh)
            self.segs[d_ax].copies_of = h_ax
            self.unify(axes[0], [h_ax, d_ax], 0, why)
            proj.append((list(xa[:-1]), [h_ax], [d_ax]))
        (qb, qh, qd), (kb, kh, kd), (vb, vh, vd) = proj
        # (batch, seq) order
        if bf:
            qB, qL, kS = qb[0], qb[1], kb[1]
        else:
            qL, qB, kS = qb[0], qb[1], kb[0]
        kB = kb[0] if bf else kb[1]
        vB, vS = (vb[0], vb[1]) if bf else (vb[1], vb[0])
        out = self._attention_core(why, [qB, qh, qL, qd], [kB, kh, kS, kd],
                                   [vB, vh, vS, vd], 4)
        _, oh, oL, od = out
        oa = self.ax(outw)
        self.unify(oa[1], oh + od, 1, why)
        if outb is not None:
            self.unify(self.ax(outb)[0], oa[0], 0, why)
        res = [qB, qL, oa[0]] if bf else [qL, qB, oa[0]]
        if len(node.shape) == 2:  # unbatched input
            res = [qb[0], oa[0]]
        self._set(node, res)
        if q is k is v or (q.name == k.name == v.name):
            self._ln_consumer(q, inw, inb, (), rows=3 * E)
            bq = self.bias_of.get(q.name)
            if inb is not None and bq in self.param_of and len(self.shp(Ref(bq))) == 1:
                self._trade_candidate((self.param_of[bq], ()),
                                      self._origin(q.name, self.bias_of), node.name,
                                      (self.param_of[inw.name], ()), self.param_of[inb.name],
                                      why)
        if inb is not None and outb is not None:
            self._trade((self.param_of[inb.name], (slice(2 * E, 3 * E),)),
                        (self.param_of[outw.name], ()), self.param_of[outb.name], why)
        if inb is not None:
            self.nulls.append({"param": self.param_of[inb.name], "index": (slice(E, 2 * E),),
                               "dim": E, "reason": f"key bias before a softmax over keys ({why})"})

    def _reshape(self, node: OpNode) -> None:
        x = node.args[0]
        sin, sout = list(self.shp(x)), list(node.shape)
        xa = self.ax(x)
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
                lf = self.leaves(factors)
                seg, p = lf[pos]
                size = self.segs[seg].size
                need = s // prod
                if s % prod == 0 and need % size == 0:
                    take.append((seg, p))
                    prod *= size
                    pos += 1
                elif s % prod == 0 and size % need == 0:
                    self.split(seg, need)
                else:
                    for z, _ in self.leaves(factors):
                        self.fix_seg(z, f"{why}: reshape mixes axes")
                    self._set(node, [self.new_axis(z, True) for z in sout])
                    return
            out.append([seg if p == 0 else self._alias(seg) for seg, p in take])
        self._set(node, out)
        self._propagate_meta(node, x)

    def _alias(self, root: int) -> int:
        """A new id that resolves to ``root`` with parity 1."""
        s = Seg(len(self.segs), self.segs[root].size, root, par=1)
        self.segs.append(s)
        return s.id

    def _index(self, node: OpNode) -> None:
        x = node.args[0]
        xa, sx = self.ax(x), self.shp(x)
        why = f"{node.name}({node.op})"
        if node.op == "select":
            d = node.kwargs["dim"] % len(xa)
            self.fix(xa[d], f"{why}: indexing an axis")
            self._set(node, [a for k, a in enumerate(xa) if k != d])
            return
        if node.op == "slice":
            d = node.kwargs["dim"] % len(xa)
            out = list(xa)
            if node.shape[d] != sx[d]:
                self.fix(xa[d], f"{why}: slicing an axis")
                out[d] = self.new_axis(node.shape[d], True)
            self._set(node, out)
            return
        idx = node.kwargs["index"]
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, Ref) for i in idx):
            raise UnsupportedOpError("advanced (tensor) indexing", node.module)
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
                self.fix(xa[d], f"{why}: indexing an axis")
                d += 1
            elif isinstance(i, slice):
                if i == slice(None) or (i.start in (None, 0) and i.stop is not None
                                        and i.stop >= sx[d] and i.step in (None, 1)):
                    out.append(xa[d])
                else:
                    self.fix(xa[d], f"{why}: slicing an axis")
                    out.append(None)
                d += 1
            else:
                raise UnsupportedOpError("indexing", node.module, repr(i))
        out.extend(xa[d:])
        res = []
        for k, o in enumerate(out):
            res.append(self.new_axis(node.shape[k], True) if o is None else o)
        self._set(node, res)

    def _cat(self, node: OpNode) -> None:
        ts = [t for t in node.args if isinstance(t, Ref)]
        n = len(node.shape)
        d = node.kwargs["dim"] % n
        why = f"{node.name}(cat)"
        first = self.ax(ts[0])
        for t in ts[1:]:
            for k in range(n):
                if k != d:
                    self.unify(first[k], self.ax(t)[k], 0, why)
        free = False
        for t in ts:
            for i in self.ax(t)[d]:
                if not self.segs[self.find(i)[0]].fixed:
                    free = True
            self.fix(self.ax(t)[d], f"{why}: concatenation axis (conservative)")
        if free:
            self.notes.append(f"{why}: concatenation along a feature axis is treated as fixed "
                              "(symmetries of those channels are not analysed)")
        out = list(first)
        out[d] = self.new_axis(node.shape[d], True)
        self._set(node, out)

    def _final_output_translation(self) -> None:
        """Softmax translation of the logits: a loss-level symmetry of the last linear layer."""
        if len(self.tg.outputs) != 1:
            return
        name = self.tg.outputs[0]
        node = self.producer.get(name)
        while node is not None and node.op in ("identity", "reshape") and node.args:
            node = self.producer.get(node.args[0].name)
        if node is None:
            return
        bias = None
        if node.op == "add" and isinstance(node.args[1], Ref) and node.args[1].name in \
                self.param_of:
            bias = node.args[1]
            node = self.producer.get(node.args[0].name)
        if node is None or node.op != "linear":
            return
        x, w, b = node.args
        b = b or bias
        if w.name not in self.param_of:
            return
        wname = self.param_of[w.name]
        uses = sum(1 for pc in self.pieces if pc.name == wname)
        tied = uses > 1 or any(
            n.op == "embedding" and n.args[0].name == w.name for n in self.tg.nodes)
        if tied:
            self.notes.append("softmax translation not reported: the output weight is tied")
            return
        shape = self.param_shapes[wname]
        self.output_linear = {"weight": wname, "bias": self.param_of.get(b.name) if b else None,
                              "in_features": shape[1]}

    # ---------------------------------------------------------------- results
    def finalize(self) -> dict:
        """Resolve coupled groups: returns the data used by the classification."""
        # per-piece resolved axes
        piece_axes = []
        for k, pc in enumerate(self.pieces):
            dims = []
            for d, axis in enumerate(pc.axes):
                lf = self.leaves(axis)
                dims.append(lf)
                for pos, (leaf, _p) in enumerate(lf):
                    self.nx.add_edge(f"param:{pc.name}", f"axis:{leaf}", key=f"{k}:{d}:{pos}",
                                     coupling="param")
            piece_axes.append(dims)
        # copies parents present in each piece; otherwise the per-copy map must be shared
        for dims in piece_axes:
            present = {leaf for lf in dims for leaf, _ in lf}
            for lf in dims:
                for leaf, _ in lf:
                    c = self.segs[leaf].copies_of
                    if c is not None:
                        cr = self.leaves([c])
                        if not all(x in present for x, _ in cr):
                            self.segs[leaf].shared = True
        # perm links
        parent: dict[int, int] = {}

        def pf(i):
            parent.setdefault(i, i)
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for fa, fb, why in self.links:
            la, lb = self.leaves(fa), self.leaves(fb)
            if [self.segs[x].size for x, _ in la] != [self.segs[x].size for x, _ in lb]:
                for z, _ in la + lb:
                    self.fix_seg(z, f"{why}: incompatible permutation link")
                continue
            for (x, _), (y, _) in zip(la, lb):
                parent[pf(x)] = pf(y)
                self.nx.add_edge(f"axis:{x}", f"axis:{y}", key=why, coupling="perm", op=why)
        groups: dict[int, list] = {}
        leaves_used = {leaf for dims in piece_axes for lf in dims for leaf, _ in lf}
        for leaf in set(parent) | leaves_used:
            groups.setdefault(pf(leaf), []).append(leaf)
        for members in groups.values():
            if len(members) > 1:
                for m in members:
                    self.segs[m].feat = self.segs[m].feat & MONOMIAL
        for leaf in leaves_used:
            s = self.segs[leaf]
            self.nx.add_node(f"axis:{leaf}", kind="axis", size=s.size, fixed=s.fixed,
                             features=tuple(sorted(s.feat)))
        # mean-centering: a space read only by LayerNorms (over that axis) ignores shifts
        # along 1; every parameter that writes into it may move along 1
        cons: dict[int, set] = {}
        for i, tag in self.consumers:
            for leaf, par in self.leaves([i]):
                cons.setdefault(leaf, set()).add((tag, par))
        self.centered = []
        for leaf in sorted(leaves_used):
            tags = cons.get(leaf, set())
            axes = list(self._leaf_axes(piece_axes, leaf))
            for side in (0, 1):  # the two dual sides of a class (tied parameters)
                side_tags = {t for t, par in tags if par == side}
                if not side_tags or side_tags != {"layer_norm"}:
                    continue
                other = {self.pieces[k].name for k, _d, _pos, par in axes if par != side}
                prods = []
                for k, d, pos, par in axes:
                    pc = self.pieces[k]
                    if par != side or pc.name in other or self._tied(pc.name):
                        continue
                    if sum(1 for lf in piece_axes[k] for x, _ in lf if x == leaf) != 1:
                        continue
                    prods.append((k, d, pos))
                if prods:
                    self.centered.append({"leaf": leaf, "producers": prods})
        self.ln_rotations = self._find_ln_rotations(cons)
        self.ln_shifts = self._find_ln_shifts()
        return {"pieces": self.pieces, "piece_axes": piece_axes,
                "perm_groups": [sorted(m) for m in groups.values()], "segs": self.segs}

    def _ln_readers(self, ln: OpNode) -> list | None:
        """(weight, bias) of every linear reading a LayerNorm output, or None when another
        operation (or a tied / bias-less weight that cannot compensate beta) reads it."""
        beta = ln.args[2] is not None
        out = []
        for r, v in self._readers(ln.name):
            n = self.producer.get(r) if r is not None else None
            if n is None or n.op != "linear" or not isinstance(n.args[0], Ref) or \
                    n.args[0].name != v or n.args[1].name not in self.param_of:
                return None
            wname = self.param_of[n.args[1].name]
            b = n.args[2]
            bname = self.param_of.get(b.name) if b is not None else None
            if self._tied(wname) or (beta and (bname is None or self._tied(bname))):
                return None
            out.append((wname, bname))
        return out or None

    def _find_ln_rotations(self, cons: dict) -> list[dict]:
        """Tied residual stream read only by LayerNorms and linear maps: LN(M x) = M LN(x)
        for M orthogonal with M 1 = 1 (mean and norm kept), so the tied O(n) broken by the
        LayerNorms survives as O(n-1) on the complement of 1; each linear reader of a
        LayerNorm output compensates ``W' = W diag(g) M^T diag(1/g)``,
        ``b' = b + (W - W') beta``."""
        found: dict[int, dict] = {}
        lns = [n for n in self.tg.nodes if n.op == "layer_norm"
               and len(n.kwargs.get("normalized_shape", ())) == 1]
        centered = {c["leaf"] for c in self.centered}
        bad: set[int] = set()
        for ln in lns:
            lf = self.leaves(self.vals[ln.args[0].name][-1])
            if len(lf) != 1:
                continue
            leaf = lf[0][0]
            s = self.segs[leaf]
            ok = (not s.fixed and s.size >= 3 and s.copies_of is None and not s.children
                  and leaf not in centered
                  and {t for t, _p in cons.get(leaf, set())} <= {"layer_norm", "linear"}
                  and any("tied (dual) use" in why for why, _f in s.reasons)
                  and all("tied (dual) use" in why or (why.endswith("(layer_norm)")
                                                      and tuple(f) == ("homog",))
                          for why, f in s.reasons))
            readers = self._ln_readers(ln) if ok else None
            if readers is None:
                bad.add(leaf)
                continue
            g = self.param_of.get(ln.args[1].name) if ln.args[1] is not None else None
            be = self.param_of.get(ln.args[2].name) if ln.args[2] is not None else None
            rec = found.setdefault(leaf, {"leaf": leaf, "size": s.size, "norms": []})
            rec["norms"].append({"gamma": g, "beta": be, "readers": readers})
        return [r for leaf, r in found.items() if leaf not in bad]

    def _find_ln_shifts(self) -> list[dict]:
        """``z1 = a + W1 h + b1`` read only by LayerNorms and by ``z2 = z1 + W2 k + b2``:
        (b1 + c 1, b2 - c 1) changes z1 along 1 only (invisible to the LayerNorms) and
        leaves z2 unchanged."""
        out = []
        centered = {c["leaf"] for c in self.centered}
        for z1 in self.tg.nodes:
            if z1.op != "add" or not all(isinstance(r, Ref) for r in z1.args[:2]):
                continue
            src = self._add_bias_operand(z1)
            if src is None or len(self.vals[z1.name]) == 0:
                continue
            lf = self.leaves(self.vals[z1.name][-1])
            if len(lf) != 1 or lf[0][0] in centered:
                continue
            cur, dst = z1.name, None
            for _ in range(len(self.tg.nodes)):  # follow the residual additions
                readers = self._readers(cur)
                adds = [r for r, _v in readers
                        if r is not None and self.producer[r].op == "add"]
                norms = [r for r, v in readers if r is not None and self.producer[r].op ==
                         "layer_norm" and self.producer[r].args[0].name == v and
                         len(self.producer[r].kwargs.get("normalized_shape", ())) == 1]
                if len(adds) != 1 or len(adds) + len(norms) != len(readers) or \
                        self.shapes[adds[0]] != self.shapes[cur]:
                    break
                dst = self._add_bias_operand(self.producer[adds[0]], exclude=cur)
                if dst is not None:
                    break
                cur = adds[0]
            if dst is None or dst == src:
                continue
            out.append({"src": src, "dst": dst, "size": self.segs[lf[0][0]].size,
                        "reason": f"{src} along 1 feeds only LayerNorms before {dst} "
                                  "removes it"})
        return out

    def _add_bias_operand(self, node: OpNode, exclude: str | None = None) -> str | None:
        """The bias (1-D parameter over the last axis) of the operand of an add that is
        a linear output read by nothing else."""
        for r in node.args[:2]:
            if not isinstance(r, Ref) or r.name == exclude:
                continue
            b = self.bias_of.get(r.name)
            if b is None or b not in self.param_of or len(self.shp(Ref(b))) != 1:
                continue
            origin = self._origin(r.name, self.bias_of)
            if self.producer[origin].op != "linear" or any(
                    x != node.name for x, _v in self._readers(origin)):
                continue
            if self._tied(self.param_of[b]):
                continue
            return self.param_of[b]
        return None


def _leaf_axes_impl(piece_axes, leaf):
    for k, dims in enumerate(piece_axes):
        for d, lf in enumerate(dims):
            for pos, (x, par) in enumerate(lf):
                if x == leaf:
                    yield k, d, pos, par


SymmetryAnalysis._leaf_axes = staticmethod(_leaf_axes_impl)


def analyse_graph(graph: TracedGraph, param_shapes: dict[str, tuple]) -> SymmetryAnalysis:
    """Build the coupled groups of a traced graph: one :class:`SymmetryAnalysis` pass over its ops.
    """
    return SymmetryAnalysis(graph, param_shapes)


def symmetry_graph(model, example_inputs, *, tracer: str = "auto") -> nx.MultiDiGraph:
    """The networkx symmetry graph of ``model`` (see :func:`find_symmetries`)."""
    from .symmetries import find_symmetries

    return find_symmetries(model, example_inputs, verify=False, tracer=tracer).graph
