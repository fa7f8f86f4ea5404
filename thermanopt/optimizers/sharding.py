"""Langevin chains sharded over the ranks of a ``torch.distributed`` process group.

Chains are independent, so a sampler runs rank r's share of them on rank r: with W ranks
and n chains, rank r owns chains [start_r, start_r + n_r) with n_r = n // W + (r < n % W).
Each rank draws from its own generator, seeded from ``numpy.random.SeedSequence(seed)
.spawn(W)[r]`` (reproducible for a fixed seed and world size, distinct across ranks), and
the kept states can be gathered in chain order with one ``all_gather`` (padded to the
largest shard). On GPUs the group's backend is NCCL, on CPUs gloo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import as_tensor

Array = Any

__all__ = ["ChainShard", "chain_shard"]


def chain_shard(n_chains: int, rank: int, world_size: int) -> slice:
    """The chains of ``rank``: a contiguous slice, sizes differing by at most one."""
    base, extra = divmod(int(n_chains), int(world_size))
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


@dataclass(frozen=True)
class ChainShard:
    """This process's chains and generator seed (the whole batch without a group)."""

    chains: slice
    total: int
    seed: Any
    rank: int = 0
    world_size: int = 1
    group: Any = None

    @classmethod
    def of(cls, process_group: Any, n_chains: int, seed: Any) -> ChainShard:
        """The shard of this rank in ``process_group`` (None: one process owns all)."""
        group = _resolve(process_group)
        if group is None:
            return cls(slice(0, n_chains), n_chains, seed)
        import torch.distributed as dist

        rank, world = dist.get_rank(group), dist.get_world_size(group)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(
                "sharded chains need an integer seed as generator (each rank spawns its own "
                f"generator from it), got {type(seed).__name__}"
            )
        if n_chains < world:
            raise ValueError(f"n_chains={n_chains} is smaller than the {world} ranks")
        chains = chain_shard(n_chains, rank, world)
        child = np.random.SeedSequence(int(seed)).spawn(world)[rank]
        rank_seed = int(child.generate_state(1, dtype=np.uint32)[0])
        return cls(chains, n_chains, rank_seed, rank, world, group)

    @property
    def count(self) -> int:
        """Chains on this rank."""
        return self.chains.stop - self.chains.start

    def gather(self, kept: Array) -> Array:
        """All ranks' kept states (axis 1 = chains, in chain order), on every rank."""
        if self.group is None:
            return kept
        import torch
        import torch.distributed as dist

        local, restore = as_tensor(kept)
        pad = max(self._counts()) - local.shape[1]
        if pad:
            local = torch.cat([local, local[:, :pad] * 0], dim=1)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.contiguous(), group=self.group)
        out = torch.cat([p[:, :n] for p, n in zip(parts, self._counts())], dim=1)
        return restore(out)

    def _counts(self) -> list[int]:
        shards = [chain_shard(self.total, r, self.world_size) for r in range(self.world_size)]
        return [c.stop - c.start for c in shards]


def _resolve(process_group: Any) -> Any:
    if process_group is None:
        return None
    import torch.distributed as dist

    if isinstance(process_group, str):
        if process_group != "auto":
            raise ValueError(
                f"process_group must be a group, 'auto' or None, got {process_group!r}"
            )
        if not (dist.is_available() and dist.is_initialized()):
            return None
        return dist.group.WORLD
    return process_group
