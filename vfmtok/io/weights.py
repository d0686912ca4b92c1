"""Safe reading of the authors' released `.pt` checkpoints (tokenizer and GPT), and reproducible, atomic
writing of our `.safetensors` weight files.

Their files are dicts with entries such as `model`, `ema`, `optimizer`, `steps` and `args` (a pickled
`argparse.Namespace`). We never unpickle arbitrary objects: `torch.load(weights_only=True)` with only
`argparse.Namespace` allow-listed (see shared/reference/checkpoints/README.md section 1).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch


def load_official_pt(path: str | Path) -> dict[str, Any]:
    """Load an official `.pt` checkpoint dict safely.

    Args:
        path: a `vfmtok-tokenizer.pt` or `GPT-*.pt` file.

    Returns:
        The checkpoint dict (tensors on CPU).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a torch checkpoint dict, or holds objects other than tensors,
            containers, numbers, strings and `argparse.Namespace`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types
        raise ValueError(f"{path}: not a loadable torch checkpoint with weights_only=True ({err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def pick_state_dict(ckpt: dict[str, Any], path: str | Path, prefer: tuple[str, ...] = ("ema", "model")) -> tuple[str, dict]:
    """Choose the weights entry of an official checkpoint: `ema` first (what the authors' inference uses).

    Falls back to `model`, `module`, `state_dict`, or the dict itself when it is a flat state dict.

    Returns:
        (entry name, state dict). The entry name is "<root>" for a flat state dict.

    Raises:
        ValueError: no entry holding tensors was found (lists the keys present).
    """
    for key in (*prefer, "module", "state_dict"):
        entry = ckpt.get(key)
        if isinstance(entry, dict) and entry and all(isinstance(v, torch.Tensor) for v in entry.values()):
            return key, entry
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return "<root>", ckpt
    raise ValueError(f"{path}: no weights entry found (looked for {list(prefer)}); top-level keys: {sorted(ckpt)}")


def save_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write `state` to a `.safetensors` file atomically and byte-reproducibly.

    safetensors stores `metadata` as a Rust HashMap, so with two or more entries the order of the JSON header (and
    with it the file's sha256) changes from save to save. This writes with `safetensors.torch.save_file` to
    `path.tmp`, rewrites the header JSON with sorted keys (same length: it is space-padded to the original size,
    which the format allows; the data offsets are unchanged), then renames onto `path`. Equal tensors and
    metadata therefore give equal bytes, and a crash never leaves a half-written `path`.

    Args:
        state: name -> tensor (CPU, contiguous; any dtype safetensors supports).
        path: destination file; its parent must exist; an existing file is replaced.
        metadata: string -> string entries for the header's `__metadata__`.

    Returns:
        `path` as a Path.

    Raises:
        ValueError: from safetensors for tensors it cannot store (non-contiguous, shared storage).
    """
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    with tmp.open("r+b") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(canonical) <= size:  # always, for what safetensors writes; never grow the header
            fh.seek(8)
            fh.write(canonical + b" " * (size - len(canonical)))
    tmp.replace(path)
    return path



def save_model_run(model: torch.nn.Module, config: dict[str, Any], out_dir: str | os.PathLike, format_name: str,
                   format_version: int, config_key: str, weights_file: str = "model.safetensors",
                   config_file: str = "config.json") -> Path:
    """Write a model's run folder: `out_dir/weights_file` (its state dict as held, atomic and byte-reproducible,
    with `{"format": format_name, config_key: json(config)}` as safetensors metadata so the file alone loads) and
    `out_dir/config_file` = {"format", "format_version", config_key: config}.

    Args:
        model: the module to save. config: its JSON-able config dict. out_dir: created if missing.
        format_name / format_version / config_key: the run format (e.g. "vfmtok.gpt", 1, "gpt_config").

    Returns:
        The weights path.

    Raises:
        OSError: `out_dir` cannot be written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = save_safetensors(state, out_dir / weights_file, {"format": format_name, config_key: json.dumps(config)})
    doc = {"format": format_name, "format_version": format_version, config_key: config}
    (out_dir / config_file).write_text(json.dumps(doc, indent=2) + "\n")
    return path
