"""`vfmtok train-tokenizer`: thin CLI over `vfmtok.jobs.train_tokenizer`."""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vfmtok.cli.common import (
    DEFAULT_NUM_WORKERS, DeviceOpt, MixedPrecision, NumWorkersOpt, PrintEveryOpt, ProgressOpt, SeedOpt, clamp_workers,
    fail, precision_option,
)

PrecisionOpt = precision_option(
    "Applies to the training step (fp16 adds loss scaling); deformable attention, the quantizer, the losses, "
    "master weights, optimizer state and EMA stay fp32; CPU runs fp32. docs/precision.md")


class Disc(str, Enum):
    auto = "auto"
    dino = "dino"
    patchgan = "patchgan"
    none = "none"


class PixelLoss(str, Enum):
    l2 = "l2"
    l1 = "l1"


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--set {item!r}: expected KEY=VALUE (VALUE in JSON, e.g. codebook_size=4096)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def command(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Prepared data (prepare-data output) or an image folder (class folders / ImageNet root).")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Run directory (created). Default: runs/tokenizer-<preset> (where extract-tokens looks).")] = None,
    preset: Annotated[str, typer.Option("--preset", help="Tokenizer preset: tiny | vfmtok-l.")] = "tiny",
    steps: Annotated[Optional[int], typer.Option("--steps", help="Total optimizer steps of the run (a resumed run stops there).")] = None,
    epochs: Annotated[Optional[float], typer.Option("--epochs", help="Length in epochs when --steps is not given (default 1; paper 50).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Global batch size (all processes x accumulation).")] = 16,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Micro-batches per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate of the tokenizer and the discriminator (paper 1e-4).")] = 1e-4,
    warmup_steps: Annotated[Optional[int], typer.Option("--warmup-steps", help="Linear warm-up steps from 1e-7 (default: 4 epochs, paper).")] = None,
    ema_decay: Annotated[float, typer.Option("--ema-decay", help="EMA decay of the exported weights (paper 0.9999; lower it for short runs).")] = 0.9999,
    grad_clip: Annotated[float, typer.Option("--grad-clip", help="Gradient-norm clip (0 = off).")] = 1.0,
    save_every: Annotated[int, typer.Option("--save-every", help="Checkpoint every N steps (also at the end and on SIGTERM/SIGINT).")] = 5000,
    keep_last: Annotated[int, typer.Option("--keep-last", help="Checkpoints to keep.")] = 3,
    log_every: Annotated[int, typer.Option("--log-every", help="metrics.jsonl period in steps.")] = 10,
    grid_every: Annotated[int, typer.Option("--grid-every", help="Reconstruction grid PNG period in steps (0 = none).")] = 1000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out (fresh start if none).")] = False,
    num_workers: NumWorkersOpt = DEFAULT_NUM_WORKERS,
    disc: Annotated[Disc, typer.Option("--disc", help="Discriminator: dino (paper) | patchgan | none | auto (dino for vfmtok-l, else patchgan).")] = Disc.auto,
    disc_start: Annotated[int, typer.Option("--disc-start", help="First step with the adversarial loss (paper 20000).")] = 20000,
    disc_weight: Annotated[float, typer.Option("--disc-weight", help="Adversarial weight (paper 0.5).")] = 0.5,
    disc_weights: Annotated[Optional[Path], typer.Option("--disc-weights", metavar="FILE", help="DINO ViT-S/16 weights: dino_deitsmall16_pretrain.pth (default: timm hub cache).")] = None,
    encoder: Annotated[Optional[str], typer.Option("--encoder", help="Frozen encoder: dinov2 (paper) | clip-b16 | siglip-b16 | eva02-b14 | resnet50 | convnext-t | vgg16-imagenet | vit:TIMM_NAME | cnn:TIMM_NAME (default: the preset's; docs/encoders.md). Resets vfm_* settings to the encoder's defaults; --set still overrides.")] = None,
    encoder_weights: Annotated[Optional[Path], typer.Option("--encoder-weights", metavar="FILE", help="Frozen VFM weights file (e.g. dinov2_vitl14_reg4_pretrain.pth); default: the preset's source.")] = None,
    pixel_loss: Annotated[PixelLoss, typer.Option("--pixel-loss", help="l2 (2 x MSE, official) | l1.")] = PixelLoss.l2,
    perceptual_weight: Annotated[float, typer.Option("--perceptual-weight", help="LPIPS-VGG weight (1.0; 0 = off).")] = 1.0,
    semantic_weight: Annotated[float, typer.Option("--semantic-weight", help="Semantic (1 - cos) weight (1.0).")] = 1.0,
    usage_window: Annotated[int, typer.Option("--usage-window", help="Codes in the codebook-usage window (65536).")] = 65536,
    usage_warn: Annotated[float, typer.Option("--usage-warn", help="Warn when usage of a full window falls below this fraction.")] = 0.05,
    skip_nonfinite: Annotated[bool, typer.Option("--skip-nonfinite", help="Skip (and count) steps with a non-finite loss instead of stopping.")] = False,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Tokenizer config override KEY=VALUE (repeatable).")] = None,
    print_every: PrintEveryOpt = 100,
    progress: ProgressOpt = True,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    mixed_precision: PrecisionOpt = MixedPrecision.bf16,
) -> None:
    """Train a VFMTok tokenizer with the paper's recipe (resumable, multi-GPU with torchrun/accelerate launch).

    Writes OUT/tokenizer.safetensors (EMA weights), OUT/config.json, OUT/checkpoints/, OUT/metrics.jsonl and
    OUT/grids/*.png. Example: vfmtok train-tokenizer demo_data --out runs/tok --preset tiny --steps 500
    """
    # cheap checks first: a bad argument is refused before torch is imported
    if not data.exists():
        fail(f"DATA {data}: not found (expected prepared data or a folder of images)")
    if steps is not None and steps < 1:
        fail(f"--steps must be >= 1, got {steps}")
    if batch_size < 1 or grad_accum < 1:
        fail(f"--batch-size ({batch_size}) and --grad-accum ({grad_accum}) must be >= 1")
    tokenizer_overrides = _parse_overrides(overrides or [])
    from vfmtok.io.hub import is_hub_ref

    for flag, path in (("--disc-weights", disc_weights), ("--encoder-weights", encoder_weights)):
        if path is not None and str(path) not in ("pretrained", "random") and not is_hub_ref(path) and not path.is_file():
            fail(f"{flag} {path}: file not found (a weights file, a Hub reference, 'pretrained' or 'random')")
    from vfmtok.engine.trainer import NonFiniteLossError
    from vfmtok.jobs.train_tokenizer import TokenizerTrainConfig, train_tokenizer
    from vfmtok.losses import TokenizerLossConfig

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if out is None:
        out = Path("runs") / f"tokenizer-{preset}"
        typer.echo(f"run directory: {out} (--out to choose)")
    cfg = TokenizerTrainConfig(
        data=str(data), out=str(out), preset=preset, tokenizer_overrides=tokenizer_overrides,
        steps=steps, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps,
        ema_decay=ema_decay, grad_clip=grad_clip, save_every=save_every, keep_last=keep_last, log_every=log_every,
        grid_every=grid_every, resume=resume, num_workers=clamp_workers(num_workers), disc=disc.value,
        disc_weights=None if disc_weights is None else str(disc_weights), encoder=encoder,
        encoder_weights=None if encoder_weights is None else str(encoder_weights), usage_window=usage_window,
        usage_warn=usage_warn,
        skip_nonfinite=skip_nonfinite, seed=seed, device=device, mixed_precision=mixed_precision.value,
        progress=progress, print_every=print_every,
        loss=TokenizerLossConfig(pixel=pixel_loss.value, perceptual_weight=perceptual_weight,
                                 semantic_weight=semantic_weight, adv_weight=disc_weight, disc_start=disc_start),
    )
    try:
        result = train_tokenizer(cfg)
    except NonFiniteLossError as err:
        fail(str(err), code=1)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, RuntimeError) as err:
        fail(str(err).strip("'\""))
    if int(os.environ.get("RANK", "0")) != 0:  # one report per job under torchrun / accelerate launch
        sys.exit(128 + result.signal if result.interrupted and result.signal else 0)
    if result.interrupted:
        name = signal.Signals(result.signal).name if result.signal else "signal"
        typer.echo(f"interrupted by {name} at step {result.step}; checkpoint {result.checkpoint}; "
                   f"continue with the same command plus --resume", err=True)
        sys.exit(128 + (result.signal or signal.SIGTERM))
    typer.echo(f"trained {result.step} steps; tokenizer: {out / 'tokenizer.safetensors'}; "
               f"checkpoint: {result.checkpoint}; skipped steps: {result.skipped_steps}")
