"""Shared fixtures: backends, dtypes, CUDA skipping, a headless matplotlib.

Tests run on tiny matrices: one BLAS/OpenMP thread per process avoids thread
oversubscription (on 2 loaded cores a 3x3 expm took 18 ms instead of 17 us).
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import matplotlib  # noqa: E402
import pytest  # noqa: E402

matplotlib.use("Agg")

try:
    import torch

    torch.set_num_threads(1)
    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    HAS_CUDA = False


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


BACKENDS = [("numpy", "float64"), ("torch", "float64"), ("numpy", "float32"), ("torch", "float32")]


@pytest.fixture(params=BACKENDS, ids=lambda p: f"{p[0]}-{p[1]}")
def backend_dtype(request):
    """(backend, dtype) pairs every manifold is tested on."""
    return request.param
