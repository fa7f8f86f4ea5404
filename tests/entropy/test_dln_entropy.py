"""Tests of the closed-form DLN entropy (thermanopt.entropy.dln) against independent computations.

- brute force: log of the volume of the O(d)^(N-1) orbit through a balanced point, from the
  Gram matrix of numerically built orbit generators (no K anywhere);
- vol(O(d)) by quasi-Monte Carlo integration of the exponential-map Jacobian;
- mpmath (50 digits) for values and gradients, with the sum form of K;
- finite differences for gradients, Hessian-vector products and concavity;
- torch autograd and HIPS autograd (Pymanopt's backend) through the entropy.
"""

from __future__ import annotations

import math

import autograd
import autograd.numpy as anp
import mpmath
import numpy as np
import pymanopt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

from thermanopt.entropy import (
    dln_entropy,
    dln_entropy_and_gradient,
    dln_entropy_gradient,
    dln_entropy_hvp,
    entropy_from_singular_values,
    entropy_gradient_from_singular_values,
    log_K,
    log_orthogonal_group_volume,
    orthogonal_group_volume,
)
from thermanopt.manifolds import _svd

# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def _orth(d: int, rng: np.random.Generator) -> np.ndarray:
    if d == 1:
        return np.array([[rng.choice([-1.0, 1.0])]])
    return ortho_group.rvs(d, random_state=rng)


def _matrix(s, rng, *, det_sign=1.0) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    d = s.size
    return _orth(d, rng) @ np.diag(s) @ _orth(d, rng).T


def _orbit_log_volume(s, depth: int, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """log vol of the O(d)^(N-1) orbit through a random balanced point over diag-SVD data s.

    W_p = Q_p diag(s^(1/N)) Q_{p-1}^T (Q_0 = V, Q_N = U, others random). The orbit map
    (R_1..R_{N-1}) -> (R_p W_p R_{p-1}^T) has differential Om -> (Om_p W_p - W_p Om_{p-1}); for
    the Frobenius-orthonormal basis (E_ij - E_ji)/sqrt 2 of each so(d) factor its Gram matrix G
    gives vol(orbit) = c_d^(N-1) sqrt(det G) (the action is free and isometric).
    Returns (log vol, X).
    """
    s = np.asarray(s, dtype=np.float64)
    d, N = s.size, depth
    Qs = [_orth(d, rng) for _ in range(N + 1)]  # Q_0 = V, Q_N = U
    lam = s ** (1.0 / N)
    W = [Qs[p] @ np.diag(lam) @ Qs[p - 1].T for p in range(1, N + 1)]  # W[p-1] = W_p
    X = np.linalg.multi_dot(W[::-1]) if N > 1 else W[0]
    basis = []
    for i in range(d):
        for j in range(i + 1, d):
            B = np.zeros((d, d))
            B[i, j], B[j, i] = 1 / math.sqrt(2), -1 / math.sqrt(2)
            basis.append(B)
    gens = []
    for p in range(1, N):  # group factor R_p acts on W_p (left) and W_{p+1} (right)
        for B in basis:
            T = np.zeros((N, d, d))
            T[p - 1] = B @ W[p - 1]
            T[p] = -W[p] @ B
            gens.append(T.ravel())
    if not gens:
        return (N - 1) * math.log(orthogonal_group_volume(d)), X
    A = np.array(gens)
    sign, logdet = np.linalg.slogdet(A @ A.T)
    assert sign > 0
    return (N - 1) * math.log(orthogonal_group_volume(d)) + 0.5 * logdet, X


def _mp_entropy(s, depth, dps=50):
    """(1/2) sum_{i<j} log K_ij with the exact sum form of K, in mpmath."""
    with mpmath.workdps(dps):
        a = [mpmath.mpf(float(v)) ** (mpmath.mpf(2) / depth) for v in s]
        out = mpmath.mpf(0)
        for i in range(len(a)):
            for j in range(i + 1, len(a)):
                K = mpmath.fsum(a[i] ** (depth - 1 - k) * a[j] ** k for k in range(depth))
                out += mpmath.log(K) / 2
        return out


def _mp_gradient(s, depth, dps=50):
    """dS/ds_i by mpmath differentiation of the sum form."""
    grads = []
    with mpmath.workdps(dps):
        s_mp = [mpmath.mpf(float(v)) for v in s]
        for i in range(len(s)):

            def f(t, i=i):
                ss = list(s_mp)
                ss[i] = t
                a = [v ** (mpmath.mpf(2) / depth) for v in ss]
                out = mpmath.mpf(0)
                for p in range(len(a)):
                    for q in range(p + 1, len(a)):
                        out += (
                            mpmath.log(
                                mpmath.fsum(
                                    a[p] ** (depth - 1 - k) * a[q] ** k for k in range(depth)
                                )
                            )
                            / 2
                        )
                return out

            grads.append(mpmath.diff(f, s_mp[i]))
    return grads


# ----------------------------------------------------------------------------------------
# brute-force orbit volume
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3, 4])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_entropy_matches_brute_force_orbit_volume(d, depth):
    rng = np.random.default_rng(100 * d + depth)
    spectra = [
        np.sort(rng.uniform(0.3, 3.0, d))[::-1],
        np.sort(rng.uniform(0.05, 5.0, d))[::-1],
        np.full(d, 1.7),  # all singular values coincide
    ]
    if d >= 3:
        spectra.append(np.array([2.0, 2.0] + [0.4] * (d - 2)))
    logvols, Xs = zip(*[_orbit_log_volume(s, depth, rng) for s in spectra])
    full = [dln_entropy(X, depth, reduced=False) for X in Xs]
    red = [dln_entropy(X, depth) for X in Xs]
    for lv, S in zip(logvols, full):
        assert isinstance(S, float)
        assert abs(S - lv) <= 1e-10 * max(1.0, abs(lv))
    for k in range(1, len(Xs)):
        assert abs((red[k] - red[0]) - (logvols[k] - logvols[0])) <= 1e-10


