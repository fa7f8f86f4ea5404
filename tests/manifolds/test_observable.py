"""ObservableQuotient: (GL(d), g_N) against brute force, mpmath and Pymanopt solvers.

Independent references used here:
- A_{N,X} as the literal sum of N products of matrix powers (eigh of X X^T, X^T X);
- Christoffel symbols Gamma^i_jk = 1/2 g^il (d_j g_lk + d_k g_lj - d_l g_jk) from
  finite differences of the d^2 x d^2 metric matrix (inverse of the brute-force A);
- K_ij and its divided differences in mpmath (50 digits);
- geodesics by integrating x'' = -Gamma(x', x') with scipy's solve_ivp.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pymanopt
import pytest
import torch
from pymanopt.optimizers import ConjugateGradient, SteepestDescent, TrustRegions
from scipy.integrate import solve_ivp

from thermanopt.manifolds import _metric, balanced_from, end_to_end
from thermanopt.manifolds._svd import SVD
from thermanopt.manifolds.observable import ObservableQuotient

# --------------------------------------------------------------------------
# brute-force references (NumPy float64, no SVD route)


def _sym_power(S, alpha):
    w, Q = np.linalg.eigh(S)
    return (Q * np.clip(w, 0, None) ** alpha) @ Q.T


def A_brute(X, P, N):
    """Literal A_{N,X}(P) = sum_p (X X^T)^{(N-p)/N} P (X^T X)^{(p-1)/N}."""
    M, Mp = X @ X.T, X.T @ X
    return sum(
        _sym_power(M, (N - p) / N) @ P @ _sym_power(Mp, (p - 1) / N) for p in range(1, N + 1)
    )


def A_matrix(X, N):
    d = X.shape[0]
    cols = []
    for k in range(d * d):
        e = np.zeros(d * d)
        e[k] = 1.0
        cols.append(A_brute(X, e.reshape(d, d), N).ravel())
    return np.stack(cols, axis=1)


def metric_matrix(X, N):
    return np.linalg.inv(A_matrix(X, N))


def christoffel_fd(X, N, h=1e-4):
    """Gamma[i, j, k] from 4th-order central differences of the metric matrix."""
    d = X.shape[0]
    n = d * d
    dg = np.zeros((n, n, n))  # dg[k] = d g / d x_k
    for k in range(n):
        e = np.zeros(n)
        e[k] = 1.0
        E = e.reshape(d, d)
        gp1, gm1 = metric_matrix(X + h * E, N), metric_matrix(X - h * E, N)
        gp2, gm2 = metric_matrix(X + 2 * h * E, N), metric_matrix(X - 2 * h * E, N)
        dg[k] = (8 * (gp1 - gm1) - (gp2 - gm2)) / (12 * h)
    gi = np.linalg.inv(metric_matrix(X, N))
    # Gamma^i_jk = 1/2 g^il (d_j g_lk + d_k g_lj - d_l g_jk)
    return 0.5 * (
        np.einsum("il,jlk->ijk", gi, dg)
        + np.einsum("il,klj->ijk", gi, dg)
        - np.einsum("il,ljk->ijk", gi, dg)
    )


def random_gl(rng, d, cond=3.0):
    U, _ = np.linalg.qr(rng.standard_normal((d, d)))
    V, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s = np.exp(rng.uniform(-0.5, 0.5, d) * math.log(cond))
    return (U * s) @ V.T


def geodesic(M, X, Z, t):
    """x(t) for x(0) = X, x'(0) = Z, integrating x'' = -Gamma_x(x', x') (DOP853, rtol 1e-12)."""
    d = X.shape[0]

    def rhs(_, y):
        x, v = y[: d * d].reshape(d, d), y[d * d :].reshape(d, d)
        return np.concatenate([v.ravel(), -M.christoffel(x, v, v).ravel()])

    y0 = np.concatenate([X.ravel(), Z.ravel()])
    sol = solve_ivp(rhs, (0.0, t), y0, method="DOP853", rtol=1e-12, atol=1e-14)
    return sol.y[: d * d, -1].reshape(d, d)


# --------------------------------------------------------------------------
# conformance kit

