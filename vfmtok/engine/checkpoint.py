"""Training checkpoints: atomic directory writes, keep-last-K, latest lookup, RNG capture/restore.

Layout: `RUN/checkpoints/step_{N:08d}/` holding `state.pt` (module / optimizer / scheduler / EMA / extra state
dicts, written by the main process), `rng_rank{r}.pt` (python, numpy, torch CPU and CUDA RNG states of rank r)
and `trainer_state.json` (step, epoch, world size, global batch, time); with FSDP models also `sharded/`, their
model, optimizer and EMA state as `torch.distributed.checkpoint` (DCP) files written by every rank
(vfmtok.engine.fsdp). A checkpoint is first written into a
hidden temp directory `.tmp-step_*` and then renamed with `os.replace`, so a crash or kill during a write never
leaves a partial `step_*` directory and never touches the previous checkpoints. Everything is loaded with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vfmtok.engine.fsdp import SHARDED_DIR

_STEP_DIR = re.compile(r"^step_(\d{8,})$")


def checkpoint_dir(checkpoints: Path, step: int) -> Path:
    """`checkpoints/step_{step:08d}`."""
    return Path(checkpoints) / f"step_{step:08d}"


def list_checkpoints(checkpoints: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under `checkpoints`, sorted by step: [(step, path)] (temp dirs are ignored)."""
    root = Path(checkpoints)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(checkpoints: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = list_checkpoints(checkpoints)
    return found[-1][1] if found else None


def capture_rng() -> dict[str, Any]:
    """RNG states of python `random`, numpy's global RNG, torch CPU and (if present) all CUDA devices."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _save_file(obj: Any, path: Path) -> None:
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def write_checkpoint(
    checkpoints: str | os.PathLike,
    step: int,
    state: Callable[[], dict[str, Any]] | None,
    rng_state: dict[str, Any],
    meta: dict[str, Any],
    rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
    keep_last: int | None = None,
    sharded_state: Callable[[], dict[str, Any]] | None = None,
) -> Path:
    """Write the checkpoint of `step` atomically; collective over ranks (every rank must call it).

    Rank 0 creates `.tmp-step_N`, every rank writes its `rng_rank{r}.pt` (and, with `sharded_state`, its part
    of `sharded/` through `torch.distributed.checkpoint.save` of the dict that callable returns on each rank),
    rank 0 writes `state.pt` (from the `state()` callable, called only on rank 0) and `trainer_state.json`, then
    renames the directory to `step_N` (replacing an existing one of the same step) and removes all but the
    newest `keep_last` checkpoints.

    Returns:
        The final checkpoint directory.
    """
    root = Path(checkpoints)
    final = checkpoint_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step_*"):  # leftovers of an interrupted write
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    barrier()
    _save_file(rng_state, tmp / f"rng_rank{rank}.pt")
    if sharded_state is not None:
        import torch.distributed.checkpoint as dcp

        dcp.save(sharded_state(), checkpoint_id=tmp / SHARDED_DIR)
    barrier()
    if rank == 0:
        assert state is not None
        _save_file(state(), tmp / "state.pt")
        with open(tmp / "trainer_state.json", "w") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():  # same step written again (e.g. SIGTERM right after a periodic save)
            trash = root / f".tmp-old-{final.name}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        if keep_last is not None and keep_last > 0:
            for _, old in list_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def read_checkpoint(path: str | os.PathLike, rank: int = 0) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """Load (state, rng_state of `rank` or None if absent, meta) from a checkpoint directory.

    Raises:
        FileNotFoundError: if `path` is not a complete checkpoint directory (names the missing file).
    """
    path = Path(path)
    for name in ("state.pt", "trainer_state.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a complete vfmtok checkpoint: {name} is missing")
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    rng_file = path / f"rng_rank{rank}.pt"
    rng = torch.load(rng_file, map_location="cpu", weights_only=True) if rng_file.is_file() else None
    meta = json.loads((path / "trainer_state.json").read_text())
    return state, rng, meta


def read_sharded(path: str | os.PathLike, template: dict[str, Any]) -> dict[str, Any]:
    """Fill `template` (a dict shaped like the one given to `write_checkpoint(sharded_state=...)`, holding this
    rank's sharded DTensors) in place from `path/sharded/`; collective (every rank calls it). Returns `template`.

    Raises:
        FileNotFoundError: the checkpoint has no `sharded/` part (it was not written by an FSDP run).
    """
    import torch.distributed.checkpoint as dcp

    where = Path(path) / SHARDED_DIR
    if not (where / ".metadata").is_file():
        raise FileNotFoundError(f"{path} has no {SHARDED_DIR}/.metadata: it is not a checkpoint of an FSDP run")
    dcp.load(template, checkpoint_id=where)
    return template
