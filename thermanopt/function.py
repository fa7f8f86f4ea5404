"""Pymanopt backend decorators that keep torch tensors on their device.

``thermanopt.function.torch(manifold)`` is the counterpart of
``pymanopt.function.pytorch``. Pymanopt's own PyTorch backend
(``pymanopt/autodiff/backends/_pytorch.py``: ``PyTorchBackend._from_numpy``,
``prepare_function``, ``_sanitize_gradient``) converts every argument with
``torch.from_numpy`` and every result with ``.numpy()``, so points that are
torch tensors fail at once (``'Tensor' object has no attribute 'strides'``)
and CUDA tensors could never flow through a solver.

This backend plugs into Pymanopt through the public factory
``pymanopt.autodiff.backend_decorator_factory`` and the ``Backend`` base class
(no patching of Pymanopt). On tensors of any device and dtype it computes

- the cost, as a Python float (Pymanopt's solvers call ``np.isnan``/``np.sqrt``
  on costs and norms; this float is the only host transfer per evaluation);
- the Euclidean gradient by ``torch.autograd.grad``;
- Euclidean Hessian-vector products by double backward,
  ``H[u] = d/dx <grad f(x), u>``.

Gradients and Hessian-vector products stay on the device of the point.

Example::

    manifold = thermanopt.manifolds.Sphere(n, backend="torch", device="cuda")

    @thermanopt.function.torch(manifold)
    def cost(x):
        return -x @ A @ x

    problem = pymanopt.Problem(manifold, cost)
    pymanopt.optimizers.TrustRegions().run(problem)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch as _torch
from pymanopt.autodiff import backend_decorator_factory
from pymanopt.autodiff.backends._backend import Backend
from pymanopt.tools import bisect_sequence, unpack_singleton_sequence_return_value

__all__ = ["TorchBackend", "torch", "numpy", "autograd"]


def _require_tensors(args: Sequence, what: str) -> None:
    for i, a in enumerate(args):
        if not isinstance(a, _torch.Tensor):
            raise ValueError(
                f"thermanopt.function.torch: {what} argument {i} is a {type(a).__name__}, "
                "not a torch tensor; build the manifold with backend='torch' or use "
                "pymanopt.function.autograd for NumPy points"
            )


def _as_scalar_tensor(value, name: str) -> _torch.Tensor:
    if not isinstance(value, _torch.Tensor):
        raise ValueError(f"the cost must return a torch tensor, got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(f"the cost must return a scalar, got shape {tuple(value.shape)} ({name})")
    return value.reshape(())


def _zeros_for_unused(xs, grads):
    return [_torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads)]


class TorchBackend(Backend):
    """Pymanopt autodiff backend on torch tensors of any device (no NumPy round trip)."""

    def __init__(self) -> None:
        super().__init__("thermanopt-torch")

    @staticmethod
    def is_available() -> bool:
        return True

    def prepare_function(self, function: Callable) -> Callable:
        @functools.wraps(function)
        def cost(*args):
            _require_tensors(args, "cost")
            with _torch.no_grad():
                value = _as_scalar_tensor(function(*args), function.__name__)
            return float(value)

        return cost

    def generate_gradient_operator(self, function: Callable, num_arguments: int) -> Callable:
        def gradient(*args):
            _require_tensors(args, "gradient")
            xs = [a.detach().requires_grad_(True) for a in args]
            with _torch.enable_grad():
                value = _as_scalar_tensor(function(*xs), function.__name__)
                grads = _torch.autograd.grad(value, xs, allow_unused=True)
            return _zeros_for_unused(xs, grads)

        if num_arguments == 1:
            return unpack_singleton_sequence_return_value(gradient)
        return gradient

    def generate_hessian_operator(self, function: Callable, num_arguments: int) -> Callable:
        def hessian_vector_product(*args):
            _require_tensors(args, "Hessian")
            points, vectors = bisect_sequence(list(args))
            xs = [p.detach().requires_grad_(True) for p in points]
            with _torch.enable_grad():
                value = _as_scalar_tensor(function(*xs), function.__name__)
                grads = _torch.autograd.grad(value, xs, create_graph=True, allow_unused=True)
                pairs = [(g, v) for g, v in zip(grads, vectors) if g is not None]
                if not pairs or not any(g.requires_grad for g, _ in pairs):
                    return [_torch.zeros_like(x) for x in xs]
                inner = sum((g * v.to(g.dtype)).sum() for g, v in pairs)
                hvps = _torch.autograd.grad(inner, xs, allow_unused=True)
            return [h.detach() for h in _zeros_for_unused(xs, hvps)]

        if num_arguments == 1:
            return unpack_singleton_sequence_return_value(hessian_vector_product)
        return hessian_vector_product


torch = backend_decorator_factory(TorchBackend)
"""Decorator ``@thermanopt.function.torch(manifold)`` for torch costs on any device."""


def numpy(manifold):
    """Pymanopt's plain NumPy decorator (no autodiff), re-exported for symmetry."""
    import pymanopt

    return pymanopt.function.numpy(manifold)


def autograd(manifold):
    """Pymanopt's autograd decorator for NumPy costs, re-exported for symmetry."""
    import pymanopt

    return pymanopt.function.autograd(manifold)
