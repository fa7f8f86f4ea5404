"""Small helpers shared by the optimizers of :mod:`thermanopt.optimizers`.

Temperature schedules
---------------------
A schedule is a callable ``schedule(iteration) -> float`` returning the
temperature T >= 0 at an iteration counted from 0. Build one with

- :func:`constant` -- ``T_k = T``;
- :func:`geometric` -- annealing ``T_k = T0 * rate**k`` (``0 < rate <= 1``),
  set to exactly 0 once it falls below ``t_min`` (so a run reaches T = 0 and
  then minimises the energy alone);
- :func:`as_schedule` -- accepts a number, a schedule or any callable of the
  iteration and returns a validated :class:`Schedule`.

Every value a schedule returns is checked (finite, >= 0) when it is evaluated,
and a bad value raises ``ValueError`` naming the iteration.

Input checks
------------
:func:`check_temperature`, :func:`check_step_size`, :func:`check_like`
(array type, device and dtype of a point against a reference) and
:func:`check_finite_at` (a cost value or array at a named iteration) raise
``ValueError`` with a message that names the offending quantity.
:class:`FiniteMonitor` does the non-finite check of batched arrays *on the
device* (no host transfer per step) and reports the first bad iteration when
:meth:`FiniteMonitor.raise_if_bad` is called (e.g. every few hundred steps).

Tolerances
----------
:func:`default_rtol` and :func:`tolerance` give dtype-aware tolerances:
``eps ** power`` times a factor, so float32 runs get ~1e-4 where float64 runs
get ~1e-10 (``power = 0.6``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .._backend import check_compatible, is_torch

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

Array = Any

__all__ = [
    "Schedule",
    "constant",
    "geometric",
    "as_schedule",
    "check_temperature",
    "check_step_size",
    "check_like",
    "check_finite_at",
    "FiniteMonitor",
    "dtype_eps",
    "default_rtol",
    "tolerance",
]


# ---------------------------------------------------------------- checks


def check_temperature(T: Any, name: str = "temperature") -> float:
    """Return ``float(T)``; ``ValueError`` unless it is a finite number >= 0."""
    try:
        value = float(T)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {T!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_step_size(h: Any, name: str = "step_size") -> float:
    """Return ``float(h)``; ``ValueError`` unless it is a finite number > 0."""
    try:
        value = float(h)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {h!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_like(
    x: Array, reference: Array, name: str = "point", ref_name: str = "reference"
) -> None:
    """``ValueError`` unless ``x`` has the array type, device and dtype of ``reference``."""
    check_compatible(x, reference, names=(name, ref_name))


def _finite(x: Any) -> bool:
    if is_torch(x):
        return bool(torch.isfinite(x).all())
    return bool(np.isfinite(np.asarray(x)).all())


def check_finite_at(x: Any, what: str, iteration: int | None = None) -> None:
    """``ValueError`` naming ``what`` and ``iteration`` if ``x`` has NaN/inf entries.

    ``x`` may be a Python number, a NumPy array or a torch tensor (one host
    synchronisation on torch). Use it on scalars a solver already moved to the
    host (costs, norms) or at API boundaries; for per-step checks of device
    arrays use :class:`FiniteMonitor`.
    """
    if not _finite(x):
        where = "" if iteration is None else f" at iteration {iteration}"
        raise ValueError(f"non-finite {what}{where}")


class FiniteMonitor:
    """Deferred non-finite check of device arrays, naming the first bad iteration.

    ``update(iteration, x)`` records, without leaving the device, whether
    ``x`` has a NaN or infinite entry; ``raise_if_bad(what)`` then moves one
    scalar to the host and raises ``ValueError("non-finite <what> at iteration
    k")`` with the first bad iteration ``k``. Call ``raise_if_bad`` every few
    hundred steps and at the end of a run.
    """

    def __init__(self) -> None:
        self._first: Any = None  # torch: 0-d int64 tensor (-1 = none); numpy: int or None
        self._what: str | None = None

    def update(self, iteration: int, x: Array, what: str | None = None) -> None:
        if is_torch(x):
            bad = ~torch.isfinite(x).all()
            it = torch.as_tensor(int(iteration), device=x.device)
            if self._first is None or not is_torch(self._first):
                self._first = torch.full((), -1, dtype=torch.int64, device=x.device)
            self._first = torch.where(bad & (self._first < 0), it, self._first)
            if what is not None and self._what is None:
                # the label of the first monitored quantity; refined on raise
                self._what = what
        else:
            if self._first is None and not np.isfinite(np.asarray(x)).all():
                self._first = int(iteration)
                self._what = what

    def first_bad(self) -> int | None:
        """The first iteration with a non-finite array, or None."""
        if self._first is None:
            return None
        if is_torch(self._first):
            k = int(self._first.item())
            return None if k < 0 else k
        return int(self._first)

    def raise_if_bad(self, what: str | None = None) -> None:
        k = self.first_bad()
        if k is not None:
            label = what or self._what or "value"
            raise ValueError(f"non-finite {label} at iteration {k}")


# ---------------------------------------------------------------- tolerances


def dtype_eps(x_or_dtype: Any) -> float:
    """Machine epsilon of a NumPy/torch array or dtype (float64 if unknown)."""
    dtype = x_or_dtype if isinstance(x_or_dtype, type) else getattr(x_or_dtype, "dtype", x_or_dtype)
    if torch is not None and isinstance(dtype, torch.dtype):
        return float(torch.finfo(dtype).eps)
    try:
        return float(np.finfo(np.dtype(dtype)).eps)
    except (TypeError, ValueError):
        return float(np.finfo(np.float64).eps)


def tolerance(x_or_dtype: Any, power: float = 0.6, factor: float = 1.0) -> float:
    """``factor * eps ** power`` for the dtype of ``x_or_dtype``."""
    return float(factor * dtype_eps(x_or_dtype) ** power)


def default_rtol(x_or_dtype: Any) -> float:
    """Default relative tolerance: ~5e-10 in float64, ~7e-5 in float32."""
    return tolerance(x_or_dtype, power=0.6, factor=1.0)


# ---------------------------------------------------------------- schedules


class Schedule:
    """A temperature schedule ``T(iteration)`` (iteration counted from 0).

    Wraps a callable and validates every value it returns (finite and >= 0).
    ``describe`` is a short human-readable label stored in optimizer logs.
    """

    def __init__(self, fn: Callable[[int], float], describe: str = "custom") -> None:
        if not callable(fn):
            raise ValueError(f"a schedule must be callable, got {fn!r}")
        self._fn = fn
        self.describe = describe

    def __call__(self, iteration: int) -> float:
        return check_temperature(self._fn(int(iteration)), f"temperature at iteration {iteration}")

    def __repr__(self) -> str:
        return f"Schedule({self.describe})"


def constant(T: float) -> Schedule:
    """The constant schedule ``T_k = T`` (``T >= 0``)."""
    value = check_temperature(T)
    return Schedule(lambda k: value, f"constant({value})")


def geometric(T0: float, rate: float, t_min: float = 0.0) -> Schedule:
    """Geometric annealing ``T_k = T0 * rate**k``, and exactly 0 once below ``t_min``.

    ``0 < rate <= 1``. With ``t_min > 0`` the schedule reaches T = 0 after
    ``ceil(log(t_min / T0) / log(rate))`` iterations, so the tail of a run
    minimises the energy alone.
    """
    T0 = check_temperature(T0, "T0")
    rate = float(rate)
    if not (0.0 < rate <= 1.0):
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    t_min = check_temperature(t_min, "t_min")

    def fn(k: int) -> float:
        value = T0 * rate**k
        return 0.0 if value < t_min else value

    return Schedule(fn, f"geometric(T0={T0}, rate={rate}, t_min={t_min})")


def as_schedule(temperature: Any) -> Schedule:
    """A :class:`Schedule` from a number (constant), a Schedule, or a callable of k."""
    if isinstance(temperature, Schedule):
        return temperature
    if callable(temperature):
        return Schedule(temperature, getattr(temperature, "__name__", "custom"))
    return constant(temperature)
