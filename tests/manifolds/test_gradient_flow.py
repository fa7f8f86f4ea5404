"""Riemannian vs Euclidean: the g_N gradient flow is the image of the factor flow.

Theorem (Arora, Cohen & Hazan 2018; Bah, Rauhut, Terstiege & Westdickenberg,
arXiv 1910.05505; Menon & Yu, arXiv 2509.09088): from a balanced start W(0), the
Euclidean gradient flow W' = -nabla_W E(phi(W)) on the factors keeps W balanced
and X = phi(W) solves X' = -A_{N,X}(nabla E(X)), the gradient flow of E on
(GL(d), g_N) = ObservableQuotient. The discrete methods with the same step h
differ by O(h^2) per step, hence O(h) over a fixed time, and gradient descent on
the factors leaves the balanced manifold by O(h^2) per step.

The factor gradient is computed here from its own formula
dE/dW_p = (W_N ... W_{p+1})^T nabla E(X) (W_{p-1} ... W_1)^T, independent of the
manifold code; E is the least-squares loss E(X) = |X C - Y|^2 / 2.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from thermanopt.manifolds.observable import ObservableQuotient


def _problem(d, seed):
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((d, 3 * d)) / np.sqrt(3 * d)
    Y = rng.standard_normal((d, 3 * d)) / np.sqrt(3 * d)

    def egrad(X):
        return (X @ C - Y) @ C.T

    return egrad, rng


def _chain(W, lo, hi, d):
    """W[hi-1] @ ... @ W[lo] (identity if empty)."""
    P = np.eye(d)
    for p in range(lo, hi):
        P = W[p] @ P
    return P


def factor_gradient(W, egrad):
    N, d = W.shape[0], W.shape[1]
    G = egrad(_chain(W, 0, N, d))
    return np.stack([_chain(W, p + 1, N, d).T @ G @ _chain(W, 0, p, d).T for p in range(N)])


def imbalance(W):
    if W.shape[0] == 1:
        return 0.0
    return max(np.abs(W[p + 1].T @ W[p + 1] - W[p] @ W[p].T).max() for p in range(W.shape[0] - 1))


def _start(M, rng):
    X0 = M.random_point(generator=rng)
    d, N = M.width, M.depth
    frames = np.array([np.linalg.qr(rng.standard_normal((d, d)))[0] for _ in range(N - 1)])
    W0 = M.to_balanced(X0, frames.reshape(N - 1, d, d))
    assert imbalance(W0) < 1e-13
    return X0, W0


@pytest.mark.parametrize("width, depth", [(3, 2), (3, 3), (2, 5), (1, 4)])
def test_factor_flow_pushes_forward_to_g_N_flow(width, depth):
    M = ObservableQuotient(width, depth)
    egrad, rng = _problem(width, 10 * width + depth)
    X0, W0 = _start(M, rng)
    shape_w, shape_x = W0.shape, X0.shape
    times = np.linspace(0.0, 1.0, 11)
    opts = dict(method="DOP853", rtol=1e-10, atol=1e-12, t_eval=times)

    def factor_rhs(_, w):
        return -factor_gradient(w.reshape(shape_w), egrad).ravel()

    def quotient_rhs(_, x):
        X = x.reshape(shape_x)
        return -M.euclidean_to_riemannian_gradient(X, egrad(X)).ravel()

    def euclidean_rhs(_, x):  # the wrong metric, as a control
        return -egrad(x.reshape(shape_x)).ravel()

    sw = solve_ivp(factor_rhs, (0.0, 1.0), W0.ravel(), **opts)
    sx = solve_ivp(quotient_rhs, (0.0, 1.0), X0.ravel(), **opts)
    se = solve_ivp(euclidean_rhs, (0.0, 1.0), X0.ravel(), **opts)
    assert sw.success and sx.success
    gap, drift, control = 0.0, 0.0, 0.0
    for k in range(len(times)):
        W = sw.y[:, k].reshape(shape_w)
        X = sx.y[:, k].reshape(shape_x)
        phi = M.from_balanced(W)
        gap = max(gap, np.abs(phi - X).max())
        drift = max(drift, imbalance(W))
        control = max(control, np.abs(se.y[:, k].reshape(shape_x) - X).max())
    assert gap < 1e-7, gap
    assert drift < 1e-8, drift  # balance is a conservation law of the factor flow
    # the trajectory moved, and the Euclidean metric on X gives a different flow
    assert np.abs(sx.y[:, -1] - sx.y[:, 0]).max() > 1e-2
    if depth > 1:
        assert control > 1e-3, control


def _descent_gap(M, egrad, X0, W0, h, T):
    W, X = W0.copy(), X0.copy()
    for _ in range(int(round(T / h))):
        W = W - h * factor_gradient(W, egrad)
        X = M.retraction(X, -h * M.euclidean_to_riemannian_gradient(X, egrad(X)))
    return np.abs(M.from_balanced(W) - X).max()


@pytest.mark.parametrize("width, depth, seed", [(3, 3, 10), (2, 4, 12), (3, 2, 9)])
def test_discrete_methods_differ_by_order_h(width, depth, seed):
    M = ObservableQuotient(width, depth)
    egrad, rng = _problem(width, seed)
    X0, W0 = _start(M, rng)
    hs = [0.02, 0.01, 0.005]
    gaps = [_descent_gap(M, egrad, X0, W0, h, T=0.5) for h in hs]
    ratios = [gaps[i] / gaps[i + 1] for i in range(len(hs) - 1)]
    # O(h) over a fixed time: the gap roughly halves when h halves
    assert all(1.7 < r < 2.3 for r in ratios), (gaps, ratios)


@pytest.mark.parametrize("width, depth", [(3, 3), (2, 5)])
def test_factor_descent_leaves_balance_by_order_h_squared(width, depth):
    M = ObservableQuotient(width, depth)
    egrad, rng = _problem(width, 3 + depth)
    _, W0 = _start(M, rng)
    hs = [0.02, 0.01, 0.005]
    drifts = [imbalance(W0 - h * factor_gradient(W0, egrad)) for h in hs]
    ratios = [drifts[i] / drifts[i + 1] for i in range(len(hs) - 1)]
    assert all(3.7 < r < 4.3 for r in ratios), (drifts, ratios)
    assert drifts[0] > 1e-6  # the step does leave the balanced manifold
