"""The ``thermanopt`` command: ``demo``, ``compare`` and ``symmetries``.

Thin by design: it parses and validates the arguments (output folders and the
device are checked before any computation), calls public library functions,
prints their results as aligned tables and a one-line summary, and writes the
JSON and PNG files. Every error is one line on stderr naming the problem and
the fix; usage errors (bad arguments, an output folder that cannot be written,
an unavailable device, a model that cannot be loaded or run on the example
input) exit with status 2, failures of the computation itself with status 1.
Library warnings and torch log records are captured; ``--verbose`` prints them
after the results, ``--debug`` prints the traceback of an error.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence

from . import __version__

EXIT_FAILURE = 1
EXIT_USAGE = 2

TASKS = ("matrix_sensing", "dln_regression", "matrix_completion")
TRACERS = ("auto", "fx", "export", "forward")


class UsageError(Exception):
    """A problem with the command line: exit status 2."""


class Failure(Exception):
    """The computation failed for a reason the message explains: exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``thermanopt compare: error: ... (see --help)``."""

    def error(self, message: str):  # noqa: D102
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_USAGE)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default: "(default: 500)", "(default: off)"
    for a switch, "(default: none)", or "(required)"; a help text that already
    states its default is left as it is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or "default" in text or "required" in text:
            return text
        if action.required:
            return f"{text} (required)"
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None:
            return f"{text} (default: none)"
        if action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


# ------------------------------------------------------------------ argument types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer seed >= 0, got {text}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}; use e.g. 1,784") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}; use e.g. 1,784")
    return dims


def _device(text: str) -> str:
    name = text.strip().lower()
    base, _, index = name.partition(":")
    if base not in ("cpu", "cuda") or (index and not index.isdigit()) or (base == "cpu" and index):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda or cuda:N")
    return name


def _methods(text: str) -> list[str]:
    from .analysis.compare import DEFAULT_METHODS

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in DEFAULT_METHODS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"unknown method {', '.join(bad) or text!r}; choose from {','.join(DEFAULT_METHODS)}"
        )
    return names


# ------------------------------------------------------------------ parser


def _common(p: argparse.ArgumentParser, seeds: str, *, device: bool = True) -> None:
    if device:
        p.add_argument("--device", type=_device, default="cpu",
                       help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--seed", type=_seed, default=0,
                   help=f"random seed of {seeds}; the same seed reproduces a run")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print the library warnings and torch log records captured "
                   "during the run")
    p.add_argument("--debug", action="store_true", help="print the full traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``thermanopt`` command."""
    parser = _Parser(
        prog="thermanopt",
        formatter_class=_Formatter,
        description=(
            "Geometry and thermodynamics of deep learning for Pymanopt: deep-linear-network "
            "manifolds, Boltzmann entropy, entropy-aware optimizers, symmetry analysis."
        ),
        epilog="Run 'thermanopt COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"thermanopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser(
        "demo", formatter_class=_Formatter,
        help="run the end-to-end demonstration and write a report folder",
        description="Run every stage of the demonstration (geometry, entropy, free energy, "
        "sampling, symmetry) and write report.md, results.json and the PNG figures to --out.",
    )
    demo.add_argument("--out", default="thermanopt-demo",
                      help="report folder (created; files in it are overwritten)")
    demo.add_argument("--quick", action="store_true",
                      help="small sizes and short runs (about a minute; for tests)")
    demo.add_argument("--nproc", type=_positive_int, default=None,
                      help="processes sharing the Langevin chains: one per GPU with --device "
                      "cuda (NCCL), gloo processes with --device cpu (default: every visible "
                      "GPU with --device cuda, else 1)")
    _common(demo, "every stage's data, initial points and noise")

    compare = sub.add_parser(
        "compare", formatter_class=_Formatter,
        help="Riemannian vs Euclidean training of a deep linear network",
        description="Train one deep-linear-network task with Euclidean and Riemannian "
        "methods from the same initial point; print a table, write compare_<task>.json and "
        "compare_<task>.png to --out.",
    )
    compare.add_argument("--out", default="thermanopt-compare",
                         help="folder for the JSON table and the figure (created)")
    compare.add_argument("--task", choices=TASKS, default="matrix_sensing",
                         help="the training task")
    compare.add_argument("--steps", type=_positive_int, default=500,
                         help="optimisation steps per method")
    compare.add_argument("--methods", type=_methods, default=None,
                         help="comma-separated subset of euclidean_gd, euclidean_sgd, "
                         "euclidean_adam, riemannian_gd, riemannian_sgd, riemannian_adam, "
                         "free_energy (default: all of them)")
    compare.add_argument("--width", type=_positive_int, default=8,
                         help="width d of the network (X is d x d)")
    compare.add_argument("--depth", type=_positive_int, default=3, help="depth N of the network")
    compare.add_argument("--batch-size", type=_positive_int, default=16,
                         help="minibatch size of the stochastic methods")
    _common(compare, "the task's data, the common initial point and the minibatches")

    sym = sub.add_parser(
        "symmetries", formatter_class=_Formatter,
        help="find and verify the symmetries of a torch model",
        description="Import MODEL (module:factory, e.g. mymodels:make_mlp for ./mymodels.py; "
        "the working directory is importable), call the factory, and find, classify and verify "
        "the parameter symmetries of the model on a random example input.",
    )
    sym.add_argument("model", help="module:factory returning a torch.nn.Module")
    sym.add_argument("--input-shape", type=_shape, required=True,
                     help="example input shape, e.g. 1,784 or 2x16")
    sym.add_argument("--vocab-size", type=_positive_int, default=None,
                     help="draw integer token ids in [0, VOCAB_SIZE) instead of float inputs "
                     "(for models that start with an embedding)")
    sym.add_argument("--out", default=None,
                     help="folder for symmetries.json and symmetries.png "
                     "(default: none, print only)")
    sym.add_argument("--no-verify", action="store_true",
                     help="skip the numerical verification (group elements and Jacobian "
                     "nullity)")
    sym.add_argument("--tracer", choices=TRACERS, default="auto",
                     help="how the model is traced")
    _common(sym, "the example input and the verification", device=False)
    return parser


# ------------------------------------------------------------------ output helpers


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """Aligned plain-text table of ``rows`` (dicts); ``columns``: (key, header) pairs.

    Text columns are left-aligned, numbers right-aligned; None prints as "-".
    """
    cells = [[_fmt(r.get(k)) for k, _ in columns] for r in rows]
    numeric = [all(isinstance(r.get(k), (int, float)) or r.get(k) is None for r in rows)
               and not all(isinstance(r.get(k), str) for r in rows) for k, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(columns)]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    head = line([h for _, h in columns])
    return "\n".join([head, "-" * len(head)] + [line(c) for c in cells])


class _Step:
    """Progress of one step that may take a while, on stderr: a live timer on a
    terminal, then a "done in" line (a failed step leaves only the error line)."""

    def __init__(self, message: str):
        self.message = message
        self.tty = sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread = None

    def _spin(self):
        frames = "|/-\\"
        k = 0
        while not self._stop.wait(0.25):
            elapsed = time.perf_counter() - self.t0
            sys.stderr.write(f"\r{frames[k % 4]} {self.message} ({elapsed:.0f} s)")
            sys.stderr.flush()
            k += 1

    def __enter__(self):
        self.t0 = time.perf_counter()
        if self.tty:
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        elapsed = time.perf_counter() - self.t0
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            sys.stderr.write("\r\033[K")
        if exc_type is None:
            sys.stderr.write(f"{self.message}: done in {elapsed:.1f} s\n")
            sys.stderr.flush()
        return False


def _print_captured(captured: list[str], verbose: bool) -> None:
    if not captured:
        return
    if verbose:
        counts: dict[str, int] = {}
        for line in captured:
            counts[line] = counts.get(line, 0) + 1
        print(f"\n{len(captured)} library message(s) captured during the run:")
        for line, n in counts.items():
            print("  " + line + (f"  (x{n})" if n > 1 else ""))
    else:
        print(f"({len(captured)} library warning(s)/log record(s) captured; "
              "rerun with --verbose to see them)")


def _check_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: torch sees no CUDA device here; use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible; "
                "use cuda:0"
            )


