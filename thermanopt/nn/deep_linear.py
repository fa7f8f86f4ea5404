"""The deep linear network as a torch module: x -> W_N ... W_1 x.

``DeepLinear(width, depth, balanced=True)`` holds a stack W of shape
(depth, width, width), W[0] the first layer, and applies the end-to-end map
phi(W) = W[N-1] @ ... @ W[0] (Menon & Yu, arXiv 2509.09088; Arora, Cohen &
Hazan 2018). With ``balanced=True`` the stack is a
:class:`geoopt.ManifoldParameter` on
``as_geoopt(BalancedManifold(width, depth, backend="torch"))``: geoopt's
``RiemannianSGD`` / ``RiemannianAdam`` (or
:class:`thermanopt.optimizers.torch_optim.ThermalRiemannianSGD`) keep it on the
balanced manifold W_{p+1}^T W_{p+1} = W_p W_p^T. With ``balanced=False`` it is
an ordinary ``nn.Parameter`` for any ``torch.optim`` optimizer (Euclidean
training of the factors), started from the same balanced point, so the two
variants compute the same function at initialisation.
"""

from __future__ import annotations

from typing import Any

import geoopt
import torch
from torch import nn

from ..manifolds import balanced_from, end_to_end

__all__ = ["DeepLinear"]


class DeepLinear(nn.Module):
    """x -> phi(W) x for a stack W of ``depth`` square ``width`` x ``width`` layers.

    Args:
        width: d (inputs and outputs have d features on the last axis).
        depth: N >= 1.
        balanced: keep the factors on the balanced manifold (a geoopt
            ``ManifoldParameter``) or train them as plain Euclidean parameters.
        end_to_end: initial end-to-end matrix X0 (d x d, full rank); the
            factors start at the balanced point over X0 with frames ``frames``
            (default identity). Default: a random point of the balanced manifold
            (``BalancedManifold.random_point(generator)``) scaled so that X0 has
            spectral scale ``init_scale``.
        frames: Q_1..Q_{N-1} for the balanced initial point (shape (N-1, d, d)).
        generator: seed or torch generator for the random initial point.
        device, dtype: of the parameters (float32 by default, as torch).

    Attributes:
        weight: the stack (N, d, d).
        manifold: the geoopt manifold (balanced=True) or None.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        balanced: bool = True,
        *,
        end_to_end: torch.Tensor | None = None,
        frames: torch.Tensor | None = None,
        init_scale: float = 1.0,
        generator: Any = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if int(width) != width or width < 1:
            raise ValueError(f"width must be an integer >= 1, got {width!r}")
        if int(depth) != depth or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        self.width, self.depth, self.balanced = int(width), int(depth), bool(balanced)
        dtype = dtype or torch.get_default_dtype()
        from ..manifolds.balanced import BalancedManifold

        base = BalancedManifold(self.width, self.depth, backend="torch", device=device, dtype=dtype)
        if end_to_end is None:
            W0 = base.random_point(generator)
            if init_scale != 1.0:
                W0 = W0 * float(init_scale) ** (1.0 / self.depth)
        else:
            X0 = torch.as_tensor(end_to_end)
            if tuple(X0.shape) != (self.width, self.width):
                raise ValueError(
                    f"end_to_end must have shape ({width}, {width}), got {tuple(X0.shape)}"
                )
            X0 = X0.to(device=base.spec.resolved_device, dtype=base.spec.resolved_dtype)
            if frames is not None:
                frames = torch.as_tensor(frames).to(X0)
            W0 = balanced_from(X0, frames, self.depth)
        base.check_point(W0)
        if self.balanced:
            from ..manifolds.geoopt import as_geoopt

            self.manifold = as_geoopt(base)
            self.weight = geoopt.ManifoldParameter(W0.clone(), manifold=self.manifold)
        else:
            self.manifold = None
            self.weight = nn.Parameter(W0.clone())
        self._base = base

    def end_to_end(self) -> torch.Tensor:
        """phi(W) = W[N-1] @ ... @ W[0] (differentiable)."""
        return end_to_end(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """phi(W) applied to the last axis of x: x @ phi(W)^T."""
        if x.shape[-1] != self.width:
            raise ValueError(f"input has {x.shape[-1]} features, DeepLinear expects {self.width}")
        if x.dtype != self.weight.dtype or x.device != self.weight.device:
            raise ValueError(
                f"input is {x.dtype} on {x.device}, the module {self.weight.dtype} on "
                f"{self.weight.device}"
            )
        return x @ self.end_to_end().mT

    def balance_residual(self) -> torch.Tensor:
        """max_p |W_{p+1}^T W_{p+1} - W_p W_p^T|_F / max_p |W_p|_F^2 (0 on the manifold)."""
        W = self.weight.detach()
        if self.depth == 1:
            return W.new_zeros(())
        r = W[1:].mT @ W[1:] - W[:-1] @ W[:-1].mT
        return r.flatten(1).norm(dim=1).max() / W.flatten(1).pow(2).sum(1).max()

    def extra_repr(self) -> str:
        return f"width={self.width}, depth={self.depth}, balanced={self.balanced}"
