"""The symmetry graph and its union-find with parity."""

import sys
from pathlib import Path

import networkx as nx
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _models import mlp  # noqa: E402

from thermanopt.analysis import symmetry_graph, trace  # noqa: E402
from thermanopt.analysis.symmetry_graph import ORTH, SymmetryAnalysis  # noqa: E402
from thermanopt.analysis.tracing import TracedGraph  # noqa: E402


def test_graph_couples_consecutive_layers():
    g = symmetry_graph(mlp([5, 3, 2]), torch.randn(2, 5), tracer="fx")
    assert isinstance(g, nx.MultiDiGraph)
    und = g.to_undirected()
    assert nx.has_path(und, "param:0.weight", "param:2.weight")
    hidden = [n for n, d in g.nodes(data=True) if d.get("kind") == "axis" and d["size"] == 3
              and not d["fixed"]]
    assert len(hidden) == 1 and set(g.nodes[hidden[0]]["features"]) == {"pdiag", "homog"}


def test_parity_conflict_gives_orthogonal_features():
    an = SymmetryAnalysis(TracedGraph("test", [], []), {})
    a, b = an.new_seg(4), an.new_seg(4)
    an._union_roots(a, b, 0, "same")
    an._union_roots(a, b, 1, "dual")
    assert an.segs[an.find(a)[0]].feat == ORTH


def test_split_for_heads_resolves_leaves():
    an = SymmetryAnalysis(TracedGraph("test", [], []), {})
    s = an.new_seg(12)
    h, d = an.new_seg(3), an.new_seg(4)
    an.unify([s], [h, d], 1, "split")
    leaves = an.leaves([s])
    assert [an.segs[x].size for x, _ in leaves] == [3, 4]
    assert all(p == 1 for _, p in an.leaves([h, d]))
    assert an.segs[leaves[1][0]].copies_of is not None


def test_trace_reports_front_end():
    g = trace(mlp([3, 2, 2]), (torch.randn(1, 3),), "fx")
    assert g.method == "fx" and [n.op for n in g.nodes].count("linear") == 2
