"""Symmetry graph: which index spaces (axes) of a model must be transformed together.

One pass over the traced graph (:mod:`.tracing`): every operation is handled by its rule
(:mod:`.rules`), which couples axes in the union-find of :mod:`.unionfind` and restricts the
actions allowed on them:

===============================  ============================================
operation                        allowed on the axis it touches
===============================  ============================================
linear / conv / matmul / add     GL(n) (any invertible map)
ReLU, LeakyReLU, max-pool        positive diagonal x permutation
tanh                             sign flips x permutation
sigmoid, GELU, SiLU, softmax     permutations only
LayerNorm / RMSNorm input        positive scalar (scale), permutation
BatchNorm input (train mode)     positive diagonal (scale per channel)
per-channel affine, eval BN      starts a new space: signed diagonal x permutation
attention heads                  block structure: permutations of heads x per-head maps
model input / output, constants  identity (fixed)
operation without a rule         identity (barrier; listed in ``unhandled_ops``)
===============================  ============================================

Detectors then add the symmetries that are not a map per space: bias trades
(:mod:`.trades`) and the translations, nulls and rotations of LayerNorm streams
(:mod:`.normrot`). Convention: Ziyin, Xu & Chuang, arXiv 2505.12387, §2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx

from . import normrot, trades
from .graph_export import build_graph
from .rules import BARRIER, rule_for
from .rules.norms import find_batchnorm_gl, find_group_shifts
from .tracing import OpNode, Ref, TracedGraph
from .unionfind import ALL, MONOMIAL, ORTH, PERM, CoupledAxes, Seg, group_links

__all__ = ["SymmetryAnalysis", "ParamPiece", "analyse_graph", "ALL",
           "MONOMIAL", "ORTH", "PERM", "Seg"]

#: ops that only move values (bias and LayerNorm bookkeeping passes through them)
_PASS = ("add", "sub", "identity", "reshape", "transpose", "permute", "expand", "neg",
         "nontensor", "param", "input", "constant", "getitem", "slice", "select", "item")


@dataclass
class ParamPiece:
    """A parameter (or a slice of one) with the axes (factor lists) it has in the graph.

    ``dual``: a second view of a parameter that also carries the inverse map of the space it
    multiplies (``p`` in ``y = p * x``)."""

    name: str
    index: tuple  # tuple of slices ((), whole parameter)
    shape: tuple
    axes: list  # per dim: list of segment ids
    dual: bool = False


class SymmetryAnalysis(CoupledAxes):
    """The coupled groups of a traced graph (see module docstring)."""

    def __init__(self, graph: TracedGraph, param_shapes: dict[str, tuple]):
        super().__init__()
        self.tg = graph
        self.param_shapes = param_shapes
        self.vals: dict[str, list] = {}  # value name -> list of axes (list of seg ids)
        self.shapes: dict[str, tuple] = {}
        self.multi: dict[str, list] = {}  # multi-output op -> axes of each output
        self.pieces: list[ParamPiece] = []
        self.param_of: dict[str, str] = {}  # value name -> parameter name
        self.nulls: list[dict] = []
        self.notes: list[str] = list(graph.notes)
        self.unhandled: list[str] = []
        self.gaps: list[str] = []  # symmetries a conservative rule knowingly leaves out
        self.bias_of: dict[str, str] = {}  # value -> value name of the bias added last
        self.scores_key: dict[str, str] = {}  # value -> key value of attention scores
        self.producer: dict[str, OpNode] = {}
        self.op_nodes: list[tuple] = []
        self.output_linear: dict | None = None
        self.trade_src: dict[str, tuple] = {}  # value -> (param, index) of a value bias
        self.trades: list[dict] = []
        self.trade_cands: list[dict] = []
        self.trade_via: dict[str, str] = {}  # attention output -> its value operand
        self.consumers: list[tuple[int, str]] = []
        self.ln_out: dict[str, tuple] = {}  # value -> (ln weight, ln bias) of a LayerNorm
        self.ln_nulls: list[dict] = []
        self.reparams: list[dict] = []  # eval-mode BatchNorms: (gamma, beta) -> (A, B)
        self.diagonal: set[str] = set()  # parameters used as elementwise scales
        self.centered: list[dict] = []
        self.ln_rotations: list[dict] = []
        self.ln_shifts: list[dict] = []
        self.bn_links: list[dict] = []  # eval BatchNorms: the spaces before and after
        self.group_shifts: list[dict] = []  # biases shifted per group before a GroupNorm
        self.extra: list[dict] = []  # records of detectors beyond the maps (classify)
        self._reader_map: dict | None = None
        self._direct: dict[str, list] | None = None
        self.block_memo: dict[int, list] = {}  # split root -> clones per block (rules.blocks)
        self.bias_blocks: dict[str, list] = {}  # 1-D parameter -> (index, axis) per block
        self.slice_of: dict[str, tuple] = {}  # synthetic bias-block value -> its index
        self.multi_bias: dict[str, list] = {}  # multi-output op -> bias value per output
        self.nx = nx.MultiDiGraph()
        for node in graph.nodes:
            self.producer[node.name] = node
            self.visit(node)
        for o in graph.outputs:
            for ax in self.vals.get(o, []):
                self.fix(ax, "model output")
                for i in ax:
                    self.consumers.append((i, "output"))
        self._final_output_translation()
        trades.resolve_trades(self)
        for why in dict.fromkeys(self.inconsistent):
            self.unhandled.append(f"inconsistent axis factors at {why}")
        seen = set(self.param_of.values())
        for pname, shape in param_shapes.items():
            if pname not in seen:
                self.nulls.append({"param": pname, "index": (), "dim": math.prod(shape),
                                   "reason": "parameter never read on the way to the output"})

    # ---------------------------------------------------------------- the walk
    def visit(self, node: OpNode) -> None:
        """Apply the rule of ``node.op`` (the barrier when it has none)."""
        self._mark_consumers(node)
        rule = rule_for(node.op)
        if rule is None:
            self.barrier(node, node.target or node.op)
            return
        rule.apply(self, node)

    def barrier(self, node: OpNode, label: str) -> None:
        """Pin every axis around ``node`` and list ``label`` in ``unhandled_ops``, unless every
        operand axis was already fixed: the op then computes a constant of the symmetry
        analysis (masks, positions) and nothing is lost."""
        free = any(not self.segs[self.find(i)[0]].fixed
                   for r in self.tensor_args(node) for axis in self.ax(r)
                   for i, _p in self.leaves(axis))
        BARRIER.apply(self, node)
        if free and label not in self.unhandled:
            self.unhandled.append(label)

    # ---------------------------------------------------------------- rule API
    def ax(self, r) -> list:
        """Axes (segment lists) of the traced value ``r``."""
        return self.vals[r.name]

    def shp(self, r) -> tuple:
        """Shape of the traced value ``r``."""
        return self.shapes[r.name]

    def tensor_args(self, node: OpNode) -> list[Ref]:
        """The operands of ``node`` that are traced tensors (nested lists included)."""
        out: list[Ref] = []

        def walk(a):
            if isinstance(a, Ref):
                if a.name in self.vals:
                    out.append(a)
            elif isinstance(a, (list, tuple)):
                for b in a:
                    walk(b)
        walk(node.args)
        walk(list(node.kwargs.values()))
        return out

    def set_axes(self, node: OpNode, axes: list) -> None:
        """Record the axes of ``node``'s output."""
        shape = node.shape or ()
        if len(axes) != len(shape):
            self.inconsistent.append(f"{node.name}({node.op}): rank")
            axes = [self.new_axis(s, True) for s in shape]
        for k, (axis, size) in enumerate(zip(axes, shape)):
            if size > 1 and math.prod(self.segs[x].size for x, _ in self.leaves(axis)) != size:
                self.fix(axis, f"{node.name}({node.op}): inconsistent factors")
                self.inconsistent.append(f"{node.name}({node.op})")
                axes[k] = self.new_axis(size, True)
        self.vals[node.name] = axes
        self.shapes[node.name] = node.shape
        self.op_nodes.append((node.name, node.op, node.module))

    def set_multi(self, node: OpNode, outs: list) -> None:
        """Record the axes of every output of a multi-output op."""
        self.multi[node.name] = outs
        self.set_axes(node, outs[0])

    def set_outputs(self, node: OpNode, why: str) -> None:
        """Fixed fresh axes for every output of ``node``."""
        shapes = node.meta.get("shapes")
        if shapes:
            self.set_multi(node, [[self.new_axis(s, True) for s in sh] for sh in shapes])
        else:
            self.set_axes(node, [self.new_axis(s, True) for s in node.shape or ()])

    def broadcast(self, node: OpNode, a: Ref, b: Ref, p: int = 0) -> list:
        """Couple the broadcast axes of two operands; the output axes."""
        sa, sb = self.shp(a), self.shp(b)
        xa, xb = self.ax(a), self.ax(b)
        n = len(node.shape)
        out = []
        for k in range(n):
            ia, ib = k - (n - len(sa)), k - (n - len(sb))
            za = sa[ia] if ia >= 0 else 1
            zb = sb[ib] if ib >= 0 else 1
            if za > 1 and zb > 1:
                self.unify(xa[ia], xb[ib], p, f"{node.name}({node.op})")
                out.append(xa[ia])
            elif za > 1:
                out.append(xa[ia])
            elif zb > 1:
                out.append(xb[ib])
            else:
                out.append([])
        return out

    def broadcast_many(self, node: OpNode, refs: list[Ref]) -> list:
        """Couple the broadcast axes of several operands; the output axes (a new fixed axis
        where no operand spans the output)."""
        n = len(node.shape)
        out: list = [None] * n
        for r in refs:
            sr, xr = self.shp(r), self.ax(r)
            for k in range(n):
                i = k - (n - len(sr))
                if i < 0 or sr[i] == 1:
                    continue
                if sr[i] != node.shape[k]:
                    self.fix(xr[i], f"{node.name}({node.op}): shape mismatch")
                elif out[k] is None:
                    out[k] = xr[i]
                else:
                    self.unify(out[k], xr[i], 0, f"{node.name}({node.op})")
        return [o if o is not None else self.new_axis(node.shape[k], True)
                for k, o in enumerate(out)]

    def add_piece(self, pname: str, index: tuple, shape: tuple, axes: list,
                  dual: bool = False) -> None:
        """A parameter (slice) and the axes it has in the graph."""
        self.pieces.append(ParamPiece(pname, index, shape, axes, dual))

    def add_dual_piece(self, p: Ref, dual: list, why: str) -> None:
        """``p`` also carries the inverse map of the spaces in ``dual`` (``(dim of p, axis)``
        pairs); its other dimensions are pinned in this view."""
        if p.name not in self.param_of:
            return
        self.diagonal.add(self.param_of[p.name])
        if not dual:
            return
        shape = self.shp(p)
        which = dict(dual)
        axes = []
        for d, s in enumerate(shape):
            if d in which:
                a = self.new_axis(s)
                self.unify(a, which[d], 1, why)
            else:
                a = self.new_axis(s, True)
            axes.append(a)
        self.add_piece(self.param_of[p.name], (), tuple(shape), axes, dual=True)

    def absorb(self, axis: list, why: str) -> None:
        """A normalisation absorbs a scale of ``axis`` (exact only with eps = 0)."""
        for i in axis:
            self.segs[self.find(i)[0]].absorbed.add(why)

    def null_writer_bias(self, x: Ref, why: str) -> None:
        """The bias written into ``x`` is removed (batch mean of train-mode BatchNorm)."""
        b = self.bias_of.get(x.name)
        if b is not None and b in self.param_of:
            pname = self.param_of[b]
            self.nulls.append({"param": pname, "index": (),
                               "dim": math.prod(self.param_shapes[pname]),
                               "reason": f"bias feeding BatchNorm ({why}) is removed by the "
                                         "batch mean"})

    def null_bias(self, key_value: str, why: str) -> None:
        """A bias added to the keys only shifts each query's scores by a constant."""
        b = self.bias_of.get(key_value)
        if b is None or b not in self.param_of:
            return
        pname, index = self.param_of[b], self.slice_of.get(b, ())
        if any(n["param"] == pname and n["index"] == index for n in self.nulls):
            return
        self.nulls.append({"param": pname, "index": index,
                           "dim": math.prod(self.shapes.get(b, self.param_shapes[pname])),
                           "reason": f"key bias before a softmax over keys ({why})"})

    def propagate_meta(self, node: OpNode, src: Ref) -> None:
        """Carry bias / LayerNorm / attention bookkeeping through a view-like op."""
        last_kept = False
        if src.name in self.ln_out and node.op in ("identity", "transpose", "permute"):
            n = len(node.shape)
            dims = [d % n for d in node.kwargs.get("dims", ())]
            last_kept = (node.op == "identity" or (node.op == "transpose" and n - 1 not in dims)
                         or (node.op == "permute" and dims and dims[-1] == n - 1))
        if src.name in self.ln_out and node.op == "reshape":  # (B, T, d) -> (B T, d)
            last_kept = self.shapes[src.name][-1:] == tuple(node.shape[-1:])
        if last_kept:
            self.ln_out[node.name] = self.ln_out[src.name]
        if node.op in ("transpose", "permute"):
            n = len(node.shape)
            dims = [d % n for d in node.kwargs.get("dims", ())]
            if (node.op == "transpose" and n - 1 in dims) or (
                    node.op == "permute" and dims and dims[-1] != n - 1):
                return  # the feature (last) axis moved: bias bookkeeping no longer applies
        for table in (self.trade_src, self.bias_of, self.scores_key):
            if src.name in table:
                table[node.name] = table[src.name]

    def ln_consumer(self, x: Ref, w: Ref, bias: Ref | None, index: tuple,
                    rows: int | None = None, transposed: bool = False) -> None:
        """See :func:`.normrot.ln_consumer`."""
        normrot.ln_consumer(self, x, w, bias, index, rows, transposed)

    def linear_trade(self, node: OpNode, x: Ref, w: Ref, bias: Ref, why: str,
                     transposed: bool = False) -> None:
        """See :func:`.trades.linear_trade`."""
        trades.linear_trade(self, node, x, w, bias, why, transposed)

    def note_sum(self, node: OpNode, x: Ref, y: Ref, xp: bool, yp: bool) -> None:
        """See :func:`.trades.sum_trade`."""
        trades.sum_trade(self, node, x, y, xp, yp)

    def trade_candidate(self, *args, **kwargs) -> None:
        """See :func:`.trades.trade_candidate`."""
        trades.trade_candidate(self, *args, **kwargs)

    def trade(self, *args, **kwargs) -> None:
        """See :func:`.trades.record_trade`."""
        trades.record_trade(self, *args, **kwargs)

    def origin(self, name: str, table: dict) -> str:
        """See :func:`.trades.origin`."""
        return trades.origin(self, name, table)

    # ---------------------------------------------------------------- graph queries
    def tied(self, pname: str) -> bool:
        """A parameter read by more than one operation (weight tying)."""
        uses = 0
        for n in self.tg.nodes:
            for r in n.args:
                if isinstance(r, Ref) and self.param_of.get(r.name) == pname:
                    uses += 1
        return uses > 1

    def direct_readers(self, name: str) -> list[OpNode]:
        """Every op node that takes ``name`` as an operand (nested lists included)."""
        if self._direct is None:
            rm: dict[str, list] = {}

            def walk(a, n):
                if isinstance(a, Ref):
                    if n not in rm.setdefault(a.name, []):
                        rm[a.name].append(n)
                elif isinstance(a, (list, tuple)):
                    for b in a:
                        walk(b, n)
                elif isinstance(a, dict):
                    for b in a.values():
                        walk(b, n)

            for n in self.tg.nodes:
                walk(n.args, n)
                walk(n.kwargs, n)
            self._direct = rm
        return self._direct.get(name, [])

    def readers(self, name: str) -> list[tuple[str | None, str]]:
        """Every (op node, value) that reads ``name``, looking through view ops;
        ``(None, name)`` when the value is a model output."""
        if self._reader_map is None:
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
                if n.op in trades.VIEW_OPS:
                    stack.append(n.name)
                else:
                    out.append((n.name, v))
        return out

    @staticmethod
    def leaf_axes(piece_axes: list, leaf: int):
        """``(piece, dim, position, parity)`` of every parameter axis on ``leaf``."""
        for k, dims in enumerate(piece_axes):
            for d, lf in enumerate(dims):
                for pos, (x, par) in enumerate(lf):
                    if x == leaf:
                        yield k, d, pos, par

    def _mark_consumers(self, node: OpNode) -> None:
        """Remember which kind of op reads each axis (for the mean-centering rule)."""
        if node.op in _PASS or (node.op in ("mul", "div") and not all(
                isinstance(x, Ref) for x in node.args[:2])):
            return
        tag = node.op
        for r in node.args:
            if isinstance(r, Ref) and r.name in self.vals and r.name not in self.param_of:
                for k, axis in enumerate(self.vals[r.name]):
                    last = k == len(self.vals[r.name]) - 1
                    for i in axis:
                        self.consumers.append((i, tag if (tag != "layer_norm" or last)
                                               else "layer_norm_batch"))

    def _final_output_translation(self) -> None:
        """Softmax translation of the logits: a loss-level symmetry of the last linear layer."""
        if len(self.tg.outputs) != 1:
            return
        node = self.producer.get(self.tg.outputs[0])
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
        _x, w, b = node.args
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
        self.output_linear = {"weight": wname, "bias": self.param_of.get(b.name) if b else None,
                              "in_features": self.param_shapes[wname][1]}

    # ---------------------------------------------------------------- results
    def finalize(self) -> dict:
        """Resolve the coupled groups: pieces, their leaf axes, permutation groups, segments.
        """
        piece_axes = [[self.leaves(axis) for axis in pc.axes] for pc in self.pieces]
        # per-copy maps need their copy axis in the piece; otherwise the map is shared
        for dims in piece_axes:
            present = {leaf for lf in dims for leaf, _ in lf}
            for lf in dims:
                for leaf, _ in lf:
                    c = self.segs[leaf].copies_of
                    if c is not None and not all(x in present for x, _ in self.leaves([c])):
                        self.segs[leaf].shared = True
        leaves_used = {leaf for dims in piece_axes for lf in dims for leaf, _ in lf}
        perm_groups = group_links(self, leaves_used)
        cons: dict[int, set] = {}
        for i, tag in self.consumers:
            for leaf, par in self.leaves([i]):
                cons.setdefault(leaf, set()).add((tag, par))
        self.centered = normrot.find_centering(self, piece_axes, leaves_used, cons)
        self.ln_rotations = normrot.find_ln_rotations(self, cons)
        self.ln_shifts = normrot.find_ln_shifts(self)
        summed = normrot.find_sum_centering(self, piece_axes)
        moved = {self.pieces[k].name for c in summed for k, _d, _p in c["producers"]}
        self.ln_shifts = [s for s in self.ln_shifts if not {s["src"], s["dst"]} & moved]
        self.centered += summed
        memo: dict = {}
        trades.embedding_trades(self, lambda z: normrot.ln_only(self, z, memo))
        self.extra = find_batchnorm_gl(self)
        self.centered += find_group_shifts(self, piece_axes)
        self.nx = build_graph(self, piece_axes, leaves_used)
        return {"pieces": self.pieces, "piece_axes": piece_axes, "perm_groups": perm_groups,
                "segs": self.segs}


def analyse_graph(graph: TracedGraph, param_shapes: dict[str, tuple]) -> SymmetryAnalysis:
    """Build the coupled groups of a traced graph (one :class:`SymmetryAnalysis` pass)."""
    return SymmetryAnalysis(graph, param_shapes)

