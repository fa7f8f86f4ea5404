"""Library side of ``thermanopt symmetries MODEL --input-shape ... --out DIR``."""

from __future__ import annotations

import importlib
import os

import torch

from .symmetries import SymmetryReport, find_symmetries

__all__ = ["run_symmetries", "cli_symmetries", "load_model"]


def load_model(model_spec: str):
    """Import ``package.module:factory`` (the user's own code) and call the factory."""
    if ":" not in model_spec:
        raise ValueError(f"MODEL must be 'package.module:factory', got {model_spec!r}")
    mod_name, fn_name = model_spec.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {mod_name!r}: {e}") from e
    factory = getattr(mod, fn_name, None)
    if factory is None or not callable(factory):
        raise ValueError(f"{mod_name!r} has no callable {fn_name!r}")
    return factory()


def run_symmetries(model_spec: str, input_shape: tuple, out: str | None = None,
                   verify: bool = True, *, integer_high: int | None = None,
                   tracer: str = "auto") -> SymmetryReport:
    """Analyse ``model_spec`` on a random input of ``input_shape``; print the table and,
    with ``out``, write ``symmetries.json`` and ``symmetries.png`` there.
    ``integer_high``: draw integer inputs (token ids) in ``[0, integer_high)``."""
    if not input_shape or any(int(s) < 1 for s in input_shape):
        raise ValueError(f"input shape must be positive integers, got {input_shape!r}")
    model = load_model(model_spec)
    g = torch.Generator().manual_seed(0)
    if integer_high:
        x = torch.randint(0, integer_high, tuple(int(s) for s in input_shape), generator=g)
    else:
        x = torch.randn(tuple(int(s) for s in input_shape), generator=g)
    report = find_symmetries(model, (x,), verify=verify, tracer=tracer)
    print(report.table())
    for note in report.notes:
        print("note:", note)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        report.to_json(os.path.join(out, "symmetries.json"))
        report.plot(os.path.join(out, "symmetries.png"))
    return report


def cli_symmetries(args) -> SymmetryReport:
    """Call :func:`run_symmetries` from an argparse namespace with ``model``,
    ``input_shape`` (list of ints), ``out`` and optionally ``no_verify``, ``tracer``."""
    return run_symmetries(args.model, tuple(args.input_shape), getattr(args, "out", None),
                          not getattr(args, "no_verify", False),
                          integer_high=getattr(args, "integer_high", None),
                          tracer=getattr(args, "tracer", "auto") or "auto")