CASES = [(3, 3), (1, 2), (2, 1), (4, 2)]


@pytest.mark.parametrize("width, depth", CASES)
def test_conformance_kit(backend_dtype, width, depth):
    from thermanopt.testing import check_manifold

    backend, dtype = backend_dtype
    M = ObservableQuotient(width, depth, backend=backend, dtype=dtype)
    # float32: seed 4 (at other seeds the float32 noise t * eps |x| of the cost at (4, 2)
    # or (3, 3) stays above the t^3 Hessian-model error at every step of the kit's fit)
    seed = 0 if dtype == "float64" else 4
    numbers = check_manifold(M, generator=seed)
    assert numbers["projection_rank"] == width * width == M.dim
    assert abs(numbers["hessian_slope_second_order"] - 3) < (0.15 if dtype == "float64" else 0.3)


@pytest.mark.parametrize("width, depth", [(3, 3), pytest.param(2, 4, marks=pytest.mark.slow)])
def test_conformance_second_order_against_geodesic(width, depth):
    from thermanopt.testing import check_manifold

    M = ObservableQuotient(width, depth)
    numbers = check_manifold(
        M,
        generator=2,
        retraction_order=2,
        second_order_reference=lambda x, v: geodesic(M, x, v, 1.0),
    )
    assert abs(numbers["retraction_second_order_slope"] - 3) < 0.15


# --------------------------------------------------------------------------
# the multiplier K and the metric


def _K_mp(s, N, i, j):
    a = [mpmath.mpf(x) ** (mpmath.mpf(2) / N) for x in s]
    return mpmath.fsum(a[i] ** (N - 1 - k) * a[j] ** k for k in range(N))


@pytest.mark.parametrize("depth", [2, 3, 5, 8])
@pytest.mark.parametrize(
    "s",
    [
        [2.0, 1.0 + 1e-9, 1.0],  # gap 1e-9
        [1.0, 1.0, 1.0],  # repeated
        [3e-6, 3e-6 * (1 - 1e-9), 1e-100],  # tiny (F_m ~ a^(m-N) must stay finite)
        [1e6, 1e-6, 1.0],
    ],
)
def test_K_and_divided_differences_against_mpmath(s, depth):
    mpmath.mp.dps = 50
    d = len(s)
    # pass the exact singular values (the SVD of a matrix would perturb a 1e-9 gap)
    f = SVD(np.eye(d), np.array(s), np.eye(d))
    sp = _metric.Spectral(f, depth)
    K = _metric.multiplier(f, depth)
    assert np.array_equal(K, sp.K)
    worst = 0.0
    for i in range(d):
        for j in range(d):
            ref = _K_mp(s, depth, i, j)
            worst = max(worst, float(abs((mpmath.mpf(K[i, j]) - ref) / ref)))
            a = [mpmath.mpf(x) ** (mpmath.mpf(2) / depth) for x in s]
            for m in range(1, depth):
                Fm = mpmath.fsum(a[i] ** (m - 1 - k) * a[j] ** k for k in range(m)) / ref
                worst = max(worst, float(abs((mpmath.mpf(sp.F[m][i, j]) - Fm) / Fm)))
    assert worst <= 1e-12


