"""Classification of parameter symmetries of a torch model.

Convention (issue 6; Ziyin, Xu & Chuang arXiv 2505.12387; ``entropic-forces.md`` §2): a
symmetry is a parameter map ``theta -> g.theta`` with ``f(x; g.theta) = f(x; theta)`` for all
inputs at generic parameters. Biases transform with their weights; the largest group of
each coupled space is reported and not its subgroups (GL(5) contains the permutations and
sign flips of those 5 units); the softmax translation of the logits is a ``loss``-level
symmetry; normalization scale symmetries are exact only with eps = 0 and are flagged
``approximate: eps`` (BatchNorm's holds in train mode); tied parameters shrink GL(n) to O(n).

Per coupled space of size n (see :mod:`thermanopt.analysis.symmetry_graph`), with c
independent copies (attention heads) the continuous dimension is:

====================  ===================  ===========================
allowed maps          record(s)            continuous dim
====================  ===================  ===========================
GL(n)                 general_linear       c n^2
O(n) (tied)           rotation             c n(n-1)/2
positive diagonal     permutation+rescale  c n  (``scale`` when a normalization absorbs it)
signed permutation    permutation+sign     0
positive scalar       scale                c
permutation only      permutation          0
====================  ===================  ===========================

plus ``null`` directions (a key bias before the softmax over keys, a bias feeding a
train-mode BatchNorm) and, at loss level, the translation ``W += 1 v^T, b += c 1`` of the
final linear layer (dimension ``in_features + 1``).

Bias trades (``trade``): a bias ``b`` whose output is read only by linear maps
``y_j = W_j(. + b) + c_j`` moves as ``(b + u, c_j - W_j u for every j)`` (dimension
``len(b)``); a trade is reported only when *every* reader compensates (a LayerNorm bias read
by q, k and v trades against all three biases). A tied residual space read only by
LayerNorms and linear maps keeps ``O(n-1)``: rotations with ``M 1 = 1`` commute with the
LayerNorm (``LN(Mx) = M LN(x)``), each linear reader of a LayerNorm output compensates
``W' = W diag(g) M^T diag(1/g)``, ``b' = b + (W - W') beta`` (dimension ``(n-1)(n-2)/2``). A
bias whose output is read only by LayerNorms and one more residual addition may move along
``1`` if the bias of that addition takes it back (``trade`` of dimension 1, ``ln_shift``).

A symmetry whose group-element check fails (relative error > 1e-6, not ``approximate``) gets
``verified = False``, is marked ``FAILED`` in :meth:`SymmetryReport.table` and makes the report
``complete = False``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .symmetry_graph import SymmetryAnalysis
from .tracing import TracingError, UnsupportedOpError, trace

__all__ = ["Symmetry", "SymmetryReport", "find_symmetries", "classify"]


@dataclass
class Symmetry:
    """One symmetry group acting on a set of parameter axes."""

    kind: str
    continuous: bool
    group: str
    dim: int
    order: int | None
    parameters: list[dict]
    level: str = "function"
    verified_error: float | None = None
    log_order: float | None = None
    approximate: str | None = None
    size: int = 0
    copies: int = 1
    note: str = ""
    action: dict = field(default_factory=dict, repr=False)
    verified: bool | None = None  # False: the group-element check failed (error > 1e-6)

    def to_dict(self) -> dict:
        """JSON-able dict of the record (parameters as name/index pairs)."""
        d = {k: getattr(self, k) for k in ("kind", "continuous", "group", "dim", "order",
                                           "log_order", "level", "verified_error",
                                           "approximate", "size", "copies", "note",
                                           "verified")}
        if isinstance(d["order"], int) and d["order"] > 2**53:
            d["order"] = None
        d["parameters"] = self.parameters
        return d


def _fmt_index(index: tuple) -> str:
    if not index:
        return ":"
    return ",".join(f"{s.start}:{s.stop}" if isinstance(s, slice) else str(s) for s in index)


@dataclass
class SymmetryReport:
    """Result of :func:`find_symmetries`: the symmetries, their total continuous dimension (function
    and loss level), the Jacobian nullity when verified, ``complete`` when the two agree, the
    symmetry graph and the tracer used.
    """
    symmetries: list[Symmetry]
    continuous_dim: int
    loss_level_dim: int
    jacobian_nullity: int | None
    complete: bool | None
    graph: Any
    tracer: str = ""
    notes: list[str] = field(default_factory=list)
    n_parameters: int = 0
    loss_jacobian_nullity: int | None = None
    jacobian_mode: str | None = None
    jacobian_details: dict = field(default_factory=dict)
    verification: str = ""
    seconds: dict = field(default_factory=dict)
    context: dict = field(default_factory=dict, repr=False)

    @property
    def discrete(self) -> list[Symmetry]:
        return [s for s in self.symmetries if not s.continuous]

    def by_kind(self, kind: str) -> list[Symmetry]:
        """The symmetries of one ``kind`` (e.g. ``"rescale"``)."""
        return [s for s in self.symmetries if s.kind == kind]

    def to_json(self, path: str | None = None) -> str:
        """The report as JSON text; also written to ``path`` when given."""
        data = {
            "tracer": self.tracer,
            "n_parameters": self.n_parameters,
            "continuous_dim": self.continuous_dim,
            "loss_level_dim": self.loss_level_dim,
            "jacobian_nullity": self.jacobian_nullity,
            "loss_jacobian_nullity": self.loss_jacobian_nullity,
            "jacobian_mode": self.jacobian_mode,
            "jacobian_details": self.jacobian_details,
            "complete": self.complete,
            "verification": self.verification,
            "notes": self.notes,
            "seconds": self.seconds,
            "symmetries": [s.to_dict() for s in self.symmetries],
        }
        text = json.dumps(data, indent=2, default=str)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    def table(self) -> str:
        """Printable table: kind, group, continuity, dimension, level, error, parameters."""
        head = f"{'kind':<15}{'group':<22}{'cont':<6}{'dim':>7}  {'level':<9}{'verified':>10}  " \
               "parameters"
        lines = [head, "-" * len(head)]
        for s in self.symmetries:
            names = sorted({p["name"] + ("" if p["index"] == ":" else f"[{p['index']}]")
                            for p in s.parameters})
            par = ", ".join(names[:4]) + (f", +{len(names) - 4}" if len(names) > 4 else "")
            ver = "-" if s.verified_error is None else f"{s.verified_error:.1e}"
            flag = " (approx: eps)" if s.approximate else ""
            if s.verified is False:
                flag += "  FAILED"
            lines.append(f"{s.kind:<15}{s.group:<22}{'yes' if s.continuous else 'no':<6}"
                         f"{s.dim:>7}  {s.level:<9}{ver:>10}  {par}{flag}")
        lines.append("-" * len(head))
        lines.append(f"continuous dim (function level): {self.continuous_dim}; loss level: "
                     f"+{self.loss_level_dim}; Jacobian nullity: {self.jacobian_nullity} "
                     f"({self.jacobian_mode or 'not run'}); complete: {self.complete}; "
                     f"tracer: {self.tracer}")
        return "\n".join(lines)

    def plot(self, path: str) -> None:
        """Figure of the coupled groups: parameters (grey) and groups coloured by type."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import networkx as nx

        g = nx.Graph()
        colours = {}
        for k, s in enumerate(self.symmetries):
            node = f"{s.group}#{k}"
            g.add_node(node)
            colours[node] = "tab:red" if s.continuous else "tab:blue"
            for p in s.parameters:
                g.add_node(p["name"])
                colours.setdefault(p["name"], "lightgrey")
                g.add_edge(node, p["name"])
        fig, ax = plt.subplots(figsize=(12, 9))
        pos = nx.spring_layout(g, seed=0, k=1.5 / math.sqrt(max(g.number_of_nodes(), 1)))
        nx.draw_networkx(g, pos, ax=ax, node_color=[colours[n] for n in g.nodes], node_size=250,
                         font_size=6)
        ax.set_title("symmetry groups (red: continuous, blue: discrete) and the parameters "
                     "they act on")
        ax.axis("off")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)


