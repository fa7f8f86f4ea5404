"""Riemannian Langevin samplers on the manifolds of the deep linear network.

Target: the Gibbs law exp(-E/T) dvol of a Riemannian manifold at temperature
T, sampled by batched Euler-Maruyama chains (leading axis = chains).

Balanced manifold (embedded submanifold M of R^{N x d x d}, Frobenius metric)
-----------------------------------------------------------------------------
Geodesic random walk with a second-order retraction R2 (the orthographic
retraction W + V + G(S), S by chord Newton on the balance constraints):

    W' = R2_W( P_W(-h nabla E(W) + sqrt(2 T h) xi) ),   xi ~ N(0, I).

Brownian motion on M in ambient (Ito) coordinates has the drift
(1/2) H dt (H the mean-curvature vector, the trace of the second fundamental
form II); a second-order retraction expands as W + V + (1/2) II(V, V) + O(|V|^3),
and E[(1/2) II(V, V)] = T h H for the noise part, which is exactly that Ito
drift. A first-order retraction (e.g. the GL(d) x O(d)^(N-1) chart) gets
this O(h) term wrong and biases the law (30-60 % on singular values in a
prototype). The stationary law is exp(-E/T) dvol_M up to O(h). Pushed to
X = phi(W) it is exp(-(E - T S_N)/T) dvol_{g_N} (Menon & Yu, arXiv 2509.09088;
Chen, Kotwal & Menon, arXiv 2512.06137), with S_N the DLN entropy.

Observable quotient (GL(d), g_N), flat coordinates X
-----------------------------------------------------
The Riemannian Langevin equation for the free energy F = E - w T S_N
(w = ``entropy_weight``, 1 by default, so that the quotient chain samples the
same law as the balanced chain pushed forward) is, in Ito form,

    dX = [-A nabla F + T (div A - (1/2) A nabla log det A)] dt + sqrt(2T) A^{1/2} dB,

A = A_{N,X} = g_N^{-1}. The correction is T Delta_g(X) = -T sum_k Gamma_X(e_k, e_k)
(the Laplace-Beltrami operator of the coordinate functions; (e_k) any
g_N-orthonormal basis, e.g. e_(ij) = U (sqrt(K_ij) E_ij) V^T) since
(1/sqrt g) d_b(sqrt g g^{ab}) = div A + A nabla log sqrt g and
sqrt g = (det A)^{-1/2}. Three schemes:

- ``scheme="retraction"``: X' = R2_X(Z) with
  Z = -h A nabla F + sqrt(2 T h) A^{1/2} xi and the second-order retraction
  X expm(X^{-1}(Z - (1/2)(Z X^{-1} Z + Gamma_X(Z, Z)))) of
  :class:`~thermanopt.manifolds.ObservableQuotient`; its -(1/2) Gamma(Z, Z)
  term supplies the correction in expectation (same argument as above), and
  det X never changes sign;
- ``scheme="flat"``: explicit Euler-Maruyama X' = X + Z + h T Delta_g(X)
  (:func:`ito_correction`), the design note's SDE verbatim.

Both are weak order 1 in h for smooth coefficients. A^{1/2} xi = U (sqrt(K) o xi^) V^T
with xi^ Gaussian. Near rank deficiency they are not accurate: the smallest singular
value behaves like a squared Bessel process (N = 2: s_min ~ B^2, i.e. lam_min =
s_min^(1/N) is a regular coordinate crossing 0 while X is not), the diffusion in X
degenerates and Euler-Maruyama in X over-weights small s_min. Measured (width 2,
depth 2, T = 1, E = |X|^2/2, 1500 chains, time 2.5, Gaussian start): E[s_1] within
1.5 % +- 1.3 % of quadrature, E[s_2] 6.6 % +- 3 % high at h = 0.01 and 6.8 % +- 3.3 %
at h = 0.005, with the s_2 law rejected by a KS test (p ~ 1e-14, 1e-7); the
"retraction" scheme falls back to the flat step for chains whose log-step
X^{-1} Z exceeds 1 (about a third of the chain-steps there).

- ``scheme="lift"`` (default, accurate): X' = phi(W') with W' the balanced step
  above from the balanced lift W = balanced_from(X). phi is a Riemannian
  submersion and the balanced kernel commutes with the O(d)^(N-1) action, so the
  law of X' depends on X only; the chain on X has the pushforward law
  exp(-(E - T S_N)/T) dvol_{g_N} up to O(h), the entropy force (the mean curvature
  of the fibres) being supplied by the geometry, and lam = s^(1/N) keeps the step
  regular through rank deficiency.

Note (checked by a mutation of the sampler): ker dphi_W = vertical + normal space,
so the normal correction of the retraction does not move X to second order;
X' = phi(W + V) is already a second-order X update. The 30-60 % bias the design
note reports for the GL(d) x O(d)^(N-1) chart retraction comes from its X update
X expm(X^{-1} dphi(V)), whose second-order term differs, not from the normal part.

The stationary density in the singular values is proportional to
exp(-E/T) |van(s^2)| prod_{i<j} K_ij^{-1/2} prod_i s_i^{-(N-1)/N} (with w = 1):
see ``tests/optimizers/test_langevin.py`` for the quadrature check.

Other manifolds: per-chain loop with ``projection`` and
``retraction_second_order`` (or ``exp``, else ``retraction`` -- then only
correct if that retraction is second order).

Gradients for all chains: ``batched_cost=True`` declares that the cost
broadcasts over a leading chain axis and returns the sum over chains (one
gradient call on the stacked batch); otherwise torch costs are vectorised by
``torch.func.vmap(torch.func.grad(cost))`` when that works, and anything else
loops over chains.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .._backend import (
    expm,
    is_torch,
    make_generator,
    matrix_transpose,
    namespace,
    random_normal,
    spec_of,
    to_float,
)
from ..manifolds._metric import balanced_from, end_to_end
from ..manifolds._svd import SVD, svd
from ..manifolds.balanced import BalancedFrames, polar
from ._common import (
    FiniteMonitor,
    check_finite_at,
    check_like,
    check_step_size,
    check_temperature,
    default_rtol,
    tolerance,
)

Array = Any

__all__ = ["RiemannianLangevin", "ito_correction", "BalancedStepper", "QuotientStepper"]


def _is_cuda(x: Array) -> bool:
    return is_torch(x) and x.device.type != "cpu"


class BalancedStepper(BalancedFrames):
    """Batched balanced-manifold geometry at points W (B, N, d, d) for the sampler.

    :class:`~thermanopt.manifolds.balanced.BalancedFrames` with orthogonalised frames
    (exact at the balanced point over phi(W) even near rank deficiency): projection,
    frame maps and the batched orthographic retraction, vectorised over the chains.
    """

    def __init__(self, W: Array, depth: int) -> None:
        super().__init__(W, depth, orthogonalize=True)


def _rescue(st: BalancedStepper, Y: Array, depth: int) -> Array:
    """Re-projection of an off-manifold stack Y onto M (used where Newton fails).

    The balanced point over phi(Y) whose inner frames Q_1..Q_{N-1} are those of
    the previous point (``st``); a first-order rescue, counted in the log.
    """
    if depth == 1:
        return Y * 1
    xp = namespace(Y)
    f = svd(end_to_end(Y))
    # keep the rescued point of full rank (s_min >= eps^0.4 s_max) so the next frames exist
    floor = tolerance(Y, power=0.4) * f.s[..., :1]
    s = xp.where(f.s > floor, f.s, floor)
    return balanced_from(SVD(f.U, s, f.V), polar(st.Q[..., 1:-1, :, :]), depth)


# ======================================================================================
# Observable quotient: drift, noise and Ito correction
# ======================================================================================


def ito_correction(X: Array, depth: int) -> Array:
    """Delta_g(X) = div A - (1/2) A nabla log det A = -sum_k Gamma_X(e_k, e_k), batched.

    (e_k) is the g_N-orthonormal basis e_(ij) = U (sqrt(K_ij) E_ij) V^T. This is
    the Ito drift (per unit temperature) of the flat-coordinate Langevin SDE.
    """
    from ..manifolds import _metric

    sp = _metric.Spectral(X, depth)
    xp = namespace(X)
    d = X.shape[-1]
    out = xp.zeros_like(X)
    rootK = xp.sqrt(sp.K)
    eye = xp.eye(d * d, dtype=X.dtype, device=getattr(X, "device", None))
    for a in range(d * d):
        Eh = xp.reshape(eye[a], (d, d)) * rootK
        e = sp.f.U @ Eh @ matrix_transpose(sp.f.V)
        out = out - _metric.christoffel(sp, e, e, depth)
    return out


class QuotientStepper:
    """One Langevin step on (GL(d), g_N) for a batch X (B, d, d)."""

    def __init__(self, manifold: Any, depth: int, scheme: str) -> None:
        if scheme not in ("retraction", "flat"):
            raise ValueError(f"scheme must be 'retraction' or 'flat', got {scheme!r}")
        self.manifold = manifold
        self.depth = depth
        self.scheme = scheme
        self.max_log_step = 1.0
        self.n_flat = 0

    def step(self, X: Array, covector: Array, xi: Array, h: float, T: float) -> Array:
        """X' from the Euclidean covector nabla F(X) and standard Gaussian xi."""
        from ..manifolds import _metric

        sp = _metric.Spectral(X, self.depth)
        xp = namespace(X)
        U, V = sp.f.U, sp.f.V
        Gh = matrix_transpose(U) @ covector @ V
        Zh = -h * sp.K * Gh + math.sqrt(2.0 * T * h) * xp.sqrt(sp.K) * xi
        Z = U @ Zh @ matrix_transpose(V)
        if self.scheme == "flat":
            out = X + Z
            if T > 0:
                out = out + (h * T) * ito_correction(X, self.depth)
            return out
        XiZ = xp.linalg.solve(X, Z)
        gamma = _metric.christoffel(sp, Z, Z, self.depth)
        Y = XiZ - 0.5 * (XiZ @ XiZ + xp.linalg.solve(X, gamma))
        # near rank deficiency (s_min^2 <~ T h) the log-step Y is O(1) or larger and the
        # exponential overshoots; those chains take the flat Euler-Maruyama step instead
        size = xp.max(xp.abs(Y), axis=(-2, -1))
        wild = ~(size <= self.max_log_step)
        Y = xp.where(wild[..., None, None], 0.0 * Y, Y)
        out = X @ expm(Y)
        self.n_flat = int(to_float(xp.sum(xp.astype(wild, xp.int64))))
        if self.n_flat:
            flat = X + Z
            if T > 0:
                flat = flat + (h * T) * ito_correction(X, self.depth)
            out = xp.where(wild[..., None, None], flat, out)
        return out


