"""Entropic loss and entropic forces of (stochastic) gradient descent.

Ziyin, Xu & Chuang (arXiv 2505.12387, "Neural Thermodynamics I") define the *entropic
loss* phi_eta of a discrete training algorithm by backward error analysis: gradient flow
``d theta/dt = -grad phi_eta`` run for time ``eta`` reproduces one step of the algorithm
with step ``eta`` up to O(eta^3). To leading order (design note ``entropic-forces.md``
sections 1.2-1.4; Barrett & Dherin 2021, Smith et al. 2021)::

    GD:   phi = L_gamma + (eta/4) ||grad L_gamma||^2
    SGD:  phi = L_gamma + (eta/4) ||grad L_gamma||^2 + (eta/4) E_B ||g_B - g||^2
              = L_gamma + (eta/4) ||grad L_gamma||^2 + (eta/(4B)) tr Sigma   (with replacement)

with ``L_gamma = L + (gamma/2) ||theta||^2`` (coupled weight decay gamma), ``g_B`` the
gradient of a minibatch of ``B`` samples drawn from the ``N`` samples of ``batch`` and
``Sigma = Cov_i[grad ell_i]`` the (population) covariance of the per-sample gradients.
Drawing the minibatch without replacement multiplies the noise term by ``(N-B)/(N-1)``.
The correction ``phi - L_gamma`` plays the role of ``-T S`` (temperature times effective
entropy); minus its gradient is the *entropic force*.

For a matrix learning rate (preconditioned GD, the frozen-preconditioner view of Adam)
``theta' = theta - eta * Lambda g_B`` the modified flow is ``d theta/dt = -Lambda grad phi``
with every squared norm replaced by the Lambda-norm (note section 1.4)::

    phi^Lambda = L_gamma + (eta/4) g^T Lambda g + (eta/4) E_B (g_B - g)^T Lambda (g_B - g).

The module also provides the *exact* per-step law of quadratic conserved quantities (note
section 2.0): if ``A`` is a symmetric generator of a per-sample symmetry of the loss, the
charge ``C = theta^T A theta`` obeys, under ``theta' = (1 - eta gamma) theta - eta g_B``::

    C' = (1 - eta gamma)^2 C + eta^2 g_B^T A g_B          (an identity, for every eta, B)

(:func:`conserved_quantity_step`, :func:`predicted_next`), and its matrix form for two
consecutive linear maps, ``Q = W1 W1^T - W2^T W2`` (:func:`layer_balance`,
:func:`layer_balance_next`).

The noise term needs ``mean_i ||grad ell_i - g||^2`` over the per-sample gradients. For a
general model they are computed with ``torch.func`` (``functional_call`` + ``vmap`` +
``grad``); for models built from layers with a ghost rule (``nn.Linear``, ``nn.LayerNorm``,
``nn.Embedding``, self-attention ``nn.MultiheadAttention``: :mod:`thermanopt.entropy.ghost`)
the per-sample norms come from the layers' inputs and output gradients of the ordinary
backward pass ("ghost norms", Goodfellow 2015), at little more than the cost of the
gradient. The Hessian is never formed, and the whole value is differentiable (double
backward) so that a model can be trained on ``total``. :func:`adam_preconditioner` turns
an Adam state into the diagonal ``Lambda``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from thermanopt._backend import check_compatible, check_finite, namespace
from thermanopt.entropy.ghost import GhostPlan, ghost_plan

__all__ = [
    "EntropicLoss",
    "ChargeStep",
    "entropic_loss",
    "entropic_force",
    "conserved_quantity",
    "conserved_quantity_step",
    "predicted_next",
    "layer_balance",
    "layer_balance_next",
    "adam_preconditioner",
    "resolve_process_group",
    "data_parallel_module",
]

Preconditioner = float | Mapping[str, torch.Tensor] | Callable[[dict], dict] | None
ProcessGroupArg = Any  # None | "auto" | torch.distributed.ProcessGroup


class EntropicLoss(NamedTuple):
    """Parts of the entropic loss, 0-d tensors with ``total = loss + discretization + noise``.

    ``loss`` is ``L_gamma = L + (weight_decay/2) ||theta||^2`` (the loss the optimizer sees),
    ``discretization`` is ``(lr/4) ||grad L_gamma||_Lambda^2`` and ``noise`` is
    ``(lr/4) E_B ||g_B - g||_Lambda^2`` (zero for full-batch GD).
    """

    total: torch.Tensor
    loss: torch.Tensor
    discretization: torch.Tensor
    noise: torch.Tensor


class ChargeStep(NamedTuple):
    """One step of a quadratic charge ``C = theta^T A theta``.

    ``predicted = (1 - lr*gamma)^2 * charge + lr^2 * g_B^T A g_B = charge + decay + entropic``,
    where ``entropic = lr^2 g_B^T A g_B`` is the drift caused by the finite step (the entropic
    force projected on the symmetry orbit) and ``decay = ((1 - lr*gamma)^2 - 1) * charge`` the
    explicit weight-decay part.
    """

    charge: Any
    predicted: Any
    entropic: Any
    decay: Any


# ---------------------------------------------------------------------------------------
# validation helpers


def _math_attention(enabled: bool = True):
    """Use the composite ("math") scaled-dot-product attention inside the context.

    The fused flash/memory-efficient attention kernels have no double backward and no
    ``vmap`` batching rule; the math kernel is built from differentiable, batchable ops.
    """
    return sdpa_kernel([SDPBackend.MATH]) if enabled else contextlib.nullcontext()


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``F.layer_norm`` from elementary ops: ``(x - mean) / sqrt(var + eps) * weight + bias``."""
    dims = tuple(range(-len(normalized_shape), 0))
    mean = input.mean(dims, keepdim=True)
    centred = input - mean
    var = (centred * centred).mean(dims, keepdim=True)
    out = centred * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


