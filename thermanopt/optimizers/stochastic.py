"""Stochastic Riemannian optimizers for Pymanopt: RiemannianSGD (momentum) and RiemannianAdam.

Pymanopt has no stochastic solver. The two optimizers here are
``pymanopt.optimizers.optimizer.Optimizer`` subclasses whose ``run`` takes a
*minibatch* problem and returns Pymanopt's ``OptimizerResult``.

Minibatch problems: :class:`~thermanopt.optimizers.problem.StochasticProblem` (or a plain
``pymanopt.Problem``, whose cost and Riemannian gradient are used as they are).

Update rules (Bonnabel 2013, RSGD; Becigneul & Ganea 2019, RAdam), with grad
the Riemannian gradient of the minibatch cost, R the retraction and T_{x->y}
the manifold's vector transport (projection for embedded manifolds):

    g_k   = grad f_B(x_k) - T_k grad S(x_k)              (entropy regularisation, T_k >= 0)
    SGD:    m_k = mu T_{x_{k-1}->x_k}(m_{k-1}) + g_k,   d_k = m_k (Nesterov: g_k + mu m_k)
    Adam:   m_k = b1 T(m_{k-1}) + (1 - b1) g_k,   v_k = b2 v_{k-1} + (1 - b2) |g_k|^2,
            d_k = P_{x_k}( m_k / (1 - b1^k) / (sqrt(v_k / (1 - b2^k)) + eps) )
    x_{k+1} = R_{x_k}( -h_k d_k + sqrt(2 h_k T'_k) xi_k ),

with |g|^2 the squared Riemannian norm (``adaptivity="norm"``, intrinsic, as geoopt does
for a single manifold: the step is measured in the manifold's metric, g_N on the observable
quotient) or the entrywise square of the ambient coordinates (``adaptivity="elementwise"``,
as torch.optim.Adam). h_k is the step size (a number or a
:class:`~thermanopt.optimizers.schedules.Schedule`), T_k the entropy temperature and T'_k the
Langevin (noise) temperature; xi_k is :func:`~thermanopt.optimizers._step.tangent_noise`.
Every step goes through :class:`~thermanopt.manifolds.step.StepRule`: the manifold's
(second-order) retraction with one counted rescue rule (``result.log["rescues"]``).

The entropy S of a DLN manifold comes from
:class:`~thermanopt.entropy.model.EntropyModel` (S = S_N of the end-to-end matrix, Menon &
Yu, arXiv 2509.09088); other manifolds need an explicit ``entropy_gradient(point)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from pymanopt.optimizers.optimizer import Optimizer, OptimizerResult

from .._backend import device_of, make_generator, namespace, spec_of, to_float
from ..entropy.model import EntropyModel
from ..manifolds.step import StepRule
from ._common import FiniteMonitor, check_count, check_initial_point, unchecked
from ._step import inner_array, tangent_noise
from .problem import StochasticProblem, as_stochastic
from .schedules import as_schedule

Array = Any

__all__ = ["RiemannianSGD", "RiemannianAdam"]


class _StochasticRiemannianOptimizer(Optimizer):
    """Shared loop of :class:`RiemannianSGD` and :class:`RiemannianAdam`."""

    def __init__(
        self,
        step_size: Any = 1e-2,
        *,
        temperature: Any = 0.0,
        noise_temperature: Any = 0.0,
        entropy_gradient: Callable[[Array], Array] | None = None,
        generator: Any = None,
        check_every: int = 50,
        max_halvings: int = 8,
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
        self.step_size = as_schedule(step_size, name="step_size", positive=True)
        self.temperature = as_schedule(temperature, name="temperature")
        self.noise_temperature = as_schedule(noise_temperature, name="noise_temperature")
        self._entropy_gradient = entropy_gradient
        self._seed = generator
        self.check_every = check_count(check_every, "check_every", 1)
        self.max_halvings = check_count(max_halvings, "max_halvings", 0)

    # hooks ---------------------------------------------------------------
    def _direction(self, manifold, point, grad, state, k: int) -> Array:
        raise NotImplementedError

    def _transport_state(self, manifold, old, new, state) -> None:
        if state.get("m") is not None:
            state["m"] = manifold.transport(old, new, state["m"])

    def _parameters(self) -> dict:
        return {}

    def _entropy(self, manifold: Any) -> Callable[[Array], Array]:
        if self._entropy_gradient is not None:
            return self._entropy_gradient
        if self.temperature.is_zero:
            return lambda x: None
        return EntropyModel(manifold).riemannian_gradient

    # ---------------------------------------------------------------------
    def run(
        self,
        problem: Any,
        *,
        initial_point: Array | None = None,
        callback: Callable[[int, Array, dict], Any] | None = None,
        validate: bool = True,
    ) -> OptimizerResult:
        """Run the optimizer.

        Args:
            problem: a :class:`StochasticProblem` or a ``pymanopt.Problem``.
            initial_point: start (default ``manifold.random_point()``).
            validate: check the initial point once (finite, on the manifold, full rank;
                errors start with "initial point"); its array type, device and dtype are
                always checked against the manifold and the cost. The loop itself runs in
                the manifold's ``unchecked`` mode (non-finite values are caught by the
                periodic checks, naming the iteration).
            callback: ``callback(iteration, point, record)`` after every step (``record``
                has iteration, cost (minibatch, as returned), step_size, temperature,
                noise_temperature, time); a truthy return value stops the run.

        Returns:
            Pymanopt's ``OptimizerResult``; ``log["iterations"]`` (with ``log_verbosity >=
            1``) holds the per-iteration records, ``log["rescues"]`` and ``log["rejected"]``
            count the step rule's rescues.

        Raises:
            ValueError: non-finite cost or gradient (naming the first bad iteration), bad
                step size or temperature, a point of the wrong array type, device or dtype,
                noise on a manifold whose metric is not the embedded one.
            TypeError: entropy regularisation on a manifold without an entropy.
        """
        sp = as_stochastic(problem)
        manifold = sp.manifold
        x = manifold.random_point() if initial_point is None else initial_point
        check_initial_point(manifold, x, getattr(sp, "problem", None), validate=validate)
        with unchecked(manifold):
            return self._run(sp, manifold, x, callback)

    def _run(self, sp: Any, manifold: Any, x: Array, callback: Any) -> OptimizerResult:
        gen = make_generator(self._seed, spec_of(x))
        noisy = not self.noise_temperature.is_zero
        if noisy:
            tangent_noise(manifold, x, gen)  # raises the ValueError that explains why not
        grad_S = self._entropy(manifold)
        rule = StepRule(self.max_halvings)
        self._initialize_log(
            optimizer_parameters={
                "step_size": self.step_size.describe,
                "temperature": self.temperature.describe,
                "noise_temperature": self.noise_temperature.describe,
                **self._parameters(),
            }
        )
        records = self._log["iterations"]
        monitor = FiniteMonitor()
        state: dict = {}
        start = time.time()
        k, cost, gnorm, h, reason = 0, None, math.inf, self.step_size(0), None
        while True:
            h, T, Tn = self.step_size(k), self.temperature(k), self.noise_temperature(k)
            cost, g = sp.cost_and_riemannian_gradient(x, sp.sample_batch(x, gen))
            monitor.update(k, g, "Riemannian gradient")
            monitor.update(k, namespace(g).asarray(cost, device=device_of(g)), "cost")
            if (k + 1) % self.check_every == 0 or k == 0:
                monitor.raise_if_bad()
            if T > 0:
                g = g - T * grad_S(x)
            if self._min_gradient_norm > 0 or self._log_verbosity >= 1:
                gnorm = manifold.norm(x, g)
            step = -h * self._direction(manifold, x, g, state, k)
            if Tn > 0:
                step = step + math.sqrt(2.0 * h * Tn) * tangent_noise(manifold, x, gen)
            x_new = rule(manifold, x, step)
            self._transport_state(manifold, x, x_new, state)
            x = x_new
            record = {
                "iteration": k,
                "cost": cost,
                "step_size": h,
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
        monitor.raise_if_bad()
        self._log["rescues"] = rule.rescues
        self._log["rejected"] = rule.rejected
        if self._verbosity >= 1:
            print(reason)
        final_cost = to_float(sp.cost(x) if isinstance(sp, StochasticProblem) else cost)
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


class RiemannianSGD(_StochasticRiemannianOptimizer):
    """Riemannian stochastic gradient descent with (heavy-ball or Nesterov) momentum.

    ``x_{k+1} = R_{x_k}(-h_k d_k [+ sqrt(2 h_k T') xi])`` with
    ``m_k = momentum * T(m_{k-1}) + g_k`` and ``d_k = m_k`` (Nesterov:
    ``g_k + momentum * m_k``); see the module docstring (Bonnabel 2013).

    Args:
        step_size: h > 0 or a :class:`~thermanopt.optimizers.schedules.Schedule`.
        momentum: mu in [0, 1).
        nesterov: Nesterov momentum.
        temperature: entropy regularisation T >= 0 (number or schedule): descends
            F = f - T S.
        noise_temperature: Langevin temperature T' >= 0 (manifolds with the embedded
            metric).
        entropy_gradient: Riemannian gradient of S, ``fn(point)`` (default: the DLN
            entropy of the manifold).
        generator: seed or generator for batches and noise.
        check_every: steps between the (host-synchronising) checks for non-finite values.
        max_halvings: halvings of a step the rescue rule tries before rejecting it.
        max_iterations, max_time, min_gradient_norm, verbosity, log_verbosity: as in
            Pymanopt (min_gradient_norm 0 disables that criterion).
    """

    def __init__(
        self,
        step_size: Any = 1e-2,
        momentum: float = 0.0,
        nesterov: bool = False,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        super().__init__(step_size, **kwargs)
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


class RiemannianAdam(_StochasticRiemannianOptimizer):
    """Riemannian Adam (Becigneul & Ganea, ICLR 2019) with transported first moment.

    ``m_k = b1 T(m_{k-1}) + (1-b1) g_k``, ``v_k = b2 v_{k-1} + (1-b2) |g_k|^2``, direction
    ``P_x(m_hat / (sqrt(v_hat) + eps))``; ``adaptivity="norm"`` uses the squared
    Riemannian norm (one scalar, intrinsic: g_N on the observable quotient),
    ``"elementwise"`` the entrywise square of the ambient coordinates (as torch.optim.Adam).
    Other arguments as :class:`RiemannianSGD`.
    """

    def __init__(
        self,
        step_size: Any = 1e-3,
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
        super().__init__(step_size, **kwargs)
        self.betas = (b1, b2)
        self.eps = float(eps)
        self.adaptivity = adaptivity

    def _parameters(self) -> dict:
        return {"betas": self.betas, "eps": self.eps, "adaptivity": self.adaptivity}

    def _direction(self, manifold, point, grad, state, k):
        b1, b2 = self.betas
        m = state.get("m")
        m = (1 - b1) * grad if m is None else b1 * m + (1 - b1) * grad
        norm = self.adaptivity == "norm"
        sq = inner_array(manifold, point, grad, grad) if norm else grad * grad
        v = state.get("v")
        v = (1 - b2) * sq if v is None else b2 * v + (1 - b2) * sq
        state["m"], state["v"] = m, v
        c1, c2 = 1 - b1 ** (k + 1), 1 - b2 ** (k + 1)
        d = m / (c1 * (namespace(grad).sqrt(v / c2) + self.eps))
        return d if norm else manifold.projection(point, d)
