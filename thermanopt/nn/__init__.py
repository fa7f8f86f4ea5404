"""Torch modules of the deep linear network: :class:`DeepLinear`."""

from .deep_linear import DeepLinear

__all__ = ["DeepLinear"]
