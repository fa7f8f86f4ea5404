"""The thermanopt command."""

import json
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


def test_demo_quick_writes_report(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert (out / "report.md").exists()
    stage = results["stages"]["backend"]["numbers"]
    assert stage["eigenvalue_error"] < 1e-8
