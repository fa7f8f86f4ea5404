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

import math
import time

import torch
from torch import nn

from .actions import make_action
from .report import Symmetry, SymmetryReport, fmt_index
from .symmetry_graph import SymmetryAnalysis
from .tracing import TracingError, UnsupportedOpError, trace

__all__ = ["Symmetry", "SymmetryReport", "find_symmetries", "classify", "symmetry_graph"]


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
            key = (pieces[k].name, fmt_index(pieces[k].index), d, par)
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
                action=make_action("perm", leaves=used)))
        for m in used:
            s = segs[m]
            if s.fixed:
                continue
            f, c, axes = s.feat, copies(m), leaf_index[m]
            base = dict(parameters=params_of(axes), size=n, copies=c)
            if "rotate" in f and "pdiag" in f:
                records.append(Symmetry("general_linear", True, _group_name(f"GL({n})", n, c),
                                        c * n * n, None, **base,
                                        action=make_action("gl", leaves=[m])))
            elif "rotate" in f:
                records.append(Symmetry("rotation", True, _group_name(f"O({n})", n, c),
                                        c * n * (n - 1) // 2, None, **base,
                                        note="tied parameters restrict GL to O",
                                        action=make_action("orth", leaves=[m])))
            else:
                kind = "scale" if s.absorbed else "rescale"
                if "pdiag" in f:
                    records.append(Symmetry(kind, True, _group_name(f"R_{{>0}}^{n}", n, c),
                                            c * n, None, **base, approximate=approx(m),
                                            action=make_action("pdiag", leaves=[m])))
                elif "homog" in f:
                    records.append(Symmetry("scale", True, _group_name("R_{>0}", 1, c), c,
                                            None, **base, approximate=approx(m),
                                            action=make_action("homog", leaves=[m])))
                if "sign" in f and n >= 1:
                    records.append(Symmetry("sign_flip", False, _group_name(f"Z_2^{n}", n, c),
                                            0, 2 ** (n * c) if n * c < 1000 else None,
                                            log_order=n * c * math.log(2), **base,
                                            action=make_action("sign", leaves=[m])))
    for nl in an.nulls:
        idx = nl["index"]
        records.append(Symmetry("null", True, f"R^{nl['dim']}", nl["dim"], None,
                                [{"name": nl["param"], "index": fmt_index(idx), "dim": None,
                                  "role": "null"}], note=nl["reason"], size=nl["dim"],
                                action=make_action("null", param=nl["param"], index=idx)))
    for c in getattr(an, "centered", []):
        dim = sum(math.prod(pieces[k].shape) // segs[c["leaf"]].size for k, _d, _p in
                  c["producers"])
        ps = [{"name": pieces[k].name, "index": fmt_index(pieces[k].index), "dim": d,
               "role": "translation"} for k, d, _p in c["producers"]]
        records.append(Symmetry("translation", True, f"R^{dim}", dim, None, ps,
                                size=segs[c["leaf"]].size,
                                note="shift along 1 of a space read only by LayerNorms "
                                     "(mean-centering)",
                                action=make_action("center", **c)))
    for ln in an.ln_nulls:
        ps = [{"name": ln["weight"], "index": fmt_index(ln["index"]), "dim": 0,
               "role": "null"}]
        if ln["bias"]:
            ps.append({"name": ln["bias"], "index": ":", "dim": 0, "role": "null"})
        records.append(Symmetry("null", True, f"R^{ln['rows']}", ln["rows"], None, ps,
                                size=ln["rows"], note=ln["reason"],
                                action=make_action(ln.get("action", "ln_null"), **ln)))
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
                                action=make_action("ln_orth", **rot)))
    for sh in getattr(an, "ln_shifts", []):
        records.append(Symmetry(
            "trade", True, "R^1", 1, None,
            [{"name": sh["src"], "index": ":", "dim": 0, "role": "trade"},
             {"name": sh["dst"], "index": ":", "dim": 0, "role": "trade"}],
            note=sh["reason"], size=1, action=make_action("ln_shift", **sh)))
    for tr in an.trades:
        records.append(Symmetry(
            "trade", True, f"R^{tr['dim']}", tr["dim"], None,
            [{"name": tr["src"][0], "index": fmt_index(tr["src"][1]), "dim": 0,
              "role": "trade"}]
            + [{"name": dst if isinstance(dst, str) else dst[0],
                "index": ":" if isinstance(dst, str) else fmt_index(dst[1]), "dim": 0,
                "role": "trade"}
               for _w, dst in tr.get("consumers", [(tr["weight"], tr["dst"])])],
            note=tr["reason"], size=tr["dim"], action=make_action(tr.get("action", "trade"), **tr)))
    for ex in getattr(an, "extra", []):  # symmetries found by detectors beyond the maps
        records.append(Symmetry(ex["kind"], True, ex["group"], ex["dim"], None,
                                params_of([a for m in ex["leaves"] for a in
                                           leaf_index.get(m, [])]), size=ex["size"],
                                note=ex["note"], action=make_action(ex["action"], **ex["data"])))
    if output == "logits" and an.output_linear is not None:
        ol = an.output_linear
        dim = ol["in_features"] + (1 if ol["bias"] else 0)
        ps = [{"name": ol["weight"], "index": ":", "dim": 0, "role": "translation"}]
        if ol["bias"]:
            ps.append({"name": ol["bias"], "index": ":", "dim": 0, "role": "translation"})
        records.append(Symmetry("translation", True, f"R^{dim}", dim, None, ps, level="loss",
                                size=dim, note="softmax translation of the logits",
                                action=make_action("translation", **ol)))
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
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not x.is_meta and \
                not torch.isfinite(x).all():
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
    bufs = dict(model.named_buffers())
    ctx["buffers"] = {n: bufs[n].detach().to(torch.float64) for rp in an.reparams
                      for n in (rp["mean"], rp["var"]) if n in bufs}
    report = SymmetryReport(records, cont, loss, None, None, an.nx, g.method, notes, n_params,
                            context=ctx, unhandled_ops=list(an.unhandled))
    report.gaps = list(dict.fromkeys(an.gaps))
    if an.unhandled or an.gaps:
        report.complete = False
    if an.unhandled:
        report.notes.append("operations without a rule were treated as barriers (no symmetry "
                            "passes through them): " + ", ".join(an.unhandled))
    report.seconds = {"trace": t1 - t0, "classify": t2 - t1}
    an.nx.graph["tracer"] = g.method
    an.nx.graph["symmetries"] = [s.to_dict() for s in records]
    if verify and any(p.is_meta for p in model.parameters()):
        report.notes.append("parameters on the meta device: numerical verification skipped "
                            "(verify a width-reduced twin of the same architecture)")
        report.verification = "skipped: meta device"
        verify = False
    if verify:
        from .verify import verify_report

        verify_report(model, report, jacobian=jacobian, seed=seed)
        if an.unhandled or an.gaps:
            report.complete = False
    report.seconds["total"] = time.perf_counter() - t0
    return report


def symmetry_graph(model: nn.Module, example_inputs, *, tracer: str = "auto"):
    """The networkx symmetry graph of ``model`` (see :func:`find_symmetries`)."""
    return find_symmetries(model, example_inputs, verify=False, tracer=tracer).graph
