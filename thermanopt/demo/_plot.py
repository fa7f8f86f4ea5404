"""Figure helpers of the demo: headless matplotlib, labelled axes, saved PNGs."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


@contextmanager
def figure(path: Path, ncols: int = 1, width: float = 5.0, height: float = 4.0):
    """Yield (fig, axes) and save the figure to ``path`` (PNG, 120 dpi) on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    try:
        yield fig, axes[0] if ncols > 1 else axes[0][0]
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
