"""`train-ar --fsdp --mixed-precision bf16`: the FSDP2 mixed-precision policy (bf16 all-gathers of the blocks, fp32
gradient reduction, fp32 shards), emulated on 2 CPU processes (gloo) with VFMTOK_CPU_AUTOCAST=1."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vfmtok.engine.checkpoint import latest_checkpoint
from vfmtok.engine.fsdp import describe_policy, training_policy
from vfmtok.engine.metrics_log import read_metrics
from vfmtok.jobs.train_ar import SETTINGS_FILE, TIME_DEPENDENT_KEYS
from vfmtok.models.rar_layers import LayerNorm

sys.path.insert(0, str(Path(__file__).parent))
import test_train_rar  # noqa: E402
from test_fsdp import _equal_trees, _gathered  # noqa: E402
from test_train_ar import make_store  # noqa: E402
from torchrun_util import torchrun  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

POLICY = {"param_dtype": "bfloat16", "reduce_dtype": "float32", "root_param_dtype": "float32"}
BF16, FP32 = ["torch.bfloat16"], ["torch.float32"]
# Loss curves with and without the policy: the policy changes only the rounding of the blocks' RMSNorm gains (and
# of their gradients) to bf16 (the matmul weights are rounded to bf16 by autocast either way, gradients are reduced
# in fp32 either way, the root stays fp32). Measured: at most 6e-5 relative over the 6 steps (train and validation
# losses); the same run with the policy on the root unit too (bf16 embeddings, hence a bf16 residual stream)
# differs by 1.3e-3, so 5e-4 keeps an 8x margin and still catches that.
LOSS_RTOL = 5e-4

WORKER = """
import json, os, signal, sys, threading, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from pathlib import Path
import test_train_rar
from test_train_ar import cfg_for
import vfmtok.jobs.ar_generators as gen
import vfmtok.jobs.train_ar as job

store, rar_store, tmp = map(Path, sys.argv[1:4])
seen, record = {{}}, {{}}

def note(key, dtype):  # returns None: hooks must not replace outputs
    seen.setdefault(key, set()).add(str(dtype))

def hooked(create):  # the real constructors; dtype hooks added to what train-ar builds and then shards
    def build(*a, **k):
        model = create(*a, **k)
        block = gen.blocks(model)[0]
        linear = next(m for m in block.modules() if isinstance(m, torch.nn.Linear))
        head = model.output if hasattr(model, "output") else model.lm_head
        def on_linear(m, a, out):  # the weight the matmul used: all-gathered (and cast) by FSDP
            note("block_weight", m.weight.dtype)
            note("linear_out", out.dtype)

        def on_model(m, a, out):
            note("logits", out[0].dtype)
            if out[1] is not None:
                note("loss", out[1].dtype)

        linear.register_forward_hook(on_linear)
        block.register_forward_hook(lambda m, a, out: note("block_out", out.dtype))
        head.register_forward_hook(lambda m, a, out: note("head_weight", m.weight.dtype))
        model.register_forward_hook(on_model)
        return model
    return build

gen.create_gpt, gen.create_rar = hooked(gen.create_gpt), hooked(gen.create_rar)

def run(name, cfg, observer=None):
    seen.clear()
    res = job.train_ar(cfg, observer=observer)
    record[name] = {{k: sorted(v) for k, v in seen.items()}}
    return res

kw = dict(fsdp=True, mixed_precision="bf16", steps=6, save_every=3, grad_accum=2, val_count=5, ema_decay=0.5)
run("mp", cfg_for(store, tmp / "mp", **kw))
def stop(rank, step, rows):  # SIGTERM to both ranks during the 4th step, delivered to the main thread: sent to the
    if step == 3:            # process it may land on a gloo thread (seen once to abort a rank in C++)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
