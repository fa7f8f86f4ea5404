"""Tests of the balanced DLN manifold against independent computations.

References used here never go through the frame/sine-transform code of
``balanced.py``: dense constraint Jacobians and their null spaces (SVD), dense
least squares, literal products W_N .. W_{p+1} V_p W_{p-1} .. W_1, the literal
sum form of K, torch autodiff of a dense projection, and an ODE integration of
the geodesic equation of the constrained submanifold.
"""

from __future__ import annotations

import math

import numpy as np
import pymanopt
import pytest
import scipy.linalg
import torch
from pymanopt.optimizers import ConjugateGradient, SteepestDescent, TrustRegions
from scipy.integrate import solve_ivp

import thermanopt.function
from thermanopt.diagnostics import check_hessian, fit_slope
from thermanopt.manifolds import BalancedManifold, balance_residual
from thermanopt.manifolds._metric import metric_inner
from thermanopt.manifolds._svd import SVD
from thermanopt.testing.reference import (
    constraint_jacobian,
    dense_projection,
    tangent_space_dimension,
)

SMALL = [(1, 1), (1, 3), (2, 1), (2, 2), (3, 2), (3, 4), (4, 3), (4, 5), (2, 5)]


# ---------------------------------------------------------------- references


def literal_phi(W):
    X = W[0]
    for p in range(1, W.shape[0]):
        X = W[p] @ X
    return X


def literal_dphi(W, V):
    """sum_p W_N .. W_{p+1} V_p W_{p-1} .. W_1 (no frames, no SVD)."""
    N, d = W.shape[0], W.shape[1]
    out = np.zeros((d, d))
    for p in range(N):
        left = np.eye(d)
        for q in range(p + 1, N):
            left = W[q] @ left
        right = np.eye(d)
        for q in range(p):
            right = W[q] @ right
        out += left @ V[p] @ right
    return out


def dense_dphi(W):
    n = W.size
    cols = [literal_dphi(W, e.reshape(W.shape)).ravel() for e in np.eye(n)]
    return np.stack(cols, axis=1)


def literal_K(s, N):
    a = s ** (2.0 / N)
    return sum(np.outer(a ** (N - 1 - k), a**k) for k in range(N))


def operator_matrix(f, shape):
    n = int(np.prod(shape))
    return np.stack([np.asarray(f(e.reshape(shape))).ravel() for e in np.eye(n)], axis=1)


def null_space_projector(W):
    J = constraint_jacobian(W)
    if J.shape[0] == 0:
        return np.eye(W.size)
    Nb = scipy.linalg.null_space(J, rcond=1e-10)
    return Nb @ Nb.T


def skew_basis(d, n):
    out = []
    for p in range(n):
        for i in range(d):
            for j in range(i + 1, d):
                Om = np.zeros((n, d, d))
                Om[p, i, j], Om[p, j, i] = 1.0, -1.0
                out.append(Om)
    return out


def geodesic(W, V, t):
    """Geodesic of the constrained submanifold: W'' = J^T lam, J J^T lam = -2 h(W')."""
    shp, n = W.shape, W.size
    iu = np.triu_indices(shp[-1])

    def rhs(_, y):
        w, v = y[:n].reshape(shp), y[n:].reshape(shp)
        J = constraint_jacobian(w)
        c = balance_residual(v)[:, iu[0], iu[1]].ravel()
        lam = np.linalg.solve(J @ J.T, -2.0 * c)
        return np.concatenate([v.ravel(), J.T @ lam])

    y0 = np.concatenate([W.ravel(), V.ravel()])
    sol = solve_ivp(rhs, (0.0, t), y0, rtol=1e-13, atol=1e-15, method="DOP853")
    return sol.y[:n, -1].reshape(shp)


# ---------------------------------------------------------------- conformance


# float32 slope fits are seed-sensitive (cost rounding ~1e-6 against small quadratic
# coefficients); float32 cases use a seed that the fits resolve, float64 is robust
CONFORMANCE = [
    ("numpy", "float64", 3, 3, 0),
    ("numpy", "float64", 1, 3, 0),
    ("numpy", "float64", 2, 1, 0),
    ("numpy", "float32", 2, 3, 1),
    ("torch", "float64", 3, 2, 0),
    ("torch", "float64", 1, 2, 0),
    ("torch", "float32", 2, 2, 1),
    ("torch", "float32", 3, 1, 1),
]


