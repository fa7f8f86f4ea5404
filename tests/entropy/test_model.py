"""The one entropy model: S, grad S and Hess S on both DLN manifolds and their subclasses."""

from __future__ import annotations

import numpy as np
import pymanopt
import pytest

from thermanopt.entropy import EntropyModel, dln_entropy
from thermanopt.manifolds import BalancedManifold, ObservableQuotient, multiplier_K


def _A_brute(X, G, N):
    """A_{N,X}(G) = sum_p (X X^T)^{(N-p)/N} G (X^T X)^{(p-1)/N}, by eigen-decompositions."""

    def power(S, a):
        w, Q = np.linalg.eigh(S)
        return (Q * w**a) @ Q.T

    return sum(
        power(X @ X.T, (N - p) / N) @ G @ power(X.T @ X, (p - 1) / N) for p in range(1, N + 1)
    )


@pytest.mark.parametrize("make", [lambda: ObservableQuotient(3, 3), lambda: BalancedManifold(3, 3)])
def test_gradient_and_hvp_against_finite_differences(make):
    M = make()
    model = EntropyModel(M)
    x = M.random_point(0)
    rng = np.random.default_rng(1)
    Z = rng.standard_normal(x.shape)
    h = 1e-6
    fd = (model.value(x + h * Z) - model.value(x - h * Z)) / (2 * h)
    assert abs(np.sum(model.euclidean_gradient(x) * Z) - fd) < 1e-6 * max(1.0, abs(fd))
    V = rng.standard_normal(x.shape)
    fd_h = (model.euclidean_gradient(x + h * V) - model.euclidean_gradient(x - h * V)) / (2 * h)
    np.testing.assert_allclose(model.euclidean_hvp(x, V), fd_h, atol=1e-6)
    assert model.value(x) == pytest.approx(float(dln_entropy(M.end_to_end(x), 3)), rel=1e-14)


def test_riemannian_gradient_is_the_metric_raised_gradient():
    M = ObservableQuotient(3, 3)
    X = M.random_point(0)
    model = EntropyModel(M)
    np.testing.assert_allclose(
        model.riemannian_gradient(X), _A_brute(X, model.euclidean_gradient(X), 3), atol=1e-12
    )
    # on the balanced manifold grad S is horizontal and pushes forward to the quotient's
    B = BalancedManifold(3, 3)
    W = B.random_point(0)
    gW = EntropyModel(B).riemannian_gradient(W)
    np.testing.assert_allclose(B.vertical_part(W, gW), 0, atol=1e-12)
    Xw = B.end_to_end(W)
    np.testing.assert_allclose(
        B.end_to_end_differential(W, gW), model.riemannian_gradient(Xw), atol=1e-10
    )
    assert multiplier_K(np.array([2.0, 1.0]), 2)[0, 1] == pytest.approx(3.0)


def test_stand_in_matrix_manifold_needs_a_depth():
    E = pymanopt.manifolds.Euclidean(3, 3)
    with pytest.raises(TypeError, match="depth"):
        EntropyModel(E)
    X = ObservableQuotient(3, 2).random_point(0)
    assert EntropyModel(E, depth=2).value(X) == pytest.approx(
        EntropyModel(ObservableQuotient(3, 2)).value(X)
    )
