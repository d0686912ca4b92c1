"""Construction, saving and loading of the GPT: presets -> model, our safetensors run format, the authors' `GPT-*.pt`.

Our format: a directory with `model.safetensors` (fp32 weights, the config also in its metadata) and
`config.json` ({"format": "vfmtok.gpt", "format_version": 1, "gpt_config": {...}}). The authors' checkpoints
are read with `torch.load(weights_only=True)` (`vfmtok.io.weights`), their config inferred from tensor
shapes, `args` and the file name, and loaded strictly (shared/reference/checkpoints/README.md 3.5).
This module imports `vfmtok.models.gpt`, never the other way round.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from torch import Tensor

from vfmtok.configs import config_from_dict, config_to_dict
from vfmtok.io.files import read_json_dict
from vfmtok.io.hub import resolve_path
from vfmtok.io.state import floats_to_float32, strict_load
from vfmtok.io.weights import load_official_pt, pick_state_dict, save_model_run
from vfmtok.models.gpt import GPT
from vfmtok.models.gpt_config import GPT_PRESETS, PRESET_SHAPES, GPTConfig
from vfmtok.models.rar import RAR
from vfmtok.models.rar_io import FORMAT_NAME as RAR_FORMAT
from vfmtok.models.rar_io import is_rar_checkpoint, load_rar


CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "vfmtok.gpt"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Construction, saving, loading
# ---------------------------------------------------------------------------------------------
def create_gpt(
    name_or_config: str | GPTConfig,
    vocab_size: int | None = None,
    num_classes: int | None = None,
    grid_size: int | None = None,
    **overrides: Any,
) -> GPT:
    """Build a randomly initialised GPT from a preset name or a config.

    Args:
        name_or_config: a preset of `vfmtok.models.gpt_config.GPT_PRESETS` ("GPT-B" ... "GPT-3B", "GPT-tiny") or a
            `GPTConfig`.
        vocab_size, num_classes, grid_size: data-dependent sizes (from the token store manifest); None keeps
            the config's value (16384, 1000, 16 for presets).
        **overrides: any other `GPTConfig` field (e.g. `class_dropout=0.0`).

    Raises:
        KeyError: unknown preset (lists them). ValueError: unknown override field or invalid config.
    """
    cfg = GPT_PRESETS[name_or_config]() if isinstance(name_or_config, str) and name_or_config in GPT_PRESETS else name_or_config
    if isinstance(cfg, str):
        raise KeyError(f"unknown GPT preset {cfg!r}; available: {', '.join(sorted(GPT_PRESETS))}")

    sizes = {"vocab_size": vocab_size, "num_classes": num_classes, "grid_size": grid_size}
    return GPT(_with_overrides(cfg, {**{k: v for k, v in sizes.items() if v is not None}, **overrides}))


def _check_fields(overrides: dict[str, Any]) -> None:
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown GPTConfig field(s) {unknown}; expected some of {sorted(fields)}")


def _with_overrides(cfg: GPTConfig, overrides: dict[str, Any]) -> GPTConfig:
    _check_fields(overrides)
    return dataclasses.replace(cfg, **overrides)


def save_gpt(model: GPT, out_dir: str | Path) -> Path:
    """Write `out_dir/model.safetensors` (weights, fp32 as held) and `out_dir/config.json`.

    config.json = {"format": "vfmtok.gpt", "format_version": 1, "gpt_config": {GPTConfig fields}}; the same
    config is also stored in the safetensors metadata, so the weights file alone is loadable. The weights file is
    written atomically and byte-reproducibly (`vfmtok.io.weights.save_safetensors`): equal weights give an
    equal sha256, which `vfmtok sample` keys its output directory on.

    Returns:
        The weights path.
    """
    return save_model_run(model, config_to_dict(model.config), out_dir, FORMAT_NAME, FORMAT_VERSION, "gpt_config",
                          WEIGHTS_FILE, CONFIG_FILE)


def load_gpt(path: str | Path, **overrides: Any) -> GPT | RAR:
    """Load a GPT (eval mode, fp32, CPU) from our run dir, a `.safetensors` file, or the authors' `GPT-*.pt`.

    Accepted inputs:
      * a Hub reference: `hf://OWNER/REPO/PATH[@REV]`, `hf://OWNER/REPO` (a pushed run) or `authors/GPT-B` ...
        `authors/GPT-3B` (`vfmtok.io.hub.AUTHORS_FILES`), downloaded into the Hugging Face cache first, then
        loaded as the file or folder it is;
      * a directory holding `model.safetensors` and `config.json` (written by `save_gpt` / train-ar);
      * a `.safetensors` file whose config is in `config.json` beside it or in its own metadata;
      * a RAR generator (run dir or `.safetensors`, ours or the authors', `vfmtok.models.rar_io.is_rar_checkpoint`)
        is handed to `vfmtok.models.rar_io.load_rar` and a `RAR` is returned (same decoding protocol);
      * the authors' checkpoint (`ema` entry, else `model`), read with `torch.load(weights_only=True)`.
        Its config is inferred: dim/vocab/classes/layers/FFN width from shapes, heads from the preset named
        in `args.gpt_model`, in the file name (`GPT-L-300e.pt`), or the preset with the same dim and depth;
        grid size from `args.latent_size` (else 16).

    config.json may hold the GPTConfig fields under "gpt_config" (or "model"), or flat; a "format" entry other than
    "vfmtok.gpt" / "vfmtok.rar" (e.g. a tokenizer run, or an unknown model kind) is refused.

    Args:
        path: file or directory. **overrides: GPTConfig fields to force (e.g. `n_head`, `grid_size`).

    Raises:
        FileNotFoundError: nothing loadable at `path` (names the files expected); `vfmtok.io.hub.HubFileMissing`
            for a Hub file neither cached nor downloadable. `vfmtok.io.hub.HubFileCorrupt` (a ValueError): hash
            mismatch of a Hub file.
        ValueError: config cannot be inferred, config.json names another kind of model (its "format"), or the
            weights do not match it strictly (names the missing, unexpected or mis-shaped keys).
    """

    path = resolve_path(path)
    if is_rar_checkpoint(path):  # RAR run dir or safetensors (ours or the authors'): same sampling protocol
        return load_rar(path, **overrides)
    if path.is_dir():
        _check_format(path / CONFIG_FILE, read_json_dict(path / CONFIG_FILE))  # the folder's kind, not the file's
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE} in this run directory")
        return load_gpt(weights, **overrides)
    if not path.is_file():
        raise FileNotFoundError(f"GPT checkpoint not found: {path} (expected a run dir, a .safetensors or a GPT-*.pt)")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        state = load_file(str(path))
        cfg_dict = _read_config_json(path.parent / CONFIG_FILE)
        if cfg_dict is None:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if "gpt_config" not in meta:
                raise FileNotFoundError(f"{path}: no {CONFIG_FILE} beside it and no gpt_config in its metadata")
            cfg_dict = json.loads(meta["gpt_config"])
        cfg = _with_overrides(config_from_dict(GPTConfig, cfg_dict), overrides)
        source = str(path)
    else:
        ckpt = load_official_pt(path)
        entry, state = pick_state_dict(ckpt, path)
        cfg = infer_official_config(state, path, ckpt.get("args"), **overrides)
        source = f"{path} [{entry}]"
    model = GPT(cfg)
    strict_load(model, state, source, what="the GPT config strictly", convert=floats_to_float32)
    return model.eval()


def _check_format(file: Path, doc: dict[str, Any] | None) -> None:
    """Refuse a config.json whose "format" names neither a GPT nor a RAR (RAR folders are dispatched before)."""
    fmt = (doc or {}).get("format")
    if fmt is not None and fmt != FORMAT_NAME:
        raise ValueError(f"{file}: format {fmt!r} is not a generator vfmtok can load (expected {FORMAT_NAME!r} or "
                         f"{RAR_FORMAT!r})")


def _read_config_json(file: Path) -> dict[str, Any] | None:
    if not file.is_file():
        return None
    data = json.loads(file.read_text())
    _check_format(file, data)
    for key in ("gpt_config", "model"):
        if isinstance(data.get(key), dict):
            return data[key]
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    if set(data) <= fields:
        return data
    raise ValueError(f"{file}: no GPT config found (expected a 'gpt_config' entry with {sorted(fields)})")


def infer_official_config(state: dict[str, Tensor], path: str | Path, args: Any = None, **overrides: Any) -> GPTConfig:
    """Infer the `GPTConfig` of an official state dict from its shapes, `args` and file name.

    Raises:
        ValueError: a key needed for inference is missing, or the head count cannot be determined.
    """
    need = ("tok_embeddings.weight", "cls_embedding.embedding_table.weight", "layers.0.feed_forward.w1.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"{path}: not a LlamaGen GPT state dict, missing key(s) {missing}")
    vocab, dim = state["tok_embeddings.weight"].shape
    num_classes = state["cls_embedding.embedding_table.weight"].shape[0] - 1
    n_layer = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k)))
    hidden = state["layers.0.feed_forward.w1.weight"].shape[0]
    candidates = []
    arg_name = getattr(args, "gpt_model", None)
    if isinstance(arg_name, str):
        candidates += [arg_name, f"GPT-{arg_name}"]
    candidates += re.findall(r"GPT-(?:XXL|XL|3B|2B|B|L|tiny)", Path(path).name)
    n_head = None
    for name in candidates:
        if name in PRESET_SHAPES and PRESET_SHAPES[name][:2] == (dim, n_layer):
            n_head = PRESET_SHAPES[name][2]
            break
    if n_head is None:
        n_head = next((h for d, n, h in PRESET_SHAPES.values() if (d, n) == (dim, n_layer)), None)
    grid = getattr(args, "latent_size", None)
    base = {"dim": int(dim), "n_layer": n_layer, "vocab_size": int(vocab), "num_classes": int(num_classes),
            "grid_size": grid if isinstance(grid, int) else 16}
    if "n_head" not in overrides and n_head is None:
        raise ValueError(f"{path}: cannot infer the head count of a GPT with dim {dim} and {n_layer} layers; pass n_head=...")
    _check_fields(overrides)
    cfg = GPTConfig(**{**base, "n_head": n_head, **overrides})
    if cfg.ffn_hidden != hidden:
        raise ValueError(f"{path}: FFN width {hidden} does not match the LlamaGen rule for dim {dim} ({cfg.ffn_hidden})")
    return cfg