@pytest.mark.parametrize("backend,dtype,d,N,seed", CONFORMANCE)
def test_conformance_kit(backend, dtype, d, N, seed):
    from thermanopt.testing import check_manifold

    M = BalancedManifold(d, N, backend=backend, dtype=dtype)
    r = check_manifold(M, generator=seed)
    assert r["projection_rank"] == M.dim


# ---------------------------------------------------------------- brute force


@pytest.mark.parametrize("d,N", SMALL)
def test_dimension_and_tangent_space_is_null_space(d, N):
    M = BalancedManifold(d, N)
    W = M.random_point(d * 10 + N)
    M.check_point(W)
    assert M.dim == d * d + (N - 1) * d * (d - 1) // 2
    assert tangent_space_dimension(W) == M.dim
    P = operator_matrix(lambda E: M.projection(W, E), W.shape)
    Pref = null_space_projector(W)
    np.testing.assert_allclose(P, Pref, atol=1e-10)
    assert abs(np.trace(P) - M.dim) < 1e-9


@pytest.mark.parametrize("d,N", SMALL)
def test_projection_equals_dense_least_squares(d, N):
    M = BalancedManifold(d, N)
    W = M.random_point(1)
    E = np.random.default_rng(2).standard_normal(W.shape)
    np.testing.assert_allclose(M.projection(W, E), dense_projection(W, E), atol=1e-10)


@pytest.mark.parametrize("N", [1, 2, 4])
@pytest.mark.parametrize(
    "s", [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0 + 1e-9], [1.0, 1.0, 1e-4], [1e2, 1.0, 1e-2]]
)
def test_projection_at_repeated_and_small_singular_values(N, s):
    """No 0/0 at coinciding singular values (W_p = I included); graceful when ill conditioned."""
    M = BalancedManifold(3, N)
    rng = np.random.default_rng(26)
    U = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    V = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    s = np.array(s)
    W = M.balanced_from(SVD(U, s, V))
    M.check_point(W)
    E = rng.standard_normal(W.shape)
    P = M.projection(W, E)
    assert np.isfinite(P).all()
    cond = s.max() / s.min()
    np.testing.assert_allclose(P, dense_projection(W, E), atol=1e-14 * cond * max(1, N))
    Z = rng.standard_normal((3, 3))
    L = M.horizontal_lift(W, Z)
    np.testing.assert_allclose(literal_dphi(W, L), Z, atol=1e-13 * cond)


@pytest.mark.parametrize("d,N", [(2, 2), (3, 3), (4, 5), (3, 5)])
def test_vertical_space_is_span_of_orbit_generators(d, N):
    M = BalancedManifold(d, N)
    W = M.random_point(3)
    gens = [M.vertical_vector(W, Om).ravel() for Om in skew_basis(d, N - 1)]
    G = np.stack(gens, axis=1)
    Qb, _ = np.linalg.qr(G)
    assert np.linalg.matrix_rank(G) == (N - 1) * d * (d - 1) // 2  # free action
    Pv = operator_matrix(lambda E: M.vertical_part(W, E), W.shape)
    np.testing.assert_allclose(Pv, Qb @ Qb.T, atol=1e-10)
    # orbit generators are tangent and in the kernel of dphi
    J = constraint_jacobian(W)
    assert np.abs(J @ G).max() < 1e-10
    assert np.abs(dense_dphi(W) @ G).max() < 1e-10


@pytest.mark.parametrize("d,N", [(2, 2), (3, 3), (4, 5), (1, 4)])
def test_orthogonal_splitting(d, N):
    """E = horizontal + vertical + normal, mutually orthogonal, normal = range J^T."""
    M = BalancedManifold(d, N)
    W = M.random_point(4)
    E = np.random.default_rng(5).standard_normal(W.shape)
    H, V, Nn = M.horizontal_part(W, E), M.vertical_part(W, E), M.normal_part(W, E)
    np.testing.assert_allclose(H + V + Nn, E, atol=1e-12)
    for a, b in [(H, V), (H, Nn), (V, Nn)]:
        assert abs(np.sum(a * b)) < 1e-12
    J = constraint_jacobian(W)
    if J.shape[0]:
        mu = np.linalg.lstsq(J.T, Nn.ravel(), rcond=None)[0]
        np.testing.assert_allclose(J.T @ mu, Nn.ravel(), atol=1e-12)
    # horizontal space = range of dphi^* (dimension d^2)
    D = dense_dphi(W)
    Ph = operator_matrix(lambda E: M.horizontal_part(W, E), W.shape)
    np.testing.assert_allclose(Ph, np.linalg.pinv(D) @ D, atol=1e-10)


