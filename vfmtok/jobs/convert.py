"""`vfmtok convert`: the authors' released files -> our safetensors run layout (a pretrained folder).

GPT (`GPT-*.pt`): its `ema` weights, config inferred from shapes, `args` and the file name (`load_gpt`), written
with `save_gpt`. Tokenizer (`vfmtok-tokenizer.pt`): its `ema` weights (`load_tokenizer`; config `vfmtok-l` unless
another is given), written with `save_tokenizer` without the frozen encoder; the run records the encoder source
it should be rebuilt from ("pretrained" = the config's timm weights, or the given `encoder_weights` file).
RAR (`RAR-L-ultra/model.safetensors`, `vfmtok-rar-{l,xl,xxl}.safetensors`): the plain state dict the file holds
(the authors' RAR recipe keeps no EMA, shared/reference/rar.md section 3), config inferred from the shapes
(`load_rar`), written with `save_rar`. Every folder gets config.json's "converted_from" (source reference, file,
sha256, the entry read) and a model card README.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vfmtok.io.hashing import sha256_file
from vfmtok.io.hub import resolve_path
from vfmtok.io.weights import load_official_pt, pick_state_dict
from vfmtok.models.gpt_io import load_gpt
from vfmtok.models.pretrained import save_pretrained
from vfmtok.models.rar import RAR
from vfmtok.models.rar_io import SIGNATURE_KEYS, is_rar_checkpoint, load_rar
from vfmtok.models.tokenizer_io import load_tokenizer

KINDS = ("auto", "gpt", "rar", "tokenizer")


def detect_kind(path: Path) -> str:
    """"gpt", "rar" or "tokenizer" for an authors' file. A `.safetensors` is a RAR when it holds a RAR-only key
    (`vfmtok.models.rar_io.is_rar_checkpoint`, keys only, no tensor read); a `.pt` is judged by its file name
    when it says (GPT-*, *tokenizer*), else by the keys of its weights entry.

    Raises:
        ValueError: neither a LlamaGen GPT, a RAR nor a VFMTok tokenizer checkpoint (names the file).
    """
    if path.suffix == ".safetensors":
        if is_rar_checkpoint(path):
            return "rar"
        raise ValueError(f"{path}: a .safetensors file without any RAR key ({', '.join(SIGNATURE_KEYS)}); convert "
                         "reads the authors' RAR .safetensors and their GPT / tokenizer .pt files")
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
        source: a local `.pt` / `.safetensors`, `hf://...` or `authors/NAME` (e.g. `authors/GPT-B`,
            `authors/RAR-L`; downloaded into the Hugging Face cache first).
        out: destination folder (created; files of the same names are replaced).
        kind: "auto" (`detect_kind`), "gpt", "rar" or "tokenizer". config: tokenizer preset (default "vfmtok-l").
        encoder_weights: tokenizer only: the frozen-encoder file the run should record (default "pretrained").
        **gpt_overrides: GPTConfig fields to force (e.g. n_head) when the GPT config cannot be inferred (GPT
            only: a RAR's config is fully inferred from its shapes).

    Returns:
        {"kind", "out", "source", "file", "sha256", "entry"} ("entry": "ema" for the `.pt` files, None for a
        RAR safetensors, which is a plain state dict).

    Raises:
        ValueError: unknown kind, undetectable file, a kind that does not match the file (--kind gpt on a RAR,
            GPT overrides for a RAR), or weights that do not load strictly (names the keys).
        FileNotFoundError: the source is missing (a Hub file: names its URL).
    """
    if kind not in KINDS:
        raise ValueError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    path = resolve_path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such checkpoint file")
    kind = detect_kind(path) if kind == "auto" else kind
    out = Path(out)
    provenance = {"source": str(source), "file": str(path.resolve()), "sha256": sha256_file(path),
                  "entry": None if kind == "rar" else "ema"}
    if kind == "rar":
        if gpt_overrides:
            raise ValueError(f"{source}: GPT override(s) {', '.join(sorted(gpt_overrides))} apply to GPT files only; a "
                             "RAR's config is inferred from its tensor shapes")
        model = load_rar(path)
        save_pretrained(model, out, extra={"converted_from": provenance, "weights": "live"})
    elif kind == "gpt":
        model = load_gpt(path, **gpt_overrides)
        if isinstance(model, RAR):
            raise ValueError(f"{source}: --kind gpt, but the file holds a RAR generator; use --kind rar or auto")
        save_pretrained(model, out, extra={"converted_from": provenance, "weights": "ema"})
    else:
        model = load_tokenizer(path, encoder_weights="random", config=config)
        enc = str(Path(encoder_weights).resolve()) if encoder_weights is not None else "pretrained"
        save_pretrained(model, out, extra={"converted_from": provenance, "weights": "ema", "encoder_weights": enc})
    return {"kind": kind, "out": str(out), **provenance}
