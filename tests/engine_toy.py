"""A toy two-optimizer training job for the engine tests (importable, and runnable as a script for subprocess
tests: `python tests/engine_toy.py OUT --steps N [--resume] [--save-every K] [--sleep S]`)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vfmtok.engine.accel import make_accelerator
from vfmtok.engine.schedule import warmup_constant_schedule
from vfmtok.engine.trainer import StepOutput, Trainer, TrainerConfig

N_SAMPLES, DIM = 40, 6
DISC_START = 2  # the second optimizer gets a loss from this (0-based) step on


class ToyData(torch.utils.data.Dataset):
    """Item (index, epoch, pos) -> (features (DIM,), target (), index); 'augmentation' noise from (epoch, pos)."""

    def __len__(self) -> int:
        return N_SAMPLES

    def __getitem__(self, item):
        index, epoch, pos = item
        base = np.random.default_rng(index).standard_normal(DIM).astype(np.float32)
        noise = np.random.default_rng([7, epoch, pos]).standard_normal(DIM).astype(np.float32) * 0.1
        x = torch.from_numpy(base + noise)
        return x, x.sum() * 0.5, index


class ToyGen(nn.Module):
    """MLP with dropout (uses the global RNG) behind a frozen linear layer (excluded from checkpoints)."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.frozen = nn.Linear(DIM, DIM).requires_grad_(False)
        self.net = nn.Sequential(nn.Linear(DIM, 16), nn.Dropout(dropout), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(self.frozen(x))


def build(out: Path, steps: int, save_every: int = 2, global_batch: int = 8, grad_accum: int = 1,
          skip_nonfinite: bool = False, nan_at: int | None = None, sleep: float = 0.0, keep_last: int = 3,
          print_every: int = 0, mixed_precision: str = "no", deterministic: bool = False,
          sigterm_at: tuple[int, int] | None = None) -> Trainer:
    """The toy job; `deterministic`: no dropout, no input noise and plain SGD (updates proportional to the
    gradient, unlike Adam's scale-invariant ones), for exact comparisons of gradient computations.
    `sigterm_at=(step, rank)`: that rank sends itself SIGTERM during that (0-based) step."""
    torch.manual_seed(123)  # model init (independent of the trainer's seeding)
    gen = ToyGen(dropout=0.0 if deterministic else 0.2)
    disc = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
    if deterministic:
        opt_g, opt_d = torch.optim.SGD(gen.parameters(), lr=0.1), torch.optim.SGD(disc.parameters(), lr=0.1)
    else:
        opt_g = torch.optim.Adam(gen.parameters(), lr=1e-2, betas=(0.9, 0.95))
        opt_d = torch.optim.Adam(disc.parameters(), lr=1e-2, betas=(0.9, 0.95))
    sched = warmup_constant_schedule(opt_g, warmup_steps=3)
    seen: list[int] = []

    def step_fn(tr: Trainer, batch):
        x, y, idx = batch
        seen.extend(idx.tolist())
        if sigterm_at is not None and (tr.step, tr.rank) == tuple(sigterm_at):
            os.kill(os.getpid(), signal.SIGTERM)
        if sleep:
            time.sleep(sleep)
        noise = 0.0 if deterministic else 0.01 * torch.randn_like(x)  # global RNG use
        pred = tr.models["gen"](x + noise).squeeze(-1)
        loss_g = ((pred - y) ** 2).mean()
        if nan_at is not None and tr.step == nan_at:
            loss_g = loss_g * float("nan")
        losses = {"gen": loss_g}
        logs = {"mse": loss_g.detach()}
        if tr.step >= DISC_START:
            d_fake = tr.models["disc"](pred.detach()[:, None])
            d_real = tr.models["disc"](y[:, None])
            losses["disc"] = torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean()
        return StepOutput(losses, logs)

    acc = make_accelerator("cpu", mixed_precision, cpu_autocast=mixed_precision != "no")
    cfg = TrainerConfig(out_dir=out, total_steps=steps, global_batch=global_batch, grad_accum=grad_accum,
                        save_every=save_every, keep_last=keep_last, log_every=1, grad_clip=1.0,
                        skip_nonfinite=skip_nonfinite, seed=5, progress=False, print_every=print_every)
    tr = Trainer(acc, cfg, {"gen": gen, "disc": disc}, {"gen": opt_g, "disc": opt_d}, step_fn, ToyData(),
                 schedulers={"gen": sched}, ema={"gen": 0.9})
    tr.seen = seen  # type: ignore[attr-defined]
    return tr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--save-every", type=int, default=2)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--seen-file", type=Path)
    ap.add_argument("--sigterm-at", type=int, nargs=2, metavar=("STEP", "RANK"))
    args = ap.parse_args()
    tr = build(args.out, args.steps, args.save_every, args.global_batch, sleep=args.sleep, sigterm_at=args.sigterm_at)
    res = tr.fit(resume=args.resume)
    if args.seen_file is not None:
        rank = tr.rank
        args.seen_file.with_suffix(f".rank{rank}.txt").write_text(" ".join(map(str, tr.seen)))  # type: ignore[attr-defined]
    print(f"done step={res.step} interrupted={res.interrupted} rank={tr.rank} world={tr.world_size}", flush=True)
    sys.exit(128 + res.signal if res.interrupted and res.signal else 0)


if __name__ == "__main__":
    main()