@pytest.mark.parametrize("d,N", [(1, 1), (2, 1), (2, 2), (3, 3), (4, 5), (3, 5)])
def test_horizontal_lift_is_riemannian_submersion(d, N):
    M = BalancedManifold(d, N)
    W = M.random_point(6)
    Z = np.random.default_rng(7).standard_normal((d, d))
    L = M.horizontal_lift(W, Z)
    np.testing.assert_allclose(literal_dphi(W, L), Z, atol=1e-10)
    X = literal_phi(W)
    U, s, Vt = np.linalg.svd(X)
    gN = np.sum((U.T @ Z @ Vt.T) ** 2 / literal_K(s, N))
    assert abs(np.sum(L * L) - gN) < 1e-10 * max(1.0, gN)
    assert abs(np.sum(L * L) - float(metric_inner(X, Z, Z, N))) < 1e-10 * max(1.0, gN)
    # minimum-norm solution of dphi(V) = Z, tangent, orthogonal to the orbit
    np.testing.assert_allclose(L.ravel(), np.linalg.pinv(dense_dphi(W)) @ Z.ravel(), atol=1e-10)
    np.testing.assert_allclose(M.projection(W, L), L, atol=1e-10)
    np.testing.assert_allclose(M.end_to_end_differential(W, L), Z, atol=1e-10)


@pytest.mark.parametrize("d,N", [(2, 3), (3, 4), (1, 2)])
def test_frames_balanced_from_and_orbit_action(d, N):
    M = BalancedManifold(d, N)
    W = M.random_point(8)
    Q = M.frames(W)
    eye = np.eye(d)
    for q in Q:
        np.testing.assert_allclose(q.T @ q, eye, atol=1e-12)
    X = literal_phi(W)
    s = np.linalg.svd(X, compute_uv=False)
    lam = s ** (1.0 / N)
    for p in range(N):
        np.testing.assert_allclose(W[p], Q[p + 1] @ np.diag(lam) @ Q[p].T, atol=1e-12)
    np.testing.assert_allclose(M.balanced_from(SVD(Q[-1], s, Q[0]), Q[1:-1]), W, atol=1e-12)
    Wb = M.balanced_from(X)
    M.check_point(Wb)
    np.testing.assert_allclose(literal_phi(Wb), X, atol=1e-12)
    # orbit action: keeps phi and balance, moves the frames
    rng = np.random.default_rng(9)
    R = np.stack([np.linalg.qr(rng.standard_normal((d, d)))[0] for _ in range(N - 1)])
    W2 = M.orbit_action(W, R)
    M.check_point(W2)
    np.testing.assert_allclose(literal_phi(W2), X, atol=1e-12)
    np.testing.assert_allclose(M.frames(W2)[1:-1], R @ Q[1:-1], atol=1e-10)
    # derivative of the action along skew generators = vertical_vector
    Om = np.stack([(lambda a: a - a.T)(rng.standard_normal((d, d))) for _ in range(N - 1)])
    t = 1e-6
    Rt = scipy.linalg.expm(t * Om) if N > 1 else Om
    fd = (M.orbit_action(W, Rt) - M.orbit_action(W, scipy.linalg.expm(-t * Om))) / (2 * t)
    np.testing.assert_allclose(fd, M.vertical_vector(W, Om), atol=1e-8)


# ---------------------------------------------------------------- Hessian


def _dense_projection_torch(W, E):
    N, d = W.shape[0], W.shape[1]
    n = N * d * d
    basis = torch.eye(n, dtype=W.dtype).reshape(n, N, d, d)
    a = basis[:, 1:].mT @ W[1:]
    b = basis[:, :-1] @ W[:-1].mT
    Jfull = a + a.mT - b - b.mT
    iu = torch.triu_indices(d, d)
    Jm = Jfull[:, :, iu[0], iu[1]].permute(1, 2, 0).reshape(-1, n)
    e = E.reshape(-1)
    mu = torch.linalg.solve(Jm @ Jm.T, Jm @ e)
    return (e - Jm.T @ mu).reshape(E.shape)


