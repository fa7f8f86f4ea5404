"""Bias trades: a bias and the biases of its readers exchange a shift.

A bias ``b`` whose output is read only by linear maps ``y_j = W_j (. + b) + c_j`` moves as
``(b + u, c_j - W_j u for every j)`` without changing the function (dimension ``len(b)``);
attention rows sum to one, so a value bias reaches the output projection unchanged. A trade
is kept only when *every* reader compensates (Ziyin, Xu & Chuang, arXiv 2505.12387, §2).
"""

from __future__ import annotations

import math
from typing import Any

from .tracing import Ref

__all__ = ["record_trade", "trade_candidate", "resolve_trades", "linear_trade", "sum_trade",
           "origin", "embedding_trades", "VIEW_OPS"]

VIEW_OPS = ("identity", "transpose", "permute", "reshape")
_STOP = ("linear", "conv", "sdpa", "mha", "layer_norm", "rms_norm", "batch_norm", "add", "sub")


def origin(an: Any, name: str, table: dict) -> str:
    """The value where ``table[name]`` (a bias) was attached: walk back through the ops that
    only propagated it."""
    entry = table.get(name)
    for _ in range(10_000):
        node = an.producer.get(name)
        if node is None or node.op in _STOP:
            return name
        src = next((r for r in node.args if isinstance(r, Ref)), None)
        if src is None or table.get(src.name) != entry:
            return name
        name = src.name
    return name


def record_trade(an: Any, src: tuple, weight: tuple | None, dst: str, why: str,
                 consumers: list | None = None, size: int | None = None) -> None:
    """Record the trade of bias ``src = (name, index)`` against ``consumers``
    (``(weight or None, bias)`` pairs that compensate); ``size``: the dimension when it is
    not the length of ``src``'s (first) slice."""
    if any(t["src"] == src for t in an.trades):
        return
    if size is None:
        size = math.prod(an.param_shapes[src[0]]) if not src[1] else \
            src[1][0].stop - src[1][0].start
    consumers = consumers if consumers is not None else [(weight, dst)]
    stored_t = any(w is not None and len(w) > 2 for w, _d in consumers)
    an.trades.append({"action": "trade_t" if stored_t else "trade",
                      "src": src, "weight": consumers[0][0], "dst": consumers[0][1],
                      "consumers": consumers, "dim": size,
                      "reason": f"a bias and the bias(es) of its reader(s) exchange a "
                                f"shift ({why})"})


def trade_candidate(an: Any, src: tuple, orig: str, reader: str, weight: tuple | None,
                    dst: str, why: str, checks: list | None = None) -> None:
    """A possible trade; :func:`resolve_trades` keeps it only if every reader of ``orig``
    compensates and every ``(value, node)`` of ``checks`` is read only by ``node``."""
    an.trade_cands.append({"src": src, "origin": orig, "reader": reader, "weight": weight,
                           "dst": dst, "why": why, "checks": list(checks or [])})


def resolve_trades(an: Any) -> None:
    """Keep the candidates whose every reader compensates (see module docstring)."""
    groups: dict[tuple, list] = {}
    for c in an.trade_cands:  # slices are unhashable before Python 3.12: key on their repr
        groups.setdefault((c["src"][0], repr(c["src"][1]), c["origin"]), []).append(c)
    for cands in groups.values():
        src, orig = cands[0]["src"], cands[0]["origin"]
        by_reader = {c["reader"]: c for c in cands}
        readers = an.readers(orig)
        ok = bool(readers) and all(r in by_reader for r, _v in readers)
        for c in cands:
            for value, node in c["checks"]:
                ok = ok and all(r == node for r, _v in an.readers(value))
        dsts = [c["dst"] for c in by_reader.values()]
        ok = ok and len(set(dsts)) == len(dsts) and src[0] not in dsts
        if not ok:
            an.notes.append(f"no bias trade for {src[0]}: its output is also read by an "
                            "operation that cannot compensate the shift")
            continue
        cons = [(c["weight"], c["dst"]) for c in by_reader.values()]
        record_trade(an, src, cons[0][0], cons[0][1],
                     ", ".join(c["why"] for c in by_reader.values()), cons)


