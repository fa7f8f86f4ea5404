"""Recurrent layers: ``nn.LSTM`` and ``nn.GRU`` (``aten.lstm`` / ``aten.gru``).

Layer ``l`` computes gates ``W_ih x_t + b_ih + W_hh h_{t-1} + b_hh`` in ``G`` blocks of ``H``
rows (``G = 4`` for the LSTM, 3 for the GRU). A permutation ``P`` of the hidden units is a
symmetry when it acts on the rows of every gate block of ``W_ih``, ``W_hh``, ``b_ih``, ``b_hh``
(the same ``P`` for all blocks), on the columns of ``W_hh`` and on the readers of ``h``;
the gate nonlinearities (sigmoid, tanh) allow nothing continuous. Both biases enter only as
their sum in the LSTM, and in the reset and update gates of the GRU: a bias trade
``(b_ih + u, b_hh - u)`` (Ziyin, Xu & Chuang, arXiv 2505.12387, §2). Sign flips (``h -> -h``
with only the tanh block flipped) are not reported. Bidirectional layers, or a non-zero
initial state, are barriers.
"""

from __future__ import annotations

from typing import Any

from ..tracing import Ref
from ..unionfind import PERM
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
            h = an.new_axis(H)
            an.restrict(h, PERM, f"{why}: gates")
            for w in (w_ih, w_hh):
                wa = an.ax(w)
                an.unify(wa[0], [an.new_seg(G, fixed=True)] + h, 0, f"{why}: gate blocks")
            an.unify(an.ax(w_ih)[1], inp, 1, why)
            an.unify(an.ax(w_hh)[1], h, 1, f"{why}: recurrence")
            if kw["has_biases"]:
                b_ih, b_hh = params[per * layer + 2], params[per * layer + 3]
                for b in (b_ih, b_hh):
                    an.unify(an.ax(b)[0], [an.new_seg(G, fixed=True)] + h, 0, why)
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


__all__ = ["RecurrentRule"]
