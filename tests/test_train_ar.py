"""`vfmtok train-ar`: learning, exact resumption, 2-process DDP, store checks, run directory and provenance."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import vfmtok
from vfmtok.cli.main import app
from vfmtok.data.token_store import format as tsf
from vfmtok.data.token_store import reader as tsr
from vfmtok.data.token_store import writer as tsw
from vfmtok.data.token_store.reader import TokenStoreError
from vfmtok.engine.checkpoint import latest_checkpoint, read_checkpoint
from vfmtok.engine.metrics_log import read_metrics
from vfmtok.jobs.train_ar import TIME_DEPENDENT_KEYS, split_indices, train_ar
from vfmtok.jobs.train_ar_config import TrainARConfig
from vfmtok.models.gpt import GPT
from vfmtok.models.gpt_io import create_gpt, save_gpt

sys.path.insert(0, str(Path(__file__).parent))
from torchrun_util import torchrun  # noqa: E402

GRID, VOCAB, CLASSES, N = 4, 16, 4, 32


def make_store(out: Path, n: int = N, views: int = 2) -> Path:
    """n images x `views` sequences of 16 tokens; view v of an image of class c: (3c + (c+1) l + 5v) mod 16."""
    tsw.create_store(out, tsf.StoreLayout(n, views, GRID * GRID, VOCAB), {
        "num_classes": CLASSES, "grid_size": GRID, "classes": [f"c{i}" for i in range(CLASSES)],
        "tokenizer": {"path": str(out.parent / "tok"), "file_sha256": "ab" * 32, "weights_sha256": "cd" * 32}})
    labels = np.arange(n) % CLASSES
    pos = np.arange(GRID * GRID)
    codes = np.stack([[(3 * c + (c + 1) * pos + 5 * v) % VOCAB for v in range(views)] for c in labels])
    with tsw.StoreWriter(out) as writer:
        writer.write(np.arange(n), codes, labels)
    tsw.finalize_store(out)
    return out


def cfg_for(store: Path, out: Path, **kw) -> TrainARConfig:
    base = dict(tokens=store, out=out, model="GPT-tiny", batch_size=8, lr=3e-3, val_count=4, log_every=1,
                val_every=2, save_every=0, num_workers=0, progress=False, device="cpu")
    return TrainARConfig(**{**base, **kw})


pytestmark = pytest.mark.usefixtures("one_thread")


def _teacher_forced_loss(model: GPT, codes: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        logits, _ = model(codes[:, :-1], labels)
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), codes.reshape(-1)))


def test_gpt_tiny_memorises_a_tiny_store(tmp_path):
    store = make_store(tmp_path / "store", views=1)
    res = train_ar(cfg_for(store, tmp_path / "run", steps=120, val_count=0, class_dropout=0.0, dropout=0.0,
                           ema_decay=0.9, log_every=10, val_every=10))
    recs = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(10, 121, 10))
    assert recs[0]["loss_gpt"] > 0.1  # log(16) = 2.77 at init
    assert recs[-1]["loss_gpt"] < 0.01  # measured 0.0022-0.003 at step 120
    # independent check of the exported EMA weights on every stored sequence
    model = vfmtok.load_gpt(tmp_path / "run")
    codes = torch.from_numpy(np.load(store / "codes.npy")[:, 0].astype(np.int64))
    labels = torch.from_numpy(np.load(store / "labels.npy"))
    assert _teacher_forced_loss(model, codes, labels) < 0.05
    assert res.result.step == 120


def test_resume_is_bit_exact_and_val_losses_are_exact(tmp_path):
    store = make_store(tmp_path / "store")
    kw = dict(ema_decay=0.9, val_every=2)
    train_ar(cfg_for(store, tmp_path / "a", steps=6, **kw))  # dropouts on: RNG state matters
    train_ar(cfg_for(store, tmp_path / "b", steps=4, **kw))  # stop on the validation grid (the last step of a
    # run is always validated, so a stop at an odd step would add val entries there)
    train_ar(cfg_for(store, tmp_path / "b", steps=6, resume=True, **kw))
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIME_DEPENDENT_KEYS} for r in rs]  # noqa: E731
    ra, rb = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in rb] == list(range(1, 7)) and strip(ra) == strip(rb)
    assert ["val_loss" in r for r in ra] == [False, True, False, True, False, True]
    # val_loss = loss of the live weights (checkpoint) and val_loss_ema of the exported weights, on view 0
    _, val = split_indices(N, 4)
    codes = torch.from_numpy(np.load(store / "codes.npy")[val, 0].astype(np.int64))
    labels = torch.from_numpy(np.load(store / "labels.npy")[val])
    state, _, meta = read_checkpoint(latest_checkpoint(tmp_path / "a" / "checkpoints"))
    live = vfmtok.load_gpt(tmp_path / "a")
    live.load_state_dict(state["models"]["gpt"])
    assert meta["step"] == 6
    assert ra[-1]["val_loss"] == pytest.approx(_teacher_forced_loss(live, codes, labels), abs=1e-6)
    ema = vfmtok.load_gpt(tmp_path / "a")
    assert ra[-1]["val_loss_ema"] == pytest.approx(_teacher_forced_loss(ema, codes, labels), abs=1e-6)
    assert ra[-1]["val_loss"] != pytest.approx(ra[-1]["val_loss_ema"], abs=1e-4)


def test_two_process_ddp_sees_disjoint_data_and_matches_one_process(tmp_path):
    store = make_store(tmp_path / "store")
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, torch
        torch.set_num_threads(1)
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_train_ar import cfg_for
        from vfmtok.jobs.train_ar import train_ar
        from pathlib import Path
        seen = []
        cfg = cfg_for(Path(sys.argv[1]), None, steps=4, class_dropout=0.0, dropout=0.0, ema_decay=0.0)
        res = train_ar(cfg, observer=lambda rank, step, rows: seen.append((step, rows.tolist())))
        Path(sys.argv[2], "seen" + os.environ["RANK"] + ".json").write_text(repr(seen))
        Path(sys.argv[2], "out" + os.environ["RANK"] + ".txt").write_text(str(res.out))
    """))
    proc = torchrun([script, store, tmp_path], timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # default --out (runs/ar-<timestamp> under the working directory), agreed by both ranks
    outs = {(tmp_path / f"out{k}.txt").read_text() for k in (0, 1)}
    runs = list((tmp_path / "runs").glob("ar-*"))
    assert len(outs) == 1 and len(runs) == 1 and outs == {str(runs[0])}
    (tmp_path / "ddp").symlink_to(runs[0])
    seen = [dict((s, set(r)) for s, r in eval((tmp_path / f"seen{k}.json").read_text())) for k in (0, 1)]
    single: list = []
    train_ar(cfg_for(store, tmp_path / "one", steps=4, class_dropout=0.0, dropout=0.0, ema_decay=0.0),
             observer=lambda rank, step, rows: single.append((step, set(rows.tolist()))))
    for step, rows in single:
        assert not seen[0][step] & seen[1][step]  # ranks disjoint within a step
        assert seen[0][step] | seen[1][step] == rows  # together: the one-process batch
        assert len(seen[0][step]) == len(seen[1][step]) == 4
    cfg = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert cfg["train"]["world_size"] == 2 and cfg["step"] == 4
    a, b = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert a["output.weight"].abs().max() > 1e-3  # trained (zero-initialised head)
    for k in a:  # same data per step, no dropout: DDP-averaged gradients = one-process gradients
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    la, lb = read_metrics(tmp_path / "ddp" / "metrics.jsonl"), read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert [r["loss_gpt"] for r in la] == pytest.approx([r["loss_gpt"] for r in lb], abs=1e-5)
    # validation sharded over the two ranks (2 images each) = one process over all 4
    va, vb = [r.get("val_loss") for r in la], [r.get("val_loss") for r in lb]
    assert va[1] is not None and [v is None for v in va] == [v is None for v in vb]
    assert [v for v in va if v is not None] == pytest.approx([v for v in vb if v is not None], abs=1e-5)


def _cli(*args: str):
    return CliRunner().invoke(app, ["train-ar", *args])


def _expect_refusal(tmp_path, store: Path, match: str, *extra: str) -> None:
    out = tmp_path / "refused"
    result = _cli("--tokens", str(store), "--out", str(out), "--model", "GPT-tiny", "--steps", "2",
                  "--batch-size", "8", "--device", "cpu", "--num-workers", "0", "--no-progress", *extra)
    assert result.exit_code == 2, result.output
    assert match in result.output, result.output
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_bad_labels_codes_sizes_and_empty_store_are_refused_before_training(tmp_path):
    store = make_store(tmp_path / "store")
    labels = np.load(store / "labels.npy", mmap_mode="r+")
    labels[5] = CLASSES
    labels.flush()
    del labels
    _expect_refusal(tmp_path, store, "label 4 of image 5 is outside [0, num_classes = 4)")

    store2 = make_store(tmp_path / "store2")
    codes = np.load(store2 / "codes.npy", mmap_mode="r+")
    codes[7, 1, 3] = VOCAB + 3
    codes.flush()
    del codes
    _expect_refusal(tmp_path, store2, "image 7 holds code 19, outside [0, codebook_size = 16)")

    store3 = make_store(tmp_path / "store3")
    save_gpt(create_gpt("GPT-tiny", vocab_size=32, num_classes=CLASSES, grid_size=GRID), tmp_path / "vocab32")
    _expect_refusal(tmp_path, store3, "codebook size (vocab_size): model 32, store 16", "--init-from",
                    str(tmp_path / "vocab32"))
    save_gpt(create_gpt("GPT-tiny", vocab_size=VOCAB, num_classes=CLASSES, grid_size=8), tmp_path / "grid8")
    _expect_refusal(tmp_path, store3, "tokens per image (grid_size**2): model 64, store 16", "--init-from",
                    str(tmp_path / "grid8"))

    empty = tmp_path / "empty"
    empty.mkdir()
    np.save(empty / "codes.npy", np.zeros((0, 1, 16), np.uint16))
    np.save(empty / "labels.npy", np.zeros((0,), np.int64))
    (empty / "manifest.json").write_text(json.dumps({
        "format": tsf.FORMAT, "format_version": tsf.FORMAT_VERSION, "complete": True, "num_images": 0,
        "num_augmentations": 1, "num_tokens": 16, "codebook_size": VOCAB, "num_classes": CLASSES, "grid_size": 4}))
    _expect_refusal(tmp_path, empty, "the token store is empty")
    with pytest.raises(TokenStoreError, match="fewer than one global batch"):
        train_ar(cfg_for(make_store(tmp_path / "small", n=10), tmp_path / "r", steps=1))


def test_cli_run_dir_loads_and_records_provenance(tmp_path):
    store = make_store(tmp_path / "store")
    out = tmp_path / "run"
    result = _cli("--tokens", str(store), "--out", str(out), "--model", "GPT-tiny", "--epochs", "2",
                  "--batch-size", "8", "--val-count", "4", "--val-every", "2", "--log-every", "1", "--lr", "2e-3",
                  "--device", "cpu", "--num-workers", "0", "--no-progress", "--seed", "3")
    assert result.exit_code == 0, result.output
    model = vfmtok.load_gpt(out)
    assert isinstance(model, GPT) and model.config.vocab_size == VOCAB and model.config.grid_size == GRID
    assert model.config.num_classes == CLASSES
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "vfmtok.gpt" and cfg["weights"] == "ema"
    assert cfg["tokenizer"] == str((tmp_path / "tok").resolve()) and cfg["tokenizer_sha256"] == "ab" * 32
    assert cfg["token_store"] == str(store.resolve())
    assert cfg["token_store_manifest_sha256"] == hashlib.sha256((store / "manifest.json").read_bytes()).hexdigest()
    assert cfg["command"].startswith("vfmtok train-ar --tokens ") and "--epochs 2.0 --batch-size 8" in cfg["command"]
    assert "--no-progress" in cfg["command"] and cfg["train"]["lr"] == 2e-3 and cfg["train"]["seed"] == 3
    # 28 training images // 8 = 3 steps per epoch, 2 epochs
    assert cfg["train"]["total_steps"] == 6 and cfg["step"] == 6 and cfg["train"]["betas"] == [0.9, 0.95]
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(1, 7)) and [r["epoch"] for r in recs] == [0, 0, 0, 1, 1, 1]
    assert all(r["mfu"] is None and r["tokens_per_s"] > 0 and r["lr_gpt"] == 2e-3 for r in recs)
    again = _cli("--tokens", str(store), "--out", str(out), "--model", "GPT-tiny", "--steps", "8", "--batch-size",
                 "8", "--val-count", "4", "--device", "cpu", "--no-progress")
    assert again.exit_code == 2 and "already holds a train-ar run; pass --resume" in again.output
    # resuming the same run with another model is refused
    bad = _cli("--tokens", str(store), "--out", str(out), "--model", "GPT-B", "--steps", "8", "--batch-size", "8",
               "--val-count", "4", "--resume", "--device", "cpu", "--no-progress")
    assert bad.exit_code == 2 and "another gpt_config" in bad.output