def _output_dir(out: str) -> str:
    from .analysis.cli_support import prepare_output_dir

    try:
        return os.fspath(prepare_output_dir(out))
    except ValueError as e:
        raise UsageError(str(e)) from e


# ------------------------------------------------------------------ commands


def _cmd_demo(args) -> int:
    from .analysis.cli_support import captured_library_output
    from .demo import resolve_nproc, run_demo

    _check_device(args.device)
    try:
        nproc = resolve_nproc(args.device, args.nproc)
    except ValueError as e:
        raise UsageError(f"--nproc: {e}") from e
    out = _output_dir(args.out)
    with captured_library_output() as captured:
        results = run_demo(out=out, device=args.device, quick=args.quick, seed=args.seed,
                           nproc=nproc)
    if args.verbose:
        _print_captured(list(results.get("library_messages", [])) + captured, True)
    return 0


COMPARE_COLUMNS = (
    ("method", "method"),
    ("space", "space"),
    ("lr", "lr"),
    ("final_loss", "final loss"),
    ("min_loss", "min loss"),
    ("steps_to_target", "steps to target"),
    ("wall_time", "wall [s]"),
    ("final_entropy", "entropy S_N"),
    ("balance_drift", "balance drift"),
    ("distance_to_reference_final", "|X - X_ref|"),
)


