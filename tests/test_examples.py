"""Smoke tests of the paper-result examples: each runs with ``--quick`` and saves its figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXAMPLES = {
    "gradient_flow_agreement.py": ["gradient_flow_agreement.png"],
    "entropy_landscape.py": ["entropy_landscape.png", "entropy_depth.png"],
    "free_energy_relaxation.py": ["free_energy_relaxation.png", "free_energy_minimisers.png"],
    "langevin_stationary_law.py": ["langevin_stationary_law.png"],
    "symmetry_analysis.py": ["symmetry_graph.png", "symmetry_breaking.png"],
}


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_quick(script, tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in EXAMPLES[script]:
        path = tmp_path / name
        assert path.exists(), f"{script} did not write {name}"
        assert path.stat().st_size > 5_000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if script == "symmetry_analysis.py":
        assert (tmp_path / "symmetries.json").stat().st_size > 0
    assert proc.stdout.strip(), f"{script} printed nothing"