res = run("half", cfg_for(store, tmp / "half", **kw), observer=stop)
assert res.result.interrupted and res.result.step == 4, res.result
run("resumed", cfg_for(store, tmp / "half", resume=True, **kw))
run("rar", test_train_rar.cfg_for(rar_store, tmp / "rar", fsdp=True, mixed_precision="bf16", steps=2))
job.training_policy = lambda precision: None  # the same bf16-autocast run as before the policy: fp32 all-gathers
run("plain", cfg_for(store, tmp / "plain", **kw))
(tmp / ("seen" + os.environ["RANK"] + ".json")).write_text(json.dumps(record))
"""


def test_training_policy_follows_the_effective_precision():
    assert training_policy("no") is None and describe_policy(None) is None
    assert training_policy("bf16") == {"param_dtype": torch.bfloat16, "reduce_dtype": torch.float32, "root_fp32": True}
    assert describe_policy(training_policy("fp16"))["param_dtype"] == "float16"
    with pytest.raises(ValueError, match="'fp8'"):
        training_policy("fp8")


def test_rar_layernorm_takes_bf16_parameters_with_an_fp32_input():
    torch.manual_seed(0)
    norm = LayerNorm(8, eps=1e-6)
    torch.nn.init.normal_(norm.weight, 1.0, 0.3), torch.nn.init.normal_(norm.bias, 0.0, 0.3)
    x = torch.randn(3, 5, 8)
    ref = torch.nn.LayerNorm(8, eps=1e-6)
    ref.load_state_dict(norm.state_dict())
    assert torch.equal(norm(x), ref(x))  # fp32 parameters: nn.LayerNorm itself
    half = norm.to(torch.bfloat16)  # what FSDP all-gathers under the bf16 policy
    out = half(x)
    expected = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()
    expected = expected * half.weight.float() + half.bias.float()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_fsdp_bf16_run_all_gathers_bf16_keeps_fp32_state_and_resumes_exactly(tmp_path):
    store, rar_store = make_store(tmp_path / "store"), test_train_rar.make_store(tmp_path / "rar_store")
    script = tmp_path / "mp_worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    proc = torchrun([script, store, rar_store, tmp_path], env={"VFMTOK_CPU_AUTOCAST": "1"}, timeout=400,
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # (a) inside the forward: block weights bf16 (all-gathered in bf16), root (head, embeddings) fp32, the
    # residual stream (block outputs) fp32, logits and loss fp32; without the policy the block weights are fp32
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"seen{rank}.json").read_text())
        for run in ("mp", "half", "resumed", "rar"):
            assert seen[run] == {"block_weight": BF16, "linear_out": BF16, "block_out": FP32, "head_weight": FP32,
                                 "logits": FP32, "loss": FP32}, (rank, run)
        assert seen["plain"] == {**seen["mp"], "block_weight": FP32}
    for run, policy in (("mp", POLICY), ("rar", POLICY), ("plain", None)):
        for doc in (SETTINGS_FILE, "config.json"):
            train = json.loads((tmp_path / run / doc).read_text())["train"]
            assert train["effective_precision"] == "bf16" and train["fsdp_mixed_precision"] == policy, (run, doc)

    # (b) fp32 export (the full EMA), fp32 sharded model, EMA and AdamW state in the checkpoint
    mp_w, plain_w = (load_file(tmp_path / run / "model.safetensors") for run in ("mp", "plain"))
    assert {k: (v.shape, v.dtype) for k, v in mp_w.items()} == {k: (v.shape, v.dtype) for k, v in plain_w.items()}
    assert {v.dtype for v in mp_w.values()} == {torch.float32} and mp_w["output.weight"].abs().max() > 1e-3
    assert {v.dtype for v in load_file(tmp_path / "rar" / "model.safetensors").values()} == {torch.float32}
    full = _gathered(latest_checkpoint(tmp_path / "mp" / "checkpoints"), tmp_path)
    assert all(torch.equal(full["ema"]["gpt"]["shadow"][k], mp_w[k]) for k in mp_w)
    assert {v.dtype for v in full["models"]["gpt"].values()} == {torch.float32}
    moments = full["optimizers"]["gpt"]["state"]
    assert moments.keys() == mp_w.keys()
    assert {m[key].dtype for m in moments.values() for key in ("exp_avg", "exp_avg_sq")} == {torch.float32}
    for k in mp_w:  # close to the run without the policy (norm-wise: AdamW's sign-like first steps amplify tiny
        # gradient differences of single near-zero entries; measured at most 2e-3)
        assert float((mp_w[k] - plain_w[k]).norm() / plain_w[k].norm()) < 1e-2, k

    # (c) the loss curve of the run without the policy, to LOSS_RTOL
    ra, rb = read_metrics(tmp_path / "mp" / "metrics.jsonl"), read_metrics(tmp_path / "plain" / "metrics.jsonl")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [1, 2, 3, 4, 5, 6]
    assert ra[-1]["loss_gpt"] < ra[0]["loss_gpt"] - 0.1  # it learns
    for key in ("loss_gpt", "val_loss", "val_loss_ema"):
        va, vb = [r[key] for r in ra if key in r], [r[key] for r in rb if key in r]
        assert len(va) == len(vb) >= 3 and va == pytest.approx(vb, rel=LOSS_RTOL), key
    assert [r["loss_gpt"] for r in ra] != [r["loss_gpt"] for r in rb]  # the policy did change the numbers

    # (d) stopped at step 4 and resumed: bit-identical to the uninterrupted run
    half_w = load_file(tmp_path / "half" / "model.safetensors")
    assert half_w.keys() == mp_w.keys() and all(torch.equal(half_w[k], mp_w[k]) for k in mp_w)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIME_DEPENDENT_KEYS} for r in rs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "half" / "metrics.jsonl")) == strip(ra)
    ca, cb = (latest_checkpoint(tmp_path / r / "checkpoints") for r in ("mp", "half"))
    assert ca.name == cb.name == "step_00000006"
    assert _equal_trees(_gathered(cb, tmp_path), full)  # model, AdamW and EMA states
