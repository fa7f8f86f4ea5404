"""Export of the symmetry graph as a networkx multigraph.

Nodes: ``op:<name>`` (operations), ``param:<name>`` (parameters), ``axis:<id>`` (coupled
spaces, with ``size``, ``fixed`` and the allowed ``features``). Edges: ``same`` / ``dual``
couplings between axes (the parity of the union-find), ``perm`` links, and ``param`` edges
from a parameter to the spaces its axes belong to.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

__all__ = ["build_graph"]


def build_graph(an: Any, piece_axes: list, leaves_used: set) -> nx.MultiDiGraph:
    """The networkx view of a finalised :class:`SymmetryAnalysis`."""
    g = nx.MultiDiGraph()
    for name, op, module in an.op_nodes:
        g.add_node(f"op:{name}", kind="op", op=op, module=module)
    for pname, shape in an.param_shapes.items():
        if pname in an.param_of.values():
            g.add_node(f"param:{pname}", kind="param", shape=tuple(shape))
    for x, y, coupling, why in an.edges:
        g.add_edge(f"axis:{x}", f"axis:{y}", key=why, coupling=coupling, op=why)
    for k, (pc, dims) in enumerate(zip(an.pieces, piece_axes)):
        for d, lf in enumerate(dims):
            for pos, (leaf, _p) in enumerate(lf):
                g.add_edge(f"param:{pc.name}", f"axis:{leaf}", key=f"{k}:{d}:{pos}",
                           coupling="param")
    for leaf in leaves_used:
        s = an.segs[leaf]
        g.add_node(f"axis:{leaf}", kind="axis", size=s.size, fixed=s.fixed,
                   features=tuple(sorted(s.feat)))
    return g
