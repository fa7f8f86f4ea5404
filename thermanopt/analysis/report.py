"""Symmetry records and the report of :func:`~thermanopt.analysis.find_symmetries`.

A :class:`Symmetry` is one group acting on a set of parameter axes (its ``action`` is an
:class:`~thermanopt.analysis.actions.Action`); a :class:`SymmetryReport` lists them with the
total continuous dimension (function and loss level), the Jacobian nullity when verified,
``complete`` when the two agree and no operation lacked a rule (``unhandled_ops``), and
prints as a table, JSON or a figure (Ziyin, Xu & Chuang, arXiv 2505.12387, §2).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .actions import Action

__all__ = ["Symmetry", "SymmetryReport", "fmt_index"]


def fmt_index(index: tuple) -> str:
    """``(slice(0, 4),)`` -> ``"0:4"``; the whole parameter -> ``":"``."""
    if not index:
        return ":"
    return ",".join(f"{s.start}:{s.stop}" if isinstance(s, slice) else str(s) for s in index)


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
    action: Action | None = field(default=None, repr=False)
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

    unhandled_ops: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)

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
            "unhandled_ops": self.unhandled_ops,
            "gaps": self.gaps,
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
        if self.unhandled_ops:
            lines.append("operations without a rule (barriers): " + ", ".join(
                self.unhandled_ops))
        lines.extend(f"gap: {g}" for g in self.gaps)
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
