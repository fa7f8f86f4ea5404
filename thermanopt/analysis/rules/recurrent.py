"""Recurrent layers: ``nn.LSTM`` and ``nn.GRU`` (``aten.lstm`` / ``aten.gru``).

Layer ``l`` computes gates ``W_ih x_t + b_ih + W_hh h_{t-1} + b_hh`` in ``G`` blocks of ``H``
rows (``G = 4`` for the LSTM, 3 for the GRU). A permutation ``P`` of the hidden units is a
symmetry when it acts on the rows of every gate block of ``W_ih``, ``W_hh``, ``b_ih``, ``b_hh``
(the same ``P`` for all blocks), on the columns of ``W_hh`` and on the readers of ``h``;
the gate nonlinearities (sigmoid, tanh) allow nothing continuous. Both biases enter only as
their sum in the LSTM, and in the reset and update gates of the GRU: a bias trade
``(b_ih + u, b_hh - u)`` (Ziyin, Xu & Chuang, arXiv 2505.12387, §2).

Sign flips ``h_i -> -h_i``: the LSTM's ``h = o * tanh(c)``, ``c = f * c + i * g`` with
``g = tanh(.)`` odd and ``i, f, o`` sigmoids (positive) keeps ``h`` flipped exactly when ``c``
and ``g`` are: the rows of the ``g`` block (block 2 of ``i, f, g, o``) of ``W_ih, W_hh, b_ih,
b_hh`` flip, with the columns of ``W_hh`` (all blocks) and of every reader of ``h``. The GRU's
``h' = (1 - z) * n + z * h`` with ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`` flips with
``n``: the rows of block 2 (``r, z, n``) flip. So each layer's gate rows are pieces per block:
block 2 on the hidden space (signed permutations), the other blocks on a space sharing its
permutation (permutations only). Bidirectional layers, or a non-zero initial state, are
barriers.
"""

from __future__ import annotations

from typing import Any

from ..tracing import Ref
from ..unionfind import PERM, SIGN
from .registry import Rule, register


def _zero_state(an: Any, refs: list) -> bool:
    """Every initial state is a ``zeros`` constant (permutations fix zero)."""
    for r in refs:
        node = an.producer.get(r.name) if isinstance(r, Ref) else None
        if node is None or not str(node.target).endswith(("zeros", "zeros.default")):
            return False
    return True


def _reads_states(an: Any, node: Any) -> bool:
    """Whether the final states (outputs 1, 2) are read by any live operation."""
    return any(n.op == "item" and n.args and getattr(n.args[0], "name", None) == node.name
               and n.kwargs.get("index", 0) > 0 for n in an.tg.nodes)


def gate_pieces(an: Any, p: Ref, G: int, h: list, gates: list, cols: list | None) -> None:
    """Pieces of the gate parameter ``p`` (``G`` blocks of rows): block 2 (LSTM ``g``, GRU
    ``n``) on ``h``, the others on ``gates``; the columns (weights) read ``cols``."""
    pname = an.param_of[p.name]
    shape = an.shp(p)
    H = shape[0] // G
    for j in range(G):
        axes = [an.new_axis(H)] + ([an.new_axis(shape[1])] if cols is not None else [])
        an.unify(axes[0], h if j == 2 else gates, 0, f"{pname}: gate block {j}")
        if cols is not None:
            an.unify(axes[1], cols, 1, f"{pname}: columns")
        an.add_piece(pname, (slice(j * H, (j + 1) * H),), (H,) + tuple(shape[1:]), axes)
    an.pieces = [pc for pc in an.pieces if not (pc.name == pname and pc.index == ())]


@register
class RecurrentRule(Rule):
    """LSTM / GRU stack (see module docstring)."""

    ops = ("rnn",)

    def apply(self, an: Any, node: Any) -> None:
        kw = node.kwargs
        why = f"{node.name}({kw['cell']})"
        x, hx, params = node.args[0], kw["hx"], kw["params"]
        if kw["bidirectional"] or not _zero_state(an, hx) or not all(
                isinstance(p, Ref) and p.name in an.param_of for p in params):
            an.barrier(node, f"aten.{kw['cell']} (bidirectional, initial state or weights)")
            return
        G = 4 if kw["cell"] == "lstm" else 3
        per = 4 if kw["has_biases"] else 2
        xa = an.ax(x)
        t_axis = 1 if kw["batch_first"] else 0
        an.fix(xa[t_axis], f"{why}: time axis")
        for a in xa[:-1]:
            an.restrict(a, PERM, why)
        inp = xa[-1]
        hidden = []
        for layer in range(kw["num_layers"]):
            w_ih, w_hh = params[per * layer], params[per * layer + 1]
            H = an.shp(w_hh)[1]
            h, gates = an.new_axis(H), an.new_axis(H)
            an.restrict(h, SIGN, f"{why}: tanh block (odd)")
            an.restrict(gates, PERM, f"{why}: sigmoid gates")
            an.link(h, gates, f"{why}: gate blocks")
            gate_pieces(an, w_ih, G, h, gates, inp)
            gate_pieces(an, w_hh, G, h, gates, h)
            if kw["has_biases"]:
                b_ih, b_hh = params[per * layer + 2], params[per * layer + 3]
                for b in (b_ih, b_hh):
                    gate_pieces(an, b, G, h, gates, None)
                rows = G * H if G == 4 else 2 * H
                an.trade((an.param_of[b_ih.name], (slice(0, rows),)), None,
                         an.param_of[b_hh.name], f"{why}: gate biases enter as a sum",
                         [(None, (an.param_of[b_hh.name], (slice(0, rows),)))])
            hidden.append(h)
            inp = h
        if _reads_states(an, node):
            for h in hidden:
                an.fix(h, f"{why}: final states are read")
        out = list(xa[:-1]) + [inp]
        states = [[an.new_axis(s, True) for s in shape] for shape in node.meta["shapes"][1:]]
        an.set_multi(node, [out] + states)


__all__ = ["RecurrentRule", "gate_pieces"]
