"""Optimizers and samplers that see the entropy of the deep linear network.

- :class:`FreeEnergyDescent` -- Riemannian steepest descent with Armijo line search on
  the free energy F = E - T S (T fixed or following a schedule);
- :class:`RiemannianLangevin` -- batched Riemannian Langevin sampler of exp(-E/T) dvol
  on the balanced manifold and of the free-energy law on the observable quotient;
- temperature schedules :func:`constant`, :func:`geometric`, :func:`as_schedule`;
- (lazily) :class:`RiemannianSGD`, :class:`RiemannianAdam` from ``.stochastic`` and the
  torch optimizers of ``.torch_optim``.
"""

from ._common import Schedule, as_schedule, constant, geometric

__all__ = [
    "FreeEnergyDescent",
    "RiemannianLangevin",
    "Schedule",
    "constant",
    "geometric",
    "as_schedule",
    "RiemannianSGD",
    "RiemannianAdam",
]

_LAZY = {
    "FreeEnergyDescent": ".free_energy_descent",
    "RiemannianLangevin": ".langevin",
    "RiemannianSGD": ".stochastic",
    "RiemannianAdam": ".stochastic",
}


def __getattr__(name):  # lazy: each optimizer lives in its own module
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    # torch.optim optimizers of the other helper (names decided there)
    try:
        torch_optim = importlib.import_module(".torch_optim", __name__)
    except ImportError:
        torch_optim = None
    if torch_optim is not None and name in getattr(torch_optim, "__all__", ()):
        return getattr(torch_optim, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
