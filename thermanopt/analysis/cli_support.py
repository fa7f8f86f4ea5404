"""Library side of ``thermanopt symmetries MODEL --input-shape ... --out DIR``.

The pieces the command is made of, each usable on its own:

- :func:`load_model` imports ``module:factory`` the way ``python -m`` would (the
  working directory is importable) and calls the factory, turning every failure
  (missing module, syntax error, a factory that raises or returns something
  other than a ``torch.nn.Module``) into one ``ValueError`` line that names the
  problem and the fix;
- :func:`example_input` draws the random example input: floats, or integer
  token ids in ``[0, vocab_size)`` for models that start with an embedding;
- :func:`prepare_output_dir` checks and creates an output folder *before* any
  computation (a file in the way or an unwritable parent is a ``ValueError``);
- :func:`captured_library_output` keeps the warnings and log records that torch
  emits while tracing (``fake_tensor`` errors for a wrong input shape, batching
  rule performance warnings) out of the terminal and hands them back as a list;
- :func:`run_symmetries` strings them together around :func:`find_symmetries`.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from .symmetries import SymmetryReport, find_symmetries

__all__ = [
    "run_symmetries",
    "cli_symmetries",
    "load_model",
    "example_input",
    "prepare_output_dir",
    "captured_library_output",
    "one_line",
    "plot_symmetries",
]


def one_line(text: object, limit: int = 400) -> str:
    """``text`` on one line (newlines joined with "; "), at most ``limit`` characters."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    line = "; ".join(parts) if parts else str(text).strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc, 240)}"


