"""Riemannian Langevin sampler on the manifolds of the deep linear network (and others).

Target: the Gibbs law exp(-E/T) dvol at temperature T, sampled by batched Euler-Maruyama
chains (leading axis = chains).

Balanced manifold (a Riemannian submanifold M of R^{N x d x d}, Frobenius metric): the
geodesic random walk

    W' = R_W( P_W(-h nabla E(W) + sqrt(2 T h) xi) ),   xi ~ N(0, I),

with R the manifold's second-order retraction. Brownian motion on M in ambient (Ito)
coordinates has the drift (1/2) H dt (H the mean-curvature vector, the trace of the second
fundamental form II); a second-order retraction expands as W + V + (1/2) II(V, V) +
O(|V|^3), and E[(1/2) II(V, V)] = T h H for the noise part, which is exactly that drift. A
first-order retraction gets this O(h) term wrong and biases the law. The stationary law is
exp(-E/T) dvol_M up to O(h); pushed to X = phi(W) it is exp(-(E - T S_N)/T) dvol_{g_N}
(Menon & Yu, arXiv 2509.09088; Chen, Kotwal & Menon, arXiv 2512.06137), S_N the DLN
entropy. The retraction reflects at the rank-deficient set (the reflecting boundary of the
diffusion on one component of M).

Observable quotient (GL(d), g_N): the chain on X is the balanced chain seen through phi,
X' = phi(W') with W' the balanced step from the balanced lift W of X. phi is a Riemannian
submersion and the balanced kernel commutes with the O(d)^(N-1) action, so the law of X'
depends on X only: a Markov chain on (GL(d), g_N) with stationary law
exp(-(E - T S_N)/T) dvol_{g_N} up to O(h), the entropic force (the mean curvature of the
fibres) supplied by the geometry, and lam = s^(1/N) keeps the step regular through rank
deficiency. This is the only quotient scheme: explicit Euler-Maruyama in the flat
coordinates X (with the Ito correction T Delta_g X, or through the second-order retraction
of g_N) over-weights small singular values (E[s2] biased by +4 % to +8 % at h = 0.0025 for
width 2, depth 2) because the diffusion in X degenerates where s_min -> 0.
``entropy_weight`` w samples exp(-(E - w T S_N)/T) dvol_{g_N} by adding (1 - w) T S_N to the
potential of the balanced chain.

Both run through the one step rule (:class:`~thermanopt.manifolds.step.StepRule`) on the
balanced manifold; ``log["rescue_rate"]`` reports how often it had to rescue a step. Cost of
a balanced step: the retraction's SVD of X' = phi(W + V) (its frames are carried to the
next step's projection, so that needs no SVD), N - 1 polar factors by Newton-Schulz, the
gradient and the noise; no host read besides the step rule's one flag.

Other manifolds: per-chain loop with ``projection`` and ``retraction`` (correct when the
metric is the embedded one and the retraction is second order, e.g. spheres).

Gradients for all chains: ``batched_cost=True`` declares that the cost broadcasts over a
leading chain axis and returns the sum over chains (one gradient call); otherwise torch
costs are vectorised by ``torch.func.vmap(torch.func.grad(cost))`` when that works, and
anything else loops over chains.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .._backend import (
    make_generator,
    namespace,
    on_accelerator,
    random_normal,
    spec_of,
    vmap_gradient,
)
from ..entropy.model import EntropyModel
from ..manifolds import DLNManifold
from ..manifolds.step import StepRule
from ._common import (
    FiniteMonitor,
    check_count,
    check_finite_at,
    check_initial_point,
    check_like,
    unchecked,
)
from ._step import tangent_noise
from .schedules import check_step_size, check_temperature
from .sharding import ChainShard

Array = Any

__all__ = ["RiemannianLangevin"]


def _raw_function(problem: Any) -> Callable | None:
    fn = getattr(problem, "_original_cost", None)
    return getattr(fn, "_original_function", None)


class _BatchGradient:
    """Euclidean gradients of the problem's cost for a batch of points."""

    def __init__(self, problem: Any, batched_cost: bool, example: Array) -> None:
        self.problem = problem
        self.mode = "batched" if batched_cost else "loop"
        self._vmapped = None
        raw = None if batched_cost else _raw_function(problem)
        if raw is not None:
            self._vmapped = vmap_gradient(raw, example)
            if self._vmapped is not None:
                self.mode = "vmap"

    def __call__(self, X: Array) -> Array:
        if self.mode == "batched":
            return self.problem.euclidean_gradient(X)
        if self.mode == "vmap":
            return self._vmapped(X)
        xp = namespace(X)
        return xp.stack([self.problem.euclidean_gradient(X[i]) for i in range(X.shape[0])], axis=0)


