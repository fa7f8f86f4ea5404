"""Array dispatch: one implementation for NumPy arrays and torch tensors.

Mechanism
---------
The mathematics of thermanopt is written once against the Python array API
standard. :func:`namespace` returns the array-API namespace of its arguments
through ``array_api_compat`` (``array_api_compat.numpy`` or
``array_api_compat.torch``), so ``xp.linalg.svd``, ``xp.matmul``, ``xp.expm1``
and friends behave the same on both. The few operations the standard lacks
(matrix exponential, ``einsum``, seeded random numbers, host scalars) live here
as small functions that dispatch on the array type. This module is the only
place in the package that knows which array libraries exist.

Device and dtype
----------------
Results keep the device and dtype of the inputs. Nothing here moves data to
the host except :func:`to_float`, which is meant for the scalars that Pymanopt
solvers log. Mixing array types, devices or dtypes raises ``ValueError``.

Randomness
----------
Random arrays come from an explicit generator: a ``numpy.random.Generator``
for NumPy, a ``torch.Generator`` for torch, or an integer seed from which
:func:`make_generator` builds the right one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

try:  # torch is a hard dependency, but keep import errors readable
    import torch
except ImportError:  # pragma: no cover
    torch = None

__all__ = [
    "ArraySpec",
    "namespace",
    "is_torch",
    "check_compatible",
    "check_finite",
    "check_real_float",
    "quiet_overflow",
    "to_float",
    "einsum",
    "expm",
    "make_generator",
    "random_normal",
    "spec_of",
    "eps",
    "matrix_transpose",
]

Array = Any


def is_torch(x: Array) -> bool:
    """True for a torch tensor."""
    return torch is not None and isinstance(x, torch.Tensor)


def check_compatible(*arrays: Array, names: tuple[str, ...] | None = None) -> None:
    """Raise ``ValueError`` unless all arrays share array type, device and dtype."""
    arrays = tuple(a for a in arrays if a is not None)
    if len(arrays) < 2:
        return
    labels = names or tuple(f"argument {i}" for i in range(len(arrays)))
    kinds = {is_torch(a) for a in arrays}
    if len(kinds) > 1:
        raise ValueError(
            "mixed array types: "
            + ", ".join(f"{n} is {type(a).__name__}" for n, a in zip(labels, arrays))
        )
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        raise ValueError(
            "mixed dtypes: " + ", ".join(f"{n} is {a.dtype}" for n, a in zip(labels, arrays))
        )
    if is_torch(arrays[0]):
        devices = {a.device for a in arrays}
        if len(devices) > 1:
            raise ValueError(
                "mixed devices: "
                + ", ".join(f"{n} is on {a.device}" for n, a in zip(labels, arrays))
            )


def namespace(*arrays: Array):
    """Array-API namespace shared by ``arrays`` (``ValueError`` if they mix).

    Fast path for the common case (all torch tensors of one device and dtype,
    or all NumPy arrays of one dtype); anything else goes through
    :func:`check_compatible` and ``array_api_compat``.
    """
    first = arrays[0]
    if torch is not None and type(first) is torch.Tensor:
        if all(
            type(a) is torch.Tensor and a.dtype == first.dtype and a.device == first.device
            for a in arrays[1:]
        ):
            return _TORCH_NAMESPACE
    elif type(first) is np.ndarray and all(
        type(a) is np.ndarray and a.dtype == first.dtype for a in arrays[1:]
    ):
        return _NUMPY_NAMESPACE
    check_compatible(*arrays)
    try:
        return array_api_compat.array_namespace(*(a for a in arrays if a is not None))
    except TypeError as exc:
        raise ValueError(f"unsupported array type: {exc}") from None


_NUMPY_NAMESPACE = array_api_compat.array_namespace(np.zeros(1))
_TORCH_NAMESPACE = array_api_compat.array_namespace(torch.zeros(1)) if torch is not None else None


def matrix_transpose(x: Array) -> Array:
    """Swap the last two axes."""
    return x.mT if is_torch(x) else np.swapaxes(x, -1, -2)


def check_finite(x: Array, name: str = "input") -> None:
    """Raise ``ValueError`` if ``x`` has a NaN or infinite entry.

    On torch this synchronises once (one boolean to the host); call it on
    inputs at API boundaries, not inside solver inner loops.
    """
    if is_torch(x):
        ok = bool(torch.isfinite(x).all())
    else:
        ok = bool(np.isfinite(x).all())
    if not ok:
        raise ValueError(f"{name} contains NaN or infinite entries")


_LINALG_DTYPES = ("float32", "float64")
_FAST_DTYPES = (np.dtype(np.float64), np.dtype(np.float32)) + (
    (torch.float64, torch.float32) if torch is not None else ()
)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def check_real_float(x: Array, name: str = "input") -> None:
    """``TypeError`` unless ``x`` is an array (NumPy, torch, or an autodiff box of one);
    ``ValueError`` unless its dtype is float32 or float64 (what SVD and QR support).

    Reads only metadata (no host transfer), so it is safe inside traces and ``vmap``.
    """
    dtype = getattr(x, "dtype", None)
    for ok in _FAST_DTYPES:  # identity checks: the common case costs well under 1 us
        if dtype is ok:
            return
    if dtype is None or not hasattr(x, "shape") or isinstance(x, (list, tuple)):
        raise TypeError(f"{name} must be a NumPy array or torch tensor, got {type(x).__name__}")
    if _dtype_name(dtype) not in _LINALG_DTYPES:
        raise ValueError(
            f"{name} has dtype {_dtype_name(dtype)}; use float32 or float64 (the SVD and QR "
            "of the geometry need them)"
        )


def quiet_overflow():
    """A context in which NumPy's overflow / invalid-value warnings are silent.

    For kernels that mark overflowing batch entries NaN on purpose (the unchecked
    retractions); torch does not warn there.
    """
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def to_float(x: Array) -> float:
    """A Python float from a 0-d array (the only host transfer in this module)."""
    if is_torch(x):
        return float(x.item())
    return float(x)


def eps(x: Array) -> float:
    """Machine epsilon of the floating dtype of ``x``."""
    if is_torch(x):
        return float(torch.finfo(x.dtype).eps)
    return float(np.finfo(np.asarray(x).dtype).eps)


def einsum(subscripts: str, *operands: Array) -> Array:
    """``einsum`` of NumPy or torch, by operand type."""
    if is_torch(operands[0]):
        return torch.einsum(subscripts, *operands)
    return np.einsum(subscripts, *operands, optimize=True)


def expm(x: Array) -> Array:
    """Matrix exponential over the last two axes (batched)."""
    if is_torch(x):
        return torch.linalg.matrix_exp(x)
    from scipy.linalg import expm as _expm

    return _expm(x)


@dataclass(frozen=True)
class ArraySpec:
    """Where new arrays are made: ``backend`` ("numpy" or "torch"), device and dtype.

    Manifolds hold one so that ``random_point`` and ``zero_vector`` allocate
    on the right device with the right dtype. Construction raises ``ValueError`` for a
    dtype other than float32/float64 (float16 and bfloat16 have no SVD or QR) and for a
    torch device this machine lacks (``device="cuda"`` without CUDA).
    """

    backend: str = "numpy"
    device: Any = None
    dtype: Any = None

    def __post_init__(self) -> None:
        if self.backend not in ("numpy", "torch"):
            raise ValueError(f"backend must be 'numpy' or 'torch', got {self.backend!r}")
        if self.backend == "numpy" and self.device not in (None, "cpu"):
            raise ValueError(f"NumPy arrays live on the CPU; got device={self.device!r}")
        try:
            dtype = self.resolved_dtype
        except (TypeError, ValueError, AttributeError):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}") from None
        if _dtype_name(dtype) not in _LINALG_DTYPES:
            raise ValueError(
                f"dtype must be float32 or float64, got {_dtype_name(dtype)} (the SVD and QR "
                "of the geometry need single or double precision)"
            )
        if self.backend == "torch":
            _check_torch_device(self.device)

    @property
    def resolved_dtype(self):
        if self.backend == "torch":
            if self.dtype is None:
                return torch.float64
            if isinstance(self.dtype, str):
                return getattr(torch, self.dtype)
            if isinstance(self.dtype, torch.dtype):
                return self.dtype
            return getattr(torch, np.dtype(self.dtype).name)
        if self.dtype is None:
            return np.dtype(np.float64)
        if torch is not None and isinstance(self.dtype, torch.dtype):
            return np.dtype(str(self.dtype).removeprefix("torch."))
        return np.dtype(self.dtype)

    @property
    def resolved_device(self):
        if self.backend == "torch":
            return torch.device(self.device if self.device is not None else "cpu")
        return None

    def asarray(self, x: Array) -> Array:
        """Convert ``x`` into this spec's array type, device and dtype."""
        if self.backend == "torch":
            if is_torch(x):
                return x.to(device=self.resolved_device, dtype=self.resolved_dtype)
            return torch.as_tensor(
                np.asarray(x), dtype=self.resolved_dtype, device=self.resolved_device
            )
        if is_torch(x):
            x = x.detach().cpu().numpy()
        return np.asarray(x, dtype=self.resolved_dtype)

    def zeros(self, shape: tuple[int, ...]) -> Array:
        if self.backend == "torch":
            return torch.zeros(shape, dtype=self.resolved_dtype, device=self.resolved_device)
        return np.zeros(shape, dtype=self.resolved_dtype)

    def eye(self, n: int) -> Array:
        if self.backend == "torch":
            return torch.eye(n, dtype=self.resolved_dtype, device=self.resolved_device)
        return np.eye(n, dtype=self.resolved_dtype)

    def generator(self, seed: Any = None):
        """A generator for this spec (see :func:`make_generator`)."""
        return make_generator(seed, self)

    def randn(self, shape: tuple[int, ...], generator: Any = None) -> Array:
        """Standard normal array of ``shape``; ``generator`` is a generator or seed."""
        return random_normal(shape, self, generator)

    def check(self, x: Array, name: str = "point") -> None:
        """Raise ``ValueError`` if ``x`` is not of this spec's type, device and dtype."""
        if self.backend == "torch":
            if not is_torch(x):
                raise ValueError(f"{name} must be a torch tensor, got {type(x).__name__}")
            if x.dtype != self.resolved_dtype:
                raise ValueError(f"{name} has dtype {x.dtype}, expected {self.resolved_dtype}")
            dev = self.resolved_device
            if x.device.type != dev.type or (dev.index is not None and x.device.index != dev.index):
                raise ValueError(f"{name} is on {x.device}, expected {dev}")
        else:
            if is_torch(x):
                raise ValueError(f"{name} must be a NumPy array, got a torch tensor")