class _CompositeLayerNorm(TorchFunctionMode):
    """Run ``F.layer_norm`` as :func:`_layer_norm` inside the context.

    Differentiating ``vmap(grad(...))`` once more through ``native_layer_norm`` with a
    per-sample gradient of the LayerNorm weight gives wrong second derivatives in torch
    2.13 (the per-sample gradients themselves are right); the composite form is exact.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.layer_norm:
            return _layer_norm(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def _check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        value = float(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def _leading_size(tree: Any, name: str) -> int:
    leaves, _ = tree_flatten(tree)
    leaves = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
    if not leaves:
        raise ValueError(f"{name} must contain at least one tensor")
    sizes = set()
    for leaf in leaves:
        if leaf.dim() == 0:
            raise ValueError(f"{name} must have a leading sample dimension, got a 0-d tensor")
        sizes.add(leaf.shape[0])
    if len(sizes) != 1:
        raise ValueError(f"tensors in {name} disagree on the number of samples: {sorted(sizes)}")
    return sizes.pop()


def _split_batch(batch: Any) -> tuple[Any, Any, int]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("batch must be a pair (inputs, targets)")
    inputs, targets = batch
    n_in = _leading_size(inputs, "inputs")
    n_t = _leading_size(targets, "targets")
    if n_in != n_t:
        raise ValueError(f"inputs have {n_in} samples but targets have {n_t}")
    return inputs, targets, n_in


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    return params


def _make_preconditioner(
    preconditioner: Preconditioner, params: Mapping[str, torch.Tensor], validate: bool = True
) -> Callable[[dict], dict] | None:
    """Return a function applying Lambda to a dict of parameter-shaped tensors (or None)."""
    if preconditioner is None:
        return None
    if callable(preconditioner) and not isinstance(preconditioner, Mapping):
        return preconditioner
    if isinstance(preconditioner, Mapping):
        unknown = set(preconditioner) - set(params)
        missing = set(params) - set(preconditioner)
        if unknown:
            raise ValueError(f"preconditioner names unknown parameters: {sorted(unknown)}")
        if missing:
            raise ValueError(f"preconditioner misses trainable parameters: {sorted(missing)}")
        diag = {}
        for n, d in preconditioner.items():
            p = params[n]
            d = torch.as_tensor(d)
            if d.device != p.device or d.dtype != p.dtype:
                raise ValueError(
                    f"preconditioner[{n!r}] is {d.dtype} on {d.device}, "
                    f"parameter is {p.dtype} on {p.device}"
                )
            try:
                torch.broadcast_shapes(d.shape, p.shape)
            except RuntimeError:
                raise ValueError(
                    f"preconditioner[{n!r}] has shape {tuple(d.shape)}, not broadcastable to "
                    f"the parameter shape {tuple(p.shape)}"
                ) from None
            if validate:
                check_finite(d, f"preconditioner[{n!r}]")
            if validate and bool((d < 0).any()):
                raise ValueError(f"preconditioner[{n!r}] has negative entries (must be PSD)")
            diag[n] = d
        return lambda v: {n: diag[n] * t for n, t in v.items()}
    scale = _check_positive(preconditioner, "preconditioner")
    return lambda v: {n: scale * t for n, t in v.items()}


def _sq_norm(v: Mapping[str, torch.Tensor], precond: Callable[[dict], dict] | None):
    """``sum_n <v_n, (Lambda v)_n>``."""
    pv = v if precond is None else precond(dict(v))
    return sum((v[n] * pv[n]).sum() for n in v)


class _SquaredNorm(torch.autograd.Function):
    """``sum_n ||v_n||^2`` of real tensors: one dot product per tensor forward and one
    scaling per tensor backward (``2 grad v_n``), instead of an elementwise square, a sum
    and two products in the backward. Differentiable again (the backward is torch ops)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*tensors):
        total = tensors[0].new_zeros(())
        for t in tensors:
            flat = t.reshape(-1)
            total = total + torch.dot(flat, flat)
        return total

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        two = 2.0 * grad
        return tuple(t * two for t in ctx.saved_tensors)


def _squared_norm(v: Mapping[str, torch.Tensor], precond: Callable[[dict], dict] | None):
    """:func:`_sq_norm` outside ``torch.func`` transforms, fused when ``Lambda = I``."""
    if precond is None and v:
        return _SquaredNorm.apply(*v.values())
    return _sq_norm(v, precond)


# ---------------------------------------------------------------------------------------
# entropic loss


