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
sqrt g = (det A)^{-1/2}. Two schemes:

- ``scheme="retraction"`` (default): X' = R2_X(Z) with
  Z = -h A nabla F + sqrt(2 T h) A^{1/2} xi and the second-order retraction
  X expm(X^{-1}(Z - (1/2)(Z X^{-1} Z + Gamma_X(Z, Z)))) of
  :class:`~thermanopt.manifolds.ObservableQuotient`; its -(1/2) Gamma(Z, Z)
  term supplies the correction in expectation (same argument as above), and
  det X never changes sign;
- ``scheme="flat"``: explicit Euler-Maruyama X' = X + Z + h T Delta_g(X)
  (:func:`ito_correction`), the design note's SDE verbatim.

Both are weak order 1 in h. A^{1/2} xi = U (sqrt(K) o xi^) V^T with xi^ Gaussian.
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
from ..manifolds._svd import SVD, log_K, svd
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


def _mT(x: Array) -> Array:
    return matrix_transpose(x)


def _device(x: Array):
    return x.device if is_torch(x) else None


def _is_cuda(x: Array) -> bool:
    return is_torch(x) and x.device.type != "cpu"


# ======================================================================================
# Balanced manifold: batched frames, projection and orthographic retraction
# ======================================================================================


class BalancedStepper:
    """Batched geometry of the balanced manifold at points W of shape (B, N, d, d).

    Same formulas as :class:`thermanopt.manifolds.BalancedManifold` (frames
    Q_p, horizontal lift, vertical part by the sine transform, orthographic
    retraction by chord Newton), vectorised over the leading chain axis. The
    tests check it against the manifold's per-point methods.
    """

    def __init__(self, W: Array, depth: int) -> None:
        xp = namespace(W)
        self.xp = xp
        self.N = N = int(depth)
        f = svd(_end_to_end(W))
        self.s = f.s
        logs = xp.log(f.s)
        self.logl = logs / N
        self.lam = xp.exp(self.logl)
        Q = [f.V]
        for p in range(N - 1):
            # Q_p = W_p Q_{p-1} diag(lam)^{-1}, made exactly orthogonal (polar factor): near
            # rank deficiency the division by a tiny lam amplifies the O(tol) imbalance of W,
            # and the formulas below then act at the balanced point Q_p L Q_{p-1}^T over X
            Q.append(_polar((W[..., p, :, :] @ Q[-1]) / self.lam[..., None, :]))
        Q.append(f.U)
        self.Q = xp.stack(Q, axis=-3)  # (B, N+1, d, d)
        self.K = xp.exp(log_K(f.s, N))  # (B, d, d)
        p = xp.arange(N, dtype=W.dtype, device=_device(W))
        li = self.logl[..., None, :, None]
        lj = self.logl[..., None, None, :]
        self.M = xp.exp((N - 1 - p)[:, None, None] * li + p[:, None, None] * lj)  # (B,N,d,d)
        if N > 1:
            n = N - 1
            k = xp.arange(1, N, dtype=W.dtype, device=_device(W))
            theta = math.pi / N
            self.sine = math.sqrt(2.0 / N) * xp.sin(theta * k[:, None] * k[None, :])
            la_i = self.lam[..., None, :, None]
            la_j = self.lam[..., None, None, :]
            self.mu = (
                2.0 * (la_i - la_j) ** 2
                + 8.0 * (la_i * la_j) * (xp.sin(0.5 * theta * k) ** 2)[:, None, None]
            )
            self.n = n

    # frames ---------------------------------------------------------------
    def to_frame(self, E: Array) -> Array:
        return _mT(self.Q[..., 1:, :, :]) @ E @ self.Q[..., :-1, :, :]

    def from_frame(self, Ep: Array) -> Array:
        return self.Q[..., 1:, :, :] @ Ep @ _mT(self.Q[..., :-1, :, :])

    def _G(self, A: Array) -> Array:
        xp = self.xp
        z = xp.zeros_like(A[..., :1, :, :])
        Ap = xp.concat([z, A, z], axis=-3)
        return (
            self.lam[..., None, :, None] * Ap[..., :-1, :, :]
            - Ap[..., 1:, :, :] * self.lam[..., None, None, :]
        )

    def _GT(self, Ep: Array) -> Array:
        return (
            self.lam[..., None, :, None] * Ep[..., 1:, :, :]
            - Ep[..., :-1, :, :] * self.lam[..., None, None, :]
        )

    def _jacobi_solve(self, B: Array) -> Array:
        from .._backend import einsum

        Bh = einsum("kp,...pij->...kij", self.sine, B) / self.mu
        return einsum("kp,...pij->...kij", self.sine, Bh)

    def project_frame(self, Ep: Array) -> Array:
        """Tangent projection in frame coordinates: horizontal + vertical part."""
        xp = self.xp
        Zp = xp.sum(Ep * self.M, axis=-3)
        H = (Zp / self.K)[..., None, :, :] * self.M
        if self.N == 1:
            return H
        F = self._GT(Ep)
        return H + self._G(self._jacobi_solve(F - _mT(F)))

    def projection(self, E: Array) -> Array:
        return self.from_frame(self.project_frame(self.to_frame(E)))

    def retraction_second_order(
        self, Vp: Array, rtol: float, max_iterations: int = 50
    ) -> tuple[Array, Array, int]:
        """Orthographic retraction of the frame-coordinate tangent vectors Vp.

        Returns (W', relative balance residual per chain, Newton iterations).
        Frame coordinates of W are diag(lam) in every layer.
        """
        xp = self.xp
        d = Vp.shape[-1]
        eye = xp.eye(d, dtype=Vp.dtype, device=_device(Vp))
        base = self.lam[..., None, None, :] * eye + Vp
        if self.N == 1:
            return self.from_frame(base), xp.zeros_like(self.s[..., 0]), 0
        S = xp.zeros_like(base[..., 1:, :, :])
        Y = base
        prev = None
        failed = None
        n_iter = 0
        while True:
            h = _mT(Y[..., 1:, :, :]) @ Y[..., 1:, :, :] - Y[..., :-1, :, :] @ _mT(
                Y[..., :-1, :, :]
            )
            scale = xp.max(xp.sum(Y * Y, axis=(-2, -1)), axis=-1)
            res = xp.sqrt(xp.max(xp.sum(h * h, axis=(-2, -1)), axis=-1)) / scale
            res = xp.where(xp.isfinite(res), res, xp.full_like(res, math.inf))
            if prev is None:
                failed = ~xp.isfinite(res)
            else:
                # a chain whose residual grows is beyond the reach of the chord iteration
                failed = failed | (res > 2.0 * prev) | ~xp.isfinite(res)
            active = (res > rtol) & ~failed
            if n_iter >= max_iterations or not bool(to_float(xp.any(active))):
                break
            n_iter += 1
            step = self._jacobi_solve(xp.where(active[..., None, None, None], h, 0.0 * h))
            S = S - step
            Y = base + self._G(S)
            prev = xp.where(active, res, prev if prev is not None else res)
        # the normal correction of a second-order retraction is O(|V|^2 / reach): a
        # correction larger than the step itself means Newton found a far-away
        # solution (or none): such chains are reported as failed (inf residual)
        corr = xp.sum(self._G(S) ** 2, axis=(-3, -2, -1))
        size = xp.sum(Vp * Vp, axis=(-3, -2, -1))
        failed = failed | (corr > size)
        res = xp.where(failed, xp.full_like(res, math.inf), res)
        return self.from_frame(Y), res, n_iter


