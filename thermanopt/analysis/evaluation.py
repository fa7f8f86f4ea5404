"""A float64 functional copy of a model: the evaluation used by every numerical check.

``model64`` deep-copies the model in float64 with dropout off and train-mode BatchNorm
turned into a pure function of the batch (no buffer updates), so that
``forward(m64, params, inputs)`` is a function of the parameters for ``torch.func``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .tracing import output_leaves

__all__ = ["parameters64", "model64", "inputs64", "forward"]


def parameters64(model: nn.Module, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Detached float64 copies of the model's named parameters (the model is not modified)."""
    return {n: p.detach().to(dtype).clone() for n, p in model.named_parameters()}


def model64(model: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A float64 deep copy for functional evaluation: every module but BatchNorm in eval mode
    (no dropout, also inside attention), train-mode BatchNorm on batch statistics without
    buffer updates."""
    m = copy.deepcopy(model).to(dtype)
    for mod in m.modules():
        if not isinstance(mod, nn.modules.batchnorm._BatchNorm):
            # dropout modules, and modules that read their own flag (attention dropout in
            # scaled_dot_product_attention, stochastic depth): deterministic
            mod.training = False
        elif mod.training:
            # batch statistics without buffer updates (pure function for torch.func)
            mod.track_running_stats = False
            mod.running_mean = mod.running_var = mod.num_batches_tracked = None
    return m


def inputs64(inputs: tuple, dtype: torch.dtype = torch.float64) -> tuple:
    """Floating-point inputs in float64 (or ``dtype``; others unchanged)."""
    return tuple(x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point()
                 else x for x in inputs)


def forward(m64: nn.Module, params: dict, inputs: tuple) -> torch.Tensor:
    """The model output at ``params``: one tensor, or the flattened floating-point leaves of a
    pytree output (tuples, dicts, dataclasses, ``ModelOutput``)."""
    out = torch.func.functional_call(m64, params, inputs)
    leaves = output_leaves(out)
    if len(leaves) == 1:
        return leaves[0]
    return torch.cat([o.reshape(-1) for o in leaves if o.is_floating_point()])
