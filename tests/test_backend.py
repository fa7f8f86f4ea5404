"""The array dispatch layer: one code path, NumPy and torch, dtype and device kept."""

import numpy as np
import pytest
import torch

from thermanopt import _backend as B
from thermanopt.manifolds import _svd


def test_namespace_rejects_mixed_types_dtypes():
    with pytest.raises(ValueError, match="mixed array types"):
        B.namespace(np.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="mixed dtypes"):
        B.namespace(torch.ones(2, dtype=torch.float32), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="mixed dtypes"):
        B.check_compatible(np.ones(2, np.float32), np.ones(2))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_spec_allocates_and_reproduces(backend, dtype):
    spec = B.ArraySpec(backend, dtype=dtype)
    a = spec.randn((3, 4), 7)
    b = spec.randn((3, 4), 7)
    c = spec.randn((3, 4), 8)
    assert B.is_torch(a) == (backend == "torch")
    assert str(a.dtype).endswith(dtype)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    spec.check(a)
    with pytest.raises(ValueError):
        B.ArraySpec("numpy" if backend == "torch" else "torch").check(a)


def test_spec_rejects_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        B.ArraySpec("jax")
    with pytest.raises(ValueError, match="CPU"):
        B.ArraySpec("numpy", device="cuda")
    with pytest.raises(ValueError, match="dtype"):
        B.ArraySpec("torch").check(torch.ones(2, dtype=torch.float32))


def test_generator_passthrough_and_cross_seeding():
    g = np.random.default_rng(1)
    assert B.make_generator(g, B.ArraySpec()) is g
    tg = B.make_generator(np.random.default_rng(1), B.ArraySpec("torch"))
    assert isinstance(tg, torch.Generator)


def test_check_finite():
    B.check_finite(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        B.check_finite(torch.tensor([1.0, float("nan")]), "W")


def test_expm_and_einsum_agree_across_backends():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((2, 3, 3))
    np.testing.assert_allclose(B.expm(torch.as_tensor(A)).numpy(), B.expm(A), rtol=1e-12)
    np.testing.assert_allclose(
        B.einsum("bij,bjk->bik", torch.as_tensor(A), torch.as_tensor(A)).numpy(),
        B.einsum("bij,bjk->bik", A, A),
        rtol=1e-12,
    )


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_svd_reconstructs_and_keeps_dtype(backend):
    spec = B.ArraySpec(backend, dtype="float32")
    X = spec.randn((4, 3, 3), 0)
    U, s, V = _svd.svd(X)
    assert s.dtype == X.dtype
    Xr = U @ (s[..., :, None] * B.matrix_transpose(V))
    np.testing.assert_allclose(np.asarray(Xr), np.asarray(X), atol=1e-5)
    assert bool((s[..., :-1] >= s[..., 1:]).all())


def test_log_K_matches_sum_form_and_limits():
    import mpmath as mp

    mp.mp.dps = 40
    for N in (1, 2, 3, 7):
        for s in ([1.0, 1.0 - 1e-9], [2.0, 2.0], [1e6, 1e-6], [3.0, 1e-3]):
            L = _svd.log_K(np.array(s), N)
            a, b = (mp.mpf(v) ** (mp.mpf(2) / N) for v in s)
            ref = mp.log(sum(a ** (N - 1 - k) * b**k for k in range(N)))
            assert abs(L[0, 1] - float(ref)) <= 1e-13 * max(1.0, abs(float(ref)))
            assert L[0, 1] == L[1, 0]
    # diagonal: N s^(2(N-1)/N)
    s = np.array([0.5, 2.0])
    np.testing.assert_allclose(np.diag(_svd.multiplier_K(s, 4)), 4 * s ** (1.5), rtol=1e-14)


@pytest.mark.cuda
def test_spec_on_cuda():
    spec = B.ArraySpec("torch", device="cuda")
    a = spec.randn((3,), 0)
    assert a.device.type == "cuda"
    _svd.log_K(a.abs() + 1, 3)