def linear_trade(an: Any, node: Any, x: Ref, w: Ref, bias: Ref, why: str,
                 transposed: bool = False) -> None:
    """Candidate trade of the bias feeding ``x`` against the bias of ``linear(x, w, bias)``
    (``transposed``: ``x @ w + bias`` with ``w`` stored ``(in, out)``)."""
    src, orig, via = an.trade_src.get(x.name), None, None
    if src is not None:
        orig = origin(an, x.name, an.trade_src)
        via = an.trade_via.get(orig)
    elif x.name in an.bias_of and an.bias_of[x.name] in an.param_of and \
            an.shp(Ref(an.bias_of[x.name])) == (an.shp(w)[0 if transposed else 1],):
        src = (an.param_of[an.bias_of[x.name]], ())
        orig = origin(an, x.name, an.bias_of)
    if src is not None and w.name in an.param_of and bias.name in an.param_of \
            and src[0] != an.param_of[bias.name]:
        checks = []
        if via is not None:  # the value bias must reach only this attention
            checks.append((origin(an, via, an.bias_of), orig))
        weight = (an.param_of[w.name], (), "t") if transposed else (an.param_of[w.name], ())
        trade_candidate(an, src, orig, node.name, weight, an.param_of[bias.name], why, checks)


def sum_trade(an: Any, node: Any, x: Ref, y: Ref, xp: bool, yp: bool) -> None:
    """Bookkeeping of ``x + y``: a candidate trade of the two operands' biases; the bias that
    the sum now carries."""
    why = f"{node.name}({node.op})"
    bx, by = an.bias_of.get(x.name), an.bias_of.get(y.name)
    if (node.op == "add" and not xp and not yp and bx and by and bx != by
            and bx in an.param_of and by in an.param_of
            and an.shp(Ref(bx)) == an.shp(Ref(by)) and len(an.shp(Ref(bx))) == 1):
        trade_candidate(an, (an.param_of[by], ()), origin(an, y.name, an.bias_of), node.name,
                        None, an.param_of[bx], why,
                        [(origin(an, x.name, an.bias_of), node.name)])
    if yp and len(an.shp(y)) >= 1:
        an.bias_of[node.name] = y.name
    elif xp:
        an.bias_of[node.name] = x.name
    if x.name in an.scores_key and not yp:
        an.scores_key[node.name] = an.scores_key[x.name]


def _lookup(an: Any, value: str, total: str) -> str | None:
    """The embedding table read into ``value`` (through identities) when only the sum
    ``total`` reads it."""
    node = an.producer.get(value)
    while node is not None and node.op == "identity" and node.args and \
            isinstance(node.args[0], Ref):
        node = an.producer.get(node.args[0].name)
    if node is None or node.op != "embedding" or node.args[0].name not in an.param_of or \
            any(r != total for r, _v in an.readers(node.name)):
        return None
    pname = an.param_of[node.args[0].name]
    return None if an.tied(pname) else pname


def _summed_tables(an: Any, z: Any) -> list[str]:
    """Embedding tables summed by the tree of additions rooted at ``z`` (an inner sum must
    be read by its parent only)."""
    out = []
    for r in z.args[:2]:
        if not isinstance(r, Ref):
            continue
        node = an.producer.get(r.name)
        if node is not None and node.op == "add" and \
                all(x == z.name for x, _v in an.readers(node.name)):
            out += _summed_tables(an, node)
        else:
            t = _lookup(an, r.name, z.name)
            if t is not None:
                out.append(t)
    return out


def embedding_trades(an: Any, centred: Any) -> None:
    """Embedding tables summed before anything else reads them (token + position + segment):
    ``E_1 += 1 u^T``, ``E_k -= 1 u^T`` keeps every sum ``E_1[t] + E_k[s]``. When the sum is
    also centred (read only by LayerNorms: ``centred(z)``), ``u = 1`` is a combination of
    the two tables' row shifts along 1, so the trade keeps ``d - 1`` coordinates."""
    roots = [n for n in an.tg.nodes if n.op == "add" and not any(
        r is not None and an.producer[r].op == "add" and
        all(x == r for x, _v in an.readers(n.name)) for r, _v in an.readers(n.name))]
    for z in roots:
        tables = list(dict.fromkeys(_summed_tables(an, z)))
        if len(tables) < 2:
            continue
        d = an.param_shapes[tables[0]][-1]
        m = d - 1 if centred(z.name) else d
        if m < 1:
            continue
        cols = (slice(None), slice(0, m))
        for first, other in zip(tables, tables[1:]):  # consecutive pairs span every trade
            record_trade(an, (first, cols), None, other,
                         f"{z.name}(add): summed embedding tables", [(None, (other, cols))],
                         size=m)
