"""A ``torch.optim`` optimizer for geoopt parameters with entropy and Langevin noise.

geoopt's ``RiemannianSGD``/``RiemannianAdam`` descend the loss on a manifold;
they have no entropy regularisation and no Langevin noise. This optimizer adds
both, for ``geoopt.ManifoldParameter`` s (any geoopt manifold, in particular
``thermanopt.manifolds.as_geoopt(...)``) and plain tensors (Euclidean):

    g      = egrad2rgrad(p, grad + weight_decay p) - T grad S(p)
    m      = momentum T_{p_old -> p}(m) + g                         (heavy ball)
    p_new  = R2_p( -lr m + sqrt(2 lr T') xi ),   xi = P_p(N(0, I))

T >= 0 is the entropy temperature (free energy F = loss - T S; S the DLN
entropy S_N of the end-to-end matrix, Menon & Yu, arXiv 2509.09088, available
on ``as_geoopt(BalancedManifold)`` and ``as_geoopt(ObservableQuotient)``) and
T' >= 0 the Langevin temperature. The noisy step is the Euler-Maruyama scheme
of dp = -grad loss dt + sqrt(2 T') dB_M on a Riemannian submanifold of
Euclidean space; it samples exp(-loss/T') dvol_M to O(lr) only with a
*second-order* retraction R2 (the O(sqrt(lr)) noise makes the retraction's
curvature error an O(lr) drift). Every step calls the manifold's ``retr``; noise
is accepted on manifolds that geoopt marks ``reversible`` (geoopt's own
convention for samplers: ``Euclidean``, and ``as_geoopt`` views of manifolds with
the embedded metric and a second-order retraction, such as the balanced
manifold). Elsewhere (the DLN observable quotient, geoopt's Sphere, the Poincare
ball, ...) noise raises ``ValueError``: use
:class:`thermanopt.optimizers.RiemannianLangevin`. The pushforward of the
balanced-manifold law to the end-to-end matrix is exp(-(E - T' S_N)/T') dvol_{g_N}:
Langevin upstairs already carries the entropic force at temperature T'.
"""

from __future__ import annotations

import math
from typing import Any

import geoopt
import torch

from ..entropy.model import EntropyModel
from ..manifolds.geoopt import GeooptManifold
from .schedules import check_step_size, check_temperature

__all__ = ["ThermalRiemannianSGD"]


def _manifold_of(p: torch.Tensor) -> geoopt.Manifold:
    if isinstance(p, (geoopt.ManifoldParameter, geoopt.ManifoldTensor)):
        return p.manifold
    return geoopt.Euclidean()


def _entropy_gradient(manifold: geoopt.Manifold, p: torch.Tensor) -> torch.Tensor:
    """grad S of the DLN manifold behind an :func:`~thermanopt.manifolds.as_geoopt` view."""
    if not isinstance(manifold, GeooptManifold):
        raise TypeError(
            f"entropy regularisation needs as_geoopt(BalancedManifold/ObservableQuotient); "
            f"got {manifold!r}"
        )
    return EntropyModel(manifold.manifold).riemannian_gradient(p)


class ThermalRiemannianSGD(torch.optim.Optimizer):
    """Riemannian SGD with momentum, entropy regularisation and Langevin noise.

    Args:
        params: parameters or parameter groups (geoopt ManifoldParameters or tensors).
        lr: learning rate > 0.
        momentum: heavy-ball momentum in [0, 1) (transported with the manifold's ``transp``).
        temperature: entropy temperature T >= 0 (adds -T grad S; needs a manifold
            with ``entropy_gradient``, e.g. ``as_geoopt(BalancedManifold(...))``).
        noise_temperature: Langevin temperature T' >= 0.
        weight_decay: coupled L2 decay (added to the Euclidean gradient).
        generator: ``torch.Generator`` (or seed) for the noise; it must live on
            the parameters' device.

    ``step()`` raises ``ValueError`` for a non-finite gradient (naming the
    step count) and for device/dtype mismatches between parameters and state.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        temperature: float = 0.0,
        noise_temperature: float = 0.0,
        weight_decay: float = 0.0,
        generator: Any = None,
    ) -> None:
        check_step_size(lr, "lr")
        check_temperature(temperature)
        check_temperature(noise_temperature, "noise_temperature")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            temperature=temperature,
            noise_temperature=noise_temperature,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)
        self._seed = generator
        self._generators: dict = {}
        self._steps = 0

    def _generator(self, device: torch.device) -> torch.Generator:
        if isinstance(self._seed, torch.Generator):
            if self._seed.device.type != device.type:
                raise ValueError(f"generator is on {self._seed.device}, parameters on {device}")
            return self._seed
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            if self._seed is None:
                g.seed()
            else:
                g.manual_seed(int(self._seed))
            self._generators[key] = g
        return self._generators[key]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._steps += 1
        for group in self.param_groups:
            lr = check_step_size(group["lr"], "lr")
            mu = group["momentum"]
            T = check_temperature(group["temperature"])
            Tn = check_temperature(group["noise_temperature"], "noise_temperature")
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.dtype != p.dtype or p.grad.device != p.device:
                    raise ValueError(
                        f"gradient is {p.grad.dtype} on {p.grad.device}, parameter {p.dtype} "
                        f"on {p.device}"
                    )
                if not bool(torch.isfinite(p.grad).all()):
                    raise ValueError(f"non-finite gradient at step {self._steps}")
                manifold = _manifold_of(p)
                egrad = p.grad + wd * p if wd else p.grad
                g = manifold.egrad2rgrad(p, egrad)
                if T > 0:
                    g = g - T * _entropy_gradient(manifold, p)
                state = self.state[p]
                if mu > 0:
                    m = state.get("momentum_buffer")
                    m = g.clone() if m is None else m.mul_(mu).add_(g)
                    state["momentum_buffer"] = m
                    direction = m
                else:
                    direction = g
                v = -lr * direction
                if Tn > 0:
                    if not manifold.reversible:
                        raise ValueError(
                            f"Langevin noise on {manifold!r}: geoopt marks it not reversible "
                            "(no second-order retraction with the embedded metric); use "
                            "thermanopt.optimizers.RiemannianLangevin"
                        )
                    xi = torch.randn(
                        p.shape, generator=self._generator(p.device), dtype=p.dtype, device=p.device
                    )
                    v = v + math.sqrt(2.0 * lr * Tn) * manifold.proju(p, xi)
                new = manifold.retr(p, v)
                if mu > 0:
                    state["momentum_buffer"] = manifold.transp(p, new, state["momentum_buffer"])
                p.copy_(new)
        return loss
