"""Minibatch problems for the stochastic optimizers.

:class:`StochasticProblem` ``(manifold, cost, n_samples, batch_size=None,
euclidean_gradient=None)`` describes a finite-sum cost

    f(x) = mean_{i < n_samples} f_i(x),     cost(point, batch) = mean_{i in batch} f_i(point),

where ``batch`` is a 1-D integer index array (a NumPy array for NumPy points, a
``torch.long`` tensor on the point's device for torch points). Without
``euclidean_gradient`` the gradient comes from automatic differentiation (torch autograd for
tensors, HIPS autograd for NumPy arrays). Batches are drawn by random reshuffling
(``sampling="shuffle"``, every sample once per epoch) or with replacement; a batch size of
None (or >= n_samples) gives full-batch steps. A plain ``pymanopt.Problem`` is accepted by
the optimizers too (:func:`as_stochastic`): its cost and Riemannian gradient are used as
they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pymanopt

from .._backend import arange_like, no_grad, random_indices, value_and_grad

Array = Any

__all__ = ["StochasticProblem", "as_stochastic"]


class StochasticProblem:
    """A finite-sum cost on a manifold, evaluated on minibatches.

    Args:
        manifold: a Pymanopt manifold (ours or Pymanopt's).
        cost: ``cost(point, batch) -> scalar``, the mean loss over the samples
            indexed by ``batch`` (1-D integer array; a ``torch.long`` tensor on
            the point's device for torch points).
        n_samples: number of samples n.
        batch_size: samples per step; None or >= n means full batch.
        euclidean_gradient: optional ``egrad(point, batch)``; default autodiff.
        sampling: ``"shuffle"`` (random reshuffling each epoch) or
            ``"replacement"`` (i.i.d. uniform indices).
    """

    def __init__(
        self,
        manifold: Any,
        cost: Callable[[Array, Array], Any],
        n_samples: int,
        batch_size: int | None = None,
        euclidean_gradient: Callable[[Array, Array], Array] | None = None,
        sampling: str = "shuffle",
    ) -> None:
        if int(n_samples) != n_samples or int(n_samples) < 1:
            raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
        if batch_size is not None and (int(batch_size) != batch_size or int(batch_size) < 1):
            raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
        if sampling not in ("shuffle", "replacement"):
            raise ValueError(f"sampling must be 'shuffle' or 'replacement', got {sampling!r}")
        if not callable(cost):
            raise ValueError("cost must be callable as cost(point, batch)")
        self.manifold = manifold
        self._cost = cost
        self._egrad = euclidean_gradient
        self.n_samples = int(n_samples)
        self.batch_size = (
            None if batch_size is None or int(batch_size) >= self.n_samples else int(batch_size)
        )
        self.sampling = sampling
        self._perm = None
        self._pos = 0
        self._full: dict = {}

    @property
    def full_batch(self) -> bool:
        return self.batch_size is None

    def all_indices(self, like: Array) -> Array:
        """arange(n) in the index type of ``like`` (cached)."""
        key = (type(like), str(getattr(like, "device", None)))
        if key not in self._full:
            self._full[key] = arange_like(self.n_samples, like)
        return self._full[key]

    def sample_batch(self, like: Array, generator: Any) -> Array:
        """Indices of the next minibatch (on the device of ``like``, no host transfer)."""
        if self.batch_size is None:
            return self.all_indices(like)
        n, b = self.n_samples, self.batch_size
        if self.sampling == "replacement":
            return random_indices(n, b, like, generator)
        if self._perm is None or self._pos + b > n:
            self._perm = random_indices(n, None, like, generator)
            self._pos = 0
        batch = self._perm[self._pos : self._pos + b]
        self._pos += b
        return batch

    def cost(self, point: Array, batch: Array | None = None) -> Any:
        """Mean cost over ``batch`` (all samples when None)."""
        if batch is None:
            batch = self.all_indices(point)
        with no_grad(point):
            return self._cost(point, batch)

    def cost_and_euclidean_gradient(self, point: Array, batch: Array) -> tuple[Any, Array]:
        """(f_B(x), nabla f_B(x)) of the minibatch ``batch`` (indices into the samples)."""
        if self._egrad is not None:
            return self.cost(point, batch), self._egrad(point, batch)
        return value_and_grad(self._cost, point, batch)

    def cost_and_riemannian_gradient(self, point: Array, batch: Array) -> tuple[Any, Array]:
        """(f_B(x), grad f_B(x)): the minibatch cost and its Riemannian gradient."""
        value, g = self.cost_and_euclidean_gradient(point, batch)
        return value, self.manifold.euclidean_to_riemannian_gradient(point, g)

    def euclidean_gradient(self, point: Array, batch: Array | None = None) -> Array:
        """Euclidean gradient of the minibatch cost (all samples when ``batch`` is None)."""
        if batch is None:
            batch = self.all_indices(point)
        return self.cost_and_euclidean_gradient(point, batch)[1]

    def riemannian_gradient(self, point: Array, batch: Array | None = None) -> Array:
        """Riemannian gradient of the minibatch cost (all samples when ``batch`` is None)."""
        if batch is None:
            batch = self.all_indices(point)
        return self.cost_and_riemannian_gradient(point, batch)[1]


class _PymanoptAdapter:
    """A ``pymanopt.Problem`` seen through the minibatch protocol (batch ignored)."""

    full_batch = True

    def __init__(self, problem: Any) -> None:
        self.problem = problem
        self.manifold = problem.manifold

    def sample_batch(self, like: Array, generator: Any) -> None:
        return None

    def cost(self, point: Array, batch: Any = None) -> Any:
        return self.problem.cost(point)

    def cost_and_riemannian_gradient(self, point: Array, batch: Any) -> tuple[Any, Array]:
        """Full-batch cost and Riemannian gradient of the wrapped Pymanopt problem."""
        return self.problem.cost(point), self.problem.riemannian_gradient(point)


def as_stochastic(problem: Any):
    """A StochasticProblem as is, or a pymanopt.Problem seen through the minibatch protocol."""
    if isinstance(problem, StochasticProblem):
        return problem
    if isinstance(problem, pymanopt.Problem):
        return _PymanoptAdapter(problem)
    raise ValueError(
        "problem must be a thermanopt StochasticProblem or a pymanopt Problem, "
        f"got {type(problem).__name__}"
    )
