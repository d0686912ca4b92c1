"""The CUDA precision paths emulated on CPU (VFMTOK_CPU_AUTOCAST): bf16 autocast through train-tokenizer and
train-ar (finite losses, intended dtypes, fp32 where the paper needs it), the recorded TF32 decision, and the
GPT training step under torch.compile (inductor) against eager."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vfmtok.cli.main import app
from vfmtok.device import set_tf32, tf32_settings
from vfmtok.engine.metrics_log import read_metrics
from vfmtok.jobs.train_ar import train_ar
from vfmtok.models.deform_attn import MSDeformAttn
from vfmtok.models.tokenizer_io import create_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from test_train_ar import cfg_for, make_store  # noqa: E402
from test_train_tokenizer import SMALL, photos  # noqa: E402,F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
TF32_ON = {"enabled": True, "cuda_matmul": True, "cudnn": True}


@pytest.fixture
def cpu_autocast(monkeypatch):
    """Mixed precision honoured on CPU; accelerate's per-process precision state reset around the test."""
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("VFMTOK_CPU_AUTOCAST", "1")
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_tokenizer_dtypes_under_bf16_autocast():
    # the paper's code keeps the deformable attention and the quantizer in fp32; the rest follows autocast
    torch.manual_seed(0)
    tok = create_tokenizer("tiny", image_size=56, pixel_ch_mult=[1, 1, 2, 2]).train()
    seen: dict[str, set] = {"deform": set(), "quantizer_in": set(), "post_quant": set()}
    for module in tok.modules():
        if isinstance(module, MSDeformAttn):
            module.register_forward_hook(lambda m, a, out: seen["deform"].add((out[0] if isinstance(out, tuple)
                                                                                  else out).dtype))
    tok.slot_quantize.register_forward_hook(lambda m, a, out: seen["quantizer_in"].add(a[0].dtype))
    tok.post_slots_quant.register_forward_hook(lambda m, a, out: seen["post_quant"].add(out.dtype))
    images = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tok(images)
    assert seen == {"deform": {torch.float32}, "quantizer_in": {torch.float32}, "post_quant": {torch.bfloat16}}
    assert out.codes.dtype == torch.int64 and out.vq_commit_loss.dtype == torch.float32
    assert torch.isfinite(out.recon).all() and out.recon.dtype in (torch.bfloat16, torch.float32)


def test_train_tokenizer_bf16_autocast_across_the_disc_start(photos, tmp_path, cpu_autocast):  # noqa: F811
    set_tf32(False)
    run = tmp_path / "run"
    args = ["train-tokenizer", str(photos), "--out", str(run), *SMALL, "--batch-size", "2", "--disc", "patchgan",
            "--disc-start", "1", "--steps", "3", "--save-every", "0", "--log-every", "1", "--grid-every", "0",
            "--num-workers", "0", "--no-progress", "--device", "cpu", "--perceptual-weight", "0",
            "--mixed-precision", "bf16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    recs = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3] and "loss_disc" in recs[1] and "loss_disc" not in recs[0]
    for rec in recs:
        assert all(math.isfinite(v) for k, v in rec.items() if k.startswith(("loss_", "grad_norm_")))
    training = json.loads((run / "config.json").read_text())["training"]
    assert training["effective_precision"] == "bf16" and training["tf32"] == TF32_ON
    assert {"enabled": True, **tf32_settings()} == TF32_ON  # applied, not only recorded


def test_train_ar_bf16_autocast_keeps_fp32_logits_and_weights(tmp_path, cpu_autocast, monkeypatch):
    import vfmtok.jobs.ar_generators as job  # builds the generator train-ar trains
    from vfmtok.models.gpt_layers import TransformerBlock

    set_tf32(False)
    store = make_store(tmp_path / "store")
    seen: dict[str, set] = {"block": set(), "linear": set(), "head": set()}
    made = []
    create = job.create_gpt

    def create_and_hook(*a, **k):  # the real constructor; dtype hooks added to what it built
        gpt = create(*a, **k)
        for module in gpt.modules():
            if isinstance(module, TransformerBlock):
                module.register_forward_hook(lambda m, a, out: seen["block"].add(out.dtype))
                for lin in module.modules():
                    if isinstance(lin, torch.nn.Linear):
                        lin.register_forward_hook(lambda m, a, out: seen["linear"].add(out.dtype))
        gpt.output.register_forward_hook(lambda m, a, out: seen["head"].add(out.dtype))
        made.append(gpt)
        return gpt

    monkeypatch.setattr(job, "create_gpt", create_and_hook)
    res = train_ar(cfg_for(store, tmp_path / "run", steps=3, mixed_precision="bf16"))
    assert res.result.step == 3
    recs = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(math.isfinite(r["loss_gpt"]) and math.isfinite(r["grad_norm_gpt"]) for r in recs)
    # matmuls in bf16, the residual stream in fp32 (bf16 branch outputs promote when added), the loss on fp32 logits
    assert seen == {"block": {torch.float32}, "linear": {torch.bfloat16}, "head": {torch.bfloat16}}
    assert len(made) == 1 and all(p.dtype == torch.float32 for p in made[0].parameters())  # fp32 master weights
    train = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert train["effective_precision"] == "bf16" and train["tf32"] == TF32_ON
    assert {"enabled": True, **tf32_settings()} == TF32_ON


def test_compiled_gpt_training_matches_eager(tmp_path):
    store = make_store(tmp_path / "store")
    common = dict(steps=2, class_dropout=0.0, dropout=0.0, val_count=0)
    train_ar(cfg_for(store, tmp_path / "eager", **common))
    start = time.perf_counter()
    train_ar(cfg_for(store, tmp_path / "compiled", compile=True, **common))
    print(f"compiled train-ar run: {time.perf_counter() - start:.1f} s")
    eager, compiled = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("eager", "compiled"))
    assert [r["step"] for r in compiled] == [1, 2]
    for a, b in zip(eager, compiled):
        assert b["loss_gpt"] == pytest.approx(a["loss_gpt"], rel=1e-5)
        assert b["grad_norm_gpt"] == pytest.approx(a["grad_norm_gpt"], rel=1e-4)
