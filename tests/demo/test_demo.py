"""thermanopt demo: report, figures' numbers against their captions, progress, summary."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import thermanopt

ROOT = Path(thermanopt.__file__).resolve().parent.parent

FIGURES = {
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


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One quick demo run through the command line, as a user starts it."""
    out = tmp_path_factory.mktemp("demo") / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "thermanopt.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path_factory.getbasetemp(),
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        "out": out,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "results": json.loads((out / "results.json").read_text()),
        "report": (out / "report.md").read_text(),
    }


def _finite(obj):
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def test_demo_quick_writes_complete_report(demo):
    out, results, report = demo["out"], demo["results"], demo["report"]
    stages = results["stages"]
    assert set(stages) == set(FIGURES)
    for key, figures in FIGURES.items():
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


def test_summary_and_no_leaked_library_output(demo):
    stdout, stderr = demo["stdout"], demo["stderr"]
    assert "demo finished in" in stdout and "report.md" in stdout
    assert "## Summary" in demo["report"]
    head = next(line for line in stdout.splitlines() if line.startswith("stage"))
    assert "time" in head and "result" in head
    for key in FIGURES:
        assert re.search(rf"^{key}\s+\d+\.\d s\s+\d+\s+\S", stdout, re.M), key
    for leak in ("Warning", "Traceback", "fake_tensor", "warnings.warn"):
        assert leak not in stderr and leak not in stdout, leak


def test_progress_bars_end_at_their_totals(demo):
    final = {}
    for m in re.finditer(r"(\w+): +\d+%\|[^|]*\| *(\d+)/(\d+)", demo["stderr"]):
        final[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    assert set(FIGURES) <= set(final)
    for key, (n, total) in final.items():
        assert n == total, (key, n, total)


def test_free_energy_progress_total_matches_count_in_full_mode(tmp_path):
    """The full-size free-energy stage runs 7 temperatures; its bar must say 7."""
    from thermanopt.demo import Context
    from thermanopt.demo.thermo import stage_free_energy

    class Bar:
        def __init__(self, total):
            self.total, self.n = total, 0

        def update(self, k=1):
            self.n += k

        def refresh(self):
            pass

    bar = Bar(4)  # what the stage used to announce
    ctx = Context(tmp_path, "cpu", False, 0, progress=bar)
    res = stage_free_energy(ctx)
    assert bar.n == bar.total == len(res.numbers["rows"]) == 7


def test_adam_step_count_and_minimum_agree_with_json(demo):
    adam = demo["results"]["stages"]["geometry"]["numbers"]["Euclidean Adam on the factors"]
    m = re.search(r"after (\d+) steps", demo["report"])
    assert m and int(m.group(1)) == adam["iterations"] == 400
    assert f"lowest loss {adam['min_loss']:.1e} at step {adam['iteration_of_min']}" in (
        demo["report"]
    )
    assert f"{adam['final_loss']:.1e}" in demo["report"]
    assert adam["min_loss"] <= adam["final_loss"]


def test_entropy_landscape_caption_holds(demo):
    numbers = demo["results"]["stages"]["entropy"]["numbers"]
    for N in (2, 3, 4, 16):
        circle = numbers[f"S_{N}_on_circle"]
        assert abs(circle["max_at_angle_deg"] - 45.0) < 0.6  # largest at s1 = s2
        assert circle["max"] > circle["min"] + 0.1
    assert numbers["S_2_spread_along_s1_plus_s2_eq_2"] < 1e-12  # the caption's caveat
    assert "fixed Frobenius norm" in demo["report"]


def test_langevin_panels_separate_the_two_laws(demo):
    numbers = demo["results"]["stages"]["sampling"]["numbers"]
    assert 2 not in numbers["depths"]
    for N in numbers["depths"]:
        m = numbers[f"depth_{N}_largest"]
        # the two exact laws differ visibly, and the samples are closer to the one with S
        assert abs(m["gibbs_law_mean"] - m["no_entropy_law_mean"]) > 0.2
        assert m["cdf_distance_to_gibbs_law"] < m["cdf_distance_to_no_entropy_law"]
        assert abs(m["langevin_mean"] - m["gibbs_law_mean"]) < 5 * m["langevin_standard_error"]


def test_symmetry_breaking_reports_gradient_balance(demo):
    numbers = demo["results"]["stages"]["symmetry"]["numbers"]
    for run in ("breaking[full-batch GD]", "breaking[SGD, batch 2]"):
        assert {"balance_start", "balance_end", "balance_window_steps"} <= set(numbers[run])
    assert "gradient balance" in demo["report"]
    sgd = numbers["breaking[SGD, batch 2]"]
    towards = abs(sgd["balance_end"]) < abs(sgd["balance_start"])
    assert ("towards balance, without reaching it" in demo["report"]) == towards


def test_demo_checks_out_before_running(tmp_path):
    from thermanopt.demo import run_demo

    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        run_demo(out=str(tmp_path / "file"), quick=True)
    with pytest.raises(ValueError, match="device"):
        run_demo(out=str(tmp_path / "ok"), device="tpu", quick=True)


def test_demo_lists_missing_capabilities(tmp_path, monkeypatch):
    from thermanopt import demo

    fake = demo.Stage("fake", "A capability that has not landed", ("thermanopt.nope",), None)
    monkeypatch.setattr(demo, "STAGES", [fake])
    results = demo.run_demo(out=str(tmp_path), quick=True)
    assert results["stages"]["fake"] == {"missing": ["thermanopt.nope"]}
    assert "not available yet" in (tmp_path / "report.md").read_text()
