"""A generic, resumable training loop on accelerate (used by `train-tokenizer` and `train-ar`).

The caller supplies models, optimizers (+ schedulers), a dataset and a *step function*. Per optimizer step the
trainer draws `grad_accum` micro-batches from a `RankDisjointSampler` loader, calls the step function on each
(under autocast, DDP gradient sync only on the last micro-batch), back-propagates the returned losses (one per
optimizer, scaled by 1/grad_accum), averages the logged values over micro-batches and ranks, checks that every
loss and gradient norm is finite, clips gradients, steps the optimizers that received a loss and their
schedulers, updates the EMAs, logs to `metrics.jsonl` and checkpoints every `save_every` steps, at the end and on
SIGTERM/SIGINT (`vfmtok.engine.signals`). Resumption (`vfmtok.engine.trainer_state`) restores models, optimizers, schedulers, EMAs, extra state, the step (hence the data
position) and per-rank RNG states: on CPU a resumed run is bit-identical to an uninterrupted one.

FSDP: a model already sharded with `vfmtok.engine.fsdp.shard_model` (FSDP2 `fully_shard`) is used as is (not
wrapped in DDP by accelerate); its optimizer must carry the same name. Its EMA stays sharded, and its model,
optimizer and EMA states are checkpointed with torch.distributed.checkpoint under `step_N/sharded/` by every rank
(vfmtok.engine.fsdp has the design); everything else is unchanged.

Step function contract: `step_fn(trainer, batch) -> StepOutput`, where `batch` is the collated micro-batch
already on `trainer.device`, `trainer.step` is the 0-based index of the optimizer step being computed and
`trainer.models[name]` are the prepared (possibly DDP-wrapped) models (`trainer.unwrap(name)` for the bare module).
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.optim import Optimizer
from tqdm.auto import tqdm

from vfmtok.engine.checkpoint import latest_checkpoint
from vfmtok.engine.ema import EMA
from vfmtok.engine.fsdp import full_tensor, is_dtensor, is_fsdp
from vfmtok.engine.loader import make_loader
from vfmtok.engine.metrics_log import MetricsLogger
from vfmtok.engine.sampler import RankDisjointSampler
from vfmtok.engine.signals import StopSignals
from vfmtok.engine.trainer_state import restore_trainer_checkpoint, save_trainer_checkpoint

log = logging.getLogger(__name__)

TIME_KEYS = ("images_per_s", "sec_per_step", "time")  # metrics that depend on wall-clock time
# metrics shown in print_every lines (by key prefix): both jobs' losses, the tokenizer's loss terms, lr, grad norms
SUMMARY_PREFIXES = ("loss_", "val_loss", "pixel", "perceptual", "semantic", "vq_", "g_adv", "d_hinge", "psnr",
                    "codebook_usage", "lr_", "grad_norm_")


def _hms(seconds: float) -> str:
    """'1h02m03s' / '2m03s' / '3s' for a duration in seconds (>= 0)."""
    s = int(round(max(seconds, 0.0)))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class NonFiniteLossError(RuntimeError):
    """A loss or gradient norm was NaN/inf; the run stopped before updating any weight."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainerConfig:
    """Loop settings.

    Attributes:
        out_dir: run directory (`checkpoints/`, `metrics.jsonl` go there).
        total_steps: optimizer steps of the whole run (a resumed run stops there too).
        global_batch: images per optimizer step over all ranks and micro-batches.
        grad_accum: micro-batches per optimizer step (per-rank micro-batch = global_batch / (world * grad_accum)).
        save_every: checkpoint period in steps (0 = only at the end and on signals).
        keep_last: checkpoints kept (older ones are deleted after a successful write).
        log_every: metrics.jsonl period in steps.
        grad_clip: max global grad norm per optimizer (None/0 = no clipping, the norm is still logged).
        skip_nonfinite: skip (and count) steps with a non-finite loss or grad norm instead of stopping.
        seed: data-order and augmentation seed; torch/numpy/python RNGs are seeded with seed + rank.
        num_workers: DataLoader workers per rank.
        progress: show a tqdm bar on the main process.
        print_every: print a one-line summary (step, losses, lr, grad norms, codebook usage, validation losses,
            images/s, tokens/s, MFU when present, s/step and ETA) on the main process every this many steps and at
            the last step, independent of the bar (0 = never). Meant for cluster logs, where a tqdm bar is noise.
        tensorboard: also log scalars to TensorBoard when it is installed.
    """

    out_dir: Path
    total_steps: int
    global_batch: int
    grad_accum: int = 1
    save_every: int = 1000
    keep_last: int = 3
    log_every: int = 10
    grad_clip: float | None = 1.0
    skip_nonfinite: bool = False
    seed: int = 0
    num_workers: int = 0
    progress: bool = True
    print_every: int = 0
    tensorboard: bool = False