class RiemannianLangevin:
    """Batched Riemannian Langevin sampler of exp(-E/T) dvol (see the module docstring).

    Args:
        temperature: T >= 0.
        step_size: h > 0.
        entropy_weight: on the observable quotient, sample exp(-(E - w T S_N)/T) dvol_{g_N}
            (1: the pushforward of the balanced chain; 0: plain exp(-E/T) dvol_{g_N}).
            Ignored on other manifolds.
        max_halvings: halvings of a step the rescue rule tries before rejecting it.
        check_every: on CUDA, non-finite checks are accumulated on the device and read
            every ``check_every`` steps (on the CPU every step).

    After ``sample``, ``self.log`` holds ``rescues``, ``rescue_rate`` (rescues per
    chain-step), ``rejected``, ``steps``, ``chains``, ``gradient_mode`` and ``time``.
    """

    def __init__(
        self,
        temperature: float,
        step_size: float,
        *,
        entropy_weight: float = 1.0,
        max_halvings: int = 8,
        check_every: int = 100,
    ) -> None:
        self.temperature = check_temperature(temperature)
        self.step_size = check_step_size(step_size)
        self.entropy_weight = check_temperature(entropy_weight, "entropy_weight")
        self.max_halvings = check_count(max_halvings, "max_halvings", 0)
        self.check_every = check_count(check_every, "check_every", 1)
        self.log: dict = {}

    # ------------------------------------------------------------------
    @staticmethod
    def _batch(manifold: Any, initial_point: Array, n_chains: int) -> Array:
        x = initial_point
        if isinstance(x, (list, tuple)) or not hasattr(x, "shape"):
            raise ValueError(f"initial_point must be one array, got {type(x).__name__}")
        xp = namespace(x)
        if not xp.isdtype(x.dtype, "real floating"):
            raise ValueError(f"initial_point must have a real floating dtype, got {x.dtype}")
        try:
            example = manifold.random_point(0)
        except TypeError:  # Pymanopt's own manifolds take no generator
            example = manifold.random_point()
        point_shape = tuple(example.shape)
        shape = tuple(x.shape)
        if shape == point_shape:
            batch = xp.stack([x] * n_chains, axis=0) if n_chains > 1 else x[None, ...] * 1
        elif shape == (n_chains, *point_shape):
            batch = x * 1
        else:
            raise ValueError(
                f"initial_point has shape {shape}; expected one point {point_shape} or a "
                f"batch ({n_chains}, *{point_shape})"
            )
        check_finite_at(batch, "initial point")
        return batch

    def sample(
        self,
        problem: Any,
        initial_point: Array,
        n_steps: int,
        n_chains: int = 1,
        thin: int = 1,
        generator: Any = None,
        batched_cost: bool = False,
        validate: bool = True,
        *,
        process_group: Any = None,
        gather: bool = False,
    ) -> Array:
        """Run ``n_chains`` chains for ``n_steps`` steps; keep every ``thin``-th state.

        ``validate`` checks every chain's initial point once (finite, on the manifold, full
        rank: errors start with "initial point"); its array type is always checked against
        the manifold and the cost. The chains then run in the manifold's ``unchecked`` mode
        (non-finite states are caught per step, or every ``check_every`` steps on a GPU).

        Returns an array of shape (n_steps // thin, n_chains, *point_shape), the states
        after steps thin, 2 thin, ... (array type, device and dtype of the initial point).
        ``generator`` is a seed or generator (NumPy or torch). Raises ``ValueError`` for a
        non-finite gradient or point (naming the step; a hint to lower the step size when
        the chains diverge), mismatched array type/device/dtype between the point and the
        gradient, or bad arguments.

        Chains sharded over ranks: with ``process_group`` (a ``torch.distributed`` group,
        or ``"auto"`` for the default group when one is initialised) rank r runs its share
        of the ``n_chains`` chains (:func:`~thermanopt.optimizers.sharding.chain_shard`)
        with its own generator, spawned from the integer seed ``generator`` (reproducible,
        distinct per rank); ``gather=True`` returns all chains on every rank (one
        ``all_gather`` at the end), otherwise the rank's own chains. The law is the same:
        the chains are independent.
        """
        n_steps, n_chains, thin = (
            check_count(n_steps, "n_steps", None),
            check_count(n_chains, "n_chains", None),
            check_count(thin, "thin", None),
        )
        if n_steps < 0 or n_chains < 1 or thin < 1:
            raise ValueError(
                f"need n_steps >= 0, n_chains >= 1, thin >= 1; got {n_steps}, {n_chains}, {thin}"
            )
        manifold = problem.manifold
        X = self._batch(manifold, initial_point, n_chains)
        check_initial_point(manifold, X, problem, validate=validate, batched=True)
        shard = ChainShard.of(process_group, n_chains, generator)
        total = manifold.total_space if isinstance(manifold, DLNManifold) else manifold
        with unchecked(manifold), unchecked(total):
            out = self._sample(
                problem, manifold, total, X[shard.chains], n_steps, thin, shard, batched_cost
            )
        return shard.gather(out) if gather else out

    def _sample(self, problem, manifold, total, X, n_steps, thin, shard, batched_cost):
        spec = spec_of(X)
        gen = make_generator(shard.seed, spec)
        xp = namespace(X)
        grad = _BatchGradient(problem, batched_cost, X)
        rule = StepRule(self.max_halvings)
        if isinstance(manifold, DLNManifold):
            step = _BundleStep(self, total)
        else:
            step = self._generic_step
        entropy = self._entropy_drift(manifold)
        monitor = FiniteMonitor()
        deferred = on_accelerator(X)
        self.log = {
            "steps": n_steps,
            "chains": shard.count,
            "gradient_mode": grad.mode,
            "rank": shard.rank,
            "world_size": shard.world_size,
        }
        kept = []
        start = time.time()
        for k in range(1, n_steps + 1):
            G = grad(X)
            if k == 1:
                if tuple(G.shape) != tuple(X.shape):
                    raise ValueError(
                        f"gradient has shape {tuple(G.shape)}, points have {tuple(X.shape)}; "
                        "with batched_cost=True the cost must broadcast over the chain axis"
                    )
                check_like(G, X, "gradient", "point")
            if deferred:
                monitor.update(k, G, "gradient")
            else:
                check_finite_at(G, "gradient", k)
            if entropy is not None:
                G = G + entropy(X)
            try:
                X = step(manifold, X, G, gen, rule)
            except (RuntimeError, np.linalg.LinAlgError) as exc:
                monitor.raise_if_bad()
                raise ValueError(
                    f"Langevin step {k} failed ({exc}); the chains diverge: lower the step "
                    f"size (now {self.step_size})"
                ) from exc
            if deferred:
                monitor.update(k, X, "point")
                if k % self.check_every == 0:
                    monitor.raise_if_bad()
            else:
                check_finite_at(X, "point", k)
            if k % thin == 0:
                kept.append(X)
        monitor.raise_if_bad()
        self.log.update(
            rescues=rule.rescues,
            rejected=rule.rejected,
            rescue_rate=rule.rescue_rate,
            time=time.time() - start,
        )
        if rule.rejected:
            raise ValueError(
                f"{rule.rejected} of {rule.steps} chain-steps could not be taken even after "
                f"{self.max_halvings} halvings (the chains diverge): lower the step size "
                f"(now {self.step_size})"
            )
        return xp.stack(kept, axis=0) if kept else xp.zeros_like(X)[None][:0]

    # ------------------------------------------------------------------
    def _entropy_drift(self, manifold: Any) -> Callable[[Array], Array] | None:
        """(1 - w) T nabla S: the potential term that turns the pushforward law into w's."""
        weight = (1.0 - self.entropy_weight) * self.temperature
        if weight == 0.0 or not isinstance(manifold, DLNManifold):
            return None
        if manifold.total_space is manifold:
            return None  # the balanced chain samples exp(-E/T) dvol_M: no entropy term
        model = EntropyModel(manifold)
        return lambda X: weight * model.euclidean_gradient(X)

    def _generic_step(self, manifold: Any, X: Array, G: Array, gen: Any, rule: StepRule):
        h, T = self.step_size, self.temperature
        xp = namespace(X)
        out = []
        for i in range(X.shape[0]):
            v = manifold.projection(X[i], (-h) * G[i])
            if T > 0:
                v = v + math.sqrt(2.0 * T * h) * tangent_noise(manifold, X[i], gen)
            out.append(rule(manifold, X[i], v))
        return xp.stack(out, axis=0)


