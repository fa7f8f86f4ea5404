"""Detectors of the symmetries that normalisation layers add to a residual stream.

- *Centering* (translation): a space read only by LayerNorms over that axis ignores shifts
  along ``1``, so every parameter writing into it may move along ``1``. The same holds for
  one value: a sum read only by LayerNorms (directly or through further sums read only by
  LayerNorms) ignores a shift along ``1`` of any operand, so the parameters of a linear map
  or embedding whose output only feeds that sum may move along ``1`` (``W += 1 v^T``,
  ``b += c 1``; embedding rows ``E_t += c_t 1``).
- *LayerNorm nulls*: a LayerNorm output is orthogonal to ``1``; each row of the next weight
  may move along ``1/gamma`` (with ``b -= (beta/gamma).1`` per row).
- *Rotations* ``O(n-1)``: a tied residual stream read only by LayerNorms and linear maps
  keeps the rotations with ``M 1 = 1`` (``LN(M x) = M LN(x)``); each linear reader of a
  LayerNorm output compensates ``W' = W diag(g) M^T diag(1/g)``, ``b' = b + (W - W') beta``.
- *Shifts*: ``z1 = a + W1 h + b1`` read only by LayerNorms and by ``z2 = z1 + ... + b2``:
  ``(b1 + c 1, b2 - c 1)`` changes ``z1`` along ``1`` only.

(Ziyin, Xu & Chuang, arXiv 2505.12387, §2.3-2.4.)
"""

from __future__ import annotations

from typing import Any

from .tracing import OpNode, Ref
from .trades import origin

__all__ = ["ln_consumer", "find_centering", "find_sum_centering", "find_ln_rotations",
           "find_ln_shifts", "ln_only"]


def find_centering(an: Any, piece_axes: list, leaves_used: set, cons: dict) -> list[dict]:
    """Spaces read only by LayerNorms over that axis, with the parameter axes writing them."""
    out = []
    for leaf in sorted(leaves_used):
        tags = cons.get(leaf, set())
        axes = list(an.leaf_axes(piece_axes, leaf))
        for side in (0, 1):  # the two dual sides of a class (tied parameters)
            side_tags = {t for t, par in tags if par == side}
            if not side_tags or side_tags != {"layer_norm"}:
                continue
            other = {an.pieces[k].name for k, _d, _pos, par in axes if par != side}
            prods = []
            for k, d, pos, par in axes:
                pc = an.pieces[k]
                if par != side or pc.name in other or an.tied(pc.name) or \
                        pc.name in an.diagonal:
                    continue
                if sum(1 for lf in piece_axes[k] for x, _ in lf if x == leaf) != 1:
                    continue
                prods.append((k, d, pos))
            if prods:
                out.append({"leaf": leaf, "producers": prods})
    return out


def ln_only(an: Any, name: str, memo: dict) -> bool:
    """Every reader of ``name`` is a LayerNorm over its last axis, or a sum of the same shape
    read only by LayerNorms (recursively)."""
    if name not in memo:
        memo[name] = False  # cycles cannot occur in a traced graph; this guards recursion
        ok = True
        for r, v in an.readers(name):
            node = an.producer.get(r) if r is not None else None
            if node is None:
                ok = False
            elif node.op == "layer_norm":
                ok = ok and node.args[0].name == v and \
                    len(node.kwargs.get("normalized_shape", ())) == 1
            elif node.op == "add" and an.shapes.get(node.name) == an.shapes.get(name):
                ok = ok and ln_only(an, node.name, memo)
            else:
                ok = False
        memo[name] = ok
    return memo[name]


#: writers whose output's last axis is the row space of a parameter: op -> operand indices
_WRITERS = {"linear": (1, 2), "addmm": (1, 2), "embedding": (0,)}


def _writer(an: Any, value: str, total: str) -> Any:
    """The linear map or embedding producing ``value`` (through identities), when its output
    is read by the sum ``total`` only."""
    node = an.producer.get(value)
    while node is not None and node.op == "identity" and node.args and \
            isinstance(node.args[0], Ref):
        node = an.producer.get(node.args[0].name)
    if node is None or node.op not in _WRITERS:
        return None
    if any(r != total for r, _v in an.readers(node.name)):
        return None
    return node