@pytest.mark.parametrize("width, depth", [(3, 1), (3, 2), (3, 3), (2, 5), (4, 4)])
def test_metric_against_literal_matrix_powers(width, depth):
    rng = np.random.default_rng(width + 10 * depth)
    X = random_gl(rng, width)
    P, Z1, Z2 = (rng.standard_normal((width, width)) for _ in range(3))
    M = ObservableQuotient(width, depth)
    ref = A_brute(X, P, depth)
    assert np.allclose(M.metric_inverse(X, P), ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    assert np.allclose(M.euclidean_to_riemannian_gradient(X, P), ref, atol=1e-12 * abs(ref).max())
    g = metric_matrix(X, depth)
    ip = Z1.ravel() @ g @ Z2.ravel()
    assert abs(M.inner_product(X, Z1, Z2) - ip) <= 1e-11 * abs(ip) + 1e-13
    assert abs(M.norm(X, Z1) - math.sqrt(Z1.ravel() @ g @ Z1.ravel())) <= 1e-12
    # metric lowers, metric_inverse raises
    assert np.allclose(M.metric(X, M.metric_inverse(X, P)), P, atol=1e-12)
    assert np.allclose((g @ Z1.ravel()).reshape(width, width), M.metric(X, Z1), atol=1e-10)


def test_metric_batched_over_leading_axes():
    rng = np.random.default_rng(0)
    M = ObservableQuotient(3, 4)
    X = np.stack([random_gl(rng, 3) for _ in range(5)]).reshape(5, 3, 3)
    Z = rng.standard_normal((2, 5, 3, 3))
    out = M.metric_inverse(X, Z)
    low = M.metric(X, Z)
    assert out.shape == Z.shape
    for a in range(2):
        for b in range(5):
            assert np.allclose(out[a, b], A_brute(X[b], Z[a, b], 4), atol=1e-12)
            assert np.allclose(A_brute(X[b], low[a, b], 4), Z[a, b], atol=1e-12)
    # the derivative maps are batched too
    G, H = rng.standard_normal((2, 5, 3, 3))
    gam = _metric.christoffel(X, Z[0], Z[1], 4)
    hes = _metric.riemannian_hessian(X, G, H, Z[0], 4)
    W = balanced_from(X, None, 4)
    assert W.shape == (5, 4, 3, 3)
    for b in range(5):
        assert np.allclose(gam[b], M.christoffel(X[b], Z[0, b], Z[1, b]), atol=1e-13)
        assert np.allclose(
            hes[b], M.euclidean_to_riemannian_hessian(X[b], G[b], H[b], Z[0, b]), atol=1e-13
        )
        assert np.allclose(W[b], M.to_balanced(X[b]), atol=1e-14)


def test_depth_one_is_euclidean():
    rng = np.random.default_rng(1)
    M = ObservableQuotient(3, 1)
    X = random_gl(rng, 3)
    Z1, Z2, G, H = (rng.standard_normal((3, 3)) for _ in range(4))
    assert abs(M.inner_product(X, Z1, Z2) - np.sum(Z1 * Z2)) < 1e-12
    assert np.allclose(M.euclidean_to_riemannian_gradient(X, G), G)
    assert np.allclose(M.euclidean_to_riemannian_hessian(X, G, H, Z1), H)
    assert np.allclose(M.christoffel(X, Z1, Z2), 0)


# --------------------------------------------------------------------------
# derivative of A, Christoffel map, Hessian


def _DA_fd(X, Z, P, N, h=1e-4):
    return (
        8 * (A_brute(X + h * Z, P, N) - A_brute(X - h * Z, P, N))
        - (A_brute(X + 2 * h * Z, P, N) - A_brute(X - 2 * h * Z, P, N))
    ) / (12 * h)


@pytest.mark.parametrize("kind", ["generic", "repeated", "near_repeated"])
@pytest.mark.parametrize("width, depth", [(2, 2), (3, 3), (3, 5)])
def test_DA_against_finite_differences(width, depth, kind):
    rng = np.random.default_rng(7 * width + depth)
    Q, _ = np.linalg.qr(rng.standard_normal((width, width)))
    if kind == "generic":
        X = random_gl(rng, width)
    elif kind == "repeated":
        X = 1.7 * Q  # all singular values equal
    else:
        R, _ = np.linalg.qr(rng.standard_normal((width, width)))
        s = 1.3 + 1e-9 * np.arange(width)
        X = (Q * s) @ R.T
    Z, P = rng.standard_normal((2, width, width))
    ref = _DA_fd(X, Z, P, depth)
    got = _metric.apply_DA(X, Z, P, depth)
    assert np.abs(got - ref).max() <= 1e-8 * np.abs(ref).max()


@pytest.mark.parametrize("width, depth", [(2, 2), (2, 5), (3, 3)])
def test_christoffel_against_finite_difference_metric(width, depth):
    rng = np.random.default_rng(width * depth)
    X = random_gl(rng, width)
    Gam = christoffel_fd(X, depth)
    M = ObservableQuotient(width, depth)
    Z1, Z2 = rng.standard_normal((2, width, width))
    ref = np.einsum("ijk,j,k->i", Gam, Z1.ravel(), Z2.ravel()).reshape(width, width)
    got = M.christoffel(X, Z1, Z2)
    assert np.abs(got - ref).max() <= 1e-7 * np.abs(ref).max()
    assert np.allclose(M.christoffel(X, Z1, Z2), M.christoffel(X, Z2, Z1), atol=1e-13)


def _cost_parts(rng, d):
    """f(X) = sum(Wt sin X) + |X B - C|^2 / 2: gradient and Hessian in closed form."""
    Wt, B, C = rng.standard_normal((3, d, d))

    def grad(X):
        return Wt * np.cos(X) + (X @ B - C) @ B.T

    def hess(X, Z):
        return -Wt * np.sin(X) * Z + Z @ B @ B.T

    return grad, hess


@pytest.mark.parametrize("width, depth", [(2, 2), (2, 3), (2, 5), (3, 2), (3, 3)])
def test_hessian_equals_coordinate_computation(width, depth):
    """Hess f[Z] = D(grad f)[Z] + Gamma(Z, grad f), all by brute force, at a non-critical X."""
    rng = np.random.default_rng(100 + 10 * width + depth)
    X = random_gl(rng, width)
    Z = rng.standard_normal((width, width))
    grad, hess = _cost_parts(rng, width)
    assert np.linalg.norm(grad(X)) > 0.1  # not a critical point

    def rgrad(Y):
        return A_brute(Y, grad(Y), depth)

    h = 1e-4
    Dgrad = (
        8 * (rgrad(X + h * Z) - rgrad(X - h * Z)) - (rgrad(X + 2 * h * Z) - rgrad(X - 2 * h * Z))
    ) / (12 * h)
    Gam = christoffel_fd(X, depth)
    ref = Dgrad + np.einsum("ijk,j,k->i", Gam, Z.ravel(), rgrad(X).ravel()).reshape(width, width)
    M = ObservableQuotient(width, depth)
    got = M.euclidean_to_riemannian_hessian(X, grad(X), hess(X, Z), Z)
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()


def test_hessian_is_self_adjoint_and_breaks_without_connection_term():
    rng = np.random.default_rng(5)
    M = ObservableQuotient(3, 4)
    X = random_gl(rng, 3)
    grad, hess = _cost_parts(rng, 3)
    Z1, Z2 = rng.standard_normal((2, 3, 3))
    H1 = M.euclidean_to_riemannian_hessian(X, grad(X), hess(X, Z1), Z1)
    H2 = M.euclidean_to_riemannian_hessian(X, grad(X), hess(X, Z2), Z2)
    a, b = M.inner_product(X, H1, Z2), M.inner_product(X, Z1, H2)
    assert abs(a - b) <= 1e-12 * max(abs(a), 1.0)

    # without the connection term, A(H[Z]) + DA_X[Z](G) is not self-adjoint for g_N
    def truncated(Z):
        return M.metric_inverse(X, hess(X, Z)) + _metric.apply_DA(X, Z, grad(X), 4)

    a, b = M.inner_product(X, truncated(Z1), Z2), M.inner_product(X, Z1, truncated(Z2))
    assert abs(a - b) > 1e-2 * abs(a)


# --------------------------------------------------------------------------
# retractions


@pytest.mark.parametrize("width, depth", [(2, 2), (3, 3), (3, 5)])
def test_retraction_orders_against_geodesic(width, depth):
    rng = np.random.default_rng(width + depth)
    M = ObservableQuotient(width, depth)
    X = random_gl(rng, width)
    Z = M.random_tangent_vector(X, generator=3)
    ts = np.array([0.08, 0.04, 0.02, 0.01])
    ref = [geodesic(M, X, Z, t) for t in ts]
    e2 = [np.linalg.norm(M.retraction_second_order(X, t * Z) - g) for t, g in zip(ts, ref)]
    e1 = [np.linalg.norm(M.retraction_first_order(X, t * Z) - g) for t, g in zip(ts, ref)]
    slope2 = np.polyfit(np.log(ts), np.log(e2), 1)[0]
    slope1 = np.polyfit(np.log(ts), np.log(e1), 1)[0]
    assert abs(slope2 - 3) < 0.15, slope2
    assert abs(slope1 - 2) < 0.15, slope1
    # the default retraction is the second-order one
    assert np.array_equal(M.retraction(X, 0.1 * Z), M.retraction_second_order(X, 0.1 * Z))


def _retraction_literal(X, Z, N):
    """phi(W + lift_W(Z)) as the literal product of N layers: W the balanced stack over X with
    identity inner frames, lift_W(Z)_p = Q_p ((U^T Z V / K) o M_p) Q_{p-1}^T with K the sum
    of N products and (M_p)_ij = lam_i^(N-p) lam_j^(p-1) (no sign reflection)."""
    U, s, Vt = np.linalg.svd(X)
    lam = s ** (1.0 / N)
    a = s ** (2.0 / N)
    K = sum(a[:, None] ** (N - 1 - k) * a[None, :] ** k for k in range(N))
    C = U.T @ Z @ Vt.T / K
    Q = [Vt.T] + [np.eye(len(s))] * (N - 1) + [U]
    out = np.eye(len(s))
    for p in range(1, N + 1):
        M = lam[:, None] ** (N - p) * lam[None, :] ** (p - 1)
        out = Q[p] @ (np.diag(lam) + C * M) @ Q[p - 1].T @ out
    return out


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6, 7, 8])
def test_retraction_is_the_literal_balanced_product(depth):
    rng = np.random.default_rng(depth)
    M = ObservableQuotient(4, depth)
    X = random_gl(rng, 4, cond=10.0)
    Z = rng.standard_normal((4, 4))
    for t in (1e-3, 0.3):
        ref = _retraction_literal(X, t * Z, depth)
        if np.sign(np.linalg.det(ref)) == np.sign(np.linalg.det(X)):
            assert np.allclose(M.retraction(X, t * Z), ref, rtol=0, atol=1e-12 * abs(ref).max())


