"""`train-ar --fsdp`: 2-process FSDP2 on CPU (gloo) against one process, sharded checkpoints, bit-exact resume."""
from __future__ import annotations

import json
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
from vfmtok.engine.accel import make_accelerator
from vfmtok.engine.checkpoint import latest_checkpoint, read_checkpoint
from vfmtok.engine.metrics_log import read_metrics
from vfmtok.jobs.train_ar import TIME_DEPENDENT_KEYS, split_indices, train_ar
from vfmtok.models.gpt_io import create_gpt

sys.path.insert(0, str(Path(__file__).parent))
from test_train_ar import N, cfg_for, make_store  # noqa: E402
from torchrun_util import torchrun  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NODROP = dict(class_dropout=0.0, dropout=0.0, ema_decay=0.5, val_count=5, steps=3)  # val: 3 + 2 images per rank


def _gathered(ckpt: Path, tmp: Path) -> dict:
    """The DCP part of a checkpoint as one plain dict (no process group needed)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dst = tmp / f"{ckpt.parent.parent.name}-{ckpt.name}.pt"
    dcp_to_torch_save(ckpt / "sharded", dst)
    return torch.load(dst, weights_only=True)


def _equal_trees(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal_trees(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal_trees(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def test_fsdp_two_processes_match_one_process_and_resume_bit_exact(tmp_path):
    store = make_store(tmp_path / "store")
    script = tmp_path / "fsdp_worker.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        torch.set_num_threads(1)
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_fsdp import NODROP
        from test_train_ar import cfg_for
        from vfmtok.jobs.train_ar import train_ar
        store, tmp = Path(sys.argv[1]), Path(sys.argv[2])
        # the same data per step as one process, no dropout, gradient accumulation over 2 micro-batches,
        # activation checkpointing of the FSDP units
        train_ar(cfg_for(store, tmp / "nodrop", fsdp=True, grad_accum=2, grad_checkpointing=True, **NODROP))
        # the sharding itself (process group set up by train_ar): FSDP units and this rank's shard of each parameter
        import os
        from vfmtok.engine.fsdp import is_fsdp, shard_model
        from vfmtok.models.gpt_layers import TransformerBlock
        from vfmtok.models.gpt_io import create_gpt
        gpt = shard_model(create_gpt("GPT-tiny", vocab_size=16, num_classes=4, grid_size=4), (TransformerBlock,),
                          torch.device("cpu"))
        units = [n for n, m in gpt.named_modules() if is_fsdp(m)]
        shards = {{n: [list(p.shape), list(p.to_local().shape)] for n, p in gpt.named_parameters()}}
        (tmp / ("units" + os.environ["RANK"] + ".json")).write_text(repr([units, shards]))
        # dropout on (RNG states matter): 4 steps at once vs SIGTERM (to both ranks, as torchrun forwards it)
        # during step 2, then resume to 4
        import signal
        kw = dict(fsdp=True, save_every=3, val_count=5, ema_decay=0.5, grad_clip=0.0)  # norm of sharded grads
        train_ar(cfg_for(store, tmp / "full", steps=4, **kw))
        def observer(rank, step, rows):
            if step == 1:
                os.kill(os.getpid(), signal.SIGTERM)
        res = train_ar(cfg_for(store, tmp / "half", steps=4, **kw), observer=observer)
        assert res.result.interrupted and res.result.step == 2, res.result
        train_ar(cfg_for(store, tmp / "half", steps=4, resume=True, **kw))
    """))
    proc = torchrun([script, store, tmp_path], timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # one FSDP unit per TransformerBlock + the root; every parameter split along dim 0 (torch.chunk sizes)
    ref = create_gpt("GPT-tiny", vocab_size=16, num_classes=4, grid_size=4)
    for rank in (0, 1):
        units, shards = eval((tmp_path / f"units{rank}.json").read_text())
        assert units == ["", "layers.0", "layers.1"]
        assert shards.keys() == dict(ref.named_parameters()).keys()
        for name, p in ref.named_parameters():
            assert shards[name] == [list(p.shape), list(p.chunk(2, dim=0)[rank].shape)], name

    # -- FSDP run vs one process on the same data -------------------------------------------------------
    train_ar(cfg_for(store, tmp_path / "one", **NODROP))
    fsdp_w = load_file(tmp_path / "nodrop" / "model.safetensors")
    one_w = load_file(tmp_path / "one" / "model.safetensors")
    # the export is the FULL EMA state dict: same keys, shapes, dtypes as without FSDP
    assert {k: (v.shape, v.dtype) for k, v in fsdp_w.items()} == {k: (v.shape, v.dtype) for k, v in one_w.items()}
    assert fsdp_w["output.weight"].abs().max() > 1e-3  # trained (zero-initialised head)
    for k in one_w:  # FSDP-averaged, clipped gradients + sharded AdamW + sharded EMA = one process (no AC, no accum)
        torch.testing.assert_close(fsdp_w[k], one_w[k], atol=1e-5, rtol=1e-4)
    # it loads into a fresh GPT whose logits are those of the one-process model
    _, val = split_indices(N, 5)
    codes = torch.from_numpy(np.load(store / "codes.npy")[val, 0].astype(np.int64))
    labels = torch.from_numpy(np.load(store / "labels.npy")[val])
    with torch.no_grad():
        logits_fsdp, _ = vfmtok.load_gpt(tmp_path / "nodrop")(codes[:, :-1], labels)
        logits_one, _ = vfmtok.load_gpt(tmp_path / "one")(codes[:, :-1], labels)
    torch.testing.assert_close(logits_fsdp, logits_one, atol=1e-5, rtol=1e-4)
    ra, rb = read_metrics(tmp_path / "nodrop" / "metrics.jsonl"), read_metrics(tmp_path / "one" / "metrics.jsonl")
    for key in ("loss_gpt", "grad_norm_gpt", "val_loss", "val_loss_ema"):  # val sharded 3 + 2 over the ranks
        va, vb = [r.get(key) for r in ra], [r.get(key) for r in rb]
        assert [v is None for v in va] == [v is None for v in vb] and va[-1] is not None
        assert [v for v in va if v is not None] == pytest.approx([v for v in vb if v is not None], abs=1e-5)
    assert max(r["grad_norm_gpt"] for r in ra) > 1.0  # gradient clipping at 1.0 was active
    train = json.loads((tmp_path / "nodrop" / "config.json").read_text())["train"]
    assert train["world_size"] == 2 and train["fsdp_mixed_precision"] is None  # fp32 run: no FSDP2 policy

    # the sharded checkpoint gathers to the live weights and the EMA that was exported
    ckpt = latest_checkpoint(tmp_path / "nodrop" / "checkpoints")
    state, rng, meta = read_checkpoint(ckpt)
    assert meta["fsdp"] == ["gpt"] and meta["world_size"] == 2 and meta["step"] == 3
    assert state["models"] == {} and state["optimizers"] == {} and state["ema"] == {}
    full = _gathered(ckpt, tmp_path)
    assert all(torch.equal(full["ema"]["gpt"]["shadow"][k], fsdp_w[k]) for k in fsdp_w)
    one_state, _, _ = read_checkpoint(latest_checkpoint(tmp_path / "one" / "checkpoints"))
    live = full["models"]["gpt"]
    assert live.keys() == one_state["models"]["gpt"].keys()
    for k, v in one_state["models"]["gpt"].items():
        torch.testing.assert_close(live[k], v, atol=1e-5, rtol=1e-4)
    # AdamW moments: full shapes, equal to one process's (optimizer state is keyed by parameter name under FSDP)
    names = [n for n, p in vfmtok.load_gpt(tmp_path / "one").named_parameters() if p.ndim >= 2] + \
        [n for n, p in vfmtok.load_gpt(tmp_path / "one").named_parameters() if p.ndim < 2]  # param_groups order
    for i, name in enumerate(names):
        ours, ref = full["optimizers"]["gpt"]["state"][name], one_state["optimizers"]["gpt"]["state"][i]
        assert float(ours["step"]) == float(ref["step"]) == 3
        torch.testing.assert_close(ours["exp_avg_sq"], ref["exp_avg_sq"], atol=1e-8, rtol=1e-3)

    # -- bit-exact resume under FSDP (dropout on) --------------------------------------------------------
    wa, wb = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "half" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIME_DEPENDENT_KEYS} for r in rs]  # noqa: E731
    ma, mb = read_metrics(tmp_path / "full" / "metrics.jsonl"), read_metrics(tmp_path / "half" / "metrics.jsonl")
    assert [r["step"] for r in mb] == [1, 2, 3, 4] and strip(ma) == strip(mb)
    assert all(0 < r["grad_norm_gpt"] < 100 for r in ma)  # --grad-clip 0: unclipped norm over the shards
    ca, cb = (latest_checkpoint(tmp_path / r / "checkpoints") for r in ("full", "half"))
    assert ca.name == cb.name == "step_00000004"
    assert sorted(p.name for p in cb.parent.iterdir()) == ["step_00000002", "step_00000003", "step_00000004"]
    assert _equal_trees(_gathered(ca, tmp_path), _gathered(cb, tmp_path))  # model, AdamW and EMA states

    # resuming an FSDP run without --fsdp is refused before any step
    with pytest.raises(ValueError, match=r"written with FSDP models \['gpt'\].*same --fsdp"):
        train_ar(cfg_for(store, tmp_path / "full", steps=6, resume=True, save_every=3, val_count=5,
                         ema_decay=0.5, grad_clip=0.0))
    assert [r["step"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_fsdp_without_a_distributed_launch_and_with_fp16_is_refused(tmp_path):
    store = make_store(tmp_path / "store")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train-ar", "--tokens", str(store), "--out", str(out), "--model", "GPT-tiny",
                                      "--steps", "2", "--batch-size", "8", "--device", "cpu", "--num-workers", "0",
                                      "--no-progress", "--fsdp"])
    assert result.exit_code == 2, result.output
    assert "--fsdp needs a distributed launch: torchrun" in result.output
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match="--fsdp with --mixed-precision fp16"):
        train_ar(cfg_for(store, out, steps=2, fsdp=True, mixed_precision="fp16"))


