"""Independent Jacobian nullity of a model's output with respect to its parameters.

The reference the zoo tests compare ``find_symmetries`` against: the rows of
``d output / d parameters`` over stacked random inputs span the orthogonal complement of
every function-level continuous symmetry direction, so the nullity of the stacked Jacobian
(once adding inputs no longer lowers it) is the true continuous symmetry dimension at that
parameter point. Nothing here uses :mod:`thermanopt.analysis`.

The rows are folded into a triangular factor (QR) as they come, so memory stays
``O(P^2)``. The rank is cut at the first drop of the singular spectrum by 1e3 to below a
relative 1e-5: a float64 model has its null singular values near 1e-16 of the largest, but a model
that round-trips through float32 (Hugging Face's LLaMA RMSNorm) has them near 1e-7, and
both must give the same nullity. ``floor`` records where the null values sit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.func import functional_call, jacrev, vmap

GAP = 1e3  # the smallest ratio between the last kept and the first null singular value
CUT = 1e-5  # null singular values lie below CUT * largest
SAMPLES = 64  # samples per vectorised Jacobian call
MIN_SAMPLES = 32  # the rows of one sample are few directions (a short token sequence)


@dataclass
class Nullity:
    """Nullity of the stacked Jacobian and how it was reached."""

    nullity: int
    n_parameters: int
    rows: int
    history: list[int]
    floor: float  # largest null singular value / largest singular value (0.0 if none)
    gap: float  # smallest kept / largest null singular value (inf if none null)


def output_vector(out) -> torch.Tensor:
    """All floating-point tensors of a (pytree) model output, flattened into one vector."""
    leaves = [t for t in pytree.tree_leaves(out)
              if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not leaves and hasattr(out, "to_tuple"):  # ModelOutput not registered as a pytree
        leaves = [t for t in out.to_tuple() if isinstance(t, torch.Tensor)]
    return torch.cat([t.reshape(-1) for t in leaves])


def _functional(model: nn.Module):
    names = [n for n, _ in model.named_parameters()]
    values = tuple(p.detach() for _, p in model.named_parameters())

    def f(flat: tuple, inputs: tuple) -> torch.Tensor:
        return output_vector(functional_call(model, dict(zip(names, flat)), inputs))

    return f, values


def _rows(blocks: tuple, leading: int) -> torch.Tensor:
    rows = 1
    for n in blocks[0].shape[:leading]:
        rows *= n
    return torch.cat([b.reshape(rows, -1) for b in blocks], 1).to(torch.float64)


def jacobian(model: nn.Module, inputs: tuple) -> torch.Tensor:
    """``d output_vector / d parameters`` as a dense (outputs x parameters) float64 matrix.

    Samples are differentiated one at a time (each row's backward pass only runs over its
    own sample), vectorised with ``vmap`` where the model allows it, else in a loop.
    """
    f, values = _functional(model)

    def one(flat: tuple, *sample: torch.Tensor) -> torch.Tensor:
        return f(flat, tuple(x.unsqueeze(0) for x in sample))

    try:
        return _rows(vmap(jacrev(one), in_dims=(None,) + (0,) * len(inputs))(values, *inputs),
                     2)
    except (RuntimeError, NotImplementedError, ValueError):  # an op without a batching rule
        batch = inputs[0].shape[0]
        return torch.cat([_rows(jacrev(f)(values, tuple(x[i:i + 1] for x in inputs)), 1)
                          for i in range(batch)])


def cut_rank(singular: torch.Tensor) -> tuple[int, float, float]:
    """(rank, floor, gap) of a descending singular spectrum.

    The cut is the first drop (from the top) by at least ``GAP`` to a value below ``CUT``
    times the largest; without such a drop every value above ``CUT`` is kept.
    """
    if singular.numel() == 0 or singular[0] == 0:
        return 0, 0.0, float("inf")
    rel = (singular / singular[0]).clamp_min(1e-300)
    ratios = rel[:-1] / rel[1:]
    drops = ((ratios >= GAP) & (rel[1:] < CUT)).nonzero().flatten()
    if drops.numel():
        k = int(drops[0]) + 1
        return k, float(rel[k]), float(ratios[k - 1])
    k = int((rel > CUT).sum())
    return k, float(rel[k]) if k < rel.numel() else 0.0, 1.0


def _rescaled(draw):
    """``draw`` with each floating-point sample scaled by ``exp(N(0, 1))``.

    Inputs of many scales reach the directions that one scale leaves nearly silent (units
    of a ReLU net that rarely fire, saturated activations), so the nullity settles sooner.
    """

    def scaled(batch: int, gen: torch.Generator) -> tuple:
        out = []
        for x in draw(batch, gen):
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                shape = (batch,) + (1,) * (x.dim() - 1)
                x = x * torch.randn(shape, generator=gen, dtype=x.dtype).exp()
            out.append(x)
        return tuple(out)

    return scaled


def _batches(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]


def stable_nullity(model: nn.Module, draw, *, max_factor: float = 6.0,
                   seed: int = 123) -> Nullity:
    """Nullity over stacked random inputs ``draw(batch, generator)``, grown until it is stable.

    The first chunk has about as many rows as parameters (and at least ``MIN_SAMPLES``
    samples), later chunks half as many; it
    stops once a chunk leaves the nullity unchanged (or at ``max_factor`` x the parameter
    count of rows).
    """
    gen = torch.Generator().manual_seed(seed)
    draw = _rescaled(draw)
    p = sum(t.numel() for t in model.parameters())
    per_sample = output_vector(model(*draw(1, gen))).numel()
    r, rows, history = None, 0, []
    while True:
        want = p if r is None else p // 2  # first P rows, then chunks of P/2
        samples = max(MIN_SAMPLES // (1 if r is None else 2), -(-want // per_sample))
        j = torch.cat([jacobian(model, draw(b, gen)) for b in _batches(samples, SAMPLES)])
        rows += j.shape[0]
        r = torch.linalg.qr(j if r is None else torch.cat([r, j]), mode="r").R
        rank, floor, gap = cut_rank(torch.linalg.svdvals(r))
        history.append(p - rank)
        stable = len(history) >= 2 and history[-1] == history[-2]
        if len(history) >= 2 and (stable or rows >= max_factor * p):
            return Nullity(p - rank, p, rows, history, floor, gap)