@dataclass
class StepOutput:
    """What a step function returns for one micro-batch.

    Attributes:
        losses: optimizer name -> scalar loss to back-propagate (only those optimizers step this step).
        logs: scalar values to log (tensors or floats); averaged over micro-batches and ranks.
    """

    losses: dict[str, torch.Tensor]
    logs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """Outcome of `Trainer.fit`: final step, whether a signal interrupted it (and which), last checkpoint."""

    step: int
    interrupted: bool = False
    signal: int | None = None
    checkpoint: Path | None = None
    skipped_steps: int = 0


def _bare_optimizer(opt: Optimizer) -> Optimizer:
    """The torch optimizer inside accelerate's `AcceleratedOptimizer` wrapper (itself when not wrapped)."""
    return getattr(opt, "optimizer", opt)


def seed_everything(seed: int) -> None:
    """Seed python `random`, numpy's global RNG and torch (CPU and CUDA) with `seed`."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """See the module docstring.

    Args:
        accelerator: an `accelerate.Accelerator` (see `vfmtok.engine.accel.make_accelerator`).
        config: a `TrainerConfig`.
        models: name -> module (trainable parameters have requires_grad=True; frozen ones are not checkpointed).
            A module sharded with `vfmtok.engine.fsdp.shard_model` is trained with FSDP (module docstring).
        optimizers: name -> optimizer over that name's parameters (names match the step function's losses); the
            optimizer of an FSDP model must be built after sharding and carry the model's name.
        step_fn: the step function (module docstring).
        dataset: map-style dataset indexed by the sampler's `(index, epoch, position)` items.
        schedulers: name -> LR scheduler of the optimizer of the same name (stepped with it).
        ema: model name -> EMA decay; the EMA of those models' trainable parameters is kept and checkpointed.
        extra_state: name -> object with state_dict/load_state_dict to checkpoint (e.g. a codebook-usage window).
        after_step: called as `after_step(trainer, record)` after each optimizer step on every rank, before the
            record is logged; may add keys to `record` (e.g. codebook usage) or write files (main process).

    Raises:
        ValueError: global batch not divisible by processes x grad_accum; an optimizer over sharded (FSDP)
            parameters whose name is not that of an FSDP model.
    """

    def __init__(
        self,
        accelerator: Any,
        config: TrainerConfig,
        models: dict[str, nn.Module],
        optimizers: dict[str, Optimizer],
        step_fn: Callable[["Trainer", Any], StepOutput],
        dataset: Any,
        schedulers: dict[str, Any] | None = None,
        ema: dict[str, float] | None = None,
        extra_state: dict[str, Stateful] | None = None,
        after_step: Callable[["Trainer", dict[str, Any]], None] | None = None,
    ) -> None:
        self.accelerator, self.config = accelerator, config
        self.rank, self.world_size = accelerator.process_index, accelerator.num_processes
        micro_total = config.grad_accum * self.world_size
        if config.global_batch % micro_total:
            raise ValueError(
                f"--batch-size {config.global_batch} must be divisible by processes x grad-accum = {micro_total}"
            )
        if config.print_every < 0:
            raise ValueError(f"--print-every {config.print_every}: expected >= 0 (0 = no summary lines)")
        self.micro_batch = config.global_batch // micro_total
        self.sampler = RankDisjointSampler(len(dataset), config.global_batch, self.rank, self.world_size, config.seed)
        self.loader = make_loader(dataset, self.sampler, self.micro_batch, config.num_workers, config.seed)
        self.fsdp_models = [n for n in models if is_fsdp(models[n])]
        for n, opt in optimizers.items():
            if n not in self.fsdp_models and any(is_dtensor(p) for g in opt.param_groups for p in g["params"]):
                raise ValueError(f"optimizer {n!r} holds sharded (FSDP) parameters but there is no FSDP model named "
                                 f"{n!r}; name the optimizer of an FSDP model like the model")
        names = [n for n in models if n not in self.fsdp_models]  # FSDP models are used as they are (no DDP)
        prepared = accelerator.prepare(*[models[n] for n in names], *[optimizers[n] for n in optimizers])
        prepared = prepared if isinstance(prepared, (list, tuple)) else [prepared]
        plain = dict(zip(names, prepared[: len(names)]))
        self.models: dict[str, nn.Module] = {n: plain.get(n, models[n]) for n in models}
        self.optimizers: dict[str, Optimizer] = dict(zip(optimizers, prepared[len(names) :]))
        self.schedulers = dict(schedulers or {})
        self.emas = {n: EMA(self.unwrap(n), decay) for n, decay in (ema or {}).items()}
        self.extra_state = dict(extra_state or {})
        self.step_fn, self.after_step = step_fn, after_step
        self.step = 0  # optimizer steps completed (during a step: index of the step being computed)
        self.skipped_steps = 0
        self.out_dir = Path(config.out_dir)
        self.checkpoints = self.out_dir / "checkpoints"
        self.metrics = MetricsLogger(self.out_dir / "metrics.jsonl", accelerator.is_main_process, config.tensorboard)
        self.stop = StopSignals(announce=accelerator.is_main_process)

    # -- helpers ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def unwrap(self, name: str) -> nn.Module:
        """The bare module of model `name` (without DDP / compile wrappers)."""
        return self.accelerator.unwrap_model(self.models[name])

    def barrier(self) -> None:
        """Wait for every process (no-op with one)."""
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()

    # -- checkpoints (vfmtok.engine.trainer_state) ---------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write the checkpoint of the current step (collective: every rank calls it)."""
        return save_trainer_checkpoint(self)

    def load_checkpoint(self, path: str | Path | None = None) -> Path:
        """Restore everything from `path` (default: the latest checkpoint of the run).

        Raises:
            FileNotFoundError: no checkpoint. ValueError: the checkpoint does not match this run (names what).
        """
        return restore_trainer_checkpoint(self, path)

    # -- one optimizer step -------------------------------------------------------------------
    def _scaler(self) -> Any:
        """The fp16 `GradScaler` that `accelerator.backward` scales losses with, or None (fp32/bf16).

        The trainer unscales, steps and updates it itself: accelerate's `clip_grad_norm_` unscales every prepared
        optimizer on each call and its optimizer wrapper calls `scaler.update()` once per optimizer, which breaks
        (and double-counts) with more than one optimizer (generator + discriminator).
        """
        return getattr(self.accelerator, "scaler", None)

    def _to_device(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        return batch

    def _train_step(self, micro_batches: list[Any]) -> dict[str, Any]:
        accum = len(micro_batches)
        sums: dict[str, float | torch.Tensor] = {}
        stepped: list[str] = []
        for i, batch in enumerate(micro_batches):
            batch = self._to_device(batch)
            with contextlib.ExitStack() as stack:
                if i < accum - 1:
                    for model in self.models.values():
                        stack.enter_context(self.accelerator.no_sync(model))
                with self.accelerator.autocast():
                    out = self.step_fn(self, batch)
                for name, loss in out.losses.items():
                    if name not in self.optimizers:
                        raise KeyError(f"step function returned a loss for unknown optimizer {name!r}")
                    self.accelerator.backward(loss / accum)
                    if name not in stepped:
                        stepped.append(name)
            for key, value in [*((f"loss_{n}", l) for n, l in out.losses.items()), *out.logs.items()]:
                value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
                sums[key] = sums.get(key, 0.0) + value.to(self.device) / accum
        keys = sorted(sums)
        parts = [torch.as_tensor(sums[k], device=self.device).float().reshape(()) for k in keys]
        if self.world_size > 1:  # the stop flag rides on this all-reduce: no extra collective or sync per step
            parts.append(torch.full((), self.stop.local_flag(), device=self.device))
            values = self.accelerator.reduce(torch.stack(parts), reduction="mean").tolist()
            self.stop.agreed = values.pop() > 0  # same on every rank: all stop after the same step
        else:
            values = torch.stack(parts).tolist() if parts else []
        record: dict[str, Any] = dict(zip(keys, values))
        scaler = self._scaler()
        for name in stepped:
            opt = self.optimizers[name]
            record[f"lr_{name}"] = opt.param_groups[0]["lr"]
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            if scaler is not None:  # fp16: unscale this optimizer's gradients, once per step (not every optimizer's)
                scaler.unscale_(_bare_optimizer(opt))
            if self.config.grad_clip:  # DTensor-aware for FSDP2 gradients
                norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
            elif name in self.fsdp_models:  # sharded gradients: the norm of the full gradient (collective)
                norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            else:
                norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().float().norm() for p in params]))
            record[f"grad_norm_{name}"] = float(full_tensor(norm))
        # with fp16 loss scaling, inf gradients are expected while the scale calibrates: the GradScaler skips those
        # updates itself, so only the losses are checked then
        checked = ("loss_",) if scaler is not None else ("loss_", "grad_norm_")
        bad = [k for k, v in record.items() if k.startswith(checked) and not math.isfinite(v)]
        if bad:
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            if scaler is not None:  # forget this step's unscale_ records
                scaler.update()
            if not self.config.skip_nonfinite:
                last = latest_checkpoint(self.checkpoints)
                record["nonfinite"] = bad
                self._log(record, self.step + 1)
                raise NonFiniteLossError(
                    f"non-finite {', '.join(f'{k}={record[k]}' for k in bad)} at step {self.step + 1}; no weight was "
                    f"updated. Last good checkpoint: {last or 'none yet'}. Resume from it with --resume (perhaps with "
                    "a lower --lr), or pass --skip-nonfinite to skip such steps."
                )
            self.skipped_steps += 1
            record["skipped"] = 1
            log.warning("step %d: non-finite %s, step skipped (%d so far)", self.step + 1, bad, self.skipped_steps)
            return record
        for name in stepped:
            if scaler is None:
                self.optimizers[name].step()
            else:  # the scaler skips the update when this optimizer's gradients hold inf/NaN
                scaler.step(_bare_optimizer(self.optimizers[name]))
            if name in self.schedulers:
                self.schedulers[name].step()
            self.optimizers[name].zero_grad(set_to_none=True)
        if scaler is not None and stepped:
            scaler.update()  # once per optimizer step, after every optimizer (not once per optimizer)
        for name, ema in self.emas.items():
            ema.update(self.unwrap(name))
        return record

    def _log(self, record: dict[str, Any], step: int) -> None:
        self.metrics.log({"step": step, **record})

    def _summary_line(self, record: dict[str, Any], sec_per_step: float) -> str:
        """One human-readable line for `print_every` (keys chosen by prefix; absent ones are left out)."""
        cfg = self.config
        shown = [f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                 and k.startswith(SUMMARY_PREFIXES)]
        eta = sec_per_step * (cfg.total_steps - self.step)
        rate = [f"{cfg.global_batch / sec_per_step:.3g} img/s"]
        rate += [f"{record[k]:.3g} {unit}" for k, unit in (("tokens_per_s", "tok/s"), ("mfu", "MFU"))
                 if record.get(k) is not None]
        rate += [f"{sec_per_step:.3g} s/step", f"eta {_hms(eta)}"]
        return f"step {self.step}/{cfg.total_steps} | " + " ".join(shown) + " | " + ", ".join(rate)

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, resume: bool | str | Path = False) -> TrainResult:
        """Train until `total_steps` (or a signal).

        Args:
            resume: False (fresh run; seeds RNGs with seed + rank), True (latest checkpoint of the run) or a
                checkpoint directory.

        Returns:
            A `TrainResult`.

        Raises:
            NonFiniteLossError: on a non-finite loss without `skip_nonfinite` (after logging it).
        """
        cfg = self.config
        if resume:
            path = self.load_checkpoint(None if resume is True else resume)
            if self.accelerator.is_main_process:
                log.info("resumed from %s (step %d)", path, self.step)
        else:
            seed_everything(cfg.seed + self.rank)
        self.metrics.truncate_after(self.step)
        for model in self.models.values():
            model.train()
        self.stop.install()
        ckpt: Path | None = None
        saved_at = -1
        pbar = tqdm(total=cfg.total_steps, initial=self.step, desc="train", dynamic_ncols=True,
                    disable=not (cfg.progress and self.accelerator.is_main_process))
        window_start, window_steps = time.perf_counter(), 0
        print_start, print_steps = window_start, 0
        printing = cfg.print_every > 0 and self.accelerator.is_main_process
        try:
            while self.step < cfg.total_steps:
                epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch, in_epoch)
                batches = iter(self.loader)
                for _ in range(in_epoch, self.steps_per_epoch):
                    if self.step >= cfg.total_steps:
                        break
                    micro = [next(batches) for _ in range(cfg.grad_accum)]
                    record = self._train_step(micro)
                    record["epoch"] = epoch
                    record["skipped_steps"] = self.skipped_steps
                    if self.after_step is not None:
                        self.after_step(self, record)
                    self.step += 1
                    window_steps += 1
                    print_steps += 1
                    pbar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == cfg.total_steps:
                        elapsed = max(time.perf_counter() - window_start, 1e-9)
                        record["sec_per_step"] = elapsed / window_steps
                        record["images_per_s"] = window_steps * cfg.global_batch / elapsed
                        self._log(record, self.step)
                        pbar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k.startswith("loss_")})
                        window_start, window_steps = time.perf_counter(), 0
                    if printing and (self.step % cfg.print_every == 0 or self.step == cfg.total_steps):
                        now = time.perf_counter()
                        tqdm.write(self._summary_line(record, max(now - print_start, 1e-9) / print_steps))
                        print_start, print_steps = now, 0
                    if cfg.save_every and self.step % cfg.save_every == 0:
                        ckpt, saved_at = self.save_checkpoint(), self.step
                    stop = self.stop.after_step(self.world_size)
                    if stop is not None:
                        if saved_at != self.step:
                            ckpt, saved_at = self.save_checkpoint(), self.step
                        if self.accelerator.is_main_process:
                            log.warning("stopped by %s at step %d; checkpoint %s", signal.Signals(stop).name,
                                        self.step, ckpt)
                        return TrainResult(self.step, True, stop, ckpt, self.skipped_steps)
            last = latest_checkpoint(self.checkpoints)
            if saved_at != self.step and (last is None or last.name != f"step_{self.step:08d}"):
                ckpt = self.save_checkpoint()
            return TrainResult(self.step, False, None, ckpt or latest_checkpoint(self.checkpoints), self.skipped_steps)
        finally:
            pbar.close()
            self.metrics.close()
            self.stop.uninstall()