def entropic_loss(
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: tuple[Any, Any],
    lr: float,
    *,
    batch_size: int | None = None,
    weight_decay: float = 0.0,
    per_sample: bool = False,
    preconditioner: Preconditioner = None,
    replacement: bool = True,
    chunk_size: int | None = None,
    noise_method: str = "auto",
    process_group: ProcessGroupArg = None,
    validate: bool = True,
) -> EntropicLoss:
    """Leading-order entropic (modified) loss of GD or SGD at the model's current parameters.

    Formula (Ziyin, Xu & Chuang 2025; design note ``entropic-forces.md`` sections 1.2-1.4)::

        total = L_gamma + (lr/4) ||grad L_gamma||_Lambda^2 + (lr/4) E_B ||g_B - g||_Lambda^2

    where ``L = loss_fn(model(inputs), targets)`` over the ``N`` samples of
    ``batch = (inputs, targets)``, ``L_gamma = L + (weight_decay/2) ||theta||^2`` over the
    trainable parameters, and ``||v||_Lambda^2 = v^T Lambda v`` (``Lambda = I`` without a
    preconditioner). Gradient flow on ``total`` for time ``lr`` (with the flow
    ``d theta/dt = -Lambda grad total`` when preconditioned) matches one step
    ``theta' = theta - lr Lambda (g + weight_decay theta)`` with local error O(lr^3).

    The noise term is the minibatch variance of SGD that draws ``B = batch_size`` of the
    ``N`` samples of ``batch``::

        E_B ||g_B - g||_Lambda^2 = (1/B) mean_i (g_i - g)^T Lambda (g_i - g)   (with replacement)

    times ``(N - B)/(N - 1)`` without replacement, with ``g_i`` the per-sample gradients
    (``torch.func.vmap`` of ``torch.func.grad`` over samples; the Hessian is never formed).
    Weight decay does not enter it (it shifts every ``g_i`` by the same ``gamma theta``).

    **Distributed data parallelism.** With ``process_group`` each rank passes its own shard
    of the global batch (any sizes ``N_r``) and every rank gets the value of the
    single-process call on the concatenated batch of ``N = sum_r N_r`` samples:
    ``L = sum_r N_r L_r / N``, ``g = sum_r N_r g_r / N`` and
    ``sum_i ||g_i - g||^2 = sum_r [sum_{i in r} ||g_i - g_r||^2 + N_r ||g_r - g||^2]``
    (the per-rank sums of the parallel variance formula). The per-rank sums travel in one
    ``all_reduce`` (gradient, loss and second moment packed into one flat tensor; a second,
    scalar one for the per-sample path), through ``torch.distributed.nn.functional.all_reduce``
    so that the value stays differentiable: after ``total.backward()`` the *average* of the
    ranks' ``.grad`` is the gradient of ``total``, which is exactly what
    ``DistributedDataParallel`` stores on every rank (without DDP, average the gradients
    with ``all_reduce`` as in any data-parallel loop). ``entropic_force`` does that average
    itself. ``batch_size`` stays the minibatch size ``B`` of the SGD being modelled.

    Scaled-dot-product attention runs with the composite "math" kernel wherever a double
    backward or ``vmap`` is needed (the fused kernels support neither).

    Parameters
    ----------
    model, loss_fn, batch
        ``loss_fn(model(inputs), targets)`` must be a 0-d tensor equal to the *mean* of the
        per-sample losses (``reduction="mean"``); with the noise term this is checked and a
        ``ValueError`` names a violation (sum reduction, BatchNorm in training mode, dropout).
        ``inputs``/``targets`` are tensors (or pytrees of tensors) sharing a leading sample
        dimension. ``model`` may be wrapped in ``DistributedDataParallel``.
    lr
        Learning rate eta > 0.
    batch_size
        Minibatch size B of the SGD whose entropic loss is wanted; ``None`` means full-batch
        GD (no noise term) unless ``per_sample=True``.
    weight_decay
        Coupled weight decay gamma >= 0 (part of the gradient). For decoupled (AdamW-style)
        decay pass 0: it only contributes its exact shrink factor ``(1 - lr*gamma)``.
    per_sample
        With ``batch_size=None``: SGD on single samples (B = 1).
    preconditioner
        The matrix learning rate Lambda (symmetric positive semi-definite) of
        ``theta' = theta - lr Lambda g_B``: a positive number (``Lambda = c I``), a mapping
        ``{parameter name: tensor broadcastable to the parameter}`` (diagonal Lambda, e.g.
        ``1 / (sqrt(v_hat) + eps)`` from Adam's state for the frozen-preconditioner view of
        Adam), or a callable mapping a dict of parameter-shaped tensors to ``Lambda`` applied
        to it (linear, symmetric; it is called inside ``vmap`` for the noise term). Every
        squared gradient norm above becomes the Lambda-norm (note section 1.4); the entropic
        force of :func:`entropic_force` is then ``-grad`` of the correction, and the modified
        flow is ``-Lambda grad total``.
    replacement
        Minibatches drawn with (default) or without replacement.
    chunk_size
        Passed to ``vmap`` for the per-sample gradients: bounds memory (per-sample gradients
        of ``chunk_size`` samples at a time) at some cost in speed. Without it (or with
        ``chunk_size >= N``) one vmap'd pass gives the loss, the gradient and the noise
        term together (all ``N`` per-sample gradients in memory at once); with it, one
        batch forward/backward gives the loss and gradient and the chunks only the
        centred second moment.
    noise_method
        ``"vmap"``: per-sample gradients by ``torch.func`` (any model whose samples are
        independent). ``"ghost"``: models whose trainable parameters all belong to
        modules with a rule in :mod:`thermanopt.entropy.ghost` (``nn.Linear``,
        ``nn.LayerNorm``, ``nn.Embedding``, ``nn.MultiheadAttention`` as self-attention with
        a packed in-projection), each called once per forward on inputs ``(N, ...)`` whose
        first dimension is the sample (a sequence-first layout with ``T == N`` cannot be
        told apart: call such models with ``"vmap"``):
        ``mean_i ||g_i||_Lambda^2`` from the layers' inputs and output gradients of the one
        ordinary backward pass ("ghost norms", Goodfellow 2015), without per-sample
        gradients, then ``E||g_B - g||^2 = (mean_i ||g_i||^2 - ||g||^2) / B`` (loses
        relative accuracy when the noise is below ~1e-7 (float32) of ``||g||^2``); only
        scalar or diagonal preconditioners. ``"auto"`` (default): ghost when applicable,
        else vmap.
    process_group
        ``None`` (default): this process holds the whole batch. A
        ``torch.distributed`` process group (e.g. ``torch.distributed.group.WORLD``): the
        batch is this rank's shard and the result is that of the global batch (see above);
        every rank of the group must make the same call. ``"auto"``: the default group
        when ``torch.distributed`` is initialised with more than one process, else ``None``.
    validate
        Run the consistency checks that need the data on the host (finite loss, mean
        reduction, the preconditioner's sign, ``batch_size <= N`` without replacement in a
        group): each is one host synchronisation. ``False`` removes every host
        synchronisation from the call (for a hot training loop on a GPU, once a first call
        with ``True`` has passed).

    Returns
    -------
    EntropicLoss(total, loss, discretization, noise)
        0-d tensors in the parameters' dtype and device. When autograd is enabled they are
        differentiable w.r.t. the parameters (``total.backward()`` is a double backward);
        under ``torch.no_grad()`` they are plain values and cheaper. Their gradients are
        differentiable again (a Hessian-vector product of ``total``), except through
        ``nn.LayerNorm``: torch 2.13's native ``layer_norm`` has a wrong third derivative
        (only the one-chunk ``"vmap"`` path runs it as elementary ops).
    """
    lr = _check_positive(lr, "lr")
    weight_decay = _check_positive(weight_decay, "weight_decay", allow_zero=True)
    params = _trainable(model)
    inputs, targets, n = _split_batch(batch)
    if batch_size is None:
        b = 1 if per_sample else None
    else:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        b = batch_size
    group = resolve_process_group(process_group)
    if b is not None and not replacement and b > n and group is None:
        raise ValueError(
            f"batch_size {b} exceeds the {n} samples of batch (sampling without replacement)"
        )
    precond = _make_preconditioner(preconditioner, params, validate)

    differentiable = torch.is_grad_enabled()
    names = list(params)
    if noise_method not in ("auto", "vmap", "ghost"):
        raise ValueError(f"noise_method must be 'auto', 'vmap' or 'ghost', got {noise_method!r}")
    layers = None
    if b is not None and noise_method != "vmap":
        layers = _ghost_layers(model, params, preconditioner)
        if layers is None and noise_method == "ghost":
            raise ValueError(
                "noise_method='ghost' needs every trainable parameter to belong to a module "
                "with a ghost rule (nn.Linear, nn.LayerNorm, nn.Embedding, self-attention "
                "nn.MultiheadAttention) used once per forward, no BatchNorm in training mode "
                "and no callable preconditioner"
            )
    # Per-sample path (no ghost norms) in one chunk: one vmap'd pass gives the
    # per-sample losses and gradients, hence L, g and the noise term, without a separate
    # batch forward/backward. A DistributedDataParallel model keeps the batch pass when the
    # result is differentiable (DDP averages the gradients of a backward that follows its
    # own forward).
    wrapped = _functional_module(model, params)[0] is not model
    one_chunk = chunk_size is None or chunk_size >= n
    if b is not None and layers is None and one_chunk and not (wrapped and differentiable):
        loss, g_local, second = _per_sample_pass(
            model, loss_fn, inputs, targets, params, precond, validate, differentiable
        )
    else:
        loss, g_local, second, layers = _batch_pass(
            model,
            loss_fn,
            inputs,
            targets,
            params,
            n,
            b,
            layers,
            noise_method,
            preconditioner,
            precond,
            chunk_size,
            validate,
            differentiable,
        )

    if group is None:
        n_total: Any = n
        data_loss, g = loss, g_local
    else:
        n_total, data_loss, g, second = _global_sums(
            group, n, loss, g_local, second, centred=layers is None, precond=precond
        )
        if validate and b is not None and not replacement and b > int(n_total):
            raise ValueError(
                f"batch_size {b} exceeds the {int(n_total)} samples of the global batch "
                "(sampling without replacement)"
            )

    if weight_decay:
        decay = sum((p * p).sum() for p in params.values())
        loss_gamma = data_loss + 0.5 * weight_decay * decay
        g_gamma = {k: g[k] + weight_decay * params[k] for k in names}
    else:
        loss_gamma, g_gamma = data_loss, g
    sq_gamma = _squared_norm(g_gamma, precond)
    discretization = 0.25 * lr * sq_gamma
    if b is None:
        noise = torch.zeros_like(discretization)
    else:
        if layers is not None:  # sum_i ||g_i||^2 / N - ||g||^2
            sq_g = sq_gamma if g_gamma is g else _squared_norm(g, precond)
            var = (second / n_total - sq_g).clamp_min(0.0) / b
        else:
            var = second / (n_total * b)
        if not replacement:
            if group is None:
                var = var * ((n - b) / (n - 1) if n > 1 else 0.0)
            else:
                var = var * ((n_total - b) / (n_total - 1).clamp_min(1.0))
        noise = 0.25 * lr * var
    total = loss_gamma + discretization + noise
    if not differentiable:
        total, loss_gamma, discretization, noise = (
            t.detach() for t in (total, loss_gamma, discretization, noise)
        )
    return EntropicLoss(total, loss_gamma, discretization, noise)


