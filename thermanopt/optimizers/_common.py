"""Input checks and deferred finiteness checks shared by the optimizers.

:func:`check_like` (array type, device and dtype of a point against a reference) and
:func:`check_finite_at` (a value at a named iteration) raise ``ValueError`` naming the
offending quantity; :func:`check_initial_point` gives one-line errors for a start that cannot
work (wrong array type for the manifold or the cost, NaN, off the manifold, singular), and
:func:`unchecked` is the mode of the inner loops (the manifold's value checks off, see
:meth:`~thermanopt.manifolds.base.ThermanoptManifold.unchecked`). :class:`FiniteMonitor`
does the non-finite check of arrays on their device (no host transfer per step) and reports
the first bad iteration when :meth:`FiniteMonitor.raise_if_bad` is called (e.g. every few
hundred steps).
"""

from __future__ import annotations

import contextlib
from typing import Any

from .._backend import (
    check_compatible,
    check_finite,
    check_real_float,
    device_of,
    is_torch,
    namespace,
    to_float,
)
from ..manifolds.base import ThermanoptManifold

Array = Any

__all__ = [
    "check_like",
    "check_finite_at",
    "FiniteMonitor",
    "check_initial_point",
    "unchecked",
    "check_count",
]


def check_count(value: Any, name: str, minimum: int | None = 0) -> int:
    """``value`` as an int; ``ValueError`` naming ``name`` for a non-integer or one below
    ``minimum`` (None: no lower bound)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        out = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if out != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out


_NUMPY_COST_BACKENDS = ("autograd", "numpy", "jax")


def unchecked(manifold: Any) -> Any:
    """``manifold.unchecked()`` for thermanopt's manifolds, else a null context."""
    if isinstance(manifold, ThermanoptManifold):
        return manifold.unchecked()
    return contextlib.nullcontext()


def _cost_backend(problem: Any) -> str | None:
    """The name of the Pymanopt backend of a problem's cost (lower case), if it has one."""
    backend = getattr(getattr(problem, "_original_cost", None), "_backend", None)
    return None if backend is None else str(backend).lower()


def check_initial_point(
    manifold: Any, x: Any, problem: Any = None, validate: bool = True, batched: bool = False
) -> None:
    """One-line ``ValueError`` for an initial point that cannot start a run (``TypeError``
    for a non-array).

    Always (metadata only): ``x`` is a float32/float64 array; its array type (NumPy or
    torch), device and dtype are those the manifold allocates (``manifold.spec``), and its
    array type is the one the cost's Pymanopt backend computes with (a torch tensor cannot
    go to an ``autograd`` / ``numpy`` cost). With ``validate``: NaN/inf, and on
    thermanopt's manifolds ``check_point`` (on the manifold, full rank), each message
    starting with "initial point". ``batched``: ``x`` holds one point per leading index
    (Langevin chains).
    """
    check_real_float(x, "initial point")
    spec = getattr(manifold, "spec", None)
    if spec is not None and (spec.backend == "torch") != is_torch(x):
        kind = "a torch tensor" if is_torch(x) else "a NumPy array"
        want = "a torch tensor" if spec.backend == "torch" else "a NumPy array"
        raise ValueError(
            f"initial point is {kind} but the manifold was built with backend="
            f"{spec.backend!r}; pass {want}"
        )
    if spec is not None:
        spec.check(x, "initial point")  # device and dtype of the manifold's own points
    backend = _cost_backend(problem)
    if backend is not None and is_torch(x) and backend.split()[0] in _NUMPY_COST_BACKENDS:
        raise ValueError(
            f"initial point is a torch tensor but the cost uses the {backend} backend (NumPy "
            "arrays): pass a NumPy array, or decorate the cost with thermanopt.function.torch"
        )
    if not validate:
        return
    check_finite(x, "initial point")
    if isinstance(manifold, ThermanoptManifold):
        points = [x[i] for i in range(x.shape[0])] if batched else [x]
        for p in points:
            try:
                manifold.check_point(p)
            except ValueError as exc:
                raise ValueError(f"initial point: {exc}") from None


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