def _check_torch_device(device: Any) -> None:
    """``ValueError`` for a device torch cannot parse or that this machine does not have."""
    try:
        dev = torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a torch device; use 'cpu' or 'cuda'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available here; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available here; use 'cpu'")


def spec_of(x: Array) -> ArraySpec:
    """The :class:`ArraySpec` that makes arrays like ``x``."""
    if is_torch(x):
        return ArraySpec("torch", x.device, x.dtype)
    return ArraySpec("numpy", None, np.asarray(x).dtype)


def make_generator(seed: Any = None, spec: ArraySpec | None = None):
    """Random generator for ``spec``'s backend.

    ``seed`` may already be a generator of the right kind (returned as is), an
    integer seed >= 0, or None (fresh entropy); anything else is a ``TypeError`` naming
    ``generator``. A NumPy generator passed to a torch
    spec seeds a torch generator from it, so one seed drives both.
    """
    spec = spec or ArraySpec()
    _check_seed(seed)
    if spec.backend == "torch":
        if isinstance(seed, torch.Generator):
            return seed
        device = spec.resolved_device
        gen = torch.Generator(device=device)
        if seed is None:
            gen.seed()
        elif isinstance(seed, np.random.Generator):
            gen.manual_seed(int(seed.integers(0, 2**63 - 1)))
        else:
            gen.manual_seed(int(seed))
        return gen
    if isinstance(seed, np.random.Generator):
        return seed
    if torch is not None and isinstance(seed, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=seed)))
    return np.random.default_rng(seed)