# ----------------------------------------------------------------------------------------
# vol(O(d))
# ----------------------------------------------------------------------------------------


def test_orthogonal_group_volume_known_values():
    assert orthogonal_group_volume(1) == pytest.approx(2.0, rel=1e-15)
    assert orthogonal_group_volume(2) == pytest.approx(4 * math.sqrt(2) * math.pi, rel=1e-14)
    assert orthogonal_group_volume(3) == pytest.approx(446.647, rel=1e-6)
    assert orthogonal_group_volume(4) == pytest.approx(24936.73, rel=1e-6)
    # SO(3) = RP^3 of radius 2 for the metric (1/2) tr; Frobenius scales volume by 2^(3/2)
    assert orthogonal_group_volume(3) == pytest.approx(2 * 8 * math.pi**2 * 2**1.5, rel=1e-14)
    assert math.exp(log_orthogonal_group_volume(7)) == pytest.approx(
        orthogonal_group_volume(7), rel=1e-12
    )
    assert math.isfinite(log_orthogonal_group_volume(200))


@pytest.mark.parametrize("d", [2, 3, 4])
def test_orthogonal_group_volume_by_quasi_monte_carlo(d):
    """vol(SO(d)) = int_{||Om||_2 < pi} sqrt(det Gram(d exp_Om)) dOm in Frobenius coordinates.

    The principal logarithm identifies SO(d) (up to a null set) with {Om skew, spectral norm
    < pi}. The differential of exp along the basis (E_ij - E_ji)/sqrt2 comes from the block
    exponential expm([[Om, B], [0, Om]]); the domain sits in the cube |theta_a| < sqrt2 pi.
    """
    from scipy.stats import qmc

    m = d * (d - 1) // 2
    basis = torch.zeros(m, d, d, dtype=torch.float64)
    k = 0
    for i in range(d):
        for j in range(i + 1, d):
            basis[k, i, j], basis[k, j, i] = 1 / math.sqrt(2), -1 / math.sqrt(2)
            k += 1
    n = 2**13
    half = math.sqrt(2) * math.pi
    theta = torch.as_tensor((qmc.Sobol(m, seed=d).random(n) * 2 - 1) * half, dtype=torch.float64)
    Om = torch.einsum("na,aij->nij", theta, basis)
    inside = torch.linalg.matrix_norm(Om, ord=2) < math.pi
    big = torch.zeros(n, m, 2 * d, 2 * d, dtype=torch.float64)
    big[:, :, :d, :d] = Om[:, None]
    big[:, :, d:, d:] = Om[:, None]
    big[:, :, :d, d:] = basis[None]
    dexp = torch.linalg.matrix_exp(big)[:, :, :d, d:].reshape(n, m, d * d)
    gram = dexp @ dexp.mT
    jac = torch.sqrt(torch.clamp(torch.linalg.det(gram), min=0.0)) * inside
    vol_so = float(jac.mean()) * (2 * half) ** m
    # quasi-Monte Carlo error ~0.5 % at this n
    assert 2 * vol_so == pytest.approx(orthogonal_group_volume(d), rel=2e-2)


