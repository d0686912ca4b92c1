"""The generic Trainer on a toy two-optimizer job: exact resumption, non-finite handling, accumulation."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine_toy import DISC_START, build  # noqa: E402

from vfmtok.engine.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint  # noqa: E402
from vfmtok.engine.metrics_log import read_metrics  # noqa: E402
from vfmtok.engine.trainer import TIME_KEYS, NonFiniteLossError  # noqa: E402


def _strip_time(records):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in records]


def _final_state(tr):
    return {
        "gen": {k: v.clone() for k, v in tr.unwrap("gen").state_dict().items()},
        "disc": {k: v.clone() for k, v in tr.unwrap("disc").state_dict().items()},
        "ema": {k: v.clone() for k, v in tr.emas["gen"].shadow.items()},
        "opt_g": tr.optimizers["gen"].state_dict()["state"],
        "opt_d": tr.optimizers["disc"].state_dict()["state"],
    }


def _assert_equal_nested(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), (a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_equal_nested(a[k], b[k])
    else:
        assert a == b


def test_resume_is_bit_exact_across_the_disc_start_and_an_epoch_boundary(tmp_path):
    # 40 samples / batch 8 = 5 steps per epoch: 8 steps cross an epoch boundary; the second optimizer
    # starts at step 2, between the interruption points 1 and 4.
    straight = build(tmp_path / "a", steps=8, save_every=0)
    straight.fit()
    ref = _final_state(straight)
    part = build(tmp_path / "b", steps=1, save_every=0)
    part.fit()
    part = build(tmp_path / "b", steps=4, save_every=0)
    part.fit(resume=True)
    assert part.step == 4
    rest = build(tmp_path / "b", steps=8, save_every=0)
    res = rest.fit(resume=True)
    assert res.step == 8 and 1 < DISC_START < 4
    _assert_equal_nested(ref, _final_state(rest))
    a, b = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 9))
    assert _strip_time(a) == _strip_time(b)
    assert "loss_disc" not in a[DISC_START - 1] and "loss_disc" in a[DISC_START]


def test_frozen_parameters_are_not_checkpointed(tmp_path):
    tr = build(tmp_path, steps=2, save_every=2)
    tr.fit()
    state, _, meta = read_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert meta["step"] == 2
    assert not any(k.startswith("frozen") for k in state["models"]["gen"])
    assert "net.0.weight" in state["models"]["gen"]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    tr = build(tmp_path, steps=6, save_every=2, nan_at=3)
    before = {k: v.clone() for k, v in tr.unwrap("gen").state_dict().items()}
    with pytest.raises(NonFiniteLossError, match=r"step 4.*Last good checkpoint: .*step_00000002"):
        tr.fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [2]
    last = read_metrics(tmp_path / "metrics.jsonl")[-1]
    assert last["step"] == 4 and last["nonfinite"] == ["loss_gen", "grad_norm_gen"]
    # weights are those after step 3 (no update from the bad step): differ from init, equal to a clean 3-step run
    clean = build(tmp_path / "clean", steps=3, save_every=0)
    clean.fit()
    for k, v in clean.unwrap("gen").state_dict().items():
        assert torch.equal(tr.unwrap("gen").state_dict()[k], v)
    assert not torch.equal(before["net.0.weight"], clean.unwrap("gen").state_dict()["net.0.weight"])


def test_skip_nonfinite_counts_skipped_steps(tmp_path):
    tr = build(tmp_path, steps=5, save_every=0, nan_at=1, skip_nonfinite=True)
    res = tr.fit()
    assert res.step == 5 and res.skipped_steps == 1
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert recs[1]["skipped"] == 1 and recs[1]["skipped_steps"] == 1 and recs[-1]["skipped_steps"] == 1
    assert "skipped" not in recs[0] and "skipped" not in recs[2]


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    # SGD without dropout or input noise: the weights after 4 steps depend on the accumulated gradient's value
    # (Adam would hide a wrongly scaled or half-kept gradient, being invariant to the gradient's scale)
    one = build(tmp_path / "one", steps=4, save_every=0, grad_accum=1, deterministic=True)
    one.fit()
    two = build(tmp_path / "two", steps=4, save_every=0, grad_accum=2, deterministic=True)
    two.fit()
    assert sorted(one.seen) == sorted(two.seen)  # same samples per step
    torch.manual_seed(123)
    init = build(tmp_path / "init", steps=1, save_every=0, deterministic=True).unwrap("gen").state_dict()
    for name in ("gen", "disc"):
        s1, s2 = one.unwrap(name).state_dict(), two.unwrap(name).state_dict()
        for key in s1:
            torch.testing.assert_close(s2[key], s1[key], atol=2e-6, rtol=1e-5)
    moved = (one.unwrap("gen").net[0].weight - init["net.0.weight"]).abs().max()
    assert moved > 1e-2  # the comparison is not between two barely trained models
    m1, m2 = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in m2] == [1, 2, 3, 4] and all(r["lr_gen"] == s["lr_gen"] for r, s in zip(m1, m2))
    for r, s in zip(m1, m2):  # logged losses and gradient norms are those of the whole batch
        for key in ("loss_gen", "grad_norm_gen"):
            assert r[key] == pytest.approx(s[key], rel=1e-5)

def test_print_every_writes_one_summary_line_per_period_and_at_the_end(tmp_path, capsys):
    build(tmp_path / "quiet", steps=3).fit()
    assert "step " not in capsys.readouterr().out  # print_every=0: no lines
    build(tmp_path / "run", steps=5, print_every=2).fit()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert [ln.split(" |")[0] for ln in lines] == ["step 2/5", "step 4/5", "step 5/5"]
    records = {r["step"]: r for r in read_metrics(tmp_path / "run" / "metrics.jsonl")}
    for line in lines:
        step = int(line.split()[1].split("/")[0])
        fields = dict(kv.split("=") for kv in line.split(" | ")[1].split())
        assert fields["loss_gen"] == f"{records[step]['loss_gen']:.4g}"
        assert fields["lr_gen"] == f"{records[step]['lr_gen']:.4g}"
        assert "grad_norm_gen" in fields and ("loss_disc" in fields) == (step > DISC_START)
        assert " img/s, " in line and " s/step, eta " in line
    assert lines[-1].endswith("eta 0s")
    with pytest.raises(ValueError, match="--print-every -1"):
        build(tmp_path / "bad", steps=2, print_every=-1)


def test_hms_formats_eta():
    from vfmtok.engine.trainer import _hms

    assert [_hms(t) for t in (0, 59.4, 123, 3723, -5)] == ["0s", "59s", "2m03s", "1h02m03s", "0s"]
