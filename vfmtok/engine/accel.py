"""accelerate set-up: one process, DDP over torchrun/`accelerate launch` (multi-GPU, multi-node, CPU gloo).

FSDP is not accelerate's FSDP plugin: the engine shards models itself (vfmtok.engine.fsdp, `train-ar --fsdp`) over
the same process group.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from vfmtok.device import resolve_device


def make_accelerator(device: str = "auto", mixed_precision: str = "no", find_unused_parameters: bool = False) -> Any:
    """An `accelerate.Accelerator` for training.

    Launched by `torchrun` / `accelerate launch` it runs DDP with one process per device (gloo on CPU). On CPU
    mixed precision is always off (fp32), so CPU runs are deterministic; on CUDA `bf16`/`fp16` turn on autocast
    (the tokenizer keeps the deformable attention and quantizer distances in fp32 itself).

    Args:
        device: 'auto', 'cpu', 'cuda' (a process uses the GPU of its local rank).
        mixed_precision: 'no' | 'bf16' | 'fp16'.
        find_unused_parameters: DDP option, for models with parameters that get no gradient in some steps.

    Raises:
        ValueError: bad device / precision names (see `vfmtok.device.resolve_device`); an accelerate config with
            `distributed_type: FSDP` (accelerate's FSDP plugin would wrap the models behind the engine's back).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1", "yes"):
        raise ValueError("accelerate's FSDP plugin (distributed_type: FSDP in the accelerate config) is not supported "
                         "by the vfmtok engine: launch with a multi-GPU accelerate config or torchrun and pass --fsdp "
                         "to train-ar (docs/train_ar.md, FSDP)")
    mp = getattr(mixed_precision, "value", mixed_precision)
    if mp not in ("no", "bf16", "fp16"):
        raise ValueError(f"--mixed-precision {mp!r}: expected one of no, bf16, fp16")
    resolved = resolve_device(device if device != "cuda" or torch.cuda.is_available() else "cuda")
    cpu = resolved.type == "cpu"
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)]
    return Accelerator(cpu=cpu, mixed_precision="no" if cpu else mp, kwargs_handlers=handlers)
