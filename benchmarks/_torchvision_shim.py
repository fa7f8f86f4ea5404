"""Let ``import torchvision`` work beside a CPU-only torch whose wheel torchvision's C++
extension was not built against (PyPI's torchvision 0.28.0 is built for CUDA torch).

torchvision then fails at import with ``operator torchvision::nms does not exist``: its
``_meta_registrations`` registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` unconditionally, and those schemas only exist once ``_C.so`` loaded.
:func:`install` defines just these two schemas when (and only when) the extension cannot
be loaded; the pure-Python model zoo (``torchvision.models``) needs nothing else. Detection
ops then raise at call time, which no benchmark uses.

Benchmark-only (benchmarks never import the tests); ``tests/conftest.py`` does the same for
the tests. Never imported by the library.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARIES: list = []  # keeps the torch.library.Library alive (its schemas die with it)


def _extension_loads(package_dir: str) -> bool:
    """True when torchvision's ``_C`` extension loads into this torch."""
    for path in glob.glob(os.path.join(package_dir, "_C*.so")) + glob.glob(
        os.path.join(package_dir, "_C*.pyd")
    ):
        try:
            torch.ops.load_library(path)
            return True
        except (OSError, ImportError):
            return False
    return False


def install() -> bool:
    """Define ``torchvision::nms``/``qnms`` if torchvision's extension cannot load.

    Returns True when the schemas were defined here; False when torchvision is absent,
    already imported, or its extension loads (then nothing is needed).
    """
    if "torchvision" in sys.modules or _LIBRARIES:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    if _extension_loads(list(spec.submodule_search_locations)[0]):
        return False
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        lib.define(schema)
    _LIBRARIES.append(lib)
    return True
