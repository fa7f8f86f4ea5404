"""The thermanopt command: options, tables, seeds, output folders, errors."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import thermanopt
from thermanopt.cli import build_parser, main

ROOT = Path(thermanopt.__file__).resolve().parent.parent

MODELS = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn


    def mlp():
        return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


    def broken():
        raise RuntimeError("boom in the factory")


    def not_a_model():
        return 3


    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.q = nn.Linear(4, 4)
            self.k = nn.Linear(4, 4)
            self.v = nn.Linear(4, 4)
            self.out = nn.Linear(4, 10)

        def forward(self, idx):
            x = self.emb(idx)
            h = F.scaled_dot_product_attention(self.q(x)[:, None], self.k(x)[:, None],
                                               self.v(x)[:, None])[:, 0]
            return self.out(x + h)


    def tokens():
        return Tokens()
    """
)


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A user's folder holding mymodels.py and bad.py, as the working directory, and NOT
    on sys.path (as for the installed console script)."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "mymodels.py").write_text(MODELS)
    (folder / "bad.py").write_text("def f(:\n    pass\n")
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(folder))])
    for name in ("mymodels", "bad"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return folder


def _error_lines(err):
    """The lines of stderr that are not progress reports."""
    return [line for line in err.splitlines() if line.strip() and ": done in " not in line]


# ------------------------------------------------------------------ help and parsing


def test_version_and_help(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert thermanopt.__version__ in capsys.readouterr().out
    out = subprocess.run(
        [sys.executable, "-m", "thermanopt.cli", "--help"], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout
    for word in ("demo", "compare", "symmetries"):
        assert word in out


def test_every_option_is_documented_with_its_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        text = " ".join(p.format_help().split())
        for action in p._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, (name, action.dest)
            shown = " ".join(p._get_formatter()._expand_help(action).split())
            assert shown in text
            assert shown.count("default") + shown.count("(required)") == 1, shown
            if action.required:
                assert shown.endswith("(required)")
            elif isinstance(action.default, (int, str)) and not isinstance(action.default, bool):
                assert f"(default: {action.default})" in shown, shown
        if name != "symmetries":
            assert "--seed" in text and "--device" in text
        if name == "compare":
            from thermanopt.analysis.compare import DEFAULT_METHODS

            assert all(m in text for m in DEFAULT_METHODS)


def test_bad_arguments_exit_2_with_one_line(run_cli):
    rc, _, err = run_cli(["symmetries", "x:y", "--input-shape", "0"])
    assert rc == 2 and "bad shape" in err and len(_error_lines(err)) == 1


@pytest.mark.parametrize("argv, needle", [
    (["compare", "--steps", "0"], "positive integer"),
    (["compare", "--task", "nope"], "invalid choice"),
    (["compare", "--methods", "nope"], "unknown method"),
    (["compare", "--seed", "-1"], "seed"),
    (["demo", "--device", "tpu"], "unknown device 'tpu'"),
    (["compare", "--device", "tpu"], "use cpu, cuda or cuda:N"),
])
def test_usage_errors_are_one_line_exit_2(run_cli, argv, needle):
    rc, out, err = run_cli(argv)
    assert rc == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and needle in lines[0] and "--help" in lines[0], err
    assert "Traceback" not in err


def test_unavailable_cuda_is_one_line_before_any_work(run_cli, monkeypatch, tmp_path):
    import torch

    import thermanopt.analysis as analysis

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(analysis, "compare_training", _must_not_run)
    for argv in (["compare", "--device", "cuda", "--out", str(tmp_path / "c")],
                 ["demo", "--device", "cuda", "--out", str(tmp_path / "d")]):
        rc, _, err = run_cli(argv)
        assert rc == 2 and _error_lines(err) == [
            f"thermanopt {argv[0]}: error: --device cuda: torch sees no CUDA device here; "
            "use --device cpu"
        ]


# ------------------------------------------------------------------ output folders


def _must_not_run(*args, **kwargs):
    raise AssertionError("the computation ran before the output folder was checked")


@pytest.fixture
def no_computation(monkeypatch):
    import thermanopt.analysis as analysis
    import thermanopt.demo as demo

    monkeypatch.setattr(analysis, "compare_training", _must_not_run)
    monkeypatch.setattr(analysis, "find_symmetries", _must_not_run)
    monkeypatch.setattr(demo, "run_demo", _must_not_run)


@pytest.mark.parametrize("command", [
    ["demo", "--quick"],
    ["compare", "--steps", "2"],
    ["symmetries", "mymodels:mlp", "--input-shape", "3,5"],
])
@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_is_checked_before_any_computation(run_cli, models, no_computation, command, where):
    (models / "taken").write_text("a file in the way")
    out = "taken" if where == "file" else os.path.join("taken", "sub")
    rc, _, err = run_cli(command + ["--out", out])
    lines = _error_lines(err)
    assert rc == 2 and len(lines) == 1, err
    assert "--out" in lines[0] and "is a file, not a folder" in lines[0]


def test_unwritable_out_is_one_line(run_cli, models, no_computation):
    target = "/proc/thermanopt-cannot-write-here"
    rc, _, err = run_cli(["compare", "--out", target])
    lines = _error_lines(err)
    assert rc == 2 and len(lines) == 1 and "not writable" in lines[0], err


# ------------------------------------------------------------------ symmetries


def test_symmetries_imports_from_the_working_directory(run_cli, models, tmp_path):
    out = tmp_path / "sym"
    rc, stdout, err = run_cli(["symmetries", "mymodels:mlp", "--input-shape", "3,5",
                                   "--out", str(out)])
    assert rc == 0, err
    assert stdout.count("kind           group") == 1  # the table is printed once
    assert "rescale" in stdout and "continuous dimension 8" in stdout  # the summary
    data = json.loads((out / "symmetries.json").read_text())
    assert data["continuous_dim"] == 8
    assert (out / "symmetries.png").stat().st_size > 10_000


def test_symmetries_token_ids_with_vocab_size(run_cli, models):
    rc, stdout, err = run_cli(["symmetries", "mymodels:tokens", "--input-shape", "2,6",
                                   "--vocab-size", "10", "--no-verify"])
    assert rc == 0, err
    assert "general_linear" in stdout and "150 parameters" in stdout
    # float inputs into an embedding: one line saying what to do
    rc, _, err = run_cli(["symmetries", "mymodels:tokens", "--input-shape", "2,6"])
    assert rc == 2 and len(_error_lines(err)) == 1 and "--vocab-size" in err


def test_no_library_warnings_or_logs_leak(run_cli, models):
    # the attention model's verification triggers torch's batching-rule UserWarning
    rc, stdout, err = run_cli(["symmetries", "mymodels:tokens", "--input-shape", "2,6",
                                   "--vocab-size", "10"])
    assert rc == 0, err
    assert "Warning" not in err and "Warning" not in stdout.split("captured")[0]
    # a wrong input shape: torch's fake_tensor error log stays out of the terminal
    rc, stdout, err = run_cli(["symmetries", "mymodels:mlp", "--input-shape", "3,4"])
    lines = _error_lines(err)
    assert rc == 2 and len(lines) == 1, err
    assert "fake_tensor" not in err and "Traceback" not in err
    assert "--input-shape" in lines[0] and "3x4" in lines[0]


@pytest.mark.parametrize("spec, needle", [
    ("nomodule:f", "cannot import module 'nomodule'"),
    ("bad:f", "syntax error (bad.py, line 1"),
    ("mymodels:broken", "raised RuntimeError: boom in the factory; fix the factory"),
    ("mymodels:not_a_model", "returned int, not a torch.nn.Module"),
    ("mymodels:nope", "has no callable 'nope'"),
    ("no_colon", "module:factory"),
])
def test_model_errors_are_one_line_exit_2(run_cli, models, spec, needle):
    rc, _, err = run_cli(["symmetries", spec, "--input-shape", "3,5"])
    lines = _error_lines(err)
    assert rc == 2 and len(lines) == 1, err
    assert needle in lines[0] and "Traceback" not in err


def test_debug_shows_the_traceback(run_cli, models):
    rc, _, err = run_cli(["symmetries", "mymodels:broken", "--input-shape", "3,5",
                              "--debug"])
    assert rc == 2 and "Traceback" in err and "boom in the factory" in err


# ------------------------------------------------------------------ compare


def _compare(run_cli, out, seed, steps="6"):
    rc, stdout, err = run_cli(["compare", "--steps", steps, "--width", "3", "--methods",
                                   "euclidean_gd,euclidean_sgd,riemannian_sgd", "--seed",
                                   str(seed), "--out", str(out)])
    assert rc == 0, err
    data = json.loads((out / "compare_matrix_sensing.json").read_text())
    return stdout, data


def test_compare_seed_table_and_files(run_cli, tmp_path):
    stdout, a = _compare(run_cli, tmp_path / "a", 0)
    _, b = _compare(run_cli, tmp_path / "b", 0)
    _, c = _compare(run_cli, tmp_path / "c", 1)

    def losses(d):
        return [row["final_loss"] for row in d["table"]]

    assert losses(a) == losses(b)  # the same seed reproduces
    assert losses(a) != losses(c)  # another seed differs
    assert a["histories"]["settings"]["seed"] == 0 and c["histories"]["settings"]["seed"] == 1
    # an aligned table, not dict reprs, and a summary naming the files
    assert "{'method'" not in stdout
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("method"))
    rows = lines[head + 2: head + 5]
    assert [r.split()[0] for r in rows] == ["euclidean_gd", "euclidean_sgd", "riemannian_sgd"]
    col = lines[head].index("final loss") + len("final loss")
    assert all(r[col - 1] != " " and (len(r) == col or r[col] == " ") for r in rows)
    assert "compare_matrix_sensing.png" in stdout and "seed 0" in stdout
    assert (tmp_path / "a" / "compare_matrix_sensing.png").stat().st_size > 10_000


def test_compare_failing_method_is_named(run_cli, tmp_path, monkeypatch):
    from thermanopt.analysis import compare_training
    from thermanopt.analysis.compare import MethodFailedError

    with pytest.raises(MethodFailedError, match="method euclidean_gd failed after") as info:
        compare_training("matrix_sensing", methods={"euclidean_gd": {"lr": 1e4}}, steps=60,
                         width=3, progress=False)
    assert info.value.method == "euclidean_gd"

    import thermanopt.analysis as analysis

    def fail(*args, **kwargs):
        raise MethodFailedError("riemannian_adam", "method riemannian_adam failed after 3 of "
                                "5 steps (lr 0.02, seed 0): ValueError: non-finite")

    monkeypatch.setattr(analysis, "compare_training", fail)
    rc, _, err = run_cli(["compare", "--steps", "5", "--out", str(tmp_path / "o")])
    lines = _error_lines(err)
    assert rc == 1 and len(lines) == 1 and "riemannian_adam" in lines[0]
    assert "--methods" in lines[0]


def test_compare_singular_value_panel_is_labelled(monkeypatch, tmp_path):
    import matplotlib.figure

    from thermanopt.analysis.compare import _figure

    captured = {}

    def keep(self, *args, **kwargs):
        captured["fig"] = self

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    methods = {f"m{k}": {"step": [0, 1], "loss": [1.0, 0.5], "entropy": [0.0, 0.1],
                         "singular_values": [[3.0 - j * 0.3 for j in range(8)]] * 2}
               for k in range(7)}
    _figure(str(tmp_path / "f.png"), {"methods": methods}, "task", [2.0, 0.1])
    ax = captured["fig"].axes[2]
    curves = [line for line in ax.get_lines() if line.get_linestyle() != ":"]
    assert len(curves) == 2 * len(methods)  # largest and smallest per method, not all eight
    assert ax.get_legend() is not None and ax.get_ylabel() and ax.get_xlabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("largest" in t for t in labels) and any("smallest" in t for t in labels)


# ------------------------------------------------------------------ symmetry figure


def test_symmetry_figure_is_readable(monkeypatch, tmp_path):
    """Grouped per layer, a legend for the kinds, no overlapping labels."""
    import matplotlib.figure
    import torch

    from thermanopt.analysis import find_symmetries
    from thermanopt.analysis.cli_support import plot_symmetries
    from thermanopt.demo.symmetry import _models

    captured = {}

    def keep(self, *args, **kwargs):
        captured["fig"] = self

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    _, transformer = _models()
    report = find_symmetries(transformer, torch.randint(0, 11, (2, 5)), verify=False)
    plot_symmetries(report, tmp_path / "s.png")
    fig = captured["fig"]
    ax = fig.axes[0]
    legend = ax.get_legend()
    kinds = {s.kind for s in report.symmetries}
    assert kinds <= {t.get_text() for t in legend.get_texts()}
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = [t for t in ax.get_xticklabels() + ax.get_yticklabels() + ax.texts
             if t.get_text()]
    layer_names = {t.get_text() for t in ax.texts}
    assert {"emb", "q", "k", "v", "o", "up", "down"} <= layer_names  # grouped per layer
    boxes = [t.get_window_extent(renderer) for t in texts]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())