def test_accelerates_own_fsdp_plugin_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for distributed_type: FSDP
    with pytest.raises(ValueError, match="accelerate's FSDP plugin .* pass --fsdp"):
        make_accelerator("cpu")


def test_fsdp_bf16_param_policy_with_fp32_reduce_matches_fp32_gradients(tmp_path):
    # 2 CPU processes: FSDP2 with MixedPrecisionPolicy(bf16 params, fp32 reduce) under bf16 autocast against the
    # same GPT unsharded in fp32 on the whole batch (each rank computes the reference itself)
    script = tmp_path / "mp_worker.py"
    script.write_text(textwrap.dedent(f"""
        import copy, json, os, sys, torch
        import torch.distributed as dist
        torch.set_num_threads(1)
        from vfmtok.engine.fsdp import full_tensor, shard_model
        from vfmtok.models.gpt_layers import TransformerBlock
        from vfmtok.models.gpt_io import create_gpt
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(0)
        ref = create_gpt("GPT-tiny", vocab_size=16, num_classes=4, grid_size=4, class_dropout=0.0, token_dropout=0.0,
                         resid_dropout=0.0, ffn_dropout=0.0)
        torch.nn.init.normal_(ref.output.weight, std=0.3)
        model = shard_model(copy.deepcopy(ref), (TransformerBlock,), torch.device("cpu"), param_dtype=torch.bfloat16,
                            reduce_dtype=torch.float32)
        gen = torch.Generator().manual_seed(1)
        codes, labels = torch.randint(0, 16, (8, 16), generator=gen), torch.randint(0, 4, (8,), generator=gen)
        seen = set()
        model.layers[0].attention.wqkv.register_forward_hook(lambda m, a, out: seen.add(str(m.weight.dtype)))
        mine = slice(4 * rank, 4 * rank + 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(codes[mine, :-1], labels[mine], targets=codes[mine])
        loss.backward()
        _, ref_loss = ref(codes[:, :-1], labels, targets=codes)
        ref_loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        rel = {{}}
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            g = full_tensor(p.grad)
            rel[name] = float((g - q.grad).norm() / q.grad.norm().clamp_min(1e-12))
        out = dict(loss=float(total) / world, ref_loss=float(ref_loss), compute=sorted(seen),
                   param=sorted({{str(p.dtype) for p in model.parameters()}}),
                   grad=sorted({{str(p.grad.dtype) for p in model.parameters()}}), worst=max(rel.values()),
                   worst_name=max(rel, key=rel.get))
        open(os.path.join({str(tmp_path)!r}, f"mp{{rank}}.json"), "w").write(json.dumps(out))
        dist.destroy_process_group()
    """))
    proc = torchrun([script], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        out = json.loads((tmp_path / f"mp{rank}.json").read_text())
        assert out["compute"] == ["torch.bfloat16"]  # all-gathered for compute in bf16
        assert out["param"] == out["grad"] == ["torch.float32"]  # sharded params and reduced grads in fp32
        assert out["loss"] == pytest.approx(out["ref_loss"], rel=2e-2)
        assert out["worst"] < 5e-2, out  # bf16 compute: gradients within a few percent of fp32