def find_sum_centering(an: Any, piece_axes: list) -> list[dict]:
    """Writers of the operands of sums read only by LayerNorms (see module docstring), on
    spaces that :func:`find_centering` did not already centre."""
    done = {c["leaf"] for c in an.centered}
    memo: dict = {}
    out: dict[int, dict] = {}
    for z in an.tg.nodes:
        if z.op != "add" or not all(isinstance(r, Ref) for r in z.args[:2]) or \
                not an.vals.get(z.name) or not ln_only(an, z.name, memo):
            continue
        lf = an.leaves(an.vals[z.name][-1])
        if len(lf) != 1 or lf[0][0] in done:
            continue
        leaf, side = lf[0]  # writers carry the map of the sum (same parity)
        for r in z.args[:2]:
            w = _writer(an, r.name, z.name)
            if w is None:
                continue
            for i in _WRITERS[w.op]:
                p = w.args[i] if i < len(w.args) else None
                pname = an.param_of.get(p.name) if isinstance(p, Ref) else None
                if pname is None or an.tied(pname) or pname in an.diagonal:
                    continue
                for k, pc in enumerate(an.pieces):
                    hits = [(d, pos) for d, lfs in enumerate(piece_axes[k])
                            for pos, (x, _par) in enumerate(lfs) if x == leaf]
                    if pc.name == pname and len(hits) == 1 and \
                            piece_axes[k][hits[0][0]][hits[0][1]][1] == side:
                        rec = out.setdefault(leaf, {"leaf": leaf, "producers": []})
                        if (k, *hits[0]) not in rec["producers"]:
                            rec["producers"].append((k, *hits[0]))
    return list(out.values())


def ln_consumer(an: Any, x: Ref, w: Ref, bias: Ref | None, index: tuple,
                 rows: int | None = None, transposed: bool = False) -> None:
    """A LayerNorm output n is orthogonal to 1: each row of the next weight may move
    along ``1/gamma`` (with ``b -= (beta/gamma).1`` per row) without changing anything.
    ``transposed``: the weight is stored ``(in, out)`` (its columns move)."""
    if x.name not in an.ln_out or w.name not in an.param_of:
        return
    g, be = an.ln_out[x.name]
    if be is not None and (bias is None or bias.name not in an.param_of):
        return
    wname = an.param_of[w.name]
    if any(p.name == wname for p in an.pieces if p.index == () and
           an.tied(wname)):
        return
    n = rows if rows is not None else an.param_shapes[wname][1 if transposed else 0]
    an.ln_nulls.append({"action": "ln_null_t" if transposed else "ln_null",
                        "weight": wname, "index": index, "rows": n, "gamma": g,
                          "beta": be, "bias": an.param_of[bias.name] if
                          (bias is not None and be is not None) else None,
                          "reason": f"rows of {wname} along 1/gamma: the LayerNorm output "
                                    "has zero mean"})


def ln_readers(an: Any, ln: OpNode) -> list | None:
    """(weight, bias) of every linear reading a LayerNorm output, or None when another
    operation (or a tied / bias-less weight that cannot compensate beta) reads it."""
    beta = ln.args[2] is not None
    out = []
    for r, v in an.readers(ln.name):
        n = an.producer.get(r) if r is not None else None
        if n is None or n.op != "linear" or not isinstance(n.args[0], Ref) or \
                n.args[0].name != v or n.args[1].name not in an.param_of:
            return None
        wname = an.param_of[n.args[1].name]
        b = n.args[2]
        bname = an.param_of.get(b.name) if b is not None else None
        if an.tied(wname) or (beta and (bname is None or an.tied(bname))):
            return None
        out.append((wname, bname))
    return out or None