@pytest.mark.parametrize("d,N", [(2, 2), (3, 3), (2, 5), (3, 1)])
def test_riemannian_hessian_against_autodiff_of_projection(d, N):
    """rhess = P(ehess + D_u[P](egrad)) with D_u P by torch forward-mode AD (pymanopt's recipe)."""
    M = BalancedManifold(d, N, backend="torch")
    W = M.random_point(10)
    g = torch.Generator().manual_seed(11)
    G = torch.randn(W.shape, generator=g, dtype=W.dtype)
    H = torch.randn(W.shape, generator=g, dtype=W.dtype)
    u = M.random_tangent_vector(W, 12)
    got = M.euclidean_to_riemannian_hessian(W, G, H, u)
    if N > 1:
        _, dP = torch.func.jvp(lambda w: _dense_projection_torch(w, G), (W,), (u,))
        ref = _dense_projection_torch(W, H + dP)
    else:
        ref = H
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
    # the same through autodiff of the manifold's own projection
    _, dP2 = torch.func.jvp(lambda w: M.projection(w, G), (W,), (u,))
    torch.testing.assert_close(got, M.projection(W, H + dP2), atol=1e-10, rtol=0)
    # Pymanopt's RiemannianSubmanifold split: P(ehess) + weingarten(u, normal part of egrad)
    split = M.projection(W, H) + M.weingarten(W, u, G - M.projection(W, G))
    torch.testing.assert_close(got, split, atol=1e-10, rtol=0)


@pytest.mark.parametrize("d,N", [(2, 3), (3, 2)])
def test_hessian_check_away_from_critical_points(d, N):
    M = BalancedManifold(d, N)
    rng = np.random.default_rng(13)
    C = rng.standard_normal((d, d))

    @pymanopt.function.autograd(M)
    def cost(W):
        import autograd.numpy as anp

        X = W[0]
        for p in range(1, N):
            X = W[p] @ X
        return anp.sum(anp.sin(X) * C) + 0.1 * anp.sum(W**4)

    problem = pymanopt.Problem(M, cost)
    W = M.random_point(14)
    res = check_hessian(problem, W, retraction=M.retraction_second_order, generator=15)
    assert res.ok, res.slope
    assert res.extra["symmetry_error"] < 1e-10
    # along the first-order chart retraction the same check only reaches slope 2
    res1 = check_hessian(
        problem, W, retraction=M.retraction_first_order, generator=15, expected_slope=2
    )
    assert abs(res1.slope - 2.0) < 0.15


# ---------------------------------------------------------------- retractions


@pytest.mark.parametrize("d,N", [(2, 2), (3, 4)])
def test_retraction_orders_against_geodesic(d, N):
    M = BalancedManifold(d, N)
    W = M.random_point(16)
    V = M.random_tangent_vector(W, 17)
    ts = np.logspace(-2.5, -0.7, 6)
    e1, e2 = [], []
    for t in ts:
        g = geodesic(W, V, t)
        e1.append(np.linalg.norm(M.retraction_first_order(W, t * V) - g))
        e2.append(np.linalg.norm(M.retraction(W, t * V) - g))
    s1 = np.polyfit(np.log(ts), np.log(e1), 1)[0]
    s2 = np.polyfit(np.log(ts), np.log(e2), 1)[0]
    assert abs(s1 - 2.0) < 0.15, s1
    assert abs(s2 - 3.0) < 0.15, s2


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("d,N", [(3, 3), (2, 1), (1, 4)])
def test_retractions_stay_on_manifold_and_component(backend, d, N):
    M = BalancedManifold(d, N, backend=backend)
    signs = [(-1) ** p for p in range(N)]
    W = M.random_point(18, component=signs)
    xp_det = torch.linalg.det if backend == "torch" else np.linalg.det
    assert [int(np.sign(float(x))) for x in xp_det(W)] == signs
    V = M.random_tangent_vector(W, 19)
    for retr in (M.retraction, M.retraction_first_order):
        assert float(abs(retr(W, 0 * V) - W).max()) < 1e-12
        for t in (1e-3, 0.3, 1.0, 3.0):  # large steps: reflected at the rank-deficient set
            R = retr(W, t * V)
            M.check_point(R)
            assert [int(np.sign(float(x))) for x in xp_det(R)] == signs
        # first-order: (R(tV) - W)/t -> V
        t = 1e-6
        fd = (retr(W, t * V) - retr(W, -t * V)) / (2 * t)
        assert float(abs(fd - V).max()) < 1e-7


