"""Symmetry analysis of real architectures (issue 13): every model family, at every size.

- Full-size models (torchvision, timm, Hugging Face, recurrent, tied): ``find_symmetries``
  does not raise and lists its ``unhandled_ops``; a report with unhandled ops is incomplete.
- Tiny instances (<= 20k parameters, float64) of the same architectures: the continuous
  dimension equals the Jacobian nullity computed here independently (``_nullity``), or the
  report says ``complete: False`` and names the gap; every permutation and sign-flip group
  maps the function to itself under a random non-identity element, checked here on fresh
  inputs.
- LLaMA-7B/70B-shaped models on the meta device: a report (graph, groups, dimensions)
  without materialising the weights, in a subprocess whose peak memory is bounded.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from thermanopt.analysis import find_symmetries

sys.path.insert(0, str(Path(__file__).parent))
import _zoo  # noqa: E402
from _nullity import output_vector, stable_nullity  # noqa: E402

DISCRETE = ("permutation", "sign_flip")
EXACT_TOL = 1e-8  # float64 relative output change of an exact discrete symmetry
FLOAT32_TOL = 1e-6  # the same for models that round-trip through float32 inside
META_RSS_GIB = 6.0  # 7B in float32 is 27 GB: any materialisation blows far past this


def _param(case: _zoo.Case):
    marks = [pytest.mark.slow] if case.slow else []
    return pytest.param(case, id=case.name, marks=marks)


def _need(case: _zoo.Case) -> None:
    if _zoo.requires(case):
        pytest.importorskip(_zoo.requires(case))


def _output(case: _zoo.Case) -> str:
    """``raw`` for encoders (hidden states), ``logits`` for classifiers and LM heads."""
    return "raw" if case.family in ("bert",) else "logits"


def _kinds(report) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in report.symmetries:
        out[s.kind] = out.get(s.kind, 0) + 1
    return out


# ----------------------------------------------------------------------------------------
# full-size models


@pytest.mark.parametrize("case", [_param(c) for c in _zoo.full_cases()])
def test_full_size_model_is_analysed(case):
    """No error; ``unhandled_ops`` is listed (and empty); incomplete whenever it is not."""
    _need(case)
    model = case.build()
    # the Jacobian check of full-size models (sampled, minutes at ~1e6 parameters) is
    # the tiny twins' job below; here: no error, every op has a rule, groups verify
    report = find_symmetries(model, case.example_inputs(), verify=case.verify,
                             output=_output(case), jacobian=False)
    print(f"{case.name}: {_kinds(report)} continuous_dim={report.continuous_dim} "
          f"complete={report.complete} unhandled={report.unhandled_ops}")
    assert isinstance(report.unhandled_ops, list)
    assert all(isinstance(op, str) for op in report.unhandled_ops)
    if report.unhandled_ops:
        assert report.complete is False
    assert report.continuous_dim > 0 and report.symmetries
    assert not [s.group for s in report.symmetries if s.verified is False]
    assert report.unhandled_ops == [], f"{case.name}: no rule for {report.unhandled_ops}"


@pytest.mark.parametrize("case", [_param(c) for c in _zoo.full_cases()
                                  if c.family in ("resnet", "mobilenet_v3", "timm_convnext",
                                                  "lstm", "gru", "tied", "groupnorm")])
def test_full_size_model_has_discrete_groups(case):
    """Hidden units of every family can be permuted: the report has permutation groups."""
    _need(case)
    report = find_symmetries(case.build(), case.example_inputs(), verify=False,
                             output=_output(case))
    assert report.by_kind("permutation"), f"{case.name}: no permutation group"


@pytest.mark.parametrize("case", [_param(c) for c in _zoo.full_cases()
                                  if c.family in ("lstm", "gru", "tied")])
def test_full_size_report_says_whether_it_is_complete(case):
    """Above 1e5 parameters a verified report still checks itself (``complete`` not None)."""
    report = find_symmetries(case.build(), case.example_inputs(), output=_output(case))
    assert report.n_parameters > 100_000
    assert report.complete is not None, f"{case.name}: no completeness check ran"
    if report.complete is False:
        assert report.unhandled_ops or report.notes, f"{case.name}: gap not named"


# ----------------------------------------------------------------------------------------
# tiny instances: exactness


@functools.cache
def _tiny_reference(name: str):
    """(case, model, nullity) of one tiny case; the nullity is the expensive part."""
    case = {c.name: c for c in _zoo.tiny_cases()}[name]
    _need(case)
    model = case.build()
    return case, model, stable_nullity(model, case.inputs)


TINY = [c.name for c in _zoo.tiny_cases()]


@pytest.mark.parametrize("name", TINY)
def test_tiny_instance_is_small(name):
    case = {c.name: c for c in _zoo.tiny_cases()}[name]
    _need(case)
    model = case.build()
    assert _zoo.n_parameters(model) <= 20_000
    assert all(p.dtype == torch.float64 for p in model.parameters())


# The tiny MobileNetV3's nullity is ill-conditioned: saturating hardsigmoid/hardswish units
# of its squeeze-excitation blocks are rarely excited, so the count depends on the input
# draw (the independent reference gives 166 with one seed and 184 with another; the
# library's own check 181-185). Known gap, kept visible: strict, so a fix shows up.
_ILL_CONDITIONED = pytest.mark.xfail(
    strict=True, reason="nullity of the tiny MobileNetV3 depends on the input draw"
)
TINY_EXACT = [
    pytest.param(n, marks=_ILL_CONDITIONED) if n == "tiny_mobilenet_v3_small" else n
    for n in TINY
]


# Families whose tiny twin every rule already explains: a regression to a named gap fails.
EXACT_FAMILIES = ("tiny_resnet18", "tiny_resnet50", "tiny_gpt2", "tiny_lstm", "tiny_gru",
                  "tiny_tied_lm", "tiny_groupnorm_cnn")


@pytest.mark.parametrize("name", TINY_EXACT)
def test_tiny_continuous_dimension_is_the_jacobian_nullity(name):
    """Equal to the independent nullity, or ``complete: False`` with the gap named.

    The gap counts as named when ops without a rule (``unhandled_ops``) stand in the way,
    or when ``report.gaps`` names it: a conservative rule's known blind spot, or the
    null directions of the Jacobian no reported symmetry explains, with the parameters
    that carry them (a bare count does not name a gap).
    """
    case, model, ref = _tiny_reference(name)
    report = find_symmetries(model, case.example_inputs(2), output=_output(case))
    msg = (f"{name}: reported {report.continuous_dim} ({_kinds(report)}), nullity "
           f"{ref.nullity} over {ref.rows} rows (history {ref.history}, floor {ref.floor:.1e})"
           f"; complete={report.complete}, library nullity {report.jacobian_nullity}, "
           f"unhandled {report.unhandled_ops}, notes {report.notes}")
    assert ref.history[-1] == ref.history[-2], msg  # the reference itself has settled
    assert report.continuous_dim <= ref.nullity, "over-reported: " + msg
    if name in EXACT_FAMILIES:
        assert report.complete is True and report.continuous_dim == ref.nullity, msg
    if report.jacobian_nullity is not None:
        assert report.jacobian_nullity == ref.nullity, "library nullity differs: " + msg
    if report.unhandled_ops:  # a named barrier: the gap may stay, flagged
        assert report.complete is False, "unhandled ops but not flagged: " + msg
        return
    if report.continuous_dim < ref.nullity:  # under-reported: only with the gap named
        assert report.complete is False, "under-reported but not flagged: " + msg
        assert report.gaps, "under-reported without a named gap: " + msg
        named = (" carried by ", "GroupNorm", "grouped")
        assert any(any(w in g for w in named) for g in report.gaps), msg
        return
    # no barrier: every direction is within reach of the rules; a note that only counts
    # the missing dimensions ("under-reporting: ...") does not name them
    assert report.complete is not None, msg
    assert report.continuous_dim == ref.nullity, "under-reported: " + msg
    assert report.complete is True, msg


def _non_identity(element: torch.Tensor) -> bool:
    eye = torch.eye(element.shape[-1], dtype=element.dtype).expand_as(element)
    return not torch.equal(element, eye)


def _discrete_error(model, report, sym, inputs: tuple, seed: int) -> float:
    """Relative output change under a random non-identity element of ``sym``."""
    from thermanopt.analysis.verify import apply_symmetry, random_element

    gen = torch.Generator().manual_seed(seed)
    element = random_element(sym, gen)
    assert _non_identity(element), f"{sym.group}: identity drawn"
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    moved = apply_symmetry(params, report, sym, element)
    assert any(not torch.equal(params[n], moved[n]) for n in params), "parameters unchanged"
    with torch.no_grad():
        base = output_vector(functional_call(model, params, inputs))
        new = output_vector(functional_call(model, moved, inputs))
    return float((new - base).norm() / base.norm())


@pytest.mark.parametrize("name", TINY)
def test_tiny_discrete_groups_verify(name):
    """Each permutation / sign-flip group fixes the function (fresh inputs, 2 elements)."""
    case, model, _ = _tiny_reference(name)
    report = find_symmetries(model, case.example_inputs(2), verify=False,
                             output=_output(case))
    groups = [s for s in report.symmetries if s.kind in DISCRETE and s.size > 1]
    inputs = case.example_inputs(4, seed=7)
    tol = FLOAT32_TOL if case.float32_inside else EXACT_TOL
    for sym in groups:
        for seed in (1, 2):
            err = _discrete_error(model, report, sym, inputs, seed)
            assert err < tol, f"{name}: {sym.kind} {sym.group} changes f by {err:.2e}"


@pytest.mark.parametrize("name", ["tiny_resnet18", "tiny_gpt2", "tiny_lstm"])
def test_tiny_families_have_discrete_groups(name):
    case, model, _ = _tiny_reference(name)
    report = find_symmetries(model, case.example_inputs(2), verify=False,
                             output=_output(case))
    assert report.by_kind("permutation"), f"{name}: no permutation group"


# ----------------------------------------------------------------------------------------
# meta device: any size

_META_SCRIPT = """
import json, resource, sys, time
import torch
sys.path[:0] = {paths!r}
import _torchvision_shim  # transformers imports torchvision when it is installed
_torchvision_shim.install()
import _zoo
from thermanopt.analysis import find_symmetries
case = {{c.name: c for c in _zoo.meta_cases()}}[{name!r}]
model = case.build()
t = time.perf_counter()
r = find_symmetries(model, case.example_inputs(), verify=False)
print(json.dumps({{
    "seconds": time.perf_counter() - t,
    "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "n_parameters": r.n_parameters,
    "continuous_dim": r.continuous_dim,
    "permutation": len(r.by_kind("permutation")),
    "kinds": sorted({{s.kind for s in r.symmetries}}),
    "graph_nodes": r.graph.number_of_nodes() if r.graph is not None else 0,
    "unhandled": r.unhandled_ops,
    "meta": all(p.is_meta for p in model.parameters()),
}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in _zoo.meta_cases()])
def test_meta_device_llama(name):
    """7B/70B shapes: graph, groups and dimensions; weights never materialised."""
    pytest.importorskip("transformers")
    root = Path(__file__).resolve().parents[2]
    paths = [str(root), str(Path(__file__).parent), str(root / "benchmarks")]
    code = _META_SCRIPT.format(paths=paths, name=name)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=900, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(name, out)
    expected = 6.7e9 if "7b" in name else 6.9e10
    assert abs(out["n_parameters"] - expected) / expected < 0.05
    assert out["meta"] and out["rss_gib"] < META_RSS_GIB, out
    assert out["graph_nodes"] > 0 and out["permutation"] > 0 and out["continuous_dim"] > 0
    assert out["unhandled"] == [], out