# ----------------------------------------------------------------------------------------
# special cases and identities
# ----------------------------------------------------------------------------------------


def test_depth_one_is_zero_and_depth_two_closed_form():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3, 4, 4))
    assert np.all(dln_entropy(X, 1) == 0.0)
    assert np.allclose(dln_entropy(X, 1, reduced=False), 0.0)
    S2 = dln_entropy(X, 2)
    s = np.linalg.svd(X, compute_uv=False)
    ref = [
        0.5 * sum(math.log(sv[i] + sv[j]) for i in range(4) for j in range(i + 1, 4)) for sv in s
    ]
    np.testing.assert_allclose(S2, ref, rtol=1e-14)


def test_width_one():
    X = np.array([[-2.5]])
    for N in (1, 2, 5):
        assert dln_entropy(X, N) == 0.0
        assert dln_entropy(X, N, reduced=False) == pytest.approx((N - 1) * math.log(2.0))


@pytest.mark.parametrize("depth", [2, 3, 7])
def test_scaling_law(depth):
    rng = np.random.default_rng(depth)
    d = 4
    X = rng.standard_normal((d, d))
    for t in (1e-3, 0.37, 5.0, 1e4):
        lhs = dln_entropy(t * X, depth)
        rhs = dln_entropy(X, depth) + (d * (d - 1) / 2) * ((depth - 1) / depth) * math.log(t)
        assert lhs == pytest.approx(rhs, abs=1e-12 * max(1.0, abs(rhs)))


def test_infinite_depth_limit():
    """S_N - (N-1) log c_d - (d(d-1)/4) log N -> (1/2) sum_{i<j} log logmean(s_i^2, s_j^2)."""
    s = np.array([3.0, 1.2, 0.7, 0.2])
    d = s.size
    limit = 0.5 * sum(
        math.log((s[i] ** 2 - s[j] ** 2) / (math.log(s[i] ** 2) - math.log(s[j] ** 2)))
        for i in range(d)
        for j in range(i + 1, d)
    )
    X = _matrix(s, np.random.default_rng(0))

    def reduced_gap(N):
        full = dln_entropy(X, N, reduced=False)
        return full - (N - 1) * log_orthogonal_group_volume(d) - (d * (d - 1) / 4) * math.log(N)

    errs = [abs(reduced_gap(N) - limit) for N in (100, 200, 400, 800)]
    assert errs[-1] < 2e-3
    for e1, e2 in zip(errs, errs[1:]):
        assert 1.8 < e1 / e2 < 2.2  # O(1/N) convergence
    deep = entropy_from_singular_values(s, 10**7) - (d * (d - 1) / 4) * math.log(1e7)
    assert abs(deep - limit) < 1e-6