def test_training_items_use_the_token_readers_view_choice(tmp_path):
    store = make_store(tmp_path / "store", views=3)
    train, val = split_indices(N, 5)
    assert len(set(train) | set(val)) == N and not set(train) & set(val)
    assert np.array_equal(split_indices(N, 5)[1], val)
    items = tsr.TokenDataset(store, seed=11, indices=train, return_index=True)
    reader = tsr.TokenDataset(store, seed=11)
    for epoch in (0, 4):
        reader.set_epoch(epoch)
        batch = items.__getitems__([(i, epoch, i) for i in range(len(train))])
        for i, (codes, label, row) in enumerate(batch):
            ref_codes, ref_label = reader[int(train[i])]
            assert int(row) == train[i] and torch.equal(codes, ref_codes) and int(label) == int(ref_label)


def test_sigterm_stops_with_a_checkpoint_and_exports_that_steps_ema(tmp_path):
    import signal

    store = make_store(tmp_path / "store")

    def observer(rank, step, rows):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the trainer: finish this step, checkpoint, stop

    res = train_ar(cfg_for(store, tmp_path / "run", steps=50, val_count=0), observer=observer)
    assert res.result.interrupted and res.result.step == 2
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["interrupted"] is True and cfg["step"] == 2
    state, _, meta = read_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    exported = load_file(tmp_path / "run" / "model.safetensors")
    assert meta["step"] == 2 and all(torch.equal(exported[k], v) for k, v in state["ema"]["gpt"]["shadow"].items())


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    store = make_store(tmp_path / "store")
    kw = dict(steps=3, class_dropout=0.0, dropout=0.0, val_count=4, ema_decay=0.0)  # export = live weights
    train_ar(cfg_for(store, tmp_path / "one", peak_tflops=0.5, **kw))
    train_ar(cfg_for(store, tmp_path / "two", grad_accum=2, **kw))
    # MFU = tokens/s x FLOPs/token / peak, FLOPs/token in closed form for GPT-tiny (dim 64, 2 layers, FFN 256)
    dim, layers, hidden, seq = 64, 2, 256, GRID * GRID
    flops = 3 * (2 * (layers * (4 * dim * dim + 3 * dim * hidden) + dim * VOCAB) + 4 * layers * seq * dim)
    one = read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert json.loads((tmp_path / "one" / "config.json").read_text())["train"]["flops_per_token"] == flops
    assert all(r["mfu"] == pytest.approx(r["tokens_per_s"] * flops / 0.5e12, rel=1e-9) for r in one)
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert not torch.equal(a["output.weight"], torch.zeros_like(a["output.weight"]))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    la, lb = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["loss_gpt"] for r in la] == pytest.approx([r["loss_gpt"] for r in lb], abs=1e-5)


