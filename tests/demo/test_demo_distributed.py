"""thermanopt demo --nproc: the Langevin chains sharded over processes (issue 12).

``thermanopt demo --quick --device cpu --nproc 2`` runs its sampling stage on two gloo
processes (the stand-in, on a CPU machine, for one NCCL process per GPU): the gathered
chains must be all the chains, and their singular values must follow the exact law with
the entropy, as in one process. The choice of the number of processes (every visible GPU
by default on CUDA, one on the CPU) and its errors are checked without a GPU.
"""

from __future__ import annotations

import json

import pytest
import torch

from thermanopt import demo
from thermanopt.demo import resolve_nproc, run_demo


@pytest.mark.slow
def test_two_gloo_processes_sample_the_same_law(run_cli, tmp_path, monkeypatch):
    sampling = [s for s in demo.STAGES if s.key == "sampling"]
    monkeypatch.setattr(demo, "STAGES", sampling)
    out = tmp_path / "report"
    rc, _, err = run_cli(["demo", "--quick", "--device", "cpu", "--nproc", "2",
                                  "--out", str(out)])
    assert rc == 0, err[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["processes"] == 2
    numbers = results["stages"]["sampling"]["numbers"]
    assert numbers["processes"] == 2
    assert (out / "langevin_singular_values.png").stat().st_size > 10_000
    assert "sharded over 2 processes" in (out / "report.md").read_text()
    for N in numbers["depths"]:
        for name in ("largest", "smallest"):
            m = numbers[f"depth_{N}_{name}"]
            assert m["samples"] == numbers["chains"]  # every chain gathered, none twice
            # the law of one process: the exact law with the entropy, not the one without
            assert m["cdf_distance_to_gibbs_law"] < m["cdf_distance_to_no_entropy_law"]
            assert abs(m["langevin_mean"] - m["gibbs_law_mean"]) < 5 * m["langevin_standard_error"]


def test_default_process_count(monkeypatch):
    assert resolve_nproc("cpu") == 1
    assert resolve_nproc("cpu", 3) == 3  # gloo processes on the CPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_nproc("cuda") == 4  # every visible GPU
    assert resolve_nproc("cuda:2") == 1  # one named GPU: one process
    assert resolve_nproc("cuda", 2) == 2


@pytest.mark.parametrize("device, nproc, needle", [
    ("cpu", 0, "positive integer"),
    ("cpu", True, "positive integer"),
    ("cuda:1", 2, "pass device 'cuda'"),
    ("cuda", 3, "2 CUDA device(s) are visible"),
])
def test_bad_process_counts(monkeypatch, device, nproc, needle):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        resolve_nproc(device, nproc)


def test_stages_get_the_process_count(tmp_path, monkeypatch):
    seen = []

    def fake(ctx):
        seen.append(ctx.nproc)
        return demo.StageResult()

    monkeypatch.setattr(demo, "STAGES", [demo.Stage("fake", "records nproc", (), fake)])
    results = run_demo(out=str(tmp_path / "two"), quick=True, nproc=2)
    assert seen == [2] and results["processes"] == 2
    run_demo(out=str(tmp_path / "one"), quick=True)
    assert seen == [2, 1]


def test_cli_refuses_more_processes_than_gpus_before_any_work(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def must_not_run(**kwargs):
        raise AssertionError("the demo ran")

    monkeypatch.setattr(demo, "run_demo", must_not_run)
    rc, _, err = run_cli(["demo", "--device", "cuda", "--nproc", "2",
                                  "--out", str(tmp_path / "d")])
    assert rc == 2 and "--nproc" in err and "1 CUDA device(s)" in err
    assert not (tmp_path / "d").exists()


def test_cli_passes_the_process_count(run_cli, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda **kw: calls.append(kw) or {})
    for argv, want in ((["--nproc", "3"], 3), ([], 1)):
        rc, _, err = run_cli(["demo", "--out", str(tmp_path / "d"), *argv])
        assert rc == 0, err
        assert calls[-1]["nproc"] == want and calls[-1]["device"] == "cpu"
