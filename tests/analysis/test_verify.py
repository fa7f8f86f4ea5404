"""Verification catches wrong claims; correct claims pass."""

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _models import HandAttention, mlp  # noqa: E402

from thermanopt.analysis import find_symmetries  # noqa: E402
from thermanopt.analysis.verify import make_claim, verify_symmetry  # noqa: E402


def test_permutation_mixing_heads_is_caught():
    torch.manual_seed(0)
    m = HandAttention(d=8, h=2)
    x = torch.randn(2, 5, 8)
    r = find_symmetries(m, x, tracer="fx", verify=False)
    wrong = make_claim("permutation", 8, [("q.weight", 0, 0), ("q.bias", 0, 0),
                                          ("k.weight", 0, 0), ("k.bias", 0, 0),
                                          ("v.weight", 0, 0), ("v.bias", 0, 0),
                                          ("o.weight", 1, 1)])
    assert verify_symmetry(m, r, wrong, seed=3) > 1e-3
    # the same permutation within one head block only is a true symmetry
    right = [s for s in r.symmetries if s.kind == "permutation" and s.group == "S_2"][0]
    assert verify_symmetry(m, r, right) < 1e-12


def test_rescale_across_tanh_is_caught():
    torch.manual_seed(0)
    m = mlp([6, 5, 3], act=nn.Tanh)
    r = find_symmetries(m, torch.randn(4, 6), tracer="fx", verify=False)
    claim = [("0.weight", 0, 0), ("0.bias", 0, 0), ("2.weight", 1, 1)]
    assert verify_symmetry(m, r, make_claim("rescale", 5, claim)) > 1e-3
    m2 = mlp([6, 5, 3], act=nn.ReLU)
    r2 = find_symmetries(m2, torch.randn(4, 6), tracer="fx", verify=False)
    assert verify_symmetry(m2, r2, make_claim("rescale", 5, claim)) < 1e-12


def test_jacobian_reports_under_reporting():
    """Hide a true symmetry from the report: the Jacobian check must say so."""
    torch.manual_seed(0)
    m = mlp([6, 4, 3])
    r = find_symmetries(m, torch.randn(3, 6), tracer="fx", verify=False)
    from thermanopt.analysis.verify import verify_report

    r.symmetries = [s for s in r.symmetries if s.kind != "rescale"]
    r.continuous_dim = 0
    verify_report(m, r)
    assert r.jacobian_nullity == 4 and r.complete is False
    assert any("under-reporting" in n for n in r.notes)
