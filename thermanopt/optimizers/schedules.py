"""One schedule for step sizes and temperatures: a validated function of the iteration.

A :class:`Schedule` maps the iteration k (counted from 0) to a value and checks every value
it returns: finite and >= 0 (temperatures) or > 0 (``positive=True``, step sizes). Build one
with

- :func:`constant` -- v_k = v;
- :func:`geometric` -- annealing v_k = v0 rate^k (0 < rate <= 1), exactly 0 once below
  ``t_min`` (so an annealed run ends at T = 0 and minimises the energy alone);
- :func:`step_decay` -- v_k = v0 factor^(k // every);
- :func:`inverse_time` -- v_k = v0 / (1 + decay k) (Robbins-Monro: sum v = inf,
  sum v^2 < inf);
- :func:`cosine` -- v_k = v_min + (v0 - v_min)(1 + cos(pi min(k, total) / total)) / 2,
  floored at 1e-12 v0;
- :func:`as_schedule` -- a number, a Schedule or any callable of k.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "Schedule",
    "constant",
    "geometric",
    "step_decay",
    "inverse_time",
    "cosine",
    "as_schedule",
    "check_temperature",
    "check_step_size",
]


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def check_temperature(T: Any, name: str = "temperature") -> float:
    """``float(T)``; ``ValueError`` unless it is a finite number >= 0."""
    value = _number(T, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_step_size(h: Any, name: str = "step_size") -> float:
    """``float(h)``; ``ValueError`` unless it is a finite number > 0."""
    value = _number(h, name)
    if value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


class Schedule:
    """A validated schedule ``v(k)`` (k counted from 0) of a step size or a temperature.

    Args:
        fn: the callable k -> value.
        describe: a short label stored in optimizer logs.
        name: what the value is (used in error messages), e.g. ``"step_size"``.
        positive: values must be > 0 (step sizes) instead of >= 0 (temperatures).
    """

    def __init__(
        self,
        fn: Callable[[int], float],
        describe: str = "custom",
        *,
        name: str = "temperature",
        positive: bool = False,
    ) -> None:
        if not callable(fn):
            raise ValueError(f"a schedule must be callable, got {fn!r}")
        self._fn = fn
        self.describe = describe
        self.name = name
        self.positive = bool(positive)

    def __call__(self, iteration: int) -> float:
        check = check_step_size if self.positive else check_temperature
        return check(self._fn(int(iteration)), f"{self.name} at iteration {iteration}")

    @property
    def is_zero(self) -> bool:
        """True for the constant schedule 0 (nothing to add, no noise to draw)."""
        return self.describe == "constant(0.0)"

    def __repr__(self) -> str:
        return f"Schedule({self.describe})"


def constant(value: float, *, name: str = "temperature", positive: bool = False) -> Schedule:
    """v_k = value."""
    v = (check_step_size if positive else check_temperature)(value, name)
    return Schedule(lambda k: v, f"constant({v})", name=name, positive=positive)


def geometric(T0: float, rate: float, t_min: float = 0.0, **kw: Any) -> Schedule:
    """v_k = T0 rate^k (0 < rate <= 1), and exactly 0 once below ``t_min``."""
    T0 = check_temperature(T0, "T0")
    rate = _number(rate, "rate")
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    t_min = check_temperature(t_min, "t_min")

    def fn(k: int) -> float:
        v = T0 * rate**k
        return 0.0 if v < t_min else v

    return Schedule(fn, f"geometric(T0={T0}, rate={rate}, t_min={t_min})", **kw)


def step_decay(v0: float, factor: float, every: int, **kw: Any) -> Schedule:
    """v_k = v0 factor^(k // every) (piecewise constant decay, 0 < factor <= 1)."""
    v0 = check_step_size(v0, "v0")
    if not 0 < factor <= 1 or int(every) < 1:
        raise ValueError(f"step_decay needs 0 < factor <= 1 and every >= 1, got {factor}, {every}")
    kw.setdefault("positive", True)
    return Schedule(
        lambda k: v0 * factor ** (k // int(every)), f"step({v0},{factor},{every})", **kw
    )


def inverse_time(v0: float, decay: float, **kw: Any) -> Schedule:
    """v_k = v0 / (1 + decay k)."""
    v0 = check_step_size(v0, "v0")
    if _number(decay, "decay") < 0:
        raise ValueError(f"decay must be >= 0, got {decay}")
    kw.setdefault("positive", True)
    return Schedule(lambda k: v0 / (1.0 + decay * k), f"inverse_time({v0},{decay})", **kw)


def cosine(v0: float, total: int, v_min: float = 0.0, **kw: Any) -> Schedule:
    """v_k = v_min + (v0 - v_min)(1 + cos(pi min(k, total) / total)) / 2, >= 1e-12 v0."""
    v0 = check_step_size(v0, "v0")
    total = max(int(total), 1)

    def fn(k: int) -> float:
        c = 0.5 * (1.0 + math.cos(math.pi * min(k, total) / total))
        return max(v_min + (v0 - v_min) * c, 1e-12 * v0)

    kw.setdefault("positive", True)
    return Schedule(fn, f"cosine({v0},{total},{v_min})", **kw)


def as_schedule(value: Any, *, name: str = "temperature", positive: bool = False) -> Schedule:
    """A :class:`Schedule` from a number (constant), a Schedule or a callable of k.

    Numbers are validated at once (``ValueError`` naming ``name``); schedules and callables
    at every call.
    """
    if isinstance(value, Schedule):
        if value.name == name and value.positive == positive:
            return value
        return Schedule(value, value.describe, name=name, positive=positive)
    if callable(value):
        return Schedule(value, getattr(value, "__name__", "custom"), name=name, positive=positive)
    return constant(value, name=name, positive=positive)
