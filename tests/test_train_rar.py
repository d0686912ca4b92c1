"""`vfmtok train-ar --model RAR-*`: the RAR recipe, both neighbour sequences per step, the order anneal through the
job, bit-exact resumption across the anneal start, run directory, sampling from the run, refusals."""
from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import vfmtok
from vfmtok.cli.main import app
from vfmtok.data.token_store import format as tsf
from vfmtok.data.token_store import writer as tsw
from vfmtok.data.token_store.reader import TokenDataset
from vfmtok.engine.checkpoint import latest_checkpoint, read_checkpoint
from vfmtok.engine.metrics_log import read_metrics
from vfmtok.jobs.train_ar import TIME_DEPENDENT_KEYS, split_indices, train_ar
from vfmtok.jobs.train_ar_config import TrainARConfig
from vfmtok.models.gpt_io import create_gpt, save_gpt
from vfmtok.models.rar import RAR
from vfmtok.models.rar_io import create_rar, save_rar

GRID, VOCAB, CLASSES, N, VIEWS, K = 4, 16, 4, 32, 2, 2
L = GRID * GRID

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_tokenizer_and_store(root: Path) -> Path:
    """A random-weight tiny tokenizer at root/tok (VOCAB codes, L tokens) and a store at root/store that records it
    with its real sha256 (so `vfmtok sample` verifies and decodes with it); returns the store."""
    from vfmtok.io.hashing import sha256_file
    from vfmtok.models.tokenizer_io import save_tokenizer

    torch.manual_seed(0)
    save_tokenizer(vfmtok.create_tokenizer("tiny", encoder_weights="random", codebook_size=VOCAB, num_queries=L),
                   root / "tok")
    sha = sha256_file(root / "tok" / "tokenizer.safetensors")
    return make_store(root / "store", tokenizer={"path": str(root / "tok"), "file_sha256": sha, "weights_sha256": sha})


