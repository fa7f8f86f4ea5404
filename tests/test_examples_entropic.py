"""Smoke test of examples/entropic_forces.py (E5 and E9 of the entropic-forces note)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_entropic_forces_example_quick(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "entropic_forces.py"),
            "--quick",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("e5_balance.png", "e9_sharpness.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 10_000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = proc.stdout
    assert "predicted equilibrium" in out and "predicted sharpness" in out
    # the exact per-step charge identities hold along every run
    errors = [float(x) for x in re.findall(r"exact identity max err ([0-9.e+-]+)", out)]
    assert len(errors) == 5 and max(errors) < 1e-12, out
    drift = [float(x) for x in re.findall(r"drift reconciled to ([0-9.e+-]+)", out)]
    assert len(drift) == 2 and max(drift) < 1e-10, out
    # E5 already relaxes in the quick run: both inits near the predicted tr Q
    pred = float(re.search(r"tr Q = ([0-9.+-]+)", out).group(1))
    finals = [float(x) for x in re.findall(r"tr Q\s+[0-9.+-]+\s*->\s*([0-9.+-]+)", out)]
    assert len(finals) == 2 and all(abs(f - pred) < 0.2 * abs(pred) for f in finals), out
