"""Stochastic Riemannian optimizers for Pymanopt: RiemannianSGD (momentum) and RiemannianAdam.

Pymanopt has no stochastic solver. The two optimizers here are
``pymanopt.optimizers.optimizer.Optimizer`` subclasses whose ``run`` takes a
*minibatch* problem and returns Pymanopt's ``OptimizerResult``.

Minibatch protocol
------------------
:class:`StochasticProblem` ``(manifold, cost, n_samples, batch_size=None,
euclidean_gradient=None)`` describes a finite-sum cost

    f(x) = mean_{i < n_samples} f_i(x),     cost(point, batch) = mean_{i in batch} f_i(point),

where ``batch`` is a 1-D integer index array (a NumPy array for NumPy points, a
``torch.long`` tensor on the point's device for torch points). Without
``euclidean_gradient`` the gradient comes from automatic differentiation
(torch autograd for tensors, HIPS autograd for NumPy arrays); with it,
``euclidean_gradient(point, batch)`` must return the Euclidean gradient of
``cost(point, batch)``. Batches are drawn by random reshuffling (``sampling=
"shuffle"``, every sample once per epoch) or with replacement; a batch size of
None (or >= n_samples) gives full-batch (deterministic) steps. A plain
``pymanopt.Problem`` is accepted too: its cost and Riemannian gradient are
called as they are, so a problem whose functions close over a sampler gives
stochastic steps.

Update rules (Bonnabel 2013, RSGD; Becigneul & Ganea 2019, RAdam), with grad
the Riemannian gradient of the minibatch cost, R the retraction and T_{x->y}
the manifold's vector transport (projection for embedded manifolds):

    g_k   = grad f_B(x_k) - T_k grad S(x_k)              (entropy regularisation, T_k >= 0)
    SGD:    m_k = mu T_{x_{k-1}->x_k}(m_{k-1}) + g_k,   d_k = m_k (Nesterov: g_k + mu m_k)
    Adam:   m_k = b1 T(m_{k-1}) + (1 - b1) g_k,   v_k = b2 v_{k-1} + (1 - b2) |g_k|^2,
            d_k = P_{x_k}( m_k / (1 - b1^k) / (sqrt(v_k / (1 - b2^k)) + eps) )
    x_{k+1} = R_{x_k}( -h_k d_k + sqrt(2 h_k T'_k) xi_k ),

with |g|^2 the squared Riemannian norm (``adaptivity="norm"``, intrinsic, as
geoopt does for a single manifold) or the entrywise square of the ambient
coordinates (``adaptivity="elementwise"``, as torch.optim.Adam). h_k is the
learning rate (a number or a schedule ``h(k)``), T_k the entropy temperature
and T'_k the Langevin (noise) temperature. xi_k is a standard Gaussian on the
tangent space (the tangent projection of an ambient Gaussian): this is the
Euler-Maruyama step of the Langevin equation dx = -grad f dt + sqrt(2T') dB
for a Riemannian *submanifold* of Euclidean space, correct in the Ito sense
only with a second-order retraction (the noise increment is O(sqrt(h)), so the
curvature of the retraction enters the drift at O(h)); noise therefore uses
``retraction_second_order`` when the manifold has one and is refused on
manifolds whose metric is not the Euclidean one (the DLN observable quotient:
use :class:`thermanopt.optimizers.RiemannianLangevin`).

The entropy S is the manifold's ``entropy_gradient`` (Riemannian) when it has
one (:class:`~thermanopt.manifolds.ObservableQuotient`: S = S_N(X), Menon & Yu,
arXiv 2509.09088); on :class:`~thermanopt.manifolds.BalancedManifold` it is
S_N(phi(W)) whose gradient is the horizontal vector dphi_W^*(nabla S_N(X));
other manifolds need an explicit ``entropy_gradient(point)``.

Learning-rate schedules: :func:`constant_lr`, :func:`step_lr`,
:func:`inverse_time_lr`, :func:`cosine_lr` (or any callable of the iteration,
counted from 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pymanopt.optimizers.optimizer import Optimizer, OptimizerResult

from .._backend import is_torch, make_generator, namespace, spec_of, to_float
from ..manifolds.geoopt import euclidean_metric, inner_array
from ._common import FiniteMonitor, as_schedule, check_step_size, check_temperature

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

Array = Any

__all__ = [
    "StochasticProblem",
    "RiemannianSGD",
    "RiemannianAdam",
    "constant_lr",
    "step_lr",
    "inverse_time_lr",
    "cosine_lr",
    "as_lr_schedule",
    "entropy_gradient",
    "tangent_noise",
]


# --------------------------------------------------------------- learning rates


class LearningRate:
    """A learning-rate schedule h(k) > 0 (k counted from 0), validated on every call."""

    def __init__(self, fn: Callable[[int], float], describe: str = "custom") -> None:
        if not callable(fn):
            raise ValueError(f"a learning-rate schedule must be callable, got {fn!r}")
        self._fn = fn
        self.describe = describe

    def __call__(self, k: int) -> float:
        return check_step_size(self._fn(int(k)), f"learning rate at iteration {k}")

    def __repr__(self) -> str:
        return f"LearningRate({self.describe})"


def constant_lr(h: float) -> LearningRate:
    """h_k = h."""
    h = check_step_size(h, "learning_rate")
    return LearningRate(lambda k: h, f"constant({h})")


def step_lr(h0: float, factor: float, every: int) -> LearningRate:
    """h_k = h0 * factor ** (k // every) (piecewise constant decay)."""
    h0 = check_step_size(h0, "learning_rate")
    if not 0 < factor <= 1 or int(every) < 1:
        raise ValueError(f"step_lr needs 0 < factor <= 1 and every >= 1, got {factor}, {every}")
    return LearningRate(lambda k: h0 * factor ** (k // int(every)), f"step({h0},{factor},{every})")


def inverse_time_lr(h0: float, decay: float) -> LearningRate:
    """h_k = h0 / (1 + decay * k) (Robbins-Monro: sum h = inf, sum h^2 < inf)."""
    h0 = check_step_size(h0, "learning_rate")
    if decay < 0:
        raise ValueError(f"decay must be >= 0, got {decay}")
    return LearningRate(lambda k: h0 / (1.0 + decay * k), f"inverse_time({h0},{decay})")


def cosine_lr(h0: float, total: int, h_min: float = 0.0) -> LearningRate:
    """h_k = h_min + (h0 - h_min)(1 + cos(pi min(k, total)/total))/2, floored at 1e-12 h0."""
    h0 = check_step_size(h0, "learning_rate")
    total = max(int(total), 1)

    def fn(k: int) -> float:
        c = 0.5 * (1.0 + math.cos(math.pi * min(k, total) / total))
        return max(h_min + (h0 - h_min) * c, 1e-12 * h0)

    return LearningRate(fn, f"cosine({h0},{total},{h_min})")


def as_lr_schedule(learning_rate: Any) -> LearningRate:
    """A :class:`LearningRate` from a number, a LearningRate or a callable of k."""
    if isinstance(learning_rate, LearningRate):
        return learning_rate
    if callable(learning_rate):
        return LearningRate(learning_rate, getattr(learning_rate, "__name__", "custom"))
    return constant_lr(learning_rate)


# --------------------------------------------------------------- problems


def _autograd_value_and_grad(cost: Callable, point: Array, batch: Array):
    if is_torch(point):
        x = point.detach().requires_grad_(True)
        with torch.enable_grad():
            value = cost(x, batch)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise ValueError("the minibatch cost must return a scalar torch tensor")
            (g,) = torch.autograd.grad(value.reshape(()), x, allow_unused=True)
        return value.detach().reshape(()), (torch.zeros_like(point) if g is None else g)
    import autograd

    value, g = autograd.value_and_grad(lambda p: cost(p, batch))(point)
    return value, g


class StochasticProblem:
    """A finite-sum cost on a manifold, evaluated on minibatches.

    Args:
        manifold: a Pymanopt manifold (ours or Pymanopt's).
        cost: ``cost(point, batch) -> scalar``, the mean loss over the samples
            indexed by ``batch`` (1-D integer array; a ``torch.long`` tensor on
            the point's device for torch points).
        n_samples: number of samples n.
        batch_size: samples per step; None or >= n means full batch.
        euclidean_gradient: optional ``egrad(point, batch)``; default autodiff.
        sampling: ``"shuffle"`` (random reshuffling each epoch) or
            ``"replacement"`` (i.i.d. uniform indices).
    """

    def __init__(
        self,
        manifold: Any,
        cost: Callable[[Array, Array], Any],
        n_samples: int,
        batch_size: int | None = None,
        euclidean_gradient: Callable[[Array, Array], Array] | None = None,
        sampling: str = "shuffle",
    ) -> None:
        if int(n_samples) != n_samples or int(n_samples) < 1:
            raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
        if batch_size is not None and (int(batch_size) != batch_size or int(batch_size) < 1):
            raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
        if sampling not in ("shuffle", "replacement"):
            raise ValueError(f"sampling must be 'shuffle' or 'replacement', got {sampling!r}")
        if not callable(cost):
            raise ValueError("cost must be callable as cost(point, batch)")
        self.manifold = manifold
        self._cost = cost
        self._egrad = euclidean_gradient
        self.n_samples = int(n_samples)
        self.batch_size = (
            None if batch_size is None or int(batch_size) >= self.n_samples else int(batch_size)
        )
        self.sampling = sampling
        self._perm = None
        self._pos = 0
        self._full: dict = {}

    @property
    def full_batch(self) -> bool:
        return self.batch_size is None

    def all_indices(self, like: Array) -> Array:
        """arange(n) in the index type of ``like`` (cached)."""
        key = (is_torch(like), str(like.device) if is_torch(like) else None)
        if key not in self._full:
            if is_torch(like):
                self._full[key] = torch.arange(self.n_samples, device=like.device)
            else:
                self._full[key] = np.arange(self.n_samples)
        return self._full[key]

    def sample_batch(self, like: Array, generator: Any) -> Array:
        """Indices of the next minibatch (on the device of ``like``, no host transfer)."""
        if self.batch_size is None:
            return self.all_indices(like)
        n, b = self.n_samples, self.batch_size
        if self.sampling == "replacement":
            if is_torch(like):
                return torch.randint(0, n, (b,), generator=generator, device=like.device)
            return generator.integers(0, n, size=b)
        if self._perm is None or self._pos + b > n:
            if is_torch(like):
                self._perm = torch.randperm(n, generator=generator, device=like.device)
            else:
                self._perm = generator.permutation(n)
            self._pos = 0
        batch = self._perm[self._pos : self._pos + b]
        self._pos += b
        return batch

    def cost(self, point: Array, batch: Array | None = None) -> Any:
        """Mean cost over ``batch`` (all samples when None)."""
        if batch is None:
            batch = self.all_indices(point)
        if is_torch(point):
            with torch.no_grad():
                return self._cost(point, batch)
        return self._cost(point, batch)

    def cost_and_euclidean_gradient(self, point: Array, batch: Array) -> tuple[Any, Array]:
        """(f_B(x), nabla f_B(x)) of the minibatch ``batch`` (indices into the samples)."""
        if self._egrad is not None:
            return self.cost(point, batch), self._egrad(point, batch)
        return _autograd_value_and_grad(self._cost, point, batch)

    def cost_and_riemannian_gradient(self, point: Array, batch: Array) -> tuple[Any, Array]:
        """(f_B(x), grad f_B(x)): the minibatch cost and its Riemannian gradient."""
        value, g = self.cost_and_euclidean_gradient(point, batch)
        return value, self.manifold.euclidean_to_riemannian_gradient(point, g)

    def euclidean_gradient(self, point: Array, batch: Array | None = None) -> Array:
        """Euclidean gradient of the minibatch cost (all samples when ``batch`` is None)."""
        if batch is None:
            batch = self.all_indices(point)
        return self.cost_and_euclidean_gradient(point, batch)[1]

    def riemannian_gradient(self, point: Array, batch: Array | None = None) -> Array:
        """Riemannian gradient of the minibatch cost (all samples when ``batch`` is None)."""
        if batch is None:
            batch = self.all_indices(point)
        return self.cost_and_riemannian_gradient(point, batch)[1]


class _PymanoptAdapter:
    """A ``pymanopt.Problem`` seen through the minibatch protocol (batch ignored)."""

    full_batch = True

    def __init__(self, problem: Any) -> None:
        self.problem = problem
        self.manifold = problem.manifold

    def sample_batch(self, like: Array, generator: Any) -> None:
        return None

    def cost(self, point: Array, batch: Any = None) -> Any:
        return self.problem.cost(point)

    def cost_and_riemannian_gradient(self, point: Array, batch: Any) -> tuple[Any, Array]:
        """Full-batch cost and Riemannian gradient of the wrapped Pymanopt problem."""
        return self.problem.cost(point), self.problem.riemannian_gradient(point)


def _as_stochastic(problem: Any):
    if isinstance(problem, StochasticProblem):
        return problem
    if hasattr(problem, "riemannian_gradient") and hasattr(problem, "manifold"):
        return _PymanoptAdapter(problem)
    raise ValueError(
        "problem must be a thermanopt StochasticProblem or a pymanopt Problem, "
        f"got {type(problem).__name__}"
    )


# --------------------------------------------------------------- geometry helpers


def _is_balanced(manifold: Any) -> bool:
    return type(manifold).__name__ == "BalancedManifold" and hasattr(manifold, "depth")


def entropy_gradient(manifold: Any, point: Array) -> Array:
    """Riemannian gradient of the DLN entropy S at ``point``.

    ObservableQuotient (and any manifold with ``entropy_gradient``): the
    manifold's own g_N gradient A_{N,X}(nabla S_N). BalancedManifold: the
    gradient of W -> S_N(phi(W)), dphi_W^*(nabla S_N(X)) (horizontal, hence
    tangent). Other manifolds: ``ValueError``.
    """
    if hasattr(manifold, "entropy_gradient"):
        return manifold.entropy_gradient(point)
    if _is_balanced(manifold):
        from ..entropy import dln_entropy_gradient
        from ..manifolds._metric import end_to_end
        from ..manifolds.balanced import phi_adjoint

        G = dln_entropy_gradient(end_to_end(point), manifold.depth, validate=False)
        return phi_adjoint(point, G)
    raise ValueError(
        f"{type(manifold).__name__} exposes no entropy: entropy regularisation needs a DLN "
        "manifold (ObservableQuotient, BalancedManifold) or an explicit entropy_gradient"
    )


_has_euclidean_metric = euclidean_metric


def tangent_noise(manifold: Any, point: Array, generator: Any) -> Array:
    """A standard Gaussian on T_x M: the tangent projection of an ambient N(0, I).

    Correct for Riemannian submanifolds of Euclidean space (Frobenius metric);
    ``ValueError`` for manifolds with another metric.
    """
    if not _has_euclidean_metric(manifold):
        raise ValueError(
            f"Langevin noise needs a manifold with the Euclidean (embedded) metric; "
            f"{type(manifold).__name__} has another metric (use "
            "thermanopt.optimizers.RiemannianLangevin, which adds the metric's drift)"
        )
    spec = spec_of(point)
    if is_torch(point):
        xi = torch.randn(point.shape, generator=generator, dtype=point.dtype, device=point.device)
    else:
        xi = generator.standard_normal(np.shape(point)).astype(spec.resolved_dtype, copy=False)
    return manifold.projection(point, xi)


def _retraction_for(manifold: Any, which: Any, noisy: bool) -> Callable:
    if callable(which):
        return which
    if which in (None, "default"):
        if noisy and hasattr(manifold, "retraction_second_order"):
            return manifold.retraction_second_order
        return manifold.retraction
    if which == "first_order":
        return getattr(manifold, "retraction_first_order", manifold.retraction)
    if which == "second_order":
        if not hasattr(manifold, "retraction_second_order"):
            raise ValueError(f"{type(manifold).__name__} has no retraction_second_order")
        return manifold.retraction_second_order
    raise ValueError(
        f"retraction must be None, 'first_order', 'second_order' or a callable, got {which!r}"
    )


def _generator_for(point: Array, seed: Any):
    spec = spec_of(point)
    if is_torch(point) and isinstance(seed, torch.Generator):
        if seed.device.type != point.device.type:
            raise ValueError(f"generator is on {seed.device}, point on {point.device}")
        return seed
    return make_generator(seed, spec)


def _check_point_like(point: Array, manifold: Any) -> None:
    spec = getattr(manifold, "spec", None)
    if spec is None:
        if is_torch(point):
            raise ValueError(f"{type(manifold).__name__} works on NumPy arrays; got a torch tensor")
        return
    if spec.backend == "torch" and not is_torch(point):
        raise ValueError("the manifold was built with backend='torch' but the point is NumPy")
    if spec.backend == "numpy" and is_torch(point):
        raise ValueError("the manifold was built with backend='numpy' but the point is a tensor")
    if spec.backend == "torch":
        dev = spec.resolved_device
        if point.device.type != dev.type:
            raise ValueError(f"point is on {point.device}, the manifold on {dev}")
        if spec.dtype is not None and point.dtype != spec.resolved_dtype:
            raise ValueError(f"point has dtype {point.dtype}, the manifold {spec.resolved_dtype}")


# --------------------------------------------------------------- optimizers


class _StochasticRiemannianOptimizer(Optimizer):
    """Shared loop of :class:`RiemannianSGD` and :class:`RiemannianAdam`."""

    def __init__(
        self,
        learning_rate: Any = 1e-2,
        *,
        temperature: Any = 0.0,
        noise_temperature: Any = 0.0,
        entropy_gradient: Callable[[Array], Array] | None = None,
        retraction: Any = None,
        generator: Any = None,
        check_every: int = 50,
        reproject_tol: float | None = None,
        max_iterations: int = 1000,
        max_time: float = math.inf,
        min_gradient_norm: float = 0.0,
        verbosity: int = 0,
        log_verbosity: int = 0,
    ) -> None:
        super().__init__(
            max_time=max_time,
            max_iterations=max_iterations,
            min_gradient_norm=min_gradient_norm,
            min_step_size=0.0,
            max_cost_evaluations=math.inf,
            verbosity=verbosity,
            log_verbosity=log_verbosity,
        )
        self.learning_rate = as_lr_schedule(learning_rate)
        if not callable(temperature):
            check_temperature(temperature)
        if not callable(noise_temperature):
            check_temperature(noise_temperature, "noise_temperature")
        self.temperature = as_schedule(temperature)
        self.noise_temperature = as_schedule(noise_temperature)
        self._entropy_gradient = entropy_gradient
        self._retraction = retraction
        self._seed = generator
        if int(check_every) < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.check_every = int(check_every)
        self.reproject_tol = reproject_tol

    # hooks ---------------------------------------------------------------
    def _init_state(self, manifold, point) -> dict:
        return {}

    def _direction(self, manifold, point, grad, state, k: int) -> Array:
        raise NotImplementedError

    def _transport_state(self, manifold, old, new, state) -> None:
        pass

    def _parameters(self) -> dict:
        return {}

    # ---------------------------------------------------------------------
    def run(
        self,
        problem: Any,
        *,
        initial_point: Array | None = None,
        callback: Callable[[int, Array, dict], Any] | None = None,
    ) -> OptimizerResult:
        """Run the optimizer.

        Args:
            problem: a :class:`StochasticProblem` or a ``pymanopt.Problem``.
            initial_point: start (default ``manifold.random_point()``).
            callback: ``callback(iteration, point, record)`` after every step
                (``record`` has iteration, cost (minibatch, as returned),
                learning_rate, temperature, noise_temperature, time); a truthy
                return value stops the run.

        Returns:
            Pymanopt's ``OptimizerResult``; ``log["iterations"]`` (with
            ``log_verbosity >= 1``) holds the per-iteration records and
            ``log["reprojections"]`` counts re-projections onto the manifold.

        Raises:
            ValueError: non-finite cost or gradient (naming the first bad
                iteration), bad learning rate or temperature, a point of the
                wrong array type, device or dtype.
        """
        sp = _as_stochastic(problem)
        manifold = sp.manifold
        x = manifold.random_point() if initial_point is None else initial_point
        _check_point_like(x, manifold)
        if hasattr(manifold, "check_point"):
            manifold.check_point(x)
        gen = _generator_for(x, self._seed)
        noisy_any = not (
            self.noise_temperature.describe.startswith("constant")
            and self.noise_temperature(0) == 0.0
        )
        retract = _retraction_for(manifold, self._retraction, noisy_any)
        if noisy_any and not _has_euclidean_metric(manifold):
            tangent_noise(manifold, x, gen)  # raises the ValueError that explains why
        egrad_S = self._entropy_gradient or (lambda p: entropy_gradient(manifold, p))

        self._initialize_log(
            optimizer_parameters={
                "learning_rate": self.learning_rate.describe,
                "temperature": self.temperature.describe,
                "noise_temperature": self.noise_temperature.describe,
                **self._parameters(),
            }
        )
        self._log["reprojections"] = 0
        records = self._log["iterations"]
        monitor = FiniteMonitor()
        state = self._init_state(manifold, x)
        start = time.time()
        k = 0
        cost = None
        gnorm = math.inf
        h = self.learning_rate(0)
        reason = None
        while True:
            h = self.learning_rate(k)
            T = self.temperature(k)
            Tn = self.noise_temperature(k)
            try:
                batch = sp.sample_batch(x, gen)
                cost, g = sp.cost_and_riemannian_gradient(x, batch)
                monitor.update(k, g, "gradient")
                if is_torch(cost):
                    monitor.update(k, cost, "cost")
                if not is_torch(g):
                    monitor.raise_if_bad("cost or Riemannian gradient")
                    if not math.isfinite(to_float(cost)):
                        raise ValueError(f"non-finite cost at iteration {k}")
                if T > 0:
                    g = g - T * egrad_S(x)
                if self._min_gradient_norm > 0 or self._log_verbosity >= 1:
                    gnorm = manifold.norm(x, g)
                d = self._direction(manifold, x, g, state, k)
                step = -h * d
                if Tn > 0:
                    step = step + math.sqrt(2.0 * h * Tn) * tangent_noise(manifold, x, gen)
                x_new = retract(x, step)
                self._transport_state(manifold, x, x_new, state)
                x = x_new
            except ValueError:
                monitor.raise_if_bad("cost or Riemannian gradient")
                raise
            except RuntimeError as exc:  # e.g. torch linalg failing on NaN input
                monitor.raise_if_bad("cost or Riemannian gradient")
                raise ValueError(f"step failed at iteration {k}: {exc}") from exc
            if (k + 1) % self.check_every == 0:
                monitor.raise_if_bad("cost or Riemannian gradient")
                if is_torch(cost):
                    if not bool(torch.isfinite(cost)):
                        raise ValueError(f"non-finite cost at iteration {k}")
                self._maybe_reproject(manifold, x, state)
                x = state.pop("_reprojected", x)
            record = {
                "iteration": k,
                "cost": cost,
                "learning_rate": h,
                "temperature": T,
                "noise_temperature": Tn,
                "time": time.time() - start,
            }
            if self._log_verbosity >= 1:
                for key, value in record.items():
                    records[key].append(value)
                records["gradient_norm"].append(gnorm)
            k += 1
            if callback is not None and callback(k - 1, x, record):
                reason = f"Terminated - callback asked to stop after {k} iterations."
                break
            reason = self._check_stopping_criterion(
                start_time=start, iteration=k, gradient_norm=gnorm
            )
            if reason:
                break
        monitor.raise_if_bad("cost or Riemannian gradient")
        if self._verbosity >= 1:
            print(reason)
        final_cost = sp.cost(x) if isinstance(sp, StochasticProblem) else cost
        final_cost = to_float(final_cost)
        if not math.isfinite(final_cost):
            raise ValueError(f"non-finite cost at the final iterate (iteration {k})")
        return self._return_result(
            start_time=start,
            point=x,
            cost=final_cost,
            iterations=k,
            stopping_criterion=reason,
            cost_evaluations=k,
            step_size=h,
            gradient_norm=gnorm,
        )

    def _maybe_reproject(self, manifold, x, state) -> None:
        tol = self.reproject_tol
        if tol is None or not hasattr(manifold, "is_on_manifold"):
            return
        if manifold.is_on_manifold(x, tol):
            return
        from ..manifolds.geoopt import project_point

        state["_reprojected"] = project_point(manifold, x)
        self._log["reprojections"] += 1


class RiemannianSGD(_StochasticRiemannianOptimizer):
    """Riemannian stochastic gradient descent with (heavy-ball or Nesterov) momentum.

    ``x_{k+1} = R_{x_k}(-h_k d_k [+ sqrt(2 h_k T') xi])`` with
    ``m_k = momentum * T(m_{k-1}) + g_k`` and ``d_k = m_k`` (Nesterov:
    ``g_k + momentum * m_k``); see the module docstring (Bonnabel 2013).

    Args:
        learning_rate: h > 0 or a schedule h(k) (:func:`inverse_time_lr`, ...).
        momentum: mu in [0, 1).
        nesterov: Nesterov momentum.
        temperature: entropy regularisation T >= 0 (number or schedule):
            descends F = f - T S.
        noise_temperature: Langevin temperature T' >= 0 (Euclidean-metric
            manifolds; second-order retraction when available).
        entropy_gradient: Riemannian gradient of S, ``fn(point)`` (default from
            the manifold, see :func:`entropy_gradient`).
        retraction: None (the manifold's), ``"first_order"``,
            ``"second_order"`` or a callable ``R(x, v)``.
        generator: seed or generator for batches and noise.
        check_every: steps between the (host-synchronising) checks for
            non-finite values and for leaving the manifold.
        reproject_tol: if set, a point failing ``is_on_manifold(x, tol)`` at a
            check is projected back (counted in ``log["reprojections"]``).
        max_iterations, max_time, min_gradient_norm, verbosity, log_verbosity:
            as in Pymanopt (min_gradient_norm 0 disables that criterion).
    """

    def __init__(
        self,
        learning_rate: Any = 1e-2,
        momentum: float = 0.0,
        nesterov: bool = False,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        super().__init__(learning_rate, **kwargs)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _parameters(self) -> dict:
        return {"momentum": self.momentum, "nesterov": self.nesterov}

    def _direction(self, manifold, point, grad, state, k):
        if self.momentum == 0.0:
            return grad
        m = state.get("m")
        m = grad if m is None else self.momentum * m + grad
        state["m"] = m
        return grad + self.momentum * m if self.nesterov else m

    def _transport_state(self, manifold, old, new, state):
        if state.get("m") is not None:
            state["m"] = manifold.transport(old, new, state["m"])


class RiemannianAdam(_StochasticRiemannianOptimizer):
    """Riemannian Adam (Becigneul & Ganea, ICLR 2019) with transported first moment.

    ``m_k = b1 T(m_{k-1}) + (1-b1) g_k``, ``v_k = b2 v_{k-1} + (1-b2) |g_k|^2``,
    direction ``P_x(m_hat / (sqrt(v_hat) + eps))``; ``adaptivity="norm"`` uses
    the squared Riemannian norm (one scalar, intrinsic), ``"elementwise"`` the
    entrywise square of the ambient coordinates (as torch.optim.Adam).
    Other arguments as :class:`RiemannianSGD`.
    """

    def __init__(
        self,
        learning_rate: Any = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        adaptivity: str = "norm",
        **kwargs: Any,
    ) -> None:
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if adaptivity not in ("norm", "elementwise"):
            raise ValueError(f"adaptivity must be 'norm' or 'elementwise', got {adaptivity!r}")
        super().__init__(learning_rate, **kwargs)
        self.betas = (b1, b2)
        self.eps = float(eps)
        self.adaptivity = adaptivity

    def _parameters(self) -> dict:
        return {"betas": self.betas, "eps": self.eps, "adaptivity": self.adaptivity}

    def _direction(self, manifold, point, grad, state, k):
        b1, b2 = self.betas
        m = state.get("m")
        m = (1 - b1) * grad if m is None else b1 * m + (1 - b1) * grad
        if self.adaptivity == "norm":
            sq = inner_array(manifold, point, grad, grad)
        else:
            sq = grad * grad
        v = state.get("v")
        v = (1 - b2) * sq if v is None else b2 * v + (1 - b2) * sq
        state["m"], state["v"] = m, v
        c1 = 1 - b1 ** (k + 1)
        c2 = 1 - b2 ** (k + 1)
        xp = namespace(grad)
        if self.adaptivity == "norm":
            return m / (c1 * (xp.sqrt(v / c2) + self.eps))
        return manifold.projection(point, m / (c1 * (xp.sqrt(v / c2) + self.eps)))

    def _transport_state(self, manifold, old, new, state):
        if state.get("m") is not None:
            state["m"] = manifold.transport(old, new, state["m"])
