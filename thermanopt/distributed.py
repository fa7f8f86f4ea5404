"""Start a ``torch.distributed`` job of local processes and collect their results.

``launch(fn, world_size, args, device=...)`` spawns ``world_size`` processes on this
machine (``torch.multiprocessing.spawn``), each joined to one process group over TCP on
``127.0.0.1`` at a free port: the ``nccl`` backend with one GPU per rank
(``torch.cuda.set_device(rank)``) when ``device`` is ``"cuda"``, ``gloo`` on CPUs. Rank
``r`` runs ``fn(r, *args)`` inside the group; ``launch`` returns the ranks' return values
as a list indexed by rank (moved to the CPU). A failure on any rank raises in the caller
with that rank's traceback.

It is what ``thermanopt demo`` uses to spread work over several GPUs, and what the tests
use to run two gloo processes on one CPU. Jobs over several machines are started by
``torchrun`` instead (see the distributed-training guide).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch

__all__ = ["launch", "backend_for"]


def backend_for(device: str | torch.device) -> str:
    """The process-group backend of ``device``: ``"nccl"`` for CUDA, ``"gloo"`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, fn: Callable[..., Any], args: tuple, world_size: int, port: int,
               device: str, out_dir: str, timeout_s: float) -> None:
    """Body of one spawned process: join the group, run ``fn``, save its return value."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=timeout_s))
    try:
        result = fn(rank, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _check(world_size: int, device: str) -> None:
    import torch.distributed as dist

    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed")
    if backend_for(device) == "gloo" and not dist.is_gloo_available():
        raise ValueError("the gloo backend is not available in this torch build")
    if backend_for(device) == "nccl":
        if not dist.is_nccl_available():
            raise ValueError("device is CUDA but this torch build has no NCCL backend")
        if world_size > torch.cuda.device_count():
            raise ValueError(
                f"world_size={world_size} needs one GPU per rank, but "
                f"{torch.cuda.device_count()} CUDA device(s) are visible"
            )


def launch(fn: Callable[..., Any], world_size: int, args: Sequence[Any] = (), *,
           device: str = "cpu", timeout_s: float = 120.0) -> list[Any]:
    """Run ``fn(rank, *args)`` on ``world_size`` local processes joined to one group.

    ``fn`` must be picklable (a module-level function) and every rank must make the same
    collective calls. ``device``: ``"cpu"`` (gloo) or ``"cuda"`` (NCCL, rank ``r`` on
    ``cuda:r``; ``world_size`` must not exceed the visible GPUs). ``timeout_s`` bounds
    each collective. Returns ``[fn(0, *args), ..., fn(world_size - 1, *args)]``, loaded
    onto the CPU. Raises ``ValueError`` for a bad ``world_size`` or a missing backend, and
    ``torch.multiprocessing.ProcessRaisedException`` when a rank fails.
    """
    import torch.multiprocessing as mp

    _check(world_size, device)
    with tempfile.TemporaryDirectory(prefix="thermanopt-launch-") as out_dir:
        mp.spawn(
            _rank_main,
            args=(fn, tuple(args), world_size, _free_port(), str(device), out_dir,
                  float(timeout_s)),
            nprocs=world_size,
            join=True,
        )
        return [
            torch.load(os.path.join(out_dir, f"rank{r}.pt"), map_location="cpu",
                       weights_only=False)
            for r in range(world_size)
        ]
