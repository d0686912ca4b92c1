"""Learning-rate schedule of the paper: linear warm-up, then constant.

The official code uses timm's CosineLRScheduler with `lr_min = lr`, i.e. a linear warm-up from 1e-7 followed by
a constant learning rate (shared/reference/vfmtok.md section 2). Here the warm-up is counted in optimizer steps.
"""
from __future__ import annotations

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
