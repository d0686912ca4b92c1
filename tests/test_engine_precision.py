"""Mixed precision on CPU (the CUDA code paths, emulated): fp16 loss scaling across the discriminator start."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine_toy import DISC_START, build  # noqa: E402

from vfmtok.engine.metrics_log import read_metrics  # noqa: E402


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one precision per process: reset its shared state around a test that changes it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_fp16_grad_scaler_steps_both_optimizers_across_the_disc_start(tmp_path, fresh_accelerate_state):
    steps = DISC_START + 3
    tr = build(tmp_path / "fp16", steps=steps, save_every=0, mixed_precision="fp16")
    scaler = tr.accelerator.scaler
    assert isinstance(scaler, torch.amp.GradScaler)
    with tr.accelerator.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16
    updates: list[int] = []
    update = scaler.update
    scaler.update = lambda *a, **k: (updates.append(tr.step), update(*a, **k))[1]  # spy: counts, then calls
    disc0 = {k: v.clone() for k, v in tr.unwrap("disc").state_dict().items()}
    assert tr.fit().step == steps
    assert updates == list(range(steps))  # exactly one scaler update per optimizer step
    fp16 = read_metrics(tmp_path / "fp16" / "metrics.jsonl")
    assert all(math.isfinite(r["loss_gen"]) for r in fp16)
    assert all(math.isfinite(r["loss_disc"]) for r in fp16[DISC_START:]) and "loss_disc" not in fp16[DISC_START - 1]
    assert not torch.equal(disc0["0.weight"], tr.unwrap("disc").state_dict()["0.weight"])  # the disc stepped

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    build(tmp_path / "fp32", steps=steps, save_every=0).fit()
    fp32 = read_metrics(tmp_path / "fp32" / "metrics.jsonl")
    # gradients are unscaled exactly once: the logged norms (after unscaling) match the fp32 run's at each
    # optimizer's first step (later steps differ: the scaler skips the steps whose scaled gradients overflow)
    first_disc = fp16[DISC_START]
    for rec, ref, keys in ((fp16[0], fp32[0], ("loss_gen", "grad_norm_gen")),
                           (first_disc, fp32[DISC_START], ("loss_disc", "grad_norm_disc"))):
        for key in keys:
            assert rec[key] == pytest.approx(ref[key], rel=2e-2), (rec["step"], key)