# ======================================================================================
# Gradients for a batch of chains
# ======================================================================================


def _raw_function(problem: Any) -> Callable | None:
    fn = getattr(problem, "_original_cost", None)
    return getattr(fn, "_original_function", None)


class _BatchGradient:
    """Euclidean gradients of the problem's cost for a batch of points."""

    def __init__(self, problem: Any, batched_cost: bool, example: Array) -> None:
        self.problem = problem
        self.batched_cost = bool(batched_cost)
        self.mode = "batched" if batched_cost else "loop"
        self._vmapped = None
        if not batched_cost and is_torch(example):
            raw = _raw_function(problem)
            if raw is not None:
                import torch

                try:
                    vg = torch.func.vmap(torch.func.grad(raw))
                    vg(example[:1])  # probe
                    self._vmapped = vg
                    self.mode = "vmap"
                except Exception:  # noqa: BLE001 - any failure: fall back to the loop
                    self._vmapped = None

    def __call__(self, X: Array) -> Array:
        if self.mode == "batched":
            return self.problem.euclidean_gradient(X)
        if self.mode == "vmap":
            return self._vmapped(X)
        xp = namespace(X)
        return xp.stack([self.problem.euclidean_gradient(X[i]) for i in range(X.shape[0])], axis=0)


# ======================================================================================
# The sampler
# ======================================================================================


