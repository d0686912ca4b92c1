"""Engine building blocks: sampler, LR schedule, EMA, checkpoint files, metrics log, codebook-usage window."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from vfmtok.engine.checkpoint import capture_rng, latest_checkpoint, list_checkpoints, read_checkpoint, restore_rng, write_checkpoint
from vfmtok.engine.ema import EMA, initial_weight, short_run_warning
from vfmtok.engine.metrics_log import MetricsLogger, read_metrics
from vfmtok.metrics.codebook import CodebookUsage
from vfmtok.engine.sampler import RankDisjointSampler
from vfmtok.engine.schedule import warmup_constant_schedule


def test_sampler_ranks_disjoint_complete_batches_and_reshuffled_per_epoch():
    n, gb, world = 23, 6, 3  # 3 full global batches per epoch, 5 samples dropped
    samplers = [RankDisjointSampler(n, gb, r, world, seed=1) for r in range(world)]
    epochs = []
    for epoch in range(2):
        per_rank = []
        for s in samplers:
            s.set_epoch(epoch)
            per_rank.append([i for i, _, _ in s])
        flat = sum(per_rank, [])
        assert all(len(p) == 3 * 2 for p in per_rank)
        assert len(set(flat)) == len(flat) == 18  # disjoint across ranks, drop_last
        perm = np.random.default_rng([1, epoch]).permutation(n)
        for step in range(3):  # step s of rank r = r-th slice of the s-th global batch of the permutation
            for r in range(world):
                assert per_rank[r][2 * step : 2 * step + 2] == perm[6 * step + 2 * r : 6 * step + 2 * r + 2].tolist()
        epochs.append(flat)
    assert epochs[0] != epochs[1]


def test_sampler_resume_offset_and_global_batch_independent_of_world_size():
    one = RankDisjointSampler(30, 8, 0, 1, seed=3)
    one.set_epoch(2, start_step=1)
    items = list(one)
    assert len(items) == len(one) == 2 * 8
    two = [RankDisjointSampler(30, 8, r, 2, seed=3) for r in range(2)]
    for s in two:
        s.set_epoch(2, start_step=1)
    lists = [list(s) for s in two]
    for step in range(2):  # the union of ranks at each step equals the single-process batch
        union = sorted(lists[0][4 * step : 4 * step + 4] + lists[1][4 * step : 4 * step + 4])
        assert union == sorted(items[8 * step : 8 * step + 8])


def test_sampler_rejects_bad_sizes():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        RankDisjointSampler(5, 8)
    with pytest.raises(ValueError, match="not divisible"):
        RankDisjointSampler(50, 9, 0, 2)


def test_warmup_then_constant_lr():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-4)
    sched = warmup_constant_schedule(opt, warmup_steps=4, init_lr=1e-7)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1e-7 + (1e-4 - 1e-7) * t / 4 for t in range(4)] + [1e-4] * 3
    assert np.allclose(lrs, expected, rtol=1e-12, atol=0)
    state = sched.state_dict()
    opt2 = torch.optim.Adam([p], lr=1e-4)
    sched2 = warmup_constant_schedule(opt2, 4)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 7


def test_ema_matches_recurrence_and_skips_frozen():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    m[1].requires_grad_(False)
    ema = EMA(m, decay=0.9)
    assert ema.names == ["0.weight", "0.bias"]
    ref = m[0].weight.detach().clone()
    for _ in range(3):
        with torch.no_grad():
            m[0].weight.add_(1.0)
        ema.update(m)
        ref = 0.9 * ref + 0.1 * m[0].weight.detach()
    torch.testing.assert_close(ema.shadow["0.weight"], ref, rtol=1e-6, atol=1e-6)
    frozen_before = m[1].weight.detach().clone()
    ema.copy_to(m)
    torch.testing.assert_close(m[0].weight.detach(), ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(m[1].weight, frozen_before)


def test_checkpoint_write_keep_last_and_rng_roundtrip(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        write_checkpoint(root, step, lambda: {"w": torch.full((2,), float(step))}, capture_rng(), {"step": step},
                         keep_last=2)
    assert [s for s, _ in list_checkpoints(root)] == [4, 6]
    state, rng, meta = read_checkpoint(latest_checkpoint(root))
    assert meta["step"] == 6 and torch.equal(state["w"], torch.full((2,), 6.0))
    restore_rng(rng)
    a = (torch.rand(3), np.random.rand(3), __import__("random").random())
    restore_rng(rng)
    b = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    (root / ".tmp-step_00000008").mkdir()  # an interrupted write is not a checkpoint
    assert latest_checkpoint(root).name == "step_00000006"


def test_metrics_truncate_on_resume(tmp_path):
    logger = MetricsLogger(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        logger.log({"step": step, "loss": torch.tensor(float(step)), "bad": float("nan")})
    logger.truncate_after(3)
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert recs[2]["loss"] == 3.0 and recs[0]["bad"] == "nan"
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])


def test_codebook_usage_window_counts_distinct_recent_codes():
    usage = CodebookUsage(codebook_size=10, window=6)
    usage.update(torch.tensor([[1, 1, 2], [3, 3, 3]]))
    assert usage.usage() == pytest.approx(3 / 10)
    usage.update(torch.tensor([[7, 8, 9, 9]]))  # window now holds [3, 3, 7, 8, 9, 9] (last 6)
    assert usage.filled == 6 and usage.usage() == pytest.approx(4 / 10)
    other = CodebookUsage(10, 6)
    other.load_state_dict(usage.state_dict())
    other.update(torch.tensor([0]))
    usage.update(torch.tensor([0]))
    assert other.usage() == usage.usage() == pytest.approx(5 / 10)
    # batch-size independence: the same stream in different chunkings gives the same usage
    stream = torch.randint(0, 10, (37,), generator=torch.Generator().manual_seed(0))
    a, b = CodebookUsage(10, 16), CodebookUsage(10, 16)
    a.update(stream)
    for chunk in stream.split(5):
        b.update(chunk)
    assert a.usage() == b.usage() == len(set(stream[-16:].tolist())) / 10


def test_codebook_usage_update_stays_on_the_codes_device():
    # on the meta device a copy to the host raises: update (every micro-batch) must not make one
    usage = CodebookUsage(10, 8)
    usage.update(torch.tensor([1, 2, 3, 3, 4, 5, 6], device="meta"))
    usage.update(torch.tensor([[7, 8], [9, 9]], device="meta"))
    assert usage.buffer.device.type == "meta" and usage.pos == 11 and usage.filled == 8
    # the same stream on the host: the ring holds the last 8 codes, usage syncs only when asked
    host = CodebookUsage(10, 8)
    host.load_state_dict({"buffer": torch.full((8,), -1, dtype=torch.int64), "pos": 0})
    host.update(torch.tensor([1, 2, 3, 3, 4, 5, 6]))
    host.update(torch.tensor([[7, 8], [9, 9]]))
    assert sorted(host.state_dict()["buffer"].tolist()) == [3, 4, 5, 6, 7, 8, 9, 9]
    assert host.usage() == pytest.approx(7 / 10)


def test_augmented_images_depend_only_on_seed_epoch_position():
    from PIL import Image

    from vfmtok.engine.loader import AugmentedImages

    rng = np.random.default_rng(0)
    base = [(Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)), 3)]
    aug = AugmentedImages(base, size=32, seed=1)
    a, label, index = aug[(0, 2, 5)]
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32 and label == 3 and index == 0
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, aug[(0, 2, 5)][0])  # deterministic
    assert not torch.equal(a, aug[(0, 3, 5)][0]) or not torch.equal(a, aug[(0, 2, 6)][0])


def _simulated_initial_weight(decay: float, steps: int) -> float:
    """Run the EMA class itself: a parameter at 0 that jumps to 1 after initialisation; what the shadow still
    lacks of 1 after `steps` updates is the weight left on the initial value."""
    module = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        module.weight.zero_()
    ema = EMA(module, decay)
    with torch.no_grad():
        module.weight.fill_(1.0)
    for _ in range(steps):
        ema.update(module)
    return 1.0 - float(ema.shadow["weight"])


def test_ema_short_run_warning_matches_the_ema_itself():
    for decay, steps in [(0.9999, 200), (0.99, 1000), (0.9, 20), (0.5, 3)]:
        assert initial_weight(decay, steps) == pytest.approx(_simulated_initial_weight(decay, steps), abs=1e-5)
    text = short_run_warning(0.9999, 200)  # the paper's decay on a 200-step run
    assert text is not None and "--ema-decay 0.9999 over 200 steps" in text and "keep 98% of the initialisation" in text
    assert "pass --ema-decay 0.95 or smaller" in text
    assert _simulated_initial_weight(0.95, 200) < 1e-4  # the suggestion leaves ~e**-10 of the initialisation
    assert short_run_warning(0.99, 1000) is None  # the demo's settings: 4e-5 left
    assert short_run_warning(0.99, 250) is not None and short_run_warning(0.99, 350) is None  # 8.1% / 3.0%
    assert short_run_warning(None, 10) is None and short_run_warning(0.0, 10) is None
    assert "pass --ema-decay 0 (no EMA)" in short_run_warning(0.9, 5)
