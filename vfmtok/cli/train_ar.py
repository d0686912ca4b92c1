"""`vfmtok train-ar --tokens STORE --out RUN`: thin CLI over :func:`vfmtok.jobs.train_ar.train_ar`."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from vfmtok.cli.common import (
    DEFAULT_NUM_WORKERS, DeviceOpt, MixedPrecision, NumWorkersOpt, PrintEveryOpt, ProgressOpt, SeedOpt, clamp_workers,
    fail, precision_option,
)

PrecisionOpt = precision_option(
    "Applies to the GPT (fp16 adds loss scaling); the residual stream, the loss logits, master weights, AdamW "
    "state and EMA stay fp32; CPU runs fp32. docs/precision.md")


def _command_line(ctx: typer.Context) -> str:
    """`vfmtok train-ar` plus the options given on the command line (as parsed; reproducible)."""
    words = ["vfmtok", "train-ar"]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if getattr(source, "name", None) != "COMMANDLINE":  # typer may vendor its own click: compare by name
            continue
        value = ctx.params[param.name]
        value = getattr(value, "value", value)
        if isinstance(value, bool):
            flag = param.opts[0] if value or not getattr(param, "secondary_opts", None) else param.secondary_opts[0]
            words.append(flag)
        else:
            words += [param.opts[0], *map(str, value if isinstance(value, tuple) else (value,))]
    return shlex.join(words)


def command(
    ctx: typer.Context,
    tokens: Annotated[Path, typer.Option("--tokens", help="Token store (vfmtok extract-tokens output).")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Run directory (default runs/ar-<UTC timestamp>; `vfmtok sample` picks the latest).")] = None,
    model: Annotated[str, typer.Option(
        "--model", help="GPT preset (GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-2B, GPT-3B, GPT-tiny) or RAR preset "
                        "(RAR-L, RAR-XL, RAR-XXL, RAR-tiny; the RAR recipe, docs/rar.md).")] = "GPT-B",
    steps: Annotated[Optional[int], typer.Option(
        "--steps", help="Total optimizer steps of the run (a resumed run stops there).")] = None,
    epochs: Annotated[Optional[float], typer.Option(
        "--epochs", help="Run length in epochs of the training split (default: the paper's 300 for B/L, "
                         "200 for XL and larger; RAR 400).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="Global batch (images per step, all ranks; x2 sequences with --views all-neighbours on "
                             "a --neighbours 2 store). Default: 512 (GPT) / 2048 (RAR), or what a smaller training "
                             "split holds.")] = None,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Micro-batches per optimizer step.")] = 1,
    lr: Annotated[Optional[float], typer.Option(
        "--lr", help="AdamW (peak) learning rate. Default: GPT 1e-4 (constant), RAR 4e-4.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(
        "--weight-decay", help="AdamW weight decay on >= 2-D parameters (norms: none). Default: GPT 0.05, "
                               "RAR 0.03.")] = None,
    betas: Annotated[Optional[tuple[float, float]], typer.Option(
        "--betas", metavar="BETA1 BETA2", help="AdamW betas. Default: GPT 0.9 0.95, RAR 0.9 0.96.")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(
        "--lr-schedule", help="constant (GPT default) or cosine (RAR default: warm-up, then cosine to --end-lr).")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(
        "--warmup-steps", help="Linear warm-up steps. Default: GPT 0, RAR 25 % of the run.")] = None,
    end_lr: Annotated[Optional[float], typer.Option("--end-lr", help="Final lr of the cosine schedule (1e-5).")] = None,
    views: Annotated[Optional[str], typer.Option(
        "--views", help="per-epoch (one stored view per image and epoch; GPT default) or all-neighbours (nearest and "
                        "second-nearest sequences of an image in the same step; RAR default).")] = None,
    rar_anneal: Annotated[Optional[tuple[int, int]], typer.Option(
        "--rar-anneal", metavar="START END", help="RAR: random orders with probability 1 until step START, linearly down to 0 at END "
                             "(optimizer steps). Default: 50 % and 75 % of the run.")] = None,
    grad_clip: Annotated[float, typer.Option("--grad-clip", help="Max global grad norm (0 = no clipping).")] = 1.0,
    ema_decay: Annotated[Optional[float], typer.Option(
        "--ema-decay", help="EMA decay (exported weights are the EMA). Default: GPT 0.9999, RAR no EMA (exports the "
                            "live weights).")] = None,
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="Fraction of images held out for the validation loss (fixed split).")] = 0.01,
    val_count: Annotated[Optional[int], typer.Option(
        "--val-count", help="Number of held-out images (overrides --val-fraction; 0 = no validation).")] = None,
    val_every: Annotated[int, typer.Option(
        "--val-every", help="Validation period in steps (multiple of --log-every; the last step always).")] = 1000,
    save_every: Annotated[int, typer.Option("--save-every", help="Checkpoint period in steps (0 = end only).")] = 10000,
    keep_last: Annotated[int, typer.Option("--keep-last", help="Checkpoints kept.")] = 3,
    log_every: Annotated[int, typer.Option("--log-every", help="metrics.jsonl period in steps.")] = 10,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out.")] = False,
    num_workers: NumWorkersOpt = DEFAULT_NUM_WORKERS,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the GPT (off by default).")] = False,
    grad_checkpointing: Annotated[bool, typer.Option(
        "--grad-checkpointing", help="Recompute transformer blocks in the backward pass (less memory).")] = False,
    fsdp: Annotated[bool, typer.Option(
        "--fsdp", help="Shard the GPT, its EMA and AdamW over all processes (FSDP2; needs torchrun). bf16 runs "
        "all-gather the blocks in bf16 and reduce gradients in fp32 (docs/precision.md).")] = False,
    class_dropout: Annotated[float, typer.Option(
        "--class-dropout", help="Probability of the null class during training (for CFG).")] = 0.1,
    dropout: Annotated[Optional[float], typer.Option(
        "--dropout", help="Token, residual and FFN dropout (default: the preset's 0.1).")] = None,
    skip_nonfinite: Annotated[bool, typer.Option(
        "--skip-nonfinite", help="Skip steps with a NaN/inf loss or grad norm instead of stopping.")] = False,
    init_from: Annotated[Optional[Path], typer.Option(
        "--init-from", help="Start from GPT weights (run dir, .safetensors, or the authors' GPT-*.pt).")] = None,
    peak_tflops: Annotated[Optional[float], typer.Option(
        "--peak-tflops", help="Device peak TFLOP/s per process for the MFU estimate (default: built-in GPU table).")] = None,
    print_every: PrintEveryOpt = 100,
    progress: ProgressOpt = True,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    mixed_precision: PrecisionOpt = MixedPrecision.bf16,
) -> None:
    """Train a class-conditional GPT or RAR on a token store (docs/train_ar.md, docs/rar.md).

    GPT: AdamW 0.9/0.95, constant lr, EMA. RAR: random token orders annealed to raster, both neighbour sequences
    per image, AdamW 0.9/0.96 with warm-up and cosine decay, no EMA. Writes RUN/model.safetensors (EMA or live
    weights), RUN/config.json (model config + tokenizer and token-store provenance), RUN/checkpoints/ and
    RUN/metrics.jsonl. Multi-GPU / multi-node: launch with torchrun or accelerate launch (DDP; add --fsdp to shard
    the largest models).
    """
    if not (tokens / "manifest.json").is_file():
        fail(f"--tokens {tokens}: no token store there (no manifest.json); make one with `vfmtok extract-tokens "
             "DATA OUT`")
    if init_from is not None and not init_from.exists():
        fail(f"--init-from {init_from}: not found")
    from vfmtok.engine.trainer import NonFiniteLossError
    from vfmtok.data.token_store.reader import TokenStoreError
    from vfmtok.jobs.train_ar import train_ar
    from vfmtok.jobs.train_ar_config import TrainARConfig

    cfg = TrainARConfig(
        tokens=tokens, out=out, model=model, steps=steps, epochs=epochs, batch_size=batch_size,
        grad_accum=grad_accum, lr=lr, weight_decay=weight_decay, betas=None if betas is None else tuple(betas),
        grad_clip=grad_clip, ema_decay=ema_decay, lr_schedule=lr_schedule, warmup_steps=warmup_steps, end_lr=end_lr,
        views=views, rar_anneal=None if rar_anneal is None else tuple(rar_anneal), val_fraction=val_fraction, val_count=val_count, val_every=val_every,
        save_every=save_every, keep_last=keep_last, log_every=log_every, resume=resume, num_workers=clamp_workers(num_workers),
        compile=compile_, grad_checkpointing=grad_checkpointing, fsdp=fsdp, class_dropout=class_dropout, dropout=dropout,
        skip_nonfinite=skip_nonfinite, seed=seed, device=device, mixed_precision=mixed_precision.value,
        init_from=init_from, peak_tflops=peak_tflops, progress=progress, print_every=print_every,
        command=_command_line(ctx),
    )
    try:
        res = train_ar(cfg)
    except (TokenStoreError, FileNotFoundError, FileExistsError, KeyError, ValueError, NonFiniteLossError) as err:
        fail(str(err).strip("'\""))
    if res.result.interrupted:
        typer.echo(f"interrupted at step {res.result.step}; weights of that step in {res.out}; continue with "
                   "--resume", err=True)
        raise typer.Exit(128 + (res.result.signal or 15))
    typer.echo(f"{res.out}: {res.result.step} steps; {'final' if cfg.model.startswith('RAR') and ema_decay is None else 'EMA'} "
               f"weights in {res.out / 'model.safetensors'}")
