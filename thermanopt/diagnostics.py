"""Numerical checks of gradients, Hessians and retractions that return numbers.

Pymanopt's ``check_gradient``, ``check_hessian`` and ``check_retraction``
(``pymanopt/tools/diagnostics.py``) print, call ``plt.show()`` and fail on
NumPy >= 2.4 (``identify_linear_piece`` assigns a 1-element array to a float
slot). These versions return a :class:`DiagnosticResult` with the fitted
log-log slope, work on NumPy arrays and torch tensors of any device, and save
the log-log plot only when asked (``plot="path.png"``).

Along the curve c(t) = R_x(t d) of a retraction R:

- gradient check:  e(t) = |f(c(t)) - f(x) - t <grad f(x), d>|           slope 2;
- Hessian check:   e(t) = |f(c(t)) - f(x) - t <grad, d> - t^2/2 <Hess[d], d>|
  slope 3 where the Hessian is exact *and* either x is critical or R is second
  order (along a first-order retraction the slope is 2 even for an exact Hessian);
- retraction check: e(t) = dist(R_x(t d), ref(t)); slope k + 1 for a retraction
  that agrees with the reference curve to order k (``ref = exp``: k = 2 means a
  second-order retraction; ``ref(t) = x + t d``: k = 1 means a retraction).

The slope is fitted on the longest window of the log-log curve that is straight
(small residual) and above the floating-point noise floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._backend import eps as _eps
from ._backend import is_torch, make_generator

__all__ = [
    "DiagnosticResult",
    "check_gradient",
    "check_hessian",
    "check_retraction",
    "fit_slope",
    "random_point",
    "random_tangent_vector",
]

Array = Any


@dataclass
class DiagnosticResult:
    """Outcome of a check: fitted ``slope`` against the ``expected`` one.

    ``exact`` is True when every error sits at the noise floor (the model is
    exact, e.g. a quadratic cost along a geodesic); then ``slope`` is NaN and
    the check passes. ``extra`` holds check-specific numbers (Hessian symmetry,
    linearity, tangency errors, ...).
    """

    name: str
    slope: float
    expected: float
    steps: np.ndarray
    errors: np.ndarray
    window: tuple[int, int]
    exact: bool = False
    tolerance: float = 0.1
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the slope is within ``tolerance`` of the expected one (or exact)."""
        if self.exact:
            return True
        return bool(abs(self.slope - self.expected) <= self.tolerance)

    def plot(self, path: str) -> str:
        """Save the log-log plot of error against step with the fitted window."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        mask = self.errors > 0
        ax.loglog(self.steps[mask], self.errors[mask], ".-", label="error")
        i, j = self.window
        if not self.exact and j > i:
            t = self.steps[i:j]
            ref = self.errors[i] * (t / t[0]) ** self.expected
            ax.loglog(t, ref, "--", label=f"slope {self.expected:g} (expected)")
            ax.set_title(f"{self.name}: fitted slope {self.slope:.3f}")
        else:
            ax.set_title(f"{self.name}: exact to rounding")
        ax.set_xlabel("step t")
        ax.set_ylabel("error")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def fit_slope(
    steps: np.ndarray, errors: np.ndarray, floor: float, min_points: int = 6
) -> tuple[float, tuple[int, int], bool]:
    """Slope of log(errors) against log(steps) on the straightest clean window.

    Points at or below ``floor`` (rounding noise) are discarded. Among the
    windows of consecutive clean points, the longest one whose straight-line
    residual (max deviation in log10) is below 0.05 is used; ties go to the
    smaller steps. Returns ``(slope, (start, stop), exact)`` where ``exact``
    says that no error rises above the floor (the model is exact).
    """
    steps = np.asarray(steps, dtype=float)
    errors = np.asarray(errors, dtype=float)
    # the smallest steps measure rounding noise (in float32 it sits far above
    # eps * |f|): stay a decade above it
    smallest = errors[: max(3, len(errors) // 8)]
    smallest = smallest[np.isfinite(smallest)]
    if smallest.size:
        floor = max(floor, 10.0 * float(np.median(smallest)))
    clean = np.isfinite(errors) & (errors > floor)
    if not clean.any():
        return math.nan, (0, 0), True
    if clean.sum() < min_points:  # too few clean points for a window: fit what there is
        idx = np.flatnonzero(clean)
        if len(idx) < 2:
            return math.nan, (int(idx[0]), int(idx[0]) + 1), False
        coef = np.polyfit(np.log10(steps[idx]), np.log10(errors[idx]), 1)
        return float(coef[0]), (int(idx[0]), int(idx[-1]) + 1), False
    lx, ly = np.log10(steps), np.log10(np.where(clean, errors, 1.0))
    n = len(steps)
    best: tuple[int, float, int, int] | None = None
    for length in range(n, min_points - 1, -1):
        for i in range(0, n - length + 1):
            j = i + length
            if not clean[i:j].all():
                continue
            coef = np.polyfit(lx[i:j], ly[i:j], 1)
            resid = np.max(np.abs(np.polyval(coef, lx[i:j]) - ly[i:j]))
            if resid < 0.05:
                best = (length, float(coef[0]), i, j)
                break
        if best is not None:
            break
    if best is None:  # nothing straight: fit the clean points as they are
        idx = np.flatnonzero(clean)
        coef = np.polyfit(lx[idx], ly[idx], 1)
        return float(coef[0]), (int(idx[0]), int(idx[-1]) + 1), False
    return best[1], (best[2], best[3]), False


def _steps(x, n: int = 41, hi: float = -1.0) -> np.ndarray:
    """Log-spaced steps from sqrt(eps) of the point's dtype (1e-8 in float64) to 10^hi."""
    lo = max(-8.0, 0.5 * math.log10(_dtype_eps(x)))
    return np.logspace(lo, hi, n)


