"""FSDP for the engine: torch's FSDP2 (`torch.distributed.fsdp.fully_shard`), sharded EMA, sharded checkpoints.

Design (docs/train_ar.md, "FSDP"):

* Sharding: `shard_model` applies `fully_shard` to every block of the given types (one FSDP unit per
  `TransformerBlock` for the GPT) and then to the root (embeddings, final norm, head). Parameters become `DTensor`s
  sharded along dim 0 over all ranks (FULL_SHARD / ZeRO-3); each rank stores 1/world of every parameter, gradient
  and AdamW moment, always in fp32. With `--grad-accum` the gradients are reduce-scattered after every
  micro-batch (no `no_sync`), so unsharded gradients never accumulate.
* Mixed precision (`training_policy`): a bf16 run all-gathers the blocks' parameters in bf16 (half the traffic)
  and reduce-scatters their gradients in fp32 (FSDP2 `MixedPrecisionPolicy`); the root unit (embeddings, final
  norm, head) keeps fp32 parameters so that the residual stream starts in fp32, and unit inputs are not cast.
  Compute still runs under the run's autocast, so the matmuls see the same bf16 operands as a DDP run
  (docs/precision.md). An fp32 run has no policy (fp32 all-gathers).
* EMA: `vfmtok.engine.ema.EMA` keeps the shadow as `DTensor`s with the parameters' sharding; each rank updates
  only its local shard (same order on every rank). Nothing is gathered during training; the shadow is gathered
  parameter by parameter only for the export (`full_state_dict`).
* Checkpoints: model, optimizer and EMA of FSDP models go to `step_N/sharded/`, written by every rank with
  `torch.distributed.checkpoint` (DCP; one `__{rank}_0.distcp` file per rank plus `.metadata`), inside the same
  atomic temp-dir + rename as the rest of the checkpoint (vfmtok.engine.checkpoint). DCP reshards on load, so a
  checkpoint also loads with another number of processes. `dcp_to_torch_save(step_N/sharded, file.pt)`
  (`torch.distributed.checkpoint.format_utils`) converts it to one plain file without any process group.

We use FSDP2 directly rather than accelerate's FSDP plugin: accelerate enables its plugin only on GPUs, and the
engine needs to own the state dicts (EMA, atomic keep-last-K checkpoints) anyway.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

SHARDED_DIR = "sharded"  # sub-directory of a checkpoint with the DCP files of the FSDP models


def is_fsdp(module: nn.Module) -> bool:
    """True when `module` was sharded with `fully_shard` (is an FSDP2 `FSDPModule`)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def is_dtensor(t: Any) -> bool:
    """True for a `torch.distributed.tensor.DTensor` (a sharded FSDP parameter, gradient or EMA shadow)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view sharing its storage: in-place ops update the DTensor); else `t`."""
    return t.to_local() if is_dtensor(t) else t


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The full (unsharded) value of a DTensor, on every rank (collective: all ranks must call it); else `t`."""
    return t.full_tensor() if is_dtensor(t) else t


def shard_model(model: nn.Module, block_types: Iterable[type], device: torch.device,
                param_dtype: torch.dtype | None = None, reduce_dtype: torch.dtype | None = None,
                root_fp32: bool = False) -> nn.Module:
    """Shard `model` in place with FSDP2: one unit per submodule of `block_types`, then the root.

    Every rank must call it with the same, identically initialised model (the engine seeds the initialisation
    with --seed only). Parameters are moved to `device` and replaced by dim-0-sharded DTensors (fp32 kept);
    build the optimizer afterwards.

    Args:
        model: the module (e.g. a `GPT`). block_types: classes wrapped as their own FSDP unit (e.g.
            `TransformerBlock`). device: this rank's device (its type names the device mesh: 'cpu' (gloo) or 'cuda').
        param_dtype, reduce_dtype: FSDP2 `MixedPrecisionPolicy`: all-gather and compute with the parameters in
            `param_dtype` (e.g. bf16: half the all-gather traffic) and reduce-scatter gradients in `reduce_dtype`
            (e.g. fp32); the sharded parameters, their gradients and the optimizer state stay fp32. Floating
            inputs of the units are not cast (`cast_forward_inputs=False`): the GPT's fp32 RoPE table and an fp32
            residual stream reach the blocks unchanged; run the forward under autocast to give the matmuls
            `param_dtype` operands. None (default) for both: no policy (fp32 all-gathers).
        root_fp32: apply the policy to the block units only; the root unit (e.g. the GPT's embeddings, final norm
            and head) keeps fp32 all-gathers, so the embeddings and with them the residual stream stay fp32, as
            under autocast without FSDP (`training_policy`). Needs autocast in the forward when `param_dtype` is
            set (an fp32 activation meets a `param_dtype` weight in the first block's matmuls).

    Returns:
        `model` itself (its class is now also an `FSDPModule`).

    Raises:
        RuntimeError: torch.distributed is not initialised (FSDP needs a launcher: torchrun / accelerate launch).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("--fsdp needs a distributed launch (e.g. `torchrun --nproc_per_node N -m vfmtok "
                           "train-ar ... --fsdp`); torch.distributed is not initialised in this process")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kinds = tuple(block_types)
    options: dict[str, Any] = {"mesh": mesh}
    if param_dtype is not None or reduce_dtype is not None:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype,
                                                    cast_forward_inputs=False)
    for sub in reversed(list(model.modules())):  # innermost first (fully_shard needs children before parents)
        if sub is not model and isinstance(sub, kinds):
            fully_shard(sub, **options)
    fully_shard(model, **({"mesh": mesh} if root_fp32 else options))
    return model


