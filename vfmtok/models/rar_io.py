"""Construction, saving and loading of the RAR generator: presets, our run format, the authors' safetensors.

Our format mirrors the GPT's (`vfmtok.models.gpt_io`): a directory with `model.safetensors` (fp32 weights, the
config also in its metadata) and `config.json` ({"format": "vfmtok.rar", "format_version": 1,
"rar_config": {...}}). The authors release RAR weights as plain state dicts in `model.safetensors` /
`vfmtok-rar-{l,xl,xxl}.safetensors` (loaded with `strict=True`, shared/reference/rar.md section 3); they are
recognised by their keys, their config inferred from tensor shapes, and loaded strictly.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from torch import Tensor

from vfmtok.io.files import read_json_dict
from vfmtok.io.hub import resolve_path
from vfmtok.io.state import floats_to_float32, strict_load
from vfmtok.io.weights import save_model_run
from vfmtok.configs import config_from_dict, config_to_dict
from vfmtok.models.rar import RAR
from vfmtok.models.rar_config import POS_TABLE_EXTRA, RAR_PRESETS, TIMESTEP_TABLE_EXTRA, RARConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "vfmtok.rar"
FORMAT_VERSION = 1
# Keys only a RAR state dict holds (the GPT's keys are disjoint from these).
SIGNATURE_KEYS = ("target_aware_pos_embed", "timesteps_embeddings", "adaln_before_head.adaLN_modulation.1.weight")


def create_rar(name_or_config: str | RARConfig, **overrides: Any) -> RAR:
    """Build a randomly initialised RAR (authors' init) from a preset name or a config.

    Args:
        name_or_config: a key of `RAR_PRESETS` ("RAR-tiny", "RAR-L", "RAR-XL", "RAR-XXL") or a `RARConfig`.
        **overrides: any `RARConfig` field (e.g. `vocab_size=64, num_classes=10, class_dropout=0.0`).

    Raises:
        KeyError: unknown preset (lists them). ValueError: unknown override field or invalid config.
    """
    if isinstance(name_or_config, str):
        if name_or_config not in RAR_PRESETS:
            raise KeyError(f"unknown RAR preset {name_or_config!r}; available: {', '.join(RAR_PRESETS)}")
        name_or_config = RAR_PRESETS[name_or_config]()
    return RAR(_with_overrides(name_or_config, overrides))


def _with_overrides(cfg: RARConfig, overrides: dict[str, Any]) -> RARConfig:
    fields = {f.name for f in dataclasses.fields(RARConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown RARConfig field(s) {unknown}; expected some of {sorted(fields)}")
    return dataclasses.replace(cfg, **overrides)


def save_rar(model: RAR, out_dir: str | Path) -> Path:
    """Write `out_dir/model.safetensors` (weights as held) and `out_dir/config.json`; returns the weights path.

    The config is also stored in the safetensors metadata ("rar_config"), so the weights file alone loads.
    Written atomically and byte-reproducibly (`vfmtok.io.weights.save_safetensors`).
    """
    return save_model_run(model, config_to_dict(model.config), out_dir, FORMAT_NAME, FORMAT_VERSION, "rar_config",
                          WEIGHTS_FILE, CONFIG_FILE)


def is_rar_checkpoint(path: str | Path) -> bool:
    """True if `path` is a RAR run dir or `.safetensors` (our format or the authors'), judged without loading
    tensors: config.json / metadata format "vfmtok.rar", else a weights file holding a RAR-only key."""
    path = Path(path)
    if path.is_dir():
        doc = read_json_dict(path / CONFIG_FILE)
        if doc is not None and "format" in doc:
            return doc["format"] == FORMAT_NAME
        path = path / WEIGHTS_FILE
    if not (path.is_file() and path.suffix == ".safetensors"):
        return False
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        if (fh.metadata() or {}).get("format") == FORMAT_NAME:
            return True
        return any(key in SIGNATURE_KEYS for key in fh.keys())


def load_rar(path: str | Path, **overrides: Any) -> RAR:
    """Load a RAR (eval mode, fp32, CPU) from our run dir, our `.safetensors`, or the authors' safetensors.

    Accepted inputs:
      * a Hub reference (`hf://OWNER/REPO[/PATH][@REV]`, e.g. a run pushed with `vfmtok push`, or
        `authors/RAR-L` ...; `vfmtok.io.hub`), downloaded into the Hugging Face cache first;
      * a directory holding `model.safetensors` (with or without `config.json`), e.g. our run dir or the
        authors' `RAR-L-ultra/`;
      * a `.safetensors` file; its config comes from a `config.json` beside it of format "vfmtok.rar", else
        from its own metadata, else (the authors' files) from its tensor shapes (`infer_rar_config`).

    Args:
        path: file or directory. **overrides: `RARConfig` fields to force (e.g. `class_dropout=0.0`).

    Raises:
        FileNotFoundError: nothing loadable at `path` (`vfmtok.io.hub.HubFileMissing` for a Hub file neither
            cached nor downloadable).
        ValueError: not a RAR state dict, or the weights do not match the config strictly (names the missing,
            unexpected or mis-shaped keys with expected and found shapes).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = resolve_path(path)
    if path.is_dir():
        if not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE} in this directory")
        return load_rar(path / WEIGHTS_FILE, **overrides)
    if not path.is_file():
        raise FileNotFoundError(f"RAR checkpoint not found: {path} (expected a run dir or a .safetensors file)")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: RAR weights are read from .safetensors files (ours or the authors'), "
                         f"got {path.suffix!r}")
    state = load_file(str(path))
    doc = read_json_dict(path.parent / CONFIG_FILE)
    cfg_dict = doc.get("rar_config") if doc is not None and doc.get("format") == FORMAT_NAME else None
    if cfg_dict is None:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        if "rar_config" in meta:
            cfg_dict = json.loads(meta["rar_config"])
    if cfg_dict is not None:
        cfg = _with_overrides(config_from_dict(RARConfig, cfg_dict), overrides)
    else:
        cfg = infer_rar_config(state, path, **overrides)
    model = RAR(cfg)
    strict_load(model, state, str(path), what="the RAR config strictly", convert=floats_to_float32)
    return model.eval()


def infer_rar_config(state: dict[str, Tensor], source: str | Path, **overrides: Any) -> RARConfig:
    """The `RARConfig` of an authors' RAR state dict, from tensor shapes.

    dim and vocab from `lm_head.weight` (V, D); classes = rows of `embeddings.weight` - V - 2; depth from
    the `blocks.N.` indices; MLP width from `blocks.0.mlp.fc1.weight` (RAR-XL files: whatever they hold);
    heads = D / (qk-norm width); seq_len = rows of `pos_embed` - 1024. Training-only fields (dropouts) keep
    their defaults unless overridden.

    Raises:
        ValueError: a key needed for inference is missing, or the shapes are inconsistent (names them).
    """
    need = ("lm_head.weight", "embeddings.weight", "pos_embed", "timesteps_embeddings", "blocks.0.mlp.fc1.weight",
            "blocks.0.attn.q_norm.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"{source}: not a RAR state dict, missing key(s) {missing}")
    vocab, dim = state["lm_head.weight"].shape
    num_classes = state["embeddings.weight"].shape[0] - vocab - 2
    head_dim = state["blocks.0.attn.q_norm.weight"].shape[0]
    seq_len = state["pos_embed"].shape[1] - POS_TABLE_EXTRA
    if num_classes <= 0 or dim % head_dim or seq_len <= 0:
        raise ValueError(f"{source}: inconsistent RAR shapes: embeddings.weight "
                         f"{tuple(state['embeddings.weight'].shape)}, lm_head.weight {(vocab, dim)}, q_norm width "
                         f"{head_dim}, pos_embed {tuple(state['pos_embed'].shape)}")
    timesteps = state["timesteps_embeddings"].shape[1]
    if timesteps != seq_len + TIMESTEP_TABLE_EXTRA:
        raise ValueError(f"{source}: timesteps_embeddings has {timesteps} rows, expected seq_len + "
                         f"{TIMESTEP_TABLE_EXTRA} = {seq_len + TIMESTEP_TABLE_EXTRA} (pos_embed gives seq_len "
                         f"{seq_len})")
    n_layer = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    base = {"dim": int(dim), "n_layer": n_layer, "n_head": int(dim // head_dim),
            "mlp_dim": int(state["blocks.0.mlp.fc1.weight"].shape[0]), "vocab_size": int(vocab),
            "num_classes": int(num_classes), "seq_len": int(seq_len)}
    return _with_overrides(RARConfig(**base), overrides)
