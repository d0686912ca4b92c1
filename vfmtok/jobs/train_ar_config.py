"""The settings of a `train-ar` run (`TrainARConfig`) and their validation, which needs no model or data."""
from __future__ import annotations

import os
from dataclasses import dataclass

from vfmtok.jobs import ar_generators as gen


@dataclass
class TrainARConfig:
    """Settings of a `train-ar` run (None = the recipe of the model's family, `vfmtok.jobs.ar_generators`).

    Attributes:
        tokens: token store directory (`vfmtok extract-tokens` output).
        out: run directory; None -> `runs/ar-<UTC timestamp>`.
        model: GPT preset (`vfmtok.models.gpt_config.GPT_PRESETS`) or RAR preset
            (`vfmtok.models.rar_config.RAR_PRESETS`: RAR-tiny, RAR-L, RAR-XL, RAR-XXL).
        steps / epochs: length of the whole run in optimizer steps, or in epochs over the training split
            (at most one; neither -> the paper's epochs for the preset (RAR: 400), 300 for the tiny presets).
        batch_size: global batch in images per optimizer step over all ranks and micro-batches (with
            views="all-neighbours" each image gives K sequences); None: the recipe's 512 (GPT) / 2048 (RAR), or
            the largest multiple of (processes x grad_accum) that the training split holds when it holds fewer
            images (so small own datasets train as typed).
        grad_accum: micro-batches per optimizer step.
        lr, weight_decay, betas, grad_clip, ema_decay: optimiser recipe (weight decay on >= 2-D params only; RAR
            also excludes its embedding tables). ema_decay None: the recipe's (GPT 0.9999, RAR no EMA, so the live
            weights are exported).
        lr_schedule: "constant" (GPT) | "cosine" (RAR: linear warm-up, then cosine to `end_lr`).
        warmup_steps: linear warm-up in optimizer steps (None: the recipe's fraction of the run, RAR 25 %, GPT 0).
        end_lr: final lr of the cosine schedule (None: 1e-5).
        views: "per-epoch" (one stored view per image and epoch; GPT default) or "all-neighbours" (every
            neighbour sequence of one crop view per image, `extract-tokens --neighbours 2`; RAR default).
        rar_anneal: RAR's random-order anneal (start, end) in optimizer steps: probability 1 before start, linear
            to 0 at end, 0 after (None: 50 % and 75 % of the run, the authors' 125,000 / 187,500 of 250,000).
        val_fraction / val_count: size of the held-out split (val_count wins when given); 0 disables validation.
        val_every: validation period in steps (multiple of log_every; the last step is always validated).
        val_batch_size: per-rank batch of the validation pass (None -> the per-rank micro-batch).
        val_ema: also report the validation loss of the EMA weights (`val_loss_ema`).
        save_every, keep_last, log_every: checkpoint / logging periods (steps) and checkpoints kept.
        resume: continue from the latest checkpoint in `out`.
        num_workers: DataLoader workers per rank.
        compile: `nn.Module.compile()` each transformer block (state-dict keys unchanged).
        grad_checkpointing: recompute each transformer block in the backward pass.
        fsdp: shard the GPT over all processes with FSDP2 (one unit per TransformerBlock, FULL_SHARD), with a
            sharded EMA and sharded checkpoints (`checkpoints/step_N/sharded/`); needs a distributed launch
            (torchrun / accelerate launch). The exported weights are the full EMA, as without it. A bf16 run
            all-gathers the blocks in bf16 and reduces their gradients in fp32 (`vfmtok.engine.fsdp.training_policy`,
            recorded as `fsdp_mixed_precision`); shards, AdamW state, EMA and export stay fp32.
        class_dropout: probability of the null class in training (CFG); dropout: token/residual/FFN dropout
            (None keeps the preset's 0.1).
        skip_nonfinite: skip steps with a non-finite loss/grad norm instead of stopping.
        seed, device, mixed_precision: as everywhere (bf16/fp16 autocast on CUDA only).
        init_from: optional weights to start from (run dir, .safetensors or the authors' GPT-*.pt / RAR
            safetensors); must be of the family of `model`.
        peak_tflops: device peak (TFLOP/s per process) for the MFU estimate; None -> `PEAK_BF16_FLOPS` on CUDA,
            no MFU on CPU.
        progress: tqdm bar on the main process.
        print_every: one summary line (losses, validation losses, lr, grad norm, tokens/s, MFU, ETA) every this
            many steps on the main process (0 = never); see `TrainerConfig.print_every`.
        command: the command line recorded in config.json (None -> sys.argv).
    """

    tokens: str | os.PathLike
    out: str | os.PathLike | None = None
    model: str = "GPT-B"
    steps: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    grad_accum: int = 1
    lr: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] | None = None
    grad_clip: float = 1.0
    ema_decay: float | None = None
    lr_schedule: str | None = None
    warmup_steps: int | None = None
    end_lr: float | None = None
    views: str | None = None
    rar_anneal: tuple[int, int] | None = None
    val_fraction: float = 0.01
    val_count: int | None = None
    val_every: int = 1000
    val_batch_size: int | None = None
    val_ema: bool = True
    save_every: int = 10000
    keep_last: int = 3
    log_every: int = 10
    resume: bool = False
    num_workers: int = 2
    compile: bool = False
    grad_checkpointing: bool = False
    fsdp: bool = False
    class_dropout: float = 0.1
    dropout: float | None = None
    skip_nonfinite: bool = False
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "bf16"
    init_from: str | os.PathLike | None = None
    peak_tflops: float | None = None
    progress: bool = True
    print_every: int = 100
    command: str | None = None

    def validate(self) -> None:
        """Raises ValueError naming the first bad option."""
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps {self.steps}: expected >= 1")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"--epochs {self.epochs}: expected > 0")
        for name in ("batch_size", "grad_accum", "log_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction {self.val_fraction}: expected in [0, 1)")
        if self.val_count is not None and self.val_count < 0:
            raise ValueError(f"--val-count {self.val_count}: expected >= 0")
        if self.val_every < 1 or self.val_every % self.log_every:
            raise ValueError(f"--val-every {self.val_every} must be a positive multiple of --log-every {self.log_every}")
        if (self.lr is not None and self.lr <= 0) or (self.weight_decay or 0) < 0 or self.grad_clip < 0:
            raise ValueError(f"--lr {self.lr} must be > 0, --weight-decay {self.weight_decay} and --grad-clip "
                             f"{self.grad_clip} >= 0")
        if self.betas is not None and (len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas)):
            raise ValueError(f"--betas {self.betas}: expected two values in [0, 1)")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay {self.ema_decay}: expected in [0, 1)")
        if self.lr_schedule is not None and self.lr_schedule not in gen.LR_SCHEDULES:
            raise ValueError(f"--lr-schedule {self.lr_schedule!r}: expected one of {', '.join(gen.LR_SCHEDULES)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps {self.warmup_steps}: expected >= 0")
        if self.end_lr is not None and self.end_lr < 0:
            raise ValueError(f"--end-lr {self.end_lr}: expected >= 0")
        if self.views is not None and self.views not in gen.VIEWS:
            raise ValueError(f"--views {self.views!r}: expected one of {', '.join(gen.VIEWS)}")
        if self.rar_anneal is not None:
            if gen.generator_kind(self.model) != "rar":
                raise ValueError(f"--rar-anneal applies to RAR models (RAR-tiny, RAR-L, ...), not --model {self.model}")
            if len(self.rar_anneal) != 2 or not 0 <= self.rar_anneal[0] <= self.rar_anneal[1]:
                raise ValueError(f"--rar-anneal {tuple(self.rar_anneal)}: expected START END with 0 <= START <= END "
                                 "(optimizer steps)")
        if self.fsdp and getattr(self.mixed_precision, "value", self.mixed_precision) == "fp16":
            raise ValueError("--fsdp with --mixed-precision fp16 is not supported (fp16 loss scaling over sharded "
                             "gradients); use bf16")
