"""The ``thermanopt`` command: ``demo``, ``compare`` and ``symmetries``.

Thin by design: it parses arguments, calls public library functions and
prints or saves what they return.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}; use e.g. 1,784") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}; use e.g. 1,784")
    return dims


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``thermanopt`` command."""
    parser = argparse.ArgumentParser(
        prog="thermanopt",
        description=(
            "Geometry and thermodynamics of deep learning for Pymanopt: deep-linear-network "
            "manifolds, Boltzmann entropy, entropy-aware optimizers, symmetry analysis."
        ),
    )
    parser.add_argument("--version", action="version", version=f"thermanopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="run the end-to-end demonstration and write a report folder"
    )
    demo.add_argument("--out", default="thermanopt-demo", help="report folder")
    demo.add_argument("--device", default="cpu", help="cpu or cuda")
    demo.add_argument("--quick", action="store_true", help="small sizes (for tests)")
    demo.add_argument("--seed", type=int, default=0)

    compare = sub.add_parser(
        "compare", help="Riemannian vs Euclidean training of a deep linear network"
    )
    compare.add_argument("--out", required=True, help="folder for the JSON table and figure")
    compare.add_argument("--steps", type=_positive_int, default=500)
    compare.add_argument("--device", default="cpu")
    compare.add_argument(
        "--task",
        default="matrix_sensing",
        help="matrix_sensing, dln_regression or matrix_completion",
    )
    compare.add_argument("--seed", type=int, default=0)

    sym = sub.add_parser("symmetries", help="find and verify the symmetries of a torch model")
    sym.add_argument("model", help="package.module:factory returning a torch.nn.Module")
    sym.add_argument(
        "--input-shape", type=_shape, required=True, help="example input shape, e.g. 1,784"
    )
    sym.add_argument("--out", default=None, help="folder for the JSON table and graph figure")
    sym.add_argument("--no-verify", action="store_true", help="skip numerical verification")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``thermanopt`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(out=args.out, device=args.device, quick=args.quick, seed=args.seed)
        elif args.command == "compare":
            from .analysis import compare_training

            table, _ = compare_training(
                args.task, methods=None, steps=args.steps, out=args.out, device=args.device
            )
            for row in table:
                print(row)
        elif args.command == "symmetries":
            from .analysis import run_symmetries

            report = run_symmetries(
                args.model, args.input_shape, out=args.out, verify=not args.no_verify
            )
            print(report.table())
    except (ValueError, ImportError) as exc:
        print(f"thermanopt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
