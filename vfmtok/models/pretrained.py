"""`save_pretrained` / `from_pretrained`: one folder layout for a tokenizer, a GPT or a RAR, locally or on the Hub.

A pretrained folder is the run layout of `save_tokenizer` / `save_gpt` / `save_rar` (safetensors weights +
`config.json`, whose "format" names the model kind: "vfmtok-tokenizer", "vfmtok.gpt" or "vfmtok.rar") plus a
generated model card `README.md` (`model_card`). Loading dispatches on that "format" alone (nothing is inferred
from the weights). The folder can be pushed to the Hub (`vfmtok push`) and loaded back from `hf://OWNER/REPO`
(`vfmtok.io.hub`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from vfmtok.io.files import read_json_dict, write_text_atomic
from vfmtok.io.hub import resolve_path
from vfmtok.models import gpt_io, rar_io, tokenizer_io
from vfmtok.models.gpt import GPT
from vfmtok.models.rar import RAR
from vfmtok.models.tokenizer import VFMTokenizer

MODEL_CARD = "README.md"
# config.json "format" -> weights file of that kind of folder
FORMATS = {gpt_io.FORMAT_NAME: gpt_io.WEIGHTS_FILE, rar_io.FORMAT_NAME: rar_io.WEIGHTS_FILE,
           tokenizer_io.FORMAT: tokenizer_io.WEIGHTS_FILE}
# format -> (what the model card calls it, config.json key of its architecture config, loader named in the card)
_KINDS = {
    gpt_io.FORMAT_NAME: ("GPT (LlamaGen class-conditional generator)", "gpt_config", "load_gpt"),
    rar_io.FORMAT_NAME: ("RAR (randomized autoregressive class-conditional generator, the authors' VFMTok-RAR)",
                         "rar_config", "load_rar"),
    tokenizer_io.FORMAT: ("VFMTok tokenizer", "tokenizer", "load_tokenizer"),
}


def run_format(folder: str | os.PathLike) -> tuple[str, str]:
    """(format, weights file name) of a run / pretrained folder, from its `config.json`.

    Raises:
        FileNotFoundError: no config.json or no weights file. ValueError: config.json names no model kind or
            an unknown one (a "format" other than "vfmtok.gpt", "vfmtok.rar" or "vfmtok-tokenizer"; the message
            names the file, the format found and the known ones).
    """
    folder = Path(folder)
    cfg = read_json_dict(folder / "config.json")
    if cfg is None:
        raise FileNotFoundError(f"{folder}: no readable config.json (expected a vfmtok GPT, RAR or tokenizer run)")
    fmt = cfg.get("format")
    if fmt not in FORMATS:
        found = "no \"format\" entry" if fmt is None else f"unknown model kind: format {fmt!r}"
        raise ValueError(f"{folder / 'config.json'}: {found}; vfmtok loads format "
                         f"{', '.join(repr(f) for f in FORMATS)} (a GPT, a RAR or a tokenizer)")
    if not (folder / FORMATS[fmt]).is_file():
        raise FileNotFoundError(f"{folder}: {FORMATS[fmt]} missing (config.json says format {fmt!r})")
    return fmt, FORMATS[fmt]


def _table(rows: dict[str, Any]) -> str:
    lines = ["| key | value |", "|---|---|"]
    lines += [f"| {k} | {json.dumps(v) if not isinstance(v, str) else v} |" for k, v in rows.items()]
    return "\n".join(lines)


def model_card(folder: str | os.PathLike, repo_id: str | None = None, metrics: dict[str, Any] | None = None) -> str:
    """The model card (markdown with Hub front matter) of a run folder.

    Content: what the model is (format, architecture config), how to load it, the training command, the data
    fingerprint (the token store's manifest sha256 and the tokenizer sha256 for a GPT or a RAR; the training data
    folder and its manifest fingerprint, when recorded, for a tokenizer), and the run's metrics: the last line of
    `metrics.jsonl`, every `*.json` evaluation result found in the folder (files with "fid" or "rfid" keys),
    and `metrics` (given by the caller).

    Raises:
        FileNotFoundError, ValueError: see `run_format`.
    """
    folder = Path(folder)
    fmt, weights = run_format(folder)
    cfg = read_json_dict(folder / "config.json") or {}
    kind, arch_key, loader = _KINDS[fmt]
    ref = f"hf://{repo_id}" if repo_id else str(folder)
    command = cfg.get("command")
    command = " ".join(command) if isinstance(command, list) else command
    arch = cfg.get(arch_key, {})
    if fmt != tokenizer_io.FORMAT:
        data = {k: cfg.get(k) for k in ("token_store", "token_store_manifest_sha256", "tokenizer",
                                        "tokenizer_sha256") if cfg.get(k) is not None}
    else:
        train = cfg.get("training") or {}
        data = {k: train.get(k) for k in ("data", "data_fingerprint", "num_images") if train.get(k) is not None}
    found: dict[str, Any] = {}
    log = folder / "metrics.jsonl"
    if log.is_file():
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        if lines:
            found["last logged step (metrics.jsonl)"] = json.loads(lines[-1])
    for extra in sorted(folder.glob("*.json")):
        doc = read_json_dict(extra)
        if doc and any(k in doc for k in ("fid", "rfid")):
            found[extra.name] = {k: doc[k] for k in ("fid", "sfid", "inception_score", "precision", "recall", "rfid",
                                                     "psnr", "ssim", "codebook_usage") if k in doc}
    found.update(metrics or {})
    from vfmtok import __version__

    parts = [
        "---", "library_name: vfmtok", "tags:", "- vfmtok", "- image-generation", "---", "",
        f"# {repo_id or folder.name}", "",
        f"A {kind} saved by vfmtok {__version__} (`{weights}` + `config.json`, format `{fmt}`).", "",
        "## Load", "", "```python", "import vfmtok", f'model = vfmtok.{loader}("{ref}")', "```", "",
        "## Training command", "", f"```\n{command or 'not recorded'}\n```", "",
        "## Data fingerprint", "", _table(data) if data else "not recorded", "",
        "## Metrics", "", (_table(found) if found else "none recorded in the run folder"), "",
        "## Architecture", "", _table(arch) if arch else "see config.json", "",
    ]
    return "\n".join(parts)


def save_pretrained(model: nn.Module, directory: str | os.PathLike, repo_id: str | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write `model` as a pretrained folder: weights + `config.json` (as `save_gpt` / `save_rar` /
    `save_tokenizer`) + README.md.

    The weights are `model.safetensors` (GPT, RAR; fp32 as held, byte-reproducible) or `tokenizer.safetensors`;
    config.json's "format" ("vfmtok.gpt", "vfmtok.rar", "vfmtok-tokenizer") names the kind `from_pretrained`
    builds.

    Args:
        model: a `GPT`, a `RAR` or a `VFMTokenizer` (the frozen encoder is never saved).
        directory: created if missing. repo_id: named in the model card's loading example.
        extra: JSON entries added to config.json (e.g. provenance).

    Raises:
        TypeError: another kind of module.
    """
    directory = Path(directory)
    if isinstance(model, GPT):
        gpt_io.save_gpt(model, directory)
    elif isinstance(model, RAR):
        rar_io.save_rar(model, directory)
    elif isinstance(model, VFMTokenizer):
        tokenizer_io.save_tokenizer(model, directory)
    else:
        raise TypeError(f"save_pretrained: expected a vfmtok GPT, RAR or VFMTokenizer, got {type(model).__name__}")
    if extra:
        doc = json.loads((directory / "config.json").read_text())
        doc.update(extra)
        write_text_atomic(directory / "config.json", json.dumps(doc, indent=2) + "\n")
    write_text_atomic(directory / MODEL_CARD, model_card(directory, repo_id))
    return directory


def from_pretrained(ref: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a GPT, a RAR or a tokenizer from a pretrained folder, a run folder or `hf://OWNER/REPO[@REV]`.

    The kind comes from config.json's "format" only; `kwargs` go to `load_gpt` (GPTConfig overrides),
    `load_rar` (RARConfig overrides) or `load_tokenizer` (encoder_weights, config, map_location). Weights load
    strictly (`vfmtok.io.state.strict_load`); generators come back in eval mode, fp32, on the CPU.

    Raises:
        FileNotFoundError, ValueError: see `run_format` (an unknown "format" is a ValueError naming it),
            `vfmtok.io.hub.resolve_path` and the loaders (weights that do not fit the config).
    """
    folder = resolve_path(ref)
    fmt, _ = run_format(folder)
    if fmt == gpt_io.FORMAT_NAME:
        return gpt_io.load_gpt(folder, **kwargs)
    if fmt == rar_io.FORMAT_NAME:
        return rar_io.load_rar(folder, **kwargs)
    return tokenizer_io.load_tokenizer(folder, **kwargs)
