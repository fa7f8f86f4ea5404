"""compare_training: outputs, the O(h) GD theorem, and the SGD balance drift (entropic force)."""

import json
import math

import numpy as np
import pytest
import torch

from thermanopt.analysis.compare import compare_training

QUICK = dict(width=3, depth=2, progress=False)


def _finite(v):
    return v is None or isinstance(v, (str, int)) or math.isfinite(v)


def test_quick_run_writes_json_and_png(tmp_path):
    table, hist = compare_training("matrix_sensing", steps=12, out=tmp_path, **QUICK)
    assert [r["method"] for r in table] == [
        "euclidean_gd",
        "euclidean_sgd",
        "euclidean_adam",
        "riemannian_gd",
        "riemannian_sgd",
        "riemannian_adam",
        "free_energy",
    ]
    data = json.loads((tmp_path / "compare_matrix_sensing.json").read_text())
    assert (tmp_path / "compare_matrix_sensing.png").stat().st_size > 10_000
    for row in data["table"]:
        for key in ("final_loss", "final_entropy", "balance_drift", "wall_time"):
            assert row[key] is not None and math.isfinite(row[key]), (row["method"], key)
        assert all(_finite(v) for v in row.values())
        assert row["final_loss"] < hist["methods"][row["method"]]["loss"][0]
    # every method starts from the same end-to-end matrix
    starts = [h["singular_values"][0] for h in hist["methods"].values()]
    assert np.allclose(starts, starts[0], rtol=1e-12)
    assert all(d["distance"][0] < 1e-12 for d in hist["distances"].values())


@pytest.mark.parametrize("task", ["dln_regression", "matrix_completion"])
def test_other_tasks(task):
    table, _ = compare_training(
        task, methods=["euclidean_gd", "riemannian_adam"], steps=10, **QUICK
    )
    assert all(math.isfinite(r["final_loss"]) for r in table)


def test_user_dataset_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, dtype=torch.float64, generator=g)
    y = 1.3 * x
    table, _ = compare_training(
        (torch.utils.data.TensorDataset(x, y), torch.nn.MSELoss()),
        methods=["euclidean_sgd", "riemannian_sgd"],
        steps=40,
        progress=False,
        depth=2,
    )
    assert all(r["final_loss"] < 0.2 * 1.0 for r in table)


def _gd_gap(h, time_horizon=1.0):
    steps = int(round(time_horizon / h))
    table, hist = compare_training(
        "dln_regression",
        methods=["euclidean_gd", "riemannian_gd"],
        steps=steps,
        lr=h,
        record_every=max(1, steps // 4),
        **QUICK,
    )
    return table[1]["distance_to_reference_max"], table[0]["balance_drift"]


def test_gd_factor_and_quotient_trajectories_differ_by_order_h():
    """Same step h, same time: |X_factors(t) - X_quotient(t)| = O(h) -> 0 (gradient-flow limit)."""
    gaps, drifts = zip(*(_gd_gap(h, 0.6) for h in (0.03, 0.015, 0.0075)))
    assert gaps[0] > 1e-4  # the discretisations really differ
    r1, r2 = gaps[0] / gaps[1], gaps[1] / gaps[2]
    assert 1.8 < r2 < 2.3 and abs(r2 - 2) <= abs(r1 - 2) + 0.05, (r1, r2)  # first order
    # GD drift off the balanced manifold over a fixed time is O(h) too
    assert all(1.7 < drifts[i] / drifts[i + 1] < 2.4 for i in range(2)), drifts


def test_sgd_drifts_off_balance_as_predicted():
    """Q_p' = Q_p + eta^2 (G_{p+1}^T G_{p+1} - G_p G_p^T): the harness's bookkeeping is exact;
    GD's drift freezes once the loss settles (O(h) over a fixed time) while minibatch noise
    keeps the SGD drift growing at the minimum (entropic force)."""
    table, hist = compare_training(
        "matrix_sensing",
        methods={"euclidean_gd": {}, "euclidean_sgd": {}, "riemannian_sgd": {"lr": 0.01}},
        steps=300,
        lr=0.05,
        batch_size=1,
        noise=1.0,
        record_every=50,
        **QUICK,
    )
    gd, sgd, rsgd = table
    for row in (gd, sgd):
        assert row["balance_identity_error"] < 1e-9
        assert math.isclose(row["balance_drift"], row["balance_drift_predicted"], rel_tol=1e-9)
    assert sgd["balance_drift"] > 3 * gd["balance_drift"]
    assert rsgd["balance_drift"] == 0.0  # quotient iterates lift to balanced points
    d_gd = hist["methods"]["euclidean_gd"]["balance_drift"]
    d_sgd = hist["methods"]["euclidean_sgd"]["balance_drift"]
    assert abs(d_gd[-1] - d_gd[2]) < 0.01 * d_gd[-1]  # frozen after step 100
    assert d_sgd[-1] > 1.2 * d_sgd[2]  # still growing


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        compare_training("matrix_sensing", steps=0, **QUICK)
    with pytest.raises(ValueError, match="unknown task"):
        compare_training("nope", steps=2, **QUICK)
    with pytest.raises(ValueError, match="unknown method"):
        compare_training("matrix_sensing", methods=["sgd2"], steps=2, **QUICK)
    with pytest.raises(ValueError, match="learning rate"):
        compare_training("matrix_sensing", methods=["euclidean_gd"], steps=2, lr=-1.0, **QUICK)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            compare_training("matrix_sensing", steps=2, device="cuda", **QUICK)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run(tmp_path):
    table, _ = compare_training("matrix_sensing", steps=20, out=tmp_path, device="cuda", **QUICK)
    assert all(math.isfinite(r["final_loss"]) for r in table)