def _batch_pass(
    model,
    loss_fn,
    inputs,
    targets,
    params,
    n,
    b,
    layers,
    noise_method,
    preconditioner,
    precond,
    chunk_size,
    validate,
    differentiable,
):
    """Loss, gradient and local second moment from one batch forward and backward.

    The second moment is ``sum_i ||g_i||^2`` from ghost norms (``layers``) or
    ``sum_i ||g_i - g_local||^2`` from per-sample gradients by vmap; ``layers`` is
    returned as used (None when the ghost capture failed).
    """
    names = list(params)
    recording = layers.recording() if layers is not None else contextlib.nullcontext()
    # One forward and one backward of the data loss (with the graph kept when the result
    # must be differentiable: its backward is then the one Hessian-vector product).
    with torch.enable_grad(), _math_attention(differentiable):
        with recording:
            output = model(inputs)
        loss = loss_fn(output, targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor (use reduction='mean')")
        loss = loss.reshape(())
        if validate:
            check_finite(loss.detach(), "loss")
        outs = layers.outputs(n) if layers is not None else []
        if outs is None:
            if noise_method == "ghost":
                raise ValueError(
                    "noise_method='ghost': a layer was called more than once, on inputs "
                    "without the leading sample dimension or in an unsupported layout, or "
                    "its input or output was modified in place"
                )
            layers, outs = None, []
        grads = torch.autograd.grad(
            loss,
            [params[k] for k in names] + outs,
            create_graph=differentiable,
            allow_unused=True,
        )
    g_local = {
        k: (torch.zeros_like(params[k]) if gk is None else gk)
        for k, gk in zip(names, grads[: len(names)])
    }

    # Local second moment of the per-sample gradients: sum_i ||g_i||^2 (ghost norms) or the
    # sum centred at this process's mean gradient, sum_i ||g_i - g_local||^2 (vmap).
    second = None
    if b is not None:
        if layers is not None:
            if validate:
                _check_mean_reduction(loss_fn, output, targets, loss, n)
            second = _ghost_sq_sum(layers, list(grads[len(names) :]), n, preconditioner)
        else:
            second = _vmap_centred_sum(
                model,
                loss_fn,
                inputs,
                targets,
                params,
                g_local,
                loss,
                precond,
                chunk_size,
                validate,
                differentiable,
            )

    return loss, g_local, second, layers


def _per_sample_pass(model, loss_fn, inputs, targets, params, precond, validate, differentiable):
    """Loss, mean gradient and ``sum_i ||g_i - g||_Lambda^2`` from one vmap'd pass.

    ``L = mean_i ell_i`` and ``g = mean_i g_i`` come from the same per-sample losses and
    gradients as the noise term (``torch.func.vmap`` of ``grad_and_value``), so no batch
    forward/backward is needed; with ``validate`` one batch forward without autograd checks
    that ``loss_fn`` is the mean of the per-sample losses.
    """
    module, local_params = _functional_module(model, params)
    key = dict(zip(params, local_params))  # caller's name -> module's name
    frozen = {k: v for k, v in module.named_parameters() if k not in local_params}
    frozen.update(dict(module.named_buffers()))

    def sample_loss(p, x, y):
        x1 = tree_map(lambda t: t.unsqueeze(0), x)
        y1 = tree_map(lambda t: t.unsqueeze(0), y)
        out = functional_call(module, {**frozen, **p}, (x1,))
        loss = loss_fn(out, y1)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor (use reduction='mean')")
        return loss.reshape(())

    exact = _CompositeLayerNorm() if differentiable else contextlib.nullcontext()
    with torch.enable_grad(), _math_attention(), exact:
        per_grads, losses = vmap(
            grad_and_value(sample_loss), in_dims=(None, 0, 0), randomness="different"
        )(local_params, inputs, targets)
    loss = losses.mean()
    grads = {k: per_grads[key[k]] for k in params}
    g = {k: v.mean(0) for k, v in grads.items()}
    diff = {k: grads[k] - g[k] for k in params}
    if precond is None:  # only the sum over samples is needed
        sq = _squared_norm(diff, None)
    else:  # Lambda applied sample by sample (a callable Lambda sees parameter shapes)
        sq = vmap(lambda d: _sq_norm(d, precond))(diff)
    if validate:
        check_finite(loss.detach(), "loss")
        with torch.no_grad():
            batch_loss = loss_fn(model(inputs), targets)
        if not isinstance(batch_loss, torch.Tensor) or batch_loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor (use reduction='mean')")
        _check_mean(batch_loss.reshape(()), loss.detach(), "from single samples")
    return loss, g, sq.sum()


# ---------------------------------------------------------------------------------------
# data parallelism: cross-rank sums


def resolve_process_group(process_group: ProcessGroupArg) -> Any:
    """The ``torch.distributed`` process group that ``process_group`` names, or ``None``.

    ``None`` -> ``None`` (single process); ``"auto"`` -> the default group when
    ``torch.distributed`` is initialised with more than one process, else ``None``; a
    process group (or ``torch.distributed.group.WORLD``) is returned as is, after checking
    that ``torch.distributed`` is initialised.
    """
    if process_group is None:
        return None
    available = dist.is_available() and dist.is_initialized()
    if isinstance(process_group, str):
        if process_group != "auto":
            raise ValueError(
                f"process_group must be None, 'auto' or a torch.distributed process group, "
                f"got {process_group!r}"
            )
        if not available or dist.get_world_size() < 2:
            return None
        return dist.group.WORLD
    if not available:
        raise ValueError(
            "process_group given but torch.distributed is not initialised "
            "(call torch.distributed.init_process_group first)"
        )
    return process_group


def _all_reduce_sum(tensors: list[torch.Tensor], group: Any) -> list[torch.Tensor]:
    """Sum each tensor over the ranks of ``group`` in one differentiable ``all_reduce``.

    ``torch.distributed.nn.functional.all_reduce`` all-reduces the incoming gradient in its
    backward, so the value stays differentiable (a double backward included).
    """
    flat = torch.cat([t.reshape(-1) for t in tensors])
    flat = dist_nn.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].view_as(t))
        start += t.numel()
    return out