def make_store(out: Path, n: int = N, tokenizer: dict | None = None) -> Path:
    """n images x (2 crop views x 2 neighbours) of 16 tokens, laid out as extract-tokens --neighbours 2 does
    (index k * V + v). Image i, view v, neighbour k: (3 c + (c+1) l + 5 v + 7 k + i) mod 16, c = i mod 4."""
    tsw.create_store(out, tsf.StoreLayout(n, VIEWS * K, L, VOCAB), {
        "num_classes": CLASSES, "grid_size": GRID, "classes": [f"c{i}" for i in range(CLASSES)],
        "crop": {"neighbours": K, "views": ["centre", "flip"]},
        "tokenizer": tokenizer or {"path": str(out.parent / "tok"), "file_sha256": "ab" * 32,
                                   "weights_sha256": "cd" * 32}})
    labels = np.arange(n) % CLASSES
    pos = np.arange(L)
    codes = np.stack([[(3 * labels[i] + (labels[i] + 1) * pos + 5 * (a % VIEWS) + 7 * (a // VIEWS) + i) % VOCAB
                       for a in range(VIEWS * K)] for i in range(n)])
    with tsw.StoreWriter(out) as writer:
        writer.write(np.arange(n), codes, labels)
    tsw.finalize_store(out)
    return out


def cfg_for(store: Path, out: Path, **kw) -> TrainARConfig:
    base = dict(tokens=store, out=out, model="RAR-tiny", batch_size=8, val_count=4, log_every=1, val_every=2,
                save_every=0, num_workers=0, progress=False, device="cpu")
    return TrainARConfig(**{**base, **kw})


def test_recipe_views_anneal_schedule_and_mfu_through_the_job(tmp_path):
    store = make_store(tmp_path / "store")
    seen = []
    res = train_ar(cfg_for(store, tmp_path / "run", steps=8, peak_tflops=0.5), batch_observer=seen.append)
    train = json.loads((tmp_path / "run" / "config.json").read_text())
    t = train["train"]
    # the authors' recipe as the default (rar.md section 3); anneal at 50 % / 75 %, warm-up 25 % of the 8 steps
    assert (t["lr"], t["betas"], t["weight_decay"], t["ema_decay"], t["lr_schedule"], t["end_lr"]) == (
        4e-4, [0.9, 0.96], 0.03, None, "cosine", 1e-5)
    assert (t["rar_anneal"], t["warmup_steps"], t["views"], t["grad_clip"], t["class_dropout"]) == (
        [4, 6], 2, "all-neighbours", 1.0, 0.1)
    assert (t["sequences_per_image"], t["sequences_per_step"], t["tokens_per_step"]) == (2, 16, 16 * L)
    assert train["format"] == "vfmtok.rar" and train["weights"] == "live" and "rar_config" in train
    recs = read_metrics(tmp_path / "run" / "metrics.jsonl")

    # probability of a random order per 0-based step t: 1 before 4, 1 - (t - 4) / 2 between, 0 from 6 on
    assert [r["rar_order_prob"] for r in recs] == [1, 1, 1, 1, 1, 0.5, 0, 0]
    # lr: linear warm-up from 0 over 2 steps, then cosine from 4e-4 to 1e-5 at step 8 (closed form)
    want = [4e-4 * s / 2 if s < 2 else 1e-5 + (4e-4 - 1e-5) * (1 + math.cos(math.pi * (s - 2) / 6)) / 2
            for s in range(8)]
    assert [r["lr_gpt"] for r in recs] == pytest.approx(want, rel=1e-12, abs=1e-15)

    # every step: both neighbour sequences of each image, of the same crop view, label repeated
    reader = TokenDataset(store, seed=0)
    codes = np.load(store / "codes.npy").astype(np.int64)
    for b in seen:
        assert b.tokens.shape == (16, L) and b.labels.shape == (16,) and b.rows.shape == (8,)
        epoch = b.step // (28 // 8)
        for j, row in enumerate(b.rows.tolist()):
            view = int(tsf.augmentation_choice(0, epoch, row, VIEWS))
            assert torch.equal(b.tokens[2 * j], torch.from_numpy(codes[row, view]))  # nearest
            assert torch.equal(b.tokens[2 * j + 1], torch.from_numpy(codes[row, VIEWS + view]))  # second nearest
            assert b.labels[2 * j] == b.labels[2 * j + 1] == row % CLASSES
        # orders: permutations; random while p = 1, raster once p = 0, a mixture at p = 0.5
        assert torch.equal(b.orders.sort(-1).values, torch.arange(L).expand(16, L))
        shuffled = int((b.orders != torch.arange(L)).any(-1).sum())
        assert shuffled == {0: 16, 1: 16, 2: 16, 3: 16, 4: 16, 6: 0, 7: 0}.get(b.step, shuffled)
        if b.step == 5:
            assert 0 < shuffled < 16
    assert reader.num_augmentations == 4 and res.result.step == 8

    # MFU from RAR's FLOPs per token (closed form for RAR-tiny: dim 64, 2 blocks, MLP 256, 16 + 2 slots)
    dim, blocks, mlp, slots = 64, 2, 256, L + 2
    linear = blocks * (dim * 3 * dim + dim * dim + 2 * dim * mlp + dim * 6 * dim) + dim * 2 * dim + dim * VOCAB
    flops = 3 * (2 * linear + 4 * blocks * slots * dim)
    assert t["flops_per_token"] == flops
    assert all(r["mfu"] == pytest.approx(r["tokens_per_s"] * flops / 0.5e12, rel=1e-9) for r in recs)

    # no EMA: the exported weights are the live weights of the last checkpoint, loadable for sampling
    state, _, meta = read_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    exported = load_file(tmp_path / "run" / "model.safetensors")
    assert meta["step"] == 8 and all(torch.equal(exported[k], v) for k, v in state["models"]["gpt"].items())
    model = vfmtok.load_gpt(tmp_path / "run")
    assert isinstance(model, RAR) and model.config.seq_len == L and model.config.vocab_size == VOCAB
    # val_loss: raster-order teacher forcing of the live weights on view 0 of the held-out images
    _, val = split_indices(N, 4)
    vc, vl = torch.from_numpy(codes[val, 0]), torch.from_numpy(np.arange(N)[val] % CLASSES)
    with torch.no_grad():
        ref = float(model.eval()(vc, vl, targets=vc)[1])
    assert recs[-1]["val_loss"] == pytest.approx(ref, abs=1e-6) and "val_loss_ema" not in recs[-1]


def test_resume_is_bit_exact_across_the_anneal_start(tmp_path):
    store = make_store(tmp_path / "store")
    kw = dict(steps=8, rar_anneal=(3, 6), lr=3e-3)  # dropouts and class dropout on: the RNG state matters
    train_ar(cfg_for(store, tmp_path / "a", **kw))

    def stop_at_two(rank, step, rows):  # SIGTERM during step index 1: checkpoint after step 2, before the anneal
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train_ar(cfg_for(store, tmp_path / "b", **kw), observer=stop_at_two)
    assert first.result.interrupted and first.result.step == 2
    train_ar(cfg_for(store, tmp_path / "b", resume=True, **kw))
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIME_DEPENDENT_KEYS} for r in rs]  # noqa: E731
    ra, rb = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in rb] == list(range(1, 9)) and strip(ra) == strip(rb)
    assert [r["rar_order_prob"] for r in ra] == pytest.approx([1, 1, 1, 1, 2 / 3, 1 / 3, 0, 0])
    assert ra[-1]["loss_gpt"] < ra[0]["loss_gpt"]