def _group_name(base: str, n: int, c: int) -> str:
    return base if c == 1 else f"({base})^{c}"


def classify(an: SymmetryAnalysis, output: str = "logits") -> tuple[list[Symmetry], dict]:
    """Turn the coupled groups of ``an`` into :class:`Symmetry` records."""
    fin = an.finalize()
    pieces, piece_axes, segs = fin["pieces"], fin["piece_axes"], fin["segs"]
    leaf_index: dict[int, list] = {}
    for k, dims in enumerate(piece_axes):
        for d, lf in enumerate(dims):
            for pos, (leaf, par) in enumerate(lf):
                leaf_index.setdefault(leaf, []).append((k, d, pos, par))

    def params_of(axes):
        out, seen = [], set()
        for k, d, _pos, par in axes:
            key = (pieces[k].name, _fmt_index(pieces[k].index), d, par)
            if key not in seen:
                seen.add(key)
                out.append({"name": key[0], "index": key[1], "dim": d,
                            "role": "in" if par else "out"})
        return out

    def copies(m):
        s = segs[m]
        if s.copies_of is None or s.shared:
            return 1
        return math.prod(segs[x].size for x, _ in an.leaves([s.copies_of]))

    def approx(m):
        return "eps" if segs[m].absorbed else None

    records: list[Symmetry] = []
    for members in fin["perm_groups"]:
        used = [m for m in members if m in leaf_index]
        if not used:
            continue
        n = segs[used[0]].size
        fixed = any(segs[m].fixed for m in members)
        has_rot = any("rotate" in segs[m].feat for m in used)
        if not fixed and n >= 2 and not has_rot:
            axes = [a for m in used for a in leaf_index[m]]
            c = copies(used[0])
            order = math.factorial(n) ** c if n * c <= 170 else None
            records.append(Symmetry(
                "permutation", False, _group_name(f"S_{n}", n, c), 0, order, params_of(axes),
                log_order=c * math.lgamma(n + 1), size=n, copies=c,
                action={"type": "perm", "leaves": used}))
        for m in used:
            s = segs[m]
            if s.fixed:
                continue
            f, c, axes = s.feat, copies(m), leaf_index[m]
            base = dict(parameters=params_of(axes), size=n, copies=c)
            if "rotate" in f and "pdiag" in f:
                records.append(Symmetry("general_linear", True, _group_name(f"GL({n})", n, c),
                                        c * n * n, None, **base,
                                        action={"type": "gl", "leaves": [m]}))
            elif "rotate" in f:
                records.append(Symmetry("rotation", True, _group_name(f"O({n})", n, c),
                                        c * n * (n - 1) // 2, None, **base,
                                        note="tied parameters restrict GL to O",
                                        action={"type": "orth", "leaves": [m]}))
            else:
                kind = "scale" if s.absorbed else "rescale"
                if "pdiag" in f:
                    records.append(Symmetry(kind, True, _group_name(f"R_{{>0}}^{n}", n, c),
                                            c * n, None, **base, approximate=approx(m),
                                            action={"type": "pdiag", "leaves": [m]}))
                elif "homog" in f:
                    records.append(Symmetry("scale", True, _group_name("R_{>0}", 1, c), c,
                                            None, **base, approximate=approx(m),
                                            action={"type": "homog", "leaves": [m]}))
                if "sign" in f and n >= 1:
                    records.append(Symmetry("sign_flip", False, _group_name(f"Z_2^{n}", n, c),
                                            0, 2 ** (n * c) if n * c < 1000 else None,
                                            log_order=n * c * math.log(2), **base,
                                            action={"type": "sign", "leaves": [m]}))
    for nl in an.nulls:
        idx = nl["index"]
        records.append(Symmetry("null", True, f"R^{nl['dim']}", nl["dim"], None,
                                [{"name": nl["param"], "index": _fmt_index(idx), "dim": None,
                                  "role": "null"}], note=nl["reason"], size=nl["dim"],
                                action={"type": "null", "param": nl["param"], "index": idx}))
    for c in getattr(an, "centered", []):
        dim = sum(math.prod(pieces[k].shape) // segs[c["leaf"]].size for k, _d, _p in
                  c["producers"])
        ps = [{"name": pieces[k].name, "index": _fmt_index(pieces[k].index), "dim": d,
               "role": "translation"} for k, d, _p in c["producers"]]
        records.append(Symmetry("translation", True, f"R^{dim}", dim, None, ps,
                                size=segs[c["leaf"]].size,
                                note="shift along 1 of a space read only by LayerNorms "
                                     "(mean-centering)",
                                action={"type": "center", **c}))
    for ln in an.ln_nulls:
        ps = [{"name": ln["weight"], "index": _fmt_index(ln["index"]), "dim": 0,
               "role": "null"}]
        if ln["bias"]:
            ps.append({"name": ln["bias"], "index": ":", "dim": 0, "role": "null"})
        records.append(Symmetry("null", True, f"R^{ln['rows']}", ln["rows"], None, ps,
                                size=ln["rows"], note=ln["reason"],
                                action={"type": "ln_null", **ln}))
    for rot in getattr(an, "ln_rotations", []):
        n = rot["size"]
        axes = leaf_index.get(rot["leaf"], [])
        ps = params_of(axes)
        for nrm in rot["norms"]:
            ps += [{"name": w, "index": ":", "dim": 1, "role": "in"} for w, _b in nrm["readers"]]
            ps += [{"name": b, "index": ":", "dim": 0, "role": "out"} for _w, b in
                   nrm["readers"] if b is not None and nrm["beta"] is not None]
        records.append(Symmetry("rotation", True, f"O({n - 1})", (n - 1) * (n - 2) // 2, None,
                                ps, size=n,
                                note="tied space read by LayerNorms: rotations fixing 1 "
                                     "(LN(Mx) = M LN(x)); LN readers compensate",
                                action={"type": "ln_orth", **rot}))
    for sh in getattr(an, "ln_shifts", []):
        records.append(Symmetry(
            "trade", True, "R^1", 1, None,
            [{"name": sh["src"], "index": ":", "dim": 0, "role": "trade"},
             {"name": sh["dst"], "index": ":", "dim": 0, "role": "trade"}],
            note=sh["reason"], size=1, action={"type": "ln_shift", **sh}))
    for tr in an.trades:
        records.append(Symmetry(
            "trade", True, f"R^{tr['dim']}", tr["dim"], None,
            [{"name": tr["src"][0], "index": _fmt_index(tr["src"][1]), "dim": 0,
              "role": "trade"}]
            + [{"name": dst, "index": ":", "dim": 0, "role": "trade"}
               for _w, dst in tr.get("consumers", [(tr["weight"], tr["dst"])])],
            note=tr["reason"], size=tr["dim"], action={"type": "trade", **tr}))
    if output == "logits" and an.output_linear is not None:
        ol = an.output_linear
        dim = ol["in_features"] + (1 if ol["bias"] else 0)
        ps = [{"name": ol["weight"], "index": ":", "dim": 0, "role": "translation"}]
        if ol["bias"]:
            ps.append({"name": ol["bias"], "index": ":", "dim": 0, "role": "translation"})
        records.append(Symmetry("translation", True, f"R^{dim}", dim, None, ps, level="loss",
                                size=dim, note="softmax translation of the logits",
                                action={"type": "translation", **ol}))
    ctx = {"pieces": pieces, "piece_axes": piece_axes, "segs": segs, "leaf_index": leaf_index,
           "analysis": an}
    return records, ctx


