"""examples/ddp_breaking.py: as a plain script and under ``torchrun`` with two processes,
and as the guide (docs/guide/distributed.md) shows it.

Both runs (``--quick``) must save the figure, report the exact per-step charge identity,
and print the same record: the two-process run (gloo, each rank half of every batch)
equals the one-process run on the whole batches (the contract of ``track_breaking`` and
``entropic_loss`` with ``process_group``), to the 12 printed digits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "ddp_breaking.py"
RECORD = re.compile(r"world size (\d+): final loss (\S+), charge sum (\S+), noise term (\S+)")


def _run(launcher: list[str], out: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # a plain run must not believe it was started by torchrun
    proc = subprocess.run(
        [sys.executable, *launcher, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=400, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    png = out / "ddp_breaking.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (m,) = RECORD.findall(proc.stdout)
    errors = [float(x) for x in re.findall(r"exact identity max err (\S+)", proc.stdout)]
    return {"world": int(m[0]), "record": [float(x) for x in m[1:]], "errors": errors,
            "stdout": proc.stdout}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _run([], tmp_path_factory.mktemp("ddp_single"))


def test_ddp_example_runs_as_a_plain_script(single):
    assert single["world"] == 1
    assert single["errors"] and max(single["errors"]) < 1e-10  # C' = C + lr^2 g^T A g
    assert "rescale" in single["stdout"] and "unbroken" in single["stdout"]
    assert single["record"][2] > 0  # the SGD noise term is exercised


@pytest.mark.slow
def test_ddp_example_under_torchrun_matches_one_process(single, tmp_path):
    two = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
               tmp_path)
    assert two["world"] == 2
    assert two["record"] == pytest.approx(single["record"], rel=1e-10, abs=0)
    assert max(two["errors"]) < 1e-10


def _doc_block() -> list[str]:
    text = (ROOT / "docs" / "guide" / "distributed.md").read_text()
    (block,) = re.findall(r"```python\n(# ddp_breaking\.py:.*?)```", text, flags=re.S)
    return [line.strip() for line in block.splitlines()[1:] if line.strip()]


def test_the_guide_shows_the_example_as_it_runs():
    """Every line of the guide's DDP script is a line of examples/ddp_breaking.py, in the
    same order (the plot call, a comment in the guide, aside)."""
    lines = [line.replace("  # noqa: E402", "").strip() for line in SCRIPT.read_text().splitlines()]
    at = 0
    doc = [line for line in _doc_block() if not line.startswith("# plot(")]
    assert len(doc) > 50
    for line in doc:
        assert line in lines[at:], f"not in examples/ddp_breaking.py (in order): {line}"
        at = lines.index(line, at) + 1
