"""Tokenizer training (the core of `vfmtok train-tokenizer`): the paper's recipe on the generic Trainer.

Recipe (shared/reference/vfmtok.md sections 1.5 and 2): ADM random crop (0.8-1.0) + flip at the tokenizer's image
size; Adam(0.9, 0.95) lr 1e-4 with linear warm-up (default 4 epochs) then constant, the same Adam for the
discriminator (no schedule); grad clip 1.0; EMA 0.9999 of the trainable weights; generator loss
2*MSE + LPIPS + (1 - cos) semantic + VQ + 0.5 * non-saturating GAN loss from step 20000; hinge discriminator loss
(weighted by the same 0.5). Deviation: before `disc_start` the discriminator is not run at all (the official code
runs it and steps Adam on a zero loss, which only advances Adam's step counter).

Outputs in RUN (DESIGN.md): `tokenizer.safetensors` (EMA weights, frozen encoder excluded) + `config.json`
(tokenizer config + the training settings), `checkpoints/`, `metrics.jsonl`, `grids/step_*.png`,
`train_args.json`.

Debug hook (off by default): with the environment variable `VFMTOK_TRAIN_DEBUG=1`, every rank `r` also writes
`RUN/debug/samples_rank{r}.jsonl` (one line per micro-batch: `{"step", "epoch", "micro", "indices", "labels"}` with
1-based `step` as in metrics.jsonl and `indices` the dataset indices of the rank's micro-batch, in order; appended,
so a resumed run continues the file) and, when the run ends, `RUN/debug/params_rank{r}.json` (`{"step", "models":
{model: {param: sha256}}, "ema": {model: {param: sha256}}}`: SHA-256 of the raw bytes of every trainable parameter
and EMA shadow tensor of that rank). Used by the 2-process test to show that ranks see disjoint samples and end
with bit-identical weights.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vfmtok.device import set_tf32_for_job
from vfmtok.engine.accel import make_accelerator
from vfmtok.engine.ema import short_run_warning
from vfmtok.engine.checkpoint import latest_checkpoint
from vfmtok.engine.loader import AugmentedImages, open_image_dataset
from vfmtok.engine.fsdp import local
from vfmtok.engine.schedule import WarmupConstant, warmup_constant_schedule
from vfmtok.engine.trainer import StepOutput, Trainer, TrainerConfig, TrainResult, seed_everything
from vfmtok.metrics.codebook import CodebookUsage
from vfmtok.losses import LPIPS, TokenizerLossConfig, adversarial_weight, generator_loss, hinge_d_loss
from vfmtok.models.vgg16_weights import warn_if_poisoned_torchvision_vgg16

log = logging.getLogger(__name__)

DEBUG_ENV = "VFMTOK_TRAIN_DEBUG"  # "1": per-rank sample and parameter-digest files under RUN/debug/ (module docstring)


def _debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def _tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 hex digest of the raw bytes of `t` (any dtype/device; contiguous CPU copy, dtype kept; a sharded
    DTensor is hashed by its local shard)."""
    flat = local(t).detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def write_param_digests(trainer: Trainer, path: Path) -> None:
    """Write `{"step", "models": {name: {param: sha256}}, "ema": {name: {param: sha256}}}` of this rank to `path`.

    Only trainable parameters (`requires_grad=True`) of the unwrapped models and the EMA shadows are hashed (raw
    bytes, dtype as stored), so two ranks hold bit-identical weights iff their files are equal.
    """
    digests = {
        "step": trainer.step,
        "models": {n: {k: _tensor_sha256(p) for k, p in trainer.unwrap(n).named_parameters() if p.requires_grad}
                   for n in trainer.models},
        "ema": {n: {k: _tensor_sha256(v) for k, v in e.shadow.items()} for n, e in trainer.emas.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")


@dataclass
class TokenizerTrainConfig:
    """Settings of a tokenizer run (CLI options map 1:1; defaults = the paper's recipe where it has one).

    Attributes:
        data: prepared data (prepare-data output) or an image folder.
        out: run directory.
        preset: tokenizer preset ("tiny", "vfmtok-l").
        tokenizer_overrides: `TokenizerConfig` fields replacing the preset's (e.g. {"codebook_size": 4096}).
        encoder: frozen encoder name (`vfmtok.models.encoders`), applied before `tokenizer_overrides`; None = the
            preset's.
        steps / epochs: length of the run (total optimizer steps; `steps` wins; default 1 epoch).
        batch_size: global batch (all processes and accumulation micro-batches).
        grad_accum: micro-batches per step.
        lr, betas, grad_clip, ema_decay: optimizer settings (1e-4, (0.9, 0.95), 1.0, 0.9999).
        warmup_steps: linear warm-up length; None = 4 epochs (paper).
        disc: "dino", "patchgan", "none" or "auto" (dino for vfmtok-l, patchgan otherwise).
        disc_weights: DINO discriminator weights ("pretrained", "random" or a file).
        loss: the loss weights (`TokenizerLossConfig`; `disc_start`, `adv_weight` live there).
        encoder_weights: frozen encoder weights (see `vfmtok.create_tokenizer`).
        save_every, keep_last, log_every, grid_every: periods in steps (grid_every 0 = no grids).
        usage_window: codes in the codebook-usage window (65536, official); usage_warn: warn below this fraction.
        skip_nonfinite, num_workers, seed, device, mixed_precision, resume, progress, print_every: see the CLI.
    """

    data: str
    out: str
    preset: str = "tiny"
    tokenizer_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    encoder: str | None = None
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    warmup_steps: int | None = None
    disc: str = "auto"
    disc_weights: str | None = None
    loss: TokenizerLossConfig = dataclasses.field(default_factory=TokenizerLossConfig)
    encoder_weights: str | None = None
    save_every: int = 5000
    keep_last: int = 3
    log_every: int = 10
    grid_every: int = 1000
    usage_window: int = 65536
    usage_warn: float = 0.05
    skip_nonfinite: bool = False
    num_workers: int = 4
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "bf16"
    resume: bool = False
    progress: bool = True
    print_every: int = 100


def _psnr(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean over images of PSNR in dB between clamp(recon, -1, 1) and images, both mapped to [0, 1]."""
    mse = ((recon.detach().float().clamp(-1, 1) - images.float()) / 2).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()


def _save_grid(path: Path, images: torch.Tensor, recon: torch.Tensor) -> None:
    """PNG with the inputs in the top row and their reconstructions below (both clamped from [-1, 1])."""
    from torchvision.utils import save_image

    n = images.shape[0]
    both = torch.cat([images.float(), recon.detach().float().clamp(-1, 1)]).cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((both + 1) / 2, str(path), nrow=n, padding=2)


class TokenizerStep:
    """Step function and after-step hook of tokenizer training (see `vfmtok.engine.trainer`)."""

    def __init__(self, cfg: TokenizerTrainConfig, lpips_fn: LPIPS | None, has_disc: bool, usage: CodebookUsage,
                 out: Path) -> None:
        self.cfg, self.loss_cfg, self.lpips_fn, self.has_disc = cfg, cfg.loss, lpips_fn, has_disc
        self.usage, self.out = usage, out
        self.preview: tuple[torch.Tensor, torch.Tensor] | None = None
        self.collapsed = False
        self.debug = _debug_enabled()
        self._micro = (-1, 0)  # (step, micro-batch index within it) for the debug sample log

    def _log_samples(self, tr: Trainer, batch: Any) -> None:
        """Append this rank's micro-batch (dataset indices, labels) to RUN/debug/samples_rank{r}.jsonl."""
        micro = self._micro[1] + 1 if self._micro[0] == tr.step else 0
        self._micro = (tr.step, micro)
        rec = {"step": tr.step + 1, "epoch": tr.step // tr.steps_per_epoch, "micro": micro,
               "indices": [int(i) for i in batch[2]], "labels": [int(v) for v in batch[1]]}
        path = self.out / "debug" / f"samples_rank{tr.rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def __call__(self, tr: Trainer, batch: Any) -> StepOutput:
        images = batch[0]
        if self.debug:
            self._log_samples(tr, batch)
        lc = self.loss_cfg
        out = tr.models["tok"](images, return_semantic=lc.semantic_weight > 0)
        w_adv = adversarial_weight(tr.step, lc.adv_weight, lc.disc_start)
        use_disc = self.has_disc and w_adv > 0
        logits_fake = None
        if use_disc:  # generator side: D's heads must not collect gradients from the generator loss
            disc = tr.unwrap("disc")
            trainable = [p for p in disc.parameters() if p.requires_grad]
            for p in trainable:
                p.requires_grad_(False)
            try:
                logits_fake = disc(out.recon)
            finally:
                for p in trainable:
                    p.requires_grad_(True)
        total, terms = generator_loss(lc, images, out.recon, out.vq_codebook_loss, out.vq_commit_loss,
                                      out.semantic_pred, out.semantic_target, self.lpips_fn, logits_fake, tr.step)
        losses = {"tok": total}
        logs: dict[str, Any] = {k: v.detach() for k, v in terms.items()}
        logs["psnr"] = _psnr(out.recon, images)
        if use_disc:
            logits_real = tr.models["disc"](images)
            logits_fake_d = tr.models["disc"](out.recon.detach())
            d_hinge = hinge_d_loss(logits_real, logits_fake_d)
            losses["disc"] = w_adv * d_hinge
            logs.update(d_hinge=d_hinge.detach(), logits_real=logits_real.detach().float().mean(),
                        logits_fake=logits_fake_d.detach().float().mean())
        self.usage.update(tr.accelerator.gather(out.codes.contiguous()) if tr.world_size > 1 else out.codes)
        if tr.accelerator.is_main_process:
            k = min(8, images.shape[0])
            self.preview = (images[:k].detach(), out.recon[:k].detach())
        return StepOutput(losses, logs)

    def after_step(self, tr: Trainer, record: dict[str, Any]) -> None:
        usage = self.usage.usage()
        record["codebook_usage"] = usage
        record["usage_window_fill"] = self.usage.filled / self.usage.window
        full = self.usage.filled >= self.usage.window
        collapsed = full and usage < self.cfg.usage_warn
        if collapsed and not self.collapsed and tr.accelerator.is_main_process:
            log.warning("codebook usage collapsed: %.4f of %d codes used in the last %d codes (< %.3f) at step %d",
                        usage, self.usage.codebook_size, self.usage.window, self.cfg.usage_warn, tr.step + 1)
        self.collapsed = collapsed
        step = tr.step + 1
        if (self.cfg.grid_every and step % self.cfg.grid_every == 0 and self.preview is not None
                and tr.accelerator.is_main_process):
            _save_grid(self.out / "grids" / f"step_{step:08d}.png", *self.preview)


def _resolve_disc(cfg: TokenizerTrainConfig) -> str:
    if cfg.disc == "auto":
        return "dino" if cfg.preset == "vfmtok-l" else "patchgan"
    return cfg.disc


def export_ema_tokenizer(trainer: Trainer, out: Path, extra: dict[str, Any]) -> Path:
    """Write `out/tokenizer.safetensors` + `out/config.json` from the EMA weights (main process only)."""
    from vfmtok.models.tokenizer_io import save_tokenizer

    tok = copy.deepcopy(trainer.unwrap("tok")).to("cpu")
    trainer.emas["tok"].copy_to(tok)
    return save_tokenizer(tok, out, extra=extra)


def train_tokenizer(cfg: TokenizerTrainConfig) -> TrainResult:
    """Run (or resume) tokenizer training; see the module docstring.

    Raises:
        FileExistsError: `out` already holds checkpoints and `resume` is False.
        FileNotFoundError, ValueError, RuntimeError: data, weights or settings problems (messages name them).
        vfmtok.engine.trainer.NonFiniteLossError: a non-finite loss without `skip_nonfinite`.
    """
    from vfmtok.models.discriminator import create_discriminator
    from vfmtok.models.tokenizer_io import create_tokenizer

    out = Path(cfg.out)
    has_ckpt = latest_checkpoint(out / "checkpoints") is not None
    if has_ckpt and not cfg.resume:
        raise FileExistsError(f"{out} already holds checkpoints; pass --resume to continue it or choose another --out")
    # With --semantic-weight 0 the semantic decoder branch is not run, so its parameters get no gradient and DDP
    # must look for unused parameters (an extra autograd traversal per step; torch warns when it was not needed).
    accelerator = make_accelerator(cfg.device, cfg.mixed_precision,
                                   find_unused_parameters=cfg.loss.semantic_weight == 0)
    seed_everything(cfg.seed)  # model initialisation (identical on every rank)
    overrides = {**({"encoder": cfg.encoder} if cfg.encoder else {}), **cfg.tokenizer_overrides}
    tok = create_tokenizer(cfg.preset, encoder_weights=cfg.encoder_weights, **overrides)
    size = tok.config.image_size
    dataset = AugmentedImages(open_image_dataset(cfg.data), size, seed=cfg.seed)
    micro_total = accelerator.num_processes * cfg.grad_accum
    steps_per_epoch = len(dataset) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{cfg.data}: {len(dataset)} images, fewer than one batch of --batch-size {cfg.batch_size}")
    total = cfg.steps if cfg.steps is not None else max(1, round((cfg.epochs or 1) * steps_per_epoch))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else 4 * steps_per_epoch
    if warmup >= total and accelerator.is_main_process:
        last_lr = cfg.lr * WarmupConstant(warmup, cfg.lr)(total - 1)
        log.warning("warm-up of %d steps%s is not shorter than the run (%d steps): the learning rate never reaches "
                    "--lr %g (last step: %.3g); pass --warmup-steps or train longer (--epochs / --steps)", warmup,
                    "" if cfg.warmup_steps is not None else " (default: 4 epochs)", total, cfg.lr, last_lr)
    ema_warning = short_run_warning(cfg.ema_decay, total)
    if ema_warning and accelerator.is_main_process:
        log.warning(ema_warning)
    disc_kind = _resolve_disc(cfg)
    disc = create_discriminator(disc_kind, cfg.disc_weights) if disc_kind != "none" else None
    warn_if_poisoned_torchvision_vgg16()  # a file earlier versions wrote into torchvision's cache (issue #19)
    lpips_fn = LPIPS().to(accelerator.device) if cfg.loss.perceptual_weight > 0 else None
    opt_tok = torch.optim.Adam(list(tok.trainable_parameters()), lr=cfg.lr, betas=cfg.betas)
    models: dict[str, torch.nn.Module] = {"tok": tok}
    optimizers: dict[str, torch.optim.Optimizer] = {"tok": opt_tok}
    if disc is not None:
        models["disc"] = disc
        optimizers["disc"] = torch.optim.Adam([p for p in disc.parameters() if p.requires_grad], lr=cfg.lr,
                                              betas=cfg.betas)
    usage = CodebookUsage(tok.config.codebook_size, cfg.usage_window)
    step = TokenizerStep(cfg, lpips_fn, disc is not None, usage, out)
    tcfg = TrainerConfig(
        out_dir=out, total_steps=total, global_batch=cfg.batch_size, grad_accum=cfg.grad_accum,
        save_every=cfg.save_every, keep_last=cfg.keep_last, log_every=cfg.log_every, grad_clip=cfg.grad_clip,
        skip_nonfinite=cfg.skip_nonfinite, seed=cfg.seed, num_workers=cfg.num_workers, progress=cfg.progress,
        print_every=cfg.print_every,
    )
    trainer = Trainer(accelerator, tcfg, models, optimizers, step, dataset,
                      schedulers={"tok": warmup_constant_schedule(opt_tok, warmup)},
                      ema={"tok": cfg.ema_decay}, extra_state={"codebook_usage": usage}, after_step=step.after_step)
    settings = {
        **dataclasses.asdict(cfg), "disc": disc_kind, "total_steps": total, "warmup_steps": warmup,
        "steps_per_epoch": steps_per_epoch, "num_images": len(dataset), "world_size": accelerator.num_processes,
        "micro_batch": cfg.batch_size // micro_total,
        "effective_precision": str(accelerator.mixed_precision),  # CPU runs are always fp32 ("no")
        "tf32": set_tf32_for_job("train-tokenizer"),
    }
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_args.json").write_text(json.dumps(
            {"command": sys.argv, "settings": settings, "time": time.time()}, indent=1, default=str) + "\n")
        log.info("training %s (encoder %s, %s) on %d images: %d steps (%d per epoch), global batch %d, disc %s",
                 cfg.preset, tok.config.encoder, tok.config.vfm_name, len(dataset), total, steps_per_epoch,
                 cfg.batch_size, disc_kind)
    if cfg.resume and not has_ckpt and accelerator.is_main_process:
        log.warning("--resume: no checkpoint under %s yet; starting from scratch", out / "checkpoints")
    result = trainer.fit(resume=cfg.resume and has_ckpt)
    if step.debug:
        write_param_digests(trainer, out / "debug" / f"params_rank{trainer.rank}.json")
    if accelerator.is_main_process:
        export_ema_tokenizer(trainer, out, {"training": settings, "steps_done": result.step,
                                            "command": sys.argv, "weights": "ema"})
    accelerator.wait_for_everyone()
    return result