def _check_seed(seed: Any) -> None:
    """``TypeError`` unless ``seed`` is None, an integer or a NumPy / torch generator."""
    if seed is None or isinstance(seed, np.random.Generator):
        return
    if torch is not None and isinstance(seed, torch.Generator):
        return
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"generator: an integer seed must be >= 0, got {seed}")
        return
    raise TypeError(
        "generator must be None, an integer seed, a numpy.random.Generator or a "
        f"torch.Generator, got {type(seed).__name__} {seed!r}"
    )


def random_normal(shape: tuple[int, ...], spec: ArraySpec, generator: Any = None) -> Array:
    """Standard normal array of ``shape`` made by ``spec`` from ``generator``."""
    gen = make_generator(generator, spec)
    if spec.backend == "torch":
        return torch.randn(
            shape, generator=gen, dtype=spec.resolved_dtype, device=spec.resolved_device
        )
    return gen.standard_normal(shape).astype(spec.resolved_dtype, copy=False)


# ---------------------------------------------------------------- autodiff and indices


def value_and_grad(fn: Any, point: Array, *args: Any) -> tuple[Any, Array]:
    """(fn(point, *args), its gradient in point): torch autograd or HIPS autograd.

    torch: the value comes back detached as a 0-d tensor; ``ValueError`` unless ``fn``
    returns one scalar tensor. A cost that ignores ``point`` has gradient zero.
    """
    if is_torch(point):
        x = point.detach().requires_grad_(True)
        with torch.enable_grad():
            value = fn(x, *args)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise ValueError("the cost must return a scalar torch tensor")
            (g,) = torch.autograd.grad(value.reshape(()), x, allow_unused=True)
        return value.detach().reshape(()), (torch.zeros_like(point) if g is None else g)
    import autograd

    return autograd.value_and_grad(lambda p: fn(p, *args))(point)