def test_second_order_retraction_is_balanced_and_its_correction_normal():
    """R(W, V) is exactly balanced; R - W - V is normal at W up to O(|V|^3) (second order)."""
    M = BalancedManifold(4, 4)
    W = M.random_point(20)
    V0 = M.random_tangent_vector(W, 21)
    tangential, normal = [], []
    for t in (0.2, 0.1, 0.05):
        R = M.retraction(W, t * V0)
        r = balance_residual(R)
        assert np.abs(r).max() / np.max(np.sum(R * R, axis=(1, 2))) < 1e-12
        C = R - W - t * V0
        tangential.append(np.linalg.norm(M.projection(W, C)))
        normal.append(np.linalg.norm(C - M.projection(W, C)))
    ts = np.log([0.2, 0.1, 0.05])
    assert abs(np.polyfit(ts, np.log(normal), 1)[0] - 2.0) < 0.1
    assert abs(np.polyfit(ts, np.log(tangential), 1)[0] - 3.0) < 0.15


def test_random_point_components():
    M = BalancedManifold(3, 2)
    for c in (+1, -1):
        W = M.random_point(22, component=c)
        assert np.sign(np.linalg.det(literal_phi(W))) == c
    a, b = M.random_point(1), M.random_point(2)
    assert np.abs(a - b).max() > 1e-3
    assert abs(M.norm(a, M.random_tangent_vector(a, 3)) - 1) < 1e-12
    with pytest.raises(ValueError, match="component"):
        M.random_point(0, component=2)
    with pytest.raises(ValueError, match="component"):
        M.random_point(0, component=[1, 1, 1])


# ---------------------------------------------------------------- solvers


def _targets(M, d):
    rng = np.random.default_rng(23)
    A = np.eye(d) + 0.3 * rng.standard_normal((d, d))
    Xs = literal_phi(M.random_point(24, component=+1))
    return A, Xs @ A


OPTIMIZERS = [
    lambda: SteepestDescent(max_iterations=3000, min_gradient_norm=1e-8, verbosity=0),
    lambda: ConjugateGradient(max_iterations=3000, min_gradient_norm=1e-8, verbosity=0),
    lambda: TrustRegions(max_iterations=100, min_gradient_norm=1e-8, verbosity=0),
]


@pytest.mark.parametrize("make", OPTIMIZERS, ids=["SD", "CG", "TR"])
def test_pymanopt_solvers_autograd(make):
    import autograd.numpy as anp

    d, N = 3, 3
    M = BalancedManifold(d, N)
    A, B = _targets(M, d)

    @pymanopt.function.autograd(M)
    def cost(W):
        X = W[0]
        for p in range(1, N):
            X = W[p] @ X
        return 0.5 * anp.sum((X @ A - B) ** 2)

    res = make().run(pymanopt.Problem(M, cost), initial_point=M.random_point(25, component=+1))
    assert res.gradient_norm < 1e-8, res.stopping_criterion
    assert res.cost < 1e-14
    M.check_point(res.point)


@pytest.mark.parametrize("make", OPTIMIZERS, ids=["SD", "CG", "TR"])
def test_pymanopt_solvers_torch(make):
    d, N = 3, 3
    M = BalancedManifold(d, N, backend="torch")
    A, B = (torch.as_tensor(a) for a in _targets(BalancedManifold(d, N), d))

    @thermanopt.function.torch(M)
    def cost(W):
        X = W[0]
        for p in range(1, N):
            X = W[p] @ X
        return 0.5 * torch.sum((X @ A - B) ** 2)

    res = make().run(pymanopt.Problem(M, cost), initial_point=M.random_point(25, component=+1))
    assert isinstance(res.point, torch.Tensor)
    assert res.gradient_norm < 1e-8, res.stopping_criterion
    M.check_point(res.point)


