"""`vfmtok train-tokenizer` under `torchrun --nproc_per_node 2` (CPU/gloo): it trains, the two ranks end with
bit-identical weights, and each epoch's samples are split disjointly between them (VFMTOK_TRAIN_DEBUG files)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vfmtok.engine.checkpoint import read_checkpoint
from vfmtok.engine.metrics_log import read_metrics

sys.path.insert(0, str(os.path.dirname(__file__)))
from torchrun_util import torchrun  # noqa: E402

STEPS, BATCH, SEED = 4, 4, 0  # 9 photos // batch 4 = 2 steps per epoch: 4 steps = 2 epochs; 2 samples per rank


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from vfmtok.data.demo import DemoSettings, build_demo_data

    root = tmp_path_factory.mktemp("photos")
    build_demo_data(root, DemoSettings(train_per_class=1, val_per_class=1, size=64))
    return root  # 9 real photos in ImageNet layout (train/<wnid>/*.JPEG)


def _sha256(t: torch.Tensor) -> str:  # independent of the trainer's digest helper: numpy bytes of the tensor
    return hashlib.sha256(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def ddp_run(photos, tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp") / "run"
    cmd = ["-m", "vfmtok.cli.main", "train-tokenizer", str(photos), "--out", str(run),
           "--preset", "tiny", "--set", "image_size=56", "--set", "pixel_ch_mult=[1,1,2,2]",
           "--steps", str(STEPS), "--batch-size", str(BATCH), "--seed", str(SEED), "--disc", "patchgan",
           "--disc-start", "2", "--ema-decay", "0.5", "--lr", "1e-3", "--warmup-steps", "0", "--perceptual-weight",
           "0", "--save-every", "0", "--log-every", "1", "--grid-every", "0", "--num-workers", "0", "--no-progress",
           "--device", "cpu"]
    proc = torchrun(cmd, env={"VFMTOK_TRAIN_DEBUG": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"trained {STEPS} steps") == 1, proc.stdout  # one report per job (rank 0)
    assert "find_unused_parameters=True" not in proc.stderr  # DDP searches for unused parameters only when needed
    return run


@pytest.mark.dist
def test_two_process_run_trains_and_exports_the_ema_weights(ddp_run):
    import vfmtok

    recs = read_metrics(ddp_run / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    for r in recs:
        for key in ("loss_tok", "pixel", "semantic", "vq_codebook", "vq_commit", "grad_norm_tok", "psnr"):
            assert math.isfinite(r[key]), (r["step"], key, r[key])
    assert "loss_disc" not in recs[1] and math.isfinite(recs[2]["loss_disc"]) and math.isfinite(recs[3]["d_hinge"])
    config = json.loads((ddp_run / "config.json").read_text())
    assert config["training"]["world_size"] == 2 and config["training"]["micro_batch"] == BATCH // 2
    state, _, meta = read_checkpoint(ddp_run / "checkpoints" / f"step_{STEPS:08d}")
    assert meta["world_size"] == 2 and meta["step"] == STEPS
    # the weights moved: with decay 0.5 the EMA shadow (init-weighted 1/16) differs from the live weights unless
    # training left them at the initialisation
    shadow, live = state["ema"]["tok"]["shadow"], state["models"]["tok"]
    moved = [k for k, v in shadow.items() if not torch.equal(v, live[k].float())]
    assert len(moved) > 0.5 * len(shadow)
    # tokenizer.safetensors = the EMA shadow, and it loads and encodes
    exported = load_file(ddp_run / "tokenizer.safetensors")
    assert shadow.keys() <= exported.keys()
    for name, value in shadow.items():
        assert torch.equal(exported[name], value), name
    tok = vfmtok.load_tokenizer(ddp_run)
    assert tok.encode(torch.zeros(1, 3, 56, 56)).shape == (1, 64)


@pytest.mark.dist
def test_two_process_ranks_end_with_identical_weights(ddp_run):
    d0 = json.loads((ddp_run / "debug" / "params_rank0.json").read_text())
    d1 = json.loads((ddp_run / "debug" / "params_rank1.json").read_text())
    assert d0["step"] == d1["step"] == STEPS
    assert set(d0["models"]) == {"tok", "disc"} and set(d0["ema"]) == {"tok"}
    assert d0 == d1  # every trainable parameter of both models and every EMA tensor, bit for bit
    # the digests are of the real weights: rank 0's equal hashes of the final checkpoint's tensors
    state, _, _ = read_checkpoint(ddp_run / "checkpoints" / f"step_{STEPS:08d}")
    for model, digests in d0["models"].items():
        assert digests == {k: _sha256(state["models"][model][k]) for k in digests}, model
    assert d0["ema"]["tok"] == {k: _sha256(v) for k, v in state["ema"]["tok"]["shadow"].items()}


@pytest.mark.dist
def test_two_process_ranks_see_disjoint_samples_each_epoch(ddp_run, photos):
    from vfmtok.engine.loader import open_image_dataset

    dataset = open_image_dataset(photos)
    n = len(dataset)
    per_rank = BATCH // 2
    seen = [[json.loads(line) for line in (ddp_run / "debug" / f"samples_rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)]
    for r in (0, 1):
        assert [(rec["step"], rec["epoch"], rec["micro"]) for rec in seen[r]] == [(s, (s - 1) // 2, 0)
                                                                                  for s in range(1, STEPS + 1)]
        for rec in seen[r]:  # indices are real dataset items (their labels match the dataset's)
            assert len(rec["indices"]) == per_rank and rec["labels"] == [int(dataset.labels[i]) for i in rec["indices"]]
    steps_per_epoch = n // BATCH
    orders = []
    for epoch in range(STEPS // steps_per_epoch):
        mine = [[i for rec in seen[r] if rec["epoch"] == epoch for i in rec["indices"]] for r in (0, 1)]
        assert len(set(mine[0])) == len(mine[0]) == len(set(mine[1])) == len(mine[1]) == steps_per_epoch * per_rank
        assert not set(mine[0]) & set(mine[1]), (epoch, mine)  # disjoint within the epoch
        # together: the epoch's documented order (sampler contract), rank r taking the r-th half of each global batch
        perm = np.random.default_rng([SEED, epoch]).permutation(n)
        for s in range(steps_per_epoch):
            glob = perm[s * BATCH : (s + 1) * BATCH].tolist()
            assert seen[0][epoch * steps_per_epoch + s]["indices"] == glob[:per_rank]
            assert seen[1][epoch * steps_per_epoch + s]["indices"] == glob[per_rank:]
        orders.append(mine[0] + mine[1])
    assert orders[0] != orders[1]  # re-shuffled per epoch
