"""Construction, saving and loading of the VFMTok tokenizer: our safetensors run format and the authors'
`vfmtok-tokenizer.pt`.

Our format: a directory with `tokenizer.safetensors` (trainable weights; the frozen encoder is never saved) and
`config.json` ({"format": "vfmtok-tokenizer", "format_version": 1, "tokenizer": {...}, "encoder_weights": ...}).
The authors' file is read and checked key for key by `vfmtok.io.official`. This module imports
`vfmtok.models.tokenizer`, never the other way round.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vfmtok.configs import config_from_dict, config_to_dict
from vfmtok.io.hub import is_hub_ref, resolve_path
from vfmtok.io.official import load_official_tokenizer_state
from vfmtok.io.state import strict_load
from vfmtok.io.weights import save_safetensors
from vfmtok.models.tokenizer import DECODE_ONLY, VFMTokenizer
from vfmtok.models.tokenizer_config import TokenizerConfig, resolve_config


WEIGHTS_FILE = "tokenizer.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "vfmtok-tokenizer"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# factories and weights I/O
# ---------------------------------------------------------------------------------------------
def create_tokenizer(name_or_config: str | TokenizerConfig | dict = "tiny", encoder_weights: str | Path | None = None,
                     **overrides: Any) -> VFMTokenizer:
    """Build a randomly initialised tokenizer around a frozen encoder.

    Args:
        name_or_config: preset name ("vfmtok-l", "tiny"), a TokenizerConfig, or a config dict.
        encoder_weights: None (config default: timm pretrained weights or the seeded random init), "random",
            or a weights file (timm state dict or official DINOv2 `.pth`).
        **overrides: TokenizerConfig fields to change (e.g. codebook_size=4096).

    Returns:
        VFMTokenizer in training mode (the frozen encoder stays in eval mode).

    Raises:
        KeyError, ValueError, RuntimeError, FileNotFoundError: see `resolve_config` and `VFMTokenizer`.
    """

    return VFMTokenizer(resolve_config(name_or_config, **overrides), encoder_weights=local_weights(encoder_weights))


def local_weights(source: Any) -> Any:
    """`encoder_weights` with a Hub reference (`hf://...`, `authors/NAME`) downloaded to a local file; other
    values unchanged. Raises what `vfmtok.io.hub.resolve_path` raises."""
    if isinstance(source, (str, Path)) and is_hub_ref(source):
        return resolve_path(source)
    return source


def save_tokenizer(tok: VFMTokenizer, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `directory/tokenizer.safetensors` (trainable weights, frozen encoder excluded) and
    `directory/config.json` ({"format", "format_version", "tokenizer": config, "encoder_weights", **extra}).

    Args:
        tok: the tokenizer (any device; tensors are copied to CPU, float dtype kept).
        directory: created if missing; existing files of the same names are overwritten.
        extra: additional JSON-serialisable entries for config.json (e.g. provenance).

    Returns:
        The directory path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in tok.state_dict().items()}
    save_safetensors(state, directory / WEIGHTS_FILE, {"format": FORMAT})
    source = tok.encoder_source
    if Path(source).is_file():
        source = str(Path(source).resolve())
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "tokenizer": config_to_dict(tok.config),
            "encoder_weights": source, **(extra or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return directory


def _config_from_json(path: Path) -> TokenizerConfig:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the tokenizer config ({err})") from err
    section = data.get("tokenizer", data) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise ValueError(f"{path}: expected a JSON object with a 'tokenizer' config")
    try:
        return config_from_dict(TokenizerConfig, section)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: invalid tokenizer config: {err}") from err


def load_tokenizer(path: str | Path, encoder_weights: str | Path | None = None,
                   config: str | TokenizerConfig | dict | None = None, map_location: str | torch.device = "cpu",
                   with_encoder: bool = True) -> VFMTokenizer:
    """Load a tokenizer for inference (returned in eval mode).

    Args:
        path: one of
            * a Hub reference, `hf://OWNER/REPO/PATH[@REV]`, `hf://OWNER/REPO` (a pushed run) or
              `authors/tokenizer`, downloaded into the Hugging Face cache first (`vfmtok.io.hub`);
            * a run directory holding `tokenizer.safetensors` + `config.json`;
            * a `.safetensors` file with `config.json` beside it;
            * the authors' `vfmtok-tokenizer.pt` (its `ema` entry; config = `vfmtok-l` unless `config` is given),
              loaded strictly: every key consumed, shapes equal, only the frozen encoder absent
              (`slot_quantize.codebook_used` is accepted and ignored; backbone keys, if present, are used
              as encoder weights when `encoder_weights` is None).
        encoder_weights: frozen encoder source (see `create_tokenizer`; a Hub reference works too); None = what the run recorded
            (its weights file if it still exists), else the config default.
        config: override the config (preset name, TokenizerConfig or dict); needed for official files of a
            non-default shape.
        map_location: device to place the model on.
        with_encoder: False loads a decode-only tokenizer (no frozen encoder is built or read; see
            `VFMTokenizer`): what `vfmtok sample` uses, since decoding never touches the encoder. Backbone keys
            of an authors' file are then ignored; `encoder_weights` must be None.

    Raises:
        FileNotFoundError: path or companion files missing (`vfmtok.io.hub.HubFileMissing` for a Hub file that
            is neither cached nor downloadable). ValueError: keys/shapes do not match (names them);
            `vfmtok.io.hub.HubFileCorrupt` for a Hub file whose hash does not match. Also ValueError: encoder_weights given with
            with_encoder=False.
    """

    path = resolve_path(path)
    encoder_weights = local_weights(encoder_weights)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer checkpoint not found: {path}")
    recorded = None
    if path.is_dir() or path.suffix == ".safetensors":
        weights = path / WEIGHTS_FILE if path.is_dir() else path
        cfg_file = weights.parent / CONFIG_FILE
        for needed in (weights, cfg_file):
            if not needed.is_file():
                raise FileNotFoundError(f"{needed} not found (a tokenizer run holds {WEIGHTS_FILE} and {CONFIG_FILE})")
        cfg = resolve_config(config) if config is not None else _config_from_json(cfg_file)
        recorded = json.loads(cfg_file.read_text()).get("encoder_weights")
        from safetensors.torch import load_file

        state = load_file(str(weights))
        backbone = None
    else:
        cfg = resolve_config(config if config is not None else "vfmtok-l")
        state, backbone = load_official_tokenizer_state(path)
    if not with_encoder:
        tok = VFMTokenizer(cfg, encoder_weights=encoder_weights, with_encoder=False)
        strict_load(tok, state, source=str(path))
        return tok.to(map_location).eval()
    named_file = recorded not in (None, "pretrained", "random", DECODE_ONLY)
    if encoder_weights is None and named_file and Path(recorded).is_file():
        encoder_weights = recorded
    if encoder_weights is None and backbone:
        tok = VFMTokenizer(cfg, encoder_weights=backbone)
        tok.encoder_source = f"{path}#backbone"
    else:
        try:
            tok = VFMTokenizer(cfg, encoder_weights=encoder_weights)
        except (RuntimeError, FileNotFoundError) as err:
            if encoder_weights is None and named_file:
                raise type(err)(f"{err} (the run recorded encoder weights {recorded}, which were not found; "
                                "pass encoder_weights=PATH)") from err
            raise
    strict_load(tok, state, source=str(path), what="the tokenizer")
    return tok.to(map_location).eval()