def load_model(model_spec: str, *, add_cwd: bool = True):
    """Import ``module:factory`` (the user's own code) and return ``factory()``.

    ``module`` is a dotted module name (``mymodels`` for ``./mymodels.py``,
    ``pkg.models`` for ``./pkg/models.py``). With ``add_cwd`` the working
    directory is put first on ``sys.path`` if it is not there yet, as
    ``python -m`` does, so a file next to the user's shell is importable without
    ``PYTHONPATH=.``. Every failure is a ``ValueError`` with a one-line message.
    """
    if not isinstance(model_spec, str) or model_spec.count(":") != 1:
        raise ValueError(
            f"MODEL must be 'package.module:factory' (e.g. mymodels:make_mlp for ./mymodels.py), "
            f"got {model_spec!r}"
        )
    mod_name, fn_name = (t.strip() for t in model_spec.split(":"))
    if not mod_name or not fn_name:
        raise ValueError(
            f"MODEL must be 'module:factory' with both parts non-empty, got {model_spec!r}"
        )
    if mod_name.endswith(".py"):
        raise ValueError(
            f"MODEL names a module, not a file: use {mod_name[:-3].replace('/', '.')}:{fn_name} "
            f"instead of {model_spec!r}"
        )
    if add_cwd:
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        missing = getattr(e, "name", None) or ""
        if missing and (mod_name == missing or mod_name.startswith(missing + ".")):
            raise ValueError(
                f"cannot import module {mod_name!r}: no {mod_name.replace('.', '/')}.py in "
                f"{os.getcwd()} or on sys.path; run from the folder that holds it or add that "
                "folder to PYTHONPATH"
            ) from e
        raise ValueError(
            f"importing {mod_name!r} failed: it needs the module {missing!r}, which is not "
            "installed; install it or fix the import"
        ) from e
    except SyntaxError as e:
        where = f"{Path(e.filename).name if e.filename else mod_name}, line {e.lineno}"
        raise ValueError(
            f"module {mod_name!r} has a syntax error ({where}: {e.msg}); fix the file"
        ) from e
    except Exception as e:  # noqa: BLE001 - the user's module ran code that raised
        raise ValueError(
            f"importing {mod_name!r} raised {_describe(e)}; fix the module"
        ) from e
    factory = getattr(mod, fn_name, None)
    if factory is None or not callable(factory):
        names = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == mod.__name__)
        have = f" (it defines: {', '.join(names[:8])})" if names else ""
        raise ValueError(f"module {mod_name!r} has no callable {fn_name!r}{have}")
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001 - the user's factory raised
        raise ValueError(
            f"the factory {model_spec} raised {_describe(e)}; fix the factory (it is called "
            "with no arguments and must return a torch.nn.Module)"
        ) from e
    if not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"the factory {model_spec} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def example_input(input_shape: Sequence[int], *, vocab_size: int | None = None,
                  seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A random example input of ``input_shape`` drawn with ``seed``.

    Floats from N(0, 1) in ``dtype``, or, with ``vocab_size``, integer token ids
    (``torch.long``) uniform in ``[0, vocab_size)``.
    """
    shape = tuple(input_shape) if not isinstance(input_shape, int) else (input_shape,)
    if not shape or any(isinstance(s, bool) or int(s) != s or int(s) < 1 for s in shape):
        raise ValueError(f"input shape must be positive integers, got {input_shape!r}")
    shape = tuple(int(s) for s in shape)
    g = torch.Generator().manual_seed(int(seed))
    if vocab_size is not None:
        if isinstance(vocab_size, bool) or int(vocab_size) != vocab_size or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        return torch.randint(0, int(vocab_size), shape, generator=g)
    return torch.randn(shape, generator=g, dtype=dtype)


def prepare_output_dir(out: str | os.PathLike, option: str = "--out") -> Path:
    """Check that ``out`` can be a writable folder and create it; return it as a Path.

    Raises ``ValueError`` (one line naming ``option``) when a file is in the way,
    a parent is a file, or the folder cannot be created or written to.
    """
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{option} {os.fspath(out)!r} is a file, not a folder; choose another path or "
            "remove the file"
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(
                    f"{option} {os.fspath(out)!r}: {os.fspath(parent)!r} is a file, not a "
                    "folder; choose another path"
                )
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".thermanopt-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(
            f"{option} {os.fspath(out)!r} is not writable ({e.strerror or e}); choose a "
            "folder you can write to"
        ) from e
    return path


class _Collect(logging.Handler):
    def __init__(self, sink: list):
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"{record.name}: {record.levelname}: {one_line(record.getMessage())}")


@contextmanager
def captured_library_output(prefixes: tuple[str, ...] = ("torch",)) -> Iterator[list[str]]:
    """Collect Python warnings and the log records of the ``torch`` loggers.

    Inside the block, warnings are recorded instead of printed and every logger
    whose name starts with one of ``prefixes`` writes to the yielded list
    instead of stderr (torch gives its loggers their own stderr handlers). The
    list holds one line per warning or record: show it with ``--verbose``.
    """
    sink: list[str] = []
    handler = _Collect(sink)
    manager = logging.root.manager
    loggers = [logging.getLogger(p) for p in prefixes]
    loggers += [lg for name, lg in list(manager.loggerDict.items())
                if isinstance(lg, logging.Logger) and name.startswith(prefixes)]
    saved = {id(lg): (lg, list(lg.handlers), lg.propagate) for lg in loggers}
    for lg, _, _ in saved.values():
        lg.handlers = [handler]
        lg.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            # the filters stay as they are: what Python would have shown is recorded instead
            yield sink
        for w in caught:
            sink.append(f"{w.category.__name__}: {one_line(w.message)}")
    finally:
        for lg, handlers, propagate in saved.values():
            lg.handlers = handlers
            lg.propagate = propagate


KIND_COLOURS = {
    "rescale": "tab:red", "scale": "tab:orange", "general_linear": "tab:purple",
    "rotation": "tab:brown", "translation": "tab:green", "trade": "tab:olive",
    "null": "tab:gray", "permutation": "tab:blue", "sign_flip": "tab:cyan",
}


def _parameter_order(report: SymmetryReport) -> list[str]:
    pieces = (report.context or {}).get("pieces") or []
    names = list(dict.fromkeys(getattr(p, "name", None) for p in pieces if hasattr(p, "name")))
    for s in report.symmetries:
        for p in s.parameters:
            if p["name"] not in names:
                names.append(p["name"])
    return names


def plot_symmetries(report: SymmetryReport, path: str | os.PathLike, *,
                    title: str | None = None, collapse: bool | None = None) -> None:
    """Readable figure of which parameters each symmetry acts on; saved to ``path``.

    One row per symmetry (kind, group, dimension), one column per parameter,
    columns grouped per layer (module) in the model's order, a marker where the
    symmetry acts: colour = kind (legend), filled circle = continuous, open
    diamond = discrete. ``collapse`` (default: when there are more than 24
    parameters) shows one column per layer instead of one per parameter.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    params = _parameter_order(report)
    if collapse is None:
        collapse = len(params) > 24

    def layer(name: str) -> str:
        module = name.rsplit(".", 1)[0] if "." in name else "(top level)"
        return f"module {module}" if module.isdigit() else module

    layers = list(dict.fromkeys(layer(n) for n in params))
    columns = layers if collapse else params
    col = {c: i for i, c in enumerate(columns)}
    syms = report.symmetries
    n_rows, n_cols = max(len(syms), 1), max(len(columns), 1)
    fig_w = min(4.0 + 0.42 * n_cols, 22.0)
    fig_h = min(2.2 + 0.36 * n_rows, 18.0)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    kinds_seen = []
    for r, s in enumerate(syms):
        colour = KIND_COLOURS.get(s.kind, "black")
        if s.kind not in kinds_seen:
            kinds_seen.append(s.kind)
        cols = sorted({col[layer(p["name"]) if collapse else p["name"]] for p in s.parameters})
        ax.plot([min(cols), max(cols)], [r, r], color=colour, lw=0.8, alpha=0.4, zorder=1)
        ax.scatter(cols, [r] * len(cols), s=70, zorder=2,
                   marker="o" if s.continuous else "D",
                   facecolors=colour if s.continuous else "white", edgecolors=colour,
                   linewidths=1.6)
    ax.set_yticks(range(len(syms)))
    ax.set_yticklabels([f"{s.kind}  {s.group}  (dim {s.dim})" for s in syms], fontsize=8)
    ax.set_ylim(n_rows - 0.5, -0.5)
    ax.set_xlim(-0.6, n_cols - 0.4)
    if collapse:
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("layer (module); a marker: the symmetry acts on a parameter of it")
    else:
        ax.set_xticks(range(len(params)))
        ax.set_xticklabels([n.rsplit(".", 1)[-1] for n in params], rotation=90, fontsize=8)
        # layer names under the parameter names, with separators between layers
        for lay in layers:
            idx = [col[n] for n in params if layer(n) == lay]
            ax.annotate(lay, xy=((min(idx) + max(idx)) / 2, 0), xycoords=("data", "axes fraction"),
                        xytext=(0, -52), textcoords="offset points", ha="center", va="top",
                        fontsize=8, fontweight="bold", annotation_clip=False)
            if min(idx) > 0:
                ax.axvline(min(idx) - 0.5, color="0.8", lw=0.8, zorder=0)
        ax.set_xlabel("parameter, grouped by layer (module)", labelpad=40)
    ax.grid(axis="y", color="0.93", zorder=0)
    continuous = {s.kind: s.continuous for s in syms}
    handles = [Line2D([], [], ls="", marker="o" if continuous[k] else "D",
                      color=KIND_COLOURS.get(k, "black"),
                      mfc=KIND_COLOURS.get(k, "black") if continuous[k] else "white", label=k)
               for k in kinds_seen]
    handles += [Line2D([], [], ls="", marker="o", color="0.3", label="continuous (filled)"),
                Line2D([], [], ls="", marker="D", mfc="white", color="0.3",
                       label="discrete (open)")]
    ax.legend(handles=handles, title="kind of symmetry", fontsize=8, title_fontsize=8,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    dim = report.continuous_dim
    ax.set_title(f"{title or 'parameter symmetries'}\n{len(syms)} symmetries, continuous "
                 f"dimension {dim} (function level) + {report.loss_level_dim} (loss level)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def run_symmetries(model_spec: str, input_shape: tuple, out: str | None = None,
                   verify: bool = True, *, integer_high: int | None = None,
                   vocab_size: int | None = None, tracer: str = "auto", seed: int = 0,
                   echo: bool = True, messages: list | None = None) -> SymmetryReport:
    """Analyse ``model_spec`` on a random input of ``input_shape``.

    ``out`` is checked and created first (before the model is imported); then
    the report's table (and notes) is printed once when ``echo`` is true and
    ``symmetries.json`` and ``symmetries.png`` are written to ``out``.
    ``vocab_size`` (alias ``integer_high``) draws integer token ids in
    ``[0, vocab_size)``; ``seed`` seeds the input and the verification. Torch's
    warnings and log records are captured and appended to ``messages`` when a
    list is given (they are never printed).
    """
    folder = prepare_output_dir(out) if out is not None else None
    vocab = vocab_size if vocab_size is not None else integer_high
    x = example_input(input_shape, vocab_size=vocab, seed=seed)
    with captured_library_output() as captured:
        model = load_model(model_spec)
        report = find_symmetries(model, (x,), verify=verify, tracer=tracer, seed=seed)
        if folder is not None:
            report.to_json(os.fspath(folder / "symmetries.json"))
            plot_symmetries(report, folder / "symmetries.png", title=f"symmetries of {model_spec}")
    if messages is not None:
        messages.extend(captured)
    if echo:
        print(report.table())
        for note in report.notes:
            print("note:", note)
    return report


def cli_symmetries(args) -> SymmetryReport:
    """Call :func:`run_symmetries` from an argparse namespace with ``model``,
    ``input_shape`` (list of ints), ``out`` and optionally ``no_verify``, ``tracer``,
    ``vocab_size`` and ``seed``."""
    return run_symmetries(args.model, tuple(args.input_shape), getattr(args, "out", None),
                          not getattr(args, "no_verify", False),
                          vocab_size=getattr(args, "vocab_size", None)
                          or getattr(args, "integer_high", None),
                          tracer=getattr(args, "tracer", "auto") or "auto",
                          seed=getattr(args, "seed", 0) or 0)
