"""The rule registry: op name -> rule object, and the barrier for ops without a rule."""

from __future__ import annotations

from typing import Any

__all__ = ["Rule", "register", "rule_for", "RULES", "BARRIER", "covered_ops"]

RULES: dict[str, Rule] = {}


class Rule:
    """Base rule: ``ops`` names the canonical operations it handles."""

    ops: tuple[str, ...] = ()

    def apply(self, an: Any, node: Any) -> None:  # pragma: no cover - interface
        """Couple and restrict the axes of ``node``'s operands in ``an``; record its output
        axes (``an.set_axes``)."""
        raise NotImplementedError


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator: one instance of ``cls`` handles every op in ``cls.ops``."""
    inst = cls()
    for op in cls.ops:
        if op in RULES:
            raise ValueError(f"two rules for op {op!r}")
        RULES[op] = inst
    return cls


class Barrier(Rule):
    """No symmetry passes: every operand and output axis is fixed (unknown operations)."""

    def apply(self, an: Any, node: Any) -> None:
        why = f"{node.name}({node.op}): no rule (barrier)"
        for r in an.tensor_args(node):
            for axis in an.ax(r):
                an.fix(axis, why)
        an.set_outputs(node, why)


BARRIER = Barrier()


def rule_for(op: str) -> Rule | None:
    """The registered rule of ``op``, or None (the caller then uses :data:`BARRIER`)."""
    return RULES.get(op)


def covered_ops() -> list[str]:
    """Sorted canonical op names that have a rule."""
    return sorted(RULES)