def test_gpt_default_is_unchanged_and_can_take_all_neighbours(tmp_path):
    store = make_store(tmp_path / "store")
    seen: list = []
    train_ar(cfg_for(store, tmp_path / "gpt", model="GPT-tiny", steps=2), batch_observer=seen.append)
    t = json.loads((tmp_path / "gpt" / "config.json").read_text())["train"]
    assert (t["views"], t["lr"], t["betas"], t["ema_decay"], t["lr_schedule"], t["warmup_steps"]) == (
        "per-epoch", 1e-4, [0.9, 0.95], 0.9999, "constant", 0)
    assert seen[0].tokens.shape == (8, L) and seen[0].orders is None and t["tokens_per_step"] == 8 * L
    seen.clear()
    train_ar(cfg_for(store, tmp_path / "gpt2", model="GPT-tiny", steps=1, views="all-neighbours"),
             batch_observer=seen.append)
    assert seen[0].tokens.shape == (16, L) and torch.equal(seen[0].labels[0::2], seen[0].labels[1::2])


def _cli(*args: str):
    return CliRunner().invoke(app, ["train-ar", *args])


def test_refusals_name_the_problem(tmp_path):
    store = make_store(tmp_path / "store")
    common = ["--tokens", str(store), "--steps", "1", "--batch-size", "8", "--device", "cpu", "--num-workers", "0",
              "--no-progress"]
    res = _cli(*common, "--out", str(tmp_path / "a"), "--model", "GPT-tiny", "--rar-anneal", "1", "2")
    assert res.exit_code == 2 and "--rar-anneal applies to RAR models" in res.output
    res = _cli(*common, "--out", str(tmp_path / "b"), "--model", "RAR-tiny", "--rar-anneal", "3", "2")
    assert res.exit_code == 2 and "0 <= START <= END" in res.output
    res = _cli(*common, "--out", str(tmp_path / "c"), "--model", "RAR-huge")
    assert res.exit_code == 2 and "RAR-tiny" in res.output and "GPT-B" in res.output
    save_gpt(create_gpt("GPT-tiny", vocab_size=VOCAB, num_classes=CLASSES, grid_size=GRID), tmp_path / "gptrun")
    res = _cli(*common, "--out", str(tmp_path / "d"), "--model", "RAR-tiny", "--init-from", str(tmp_path / "gptrun"))
    assert res.exit_code == 2 and "holds a GPT, but --model RAR-tiny is a RAR preset" in res.output
    save_rar(create_rar("RAR-tiny", vocab_size=32, num_classes=CLASSES, seq_len=L), tmp_path / "rar32")
    res = _cli(*common, "--out", str(tmp_path / "e"), "--model", "RAR-tiny", "--init-from", str(tmp_path / "rar32"))
    assert res.exit_code == 2 and "codebook size (vocab_size): model 32, store 16" in res.output
    for out in "abcde":
        assert not (tmp_path / out / "metrics.jsonl").exists()