def _fd_hessian(f, s, rel=1e-4):
    d = s.size
    h = rel * s
    H = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            ei = np.zeros(d)
            ej = np.zeros(d)
            ei[i], ej[j] = h[i], h[j]
            H[i, j] = (f(s + ei + ej) - f(s + ei - ej) - f(s - ei + ej) + f(s - ei - ej)) / (
                4 * h[i] * h[j]
            )
    return H


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(2, 5),
    depth=st.integers(2, 8),
    logs=st.lists(st.floats(-2.5, 2.5), min_size=5, max_size=5),
)
def test_strict_concavity_in_singular_values(d, depth, logs):
    """The Hessian of S in s is negative definite (FD and exact), except d = 2, N = 2 (S depends
    on s_1 + s_2 only: concave, not strictly)."""
    s = np.exp(np.array(logs[:d]))
    S = lambda v: entropy_from_singular_values(v, depth)  # noqa: E731
    D = np.diag(s)
    H_fd = D @ _fd_hessian(S, s) @ D  # congruence keeps the signature, improves scaling
    X = np.diag(s)
    H_ex = np.array([np.diag(dln_entropy_hvp(X, np.diag(np.eye(d)[k]), depth)) for k in range(d)]).T
    np.testing.assert_allclose(D @ H_ex @ D, H_fd, atol=1e-6 * (1 + np.abs(H_fd).max()))
    top = np.linalg.eigvalsh(D @ H_ex @ D).max()
    if d == 2 and depth == 2:
        assert abs(top) < 1e-12
    else:
        assert top < -1e-8


# ----------------------------------------------------------------------------------------
# accuracy against mpmath
# ----------------------------------------------------------------------------------------

_SPECTRA = {
    "gap1e-3": [2.0, 1.0 + 1e-3, 1.0, 0.3],
    "gap1e-9": [2.0, 1.0 + 1e-9, 1.0, 0.3],
    "gap0": [2.0, 1.0, 1.0, 0.3],
    "all-equal": [1.5, 1.5, 1.5],
    "wide": list(np.logspace(6, -6, 7)),
    "wide-gap1e-9": [1e6, 1e3 * (1 + 1e-9), 1e3, 1.0, 1e-6 * (1 + 1e-9), 1e-6],
}


@pytest.mark.parametrize("name", list(_SPECTRA))
@pytest.mark.parametrize("depth", [2, 3, 5, 20])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_value_accuracy_against_mpmath(name, depth, backend):
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-5)):
        s_np = np.asarray(_SPECTRA[name], dtype=dtype)
        s = torch.as_tensor(s_np) if backend == "torch" else s_np
        S = entropy_from_singular_values(s, depth)
        if backend == "torch":
            assert S.dtype == getattr(torch, dtype)
        ref = _mp_entropy(s_np, depth)
        val = float(S)
        assert abs(val - float(ref)) <= tol * abs(float(ref)), (dtype, val, ref)


@pytest.mark.parametrize("name", ["gap1e-3", "gap1e-9", "gap0", "all-equal", "wide"])
@pytest.mark.parametrize("depth", [2, 3, 6])
def test_gradient_accuracy_against_mpmath(name, depth):
    s = np.asarray(_SPECTRA[name], dtype=np.float64)
    g = entropy_gradient_from_singular_values(s, depth)
    ref = np.array([float(v) for v in _mp_gradient(s, depth)])
    np.testing.assert_allclose(g, ref, rtol=1e-12, atol=0)
    g32 = entropy_gradient_from_singular_values(s.astype(np.float32), depth)
    assert g32.dtype == np.float32
    ref32 = np.array([float(v) for v in _mp_gradient(s.astype(np.float32), depth)])
    np.testing.assert_allclose(g32, ref32, rtol=2e-5, atol=0)


def test_log_K_is_the_shared_helper_and_pair_sum_agrees():
    assert log_K is _svd.log_K
    rng = np.random.default_rng(11)
    for N in (2, 3, 7):
        for s in (rng.uniform(0.1, 3, (5, 6)), np.array(_SPECTRA["wide-gap1e-9"])):
            lk = log_K(s, N)
            ref = 0.5 * np.sum(np.triu(lk, 1), axis=(-2, -1))
            np.testing.assert_allclose(entropy_from_singular_values(s, N), ref, rtol=1e-14)