def test_even_depth_never_changes_the_component():
    """det P = det(F)^N det(S)^(N-1): at even depth no step flips det X (no reflection)."""
    rng = np.random.default_rng(5)
    for depth in (2, 4):
        M = ObservableQuotient(3, depth)
        X = random_gl(rng, 3)
        for _ in range(20):
            Z = 20.0 * rng.standard_normal((3, 3))
            ref = _retraction_literal(X, Z, depth)
            assert np.sign(np.linalg.det(ref)) == np.sign(np.linalg.det(X))
            with M.unchecked():
                Y = M.retraction(X, Z)
            if np.all(np.isfinite(Y)):
                assert np.allclose(Y, ref, rtol=0, atol=1e-10 * abs(ref).max())


def test_regular_caches_the_svd_it_computes():
    """regular(Y) keeps the SVD of Y for the next method at Y; NaN entries stay NaN; an
    in-place change of Y is seen; a cached non-finite point still raises when checked."""
    M = ObservableQuotient(3, 3)
    rng = np.random.default_rng(0)
    Y = np.stack([random_gl(rng, 3), random_gl(rng, 3)])
    G = rng.standard_normal((2, 3, 3))
    assert M.regular(Y).tolist() == [True, True]
    fresh = ObservableQuotient(3, 3)
    for b in range(2):
        ref = A_brute(Y[b], G[b], 3)
        assert np.allclose(M.euclidean_to_riemannian_gradient(Y, G)[b], ref, atol=1e-12)
        assert np.allclose(fresh.euclidean_to_riemannian_gradient(Y[b], G[b]), ref, atol=1e-12)
    Y *= 2.0  # in place: the cache must not serve the old SVD
    assert np.allclose(M.euclidean_to_riemannian_gradient(Y, G)[1], A_brute(Y[1], G[1], 3))
    bad = Y.copy()
    bad[1, 0, 0] = np.inf
    assert M.regular(bad).tolist() == [True, False]
    with M.unchecked():
        out = M.euclidean_to_riemannian_gradient(bad, G)
    assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1]))
    assert np.allclose(out[0], A_brute(bad[0], G[0], 3), atol=1e-12)
    with pytest.raises(ValueError, match="NaN or infinite"):
        M.euclidean_to_riemannian_gradient(bad, G)
    sing = Y[0].copy()
    sing[2] = sing[0] + sing[1]
    assert not M.regular(sing)
    with pytest.raises(ValueError, match="rank deficient"):
        M.euclidean_to_riemannian_gradient(sing, G[0])


