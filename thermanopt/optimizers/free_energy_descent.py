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

The reduced entropy (no additive constant) is used; constants do not move
iterates. The iteration is Pymanopt's ``SteepestDescent`` with the objective
F_{T_k}: x_{k+1} = R_{x_k}(-t_k grad F_{T_k}(x_k)), t_k from Armijo
backtracking (``pymanopt.optimizers.line_search.BackTrackingLineSearcher`` by
default), with Pymanopt's stopping criteria. The temperature follows a
schedule T_k (``_common.constant``, ``geometric`` annealing, or a callable of
the iteration counted from 0); while the schedule still changes, the
gradient-norm and step-size criteria are not applied (an annealed run goes
on until T settles). At T = 0 the entropy is never evaluated in the iteration
and the iterates are exactly those of ``SteepestDescent``.

Per-iteration records (``result.log["records"]`` and ``optimizer.history``):
dicts with ``iteration``, ``E``, ``S``, ``F``, ``T``, ``gradient_norm`` (of
F_T), ``step_size``, ``time`` (seconds since start) and ``reprojected``.
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

from .._backend import to_float
from ..entropy.dln import RankDeficientError
from ..manifolds.balanced import phi_adjoint, reproject_balanced
from ._common import Schedule, as_schedule, check_finite_at

Array = Any

__all__ = ["FreeEnergyDescent", "EntropyModel", "entropy_model", "phi_adjoint"]


class EntropyModel:
    """Entropy S(x) and its Riemannian gradient on a manifold.

    ``value(x)`` returns a Python float; ``riemannian_gradient(x)`` a tangent
    vector of the array type of ``x``; ``euclidean_gradient(x)`` the gradient in
    the embedding coordinates (X for the quotient, W for the balanced manifold).
    """

    def __init__(
        self,
        value: Callable[[Array], float],
        riemannian_gradient: Callable[[Array], Array],
        euclidean_gradient: Callable[[Array], Array] | None = None,
    ) -> None:
        self.value = value
        self.riemannian_gradient = riemannian_gradient
        self.euclidean_gradient = euclidean_gradient


def entropy_model(manifold: Any) -> EntropyModel | None:
    """The :class:`EntropyModel` of a DLN manifold (None if it exposes no entropy).

    Balanced manifold (has ``end_to_end`` and ``depth`` and a stack point):
    S(W) = S_N(phi(W)), nabla_W S = phi_adjoint(W, nabla S_N(phi(W))), projected.
    Otherwise a manifold with ``entropy(x)`` and ``entropy_gradient(x, riemannian=...)``
    (the observable quotient) is used as is.
    """
    from ..entropy import dln_entropy, dln_entropy_gradient

    if hasattr(manifold, "end_to_end") and hasattr(manifold, "balanced_from"):
        depth = manifold.depth

        def value(W: Array) -> float:
            return float(to_float(dln_entropy(manifold.end_to_end(W), depth)))

        def egrad(W: Array) -> Array:
            return phi_adjoint(W, dln_entropy_gradient(manifold.end_to_end(W), depth))

        def rgrad(W: Array) -> Array:
            return manifold.projection(W, egrad(W))

        return EntropyModel(value, rgrad, egrad)
    if hasattr(manifold, "entropy") and hasattr(manifold, "entropy_gradient"):

        def value_q(X: Array) -> float:
            return float(to_float(manifold.entropy(X)))

        def rgrad_q(X: Array) -> Array:
            return manifold.entropy_gradient(X, riemannian=True)

        def egrad_q(X: Array) -> Array:
            return manifold.entropy_gradient(X, riemannian=False)

        return EntropyModel(value_q, rgrad_q, egrad_q)
    return None


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
        reproject_tol: relative tolerance beyond which an iterate that left
            the manifold is re-projected (balanced manifold only; default: the
            manifold's own check). Re-projections are counted in
            ``result.log["reprojections"]``.
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
        reproject_tol: float | None = None,
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
        self.reproject_tol = reproject_tol
        self.history: list[dict] = []

    def __str__(self) -> str:
        return "FreeEnergyDescent"

    # ------------------------------------------------------------------
    def _entropy(self, manifold: Any) -> EntropyModel | None:
        if self._entropy_override is not None:
            value, rgrad = self._entropy_override
            return EntropyModel(lambda x: float(to_float(value(x))), rgrad)
        return entropy_model(manifold)

    @staticmethod
    def _entropy_value(model: EntropyModel | None, x: Array, required: bool) -> float:
        if model is None:
            return math.nan
        if required:
            return model.value(x)
        try:  # only recorded at T = 0: a point where S is undefined does not stop the run
            return model.value(x)
        except ValueError:
            return math.nan

    def _maybe_reproject(self, manifold: Any, x: Array) -> tuple[Array, bool]:
        if not (hasattr(manifold, "end_to_end") and hasattr(manifold, "balanced_from")):
            return x, False
        if manifold.is_on_manifold(x, self.reproject_tol):
            return x, False
        return reproject_balanced(x, manifold.depth), True

    def run(
        self,
        problem: Any,
        *,
        initial_point: Array | None = None,
        callback: Callable[[int, Array, dict], bool] | None = None,
        reuse_line_searcher: bool = False,
    ) -> OptimizerResult:
        """Minimise F = E - T_k S from ``initial_point`` (random if None).

        Raises ``ValueError`` naming the iteration when E, S or a gradient is
        not finite, and when T > 0 on a manifold without an entropy.
        """
        manifold = problem.manifold
        energy = problem.cost
        energy_gradient = problem.riemannian_gradient
        model = self._entropy(manifold)
        schedule = self.schedule

        if not reuse_line_searcher or self.line_searcher is None:
            self.line_searcher = deepcopy(self._line_searcher)
        line_searcher = self.line_searcher

        x = manifold.random_point() if initial_point is None else initial_point
        self._initialize_log(
            optimizer_parameters={"line_searcher": line_searcher, "schedule": repr(schedule)}
        )
        records: list[dict] = []
        self.history = records
        self._log["records"] = records
        self._log["reprojections"] = 0

        iteration = 0
        start_time = time.time()
        step_size = math.inf
        gradient_norm = math.inf
        while True:
            iteration += 1
            T = schedule(iteration - 1)
            T_next = schedule(iteration)
            if T > 0 and model is None:
                raise ValueError(
                    f"temperature {T} > 0 at iteration {iteration}, but the manifold "
                    f"{manifold!s} exposes no entropy; pass entropy=(S, grad_S)"
                )

            E = energy(x)
            check_finite_at(E, "cost", iteration)
            grad = energy_gradient(x)
            S = self._entropy_value(model, x, required=T > 0)
            if T > 0:
                check_finite_at(S, "entropy", iteration)
                grad = grad - T * model.riemannian_gradient(x)

                def objective(y: Array, T: float = T) -> float:
                    # a trial point where two singular values vanish has S = -inf,
                    # so F = +inf there: the line search must step back, not stop
                    try:
                        S_y = model.value(y)
                    except RankDeficientError:
                        return math.inf
                    return energy(y) - T * S_y

                F = E - T * S
            else:
                objective = energy
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
            step_size, x = line_searcher.search(
                objective, manifold, x, -grad, F, -(gradient_norm**2)
            )
            x, reprojected = self._maybe_reproject(manifold, x)
            self._log["reprojections"] += int(reprojected)
            record = {
                "iteration": iteration,
                "E": float(E),
                "S": float(S),
                "F": float(F),
                "T": float(T),
                "gradient_norm": float(gradient_norm),
                "step_size": float(step_size),
                "time": time.time() - start_time,
                "reprojected": bool(reprojected),
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
