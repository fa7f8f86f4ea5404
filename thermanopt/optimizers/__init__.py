"""Optimizers and samplers that see the entropy of the deep linear network.

- :class:`FreeEnergyDescent` -- Riemannian steepest descent with Armijo line search on the
  free energy F = E - T S (T fixed or following a schedule);
- :class:`RiemannianLangevin` -- batched Riemannian Langevin sampler of exp(-E/T) dvol on
  the balanced manifold and of the free-energy law on the observable quotient;
- :class:`RiemannianSGD`, :class:`RiemannianAdam` -- stochastic Riemannian optimizers on
  a :class:`StochasticProblem` (or a ``pymanopt.Problem``), with optional entropy
  regularisation and Langevin noise;
- :class:`ThermalRiemannianSGD` -- the same step as a ``torch.optim`` optimizer for geoopt
  parameters;
- one :class:`Schedule` for step sizes and temperatures: :func:`constant`,
  :func:`geometric`, :func:`step_decay`, :func:`inverse_time`, :func:`cosine`,
  :func:`as_schedule`.
"""

from .free_energy_descent import FreeEnergyDescent
from .langevin import RiemannianLangevin
from .problem import StochasticProblem
from .schedules import (
    Schedule,
    as_schedule,
    constant,
    cosine,
    geometric,
    inverse_time,
    step_decay,
)
from .stochastic import RiemannianAdam, RiemannianSGD
from .torch_optim import ThermalRiemannianSGD

__all__ = [
    "FreeEnergyDescent",
    "RiemannianLangevin",
    "RiemannianSGD",
    "RiemannianAdam",
    "ThermalRiemannianSGD",
    "StochasticProblem",
    "Schedule",
    "constant",
    "geometric",
    "step_decay",
    "inverse_time",
    "cosine",
    "as_schedule",
]