def _global_sums(group, n, loss, g_local, second, *, centred, precond):
    """Global sample count, mean loss, mean gradient and second moment from per-rank sums.

    One ``all_reduce`` of ``[N_r, N_r L_r, N_r g_r, m_r]`` where ``m_r`` is the local second
    moment; for a centred ``m_r = sum_{i in r} ||g_i - g_r||^2`` a second (scalar) one adds
    the between-rank part ``sum_r N_r ||g_r - g||^2``.
    """
    names = list(g_local)
    ref = loss
    n_r = torch.full((), float(n), dtype=ref.dtype, device=ref.device)
    parts = [n_r, n * loss] + [n * g_local[k] for k in names]
    if second is not None:
        parts.append(second.reshape(()).to(ref.dtype))
    summed = _all_reduce_sum(parts, group)
    n_total = summed[0].detach()
    data_loss = summed[1] / n_total
    g = {k: s / n_total for k, s in zip(names, summed[2 : 2 + len(names)])}
    if second is not None:
        second = summed[-1]
        if centred:
            diff = {k: g_local[k] - g[k] for k in names}
            (between,) = _all_reduce_sum([n * _sq_norm(diff, precond)], group)
            second = second + between
    return n_total, data_loss, g, second


# ---------------------------------------------------------------------------------------
# noise term, per-sample gradient norms without per-sample gradients ("ghost norms")