def _generator(manifold, generator):
    """One generator for all draws of a check (a seed would repeat the same numbers)."""
    spec = getattr(manifold, "spec", None)
    return make_generator(generator, spec) if spec is not None else generator


def _start(problem, point, direction, generator):
    manifold = problem.manifold
    generator = _generator(manifold, generator)
    if point is None:
        point = random_point(manifold, generator)
    if direction is None:
        direction = _random_tangent(manifold, point, generator)
    return manifold, point, direction


def random_point(manifold, generator=None):
    """``manifold.random_point(generator=...)``, or without it for manifolds (such as
    Pymanopt's own) whose ``random_point`` takes no generator."""
    try:
        return manifold.random_point(generator=generator)
    except TypeError:
        return manifold.random_point()


def random_tangent_vector(manifold, point, generator=None):
    """``manifold.random_tangent_vector(point, generator=...)``, with the same fallback."""
    try:
        return manifold.random_tangent_vector(point, generator=generator)
    except TypeError:
        return manifold.random_tangent_vector(point)



def _random_tangent(manifold, point, generator):
    d = random_tangent_vector(manifold, point, generator)
    return d / manifold.norm(point, d)


def _dtype_eps(x) -> float:
    return _eps(x) if (is_torch(x) or hasattr(x, "dtype")) else float(np.finfo(float).eps)


def _maybe_plot(result: DiagnosticResult, plot: str | None) -> DiagnosticResult:
    if plot:
        result.plot(plot)
    return result


def check_gradient(
    problem,
    point: Array | None = None,
    direction: Array | None = None,
    *,
    generator: Any = None,
    retraction: Callable | None = None,
    plot: str | None = None,
) -> DiagnosticResult:
    """Taylor check of the Riemannian gradient of a Pymanopt ``problem``.

    e(t) = |f(R_x(t d)) - f(x) - t <grad f(x), d>_x| must decay with slope 2.
    ``retraction`` defaults to ``manifold.retraction``. Also reports the
    tangency error |grad - P_x(grad)| / |grad| when the manifold has
    ``to_tangent_space``.
    """
    manifold, x, d = _start(problem, point, direction, generator)
    retract = retraction or manifold.retraction
    f0 = problem.cost(x)
    g = problem.riemannian_gradient(x)
    df0 = manifold.inner_product(x, g, d)
    steps = _steps(x)
    errors = np.array([abs(problem.cost(retract(x, t * d)) - f0 - t * df0) for t in steps.tolist()])
    floor = 10.0 * _dtype_eps(x) * (abs(f0) + 1.0)
    slope, window, exact = fit_slope(steps, errors, floor)
    extra = {"cost": float(f0), "directional_derivative": float(df0)}
    if hasattr(manifold, "to_tangent_space"):
        try:
            gn = manifold.norm(x, g)
            tang = manifold.norm(x, g - manifold.to_tangent_space(x, g))
            extra["tangency_error"] = tang / gn if gn > 0 else tang
        except NotImplementedError:
            pass
    res = DiagnosticResult("gradient", slope, 2.0, steps, errors, window, exact, extra=extra)
    return _maybe_plot(res, plot)


