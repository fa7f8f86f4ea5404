"""Free-energy descent: Riemannian steepest descent on F = E - T S.

Chen, Kotwal & Menon, "Entropic regularization in the Deep Linear Network"
(arXiv 2512.06137); Menon & Yu, arXiv 2509.09088 (the entropy). On a manifold of
the deep linear network (DLN) the free energy at temperature T >= 0 is

    F_T(x) = E(x) - T S(x),    grad F_T = grad E - T grad S,

with S the Boltzmann entropy of the fibre over the end-to-end matrix:

- :class:`~thermanopt.manifolds.ObservableQuotient` (points X): S = S_N(X)
  (``thermanopt.entropy.dln_entropy``), g_N gradient A_{N,X}(nabla S);
- :class:`~thermanopt.manifolds.BalancedManifold` (points W): S = S_N(phi(W)),
  whose Euclidean gradient in W is the chain rule
  (nabla_W S)_p = (W_N ... W_{p+1})^T nabla S(X) (W_{p-1} ... W_1)^T,
  projected onto T_W M;
- any other manifold: pass ``entropy=(S, riemannian_grad_S)``.

S and its gradient come from :class:`~thermanopt.entropy.model.EntropyModel`, which calls
the manifold's own end-to-end map and its adjoint (so subclasses behave like their parent).

The reduced entropy (no additive constant) is used; constants do not move
iterates. The iteration is Pymanopt's ``SteepestDescent`` with the objective
F_{T_k}: x_{k+1} = R_{x_k}(-t_k grad F_{T_k}(x_k)), t_k from Armijo
backtracking (``pymanopt.optimizers.line_search.BackTrackingLineSearcher`` by
default), with Pymanopt's stopping criteria. The temperature follows a
schedule T_k (:func:`~thermanopt.optimizers.schedules.constant`, ``geometric``
annealing, or a callable of the iteration counted from 0); while the schedule still changes, the
gradient-norm and step-size criteria are not applied (an annealed run goes
on until T settles). At T = 0 the entropy is never evaluated in the iteration
and the iterates are exactly those of ``SteepestDescent``.

Per-iteration records (``result.log["records"]`` and ``optimizer.history``):
dicts with ``iteration``, ``E``, ``S``, ``F``, ``T``, ``gradient_norm`` (of
F_T), ``step_size`` and ``time`` (seconds since start).
``callback(iteration, point, record)`` is called after every step with the
new point; returning True stops the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from copy import deepcopy
from typing import Any

from pymanopt.optimizers.line_search import BackTrackingLineSearcher
from pymanopt.optimizers.optimizer import Optimizer, OptimizerResult

from .._backend import namespace, to_float
from ..entropy.model import EntropyModel
from ._common import check_finite_at, check_initial_point, unchecked
from .schedules import Schedule, as_schedule

Array = Any

__all__ = ["FreeEnergyDescent"]


def _finite(y: Array) -> bool:
    """True when the trial point ``y`` has only finite entries (one host read)."""
    xp = namespace(y)
    return bool(to_float(xp.all(xp.isfinite(y))))


class _GivenEntropy:
    """An entropy given as (S, riemannian_grad_S) for manifolds without a DLN entropy."""

    def __init__(self, value: Callable, riemannian_gradient: Callable) -> None:
        self._value = value
        self.riemannian_gradient = riemannian_gradient

    def value(self, x: Array) -> float:
        return to_float(self._value(x))

    def value_or_minus_inf(self, x: Array) -> float:
        return self.value(x)


class FreeEnergyDescent(Optimizer):
    """Riemannian steepest descent with Armijo line search on F_T = E - T S.

    Args:
        temperature: T >= 0 (a number), or a schedule / callable of the
            iteration (counted from 0) returning T_k.
        schedule: optional schedule overriding ``temperature``.
        line_searcher: a Pymanopt line searcher (default
            ``BackTrackingLineSearcher()``, as ``SteepestDescent``).
        entropy: optional ``(S, riemannian_grad_S)`` for manifolds that do not
            expose the DLN entropy.
        **kwargs: Pymanopt ``Optimizer`` arguments (``max_iterations``,
            ``min_gradient_norm``, ``min_step_size``, ``max_time``,
            ``max_cost_evaluations``, ``verbosity``, ``log_verbosity``).
    """

    def __init__(
        self,
        temperature: Any = 0.0,
        schedule: Any = None,
        line_searcher: Any = None,
        *,
        entropy: tuple[Callable, Callable] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("verbosity", 0)
        super().__init__(**kwargs)
        self.schedule: Schedule = as_schedule(schedule if schedule is not None else temperature)
        self.schedule(0)  # validates T_0 (ValueError for T < 0)
        if line_searcher is None:
            line_searcher = BackTrackingLineSearcher()
        self._line_searcher = line_searcher
        self.line_searcher = None
        self._entropy_override = entropy
        self.history: list[dict] = []

    def __str__(self) -> str:
        return "FreeEnergyDescent"

    # ------------------------------------------------------------------
    def _entropy(self, manifold: Any, needed: bool) -> Any:
        if self._entropy_override is not None:
            return _GivenEntropy(*self._entropy_override)
        if not needed:
            try:
                return EntropyModel(manifold)
            except TypeError:
                return None  # T = 0 throughout: the entropy is only recorded when available
        return EntropyModel(manifold)

    def run(
        self,
        problem: Any,
        *,
        initial_point: Array | None = None,
        callback: Callable[[int, Array, dict], bool] | None = None,
        reuse_line_searcher: bool = False,
        validate: bool = True,
    ) -> OptimizerResult:
        """Minimise F = E - T_k S from ``initial_point`` (random if None).

        Raises ``ValueError`` naming the iteration when E, S or a gradient is
        not finite, and when T > 0 on a manifold without an entropy; for an initial
        point whose array type differs from the manifold's or the cost's (a torch tensor
        for an ``autograd`` cost), or, with ``validate``, that is not finite, off the
        manifold or singular (messages start with "initial point"). Trial points of the
        line search whose retraction overflows count as F = +inf (the search steps back).
        """
        manifold = problem.manifold
        energy = problem.cost
        energy_gradient = problem.riemannian_gradient
        schedule = self.schedule
        model = self._entropy(manifold, needed=not schedule.is_zero)

        if not reuse_line_searcher or self.line_searcher is None:
            self.line_searcher = deepcopy(self._line_searcher)
        line_searcher = self.line_searcher

        x = manifold.random_point() if initial_point is None else initial_point
        check_initial_point(manifold, x, problem, validate=validate)
        self._initialize_log(
            optimizer_parameters={"line_searcher": line_searcher, "schedule": repr(schedule)}
        )
        records: list[dict] = []
        self.history = records
        self._log["records"] = records

        iteration = 0
        start_time = time.time()
        step_size = math.inf
        gradient_norm = math.inf
        while True:
            iteration += 1
            T = schedule(iteration - 1)
            T_next = schedule(iteration)

            E = energy(x)
            check_finite_at(E, "cost", iteration)
            grad = energy_gradient(x)
            S = math.nan if model is None else model.value_or_minus_inf(x)
            if T > 0:
                check_finite_at(S, "entropy", iteration)
                grad = grad - T * model.riemannian_gradient(x)

                def objective(y: Array, T: float = T) -> float:
                    # where two singular values vanish S = -inf, F = +inf: step back
                    if not _finite(y):
                        return math.inf
                    return energy(y) - T * model.value_or_minus_inf(y)

                F = E - T * S
            else:

                def objective(y: Array) -> float:
                    return energy(y) if _finite(y) else math.inf

                F = E
            gradient_norm = manifold.norm(x, grad)
            check_finite_at(gradient_norm, "gradient", iteration)

            self._add_log_entry(iteration=iteration, point=x, cost=F, gradient_norm=gradient_norm)
            if records and records[-1]["T"] != T and getattr(line_searcher, "_oldf0", None):
                # Armijo's initial step uses the previous F; re-evaluate it at the new T so
                # that a change of temperature is not mistaken for an ascent
                # (a previous F not above the current one would give a step guess <= 0: then
                # fall back to the searcher's initial step)
                old_F = records[-1]["E"] - T * records[-1]["S"]
                line_searcher._oldf0 = old_F if old_F > F else None
            with unchecked(manifold):  # an overflowing trial step is NaN, F = +inf there
                step_size, x = line_searcher.search(
                    objective, manifold, x, -grad, F, -(gradient_norm**2)
                )
            record = {
                "iteration": iteration,
                "E": float(E),
                "S": float(S),
                "F": float(F),
                "T": float(T),
                "gradient_norm": float(gradient_norm),
                "step_size": float(step_size),
                "time": time.time() - start_time,
            }
            records.append(record)

            settled = T_next == T
            stopping_criterion = self._check_stopping_criterion(
                start_time=start_time,
                step_size=step_size if settled else math.inf,
                gradient_norm=gradient_norm if settled else math.inf,
                iteration=iteration,
            )
            if stopping_criterion is None and callback is not None:
                if callback(iteration, x, record):
                    stopping_criterion = (
                        f"Terminated - callback requested stop at iteration {iteration}."
                    )
            if stopping_criterion:
                if self._verbosity >= 1:
                    print(stopping_criterion)
                break

        T_final = schedule(iteration - 1)
        final_cost = energy(x)
        if T_final > 0:
            final_cost = final_cost - T_final * model.value(x)
        return self._return_result(
            start_time=start_time,
            point=x,
            cost=final_cost,
            iterations=iteration,
            stopping_criterion=stopping_criterion,
            cost_evaluations=iteration,
            step_size=step_size,
            gradient_norm=gradient_norm,
        )