def test_fsdp_two_processes_match_one_process(tmp_path):
    """FSDP2 over 2 CPU processes (one unit per RAR Block), no EMA (the gathered live weights are exported): the
    same weights as one process, since every sequence's order depends only on (seed, step, image, neighbour)."""
    import sys
    import textwrap

    sys.path.insert(0, str(Path(__file__).parent))
    from torchrun_util import torchrun

    store = make_store(tmp_path / "store")
    kw = dict(steps=3, class_dropout=0.0, dropout=0.0, rar_anneal=(1, 2), lr=3e-3, grad_clip=0.0)
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        torch.set_num_threads(1)
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_train_rar import cfg_for
        from vfmtok.jobs.train_ar import train_ar
        train_ar(cfg_for(Path(sys.argv[1]), Path(sys.argv[2]) / "fsdp", fsdp=True, **{kw!r}))
    """))
    proc = torchrun([script, store, tmp_path], timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    train_ar(cfg_for(store, tmp_path / "one", **kw))
    a, b = load_file(tmp_path / "fsdp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {k: (v.shape, v.dtype) for k, v in b.items()}
    assert not torch.equal(b["lm_head.bias"], torch.zeros_like(b["lm_head.bias"]))  # trained
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    la, lb = read_metrics(tmp_path / "fsdp" / "metrics.jsonl"), read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert [r["loss_gpt"] for r in la] == pytest.approx([r["loss_gpt"] for r in lb], abs=1e-5)
    assert json.loads((tmp_path / "fsdp" / "config.json").read_text())["train"]["fsdp"] is True


def test_sample_finds_the_newest_rar_run_and_its_tokenizer(tmp_path, monkeypatch):
    """`vfmtok sample` without --ckpt / --tokenizer: the newest run under ./runs is the RAR run, its recorded
    tokenizer decodes, the cosine guidance options reach the samples."""
    from vfmtok.models.tokenizer_io import load_tokenizer

    store = tiny_tokenizer_and_store(tmp_path)
    train_ar(cfg_for(store, tmp_path / "runs" / "rar", steps=2, lr=3e-2))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["sample", "-n", "3", "--class", "1", "--cfg-scale", "4", "--cfg-schedule", "cosine",
                                   "--cfg-power", "2.75", "--image-size", "32", "--no-png", "--no-progress",
                                   "--device", "cpu", "--out", "s"])
    assert res.exit_code == 0, res.output
    assert "newest GPT run" in res.output and str(Path("runs") / "rar") in res.output
    cfg = json.loads((tmp_path / "s" / "sample_config.json").read_text())
    assert cfg["tokenizer"]["sha256_verified_against_run"] is True
    assert (cfg["settings"]["cfg_schedule"], cfg["settings"]["cfg_power"]) == ("cosine", 2.75)
    model = vfmtok.load_gpt(tmp_path / "runs" / "rar")
    codes = vfmtok.generate(model, torch.ones(3, dtype=torch.long), cfg_scale=4.0, cfg_schedule="cosine",
                            cfg_power=2.75, seed=0, sample_indices=[0, 1, 2])
    from vfmtok.imageops import to_uint8

    with torch.no_grad():
        want = to_uint8(load_tokenizer(tmp_path / "tok", with_encoder=False).decode_codes(codes), size=32).numpy()
    with np.load(tmp_path / "s" / "samples.npz") as npz:
        assert npz["arr_1"].tolist() == [1, 1, 1]
        assert np.abs(npz["arr_0"].astype(int) - want.astype(int)).max() <= 1