def _snapshot(model: nn.Module) -> tuple:
    """Train/eval flags and buffers: the only state a forward pass may change."""
    flags = [m.training for m in model.modules()]
    bufs = {n: b.detach().clone() for n, b in model.named_buffers()}
    return flags, bufs


def _restore(model: nn.Module, state: tuple) -> None:
    flags, bufs = state
    for m, f in zip(model.modules(), flags):
        m.training = f
    with torch.no_grad():
        for n, b in model.named_buffers():
            if n in bufs and b.shape == bufs[n].shape:
                b.copy_(bufs[n])


def _check_inputs(model: nn.Module, example_inputs) -> tuple:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    for i, x in enumerate(example_inputs):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError(f"example input {i} contains NaN or inf")
    return example_inputs


def find_symmetries(model: nn.Module, example_inputs, *, output: str = "logits",
                    verify: bool | str = True, tracer: str = "auto", jacobian: bool | None = None,
                    seed: int = 0) -> SymmetryReport:
    """Detect, classify and (optionally) verify the parameter symmetries of ``model``.

    ``output``: ``"logits"`` (a softmax/cross-entropy head: its translation is reported at
    loss level) or ``"raw"``. ``verify``: True applies a random element of every symmetry
    (float64; relative output change recorded in ``verified_error``) and, for models up to
    ``jacobian_max_params`` parameters, computes the Jacobian nullity (``jacobian=None``:
    automatic). Models above 1e5 parameters are verified on a sample of symmetries.
    The model is never modified: the analysis runs on a copy.
    """
    if output not in ("logits", "raw"):
        raise ValueError(f"output must be 'logits' or 'raw', got {output!r}")
    t0 = time.perf_counter()
    example_inputs = _check_inputs(model, example_inputs)
    state = _snapshot(model)
    try:
        with torch.no_grad():
            g = trace(model, example_inputs, tracer)
    except (UnsupportedOpError, TracingError):
        _restore(model, state)
        try:
            with torch.no_grad():
                model(*example_inputs)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"the model fails on the example inputs "
                             f"({type(e).__name__}: {e})") from e
        raise
    finally:
        _restore(model, state)
    t1 = time.perf_counter()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    an = SymmetryAnalysis(g, shapes)
    records, ctx = classify(an, output)
    t2 = time.perf_counter()
    cont = sum(s.dim for s in records if s.continuous and s.level == "function")
    loss = sum(s.dim for s in records if s.continuous and s.level == "loss")
    n_params = sum(p.numel() for p in model.parameters())
    notes = list(dict.fromkeys(an.notes))
    if any(s.approximate for s in records):
        notes.append("scale symmetries of normalization layers are exact only with eps = 0")
    ctx["output"] = output
    ctx["inputs"] = example_inputs
    report = SymmetryReport(records, cont, loss, None, None, an.nx, g.method, notes, n_params,
                            context=ctx)
    report.seconds = {"trace": t1 - t0, "classify": t2 - t1}
    an.nx.graph["tracer"] = g.method
    an.nx.graph["symmetries"] = [s.to_dict() for s in records]
    if verify:
        from .verify import verify_report

        verify_report(model, report, jacobian=jacobian, seed=seed)
    report.seconds["total"] = time.perf_counter() - t0
    return report