def training_policy(mixed_precision: str) -> dict[str, Any] | None:
    """The FSDP2 mixed-precision policy of a training run that computes in `mixed_precision`.

    Args:
        mixed_precision: the run's effective precision ('no' | 'bf16' | 'fp16'; `str(accelerator.mixed_precision)`,
            which is 'no' on CPU unless VFMTOK_CPU_AUTOCAST emulates the GPU paths).

    Returns:
        None for 'no' (fp32 all-gathers, no policy), else the keyword arguments of `shard_model`:
        {"param_dtype": torch.bfloat16 | torch.float16, "reduce_dtype": torch.float32, "root_fp32": True}:
        the blocks all-gather in the autocast dtype (the dtype autocast casts their weights to anyway) and reduce
        gradients in fp32 (the precision of the fp32 master weights they update); the root unit stays fp32.

    Raises:
        ValueError: an unknown precision name.
    """
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    mp = getattr(mixed_precision, "value", mixed_precision)
    if mp == "no":
        return None
    if mp not in dtypes:
        raise ValueError(f"mixed precision {mp!r}: expected one of no, bf16, fp16")
    return {"param_dtype": dtypes[mp], "reduce_dtype": torch.float32, "root_fp32": True}


def describe_policy(policy: dict[str, Any] | None) -> dict[str, str] | None:
    """A `training_policy` result as JSON-ready dtype names, as recorded in train_settings.json / config.json:
    {"param_dtype": "bfloat16", "reduce_dtype": "float32", "root_param_dtype": "float32"}; None stays None."""
    if policy is None:
        return None
    param, reduce = (str(policy[k]).removeprefix("torch.") for k in ("param_dtype", "reduce_dtype"))
    return {"param_dtype": param, "reduce_dtype": reduce,
            "root_param_dtype": "float32" if policy.get("root_fp32") else param}


def reshard(model: nn.Module) -> None:
    """Free the unsharded parameters of every FSDP unit of `model`.

    The root unit keeps its parameters unsharded after a forward pass without backward (FSDP2 heuristic); call this
    after evaluation passes so that the next forward all-gathers the current shards (e.g. after swapping EMA
    weights in).
    """
    for sub in model.modules():
        if is_fsdp(sub):
            sub.reshard()


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's `AcceleratedOptimizer` wrappers."""
    while type(optimizer).__name__ == "AcceleratedOptimizer":
        optimizer = optimizer.optimizer
    return optimizer


def sharded_model_state(model: nn.Module, optimizer: Any | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(model, optimizer) state dicts of an FSDP model as sharded DTensors keyed by parameter name (for DCP).

    Uses `torch.distributed.checkpoint.state_dict.get_state_dict` (sharded: nothing is gathered). On an optimizer
    without state (fresh) it creates the state with a zero-lr step first (a template to load into).
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return get_model_state_dict(model), None
    return get_state_dict(model, unwrap_optimizer(optimizer))


def load_sharded_model_state(model: nn.Module, optimizer: Any | None, model_state: dict[str, Any],
                             optim_state: dict[str, Any] | None) -> None:
    """Inverse of `sharded_model_state` (after `dcp.load` filled the dicts in place); strict on the model keys."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    if optimizer is None:
        set_model_state_dict(model, model_state)
    else:
        set_state_dict(model, unwrap_optimizer(optimizer), model_state_dict=model_state, optim_state_dict=optim_state)
