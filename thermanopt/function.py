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

**One evaluation per point.** Pymanopt's solvers ask for the cost, the gradient and
(TrustRegions) many Hessian-vector products at the same point, and a line search's
accepted trial point comes back as the next iterate. The backend keeps the evaluation of
the last point it saw (the point objects themselves, checked by identity and by
``Tensor._version`` so that an in-place change is noticed): a cost already computed is
returned without recomputation, a gradient gives the cost for free, and the gradient
and all Hessian-vector products at one point share one forward and one
``create_graph`` backward; each product is then one vector-Jacobian product of the
gradient with ``u`` through the retained graph (a gradient keeps its graph once the
solver has asked for a Hessian-vector product).
The cost must therefore be a deterministic function of its arguments, as Pymanopt
assumes anyway.

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
    if value.dim() == 0:
        return value
    if value.numel() != 1:
        raise ValueError(f"the cost must return a scalar, got shape {tuple(value.shape)} ({name})")
    return value.reshape(())


def _zeros_for_unused(xs, grads):
    return [_torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads)]


class _PointCache:
    """What is known at the last point: the cost, the gradient, the gradient's graph.

    The point's tensors are held (so that their ``id`` cannot be reused) together with
    their ``_version`` counters; any other point, or an in-place change, is a miss.
    """

    __slots__ = ("args", "versions", "value", "grads", "xs", "graph_grads", "grad_versions")

    def __init__(self) -> None:
        self.args: tuple = ()
        self.versions: tuple = ()
        self.clear()

    def clear(self) -> None:
        self.value = None
        self.grads = None
        self.grad_versions: tuple = ()
        self.xs = None
        self.graph_grads = None

    def at(self, args: Sequence) -> _PointCache:
        """Switch to the point ``args`` (keeping what is known if it is the same point)."""
        versions = tuple(a._version for a in args)
        same = (
            len(args) == len(self.args)
            and all(a is b for a, b in zip(args, self.args))
            and versions == self.versions
        )
        if not same:
            self.args, self.versions = tuple(args), versions
            self.clear()
        elif self.grads is not None and self.grad_versions != tuple(g._version for g in self.grads):
            # a caller modified a returned gradient in place (it may share storage with
            # the kept graph's gradient): start this point again, keeping only the cost
            value = self.value
            self.clear()
            self.value = value
        return self

    def set_grads(self, grads: list) -> None:
        self.grads = grads
        self.grad_versions = tuple(g._version for g in grads)


def _detach(g):
    return None if g is None else g.detach()


def _build_graph(known: _PointCache, function: Callable, points: Sequence) -> None:
    """One forward and one ``create_graph`` backward at ``points``, kept in ``known``."""
    xs = [p.detach().requires_grad_(True) for p in points]
    with _torch.enable_grad():
        value = _as_scalar_tensor(function(*xs), function.__name__)
        known.graph_grads = _torch.autograd.grad(value, xs, create_graph=True, allow_unused=True)
    known.xs = xs
    if known.value is None:
        known.value = value.detach()


class TorchBackend(Backend):
    """Pymanopt autodiff backend on torch tensors of any device (no NumPy round trip)."""

    def __init__(self) -> None:
        super().__init__("thermanopt-torch")
        self._caches: dict[int, tuple[Callable, _PointCache]] = {}
        # once a Hessian-vector product was asked for, gradients keep their graph (the
        # products at that point will reuse it instead of a second forward/backward)
        self._second_order = False

    @staticmethod
    def is_available() -> bool:
        return True

    def _cache(self, function: Callable) -> _PointCache:
        entry = self._caches.get(id(function))
        if entry is None or entry[0] is not function:
            entry = (function, _PointCache())
            self._caches[id(function)] = entry
        return entry[1]

    def prepare_function(self, function: Callable) -> Callable:
        cache = self._cache(function)

        @functools.wraps(function)
        def cost(*args):
            _require_tensors(args, "cost")
            known = cache.at(args)
            if known.value is None:
                with _torch.no_grad():
                    known.value = _as_scalar_tensor(function(*args), function.__name__)
            if isinstance(known.value, _torch.Tensor):  # the one host transfer per point
                known.value = float(known.value)
            return known.value

        return cost

    def generate_gradient_operator(self, function: Callable, num_arguments: int) -> Callable:
        cache = self._cache(function)

        def gradient(*args):
            _require_tensors(args, "gradient")
            known = cache.at(args)
            if known.grads is None:
                if known.graph_grads is None and self._second_order:
                    _build_graph(known, function, args)  # Hessian products will follow
                if known.graph_grads is not None:  # from a Hessian-vector product here
                    grads = _zeros_for_unused(known.xs, [_detach(g) for g in known.graph_grads])
                else:
                    xs = [a.detach().requires_grad_(True) for a in args]
                    with _torch.enable_grad():
                        value = _as_scalar_tensor(function(*xs), function.__name__)
                        grads = _zeros_for_unused(
                            xs, _torch.autograd.grad(value, xs, allow_unused=True)
                        )
                    if known.value is None:
                        known.value = value.detach()  # turned into a float only if asked
                known.set_grads(grads)
            return list(known.grads)

        if num_arguments == 1:
            return unpack_singleton_sequence_return_value(gradient)
        return gradient

    def generate_hessian_operator(self, function: Callable, num_arguments: int) -> Callable:
        cache = self._cache(function)

        def hessian_vector_product(*args):
            _require_tensors(args, "Hessian")
            points, vectors = bisect_sequence(list(args))
            known = cache.at(points)
            self._second_order = True
            if known.xs is None:  # one forward and one create_graph backward per point
                _build_graph(known, function, points)
            xs, grads = known.xs, known.graph_grads
            # H u as the vector-Jacobian product of the gradient with u (H is symmetric):
            # one backward through the retained graph, no inner product to differentiate
            pairs = [
                (g, v if v.dtype == g.dtype else v.to(g.dtype))
                for g, v in zip(grads, vectors)
                if g is not None and g.requires_grad
            ]
            if not pairs:
                return [_torch.zeros_like(x) for x in xs]
            with _torch.enable_grad():
                hvps = _torch.autograd.grad(
                    [g for g, _ in pairs],
                    xs,
                    grad_outputs=[v for _, v in pairs],
                    retain_graph=True,
                    allow_unused=True,
                )
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
