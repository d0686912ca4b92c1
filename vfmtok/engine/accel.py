"""accelerate set-up: one process, DDP over torchrun/`accelerate launch` (multi-GPU, multi-node, CPU gloo).

FSDP is not accelerate's FSDP plugin: the engine shards models itself (vfmtok.engine.fsdp, `train-ar --fsdp`) over
the same process group.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from vfmtok.device import resolve_device


CPU_AUTOCAST_ENV = "VFMTOK_CPU_AUTOCAST"


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group, if one is up, when the interpreter exits (registered once per process).

    accelerate creates the process group of a torchrun / `accelerate launch` process and leaves it up. Left to
    interpreter finalization, gloo's worker threads can outlive the objects they use, and the process aborts with
    "terminate called without an active exception" after its work is done (seen on CPU/gloo after a
    SIGTERM-stopped run). An `atexit` hook runs while the interpreter is still whole; it never runs a collective.
    """
    import atexit

    atexit.unregister(_destroy_process_group)  # one registration however many accelerators a process makes
    atexit.register(_destroy_process_group)


def cpu_autocast_requested() -> bool:
    """True when the environment variable `VFMTOK_CPU_AUTOCAST` is 1/true/yes (CPU mixed-precision emulation)."""
    return os.environ.get(CPU_AUTOCAST_ENV, "").strip().lower() in ("1", "true", "yes")


def make_accelerator(device: str = "auto", mixed_precision: str = "no", find_unused_parameters: bool = False,
                     cpu_autocast: bool | None = None) -> Any:
    """An `accelerate.Accelerator` for training.

    Launched by `torchrun` / `accelerate launch` it runs DDP with one process per device (gloo on CPU). On CPU
    mixed precision is off (fp32) unless `cpu_autocast`, so CPU runs are deterministic; on CUDA `bf16`/`fp16` turn
    on autocast (the tokenizer keeps the deformable attention and quantizer distances in fp32 itself), and `fp16`
    also dynamic loss scaling (a `torch.amp.GradScaler`, stepped by `vfmtok.engine.trainer.Trainer`).

    CPU emulation (`cpu_autocast`): bf16/fp16 autocast on CPU, and for fp16 a CPU `GradScaler` (accelerate itself
    runs fp16 on CPU without autocast or scaler); it exercises the CUDA precision code paths in tests. accelerate
    fixes the precision of the first Accelerator of a process: a later one with another precision raises.

    Args:
        device: 'auto', 'cpu', 'cuda' (a process uses the GPU of its local rank).
        mixed_precision: 'no' | 'bf16' | 'fp16'.
        find_unused_parameters: DDP option, for models with parameters that get no gradient in some steps.
        cpu_autocast: emulate `mixed_precision` on CPU (default: the `VFMTOK_CPU_AUTOCAST` environment variable).

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
    if cpu_autocast is None:
        cpu_autocast = cpu_autocast_requested()
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)]
    accelerator = Accelerator(cpu=cpu, mixed_precision="no" if cpu and not cpu_autocast else mp,
                              kwargs_handlers=handlers)
    if accelerator.num_processes > 1:
        destroy_process_group_at_exit()
    if cpu and cpu_autocast and mp == "fp16":  # what accelerate sets up on CUDA: fp16 autocast + a GradScaler
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")
    return accelerator
