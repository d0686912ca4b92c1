"""Process-level behaviour: SIGTERM checkpoints, a kill during a checkpoint write, 2-process DDP (torchrun/gloo)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from vfmtok.engine.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from engine_toy import build  # noqa: E402
from torchrun_util import torchrun  # noqa: E402

TESTS = Path(__file__).parent
TOY = TESTS / "engine_toy.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while not path.exists():
        if time.time() > end:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.05)


def test_sigterm_writes_a_loadable_checkpoint_and_run_resumes(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(TOY), str(out), "--steps", "1000", "--save-every", "0",
                             "--sleep", "0.05"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(out / "metrics.jsonl")
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "interrupted=True" in output
    ckpt = latest_checkpoint(out / "checkpoints")
    state, rng, meta = read_checkpoint(ckpt)
    assert 0 < meta["step"] < 1000 and rng is not None
    assert ckpt.name == f"step_{meta['step']:08d}" and "net.0.weight" in state["models"]["gen"]
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == meta["step"]
    resumed = build(out, steps=meta["step"] + 2, save_every=0)
    assert resumed.fit(resume=True).step == meta["step"] + 2


def test_kill_during_checkpoint_write_leaves_previous_checkpoint_intact(tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(TESTS)!r})
        import vfmtok.engine.checkpoint as ck
        from engine_toy import build
        real = ck._save_file
        def dying(obj, path):
            real(obj, path)
            if path.name == "state.pt" and "step_00000004" in str(path.parent):
                with open(path, "r+b") as fh:  # half-written file, then the process is killed
                    fh.truncate(100)
                os.kill(os.getpid(), 9)
        ck._save_file = dying
        build({str(out)!r}, steps=6, save_every=2).fit()
    """))
    proc = subprocess.run([sys.executable, str(script)], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2]
    assert (out / "checkpoints" / ".tmp-step_00000004").is_dir()  # the torn write stays hidden
    state, _, meta = read_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert meta["step"] == 2 and state["models"]["gen"]["net.0.weight"].shape == (16, 6)
    assert build(out, steps=4, save_every=2).fit(resume=True).step == 4
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2, 4]
    assert not (out / "checkpoints" / ".tmp-step_00000004").exists()


@pytest.mark.dist
def test_two_process_ddp_trains_with_disjoint_data_and_matches_one_process(tmp_path):
    seen = tmp_path / "seen"
    proc = torchrun([TOY, tmp_path / "ddp", "--steps", "3", "--save-every", "0", "--seen-file", seen], timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank=0 world=2" in proc.stdout and "rank=1 world=2" in proc.stdout
    r0 = [int(x) for x in seen.with_suffix(".rank0.txt").read_text().split()]
    r1 = [int(x) for x in seen.with_suffix(".rank1.txt").read_text().split()]
    assert len(r0) == len(r1) == 3 * 4 and not set(r0) & set(r1)  # 3 steps x 4 per rank, disjoint
    single = subprocess.run([sys.executable, str(TOY), str(tmp_path / "one"), "--steps", "3", "--save-every", "0",
                             "--seen-file", str(tmp_path / "one_seen")], env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert single.returncode == 0, single.stderr
    one = [int(x) for x in (tmp_path / "one_seen").with_suffix(".rank0.txt").read_text().split()]
    for s in range(3):  # each global batch is the union of the two ranks' slices
        assert sorted(one[8 * s : 8 * s + 8]) == sorted(r0[4 * s : 4 * s + 4] + r1[4 * s : 4 * s + 4])
    state, _, meta = read_checkpoint(latest_checkpoint(tmp_path / "ddp" / "checkpoints"), rank=1)
    assert meta["world_size"] == 2 and (tmp_path / "ddp" / "checkpoints" / "step_00000003" / "rng_rank1.pt").is_file()
    assert torch.isfinite(state["models"]["gen"]["net.0.weight"]).all()


@pytest.mark.dist
def test_sigterm_on_one_rank_stops_both_ranks_after_the_same_step(tmp_path):
    # rank 1 is signalled during step index 2: the flag travels with that step's all-reduce, so both ranks stop
    # after step 3 and write one checkpoint of step 3
    out = tmp_path / "ddp"
    proc = torchrun([TOY, out, "--steps", "50", "--save-every", "0", "--sigterm-at", "2", "1"], timeout=180)
    assert proc.returncode != 0, proc.stdout
    done = sorted(line for line in proc.stdout.splitlines() if line.startswith("done "))
    assert done == ["done step=3 interrupted=True rank=0 world=2", "done step=3 interrupted=True rank=1 world=2"], (
        proc.stdout + proc.stderr[-3000:])
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [3]
    _, _, meta = read_checkpoint(latest_checkpoint(out / "checkpoints"), rank=1)
    assert meta["step"] == 3 and meta["world_size"] == 2


def test_stop_check_makes_no_tensor_op_in_one_process(tmp_path):
    tr = build(tmp_path, steps=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        assert tr.stop.after_step(tr.world_size) is None
        tr.stop.handle(signal.SIGTERM, None)
        assert tr.stop.after_step(tr.world_size) == signal.SIGTERM
    assert [e.name for e in prof.events()] == []  # old: a tensor + .item() per step


def test_a_launched_process_destroys_its_process_group_before_the_interpreter_exits(tmp_path):
    """Left to interpreter finalization, gloo's threads can abort a finished rank ("terminate called without an
    active exception"); make_accelerator registers an atexit hook that destroys the group first. atexit runs its
    hooks last-registered first, so a hook registered before make_accelerator sees the group already gone."""
    script = tmp_path / "exit_worker.py"
    script.write_text(textwrap.dedent(f"""
        import atexit, os
        from pathlib import Path
        import torch.distributed as dist
        from vfmtok.engine.accel import make_accelerator
        seen = Path({str(tmp_path)!r}) / ("seen" + os.environ["RANK"])
        atexit.register(lambda: seen.write_text(repr(dist.is_initialized())))
        accelerator = make_accelerator("cpu")
        assert accelerator.num_processes == 2 and dist.is_initialized()
        dist.barrier()
    """))
    proc = torchrun([script], timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [(tmp_path / f"seen{r}").read_text() for r in (0, 1)] == ["False", "False"]