def test_trust_regions_superlinear():
    """Distance to the fibre over the target shrinks superlinearly along TR iterates."""
    import autograd.numpy as anp

    d, N = 3, 3
    M = BalancedManifold(d, N)
    A, B = _targets(M, d)

    @pymanopt.function.autograd(M)
    def cost(W):
        X = W[0]
        for p in range(1, N):
            X = W[p] @ X
        return 0.5 * anp.sum((X @ A - B) ** 2)

    problem = pymanopt.Problem(M, cost)
    x0 = M.random_point(25, component=+1)
    g = []
    for k in range(1, 15):  # TR is deterministic: rerun with more iterations
        opt = TrustRegions(min_gradient_norm=1e-13, verbosity=0, max_iterations=k)
        g.append(opt.run(problem, initial_point=x0).gradient_norm)
        if g[-1] < 1e-11:
            break
    g = np.array(g)
    assert g[-1] < 1e-11, g
    tail = g[g < 1e-2]
    assert len(tail) >= 3, g
    rates = tail[1:] / tail[:-1]
    assert rates[-1] < 1e-2 and rates[-1] < rates[0], g  # ratios fall: superlinear


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_solve_and_geometry(dtype):
    d, N = 4, 4
    M = BalancedManifold(d, N, backend="torch", device="cuda", dtype=dtype)
    W = M.random_point(0)
    assert W.device.type == "cuda" and W.dtype == dtype
    E = torch.randn_like(W)
    P = M.projection(W, E)
    assert P.device.type == "cuda"
    Pref = dense_projection(W.double().cpu().numpy(), E.double().cpu().numpy())
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert float(abs(P.double().cpu().numpy() - Pref).max()) < tol
    for retr in (M.retraction, M.retraction_second_order):
        R = retr(W, 0.1 * M.random_tangent_vector(W, 1))
        assert R.device.type == "cuda"
        M.check_point(R)
    if dtype == torch.float64:
        A = torch.eye(d, dtype=dtype, device="cuda")
        B = M.end_to_end(M.random_point(5, component=+1))

        @thermanopt.function.torch(M)
        def cost(W):
            X = W[0]
            for p in range(1, N):
                X = W[p] @ X
            return 0.5 * torch.sum((X @ A - B) ** 2)

        res = TrustRegions(min_gradient_norm=1e-8, verbosity=0).run(
            pymanopt.Problem(M, cost), initial_point=M.random_point(6, component=+1)
        )
        assert res.gradient_norm < 1e-8 and res.point.device.type == "cuda"


# ---------------------------------------------------------------- bad input


def test_bad_inputs():
    M = BalancedManifold(3, 3)
    W = M.random_point(0)
    with pytest.raises(ValueError, match="shape"):
        M.check_point(W[:2])
    bad = W.copy()
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.check_point(bad)
    with pytest.raises(ValueError, match="not balanced"):
        M.check_point(W + 1e-3 * np.random.default_rng(1).standard_normal(W.shape))
    Z = np.zeros((3, 3, 3))
    with pytest.raises(ValueError, match="rank deficient"):
        M.check_point(Z)
    s = np.array([1.0, 1.0, 1e-30])
    Wr = M.balanced_from(SVD(np.eye(3), s, np.eye(3)))
    with pytest.raises(ValueError, match="rank deficient"):
        M.check_point(Wr)
    with pytest.raises(ValueError, match="shape"):
        M.check_point([W[0], W[1], W[2]])  # a list of layers is not a point
    with pytest.raises(ValueError, match="mixed"):
        M.projection(W, torch.as_tensor(W))
    with pytest.raises(ValueError, match="dtype"):
        M.projection(W, W.astype(np.float32))
    with pytest.raises(ValueError, match="dtype"):
        M.check_point(np.ones((3, 3, 3), dtype=int))
    with pytest.raises(ValueError, match="width"):
        BalancedManifold(0, 2)
    with pytest.raises(ValueError, match="depth"):
        BalancedManifold(2, 0)
    assert not M.is_on_manifold(W[:2]) and M.is_on_manifold(W)


def test_balance_tolerance_scales_with_dtype_and_scale():
    M = BalancedManifold(3, 3)
    W = M.random_point(0)
    M.check_point(1e6 * W)
    M.check_point(1e-6 * W)
    M.check_point(W.astype(np.float32))
    Mt = BalancedManifold(3, 3, backend="torch", dtype="float32")
    Mt.check_point(Mt.random_point(0))