def test_grad_checkpointing_trains_the_same_weights(tmp_path):
    store = make_store(tmp_path / "store")
    kw = dict(steps=3, val_count=4, ema_decay=0.0)  # dropouts on: checkpointing must replay the same masks
    train_ar(cfg_for(store, tmp_path / "plain", **kw))
    train_ar(cfg_for(store, tmp_path / "ckpt", grad_checkpointing=True, **kw))
    a, b = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "ckpt" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["train"]["grad_checkpointing"] is True


def test_default_batch_fits_a_small_store_and_a_long_run_is_announced(tmp_path, caplog, monkeypatch):
    import logging

    import vfmtok.jobs.train_ar as job

    store = make_store(tmp_path / "store", n=21)  # 17 training images after holding out 4: far below 512
    monkeypatch.setattr(job, "LONG_RUN_HOURS", 0.0)  # any remaining time counts as long
    with caplog.at_level(logging.WARNING, logger="vfmtok"):
        res = train_ar(cfg_for(store, tmp_path / "run", batch_size=None, steps=14, val_count=4))
    assert res.result.step == 14
    settings = json.loads((tmp_path / "run" / "train_settings.json").read_text())
    assert settings["train"]["batch_size"] == 17
    text = caplog.text
    assert "batch size 17 (the training split holds 17 images" in text
    assert "the remaining 3 steps take about" in text and "GPT-tiny" in text  # measured over steps 1..11


def test_an_ema_too_slow_for_the_run_is_announced(tmp_path, caplog):
    import logging

    store = make_store(tmp_path / "store")
    with caplog.at_level(logging.WARNING, logger="vfmtok"):
        train_ar(cfg_for(store, tmp_path / "slow", steps=3, ema_decay=0.9999, val_count=0))
    assert "--ema-decay 0.9999 over 3 steps: the exported EMA weights keep 100% of the initialisation" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vfmtok"):
        train_ar(cfg_for(store, tmp_path / "fast", steps=3, ema_decay=0.2, val_count=0))
    assert "--ema-decay" not in caplog.text
