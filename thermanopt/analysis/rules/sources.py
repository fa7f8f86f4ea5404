"""Leaves of the graph: model inputs, constants and buffers, parameters, non-tensor values.

Inputs and constants (buffers, ``arange``, ``full``, ``zeros``...) are fixed: a symmetry
acts on parameters only and must hold for every input.
"""

from __future__ import annotations

import math
from typing import Any

from .registry import Rule, register


@register
class InputRule(Rule):
    """Model inputs and constant tensors: every axis fixed."""

    ops = ("input", "constant", "arange", "full", "zeros", "ones", "empty", "scalar_tensor",
           "randn", "rand")

    def apply(self, an: Any, node: Any) -> None:
        an.set_outputs(node, f"{node.name}({node.op}): input or constant")


@register
class NonTensorRule(Rule):
    """Shape arithmetic, assertions and other non-tensor values: nothing to couple."""

    ops = ("nontensor",)

    def apply(self, an: Any, node: Any) -> None:
        return


@register
class ParamRule(Rule):
    """A parameter: a fresh axis per dimension; a piece of the parameter table."""

    ops = ("param",)

    def apply(self, an: Any, node: Any) -> None:
        axes = [an.new_axis(s) for s in node.shape]
        an.set_axes(node, axes)
        pname = node.meta["param"]
        an.param_of[node.name] = pname
        if pname in getattr(an.tg, "unused", ()):
            an.nulls.append({"param": pname, "index": (), "dim": math.prod(node.shape),
                             "reason": "parameter never read on the way to the output"})
            return
        an.add_piece(pname, (), tuple(node.shape), axes)