def test_multiplier_K_against_mpmath_over_the_whole_range():
    """K_ij = sum_k a_i^(N-1-k) a_j^k, a = s^(2/N), to 1e-13 relative: gaps 0 and 1e-12,
    1e-300 <= s <= 1e150 and the limit s_j = 0 (K = a_i^(N-1))."""
    from thermanopt.manifolds import multiplier_K

    mpmath.mp.dps = 50
    spectra = [
        [1.0, 1.0 - 1e-9, 1.0, 1.0 + 1e-12],
        [1e6, 1e-6, 1.0, 3.0],
        [1e-100, 3e-6, 1e-300, 2.0],
        [1e150, 1e-150, 0.0, 1.0],
    ]
    for N in range(1, 10):
        for s in spectra:
            with np.errstate(invalid="ignore"):  # K = 0/0 at s_i = s_j = 0 (skipped below)
                K = multiplier_K(np.array(s), N)
            for i in range(4):
                for j in range(4):
                    ref = _K_mp(s, N, i, j)
                    if ref == 0 or not 1e-300 < ref < 1e300:
                        continue  # outside the floating-point range
                    assert abs((mpmath.mpf(K[i, j]) - ref) / ref) < 1e-13, (N, s[i], s[j])


@pytest.mark.parametrize("component", [1, -1])
def test_retractions_stay_in_the_component(component):
    M = ObservableQuotient(3, 3)
    X = M.random_point(generator=4, component=component)
    assert np.sign(np.linalg.det(X)) == component
    for k in range(5):
        Z = 5.0 * M.random_tangent_vector(X, generator=k)  # large steps
        for retr in (M.retraction, M.retraction_first_order):
            Y = retr(X, Z)
            assert M.is_on_manifold(Y)
            assert np.sign(np.linalg.det(Y)) == component