def _ghost_layers(model, params, preconditioner) -> GhostPlan | None:
    """The ghost-norm plan of ``model`` (:func:`thermanopt.entropy.ghost.ghost_plan`), or
    None (also for a callable preconditioner, which ghost norms cannot apply)."""
    if (
        preconditioner is not None
        and callable(preconditioner)
        and not isinstance(preconditioner, Mapping)
    ):
        return None
    return ghost_plan(model, params)


def _ghost_sq_sum(plan: GhostPlan, grads, n: int, preconditioner) -> torch.Tensor:
    """``sum_i ||grad ell_i||_Lambda^2`` for a scalar or diagonal ``Lambda`` from the plan's
    output gradients (:meth:`GhostPlan.sq_sum`)."""
    if isinstance(preconditioner, Mapping):
        return plan.sq_sum(grads, n, preconditioner)
    scale = 1.0 if preconditioner is None else float(preconditioner)
    return plan.sq_sum(grads, n, {}, scale)


def _check_mean_reduction(loss_fn, output, targets, loss, n):
    """loss_fn must average over samples: L = (k L_first + (n-k) L_rest) / n."""
    if n < 2:
        return
    with torch.no_grad():
        k = n // 2
        try:
            first = loss_fn(tree_map(lambda t: t[:k], output), tree_map(lambda t: t[:k], targets))
            rest = loss_fn(tree_map(lambda t: t[k:], output), tree_map(lambda t: t[k:], targets))
        except (RuntimeError, IndexError, TypeError, ValueError):
            return
        _check_mean(
            loss.detach(),
            (k * first.reshape(()) + (n - k) * rest.reshape(())) / n,
            "from two halves",
        )


def _check_mean(plain, combined, how):
    tol = 1e3 * torch.finfo(plain.dtype).eps * max(1.0, float(plain.abs()))
    if float((combined - plain).abs()) > tol:
        raise ValueError(
            "loss_fn(model(inputs), targets) is not the mean of the per-sample losses "
            f"({float(plain):.6g} vs {float(combined):.6g} {how}): use reduction='mean' and a "
            "model without batch-coupled layers (BatchNorm in train mode) or randomness "
            "(dropout)"
        )


def _functional_module(model: torch.nn.Module, params: Mapping[str, torch.Tensor]):
    """The module to call per sample and its parameters, keyed by that module's names.

    A ``DistributedDataParallel`` (or ``DataParallel``) wrapper is looked through: its
    forward synchronises across processes and must not run inside ``vmap``.
    """
    inner = data_parallel_module(model)
    if inner is not model:
        strip = len("module.")
        return inner, {k[strip:]: v for k, v in params.items()}
    return model, dict(params)


def data_parallel_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper, else
    ``model`` itself (its parameter names carry no ``"module."`` prefix)."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def _vmap_centred_sum(
    model,
    loss_fn,
    inputs,
    targets,
    params,
    g_local,
    loss,
    precond,
    chunk_size,
    validate,
    differentiable,
):
    """``sum_i ||g_i - g_local||_Lambda^2`` over this process's samples (torch.func)."""
    module, local_params = _functional_module(model, params)
    key = dict(zip(params, local_params))  # caller's name -> module's name
    frozen = {k: v for k, v in module.named_parameters() if k not in local_params}
    frozen.update(dict(module.named_buffers()))
    centre = {key[k]: v for k, v in g_local.items()}

    def sample_loss(p, x, y):
        x1 = tree_map(lambda t: t.unsqueeze(0), x)
        y1 = tree_map(lambda t: t.unsqueeze(0), y)
        out = functional_call(module, {**frozen, **p}, (x1,))
        return loss_fn(out, y1).reshape(())

    if precond is None:
        sq_norm = _sq_norm
    else:  # the preconditioner sees the caller's parameter names
        inverse = {v: k for k, v in key.items()}

        def sq_norm(d, _):
            return _sq_norm({inverse[k]: t for k, t in d.items()}, precond)

    def centred(p, x, y):
        gi, li = grad_and_value(sample_loss)(p, x, y)
        return sq_norm({k: gi[k] - centre[k] for k in gi}, precond), li

    exact = _CompositeLayerNorm() if differentiable else contextlib.nullcontext()
    with torch.enable_grad(), _math_attention(), exact:
        sq, losses = vmap(
            centred, in_dims=(None, 0, 0), randomness="different", chunk_size=chunk_size
        )(local_params, inputs, targets)
    if validate:  # loss_fn must be the mean of the per-sample losses
        _check_mean(loss.detach(), losses.detach().mean(), "from single samples")
    return sq.sum()


