"""One small rule per operation of the traced graph, in a registry.

A rule says which tensor axes an operation couples (:meth:`CoupledAxes.unify`), which group
actions pass through it (:meth:`CoupledAxes.restrict`: permutations always; sign flips,
positive rescaling, general linear maps, one scale, rotations only where the op commutes
with them) and which axes it pins (:meth:`CoupledAxes.fix`). The op names are the canonical
names of :mod:`thermanopt.analysis.tracing` (one per Core ATen operation or preserved
composite such as ``linear``). The contract of every rule is ``apply(an, node)``: read the
axes of the operands with ``an.ax``, record the output axes with ``an.set_axes``.

An operation without a rule is never fatal: :data:`BARRIER` pins every axis of its operands
and output (no symmetry passes through it) and the analysis lists it in ``unhandled_ops``
(Ziyin, Xu & Chuang, arXiv 2505.12387, §2: a symmetry must hold for every input, so pinning
is the conservative choice).
"""

from __future__ import annotations

from . import attention, elementwise, linear, norms, recurrent, shape, sources  # noqa: F401
from .registry import BARRIER, RULES, Rule, covered_ops, register, rule_for

__all__ = ["Rule", "register", "rule_for", "RULES", "BARRIER", "covered_ops"]