def test_transport_and_projection_are_identity_copies():
    M = ObservableQuotient(3, 2)
    X, Y = M.random_point(0), M.random_point(1)
    Z = M.random_tangent_vector(X, 2)
    for out in (M.projection(X, Z), M.to_tangent_space(X, Z), M.transport(X, Y, Z)):
        assert np.array_equal(out, Z) and out is not Z
    assert np.array_equal(M.zero_vector(X), np.zeros((3, 3)))
    assert M.typical_dist == 3.0 and M.dim == 9


def test_no_closed_form_maps_raise():
    M = ObservableQuotient(2, 3)
    X, Y = M.random_point(0), M.random_point(1)
    with pytest.raises(NotImplementedError, match="no closed form"):
        M.dist(X, Y)
    with pytest.raises(NotImplementedError, match="no closed form"):
        M.exp(X, Y)
    with pytest.raises(NotImplementedError, match="no closed form"):
        M.log(X, Y)


# --------------------------------------------------------------------------
# points, lift, bad input, backends


def test_random_points_and_tangent_vectors():
    M = ObservableQuotient(4, 3)
    X = M.random_point(generator=0)
    assert np.array_equal(X, M.random_point(generator=0))
    assert not np.array_equal(X, M.random_point(generator=1))
    assert np.linalg.det(X) > 0 and np.linalg.det(M.random_point(0, component=-1)) < 0
    Z = M.random_tangent_vector(X, generator=5)
    assert abs(M.norm(X, Z) - 1) < 1e-12
    with pytest.raises(ValueError, match="component"):
        M.random_point(0, component=2)


