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


def _install_torchvision_shim() -> None:
    """Make ``import torchvision`` work beside the CPU-only torch wheel.

    PyPI's torchvision 0.28.0 is built against CUDA torch: beside torch 2.13.0+cpu its C++
    extension does not load, and the import then fails with ``operator torchvision::nms does
    not exist`` because ``torchvision._meta_registrations`` registers fake kernels for the
    ``torchvision::nms``/``qnms`` schemas unconditionally. Defining those two schemas before
    the first import (only when the extension cannot load) is enough for the pure-Python
    model zoo the analysis tests use. The shim lives in ``benchmarks/_torchvision_shim.py``
    (benchmarks may not import the tests, so the tests load it from there); it is test and
    benchmark code only, never imported by the library.
    """
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "_torchvision_shim.py"
    spec = importlib.util.spec_from_file_location("_torchvision_shim", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[spec.name] = module  # the schemas live as long as the module's Library
    module.install()


try:
    _install_torchvision_shim()
except ImportError:  # pragma: no cover - torch missing: nothing to shim
    pass


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


@pytest.fixture
def run_cli(capfd):
    """``run_cli(argv) -> (exit status, stdout, stderr)`` of the ``thermanopt`` command run
    in this process (``SystemExit`` turned into its code)."""
    from thermanopt.cli import main

    def run(argv):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        out, err = capfd.readouterr()
        return rc, out, err

    return run