def test_fit_slope_helper_sanity():
    # guard against a vacuous slope fit in the tests above
    ts = np.logspace(-3, 0, 20)
    assert abs(fit_slope(ts, ts**3, 1e-300)[0] - 3) < 1e-9
    assert math.isfinite(fit_slope(ts, ts**2, 1e-300)[0])


# ---------------------------------------------------------------- the sampler's kernels


def reference_aligned_reprojection(W, V):
    """The aligned reprojection of the module doc of ``_frames``, literally (NumPy, one point).

    SVD of X' = phi(W + V) (reflected on a sign change of det), frames Q_p = polar by
    scipy.linalg.polar, flipped to keep sign det W_p, then one Gauss-Newton step along the
    fibre: the vertical part of Y - W~ is a dense least-squares fit by the orbit generators
    Om_p W~_p - W~_p Om_{p-1}, and the frames move by Q_p <- cay(Om_p) Q_p.
    """
    N, d = W.shape[0], W.shape[1]
    signs = [np.sign(np.linalg.det(Wp)) for Wp in W]
    Y = W + V
    U, s, Vt = np.linalg.svd(literal_phi(Y))
    Vm = Vt.T.copy()
    if np.sign(np.linalg.det(U) * np.linalg.det(Vm)) != np.prod(signs):
        Vm[:, -1] *= -1
    lam = s ** (1.0 / N)
    Q = [Vm]
    for p in range(N - 1):
        P = scipy.linalg.polar(Y[p] @ Q[-1] / lam)[0]
        if np.sign(np.linalg.det(P)) != signs[p] * np.sign(np.linalg.det(Q[-1])):
            P[:, -1] *= -1
        Q.append(P)
    Q.append(U)

    def point(Q):
        return np.stack([Q[p + 1] @ np.diag(lam) @ Q[p].T for p in range(N)])

    Wt = point(Q)
    basis = skew_basis(d, N - 1)
    if basis:
        pad = np.zeros((1, d, d))
        gens = []
        for Om in basis:
            Op = np.concatenate([pad, Om, pad])
            gens.append((Op[1:] @ Wt - Wt @ Op[:-1]).ravel())
        c = np.linalg.lstsq(np.stack(gens, axis=1), (Y - Wt).ravel(), rcond=None)[0]
        Om = sum(ci * b for ci, b in zip(c, basis))
        eye = np.eye(d)
        for p in range(N - 1):
            Q[p + 1] = np.linalg.solve(eye - 0.5 * Om[p], eye + 0.5 * Om[p]) @ Q[p + 1]
    return point(Q)


@pytest.mark.parametrize("d,N", [(2, 2), (3, 3), (4, 2), (3, 4), (2, 1)])
def test_retraction_equals_literal_aligned_reprojection(d, N):
    """Small steps (Newton-Schulz polar factors), large ones (their SVD fallback) and a step
    that changes sign det X' (reflection): the kernel is the maths of the module doc."""
    M = BalancedManifold(d, N)
    for seed, t in [(0, 1e-3), (1, 0.05), (2, 0.6), (3, 2.5)]:
        W = M.random_point(seed)
        V = M.random_tangent_vector(W, seed + 10) * t
        got = M.retraction(W, V)
        want = reference_aligned_reprojection(W, V)
        assert np.abs(got - want).max() < 1e-10 * max(1.0, np.abs(want).max()), (seed, t)
    W = M.random_point(5)
    V = -1.5 * M.projection(W, W)  # phi(W + V) has the opposite determinant sign for odd N
    got, want = M.retraction(W, V), reference_aligned_reprojection(W, V)
    assert np.abs(got - want).max() < 1e-10 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_polar_factor_against_scipy_on_both_paths(dtype):
    """Near-orthogonal entries (Newton-Schulz), far or ill-conditioned ones and a NaN entry
    (the SVD fallback) in one batch: each is U V^T of its own SVD to rounding."""
    from thermanopt.manifolds._frames import polar_factor

    rng = np.random.default_rng(0)
    d = 5
    Q = np.stack([scipy.linalg.qr(rng.standard_normal((d, d)))[0] for _ in range(6)])
    H = [np.eye(d) + 0.02 * (lambda a: a + a.T)(rng.standard_normal((d, d))) for _ in range(3)]
    H += [np.diag([3.0, 1.0, 1.0, 1.0, 0.5]), np.diag([1.0, 1.0, 1.0, 1.0, 1e-3])]
    A = np.concatenate([Q[:5] @ np.stack(H), np.full((1, d, d), np.nan)])
    out = polar_factor(torch.as_tensor(A, dtype=getattr(torch, dtype))).double().numpy()
    tol = 50 * d * float(np.finfo(dtype).eps)
    sensitivity = [1, 1, 1, 2, 1e3]  # 1 / min_ij (s_i + s_j) / 2 of the polar factor
    for a, q, c in zip(A[:5], out[:5], sensitivity):
        a32 = a.astype(dtype).astype(np.float64)  # the input as the kernel sees it
        assert np.abs(q - scipy.linalg.polar(a32)[0]).max() < c * tol
    assert np.isnan(out[5]).all()


