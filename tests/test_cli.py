"""The thermanopt command."""

import json
import math
import subprocess
import sys

import thermanopt
from thermanopt.cli import main


def test_version_and_help(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert thermanopt.__version__ in capsys.readouterr().out
    out = subprocess.run(
        [sys.executable, "-m", "thermanopt.cli", "--help"], capture_output=True, text=True
    ).stdout
    for word in ("demo", "compare", "symmetries"):
        assert word in out


def test_bad_arguments_exit_nonzero():
    proc = subprocess.run(
        [sys.executable, "-m", "thermanopt.cli", "symmetries", "x:y", "--input-shape", "0"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "bad shape" in proc.stderr


def _finite(obj):
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def test_demo_quick_writes_complete_report(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    stages = results["stages"]
    expected = {
        "backend": [],
        "geometry": ["geometry_loss.png"],
        "entropy": ["entropy_landscape.png", "entropy_trajectory.png"],
        "free_energy": ["free_energy_minimisers.png"],
        "sampling": ["langevin_singular_values.png"],
        "symmetry": [
            "symmetry_graph_relu_mlp.png",
            "symmetry_graph_transformer.png",
            "symmetry_breaking.png",
        ],
    }
    assert set(stages) == set(expected)
    for key, figures in expected.items():
        assert "missing" not in stages[key], (key, stages[key])
        assert _finite(stages[key]["numbers"]), key
        for fig in figures:
            assert (out / fig).stat().st_size > 10_000, fig
            assert f"]({fig})" in report
    assert stages["backend"]["numbers"]["eigenvalue_error"] < 1e-8
    assert stages["free_energy"]["numbers"]["max_abs_error"] < 1e-5
    assert stages["symmetry"]["numbers"]["relu_mlp"]["complete"] is True
    geometry = stages["geometry"]["numbers"]
    assert geometry["TrustRegions on ObservableQuotient"]["relative_error"] < 1e-6


def test_demo_lists_missing_capabilities(tmp_path, monkeypatch):
    from thermanopt import demo

    fake = demo.Stage("fake", "A capability that has not landed", ("thermanopt.nope",), None)
    monkeypatch.setattr(demo, "STAGES", [fake])
    results = demo.run_demo(out=str(tmp_path), quick=True)
    assert results["stages"]["fake"] == {"missing": ["thermanopt.nope"]}
    assert "not available yet" in (tmp_path / "report.md").read_text()