# ----------------------------------------------------------------------------------------
# rank deficiency and errors
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_one_zero_singular_value_is_the_limit(depth):
    s = np.array([2.0, 0.7, 0.0])
    S0 = entropy_from_singular_values(s, depth)
    assert math.isfinite(S0)
    assert S0 == pytest.approx(float(_mp_entropy([2.0, 0.7, 1e-300], depth)), rel=1e-12)
    # continuity from the interior: S(s_3) - S(0) = O(s_3^(2/N))
    assert entropy_from_singular_values(np.array([2.0, 0.7, 1e-30]), depth) == pytest.approx(
        S0, abs=1e-10
    )
    X = np.diag(s)
    assert dln_entropy(X, depth) == pytest.approx(S0, rel=1e-14)
    with pytest.raises(ValueError, match="singular"):
        dln_entropy_gradient(X, depth)


def test_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="square"):
        dln_entropy(rng.standard_normal((3, 4)), 2)
    with pytest.raises(ValueError, match="square"):
        dln_entropy(np.ones(3), 2)
    X = rng.standard_normal((3, 3))
    X[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dln_entropy(X, 2)
    with pytest.raises(ValueError, match="NaN"):
        dln_entropy(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), 2)
    with pytest.raises(ValueError, match="NaN"):  # inside a HIPS-autograd trace
        autograd.grad(lambda Y: dln_entropy(Y, 2))(X)
    R = np.diag([1.0, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="rank-deficient"):
        dln_entropy(R, 3)
    Rn = _matrix([1.0, 1.0, 0.0, 0.0], rng)  # numerically rank 2 after rotation
    with pytest.raises(ValueError, match="rank-deficient"):
        dln_entropy(Rn, 3)
    batch = np.stack([np.eye(4), R])
    with pytest.raises(ValueError, match=r"batch index \(1,\)"):
        dln_entropy(batch, 2)
    with pytest.raises(ValueError, match="rank-deficient"):
        entropy_from_singular_values(np.array([1.0, 0.0, 0.0]), 2)
    assert dln_entropy(R, 1) == 0.0  # depth 1: the fibre is a point whatever X is
    with pytest.raises(ValueError, match="depth"):
        dln_entropy(np.eye(2), 0)
    with pytest.raises(ValueError, match="depth"):
        dln_entropy(np.eye(2), 2.5)
    with pytest.raises(ValueError, match="non-negative"):
        entropy_from_singular_values(np.array([1.0, -0.5]), 2)
    with pytest.raises(ValueError, match="floating"):
        dln_entropy(np.eye(3, dtype=int), 2)
    with pytest.raises(ValueError, match="shape"):
        dln_entropy_hvp(np.eye(3), np.eye(2), 2)


# ----------------------------------------------------------------------------------------
# batching, backends, dtypes
# ----------------------------------------------------------------------------------------


def test_batched_matches_loop_and_types():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2, 3, 4, 4))
    S = dln_entropy(X, 3)
    assert isinstance(S, np.ndarray) and S.shape == (2, 3)
    loop = np.array([[dln_entropy(X[a, b], 3) for b in range(3)] for a in range(2)])
    np.testing.assert_allclose(S, loop, rtol=1e-15)
    G = dln_entropy_gradient(X, 3)
    np.testing.assert_allclose(G[1, 2], dln_entropy_gradient(X[1, 2], 3), rtol=1e-14)
    S2, G2 = dln_entropy_and_gradient(X, 3, reduced=False)
    np.testing.assert_allclose(S2 - S, 2 * log_orthogonal_group_volume(4), rtol=1e-14)
    np.testing.assert_allclose(G2, G, rtol=1e-14)
    for dtype in (torch.float32, torch.float64):
        Xt = torch.as_tensor(X, dtype=dtype)
        St = dln_entropy(Xt, 3)
        assert isinstance(St, torch.Tensor) and St.dtype == dtype and St.shape == (2, 3)
        tol = 1e-5 if dtype == torch.float32 else 1e-14
        np.testing.assert_allclose(St.numpy(), S, rtol=tol)
        Gt = dln_entropy_gradient(Xt, 3)
        assert Gt.dtype == dtype
        np.testing.assert_allclose(Gt.numpy(), G, rtol=10 * tol, atol=10 * tol)
    S32 = dln_entropy(X.astype(np.float32), 3)
    assert S32.dtype == np.float32
    np.testing.assert_allclose(S32, S, rtol=1e-5)
    single = dln_entropy(torch.as_tensor(X[0, 0]), 3)
    assert single.shape == () and float(single) == pytest.approx(S[0, 0], rel=1e-14)