def adam_preconditioner(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, torch.Tensor]:
    """Frozen diagonal preconditioner ``Lambda = 1 / (sqrt(v_hat) + eps)`` of Adam/AdamW.

    For ``torch.optim.Adam``/``AdamW`` the step is ``theta' = theta - lr m_hat /
    (sqrt(v_hat) + eps)`` with ``v_hat = v / (1 - beta2^t)``; with the preconditioner frozen
    and ``m_hat ~ g`` this is preconditioned GD with matrix learning rate ``lr * Lambda``
    (note section 1.4), so ``entropic_loss(..., lr, preconditioner=adam_preconditioner(model,
    opt))`` is the frozen-preconditioner entropic loss of Adam (momentum is not modelled).
    Returns ``{parameter name: Lambda}`` for the trainable parameters (1 where the optimizer
    holds no state yet). ``amsgrad`` uses ``max_exp_avg_sq``.
    """
    params = _trainable(model)
    owner = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    out = {}
    for name, p in params.items():
        state = optimizer.state.get(p, {})
        group = owner.get(id(p))
        if group is None:
            raise ValueError(f"parameter {name!r} is not handled by the optimizer")
        if "exp_avg_sq" not in state:
            out[name] = torch.ones_like(p)
            continue
        beta2, eps = group["betas"][1], group["eps"]
        step = float(state["step"])
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        out[name] = 1.0 / ((v / (1.0 - beta2**step)).sqrt() + eps)
    return out


