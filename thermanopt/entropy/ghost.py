"""Per-sample gradient norms without per-sample gradients ("ghost norms").

For a loss ``L = mean_i ell_i`` of independent samples, the gradient of ``ell_i`` with
respect to an output ``z_i`` of a layer is ``d_i = N dL/dz_i``: one ordinary backward pass
gives every ``d_i``. A layer whose parameter gradient is a sum over the sample's positions
``t`` of products of its input and ``d_it`` then has a per-sample squared norm computable
from inputs and ``d_i`` alone (Goodfellow 2015, "Efficient per-example gradient
computations"; Li et al. 2022, "ghost clipping")::

    Linear     z_t = W a_t + b:   ||G_i||^2 = sum_{t,s} (a_it . a_is)(d_it . d_is)
                                  (or ||sum_t d_it a_it^T||^2 materialised), ||sum_t d_it||^2
    LayerNorm  z_t = xhat_t * w + b:  ||sum_t xhat_it * d_it||^2, ||sum_t d_it||^2
    Embedding  z_t = E[k_t]:      ||G_i||^2 = sum_{t,s} [k_it = k_is] (d_it . d_is)
    MultiheadAttention (self-attention, packed in-projection): its in- and out-projections
               are Linear maps over the sequence, in the layouts of torch's
               ``multi_head_attention_forward``

With a diagonal preconditioner ``Lambda`` each squared norm is ``sum Lambda * G_i * G_i``.
Every quantity is a torch expression of the recorded inputs and output gradients, so the
result is differentiable again (a training step on it is a double backward).

Linear, LayerNorm and Embedding rules take the first dimension of the recorded input as
the sample dimension (a sequence-first tensor whose length equals ``N`` cannot be told
apart from a sample-first one); the attention rule checks its layouts.

Rules are looked up by module type through the method resolution order
(:func:`ghost_rule`, :func:`register_ghost_rule`): a subclass of ``nn.Linear`` gets the
Linear rule. :func:`ghost_plan` builds a :class:`GhostPlan` when rules own every trainable
parameter of a model.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

__all__ = [
    "GhostRule",
    "GhostPlan",
    "ghost_plan",
    "ghost_rule",
    "register_ghost_rule",
    "linear_sq_sum",
]

Lams = Mapping[str, torch.Tensor | None]


class _Call(NamedTuple):
    """One recorded call: its (first) input, output and their versions at record time."""

    inp: Any
    out: Any
    versions: tuple


def _version(t: Any) -> Any:
    return t._version if isinstance(t, torch.Tensor) else None


def _unchanged(*calls: _Call) -> bool:
    """No recorded tensor was modified in place after it was recorded."""
    return all(
        (_version(c.inp), _version(c.out)) == c.versions
        and isinstance(c.inp, torch.Tensor)
        and isinstance(c.out, torch.Tensor)
        for c in calls
    )


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sum x * y`` of two tensors of one shape as one ``dot`` (one op, two in its backward)."""
    return torch.dot(x.reshape(-1), y.reshape(-1))


def _weighted_sq(g: torch.Tensor, lam: torch.Tensor | None) -> torch.Tensor:
    """``sum lam * g * g`` over all entries (``lam = None``: identity; broadcast over the
    leading sample dimension)."""
    return _dot(g, g if lam is None else g * lam)


