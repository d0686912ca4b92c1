"""`vfmtok convert`: the authors' released `.pt` files -> our safetensors run layout (a pretrained folder).

GPT (`GPT-*.pt`): its `ema` weights, config inferred from shapes, `args` and the file name (`load_gpt`), written
with `save_gpt`. Tokenizer (`vfmtok-tokenizer.pt`): its `ema` weights (`load_tokenizer`; config `vfmtok-l` unless
another is given), written with `save_tokenizer` without the frozen encoder; the run records the encoder source
it should be rebuilt from ("pretrained" = the config's timm weights, or the given `encoder_weights` file).
Both folders get config.json's "converted_from" (source reference, file, sha256) and a model card README.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vfmtok.io.hashing import sha256_file
from vfmtok.io.hub import resolve_path
from vfmtok.io.weights import load_official_pt, pick_state_dict
from vfmtok.models.gpt_io import load_gpt
from vfmtok.models.pretrained import save_pretrained
from vfmtok.models.tokenizer_io import load_tokenizer

KINDS = ("auto", "gpt", "tokenizer")


def detect_kind(path: Path) -> str:
    """"gpt" or "tokenizer" for an authors' `.pt`: from the file name when it says (GPT-*, *tokenizer*), else
    from the keys of its weights entry.

    Raises:
        ValueError: neither a LlamaGen GPT nor a VFMTok tokenizer state dict (names the file).
    """
    if path.name.startswith("GPT-"):
        return "gpt"
    if "tokenizer" in path.name:
        return "tokenizer"
    _, state = pick_state_dict(load_official_pt(path), path)
    if "tok_embeddings.weight" in state:
        return "gpt"
    if any(k.startswith("encode_transformer.") for k in state):
        return "tokenizer"
    raise ValueError(f"{path}: neither a LlamaGen GPT (tok_embeddings.weight) nor a VFMTok tokenizer "
                     "(encode_transformer.*) checkpoint; pass --kind")


def convert_official(source: str | Path, out: str | Path, kind: str = "auto", config: str | None = None,
                     encoder_weights: str | Path | None = None, **gpt_overrides: Any) -> dict[str, Any]:
    """Convert one authors' checkpoint into a run folder `out` (see the module docstring).

    Args:
        source: a local `.pt`, `hf://...` or `authors/NAME` (downloaded into the Hugging Face cache first).
        out: destination folder (created; files of the same names are replaced).
        kind: "auto" (`detect_kind`), "gpt" or "tokenizer". config: tokenizer preset (default "vfmtok-l").
        encoder_weights: tokenizer only: the frozen-encoder file the run should record (default "pretrained").
        **gpt_overrides: GPTConfig fields to force (e.g. n_head) when the GPT config cannot be inferred.

    Returns:
        {"kind", "out", "source", "file", "sha256"}.

    Raises:
        ValueError: unknown kind, undetectable file, or weights that do not load strictly (names the keys).
        FileNotFoundError: the source is missing (a Hub file: names its URL).
    """
    if kind not in KINDS:
        raise ValueError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    path = resolve_path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such checkpoint file")
    kind = detect_kind(path) if kind == "auto" else kind
    out = Path(out)
    provenance = {"source": str(source), "file": str(path.resolve()), "sha256": sha256_file(path), "entry": "ema"}
    if kind == "gpt":
        model = load_gpt(path, **gpt_overrides)
        save_pretrained(model, out, extra={"converted_from": provenance, "weights": "ema"})
    else:
        model = load_tokenizer(path, encoder_weights="random", config=config)
        enc = str(Path(encoder_weights).resolve()) if encoder_weights is not None else "pretrained"
        save_pretrained(model, out, extra={"converted_from": provenance, "weights": "ema", "encoder_weights": enc})
    return {"kind": kind, "out": str(out), **provenance}
