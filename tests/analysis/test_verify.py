"""Verification catches wrong claims; correct claims pass."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _models import HandAttention, mlp  # noqa: E402

from thermanopt.analysis import find_symmetries  # noqa: E402
from thermanopt.analysis.actions import Action  # noqa: E402
from thermanopt.analysis.evaluation import Evaluation, eval_dtype  # noqa: E402
from thermanopt.analysis.report import Symmetry  # noqa: E402
from thermanopt.analysis.verify import (  # noqa: E402
    apply_symmetry,
    make_claim,
    verify_jointly,
    verify_symmetry,
    verify_tol,
)


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


# ---------------------------------------------------------------- joint checks (large models)
def _tiny_gpt2(n_layer: int = 2, **kw):
    """A GPT-2 as Hugging Face builds it from a config: train mode, dropout 0.1 (attention
    dropout reads the module's own flag)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(use_cache=False, vocab_size=50, n_positions=16, n_embd=16,
                                  n_layer=n_layer, n_head=2, bos_token_id=0, eos_token_id=0,
                                  **kw)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    return model, (torch.randint(0, 50, (2, 12)),)


def _exact(report):
    return [s for s in report.symmetries if not s.approximate]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_joint_check_of_a_tiny_gpt2_passes(dtype):
    """One composed element of every exact symmetry of a train-mode GPT-2 (residual
    permutation, LayerNorm rescales and sign flips, MLP permutations, mean-centering
    shifts) leaves the logits unchanged up to round-off of the evaluation dtype."""
    model, x = _tiny_gpt2()
    assert model.training
    r = find_symmetries(model, x, verify=False)
    syms = _exact(r)
    assert {s.action.kind for s in syms} >= {"perm", "pdiag", "sign", "center"}
    for seed in range(3):
        errors = verify_jointly(model, r, syms, seed=seed, dtype=dtype)
        assert max(errors.values()) < verify_tol(dtype) / 10, (seed, errors)


def test_joint_check_of_a_tiny_gpt2_bisects_to_an_injected_wrong_claim():
    """A plausible wrong claim (the residual stream permuted in the embeddings only, not in
    the LayerNorm gains) composed with the true symmetries: the composite fails and the
    bisection pins the error on the wrong claim alone."""
    model, x = _tiny_gpt2()
    r = find_symmetries(model, x, verify=False)
    wrong = make_claim("permutation", 16, [("transformer.wte.weight", 1, 0),
                                           ("transformer.wpe.weight", 1, 0)])
    syms = _exact(r)
    syms.insert(len(syms) // 2, wrong)
    errors = verify_jointly(model, r, syms, seed=0)
    k = syms.index(wrong)
    assert errors[k] > 1e-2
    assert all(e < verify_tol(torch.float32) for i, e in errors.items() if i != k)


def test_evaluation_copy_has_dropout_off():
    """Independent reference: the logits of the model itself in eval mode. The evaluation
    copy of a train-mode model (dropout 0.5) reproduces them, twice (deterministic), and
    leaves the model in train mode."""
    model, x = _tiny_gpt2(resid_pdrop=0.5, attn_pdrop=0.5, embd_pdrop=0.5)
    ev = Evaluation(model, x, torch.float32)
    out = ev.output(ev.params)
    assert torch.equal(out, ev.output(ev.params)) and model.training
    with torch.no_grad():
        ref = model.eval()(*x).logits
    assert torch.allclose(out, ref.reshape(out.shape), atol=1e-6)


def test_tolerance_is_scaled_to_the_evaluation_dtype():
    assert verify_tol(torch.float64) == 1e-6
    assert verify_tol(torch.float32) == pytest.approx(1000 * 2.0 ** -23)
    assert eval_dtype(nn.Linear(2, 2)) == torch.float32
    assert eval_dtype(nn.Linear(2, 2).double()) == torch.float64
    assert eval_dtype(nn.Linear(2, 2).half()) == torch.float32  # half is checked upcast


def test_large_model_is_verified_in_its_own_dtype_without_touching_it():
    """Above 1e5 parameters the composite check runs in the model's dtype on the model's
    own tensors: no parameter changes (values and version counters), the report says so."""
    model, x = _tiny_gpt2(n_layer=1, n_inner=4096)
    assert sum(p.numel() for p in model.parameters()) > 100_000
    before = {n: (p.detach().clone(), p._version) for n, p in model.named_parameters()}
    r = find_symmetries(model, x, jacobian=False)
    assert "float32" in r.verification
    assert all(s.verified for s in r.symmetries)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n][0]) and p._version == before[n][1], n


class _InPlace(Action):
    """An action that breaks the contract: it writes into the tensor it was given."""

    kind = "inplace"

    def apply(self, params, ctx, sym, element):
        params["0.weight"].mul_(1.0)


def test_an_action_writing_in_place_is_an_error():
    model = mlp([3, 4, 2])
    r = find_symmetries(model, torch.randn(5, 3), verify=False)
    bad = Symmetry("custom", False, "G", 0, None, [], action=_InPlace())
    params = {n: p.detach() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="in place"):
        apply_symmetry(params, r, bad, None)


# ---------------------------------------------------------------- pytree outputs
def test_model_output_pytree_is_verified():
    """A BERT ``ModelOutput`` (hidden states and pooled output): the checked vector is the
    concatenation of its floating leaves (independent: built by hand from the fields); a
    true symmetry passes, a wrong claim fails."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=13, hidden_size=8, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=12,
                                  max_position_embeddings=6)
    model = transformers.BertModel(cfg).eval()
    x = (torch.randint(0, 13, (2, 6)),)
    ev = Evaluation(model, x, torch.float64)
    with torch.no_grad():
        out = torch.func.functional_call(ev.module, ev.params, x)
    hand = torch.cat([out.last_hidden_state.reshape(-1), out.pooler_output.reshape(-1)])
    assert torch.equal(ev.reference, hand)
    r = find_symmetries(model, x, output="raw", verify=False)
    perm = [s for s in r.symmetries if s.kind == "permutation"][0]
    assert verify_symmetry(model, r, perm, _evaluation=ev) < 1e-12
    wrong = make_claim("rescale", 12, [("encoder.layer.0.intermediate.dense.weight", 0, 0)])
    assert verify_symmetry(model, r, wrong, _evaluation=ev) > 100 * verify_tol(torch.float64)