def _end_to_end(W: Array) -> Array:
    X = W[..., 0, :, :]
    for p in range(1, W.shape[-3]):
        X = W[..., p, :, :] @ X
    return X


def _polar(Q: Array) -> Array:
    xp = namespace(Q)
    u, _, vt = xp.linalg.svd(Q, full_matrices=False)
    return u @ vt


def _rescue(st: BalancedStepper, Y: Array, depth: int) -> Array:
    """Re-projection of an off-manifold stack Y onto M (used where Newton fails).

    The balanced point over phi(Y) whose inner frames Q_1..Q_{N-1} are those of
    the previous point (``st``); a first-order rescue, counted in the log.
    """
    from ..manifolds._metric import balanced_from

    if depth == 1:
        return Y * 1
    xp = namespace(Y)
    f = svd(_end_to_end(Y))
    # keep the rescued point of full rank (s_min >= eps^0.4 s_max) so the next frames exist
    floor = tolerance(Y, power=0.4) * f.s[..., :1]
    s = xp.where(f.s > floor, f.s, floor)
    return balanced_from(SVD(f.U, s, f.V), _polar(st.Q[..., 1:-1, :, :]), depth)


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
    eye = xp.eye(d * d, dtype=X.dtype, device=_device(X))
    for a in range(d * d):
        Eh = xp.reshape(eye[a], (d, d)) * rootK
        e = sp.f.U @ Eh @ _mT(sp.f.V)
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
        Gh = _mT(U) @ covector @ V
        Zh = -h * sp.K * Gh + math.sqrt(2.0 * T * h) * xp.sqrt(sp.K) * xi
        Z = U @ Zh @ _mT(V)
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
        scheme: quotient scheme, ``"retraction"`` (default) or ``"flat"``.
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
        scheme: str = "retraction",
        newton_rtol: float | None = None,
        reproject_tol: float | None = None,
        max_newton_iterations: int = 20,
        check_every: int = 100,
    ) -> None:
        self.temperature = check_temperature(temperature)
        self.step_size = check_step_size(step_size)
        self.entropy_weight = float(entropy_weight)
        if scheme not in ("retraction", "flat"):
            raise ValueError(f"scheme must be 'retraction' or 'flat', got {scheme!r}")
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
        if kind == "quotient":
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
            return xp.zeros((0, n_chains, *point_shape), dtype=X.dtype, device=_device(X))
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
        n_bad = int(to_float(xp.sum(xp.astype(bad, xp.int64))))
        if n_bad:
            fixed = _rescue(st, W + st.from_frame(Vp), depth)
            Wn = xp.where(bad[..., None, None, None], fixed, Wn)
            self.log["reprojections"] += n_bad
        return Wn

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