def _cmd_compare(args) -> int:
    from .analysis import compare_training
    from .analysis.cli_support import captured_library_output
    from .analysis.compare import MethodFailedError

    _check_device(args.device)
    out = _output_dir(args.out)
    t0 = time.perf_counter()

    with captured_library_output() as captured:
        try:
            table, hist = compare_training(
                args.task, methods=args.methods, steps=args.steps, out=out, device=args.device,
                seed=args.seed, width=args.width, depth=args.depth,
                batch_size=args.batch_size,
            )
        except MethodFailedError as e:
            raise Failure(f"{e.detail}; leave it out with --methods or try another --seed") from e
    print(format_table(table, COMPARE_COLUMNS))
    target = hist["settings"].get("target_loss")
    stem = os.path.join(out, f"compare_{hist['settings']['task']}")
    print(
        f"\n{args.task}: {len(table)} methods x {args.steps} steps, width {args.width}, depth "
        f"{args.depth}, seed {args.seed}, {time.perf_counter() - t0:.1f} s; target loss "
        f"{_fmt(target)} (reference {table[0]['method']}).\nwrote {stem}.json and {stem}.png"
    )
    _print_captured(captured, args.verbose)
    return 0


def _cmd_symmetries(args) -> int:
    from .analysis import find_symmetries
    from .analysis.cli_support import (
        captured_library_output,
        example_input,
        load_model,
        plot_symmetries,
    )

    out = _output_dir(args.out) if args.out is not None else None
    with captured_library_output() as captured:
        try:
            with _Step(f"loading {args.model}"):
                model = load_model(args.model)
            x = example_input(args.input_shape, vocab_size=args.vocab_size, seed=args.seed)
        except ValueError as e:
            raise UsageError(str(e)) from e
        n_params = sum(p.numel() for p in model.parameters())
        what = "tracing and classifying" if args.no_verify else (
            "tracing, classifying and verifying (Jacobian SVD)")
        try:
            with _Step(f"{what}: {n_params:,} parameters"):
                report = find_symmetries(model, (x,), verify=not args.no_verify,
                                         tracer=args.tracer, seed=args.seed)
        except (ValueError, TypeError) as e:
            hint = ("check --input-shape and --vocab-size" if args.vocab_size else
                    "check --input-shape (or pass --vocab-size for token-id inputs)")
            raise UsageError(f"{_one_line(e)}; {hint}") from e
        if out is not None:
            report.to_json(os.path.join(out, "symmetries.json"))
            plot_symmetries(report, os.path.join(out, "symmetries.png"),
                            title=f"symmetries of {args.model}")
    print(report.table())
    for note in report.notes:
        print("note:", note)
    kinds = sorted({s.kind for s in report.symmetries})
    print(
        f"\n{args.model}: {n_params:,} parameters, {len(report.symmetries)} symmetries "
        f"({', '.join(kinds) or 'none'}), continuous dimension {report.continuous_dim}"
        + ("" if report.complete is None else f", complete: {report.complete}")
        + f", {report.seconds.get('total', 0.0):.1f} s."
    )
    if out is not None:
        print(f"wrote {os.path.join(out, 'symmetries.json')} and "
              f"{os.path.join(out, 'symmetries.png')}")
    _print_captured(captured, args.verbose)
    return 0


def _one_line(exc: BaseException) -> str:
    from .analysis.cli_support import one_line

    return one_line(exc)


COMMANDS = {"demo": _cmd_demo, "compare": _cmd_compare, "symmetries": _cmd_symmetries}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``thermanopt`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    prog = f"thermanopt {args.command}"
    try:
        return COMMANDS[args.command](args)
    except UsageError as e:
        if args.debug:
            traceback.print_exc()
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Failure as e:
        if args.debug:
            traceback.print_exc()
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure is one line (--debug: traceback)
        if args.debug:
            traceback.print_exc()
        print(f"{prog}: error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