@pytest.mark.parametrize("width, depth", [(3, 1), (1, 4), (3, 4)])
def test_lift_is_balanced_and_projects_back(width, depth):
    rng = np.random.default_rng(3)
    M = ObservableQuotient(width, depth)
    X = M.random_point(generator=rng)
    random_frames = np.array(
        [np.linalg.qr(rng.standard_normal((width, width)))[0] for _ in range(depth - 1)]
    ).reshape(depth - 1, width, width)
    for frames in (None, random_frames):
        W = M.to_balanced(X, frames)
        assert W.shape == (depth, width, width)
        assert np.allclose(M.from_balanced(W), X, atol=1e-13)
        assert np.allclose(end_to_end(W), X, atol=1e-13)
        for p in range(depth - 1):
            assert np.allclose(W[p + 1].T @ W[p + 1], W[p] @ W[p].T, atol=1e-13)
        if frames is not None and depth > 1:
            # the frames are recovered from W: Q_p = W_p Q_{p-1} diag(lam)^{-1}
            U, s, Vt = np.linalg.svd(X)
            lam = s ** (1 / depth)
            Q = Vt.T
            for p in range(depth - 1):
                Q = (W[p] @ Q) / lam
                assert np.allclose(Q, frames[p], atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        M.from_balanced(np.zeros((depth + 1, width, width)))


def test_bad_points_raise_value_error():
    M = ObservableQuotient(3, 2)
    X = M.random_point(0)
    with pytest.raises(ValueError, match="shape"):
        M.check_point(np.eye(4))
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.check_point(bad)
    sing = X.copy()
    sing[2] = sing[0] + sing[1]
    with pytest.raises(ValueError, match="singular"):
        M.check_point(sing)
    with pytest.raises(ValueError, match="singular"):
        M.check_point(np.zeros((3, 3)))
    assert not M.is_on_manifold(sing) and M.is_on_manifold(X)
    Z32 = np.ones((3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="dtype"):
        M.inner_product(X, Z32, Z32)
    with pytest.raises(ValueError, match="dtype"):
        M.euclidean_to_riemannian_gradient(X, Z32)
    with pytest.raises(ValueError, match="mixed"):
        M.euclidean_to_riemannian_gradient(X, torch.ones(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="depth"):
        ObservableQuotient(3, 0)
    with pytest.raises(ValueError, match="width"):
        ObservableQuotient(0, 2)


def test_torch_matches_numpy_and_keeps_dtype():
    Mn = ObservableQuotient(3, 3)
    X = Mn.random_point(0)
    rng = np.random.default_rng(0)
    Z, G, H = rng.standard_normal((3, 3, 3))
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
        Mt = ObservableQuotient(3, 3, backend="torch", dtype=dtype)
        Xt, Zt, Gt, Ht = (torch.tensor(a, dtype=dtype) for a in (X, Z, G, H))
        pairs = [
            (
                Mt.euclidean_to_riemannian_gradient(Xt, Gt),
                Mn.euclidean_to_riemannian_gradient(X, G),
            ),
            (
                Mt.euclidean_to_riemannian_hessian(Xt, Gt, Ht, Zt),
                Mn.euclidean_to_riemannian_hessian(X, G, H, Z),
            ),
            (Mt.retraction(Xt, 0.1 * Zt), Mn.retraction(X, 0.1 * Z)),
            (Mt.metric(Xt, Zt), Mn.metric(X, Z)),
            (Mt.to_balanced(Xt), Mn.to_balanced(X)),
        ]
        for a, b in pairs:
            assert isinstance(a, torch.Tensor) and a.dtype == dtype
            assert np.abs(a.numpy() - b).max() <= tol * max(np.abs(b).max(), 1)
        assert abs(Mt.inner_product(Xt, Zt, Gt) - Mn.inner_product(X, Z, G)) < 1e3 * tol
        Xr = Mt.random_point(0)
        assert Xr.dtype == dtype and Mt.is_on_manifold(Xr)


def test_cache_sees_in_place_changes():
    for backend in ("numpy", "torch"):
        M = ObservableQuotient(3, 3, backend=backend)
        X = M.random_point(0)
        Z = M.random_tangent_vector(X, 1)
        before = M.inner_product(X, Z, Z)
        X *= 2.0  # in place
        after = M.inner_product(X, Z, Z)
        fresh = ObservableQuotient(3, 3).inner_product(
            X.numpy() if backend == "torch" else X.copy(), np.asarray(Z), np.asarray(Z)
        )
        assert abs(after - fresh) < 1e-12 * fresh and abs(after - before) > 1e-3


# --------------------------------------------------------------------------
# Pymanopt solvers on a DLN regression problem


def _regression_problem(M, backend, device=None):
    """f(X) = |A X^T - B|^2 / 2 with B = A X*^T, X* in the det > 0 component."""
    Xs = ObservableQuotient(M.width, M.depth).random_point(generator=11, component=1)
    rng = np.random.default_rng(12)
    A = rng.standard_normal((4 * M.width, M.width))
    B = A @ Xs.T
    if backend == "numpy":
        import autograd.numpy as anp

        @pymanopt.function.autograd(M)
        def cost(X):
            return 0.5 * anp.sum((A @ X.T - B) ** 2)

        return pymanopt.Problem(M, cost), Xs, np.eye(M.width)

    from thermanopt.function import torch as torch_function

    At = torch.tensor(A, device=device)
    Bt = torch.tensor(B, device=device)

    @torch_function(M)
    def cost(X):
        return 0.5 * ((At @ X.T - Bt) ** 2).sum()

    return pymanopt.Problem(M, cost), Xs, torch.eye(M.width, dtype=torch.float64, device=device)


def _solve(opt, backend, width=3, depth=3, device=None):
    M = ObservableQuotient(width, depth, backend=backend, device=device)
    problem, Xs, X0 = _regression_problem(M, backend, device)
    result = opt.run(problem, initial_point=X0)
    Xf = result.point.cpu().numpy() if backend == "torch" else result.point
    return result, Xf, Xs


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: SteepestDescent(min_gradient_norm=1e-8, max_iterations=2000, verbosity=0),
        lambda: ConjugateGradient(min_gradient_norm=1e-8, max_iterations=2000, verbosity=0),
        lambda: TrustRegions(min_gradient_norm=1e-8, max_iterations=100, verbosity=0),
    ],
    ids=["SteepestDescent", "ConjugateGradient", "TrustRegions"],
)
def test_pymanopt_solvers_reach_gradient_norm_1e8(make, backend):
    result, Xf, Xs = _solve(make(), backend)
    assert result.gradient_norm <= 1e-8, result.stopping_criterion
    assert np.abs(Xf - Xs).max() < 1e-7


class _Recording(ObservableQuotient):
    """Records the g_N norm of every Riemannian gradient Pymanopt computes."""

    norms: list

    def euclidean_to_riemannian_gradient(self, point, euclidean_gradient):
        g = super().euclidean_to_riemannian_gradient(point, euclidean_gradient)
        self.norms.append(self.norm(point, g))
        return g


def test_trust_regions_converges_superlinearly():
    M = _Recording(3, 4)
    M.norms = []
    problem, Xs, X0 = _regression_problem(M, "numpy")
    result = TrustRegions(min_gradient_norm=1e-12, max_iterations=100, verbosity=0).run(
        problem, initial_point=X0
    )
    g = np.array(M.norms)
    assert g[-1] <= 1e-12 and np.abs(result.point - Xs).max() < 1e-10
    # once in the basin (|grad| < 1e-2) each accepted step gains far more than a constant
    # factor: ratios g_{k+1} / g_k fall towards 0 (linear convergence keeps them constant)
    # once in the basin each accepted step gains far more than a constant factor:
    # the ratios g_{k+1} / g_k fall towards 0 (linear convergence keeps them constant).
    # Steps that land on the rounding floor (~1e-15) are left out.
    tail = g[(g < 1) & (g > 1e-13)]
    ratios = tail[1:] / tail[:-1]
    assert len(ratios) >= 3, g
    assert np.all(np.diff(ratios) < 0) and ratios[-1] < 1e-3, ratios
    # quadratic: g_{k+1} <= C g_k^2 with a moderate C
    assert np.all(tail[1:] <= 10 * tail[:-1] ** 2), tail


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trust_regions_on_cuda():
    result, Xf, Xs = _solve(
        TrustRegions(min_gradient_norm=1e-8, max_iterations=100, verbosity=0),
        "torch",
        device="cuda",
    )
    assert result.point.device.type == "cuda"
    assert result.gradient_norm <= 1e-8
    assert np.abs(Xf - Xs).max() < 1e-7
