"""Process-group helpers for commands that run under `torchrun` / `accelerate launch` without an Accelerator
(extract-tokens, sample): a gloo group is enough, since only barriers and small object broadcasts cross ranks.
"""
from __future__ import annotations

import os
from typing import Any


def init_from_env() -> tuple[int, int, int, bool]:
    """(rank, world_size, local_rank, created) from the launcher's RANK/WORLD_SIZE/LOCAL_RANK variables.

    Initialises a gloo process group when WORLD_SIZE > 1 and none exists. `created` is True when this call
    made the group (the caller then destroys it at the end). Without a launcher: (0, 1, 0, False).
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = False
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        dist.init_process_group(backend="gloo")
        created = True
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), created
    return 0, 1, 0, False


def barrier(world: int) -> None:
    """Wait for every rank (no-op for a single process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: Any, world: int) -> Any:
    """Rank 0's `value` (any picklable object) on every rank (identity for a single process)."""
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
