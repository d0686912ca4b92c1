"""The checkpointed state of a `vfmtok.engine.trainer.Trainer`: what a checkpoint holds and how a run resumes.

A checkpoint (atomic `step_N/` folder, `vfmtok.engine.checkpoint`) holds the trainable weights of every model
(frozen parameters are left out), the optimizers, schedulers, EMAs, the trainer's extra state (e.g. the codebook-usage
window), counters, per-rank RNG states and metadata (step, epoch, world size, global batch, sample count, seed).
FSDP models, their optimizers and EMAs are saved sharded with torch.distributed.checkpoint by every rank.
Restoring checks that the run matches (data size, batch, seed, FSDP setting) and restores everything, so a resumed
CPU run is bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from vfmtok.engine.checkpoint import (capture_rng, latest_checkpoint, read_checkpoint, read_sharded, restore_rng,
                                      write_checkpoint)
from vfmtok.engine.fsdp import load_sharded_model_state, sharded_model_state
from vfmtok.io.state import strict_load

log = logging.getLogger(__name__)


def module_state(trainer: Any, name: str) -> dict[str, torch.Tensor]:
    """The trainable state of model `name` on the CPU (frozen parameters left out: they are rebuilt, not saved)."""
    module = trainer.unwrap(name)
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    return {k: v.detach().cpu() for k, v in module.state_dict().items() if k not in frozen}


def full_state(trainer: Any) -> dict[str, Any]:
    """Everything rank 0 saves: unsharded models, optimizers, schedulers, EMAs, extra state and counters."""
    fsdp = trainer.fsdp_models
    return {
        "models": {n: module_state(trainer, n) for n in trainer.models if n not in fsdp},
        "optimizers": {n: o.state_dict() for n, o in trainer.optimizers.items() if n not in fsdp},
        "schedulers": {n: s.state_dict() for n, s in trainer.schedulers.items()},
        "ema": {n: e.state_dict() for n, e in trainer.emas.items() if n not in fsdp},
        "extra": {n: o.state_dict() for n, o in trainer.extra_state.items()},
        "counters": {"skipped_steps": trainer.skipped_steps},
    }


def sharded_state(trainer: Any) -> dict[str, Any]:
    """This rank's shards of the FSDP models, their optimizers and EMAs (DTensors, for DCP; no copies)."""
    out: dict[str, Any] = {"models": {}, "optimizers": {}, "ema": {}}
    for n in trainer.fsdp_models:
        out["models"][n], optim = sharded_model_state(trainer.models[n], trainer.optimizers.get(n))
        if optim is not None:
            out["optimizers"][n] = optim
        if n in trainer.emas:
            out["ema"][n] = {"decay": trainer.emas[n].decay, "shadow": dict(trainer.emas[n].shadow)}
    return out


def save_trainer_checkpoint(trainer: Any) -> Path:
    """Write the checkpoint of the current step (collective: every rank calls it)."""
    epoch, in_epoch = divmod(trainer.step, trainer.steps_per_epoch)
    meta = {
        "step": trainer.step, "epoch": epoch, "step_in_epoch": in_epoch, "world_size": trainer.world_size,
        "global_batch": trainer.config.global_batch, "num_samples": trainer.sampler.num_samples,
        "seed": trainer.config.seed, "time": time.time(),
    }
    if trainer.fsdp_models:
        meta["fsdp"] = sorted(trainer.fsdp_models)
    return write_checkpoint(
        trainer.checkpoints, trainer.step, (lambda: full_state(trainer)) if trainer.rank == 0 else None,
        capture_rng(), meta,
        rank=trainer.rank, barrier=trainer.barrier, keep_last=trainer.config.keep_last,
        sharded_state=(lambda: sharded_state(trainer)) if trainer.fsdp_models else None,
    )


def restore_trainer_checkpoint(trainer: Any, path: str | Path | None = None) -> Path:
    """Restore everything from `path` (default: the latest checkpoint of the run).

    Raises:
        FileNotFoundError: no checkpoint. ValueError: the checkpoint does not match this run (names what).
    """
    path = Path(path) if path is not None else latest_checkpoint(trainer.checkpoints)
    if path is None:
        raise FileNotFoundError(f"--resume: no checkpoint found under {trainer.checkpoints}")
    state, rng, meta = read_checkpoint(path, trainer.rank)
    for key, mine in (("global_batch", trainer.config.global_batch), ("num_samples", trainer.sampler.num_samples),
                      ("seed", trainer.config.seed)):
        if meta.get(key) != mine:
            raise ValueError(f"{path}: checkpoint was written with {key}={meta.get(key)}, this run has {mine}; "
                             "resume with the same data, --batch-size and --seed")
    if sorted(meta.get("fsdp", [])) != sorted(trainer.fsdp_models):
        raise ValueError(f"{path}: checkpoint was written with FSDP models {meta.get('fsdp', [])}, this run "
                         f"shards {sorted(trainer.fsdp_models)}; resume with the same --fsdp setting")
    for name in trainer.models:
        if name in trainer.fsdp_models:
            continue
        module = trainer.unwrap(name)
        frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
        strict_load(module, state["models"][name], str(path), what=f"model {name!r}", allowed_missing=frozen)
    for name, opt in trainer.optimizers.items():
        if name not in trainer.fsdp_models:
            opt.load_state_dict(state["optimizers"][name])
    for name, sched in trainer.schedulers.items():
        sched.load_state_dict(state["schedulers"][name])
    for name, ema in trainer.emas.items():
        if name not in trainer.fsdp_models:
            ema.load_state_dict(state["ema"][name])
    if trainer.fsdp_models:
        sharded = read_sharded(path, sharded_state(trainer))  # loads in place (the EMA shadows directly)
        for name in trainer.fsdp_models:
            load_sharded_model_state(trainer.models[name], trainer.optimizers.get(name), sharded["models"][name],
                                     sharded["optimizers"].get(name))
            if name in trainer.emas:
                trainer.emas[name].load_state_dict(sharded["ema"][name])
    for name, obj in trainer.extra_state.items():
        obj.load_state_dict(state["extra"][name])
    trainer.skipped_steps = int(state["counters"]["skipped_steps"])
    trainer.step = int(meta["step"])
    if rng is not None and meta.get("world_size") == trainer.world_size:
        restore_rng(rng)
    else:
        log.warning("%s: RNG state of rank %d not restored (world size %s -> %d); resumption is not bit-exact",
                    path, trainer.rank, meta.get("world_size"), trainer.world_size)
    return path