def test_retraction_with_frames_returns_the_frames_and_the_regular_mask():
    """Q and s of the result rebuild it literally, phi of it has singular values s, the
    projection with carried frames equals the dense projection, and a step onto the
    rank-deficient set is masked (NaN point, ok False) instead of raising."""
    d, N = 3, 3
    M = BalancedManifold(d, N, backend="torch")
    W = torch.stack([M.random_point(i) for i in range(3)])
    xi = torch.randn(W.shape, generator=torch.Generator().manual_seed(1), dtype=W.dtype)
    V = M.projection(W, 0.3 * xi)
    V[2] = -W[2]  # X' = 0
    ok, R, Q, s = M.retraction_with_frames(W, V)
    assert ok.tolist() == [True, True, False] and torch.isnan(R[2]).all()
    with M.unchecked():
        assert torch.allclose(R[:2], M.retraction(W, V)[:2], rtol=0, atol=0)
    for i in range(2):
        Rn, Qn, sn = R[i].numpy(), Q[i].numpy(), s[i].numpy()
        lam = sn ** (1.0 / N)
        literal = np.stack([Qn[p + 1] @ np.diag(lam) @ Qn[p].T for p in range(N)])
        assert np.abs(literal - Rn).max() < 1e-12
        assert np.abs(np.linalg.svd(literal_phi(Rn), compute_uv=False) - sn).max() < 1e-12
        E = np.random.default_rng(i).standard_normal(Rn.shape)
        carried = M.projection(R[i], torch.as_tensor(E), frames=(Q[i], s[i])).numpy()
        want = dense_projection(Rn, E)
        assert np.abs(carried - want).max() < 1e-10
    Qf, sf = M.frame_data(R[:2])
    assert torch.allclose(sf, s[:2], rtol=1e-12, atol=0)
    assert M.layer_signs(R[:2]).tolist() == M.layer_signs(W[:2]).tolist()


def test_sampler_kernels_make_no_host_synchronisation(monkeypatch):
    """Projection with carried frames and the retraction kernel (also through the unchecked
    ``retraction``, rank-deficient entries included) never turn a tensor into a number."""
    M = BalancedManifold(4, 3, backend="torch", validate=False)
    W = torch.stack([M.random_point(i) for i in range(4)])
    E = torch.randn(W.shape, generator=torch.Generator().manual_seed(0), dtype=W.dtype)
    frames, signs = M.frame_data(W), M.layer_signs(W)

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation in a sampler kernel")

    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    V = M.projection(W, E, frames=frames)
    V = torch.cat([V[:3], -W[3:]])  # the last step lands on X' = 0
    ok, R, Q, s = M.retraction_with_frames(W, V, signs)
    with M.unchecked():
        R2 = M.retraction(W, V)
    monkeypatch.undo()
    assert ok.tolist() == [True, True, True, False]
    assert torch.isnan(R2[3]).all() and torch.isfinite(R2[:3]).all()


def test_projection_with_frames_rejects_bad_frames():
    M = BalancedManifold(3, 2, backend="torch")
    W = M.random_point(0)
    Q, s = M.frame_data(W)
    E = torch.ones_like(W)
    with pytest.raises(ValueError, match="pair"):
        M.projection(W, E, frames=Q)
    with pytest.raises(ValueError, match="frames Q has shape"):
        M.projection(W, E, frames=(Q[1:], s))
    with pytest.raises(ValueError, match="frames s has shape"):
        M.projection(W, E, frames=(Q, s[None]))
    with pytest.raises(ValueError, match="dtype"):
        M.projection(W, E, frames=(Q.float(), s))
