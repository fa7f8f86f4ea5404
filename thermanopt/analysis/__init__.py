"""thermanopt.analysis: symmetries of torch models and their breaking under SGD.

``find_symmetries(model, example_inputs)`` traces a model (:mod:`.tracing`), builds its
symmetry graph (:mod:`.symmetry_graph`), classifies the symmetries (:mod:`.symmetries`) and
verifies them numerically (:mod:`.verify`); :mod:`.breaking` records the conserved
quantities of those symmetries along training (Ziyin, Xu & Chuang, arXiv 2505.12387).
"""

from .symmetries import Symmetry, SymmetryReport, find_symmetries, symmetry_graph
from .tracing import TracingError, UnsupportedOpError, trace

__all__ = [
    "Symmetry",
    "SymmetryReport",
    "find_symmetries",
    "symmetry_graph",
    "trace",
    "TracingError",
    "UnsupportedOpError",
    "track_breaking",
    "classify_breaking",
    "run_symmetries",
    "cli_symmetries",
    "compare_training",
]


def __getattr__(name: str):
    if name in ("track_breaking", "classify_breaking", "BreakingHistory"):
        from . import breaking

        return getattr(breaking, name)
    if name in ("run_symmetries", "cli_symmetries"):
        from . import cli_support

        return getattr(cli_support, name)
    if name == "compare_training":
        from .compare import compare_training

        return compare_training
    raise AttributeError(f"module 'thermanopt.analysis' has no attribute {name!r}")