class _BundleStep:
    """The balanced step from the balanced stacks over the chains' points (module doc).

    On the balanced manifold itself (``total_space is manifold``) the chain carries the
    frames (Q, s) and layer signs of the point it returned (used only when the next call
    gets that same point object, so they are never stale): the retraction returns the frames of the
    point it makes, so the projection of the next step needs no SVD of phi(W), and the
    signs are constant along a chain. On the quotient each step starts from the balanced
    lift of X.
    """

    def __init__(self, sampler: RiemannianLangevin, total: Any) -> None:
        self.sampler, self.total = sampler, total
        self._point: Array | None = None  # the point the carried frames and signs belong to
        self._frames: tuple[Array, Array] | None = None
        self._signs: Array | None = None

    def __call__(self, manifold: Any, X: Array, G: Array, gen: Any, rule: StepRule) -> Array:
        h, T, total = self.sampler.step_size, self.sampler.temperature, self.total
        W = manifold.to_balanced(X)
        carry = manifold is total
        known = carry and X is self._point  # this call's X is the point the last call made
        frames = self._frames if known else total.frame_data(W)
        signs = self._signs if known else total.layer_signs(W)
        E = (-h) * manifold.pull_back(W, G)
        if T > 0:
            E = E + math.sqrt(2.0 * T * h) * random_normal(tuple(W.shape), spec_of(W), gen)
        v = total.projection(W, E, frames=frames)

        def retract(u: Array) -> tuple[Array, ...]:
            return total.retraction_with_frames(W, u, signs)

        W, Q, s = rule.step(retract, v, (W, *frames))
        X = manifold.from_balanced(W)
        if carry:
            self._point, self._frames, self._signs = X, (Q, s), signs
        return X