# ----------------------------------------------------------------------------------------
# gradients and Hessian-vector products
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_gradient_and_hvp_against_finite_differences(depth):
    rng = np.random.default_rng(depth)
    d = 4
    for s in ([3.0, 1.5, 0.8, 0.2], [2.0, 2.0, 2.0, 0.5], [1.0, 1.0, 1.0, 1.0]):
        X = _matrix(s, rng)
        Z = rng.standard_normal((d, d))
        h = 1e-5
        G = dln_entropy_gradient(X, depth)
        fd = (dln_entropy(X + h * Z, depth) - dln_entropy(X - h * Z, depth)) / (2 * h)
        assert np.sum(G * Z) == pytest.approx(fd, abs=1e-8)
        H = dln_entropy_hvp(X, Z, depth)
        fdH = (dln_entropy_gradient(X + h * Z, depth) - dln_entropy_gradient(X - h * Z, depth)) / (
            2 * h
        )
        np.testing.assert_allclose(H, fdH, atol=1e-8)
        # the Hessian is symmetric
        Y = rng.standard_normal((d, d))
        assert np.sum(H * Y) == pytest.approx(np.sum(dln_entropy_hvp(X, Y, depth) * Z), abs=1e-12)


def test_hvp_stable_at_tiny_gaps():
    """HVP at gaps 1e-12 .. 1e-3 is continuous with the exact collision (no 0/0 blow-up)."""
    rng = np.random.default_rng(5)
    U, V = _orth(3, rng), _orth(3, rng)
    Z = rng.standard_normal((3, 3))
    H0 = dln_entropy_hvp(U @ np.diag([2.0, 1.0, 1.0]) @ V.T, Z, 4)
    for gap in (1e-12, 1e-9, 1e-6):
        Hg = dln_entropy_hvp(U @ np.diag([2.0, 1.0 + gap, 1.0]) @ V.T, Z, 4)
        np.testing.assert_allclose(Hg, H0, atol=10 * gap + 1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_autograd_at_coincident_singular_values(dtype):
    rng = np.random.default_rng(7)
    d, N = 4, 3
    for s in ([2.0, 2.0, 2.0, 0.5], [1.3] * 4):
        X = _matrix(s, rng)
        Xt = torch.tensor(X, dtype=dtype, requires_grad=True)
        S = dln_entropy(Xt, N)
        (g,) = torch.autograd.grad(S, Xt, create_graph=True)
        assert torch.isfinite(g).all()
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        np.testing.assert_allclose(
            g.detach().double().numpy(), dln_entropy_gradient(X, N), atol=tol * 10
        )
        Z = torch.as_tensor(rng.standard_normal((d, d)), dtype=dtype)
        (h,) = torch.autograd.grad((g * Z).sum(), Xt)
        assert torch.isfinite(h).all()
        np.testing.assert_allclose(
            h.double().numpy(), dln_entropy_hvp(X, Z.double().numpy(), N), atol=tol * 100
        )
    # where everything coincides the gradient is (d-1)(N-1)/(2N c) Q for X = c Q
    Q = _orth(d, rng)
    np.testing.assert_allclose(
        dln_entropy_gradient(2.0 * Q, N), (d - 1) * (N - 1) / (2 * N * 2.0) * Q, atol=1e-15
    )


def test_torch_autograd_batched_and_reduced_flag():
    rng = np.random.default_rng(8)
    X = torch.tensor(rng.standard_normal((5, 3, 3)), requires_grad=True)
    S = dln_entropy(X, 4, reduced=False)
    w = torch.arange(5, dtype=torch.float64)
    (g,) = torch.autograd.grad((w * S).sum(), X)
    ref = w[:, None, None].numpy() * dln_entropy_gradient(X.detach().numpy(), 4)
    np.testing.assert_allclose(g.numpy(), ref, rtol=1e-13, atol=1e-15)


def test_hips_autograd_primitive_in_pymanopt_problem():
    d, N = 3, 4
    rng = np.random.default_rng(9)
    manifold = pymanopt.manifolds.Euclidean(d, d)
    A = rng.standard_normal((d, d))

    @pymanopt.function.autograd(manifold)
    def cost(X):
        return anp.sum((X - A) ** 2) - 0.3 * dln_entropy(X, N)

    problem = pymanopt.Problem(manifold, cost)
    X = _matrix([2.0, 2.0, 0.5], rng)  # coincident singular values
    Z = rng.standard_normal((d, d))
    np.testing.assert_allclose(
        problem.euclidean_gradient(X), 2 * (X - A) - 0.3 * dln_entropy_gradient(X, N), atol=1e-14
    )
    np.testing.assert_allclose(
        problem.euclidean_hessian(X, Z), 2 * Z - 0.3 * dln_entropy_hvp(X, Z, N), atol=1e-14
    )
    # batched entropy inside autograd, weighted sum
    Xb = rng.standard_normal((2, d, d))
    gb = autograd.grad(lambda Y: anp.sum(anp.array([1.0, 2.0]) * dln_entropy(Y, N)))(Xb)
    np.testing.assert_allclose(gb[1], 2 * dln_entropy_gradient(Xb[1], N), atol=1e-14)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(10)
    X = rng.standard_normal((64, 8, 8))
    for dtype in (torch.float64, torch.float32):
        Xc = torch.tensor(X, dtype=dtype, device="cuda", requires_grad=True)
        S = dln_entropy(Xc, 3)
        assert S.device.type == "cuda"
        (g,) = torch.autograd.grad(S.sum(), Xc)
        assert g.device.type == "cuda"
        tol = 1e-10 if dtype == torch.float64 else 1e-4
        np.testing.assert_allclose(S.detach().cpu().double().numpy(), dln_entropy(X, 3), rtol=tol)
        np.testing.assert_allclose(
            g.cpu().double().numpy(), dln_entropy_gradient(X, 3), rtol=tol * 10, atol=tol * 10
        )


def test_large_batches_are_chunked_consistently():
    """Batches beyond one CPU chunk (d = 64: 65 rows) give the per-row values."""
    rng = np.random.default_rng(12)
    s = rng.uniform(0.1, 3.0, (3, 70, 64))
    S = entropy_from_singular_values(s, 4)
    g = entropy_gradient_from_singular_values(s, 4)
    assert S.shape == (3, 70) and g.shape == (3, 70, 64)
    for idx in [(0, 0), (1, 66), (2, 69)]:
        assert S[idx] == pytest.approx(entropy_from_singular_values(s[idx], 4), rel=1e-15)
        np.testing.assert_allclose(g[idx], entropy_gradient_from_singular_values(s[idx], 4))
    Z = rng.standard_normal((700, 6, 6))  # the Hessian-vector product chunks at d^3 per row
    X = rng.standard_normal((700, 6, 6))
    H = dln_entropy_hvp(X, Z, 3)
    np.testing.assert_allclose(H[650], dln_entropy_hvp(X[650], Z[650], 3), rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------------------------------
# bad input: every failure names the argument (issue "What a user meets")
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "depth, error",
    [(None, TypeError), ("3", TypeError), (True, TypeError), (float("nan"), ValueError),
     (float("inf"), ValueError), (2.5, ValueError), (0, ValueError)],
)
def test_bad_depth_names_depth(depth, error):
    with pytest.raises(error, match="depth must be an integer >= 1"):
        dln_entropy(np.eye(3), depth)
    with pytest.raises(error, match="depth"):
        entropy_from_singular_values(np.array([2.0, 1.0]), depth)


def test_integral_depth_types_accepted():
    ref = dln_entropy(np.diag([2.0, 1.0, 0.5]), 3)
    for depth in (3.0, np.int64(3), np.float64(3.0), torch.tensor(3)):
        assert dln_entropy(np.diag([2.0, 1.0, 0.5]), depth) == ref


@pytest.mark.parametrize("make", [
    lambda: np.eye(3, dtype=np.float16),
    lambda: torch.eye(3, dtype=torch.float16),
    lambda: torch.eye(3, dtype=torch.bfloat16),
])
def test_half_precision_is_a_value_error_naming_x(make):
    with pytest.raises(ValueError, match="X has dtype .*float32 or float64"):
        dln_entropy(make(), 3)
    with pytest.raises(ValueError, match="X has dtype"):
        dln_entropy_gradient(make(), 3)


@pytest.mark.parametrize("torch_input", [False, True])
def test_nan_without_validation_is_a_value_error(torch_input):
    X = np.eye(3)
    X[0, 1] = np.nan
    if torch_input:
        X = torch.as_tensor(X)
    for fn in (dln_entropy, dln_entropy_gradient):
        with pytest.raises(ValueError, match="X: .*NaN or inf"):
            fn(X, 3, validate=False)


def test_rank_threshold_exact_for_diagonal_and_honest_otherwise():
    # diagonal X: the singular values are exact, the entropy finite however spread they are
    s = np.array([1e150, 1.0, 1e-150])
    expected = entropy_from_singular_values(s, 3)
    assert math.isfinite(expected)
    assert dln_entropy(np.diag(s), 3) == expected
    assert float(dln_entropy(torch.diag(torch.as_tensor(s)), 3)) == expected
    # a truly rank-one matrix is never called finite: its computed singular values are
    # round-off, below the SVD's resolution, and the error says S cannot be resolved
    u = np.random.default_rng(0).standard_normal(3)
    with pytest.raises(ValueError, match="numerically rank-deficient.*cannot be told from zero"):
        dln_entropy(np.outer(u, u), 3)
    # the same spread in a rotated basis: not resolvable from X, not claimed -infinity
    Q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((3, 3)))
    with pytest.raises(ValueError, match="cannot be computed from X") as info:
        dln_entropy(Q @ np.diag(s) @ Q.T, 3)
    assert "so the entropy is -infinity" not in str(info.value)
    # exact zeros on the diagonal: -infinity, said plainly
    with pytest.raises(ValueError, match="two or more singular values are zero"):
        dln_entropy(np.diag([1.0, 0.0, 0.0]), 3)


