"""A functional copy of a model: the evaluation used by every numerical check.

``model64`` copies the model's *structure* (modules, flags, buffers in the evaluation dtype;
parameters are meta-device placeholders, never copied) with dropout off and train-mode
BatchNorm turned into a pure function of the batch (no buffer updates), so that
``forward(m64, params, inputs)`` is a function of the parameters for ``torch.func``.
:class:`Evaluation` bundles what the group-element checks of one call share: that copy, the
parameters (the model's own tensors when no conversion is needed, read-only by contract),
the inputs and the reference output ``f(x; theta)``, computed once.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .tracing import output_leaves

__all__ = ["parameters64", "model64", "inputs64", "forward", "eval_dtype", "Evaluation"]


def eval_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a large model is checked in: float64 for a float64 model, else float32
    (half-precision rounding would hide wrong claims: such models are checked upcast)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return torch.float64 if dtypes == {torch.float64} else torch.float32


def parameters64(model: nn.Module, dtype: torch.dtype = torch.float64, *,
                 copy: bool = True) -> dict[str, torch.Tensor]:
    """Detached ``dtype`` copies of the model's named parameters (the model is not modified).
    ``copy=False`` returns the model's own (detached) tensors where they already have
    ``dtype``: no memory traffic, and the caller must never write into them."""
    return {n: p.detach().to(dtype, copy=copy) for n, p in model.named_parameters()}


def _placeholder(p: nn.Parameter, dtype: torch.dtype) -> nn.Parameter:
    dt = dtype if p.is_floating_point() else p.dtype
    return nn.Parameter(torch.empty(p.shape, dtype=dt, device="meta"),
                        requires_grad=p.requires_grad)


def _buffer(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return b.detach().to(dtype if b.is_floating_point() else b.dtype, copy=True)


def model64(model: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A copy for functional evaluation (``forward`` passes every parameter): modules and
    private ``dtype`` buffers, parameters replaced by meta-device placeholders (no copy of
    the weights), every module but BatchNorm in eval mode (no dropout, also inside
    attention), train-mode BatchNorm on batch statistics without buffer updates."""
    memo: dict = {id(p): _placeholder(p, dtype) for p in model.parameters()}
    memo.update({id(b): _buffer(b, dtype) for b in model.buffers()})
    m = copy.deepcopy(model, memo)
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


class Evaluation:
    """The model evaluated in ``dtype`` on fixed inputs, for many parameter points.

    ``params`` are the model's parameters in ``dtype`` (shared with the model when it has
    that dtype: read-only), ``reference`` the output at them (one forward pass, cached), and
    :meth:`relative_change` ``||f(x; p) - f(x; theta)|| / ||f(x; theta)||`` (on the
    log-softmax of the outputs for loss-level symmetries) as a 0-dim tensor: no host sync.
    """

    def __init__(self, model: nn.Module, inputs: tuple, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.module = model64(model, dtype)
        self.params = parameters64(model, dtype, copy=False)
        self.inputs = inputs64(inputs, dtype)
        self._reference: torch.Tensor | None = None

    def output(self, params: dict) -> torch.Tensor:
        """``f(x; params)`` without autograd."""
        with torch.no_grad():
            return forward(self.module, params, self.inputs)

    @property
    def reference(self) -> torch.Tensor:
        """``f(x; theta)``, computed on first use."""
        if self._reference is None:
            self._reference = self.output(self.params)
        return self._reference

    def relative_change(self, params: dict, loss: bool = False) -> torch.Tensor:
        """Relative output change at ``params`` (``loss``: of the log-softmax)."""
        base, new = self.reference, self.output(params)
        if loss:
            base, new = torch.log_softmax(base, dim=-1), torch.log_softmax(new, dim=-1)
        return (new - base).norm() / base.norm().clamp_min(torch.finfo(base.dtype).tiny)