class _Gram(torch.autograd.Function):
    """Batched Gram matrices ``a_i a_i^T`` of ``a`` with shape ``(N, T, k)``.

    The backward is ``(G_i + G_i^T) a_i``: one batched product instead of the two (one per
    factor) and the sum of two ``(N, T, k)`` gradients that autograd makes of
    ``bmm(a, a^T)``. It is written with torch ops, so it is differentiable again. (The
    ``forward(ctx, ...)`` form: ``apply`` then skips a signature binding per call.)
    """

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return torch.bmm(a, a.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return torch.bmm(grad + grad.transpose(1, 2), a)


def linear_sq_sum(a: torch.Tensor, d: torch.Tensor, lams: Lams) -> torch.Tensor:
    """``sum_i ||G_i||_Lambda^2 + ||b_i||_Lambda^2`` of a linear map over its samples (0-d).

    ``a`` is ``(N, T, in)`` (inputs), ``d`` is ``(N, T, out)`` (per-sample output gradients),
    ``G_i = sum_t d_it a_it^T`` and ``b_i = sum_t d_it``. ``lams`` maps ``"weight"`` and/or
    ``"bias"`` (the trainable ones) to their diagonal ``Lambda`` or ``None``. Without
    ``Lambda`` the weight term is ``sum_i sum_{t,s} (a_it . a_is)(d_it . d_is)`` when the two
    ``T x T`` Gram matrices are smaller than ``G_i`` (``T^2 <= in * out``; for ``T = 1``,
    ``sum_i ||a_i||^2 ||d_i||^2``), else ``G_i`` is formed. Without any ``Lambda`` the bias
    is the weight of a constant input 1: both terms are
    ``sum_i sum_{t,s} (a_it . a_is + 1)(d_it . d_is)``.
    """
    terms = []
    has_bias = "bias" in lams
    lam = lams.get("weight")
    gram = a.shape[1] == 1 or a.shape[1] ** 2 <= a.shape[2] * d.shape[2]
    if "weight" in lams and lam is None and gram:
        if a.shape[1] == 1:  # G_i = d_i a_i^T is rank one
            ka, kd = (a * a).sum((1, 2)), (d * d).sum((1, 2))
        else:
            ka, kd = _Gram.apply(a), _Gram.apply(d)
        fold = has_bias and lams["bias"] is None
        terms.append(_dot(ka + 1 if fold else ka, kd))
        has_bias = has_bias and not fold
    elif "weight" in lams and a.shape[1] == 1:
        shape = (d.shape[-1], a.shape[-1])
        terms.append(torch.einsum("no,oi,ni->", d[:, 0] ** 2, lam.expand(shape), a[:, 0] ** 2))
    elif "weight" in lams:
        terms.append(_weighted_sq(torch.bmm(d.transpose(1, 2), a), lam))
    if has_bias:
        terms.append(_weighted_sq(d.sum(1), lams["bias"]))
    return sum(terms[1:], terms[0]) if terms else a.new_zeros(())


def _own(module: nn.Module, names: tuple[str, ...]) -> dict[str, nn.Parameter]:
    """The trainable parameters among ``names`` (dotted paths below ``module``)."""
    out = {}
    for name in names:
        owner, _, leaf = name.rpartition(".")
        p = getattr(module.get_submodule(owner), leaf, None)
        if isinstance(p, nn.Parameter) and p.requires_grad:
            out[name] = p
    return out


class GhostRule:
    """How the modules of one type give per-sample squared norms of their own parameters.

    A rule records the module's calls during the batch forward (:meth:`attach`), names the
    tensors whose gradients it needs (:meth:`outputs`, ``None`` when a recorded call is
    unusable) and turns those gradients into the sum over samples of the per-sample
    squared norms (:meth:`sq_sum`). The base rule records each call's first input and output with a
    forward hook.
    """

    min_dim = 2  # dimensions of the recorded input: samples first, then features

    def parameters(self, module: nn.Module) -> dict[str, nn.Parameter] | None:
        """Trainable parameters (dotted names below ``module``) the rule accounts for, or
        ``None`` when the module's configuration is not supported."""
        return _own(module, ("weight", "bias"))

    def attach(self, module: nn.Module, calls: list) -> list:
        """Record every call of ``module`` into ``calls``; returns the hook handles."""

        def hook(mod, args, out):
            inp = args[0] if args else None
            calls.append(_Call(inp, out, (_version(inp), _version(out))))

        return [module.register_forward_hook(hook)]

    def outputs(self, module: nn.Module, calls: list, n: int) -> list[torch.Tensor] | None:
        """The one recorded output, if ``module`` ran once on ``(N, ...)`` inputs."""
        if len(calls) != 1 or not _unchanged(*calls):
            return None
        inp, out = calls[0].inp, calls[0].out
        if inp.dim() < self.min_dim or inp.shape[0] != n or out.dim() < 1 or out.shape[0] != n:
            return None
        return [out]

    def sq_sum(self, module, calls, grads, lams: Lams, n: int) -> torch.Tensor:
        """``sum_i ||grad ell_i||_Lambda^2 / N^2`` over the parameters in ``lams`` (0-d).

        ``grads`` are the gradients of ``L`` w.r.t. :meth:`outputs`, i.e. the per-sample
        output gradients ``d_i / N``: every term is quadratic in them, so the caller applies
        the factor ``N^2`` once."""
        raise NotImplementedError


class LinearRule(GhostRule):
    """``nn.Linear`` on ``(N, ..., in)``: :func:`linear_sq_sum` over the middle dims."""

    def sq_sum(self, module, calls, grads, lams, n):
        a = calls[0].inp
        a = a.reshape(n, -1, a.shape[-1])
        d = grads[0].reshape(n, -1, grads[0].shape[-1])
        return linear_sq_sum(a, d, lams)


class LayerNormRule(GhostRule):
    """``nn.LayerNorm``: ``dw_i = sum_t xhat_it * d_it``, ``db_i = sum_t d_it``, with
    ``xhat = layer_norm(x)`` (no affine part) recomputed from the recorded input ``x``."""

    def sq_sum(self, module, calls, grads, lams, n):
        shape = tuple(module.normalized_shape)
        size = math.prod(shape)
        d = grads[0].reshape(n, -1, size)
        terms = []
        for name, g in (("weight", None), ("bias", d)):
            if name in lams:
                if g is None:
                    xhat = nn.functional.layer_norm(calls[0].inp, shape, eps=module.eps)
                    g = xhat.reshape(n, -1, size) * d
                lam = lams[name]
                lam = None if lam is None else lam.expand(shape).reshape(size)
                terms.append(_weighted_sq(g.sum(1), lam))
        return sum(terms[1:], terms[0])


class EmbeddingRule(GhostRule):
    """``nn.Embedding`` (dense, no ``max_norm``/``scale_grad_by_freq``): the gradient of row
    ``k`` is the sum of ``d_it`` over positions with token ``k_it = k`` (none for
    ``padding_idx``), so ``||G_i||_Lambda^2 = sum_{t,s} [k_it = k_is] d_it . (Lambda_k d_is)``.
    """

    min_dim = 1

    def parameters(self, module):
        if module.max_norm is not None or module.sparse or module.scale_grad_by_freq:
            return None
        return _own(module, ("weight",))

    def sq_sum(self, module, calls, grads, lams, n):
        idx = calls[0].inp.reshape(n, -1)
        d = grads[0].reshape(n, idx.shape[1], -1)
        if module.padding_idx is not None:
            d = d * (idx != module.padding_idx).unsqueeze(-1).to(d.dtype)
        lam = lams["weight"]
        dl = d if lam is None else d * lam.expand(module.weight.shape)[idx]
        same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(d.dtype)
        return _dot(torch.matmul(d, dl.transpose(1, 2)), same)


class _LinearRecorder:
    """Record the ``F.linear`` calls whose weight is one of ``weights`` (input, output).

    torch's ``multi_head_attention_forward`` is dispatched to a ``TorchFunctionMode`` as one
    call, which hides the linear maps inside it; while a recorder is active (between
    :meth:`start` and :meth:`stop`), ``torch.nn.functional.linear`` is therefore a
    pass-through that offers every call to the active recorders (installed once for all
    of them under a lock, restored when the last one stops).
    """

    _lock = threading.Lock()
    _active: list[_LinearRecorder] = []
    _original: list = []

    def __init__(self, weights: tuple[torch.Tensor, ...]):
        self.weights = weights
        self.calls: list[tuple[Any, Any, _Call]] = []

    def offer(self, inp, weight, bias, out) -> None:
        if any(weight is w for w in self.weights):
            self.calls.append((weight, bias, _Call(inp, out, (_version(inp), _version(out)))))

    def start(self) -> None:
        with self._lock:
            if not self._active:
                self._original.append(nn.functional.linear)
                nn.functional.linear = _recording_linear
            self._active.append(self)

    def stop(self) -> None:
        with self._lock:
            if self in self._active:
                self._active.remove(self)
                if not self._active:
                    nn.functional.linear = self._original.pop()


def _recording_linear(input, weight, bias=None):
    """``F.linear`` that offers the call to every active :class:`_LinearRecorder`."""
    out = _LinearRecorder._original[-1](input, weight, bias)
    for recorder in tuple(_LinearRecorder._active):
        recorder.offer(input, weight, bias, out)
    return out


class _AttentionCall(NamedTuple):
    query: Any
    key: Any
    value: Any
    out: Any
    linears: list


def _permuted_view(t: torch.Tensor, base: torch.Tensor, perm: tuple[int, ...]) -> bool:
    """``t`` is ``base.permute(perm)`` (same storage, shape and strides): metadata only."""
    return (
        t.data_ptr() == base.data_ptr()
        and t.shape == tuple(base.shape[p] for p in perm)
        and t.stride() == tuple(base.stride(p) for p in perm)
    )


class MultiheadAttentionRule(GhostRule):
    """``nn.MultiheadAttention`` as self-attention with a packed in-projection.

    torch's ``multi_head_attention_forward`` computes ``proj = linear(q, W_in, b_in)`` on the
    sequence-first query ``(L, N, E)`` and ``linear(o, W_out, b_out)`` on the attention
    output flattened to rows ``t * N + i``; both are Linear maps over the ``L`` positions of
    sample ``i`` (:func:`linear_sq_sum`). The layouts are checked from tensor metadata on
    every call (the in-projection's input is the module's query, the module's output is a
    view of the out-projection's output); anything else is refused (separate q/k/v
    weights, ``add_bias_kv``, cross-attention, unbatched input).
    """

    _IN = ("in_proj_weight", "in_proj_bias")
    _OUT = ("out_proj.weight", "out_proj.bias")

    def parameters(self, module):
        if module.in_proj_weight is None or module.bias_k is not None or module.bias_v is not None:
            return None
        return _own(module, self._IN + self._OUT)

    def attach(self, module, calls):
        active: list[_LinearRecorder] = []

        def pre(mod, args, kwargs):
            names = ("query", "key", "value")
            qkv = [args[k] if k < len(args) else kwargs.get(names[k]) for k in range(3)]
            recorder = _LinearRecorder((mod.in_proj_weight, mod.out_proj.weight))
            recorder.start()
            active.append((recorder, qkv))

        def post(mod, args, kwargs, out):
            recorder, qkv = active.pop()
            recorder.stop()
            first = out[0] if isinstance(out, tuple) else out
            calls.append(_AttentionCall(*qkv, first, recorder.calls))

        def release():
            while active:  # a forward that raised left its recorder running
                active.pop()[0].stop()

        return [
            module.register_forward_pre_hook(pre, with_kwargs=True),
            module.register_forward_hook(post, with_kwargs=True),
            _Release(release),
        ]

    def outputs(self, module, calls, n):
        if len(calls) != 1:
            return None
        call = calls[0]
        if not (call.query is call.key is call.value) or len(call.linears) != 2:
            return None
        (w_in, b_in, c_in), (w_out, b_out, c_out) = call.linears
        if not (w_in is module.in_proj_weight and b_in is module.in_proj_bias):
            return None
        if not (w_out is module.out_proj.weight and b_out is module.out_proj.bias):
            return None
        if not _unchanged(c_in, c_out) or not isinstance(call.out, torch.Tensor):
            return None
        q, a_in, z_out = call.query, c_in.inp, c_out.out
        if q.dim() != 3 or a_in.dim() != 3 or a_in.shape[1] != n or z_out.dim() != 2:
            return None
        seq_first = (1, 0, 2) if module.batch_first else (0, 1, 2)
        length, e_out = a_in.shape[0], z_out.shape[1]
        if not _permuted_view(a_in, q, seq_first) or z_out.shape[0] != length * n:
            return None
        if not _permuted_view(call.out, z_out.view(length, n, e_out), seq_first):
            return None
        return [c_in.out, z_out]

    def sq_sum(self, module, calls, grads, lams, n):
        (_, _, c_in), (_, _, c_out) = calls[0].linears
        length = c_in.inp.shape[0]
        a_in = c_in.inp.transpose(0, 1)
        d_in = grads[0].transpose(0, 1)
        a_out = c_out.inp.view(length, n, -1).transpose(0, 1)
        d_out = grads[1].view(length, n, -1).transpose(0, 1)
        in_lams = {k: lams[f"in_proj_{k}"] for k in ("weight", "bias") if f"in_proj_{k}" in lams}
        out_lams = {k: lams[f"out_proj.{k}"] for k in ("weight", "bias") if f"out_proj.{k}" in lams}
        return linear_sq_sum(a_in, d_in, in_lams) + linear_sq_sum(a_out, d_out, out_lams)


class _Release:
    """A handle whose ``remove`` runs a clean-up function (beside the hook handles)."""

    def __init__(self, fn):
        self.remove = fn


_RULES: dict[type, GhostRule] = {}


def register_ghost_rule(module_type: type, rule: GhostRule) -> None:
    """Use ``rule`` for modules of ``module_type`` and of its subclasses without their own."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise ValueError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    if not isinstance(rule, GhostRule):
        raise ValueError(f"rule must be a GhostRule, got {type(rule).__name__}")
    _RULES[module_type] = rule


def ghost_rule(module: nn.Module) -> GhostRule | None:
    """The rule registered for the nearest class in ``type(module).__mro__``, or None."""
    for cls in type(module).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


register_ghost_rule(nn.Linear, LinearRule())
register_ghost_rule(nn.LayerNorm, LayerNormRule())
register_ghost_rule(nn.Embedding, EmbeddingRule())
register_ghost_rule(nn.MultiheadAttention, MultiheadAttentionRule())


class _Entry(NamedTuple):
    prefix: str
    module: nn.Module
    rule: GhostRule
    names: tuple[str, ...]  # owned parameters, names below the module
    calls: list


class GhostPlan:
    """Modules (with their rules) that own all trainable parameters of a model.

    Use: ``with plan.recording(): loss = ...`` then ``outs = plan.outputs(n)`` (None if a
    module's calls cannot be used), ``grads = autograd.grad(loss, [...] + outs)`` and
    ``plan.sq_sum(grads_of_outs, n, lams, scale)`` for ``sum_i ||g_i||_Lambda^2``.
    """

    def __init__(self, entries: list[_Entry]):
        self.entries = entries
        self._sizes: list[int] = []
        self._outs: list[torch.Tensor] = []

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Record the calls of every module during the block (hooks removed after)."""
        handles = []
        for e in self.entries:
            e.calls.clear()
            handles += e.rule.attach(e.module, e.calls)
        try:
            yield
        finally:
            for h in reversed(handles):
                h.remove()

    def outputs(self, n: int) -> list[torch.Tensor] | None:
        """All tensors whose gradients the rules need, or None if a recorded call is
        unusable (a module called twice, off the sample dimension, modified in place)."""
        outs: list[torch.Tensor] = []
        self._sizes = []
        for e in self.entries:
            got = e.rule.outputs(e.module, e.calls, n)
            if got is None:
                return None
            outs += got
            self._sizes.append(len(got))
        self._outs = outs
        return outs

    def sq_sum(
        self, grads: list[torch.Tensor], n: int, lams: Lams, scale: float = 1.0
    ) -> torch.Tensor:
        """``sum_i ||g_i||_Lambda^2`` with ``Lambda = scale * diag(lams)`` (``lams``: full
        parameter name -> diagonal or None); ``grads`` as returned for :meth:`outputs`
        (``None`` for an output the loss does not depend on: a zero gradient)."""
        terms, start = [], 0
        for e, size in zip(self.entries, self._sizes):
            got, outs = grads[start : start + size], self._outs[start : start + size]
            start += size
            if all(g is None for g in got):
                continue  # the module's parameters do not reach the loss
            got = [torch.zeros_like(o) if g is None else g for g, o in zip(got, outs)]
            own = {k: lams.get(e.prefix + k) for k in e.names}
            terms.append(e.rule.sq_sum(e.module, e.calls, got, own, n))
        if not terms:
            return self._outs[0].new_zeros(())
        return sum(terms[1:], terms[0]) * (scale * n * n)


def _batchnorm_in_training(model: nn.Module) -> bool:
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules()
    )


def ghost_plan(model: nn.Module, params: Mapping[str, torch.Tensor]) -> GhostPlan | None:
    """A :class:`GhostPlan` whose rules own exactly the trainable ``params`` (name ->
    parameter, as ``model.named_parameters()``), each once; None if some parameter has no
    rule, is shared, belongs to an unsupported configuration, or BatchNorm couples the
    samples."""
    if _batchnorm_in_training(model):
        return None
    entries, owned, covered = [], set(), []
    for mname, mod in model.named_modules(remove_duplicate=False):
        if any(mname.startswith(c) for c in covered):
            continue  # inside a module whose rule accounts for it
        rule = ghost_rule(mod)
        if rule is None:
            continue
        mine = rule.parameters(mod)
        if mine is None:
            return None
        prefix = f"{mname}." if mname else ""
        covered.append(prefix)
        for local, p in mine.items():
            full = prefix + local
            if params.get(full) is not p or full in owned:
                return None  # shared (tied) or duplicated parameter
            owned.add(full)
        if mine:
            entries.append(_Entry(prefix, mod, rule, tuple(mine), []))
    if owned != set(params):
        return None
    return GhostPlan(entries)