def no_grad(x: Array):
    """``torch.no_grad()`` for tensors, a null context for NumPy arrays."""
    import contextlib

    return torch.no_grad() if is_torch(x) else contextlib.nullcontext()


def arange_like(n: int, like: Array) -> Array:
    """Integer indices 0..n-1 in the index type and on the device of ``like``."""
    if is_torch(like):
        return torch.arange(n, device=like.device)
    return np.arange(n)


def random_indices(n: int, size: int | None, like: Array, generator: Any) -> Array:
    """``size`` i.i.d. uniform indices in [0, n), or a random permutation when size is None."""
    if is_torch(like):
        if size is None:
            return torch.randperm(n, generator=generator, device=like.device)
        return torch.randint(0, n, (size,), generator=generator, device=like.device)
    return generator.permutation(n) if size is None else generator.integers(0, n, size=size)


# ---------------------------------------------------------------- caching and devices


def copy(x: Array) -> Array:
    """A copy of ``x`` (same type, device and dtype)."""
    return x.clone() if is_torch(x) else np.array(x, copy=True)


def content_key(x: Array) -> Any:
    """A key that changes whenever ``x`` is modified (torch: version counter and storage;
    NumPy: a copy of the contents)."""
    return (x._version, x.data_ptr()) if is_torch(x) else np.array(x, copy=True)


def same_content(x: Array, key: Any) -> bool:
    """True when ``x`` still has the contents recorded by :func:`content_key`."""
    if is_torch(x):
        return key == (x._version, x.data_ptr())
    return x.shape == key.shape and bool((x == key).all())


def on_accelerator(x: Array) -> bool:
    """True for a tensor on a device other than the CPU (host checks cost a sync there)."""
    return is_torch(x) and x.device.type != "cpu"


def vmap_gradient(fn: Any, example: Array) -> Any:
    """``torch.func.vmap(torch.func.grad(fn))`` when it works on ``example[:1]``, else None
    (NumPy arrays, or a function that torch.func cannot transform)."""
    if not is_torch(example):
        return None
    try:
        vg = torch.func.vmap(torch.func.grad(fn))
        vg(example[:1])  # probe
    except Exception:  # noqa: BLE001 - any failure: the caller loops over points
        return None
    return vg


def device_of(x: Array) -> Any:
    """The torch device of a tensor, None for NumPy arrays (the ``device=`` of array-API calls)."""
    return x.device if is_torch(x) else None


def as_tensor(x: Array) -> tuple[Any, Any]:
    """(a torch tensor with the data of x, a function that turns such tensors back into x's
    array type) -- for torch-only operations such as collectives."""
    if is_torch(x):
        return x, lambda t: t
    return torch.as_tensor(np.asarray(x)), lambda t: t.numpy()