def find_ln_rotations(an: Any, cons: dict) -> list[dict]:
    """Tied residual stream read only by LayerNorms and linear maps: LN(M x) = M LN(x)
    for M orthogonal with M 1 = 1 (mean and norm kept), so the tied O(n) broken by the
    LayerNorms survives as O(n-1) on the complement of 1; each linear reader of a
    LayerNorm output compensates ``W' = W diag(g) M^T diag(1/g)``,
    ``b' = b + (W - W') beta``."""
    found: dict[int, dict] = {}
    lns = [n for n in an.tg.nodes if n.op == "layer_norm"
           and len(n.kwargs.get("normalized_shape", ())) == 1]
    centered = {c["leaf"] for c in an.centered}
    bad: set[int] = set()
    for ln in lns:
        lf = an.leaves(an.vals[ln.args[0].name][-1])
        if len(lf) != 1:
            continue
        leaf = lf[0][0]
        s = an.segs[leaf]
        ok = (not s.fixed and s.size >= 3 and s.copies_of is None and not s.children
              and leaf not in centered
              and {t for t, _p in cons.get(leaf, set())} <= {"layer_norm", "linear"}
              and any("tied (dual) use" in why for why, _f in s.reasons)
              and all("tied (dual) use" in why or (why.endswith("(layer_norm)")
                                                  and tuple(f) == ("homog",))
                      for why, f in s.reasons))
        readers = ln_readers(an, ln) if ok else None
        if readers is None:
            bad.add(leaf)
            continue
        g = an.param_of.get(ln.args[1].name) if ln.args[1] is not None else None
        be = an.param_of.get(ln.args[2].name) if ln.args[2] is not None else None
        rec = found.setdefault(leaf, {"leaf": leaf, "size": s.size, "norms": []})
        rec["norms"].append({"gamma": g, "beta": be, "readers": readers})
    return [r for leaf, r in found.items() if leaf not in bad]


def find_ln_shifts(an: Any) -> list[dict]:
    """``z1 = a + W1 h + b1`` read only by LayerNorms and by ``z2 = z1 + W2 k + b2``:
    (b1 + c 1, b2 - c 1) changes z1 along 1 only (invisible to the LayerNorms) and
    leaves z2 unchanged."""
    out = []
    centered = {c["leaf"] for c in an.centered}
    for z1 in an.tg.nodes:
        if z1.op != "add" or not all(isinstance(r, Ref) for r in z1.args[:2]):
            continue
        src = add_bias_operand(an, z1)
        if src is None or len(an.vals[z1.name]) == 0:
            continue
        lf = an.leaves(an.vals[z1.name][-1])
        if len(lf) != 1 or lf[0][0] in centered:
            continue
        cur, dst = z1.name, None
        for _ in range(len(an.tg.nodes)):  # follow the residual additions
            readers = an.readers(cur)
            adds = [r for r, _v in readers
                    if r is not None and an.producer[r].op == "add"]
            norms = [r for r, v in readers if r is not None and an.producer[r].op ==
                     "layer_norm" and an.producer[r].args[0].name == v and
                     len(an.producer[r].kwargs.get("normalized_shape", ())) == 1]
            if len(adds) != 1 or len(adds) + len(norms) != len(readers) or \
                    an.shapes[adds[0]] != an.shapes[cur]:
                break
            dst = add_bias_operand(an, an.producer[adds[0]], exclude=cur)
            if dst is not None:
                break
            cur = adds[0]
        if dst is None or dst == src:
            continue
        out.append({"src": src, "dst": dst, "size": an.segs[lf[0][0]].size,
                    "reason": f"{src} along 1 feeds only LayerNorms before {dst} "
                              "removes it"})
    return out


def add_bias_operand(an: Any, node: OpNode, exclude: str | None = None) -> str | None:
    """The bias (1-D parameter over the last axis) of the operand of an add that is
    a linear output read by nothing else."""
    for r in node.args[:2]:
        if not isinstance(r, Ref) or r.name == exclude:
            continue
        b = an.bias_of.get(r.name)
        if b is None or b not in an.param_of or len(an.shp(Ref(b))) != 1:
            continue
        orig = origin(an, r.name, an.bias_of)
        if an.producer[orig].op != "linear" or any(
                x != node.name for x, _v in an.readers(orig)):
            continue
        if an.tied(an.param_of[b]):
            continue
        return an.param_of[b]
    return None