def _kind(manifold: Any) -> str:
    if hasattr(manifold, "end_to_end") and hasattr(manifold, "balanced_from"):
        return "balanced"
    if hasattr(manifold, "christoffel") and hasattr(manifold, "metric_inverse"):
        return "quotient"
    return "generic"


class RiemannianLangevin:
    """Batched Riemannian Langevin sampler of exp(-E/T) dvol (see the module docstring).

    Args:
        temperature: T >= 0.
        step_size: h > 0.
        entropy_weight: on the observable quotient, the drift uses
            F = E - entropy_weight * T * S_N (1: the pushforward of the balanced
            chain; 0: plain exp(-E/T) dvol_{g_N}). Ignored elsewhere.
        scheme: quotient scheme: ``"lift"`` (default, accurate), ``"retraction"`` or
            ``"flat"`` (the flat-coordinate SDE; biased near rank deficiency, see the
            module docstring for measured numbers).
        newton_rtol: relative balance tolerance of the orthographic retraction
            (default dtype-aware: ~4e-10 in float64, ~7e-5 in float32).
        reproject_tol: chains whose balance residual exceeds it after Newton
            (or that are non-finite there) are re-projected onto the manifold
            and counted in ``log["reprojections"]`` (default 100 * newton_rtol).
        check_every: on CUDA, non-finite checks are accumulated on the device
            and read every ``check_every`` steps (on the CPU every step).

    After ``sample``, ``self.log`` holds ``reprojections``, ``newton_iterations``
    (max per step), ``steps``, ``chains``, ``gradient_mode`` and ``time``.
    """

    def __init__(
        self,
        temperature: float,
        step_size: float,
        *,
        entropy_weight: float = 1.0,
        scheme: str = "lift",
        newton_rtol: float | None = None,
        reproject_tol: float | None = None,
        max_newton_iterations: int = 20,
        check_every: int = 100,
    ) -> None:
        self.temperature = check_temperature(temperature)
        self.step_size = check_step_size(step_size)
        self.entropy_weight = float(entropy_weight)
        if scheme not in ("lift", "retraction", "flat"):
            raise ValueError(f"scheme must be 'lift', 'retraction' or 'flat', got {scheme!r}")
        if scheme == "lift" and float(entropy_weight) != 1.0:
            raise ValueError(
                "scheme='lift' samples the pushforward law (entropy_weight = 1); use "
                "scheme='retraction' or 'flat' for another entropy_weight"
            )
        self.scheme = scheme
        self.newton_rtol = newton_rtol
        self.reproject_tol = reproject_tol
        self.max_newton_iterations = int(max_newton_iterations)
        self.check_every = int(check_every)
        self.log: dict = {}

    # ------------------------------------------------------------------
    def _batch(self, manifold: Any, initial_point: Array, n_chains: int) -> tuple[Array, tuple]:
        if isinstance(initial_point, (list, tuple)):
            raise ValueError("initial_point must be one array (a point or a batch of points)")
        x = initial_point
        if not hasattr(x, "shape"):
            raise ValueError(f"initial_point must be an array, got {type(x).__name__}")
        xp = namespace(x)
        if not xp.isdtype(x.dtype, "real floating"):
            raise ValueError(f"initial_point must have a real floating dtype, got {x.dtype}")
        try:
            example = manifold.random_point(0)
        except TypeError:  # Pymanopt's own manifolds take no generator
            example = manifold.random_point()
        point_shape = tuple(example.shape) if example is not None else tuple(x.shape)
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
        return batch, point_shape

    def sample(
        self,
        problem: Any,
        initial_point: Array,
        n_steps: int,
        n_chains: int = 1,
        thin: int = 1,
        generator: Any = None,
        batched_cost: bool = False,
    ) -> Array:
        """Run ``n_chains`` chains for ``n_steps`` steps; keep every ``thin``-th state.

        Returns an array of shape (n_steps // thin, n_chains, *point_shape), the
        states after steps thin, 2 thin, ... (same array type, device, dtype as
        the initial point). ``generator`` is a seed or generator (NumPy or
        torch). Raises ``ValueError`` for a non-finite gradient or point (naming
        the step), mismatched array type/device/dtype between the point and the
        gradient, or bad arguments.
        """
        n_steps, n_chains, thin = int(n_steps), int(n_chains), int(thin)
        if n_steps < 0 or n_chains < 1 or thin < 1:
            raise ValueError(
                f"need n_steps >= 0, n_chains >= 1, thin >= 1; got {n_steps}, {n_chains}, {thin}"
            )
        manifold = problem.manifold
        X, point_shape = self._batch(manifold, initial_point, n_chains)
        spec = spec_of(X)
        gen = make_generator(generator, spec)
        xp = namespace(X)
        kind = _kind(manifold)
        h, T = self.step_size, self.temperature
        rtol = self.newton_rtol if self.newton_rtol is not None else default_rtol(X)
        rep_tol = self.reproject_tol if self.reproject_tol is not None else 100.0 * rtol
        grad = _BatchGradient(problem, batched_cost, X)
        monitor = FiniteMonitor()
        deferred = _is_cuda(X)
        depth = getattr(manifold, "depth", None)
        if kind == "quotient" and self.scheme != "lift":
            qstep = QuotientStepper(manifold, depth, self.scheme)
        self.log = {
            "reprojections": 0,
            "flat_fallbacks": 0,
            "newton_iterations": 0,
            "steps": n_steps,
            "chains": n_chains,
            "gradient_mode": grad.mode,
            "kind": kind,
        }
        kept = []
        start = time.time()
        for step in range(1, n_steps + 1):
            G = grad(X)
            if step == 1:
                if tuple(G.shape) != tuple(X.shape):
                    raise ValueError(
                        f"gradient has shape {tuple(G.shape)}, points have {tuple(X.shape)}; "
                        "with batched_cost=True the cost must broadcast over the chain axis"
                    )
                check_like(G, X, "gradient", "point")
            if deferred:
                monitor.update(step, G, "gradient")
            else:
                check_finite_at(G, "gradient", step)
            xi = random_normal(tuple(X.shape), spec, gen)
            try:
                if kind == "balanced":
                    X = self._balanced_step(X, G, xi, h, T, depth, rtol, rep_tol)
                elif kind == "quotient" and self.scheme == "lift":
                    X = self._lift_step(X, G, h, T, depth, rtol, rep_tol, spec, gen)
                elif kind == "quotient":
                    cov = G
                    w = self.entropy_weight
                    if T > 0 and w != 0:
                        from ..entropy import dln_entropy_gradient

                        cov = G - (w * T) * dln_entropy_gradient(X, depth, validate=False)
                    X = qstep.step(X, cov, xi, h, T)
                    self.log["flat_fallbacks"] += qstep.n_flat
                else:
                    X = self._generic_step(manifold, X, G, xi, h, T)
            except (RuntimeError, np.linalg.LinAlgError) as exc:
                monitor.raise_if_bad()
                raise ValueError(f"Langevin step {step} failed: {exc}") from exc
            if deferred:
                monitor.update(step, X, "point")
                if step % self.check_every == 0:
                    monitor.raise_if_bad()
            else:
                check_finite_at(X, "point", step)
            if step % thin == 0:
                kept.append(X)
        monitor.raise_if_bad()
        self.log["time"] = time.time() - start
        if not kept:
            return xp.zeros_like(X)[None][:0]
        return xp.stack(kept, axis=0)

    # ------------------------------------------------------------------
    def _balanced_step(
        self,
        W: Array,
        G: Array,
        xi: Array,
        h: float,
        T: float,
        depth: int,
        rtol: float,
        rep_tol: float,
    ) -> Array:
        xp = namespace(W)
        st = BalancedStepper(W, depth)
        E = (-h) * G + math.sqrt(2.0 * T * h) * xi
        Vp = st.project_frame(st.to_frame(E))
        Wn, res, its = st.retraction_second_order(Vp, rtol, self.max_newton_iterations)
        self.log["newton_iterations"] = max(self.log["newton_iterations"], its)
        bad = ~(res <= rep_tol)  # NaN counts as bad
        # a step that lands at (or across) rank deficiency has no frames for the next
        # step (lam = s^(1/N) -> 0): rescue it like a failed Newton step
        finite = xp.all(xp.isfinite(Wn), axis=(-3, -2, -1))
        Xn = end_to_end(xp.where(finite[..., None, None, None], Wn, W))
        finite = finite & xp.all(xp.isfinite(Xn), axis=(-2, -1))  # no overflow either
        s_new = svd(xp.where(finite[..., None, None], Xn, end_to_end(W))).s
        floor = tolerance(Wn, power=0.4) * s_new[..., :1]
        bad = bad | ~finite | ~xp.all(s_new > floor, axis=-1)
        n_bad = int(to_float(xp.sum(xp.astype(bad, xp.int64))))
        if n_bad:
            fixed = _rescue(st, W + st.from_frame(Vp), depth)
            Wn = xp.where(bad[..., None, None, None], fixed, Wn)
            self.log["reprojections"] += n_bad
        return Wn

    def _lift_step(
        self,
        X: Array,
        G: Array,
        h: float,
        T: float,
        depth: int,
        rtol: float,
        rep_tol: float,
        spec: Any,
        gen: Any,
    ) -> Array:
        """X' = phi(balanced step from the balanced lift of X) (scheme ``"lift"``).

        phi is a Riemannian submersion and the balanced Langevin kernel commutes with
        the O(d)^(N-1) action, so the law of X' depends on X only: a Markov chain on
        (GL(d), g_N) whose stationary law is the pushforward exp(-(E - T S)/T) dvol_g.
        The lift uses the coordinates lam = s^(1/N), regular through rank deficiency.
        """
        from ..manifolds.balanced import phi_adjoint

        W = balanced_from(X, None, depth)
        GW = phi_adjoint(W, G)
        xi = random_normal(tuple(W.shape), spec, gen)
        return end_to_end(self._balanced_step(W, GW, xi, h, T, depth, rtol, rep_tol))

    def _generic_step(
        self, manifold: Any, X: Array, G: Array, xi: Array, h: float, T: float
    ) -> Array:
        xp = namespace(X)
        retr = getattr(manifold, "retraction_second_order", None)
        if retr is None:
            retr = manifold.retraction
            try:
                manifold.exp(X[0], manifold.zero_vector(X[0]))
                retr = manifold.exp
            except (NotImplementedError, AttributeError):
                pass
        out = []
        for i in range(X.shape[0]):
            E = (-h) * G[i] + math.sqrt(2.0 * T * h) * xi[i]
            out.append(retr(X[i], manifold.projection(X[i], E)))
        return xp.stack(out, axis=0)
