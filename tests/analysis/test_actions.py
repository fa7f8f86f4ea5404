"""Symmetry actions as classes, the joint verification of large models and the Jacobian
nullity check."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _models import MHAModel, mlp  # noqa: E402

from thermanopt.analysis import find_symmetries  # noqa: E402
from thermanopt.analysis.actions import (  # noqa: E402
    Monomial,
    apply_axis,
    apply_monomial,
    random_monomial,
)
from thermanopt.analysis.nullity import rank_cut  # noqa: E402
from thermanopt.analysis.verify import (  # noqa: E402
    apply_symmetry,
    make_claim,
    random_element,
    verify_jointly,
)


@pytest.mark.parametrize("kind", ["perm", "sign", "pdiag", "homog"])
def test_monomial_fast_path_equals_the_dense_product(kind):
    gen = torch.Generator().manual_seed(3)
    m = random_monomial(kind, 5, gen)
    t = torch.randn(2, 5, 3, dtype=torch.float64)
    dense = apply_axis(t, [2, 5, 3], 1, None, m.dense())
    assert torch.allclose(apply_monomial(t, [2, 5, 3], 1, m.idx, m.scale), dense)


@pytest.mark.parametrize("kind", ["perm", "sign", "pdiag", "homog"])
def test_monomial_skips_exactly_its_identity_part(kind):
    """Permutations skip the product (unit scales), diagonals the indexing (identity
    index): the result is still the dense product."""
    m = random_monomial(kind, 6, torch.Generator().manual_seed(4))
    t = torch.randn(3, 6, 2, dtype=torch.float64)
    dense = apply_axis(t, [3, 6, 2], 1, None, m.dense())
    fast = apply_monomial(t, [3, 6, 2], 1, *m.parts())
    assert torch.allclose(fast, dense)


@pytest.mark.parametrize("kind", ["permutation", "sign_flip", "rescale", "scale"])
def test_claimed_monomial_group_acts_like_its_dense_matrix(kind):
    """A user claim on a permutation/sign/diagonal group draws a sparse element; acting
    with it equals acting with the dense matrix (``M`` and the inverse ``M^{-T}``)."""
    claim = make_claim(kind, 5, [("a", 1, 0), ("b", 0, 1)])
    element = claim.action.random_element(claim, torch.Generator().manual_seed(2))
    assert isinstance(element, Monomial)
    params = {"a": torch.randn(3, 5, dtype=torch.float64),
              "b": torch.randn(5, 4, dtype=torch.float64)}
    sparse, dense = dict(params), dict(params)
    claim.action.apply(sparse, {}, claim, element)
    claim.action.apply(dense, {}, claim, element.dense())
    m = element.dense()
    assert torch.allclose(dense["a"], params["a"] @ m.T)
    assert torch.allclose(dense["b"], torch.linalg.inv(m).T @ params["b"])
    for k in params:
        assert torch.allclose(sparse[k], dense[k]), k


def test_actions_never_write_into_the_parameters_they_are_given():
    """Every symmetry of a model with sliced parameters (the fused q/k/v projection of
    ``nn.MultiheadAttention``) moves a shallow copy: the input tensors keep their values
    and version counters, so the model's own tensors can be used without copying."""
    torch.manual_seed(0)
    model = MHAModel().double()
    r = find_symmetries(model, torch.randn(2, 5, 8, dtype=torch.float64), verify=False)
    params = {n: p.detach() for n, p in model.named_parameters()}
    before = {n: (p.clone(), p._version) for n, p in params.items()}
    sliced = 0
    for k, s in enumerate(r.symmetries):
        moved = apply_symmetry(params, r, s, random_element(s, k))
        assert any(not torch.equal(moved[n], params[n]) for n in params), s.group
        sliced += any(p["index"] != ":" for p in s.parameters)
    assert sliced
    for n, p in params.items():
        assert torch.equal(p, before[n][0]) and p._version == before[n][1], n


@pytest.mark.parametrize("kind,n", [("perm", 2), ("sign", 1), ("perm", 3), ("sign", 2)])
def test_random_discrete_elements_are_never_the_identity(kind, n):
    for seed in range(30):
        m = random_monomial(kind, n, torch.Generator().manual_seed(seed))
        assert not torch.equal(m.dense(), torch.eye(n, dtype=torch.float64))


def test_every_symmetry_has_a_class_with_the_interface():
    r = find_symmetries(mlp([4, 6, 3]).double(), torch.randn(5, 4, dtype=torch.float64),
                        verify=False)
    for s in r.symmetries:
        assert s.action.kind and callable(s.action.apply) and callable(s.action.charge)
        el = random_element(s, 0)
        assert not isinstance(el, Monomial)  # the public element is a dense matrix


def test_joint_verification_bisects_to_the_wrong_claim():
    """Composing every symmetry costs one forward pass; a wrong claim among them is found by
    bisection and gets its own error, the right ones stay below tolerance."""
    model = mlp([4, 6, 5, 3]).double()
    r = find_symmetries(model, torch.randn(7, 4, dtype=torch.float64), verify=False)
    wrong = make_claim("rescale", 5, [("2.weight", 0, 0)])  # no compensating reader
    syms = list(r.symmetries) + [wrong]
    errors = verify_jointly(model, r, syms, seed=1)
    assert errors[len(syms) - 1] > 1e-3
    assert all(errors[i] < 1e-10 for i in range(len(syms) - 1))


def test_rank_cut_takes_the_gap_above_a_float32_floor():
    s = torch.tensor([1.0, 0.5, 1e-3, 3e-8, 2e-8, 1e-9], dtype=torch.float64)
    rank, floor, gap = rank_cut(s)
    assert rank == 3 and floor == pytest.approx(3e-8) and gap > 1e3
    assert rank_cut(torch.tensor([1.0, 0.3, 1e-14]))[0] == 2


def test_relu_mlp_at_default_init_is_not_undersampled():
    """8-16-16-4 at PyTorch's default init (a seed without dead units): 32 rescale
    directions; rows are added until the nullity is unchanged over two chunks, so the
    check no longer stops at an undersampled 34-53."""
    torch.manual_seed(1)
    r = find_symmetries(mlp([8, 16, 16, 4]), torch.randn(3, 8), output="raw")
    det = r.jacobian_details["details"]
    assert det["history"][-1] == det["history"][-2] == det["history"][-3]
    assert det["rows"] >= 1.5 * r.n_parameters
    assert r.continuous_dim == 32 and r.jacobian_nullity == 32 and r.complete is True


class Float32RoundTrip(nn.Module):
    """A float64 MLP whose hidden layer is computed in float32 (as RMSNorm upcasts do)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).float().double())


def test_float32_floor_is_detected_and_symmetries_kept():
    torch.manual_seed(0)
    r = find_symmetries(Float32RoundTrip().double(), torch.randn(5, 4, dtype=torch.float64),
                        output="raw")
    assert r.jacobian_nullity == r.continuous_dim == 6
    assert r.jacobian_details["details"]["floor"] > 1e-10
    assert any("float32" in n for n in r.notes)
