"""Cross-check: our permutation groups couple the same layers as Torch-Pruning's groups.

Torch-Pruning (``DependencyGraph().build_dependency`` + ``get_all_groups``) walks the
autograd graph of one forward pass and groups every layer whose channels must be pruned
together: exactly the layers a channel permutation must act on together. Both sides are
reduced to sets of layer names (a parameter held directly by a container module, such as
ConvNeXt's layer scale, counts under its own name) and compared as sets of groups.

Torch-Pruning also makes a group of the output channels of the classifier head; the
function's outputs are not permutable, so groups with no consumer are left out of its side.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from thermanopt.analysis import find_symmetries

sys.path.insert(0, str(Path(__file__).parent))
import _zoo  # noqa: E402

tp = pytest.importorskip("torch_pruning")
pytest.importorskip("torchvision")

MODELS = {"resnet18": False, "resnet50": True, "mobilenet_v3_small": False,
          "efficientnet_b0": True, "convnext_tiny": True}


def _layer(model: nn.Module, parameter: str) -> str:
    """The leaf module owning ``parameter``, or the parameter itself if held by a container."""
    owner, _, _ = parameter.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    return owner if not list(module.children()) else parameter


def _ours(model: nn.Module, inputs: tuple) -> set[frozenset[str]]:
    report = find_symmetries(model, inputs, verify=False)
    return {frozenset(_layer(model, p["name"]) for p in s.parameters)
            for s in report.by_kind("permutation")}


def _torch_pruning(model: nn.Module, inputs: tuple) -> set[frozenset[str]]:
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
    names = {id(p): n for n, p in model.named_parameters()}
    names.update({id(m): n for n, m in model.named_modules()})
    groups = set()
    for group in graph.get_all_groups():
        layers, consumed = set(), False
        for dep, _ in group:
            target = dep.target.module
            has_params = isinstance(target, nn.Parameter) or any(
                True for _ in target.parameters(recurse=False))
            if id(target) in names and has_params:
                layers.add(_layer(model, names[id(target)] + ".weight")
                           if not isinstance(target, nn.Parameter) else names[id(target)])
                consumed |= graph.is_in_channel_pruning_fn(dep.handler)
        if consumed:
            groups.add(frozenset(layers))
    return groups


def _diff(ours: set, theirs: set) -> str:
    fmt = lambda gs: "\n  ".join(sorted(str(sorted(g)) for g in gs))  # noqa: E731
    return (f"only ours ({len(ours - theirs)}):\n  {fmt(ours - theirs)}\n"
            f"only Torch-Pruning ({len(theirs - ours)}):\n  {fmt(theirs - ours)}")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] if slow else []) for n, slow in
             MODELS.items()])
def test_permutation_groups_match_torch_pruning(name):
    case = {c.name: c for c in _zoo.full_cases()}[name]
    model, inputs = case.build(), case.example_inputs()
    theirs = _torch_pruning(model, inputs)
    with torch.no_grad():
        ours = _ours(model, inputs)
    assert theirs, "Torch-Pruning found no group"
    assert ours == theirs, f"{name}: {len(ours)} vs {len(theirs)} groups\n" + _diff(ours, theirs)