def check_hessian(
    problem,
    point: Array | None = None,
    direction: Array | None = None,
    *,
    generator: Any = None,
    retraction: Callable | None = None,
    expected_slope: float = 3.0,
    plot: str | None = None,
) -> DiagnosticResult:
    """Taylor, symmetry and linearity check of the Riemannian Hessian.

    e(t) = |f(R_x(t d)) - f(x) - t <grad, d> - t^2/2 <Hess f(x)[d], d>| has slope 3
    when the Hessian is exact and x is critical or R is second order; pass
    ``expected_slope=2`` when checking along a first-order retraction away from
    critical points. ``extra`` holds ``symmetry_error``
    (|<H a, b> - <a, H b>| relative), ``linearity_error``
    (|H[a u + b v] - a H[u] - b H[v]| relative) and ``tangency_error``.
    """
    manifold, x, d = _start(problem, point, direction, generator)
    retract = retraction or manifold.retraction
    f0 = problem.cost(x)
    g = problem.riemannian_gradient(x)
    hd = problem.riemannian_hessian(x, d)
    df0 = manifold.inner_product(x, g, d)
    d2f0 = manifold.inner_product(x, hd, d)
    steps = _steps(x)
    errors = np.array(
        [
            abs(problem.cost(retract(x, t * d)) - f0 - t * df0 - 0.5 * t * t * d2f0)
            for t in steps.tolist()
        ]
    )
    floor = 10.0 * _dtype_eps(x) * (abs(f0) + 1.0)
    slope, window, exact = fit_slope(steps, errors, floor)

    u = _random_tangent(manifold, x, None)
    v = _random_tangent(manifold, x, None)
    hu = problem.riemannian_hessian(x, u)
    hv = problem.riemannian_hessian(x, v)
    scale = max(manifold.norm(x, hu), manifold.norm(x, hv), 1e-300)
    sym = abs(manifold.inner_product(x, hu, v) - manifold.inner_product(x, u, hv)) / scale
    a, b = 0.7, -1.3
    lin = manifold.norm(x, problem.riemannian_hessian(x, a * u + b * v) - (a * hu + b * hv))
    extra = {
        "cost": float(f0),
        "symmetry_error": float(sym),
        "linearity_error": float(lin / scale),
    }
    if hasattr(manifold, "to_tangent_space"):
        try:
            extra["tangency_error"] = manifold.norm(x, hd - manifold.to_tangent_space(x, hd)) / max(
                manifold.norm(x, hd), 1e-300
            )
        except NotImplementedError:
            pass
    res = DiagnosticResult(
        "hessian", slope, float(expected_slope), steps, errors, window, exact, extra=extra
    )
    return _maybe_plot(res, plot)


def check_retraction(
    manifold,
    point: Array | None = None,
    direction: Array | None = None,
    *,
    retraction: Callable | None = None,
    reference: Callable | None = None,
    expected_slope: float | None = None,
    distance: Callable | None = None,
    generator: Any = None,
    plot: str | None = None,
) -> DiagnosticResult:
    """Order of agreement of a retraction with a reference curve.

    e(t) = dist(R_x(t d), ref(x, t d)). ``reference`` defaults to ``manifold.exp``
    when the manifold has one (then slope 3 means second order, 2 first order)
    and otherwise to the straight line x + t d (slope 2 means a valid,
    first-order retraction). ``distance`` defaults to the ambient Frobenius
    distance, which is equivalent to the Riemannian one for small t.
    """
    generator = _generator(manifold, generator)
    if point is None:
        point = random_point(manifold, generator)
    if direction is None:
        direction = _random_tangent(manifold, point, generator)
    retract = retraction or manifold.retraction
    if reference is None:
        try:
            manifold.exp(point, 0 * direction)
            reference = manifold.exp
            default_expected = 3.0
        except NotImplementedError:
            reference = None
            default_expected = 2.0
        if reference is None:

            def reference(x, v):
                return x + v
    else:
        default_expected = 3.0
    expected = default_expected if expected_slope is None else float(expected_slope)

    def ambient(a, b):
        diff = a - b
        return math.sqrt(float((diff * diff).sum()))

    dist = distance or ambient
    steps = _steps(point)
    errors = np.array(
        [
            dist(retract(point, t * direction), reference(point, t * direction))
            for t in steps.tolist()
        ]
    )
    floor = 10.0 * _dtype_eps(point) * (ambient(point, 0 * point) + 1.0)
    slope, window, exact = fit_slope(steps, errors, floor)
    extra = {"zero_step_error": dist(retract(point, 0 * direction), point)}
    res = DiagnosticResult("retraction", slope, expected, steps, errors, window, exact, extra=extra)
    return _maybe_plot(res, plot)
