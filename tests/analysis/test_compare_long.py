"""Every method of compare_training runs 1000 steps on each built-in task without leaving GL(d).

Before the one geometry core, RiemannianAdam drove the smallest singular value of X to
1e-16 within 34-131 steps and then failed; the step is now the quotient's second-order
retraction (never leaves the component of X) through the counted rescue rule.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from thermanopt.analysis import compare_training
from thermanopt.analysis.compare import DEFAULT_METHODS


@pytest.mark.slow
@pytest.mark.parametrize("task", ["dln_regression", "matrix_completion", "matrix_sensing"])
def test_every_method_runs_1000_steps_in_gl_d(task, tmp_path):
    rows, info = compare_training(task, steps=1000, out=tmp_path, progress=False)
    assert {r["method"] for r in rows} == set(DEFAULT_METHODS)
    for row in rows:
        assert row["steps"] == 1000, row
        assert math.isfinite(row["final_loss"]) and math.isfinite(row["min_loss"]), row
        trace = info["methods"][row["method"]]
        assert np.all(np.isfinite(trace["loss"])), row["method"]
        s = np.asarray(trace["singular_values"], dtype=float)
        assert np.all(np.isfinite(s)), row["method"]
        d = s.shape[-1]
        assert np.all(s[..., -1] > 100 * d * np.finfo(float).eps * s[..., 0]), row["method"]
    assert (tmp_path / f"compare_{task}.json").exists()
