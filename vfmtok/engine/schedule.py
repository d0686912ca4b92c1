"""Learning-rate schedules: the paper's linear warm-up then constant, and RAR's linear warm-up then cosine decay.

The official VFMTok code uses timm's CosineLRScheduler with `lr_min = lr`, i.e. a linear warm-up from 1e-7 followed
by a constant learning rate (shared/reference/vfmtok.md section 2). The authors' RAR recipe (shared/reference/rar.md
section 3) warms up for 62,500 of 250,000 steps, then decays with a cosine to an end lr of 1e-5. Steps are
optimizer steps.
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupConstant:
    """Multiplier of the base lr at step t: `init/base + (1 - init/base) * t / warmup` for t < warmup, else 1.

    A picklable callable (no state) so `LambdaLR.state_dict()` round-trips.

    Args:
        warmup_steps: number of warm-up steps (0 = constant from the start).
        base_lr: the peak learning rate; init_lr: the lr at step 0 (official 1e-7).
    """

    def __init__(self, warmup_steps: int, base_lr: float, init_lr: float = 1e-7) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps, self.ratio = int(warmup_steps), (init_lr / base_lr if base_lr > 0 else 0.0)

    def __call__(self, step: int) -> float:
        if step >= self.warmup_steps:
            return 1.0
        return self.ratio + (1.0 - self.ratio) * step / self.warmup_steps


def warmup_constant_schedule(optimizer: Optimizer, warmup_steps: int, init_lr: float = 1e-7) -> LambdaLR:
    """A `LambdaLR` implementing `WarmupConstant` on `optimizer` (base lr = its first group's `lr`).

    Step it once per optimizer step; `get_last_lr()` then gives the lr of the next step.
    """
    base = optimizer.param_groups[0]["lr"]
    return LambdaLR(optimizer, WarmupConstant(warmup_steps, base, init_lr))


class WarmupCosine:
    """Multiplier of the base lr at step t: linear warm-up from 0, then a half cosine down to `end_lr`.

    m(t) = t / warmup for t < warmup; else with q = (t - warmup) / max(1, total - warmup) clipped to [0, 1]:
    m(t) = (end + (base - end) * (1 + cos(pi * q)) / 2) / base. So m(warmup) = 1 and m(total) = end / base.
    A picklable callable (no state), as `WarmupConstant`.

    Args:
        warmup_steps: warm-up steps (0 = start at the base lr). total_steps: run length (>= warmup_steps).
        base_lr: the peak lr (> 0). end_lr: the lr reached at `total_steps` (0 <= end_lr <= base_lr).

    Raises:
        ValueError: negative or inconsistent steps, or lrs outside 0 <= end_lr <= base_lr, base_lr > 0.
    """

    def __init__(self, warmup_steps: int, total_steps: int, base_lr: float, end_lr: float) -> None:
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"need 0 <= warmup_steps <= total_steps, got {warmup_steps} and {total_steps}")
        if not (base_lr > 0 and 0 <= end_lr <= base_lr):
            raise ValueError(f"need base_lr > 0 and 0 <= end_lr <= base_lr, got {base_lr} and {end_lr}")
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.end_ratio = end_lr / base_lr

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        q = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.end_ratio + (1.0 - self.end_ratio) * (1.0 + math.cos(math.pi * q)) / 2.0


def warmup_cosine_schedule(optimizer: Optimizer, warmup_steps: int, total_steps: int, end_lr: float) -> LambdaLR:
    """A `LambdaLR` implementing `WarmupCosine` on `optimizer` (base lr = its first group's `lr`)."""
    base = optimizer.param_groups[0]["lr"]
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, base, end_lr))
