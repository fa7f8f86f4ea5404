"""Input checks and deferred finiteness checks shared by the optimizers.

:func:`check_like` (array type, device and dtype of a point against a reference) and
:func:`check_finite_at` (a value at a named iteration) raise ``ValueError`` naming the
offending quantity. :class:`FiniteMonitor` does the non-finite check of arrays on their
device (no host transfer per step) and reports the first bad iteration when
:meth:`FiniteMonitor.raise_if_bad` is called (e.g. every few hundred steps).
"""

from __future__ import annotations

from typing import Any

from .._backend import check_compatible, device_of, namespace, to_float

Array = Any

__all__ = ["check_like", "check_finite_at", "FiniteMonitor"]


def check_like(
    x: Array, reference: Array, name: str = "point", ref_name: str = "reference"
) -> None:
    """``ValueError`` unless ``x`` has the array type, device and dtype of ``reference``."""
    check_compatible(x, reference, names=(name, ref_name))


def check_finite_at(x: Any, what: str, iteration: int | None = None) -> None:
    """``ValueError`` naming ``what`` and ``iteration`` if ``x`` has NaN/inf entries.

    ``x`` may be a Python number, a NumPy array or a torch tensor (one host
    synchronisation on a GPU); per-step checks of device arrays use :class:`FiniteMonitor`.
    """
    if isinstance(x, (int, float)):
        ok = x == x and abs(x) != float("inf")
    else:
        xp = namespace(x)
        ok = bool(to_float(xp.all(xp.isfinite(x))))
    if not ok:
        where = "" if iteration is None else f" at iteration {iteration}"
        raise ValueError(f"non-finite {what}{where}")


class FiniteMonitor:
    """Deferred non-finite check of arrays, naming the first bad iteration.

    ``update(iteration, x, what)`` records on the array's device whether ``x`` has a NaN
    or infinite entry; ``raise_if_bad()`` moves one scalar to the host and raises
    ``ValueError("non-finite <what> at iteration k")`` for the first bad iteration k.
    """

    def __init__(self) -> None:
        self._first: Any = None  # 0-d integer array on the device (-1: none yet)
        self._what: list[str] = []
        self._code: Any = None  # index into _what of the first bad quantity

    def update(self, iteration: int, x: Array, what: str = "value") -> None:
        xp = namespace(x)
        if what not in self._what:
            self._what.append(what)
        bad = ~xp.all(xp.isfinite(x))
        if self._first is None:
            self._first = xp.full((), -1, dtype=xp.int64, device=device_of(x))
            self._code = xp.full((), -1, dtype=xp.int64, device=device_of(x))
        new = bad & (self._first < 0)
        self._first = xp.where(new, xp.full_like(self._first, int(iteration)), self._first)
        code = self._what.index(what)
        self._code = xp.where(new, xp.full_like(self._code, code), self._code)

    def first_bad(self) -> int | None:
        """The first iteration with a non-finite array, or None."""
        if self._first is None:
            return None
        k = int(to_float(self._first))
        return None if k < 0 else k

    def raise_if_bad(self, what: str | None = None) -> None:
        k = self.first_bad()
        if k is not None:
            label = what or self._what[int(to_float(self._code))]
            raise ValueError(f"non-finite {label} at iteration {k}")
