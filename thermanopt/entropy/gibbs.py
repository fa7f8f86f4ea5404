"""The Gibbs law of the free energy, written in the singular values of X.

Langevin dynamics at temperature T on the balanced manifold with potential
E(phi(W)) has, pushed forward to X = phi(W), the law
exp(-(E - T S_N)/T) dvol_{g_N} (Menon & Yu, arXiv 2509.09088; design note
"Free energy and Langevin"). With dvol_{g_N} = prod_{i,j} K_ij^{-1/2} dX,
dX = |van(s^2)| ds dU dV and exp(S_N) = prod_{i<j} K_ij^{1/2}, a spectral energy
E(X) = e(s) gives the density of the ordered singular values s_1 > ... > s_d
(Haar U, V integrated out)

    p(s) ∝ exp(-e(s)/T) prod_{i<j} |s_i^2 - s_j^2| K_ij^{-1/2} prod_i s_i^{-(N-1)/N}.

The factor s_i^{-(N-1)/N} is integrable at 0; in lam = s^(1/N) coordinates
(ds = N s^{(N-1)/N} dlam) it cancels, which is how :func:`singular_value_marginals`
integrates it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..manifolds._svd import log_K

__all__ = ["log_gibbs_density", "singular_value_marginals"]


def log_gibbs_density(
    s: Any, depth: int, energy: Callable[[Any], Any], temperature: float, *, entropy_weight=1.0
) -> Any:
    """log p(s) up to a constant for ordered singular values ``s`` (shape (..., d)).

    ``energy(s)`` returns e(s) (shape (...)); ``entropy_weight`` scales the
    entropy factor exp(S) (1 is the physical law; 0 drops it, 2 doubles it --
    negative controls for samplers).
    """
    s = np.asarray(s, dtype=float)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    N = int(depth)
    d = s.shape[-1]
    iu = np.triu_indices(d, 1)
    LK = log_K(s, N)[..., iu[0], iu[1]]
    van = np.log(np.abs(s[..., iu[0]] ** 2 - s[..., iu[1]] ** 2))
    return (
        -np.asarray(energy(s)) / temperature
        + van.sum(-1)
        + ((entropy_weight - 2.0) / 2.0) * LK.sum(-1)
        - ((N - 1) / N) * np.log(s).sum(-1)
    )


def singular_value_marginals(
    depth: int,
    energy: Callable[[Any], Any],
    temperature: float,
    s_max: float,
    *,
    n: int = 600,
    entropy_weight: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marginal densities of s_1 > s_2 for width 2 by quadrature on a lam = s^(1/N) grid.

    Returns ``(s_grid, p1, p2)``: densities (w.r.t. ds) of the largest and the
    smallest singular value on ``s_grid`` (cell midpoints in lam, mapped to s).
    """
    N = int(depth)
    lmax = s_max ** (1.0 / N)
    lam = (np.arange(n) + 0.5) * lmax / n
    L1, L2 = np.meshgrid(lam, lam, indexing="ij")
    S = np.stack([L1, L2], axis=-1) ** N
    upper = L1 > L2
    logp = np.full(L1.shape, -np.inf)
    logp[upper] = log_gibbs_density(S[upper], N, energy, temperature, entropy_weight=entropy_weight)
    # density in lam: p(s) ds1 ds2 = p(s) N^2 (s1 s2)^{(N-1)/N} dlam1 dlam2
    logq = np.where(upper, logp + ((N - 1) / N) * np.log(S).sum(-1), -np.inf)
    q = np.exp(logq - logq[upper].max())
    dl = lmax / n
    q /= q.sum() * dl * dl
    q1, q2 = q.sum(1) * dl, q.sum(0) * dl  # densities in lam_1, lam_2
    s_grid = lam**N
    jac = N * lam ** (N - 1)  # ds/dlam
    return s_grid, q1 / jac, q2 / jac
