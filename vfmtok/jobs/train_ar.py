"""Training of a class-conditional generator (LlamaGen GPT or RAR) on a token store (`vfmtok train-ar`), on the
generic engine Trainer.

GPT recipe (VFMTok paper section 4.1; official `train_c2i.py`, shared/reference/vfmtok.md section 3.2): AdamW (fused
on CUDA) with betas (0.9, 0.95), constant lr 1e-4 (no warm-up), weight decay 0.05 on >= 2-D parameters only,
gradient clipping at global norm 1.0, bf16 autocast on CUDA, EMA 0.9999 of the GPT (the exported weights are the
EMA), global batch 512. RAR recipe (`--model RAR-*`, shared/reference/rar.md section 3): randomized token orders
annealed to raster, both neighbour sequences of an image per step, AdamW 4e-4 / (0.9, 0.96) / 0.03, warm-up + cosine
to 1e-5, no EMA; the differences live in `vfmtok.jobs.ar_generators`. Deviation: the official code tokenizes raw
images on the fly; here the codes come from a token store (one crop view per image and epoch,
`vfmtok.data.token_store.augmentation_choice`).

Data order, resumption, signals, non-finite checks, DDP and checkpoints come from `vfmtok.engine.trainer.Trainer`.
This module adds: store checks before any step, a fixed held-out validation split, validation losses of the live
and EMA weights, tokens/s and an MFU estimate, run provenance (`RUN/config.json`) and the EMA export. With
`fsdp=True` the generator is sharded with FSDP2, one unit per `TransformerBlock` (RAR: per `Block`)
(vfmtok.engine.fsdp: sharded EMA and checkpoints; in a bf16 run the blocks are all-gathered in bf16 and their
gradients reduced in fp32, `training_policy`, still under autocast); the export gathers the full fp32 weights, so
`model.safetensors` is the same as for a DDP run.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vfmtok.data.token_store.reader import (StoreInfo, TokenDataset, TokenStoreError, check_model_matches_store,
                                            check_token_store, load_val_set)
from vfmtok.device import set_tf32_for_job
from vfmtok.engine.accel import make_accelerator
from vfmtok.engine.ema import short_run_warning
from vfmtok.engine.checkpoint import latest_checkpoint
from vfmtok.engine.fsdp import describe_policy, full_tensor, is_fsdp, reshard, shard_model, training_policy
from vfmtok.engine.mfu import device_peak_flops
from vfmtok.engine.schedule import warmup_constant_schedule, warmup_cosine_schedule
from vfmtok.engine.trainer import StepOutput, Trainer, TrainerConfig, TrainResult
from vfmtok.io.state import floats_to_float32, strict_load
from vfmtok.jobs import ar_generators as gen
from vfmtok.jobs.train_ar_config import TrainARConfig

log = logging.getLogger(__name__)

SETTINGS_FILE = "train_settings.json"  # written at the start of a run, checked on --resume
VAL_SPLIT_SEED = 20250711  # the held-out split depends only on N and the val count, never on --seed
TIME_DEPENDENT_KEYS = ("images_per_s", "sec_per_step", "time", "tokens_per_s", "mfu", "val_sec")
# Epochs of the paper's runs (reference/vfmtok.md 3.2): 300 for B and L, 200 for the larger models; RAR 400.
DEFAULT_BATCH_SIZE = gen.GPT_RECIPE.batch_size  # the paper's global batch (RAR: gen.RAR_RECIPE.batch_size images)
LONG_RUN_HOURS = 3.0  # warn when the measured speed puts the run above this
ETA_CHECK_STEPS = 10  # steps timed before the run-length check
CPU_TFLOPS_BOUND = 0.1  # generous CPU training throughput (measured: GPT-B 0.085, GPT-tiny 0.024 TFLOP/s on 2 cores)
CPU_DEFAULT_RUN_MINUTES = 5.0  # a CPU run of default length estimated above this (at the bound) is refused
PAPER_EPOCHS = {**gen.GPT_RECIPE.epochs, **gen.RAR_RECIPE.epochs}

# ---------------------------------------------------------------------------------------------
# The store: checks, split, dataset
# ---------------------------------------------------------------------------------------------
def split_indices(num_images: int, val_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed held-out split: `val_count` images chosen by a permutation seeded with `VAL_SPLIT_SEED`.

    Returns:
        (train, val): sorted int64 index arrays, disjoint, covering [0, num_images).
    """
    perm = np.random.default_rng(VAL_SPLIT_SEED).permutation(num_images)
    return np.sort(perm[val_count:]).astype(np.int64), np.sort(perm[:val_count]).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def _json(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def refuse_long_default_run(model: str, num_params: int, tokens_per_step: int, total_steps: int) -> None:
    """Refuse a CPU run whose model and length were left at the paper's defaults (a GPU recipe) when it needs more
    than CPU_DEFAULT_RUN_MINUTES, so that a first try on a laptop answers at once with the fix instead of training
    GPT-B for the paper's 300 epochs.

    Training cost is estimated as 6 x parameters x tokens per step x steps FLOPs (forward + backward of a dense
    transformer) at CPU_TFLOPS_BOUND, an upper bound of what CPUs reach here (benchmarks/README.md), so the
    estimate is optimistic. Giving --steps or --epochs runs any length (the >3 h warning still applies).

    Raises:
        ValueError: one line with the estimate and the fix (a smaller --model and --steps).
    """
    minutes = 6.0 * num_params * tokens_per_step * total_steps / (CPU_TFLOPS_BOUND * 1e12) / 60
    if minutes > CPU_DEFAULT_RUN_MINUTES:
        took = f"{minutes / 60:.1f} h" if minutes >= 90 else f"{minutes:.0f} min"
        raise ValueError(
            f"the default run ({model}, the paper's epochs: {total_steps} steps of {tokens_per_step} tokens) needs at "
            f"least {took} on this CPU; for a first run add `--model GPT-tiny --steps 200 --ema-decay 0.99` "
            "(or give --steps / "
            "--epochs to run this length anyway, or use a GPU)")


def _default_out() -> Path:
    return Path("runs") / f"ar-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def _broadcast(accelerator: Any, value: Any) -> Any:
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _provenance(info: StoreInfo) -> dict[str, Any]:
    tok = info.manifest.get("tokenizer") or {}
    path = tok.get("path")
    return {
        "tokenizer": str(Path(path).resolve()) if path else None,
        "tokenizer_sha256": tok.get("file_sha256"),
        "tokenizer_weights_fingerprint": tok.get("weights_sha256"),
        "token_store": str(info.path),
        "token_store_manifest_sha256": info.manifest_sha256,
        "classes": list(info.manifest.get("classes") or []) or None,  # label i names classes[i] (sample: names)
    }


class _Validator:
    """Validation loss (mean token cross-entropy, nats) of the live and EMA weights, sharded over ranks."""

    def __init__(self, codes: torch.Tensor, labels: torch.Tensor, batch: int, with_ema: bool) -> None:
        self.codes, self.labels, self.batch, self.with_ema = codes, labels, batch, with_ema
        self._ema_model: torch.nn.Module | None = None

    @torch.no_grad()
    def _loss(self, tr: Trainer, model: torch.nn.Module) -> float:
        was_training = model.training
        model.eval()
        fsdp = is_fsdp(model)
        mine = torch.arange(tr.rank, len(self.codes), tr.world_size)
        # under FSDP every forward pass all-gathers, so every rank runs as many as the rank with the most images
        # (ranks with fewer run a dummy batch of weight 0)
        longest = -(-len(self.codes) // tr.world_size) if fsdp else len(mine)
        total = torch.zeros(2, dtype=torch.float64, device=tr.device)
        if fsdp:
            reshard(model)  # the next forward all-gathers the current shards
        for lo in range(0, longest, self.batch):
            idx = mine[lo : lo + self.batch]
            weight = len(idx)
            if weight == 0:
                idx = torch.zeros(1, dtype=torch.long)
            codes, labels = self.codes[idx].to(tr.device), self.labels[idx].to(tr.device)
            with tr.accelerator.autocast():
                loss = gen.teacher_forced_loss(model, codes, labels)
            total += torch.stack([loss.double() * weight, torch.tensor(float(weight), device=tr.device).double()])
        if fsdp:
            reshard(model)  # FSDP2 keeps the root unit unsharded after a forward without backward
        if tr.world_size > 1:
            total = tr.accelerator.reduce(total, reduction="sum")
        model.train(was_training)
        return float(total[0] / total[1])

    def __call__(self, tr: Trainer) -> dict[str, float]:
        out = {"val_loss": self._loss(tr, tr.unwrap("gpt"))}
        if self.with_ema and "gpt" in tr.fsdp_models:  # sharded: swap the EMA shards in and back (exact)
            with tr.emas["gpt"].swapped_into(tr.unwrap("gpt")) as model:
                out["val_loss_ema"] = self._loss(tr, model)
        elif self.with_ema:
            if self._ema_model is None:
                self._ema_model = copy.deepcopy(tr.unwrap("gpt")).requires_grad_(False)
            tr.emas["gpt"].copy_to(self._ema_model)
            out["val_loss_ema"] = self._loss(tr, self._ema_model)
        return out


@dataclass
class TrainARResult:
    """Outcome of `train_ar`: the run directory, the engine's `TrainResult`, the final metrics record."""

    out: Path
    result: TrainResult
    last_record: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepBatch:
    """What one micro-batch feeds the model (the `batch_observer` test hook).

    Attributes:
        rank, step: process index and 0-based optimizer step. rows: (B,) int64 store indices of the images.
        tokens: (S, L) int64 raster-order sequences (S = B x K with all neighbours, image-major). labels: (S,) int64.
        orders: (S, L) int64 token orders (RAR), None for the GPT.
    """

    rank: int
    step: int
    rows: torch.Tensor
    tokens: torch.Tensor
    labels: torch.Tensor
    orders: torch.Tensor | None


def train_ar(cfg: TrainARConfig, observer: Callable[[int, int, torch.Tensor], None] | None = None,
             batch_observer: Callable[[StepBatch], None] | None = None) -> TrainARResult:
    """Train a GPT or a RAR on a token store; every rank calls it (one process, or DDP under torchrun / accelerate).

    Writes `out/checkpoints/`, `out/metrics.jsonl` (keys: step, epoch, loss_gpt, lr_gpt, grad_norm_gpt,
    tokens_per_s, mfu, val_loss, val_loss_ema, RAR: rar_order_prob, ...; the generator is called "gpt" in the keys
    of both families), `out/train_settings.json` and, at the end (also after a SIGTERM/SIGINT stop),
    `out/model.safetensors` (EMA weights, or the live weights without EMA) + `out/config.json` (save_gpt's /
    save_rar's config plus tokenizer/token_store provenance, `train` settings and `command`).

    Args:
        cfg: the settings. observer: test hook called as `observer(rank, step, store_indices (B,) int64)` for
            every micro-batch. batch_observer: test hook called with the `StepBatch` of every micro-batch.

    Returns:
        A `TrainARResult` (on every rank).

    Raises:
        ValueError: bad options. FileNotFoundError: no store / no checkpoint to resume.
        FileExistsError: `out` already holds a run and `resume` is False.
        TokenStoreError: bad store or model/store size mismatch (all before the first step).
        vfmtok.engine.trainer.NonFiniteLossError: a non-finite loss without skip_nonfinite.
    """
    cfg.validate()
    kind = gen.generator_kind(cfg.model)
    recipe = gen.recipe(kind)
    cfg = dataclasses.replace(cfg, **{name: getattr(recipe, name) for name in (
        "lr", "betas", "weight_decay", "lr_schedule", "end_lr", "views") if getattr(cfg, name) is None})
    if cfg.ema_decay is None and recipe.ema_decay is not None:
        cfg = dataclasses.replace(cfg, ema_decay=recipe.ema_decay)
    info = check_token_store(cfg.tokens)
    per_image = info.neighbours if cfg.views == "all-neighbours" else 1  # sequences per image and step
    if cfg.views == "all-neighbours" and info.neighbours == 1:
        log.warning("train-ar: --views all-neighbours on %s, a store of one neighbour per view: one sequence per "
                    "image (the RAR recipe trains on `extract-tokens --neighbours 2` stores)", info.path)
    accelerator = make_accelerator(cfg.device, cfg.mixed_precision)
    out = Path(_broadcast(accelerator, str(cfg.out if cfg.out is not None else _default_out()))).resolve()
    world = accelerator.num_processes

    val_count = cfg.val_count if cfg.val_count is not None else int(round(cfg.val_fraction * info.num_images))
    if val_count >= info.num_images:
        raise TokenStoreError(f"--val-count {val_count} leaves no training images in {info.path} "
                              f"({info.num_images} images)")
    train_idx, val_idx = split_indices(info.num_images, val_count)
    if cfg.batch_size is None:
        unit = world * cfg.grad_accum
        fitted = min(recipe.batch_size, len(train_idx) // unit * unit)
        if fitted < 1:
            raise TokenStoreError(f"{info.path}: {len(train_idx)} training images cannot fill one batch of "
                                  f"{unit} (processes x --grad-accum)")
        if fitted < recipe.batch_size:
            log.warning("train-ar: batch size %d (the training split holds %d images, fewer than the paper's %d; "
                        "--batch-size to choose)", fitted, len(train_idx), recipe.batch_size)
        cfg = dataclasses.replace(cfg, batch_size=fitted)
    if len(train_idx) < cfg.batch_size:
        raise TokenStoreError(f"{info.path}: {len(train_idx)} training images (after holding out {val_count}) are "
                              f"fewer than one global batch of {cfg.batch_size}; use a smaller --batch-size")
    steps_per_epoch = len(train_idx) // cfg.batch_size
    epochs = cfg.epochs if cfg.epochs is not None else (None if cfg.steps else PAPER_EPOCHS.get(cfg.model, 300))
    total_steps = cfg.steps if cfg.steps is not None else max(1, int(round(epochs * steps_per_epoch)))
    if cfg.warmup_steps is None:
        cfg = dataclasses.replace(cfg, warmup_steps=int(round(recipe.warmup_fraction * total_steps)))
    if cfg.warmup_steps > total_steps:
        raise ValueError(f"--warmup-steps {cfg.warmup_steps} exceeds the run's {total_steps} steps")
    if kind == "rar" and cfg.rar_anneal is None:
        cfg = dataclasses.replace(cfg, rar_anneal=gen.default_anneal(total_steps))
    anneal = tuple(cfg.rar_anneal) if kind == "rar" else None
    ema_warning = short_run_warning(cfg.ema_decay, total_steps)
    if ema_warning and accelerator.is_main_process:
        log.warning(ema_warning)

    # -- model ------------------------------------------------------------------------------------
    if cfg.fsdp:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("--fsdp needs a distributed launch: torchrun --nproc_per_node N -m vfmtok train-ar ... "
                             "--fsdp (or accelerate launch with a multi-GPU config)")
    torch.manual_seed(cfg.seed)  # initialisation depends on --seed only (same on every rank)
    model = gen.build_generator(kind, cfg.model, info, cfg.class_dropout, cfg.dropout, cfg.init_from)
    if cfg.init_from is not None:
        check_model_matches_store(model.config, info, f"--init-from {cfg.init_from}")
    check_model_matches_store(model.config, info, f"model {cfg.model}")
    if cfg.steps is None and cfg.epochs is None and not cfg.resume and accelerator.device.type == "cpu":
        refuse_long_default_run(cfg.model, sum(p.numel() for p in model.parameters()),
                                cfg.batch_size * info.num_tokens, total_steps)
    model.activation_checkpointing = cfg.grad_checkpointing
    model_config = dataclasses.asdict(model.config)
    config_key = gen.config_key(kind)
    # bf16 runs: bf16 all-gathers of the blocks, fp32 gradient reduction, fp32 shards (vfmtok.engine.fsdp)
    fsdp_policy = training_policy(str(accelerator.mixed_precision)) if cfg.fsdp else None

    train_settings = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in dataclasses.asdict(cfg).items()
                      if k not in ("command", "progress", "print_every", "resume")}
    train_settings.update(out=str(out), total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                          val_count=val_count, train_count=len(train_idx), world_size=world,
                          micro_batch=cfg.batch_size // max(1, world * cfg.grad_accum),
                          generator=kind, sequences_per_image=per_image, store_neighbours=info.neighbours,
                          sequences_per_step=cfg.batch_size * per_image,
                          tokens_per_step=cfg.batch_size * per_image * info.num_tokens,
                          mixed_precision=getattr(cfg.mixed_precision, "value", cfg.mixed_precision),
                          effective_precision=str(accelerator.mixed_precision),
                          fsdp_mixed_precision=describe_policy(fsdp_policy),
                          tf32=set_tf32_for_job("train-ar"),
                          device_type=accelerator.device.type,
                          flops_per_token=model.flops_per_token(training=True),
                          num_params=model.num_params())
    settings = _json({config_key: model_config, **_provenance(info), "train": train_settings})
    settings_file = out / SETTINGS_FILE
    if not cfg.resume and (settings_file.exists() or latest_checkpoint(out / "checkpoints") is not None):
        raise FileExistsError(f"{out} already holds a train-ar run; pass --resume to continue it or choose another "
                              "--out")
    accelerator.wait_for_everyone()  # every rank has checked before rank 0 writes train_settings.json
    if cfg.resume:
        if not settings_file.is_file():
            raise FileNotFoundError(f"--resume: {settings_file} not found; {out} is not a train-ar run")
        old = json.loads(settings_file.read_text())
        for key in (config_key, "token_store_manifest_sha256"):
            if old.get(key) != settings[key]:
                raise TokenStoreError(f"--resume: {out} was trained with another {key} ({old.get(key)!r}); this "
                                      f"invocation has {settings[key]!r}")
        changed = [f"{k} {old['train'].get(k)!r} -> {train_settings[k]!r}" for k in (
            "rar_anneal", "lr_schedule", "warmup_steps", "total_steps") if _json(old["train"].get(k)) != _json(
            train_settings[k]) and (k != "total_steps" or anneal is not None or cfg.lr_schedule != "constant")]
        if changed:
            log.warning("train-ar --resume: the step-dependent schedule differs from the run's (%s); the resumed "
                        "steps follow the new one", "; ".join(changed))
        if old["train"].get("val_count") != val_count:
            raise ValueError(f"--resume: the run held out {old['train'].get('val_count')} validation images, this "
                             f"invocation {val_count}; use the same --val-count/--val-fraction")

    # -- optimiser, data, trainer -----------------------------------------------------------------------
    flops_per_token = model.flops_per_token(training=True)
    if cfg.compile:  # per block: forward's id range checks (host syncs) stay outside the compiled graphs
        for layer in gen.blocks(model):
            layer.compile()
    if cfg.fsdp:  # before the optimizer: the optimizer must hold the sharded parameters
        shard_model(model, gen.block_types(kind), accelerator.device, **(fsdp_policy or {}))
    fused = accelerator.device.type == "cuda"
    optimizer = torch.optim.AdamW(gen.param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                                  fused=fused or None)
    if cfg.lr_schedule == "cosine":
        schedulers = {"gpt": warmup_cosine_schedule(optimizer, cfg.warmup_steps, total_steps, cfg.end_lr)}
    elif cfg.warmup_steps:
        schedulers = {"gpt": warmup_constant_schedule(optimizer, cfg.warmup_steps)}
    else:
        schedulers = {}
    dataset = TokenDataset(info.path, seed=cfg.seed, indices=train_idx, return_index=True,
                           all_neighbours=cfg.views == "all-neighbours")
    tcfg = TrainerConfig(out_dir=out, total_steps=total_steps, global_batch=cfg.batch_size,
                         grad_accum=cfg.grad_accum, save_every=cfg.save_every, keep_last=cfg.keep_last,
                         log_every=cfg.log_every, grad_clip=cfg.grad_clip or None,
                         skip_nonfinite=cfg.skip_nonfinite, seed=cfg.seed, num_workers=cfg.num_workers,
                         progress=cfg.progress, print_every=cfg.print_every)

    def step_fn(tr: Trainer, batch: tuple[torch.Tensor, ...]) -> StepOutput:
        codes, labels, rows = batch
        if observer is not None:
            observer(tr.rank, tr.step, rows.cpu())
        if codes.ndim == 3:  # all neighbours: (B, K, L) -> (B K, L), image-major, the label repeated
            labels = labels.repeat_interleave(codes.shape[1])
            codes = codes.flatten(0, 1)
        orders = None
        # ids were range-checked on the host by check_token_store: no per-micro-batch device sync
        if anneal is not None:
            orders = gen.training_orders(cfg.seed, tr.step, rows.cpu(), per_image, info.num_tokens,
                                         gen.order_prob(tr.step, anneal))
            _, loss = tr.models["gpt"](codes, labels, orders=orders.to(codes.device), targets=codes, check_ids=False)
        else:
            _, loss = tr.models["gpt"](codes[:, :-1], labels, targets=codes, check_ids=False)
        if batch_observer is not None:
            batch_observer(StepBatch(tr.rank, tr.step, rows.cpu(), codes.cpu(), labels.cpu(), orders))
        return StepOutput({"gpt": loss})

    val_codes, val_labels = load_val_set(info, val_idx)
    micro = cfg.batch_size // (world * cfg.grad_accum) if cfg.batch_size % (world * cfg.grad_accum) == 0 else 1
    with_ema = cfg.ema_decay is not None
    validator = (_Validator(val_codes, val_labels, cfg.val_batch_size or micro, cfg.val_ema and with_ema)
                 if val_count else None)
    peak = device_peak_flops(accelerator.device, cfg.peak_tflops)
    clock = {"t": time.perf_counter(), "steps": 0}
    eta = {"t0": None, "step0": None, "done": False}
    last: dict[str, Any] = {}

    def check_run_length(tr: Trainer, step: int) -> None:
        """Once, after ETA_CHECK_STEPS timed steps: warn when the run would take longer than LONG_RUN_HOURS."""
        if eta["t0"] is None:
            eta.update(t0=time.perf_counter(), step0=step)
            return
        if eta["done"] or step - eta["step0"] < ETA_CHECK_STEPS:
            return
        eta["done"] = True
        sec_per_step = (time.perf_counter() - eta["t0"]) / (step - eta["step0"])
        hours = sec_per_step * (total_steps - step) / 3600
        if hours > LONG_RUN_HOURS and tr.accelerator.is_main_process:
            log.warning("train-ar: at %.3g s/step on %s the remaining %d steps take about %.1f hours; for a quick run "
                        "choose a smaller --model (e.g. %s) or fewer --steps / --epochs", sec_per_step,
                        tr.device, total_steps - step, hours, "RAR-tiny" if kind == "rar" else "GPT-tiny")

    def after_step(tr: Trainer, record: dict[str, Any]) -> None:
        if anneal is not None:
            record["rar_order_prob"] = gen.order_prob(tr.step, anneal)
        step = tr.step + 1
        check_run_length(tr, step)
        clock["steps"] += 1
        if step % cfg.log_every and step != total_steps:
            return
        elapsed = max(time.perf_counter() - clock["t"], 1e-9)
        tokens_per_s = clock["steps"] * cfg.batch_size * per_image * info.num_tokens / elapsed
        record["tokens_per_s"] = tokens_per_s
        record["mfu"] = tokens_per_s * flops_per_token / (peak * tr.world_size) if peak else None
        if validator is not None and (step % cfg.val_every == 0 or step == total_steps):
            t0 = time.perf_counter()
            record.update(validator(tr))
            record["val_sec"] = time.perf_counter() - t0
        last.clear()
        last.update(record, step=step)
        clock.update(t=time.perf_counter(), steps=0)

    trainer = Trainer(accelerator, tcfg, {"gpt": model}, {"gpt": optimizer}, step_fn, dataset,
                      schedulers=schedulers, ema={"gpt": cfg.ema_decay} if with_ema else {}, after_step=after_step)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:
            settings_file.write_text(json.dumps(settings, indent=2) + "\n")
        log.info("train-ar: %s, %d params, %d steps (%d per epoch), out %s%s", cfg.model,
                 model.num_params(), total_steps, steps_per_epoch, out,
                 f", random orders annealed over steps {anneal[0]}..{anneal[1]}" if anneal else "")
    accelerator.wait_for_everyone()
    clock["t"] = time.perf_counter()  # throughput windows exclude the set-up
    result = trainer.fit(resume=cfg.resume)

    # sharded weights: gathered on every rank (collective), kept by rank 0 only
    full_state = None
    if cfg.fsdp:
        keep = accelerator.is_main_process
        full_state = (trainer.emas["gpt"].full_state_dict(keep=keep) if with_ema else
                      _gather_full(trainer.unwrap("gpt"), keep))
    if accelerator.is_main_process:
        export_ema(trainer, out, settings, cfg.command, result, full_state)
    accelerator.wait_for_everyone()
    return TrainARResult(out, result, dict(last))


def _gather_full(model: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """The full fp32 CPU state dict of an FSDP-sharded model (collective: every rank calls it; `keep` ranks hold it)."""
    out = {}
    for name, tensor in model.state_dict().items():
        full = full_tensor(tensor.detach())
        if keep:
            out[name] = full.to("cpu", torch.float32, copy=True)
    return out


def export_ema(trainer: Trainer, out: Path, settings: dict[str, Any], command: str | None,
               result: TrainResult, ema_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `out/model.safetensors` (EMA weights, or the live weights of a run without EMA; fp32) and
    `out/config.json` (save_gpt's / save_rar's keys + provenance).

    config.json keys: format ("vfmtok.gpt" | "vfmtok.rar"), format_version, gpt_config | rar_config, tokenizer,
    tokenizer_sha256, tokenizer_weights_fingerprint, token_store, token_store_manifest_sha256, train (settings),
    command, step, interrupted, weights ("ema" | "live"), created.

    Args:
        ema_state: the full weights to export (`EMA.full_state_dict()`, or the gathered live weights without EMA),
            required when the model is FSDP-sharded (then written into a fresh unsharded model: same keys and
            shapes as without FSDP); None -> the trainer's EMA (live weights without EMA).

    Raises:
        ValueError: an FSDP-sharded model without `ema_state`, or an `ema_state` lacking model keys.
    """
    live = trainer.unwrap("gpt")
    weights = "ema" if "gpt" in trainer.emas else "live"
    if ema_state is not None:
        with torch.random.fork_rng(devices=[]):  # the throw-away initialisation leaves the RNG untouched
            model = gen.fresh_like(live).eval()
        strict_load(model, ema_state, f"the gathered {weights} weights", what="the model config strictly",
                    convert=floats_to_float32)
    elif "gpt" in trainer.fsdp_models:
        raise ValueError("export_ema: the model is FSDP-sharded; pass ema_state=trainer.emas['gpt'].full_state_dict()")
    else:
        model = copy.deepcopy(live).cpu().float().eval()
        if weights == "ema":
            trainer.emas["gpt"].copy_to(model)
    path = gen.save_generator(model, out)
    doc = json.loads((out / "config.json").read_text())
    doc.update({k: v for k, v in settings.items() if not k.endswith("_config")})
    doc.update(command=command if command is not None else " ".join(sys.argv), step=result.step,
               interrupted=result.interrupted, weights=weights,
               created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    tmp = out / ".config.json.tmp"
    tmp.write_text(json.dumps(_json(doc), indent=2) + "\n")
    os.replace(tmp, out / "config.json")
    return path