def entropic_force(
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: tuple[Any, Any],
    lr: float,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Entropic force ``-grad (phi - L_gamma)`` per named trainable parameter.

    ``phi - L_gamma = discretization + noise`` is the correction of :func:`entropic_loss`
    (same keyword arguments). For GD without preconditioner it equals ``-(lr/2) H g`` with
    ``H`` the Hessian of ``L_gamma`` and ``g`` its gradient. Projected on the generator
    ``A theta`` of an exponential symmetry it equals ``(lr/2) E_B[g_B^T A g_B]``, i.e.
    ``1/(2 lr)`` times the per-step drift of the charge ``theta^T A theta`` (note section
    2.0). Returned tensors are detached, with the parameters' shapes, dtypes and devices.

    With ``process_group`` (see :func:`entropic_loss`) every rank returns the force of the
    global batch: the per-rank gradients of the correction (each one rank's share, the
    backward of the cross-rank sums included) are averaged with one ``all_reduce``.
    """
    params = _trainable(model)
    group = resolve_process_group(kwargs.get("process_group"))
    with torch.enable_grad():
        parts = entropic_loss(model, loss_fn, batch, lr, **kwargs)
        correction = parts.discretization + parts.noise
        names = list(params)
        grads = torch.autograd.grad(correction, [params[k] for k in names], allow_unused=True)
    force = {
        k: (torch.zeros_like(params[k]) if gk is None else -gk.detach())
        for k, gk in zip(names, grads)
    }
    if group is not None:
        world = dist.get_world_size(group)
        flat = torch.cat([force[k].reshape(-1) for k in names])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat = flat / world
        force, start = {}, 0
        for k in names:
            p = params[k]
            force[k] = flat[start : start + p.numel()].view_as(p)
            start += p.numel()
    return force


# ---------------------------------------------------------------------------------------
# exact per-step law of quadratic charges (NumPy or torch)


def _as_generator(A, dim: int, xp):
    if A.ndim == 1:
        if A.shape[0] != dim:
            raise ValueError(f"diagonal generator A has length {A.shape[0]}, expected {dim}")
        return A, True
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] != dim:
        raise ValueError(
            f"generator A must be ({dim}, {dim}) or a diagonal of length {dim}, got shape "
            f"{tuple(A.shape)}"
        )
    return A, False


def _quadratic(v, A, diagonal: bool, xp):
    if diagonal:
        return xp.sum(v * A * v)
    return xp.sum(v * xp.matmul(A, v))


def conserved_quantity(theta, A):
    """Quadratic charge ``C = theta^T A theta`` of a flat parameter vector ``theta``.

    ``A`` is the symmetric generator of the symmetry ``theta -> exp(lambda A) theta``, given
    as a matrix or, for a diagonal generator, as its diagonal (e.g. ``+1`` on u and ``-1``
    on w for the rescaling symmetry, ``1`` on a scale-invariant block).
    """
    xp = namespace(theta, A)
    if theta.ndim != 1:
        raise ValueError(f"theta must be a flat vector, got shape {tuple(theta.shape)}")
    A, diagonal = _as_generator(A, theta.shape[0], xp)
    return _quadratic(theta, A, diagonal, xp)


def predicted_next(C, A, grad_B, lr: float, weight_decay: float = 0.0):
    """Charge after one step: ``C' = (1 - lr*gamma)^2 C + lr^2 g_B^T A g_B``.

    Exact for ``theta' = (1 - lr*gamma) theta - lr g_B`` whenever ``g_B^T A theta = 0``
    (the Noether identity of a per-sample symmetry with symmetric generator ``A``; note
    section 2.0). ``grad_B`` is the minibatch gradient of the loss *without* weight decay.
    """
    lr = _check_positive(lr, "lr")
    weight_decay = _check_positive(weight_decay, "weight_decay", allow_zero=True)
    xp = namespace(grad_B, A)
    if grad_B.ndim != 1:
        raise ValueError(f"grad_B must be a flat vector, got shape {tuple(grad_B.shape)}")
    A, diagonal = _as_generator(A, grad_B.shape[0], xp)
    return (1.0 - lr * weight_decay) ** 2 * C + lr**2 * _quadratic(grad_B, A, diagonal, xp)


def conserved_quantity_step(C_or_theta, A, lr: float, grad_B, weight_decay: float = 0.0):
    """Exact bookkeeping of a quadratic charge over one (S)GD step, as a :class:`ChargeStep`.

    ``C_or_theta`` is either the current charge ``C`` (a scalar or 0-d array) or the flat
    parameter vector ``theta`` (then ``C = theta^T A theta``). Returns ``charge``,
    ``predicted = (1 - lr*gamma)^2 C + lr^2 g_B^T A g_B``, and its two parts
    ``entropic = lr^2 g_B^T A g_B`` and ``decay = ((1 - lr*gamma)^2 - 1) C``, so that summing
    ``entropic`` and ``decay`` along a trajectory reproduces the measured drift
    ``C_T - C_0`` to round-off for plain GD/SGD (note section 3.2). Works for NumPy arrays
    and torch tensors.
    """
    lr = _check_positive(lr, "lr")
    weight_decay = _check_positive(weight_decay, "weight_decay", allow_zero=True)
    xp = namespace(grad_B, A)
    if grad_B.ndim != 1:
        raise ValueError(f"grad_B must be a flat vector, got shape {tuple(grad_B.shape)}")
    A, diagonal = _as_generator(A, grad_B.shape[0], xp)
    if getattr(C_or_theta, "ndim", 0) == 0:
        C = C_or_theta
    else:
        if tuple(C_or_theta.shape) != tuple(grad_B.shape):
            raise ValueError(
                f"theta has shape {tuple(C_or_theta.shape)} but grad_B has {tuple(grad_B.shape)}"
            )
        check_compatible(C_or_theta, grad_B, names=("theta", "grad_B"))
        C = _quadratic(C_or_theta, A, diagonal, xp)
    entropic = lr**2 * _quadratic(grad_B, A, diagonal, xp)
    decay = ((1.0 - lr * weight_decay) ** 2 - 1.0) * C
    return ChargeStep(C, C + decay + entropic, entropic, decay)


def layer_balance(W1, W2):
    """Layer-balance charge ``Q = W1 W1^T - W2^T W2`` of two consecutive linear maps.

    ``W1`` has shape ``(..., h, d_in)`` and ``W2`` shape ``(..., d_out, h)``; ``Q`` is
    ``(..., h, h)``. Conserved by gradient flow (GL(h) symmetry ``W2 W1 = (W2 M^-1)(M W1)``,
    note section 2.2); zero on the balanced manifold of Menon & Yu.
    """
    xp = namespace(W1, W2)
    if W1.ndim < 2 or W2.ndim < 2 or W1.shape[-2] != W2.shape[-1]:
        raise ValueError(
            f"W1 (h, d_in) and W2 (d_out, h) must share the hidden width h; got shapes "
            f"{tuple(W1.shape)} and {tuple(W2.shape)}"
        )
    return xp.matmul(W1, xp.matrix_transpose(W1)) - xp.matmul(xp.matrix_transpose(W2), W2)


def layer_balance_next(Q, G1, G2, lr: float, weight_decay: float = 0.0):
    """Exact next layer balance ``Q' = (1 - lr*gamma)^2 Q + lr^2 (G1 G1^T - G2^T G2)``.

    ``G1 = dL_B/dW1`` and ``G2 = dL_B/dW2`` are the minibatch gradients (without weight
    decay) of a loss that depends on ``(W1, W2)`` only through ``W2 W1`` (possibly after other
    layers); the update is ``W' = (1 - lr*gamma) W - lr G`` (note section 2.2).
    """
    lr = _check_positive(lr, "lr")
    weight_decay = _check_positive(weight_decay, "weight_decay", allow_zero=True)
    xp = namespace(Q, G1, G2)
    if G1.ndim < 2 or G2.ndim < 2 or G1.shape[-2] != G2.shape[-1]:
        raise ValueError(
            f"G1 (h, d_in) and G2 (d_out, h) must share the hidden width h; got shapes "
            f"{tuple(G1.shape)} and {tuple(G2.shape)}"
        )
    if Q.shape[-1] != G1.shape[-2] or Q.shape[-2] != G1.shape[-2]:
        raise ValueError(f"Q has shape {tuple(Q.shape)}, expected (h, h) with h={G1.shape[-2]}")
    drift = xp.matmul(G1, xp.matrix_transpose(G1)) - xp.matmul(xp.matrix_transpose(G2), G2)
    return (1.0 - lr * weight_decay) ** 2 * Q + lr**2 * drift