_SPECIAL = st.sampled_from([0.0, 1.0, -1.0, 1e-300, 1e300, 1e-150, 1e150, np.nan, np.inf, -np.inf])


@st.composite
def _malformed(draw):
    """A possibly malformed call: shape, dtype, backend, special values, depth, validate."""
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    if draw(st.booleans()) and ndim >= 2:
        shape = shape[:-1] + (shape[-2],)  # square more often than not
    dtype = draw(st.sampled_from(["float64", "float32", "float16", "int64", "complex128"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    X = rng.standard_normal(shape)
    if X.size and draw(st.booleans()):
        flat = X.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.size - 1))] = draw(_SPECIAL)
        X = flat.reshape(shape)
    if draw(st.booleans()) and X.ndim >= 2 and X.shape[-1] >= 2:
        X[..., :, -1] = 0.0  # a zero column: rank deficient
        if draw(st.booleans()):
            X[..., :, -2] = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        X = X.astype(dtype) if dtype != "complex128" else X.astype(complex)
    if draw(st.booleans()) and dtype != "complex128":
        X = torch.as_tensor(X)
    depth = draw(st.one_of(st.integers(-1, 6), st.sampled_from([None, True, 2.5, np.nan, "3"])))
    return X, depth, draw(st.booleans())


def _finite_result(value) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    return bool(np.all(np.isfinite(np.asarray(value))))


@settings(max_examples=150, deadline=None)
@given(_malformed())
def test_malformed_input_gives_a_finite_answer_or_a_named_error(call):
    """Never a LinAlgError, IndexError or torch RuntimeError: a ValueError/TypeError with a
    message, or a result; with validation on (the default) the result is finite (the
    entropy is -inf only by raising). validate=False skips the rank and finiteness checks,
    so only the error types are asserted there."""
    X, depth, validate = call
    for fn in (dln_entropy, dln_entropy_gradient):
        try:
            out = fn(X, depth, validate=validate)
        except (ValueError, TypeError) as e:
            assert str(e)
            continue
        if validate:
            assert _finite_result(out), (fn.__name__, X, depth, out)
