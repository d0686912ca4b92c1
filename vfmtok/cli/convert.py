"""`vfmtok convert SOURCE OUT`: the authors' `.pt` (GPT or tokenizer) or RAR `.safetensors` -> our run folder."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vfmtok.cli.common import fail


def command(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="The authors' GPT-*.pt, vfmtok-tokenizer.pt or RAR "
                                               "model.safetensors / vfmtok-rar-*.safetensors: a local file, "
                                               "hf://OWNER/REPO/PATH[@REV] or authors/NAME (e.g. authors/GPT-B, "
                                               "authors/RAR-L).")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output run folder (model.safetensors or tokenizer.safetensors, "
                                             "config.json, README.md).")],
    kind: Annotated[str, typer.Option("--kind", help="auto (a .safetensors: RAR by its keys; a .pt: from the file "
                                                     "name, else its keys), gpt, rar or tokenizer.")] = "auto",
    config: Annotated[Optional[str], typer.Option(
        "--config", help="Tokenizer preset when the file is not the paper's vfmtok-l shape.")] = None,
    encoder_weights: Annotated[Optional[str], typer.Option(
        "--encoder-weights", help="Tokenizer: the frozen-encoder file the run should record (default: "
                                  "'pretrained', the config's timm weights).")] = None,
    n_head: Annotated[Optional[int], typer.Option(
        "--n-head", help="GPT: head count when it cannot be inferred from the shapes and the file name.")] = None,
) -> None:
    """Convert one of the authors' released checkpoints into our run layout.

    The EMA weights (a RAR file: its plain state dict) are loaded strictly (every key used, shapes equal),
    written as safetensors with config.json
    (which records the source file and its sha256) and a model card; the result loads with --ckpt/--tokenizer,
    vfmtok.load_gpt/load_tokenizer/from_pretrained, and can be pushed with `vfmtok push`. See docs/hub.md.
    """
    from vfmtok.jobs.convert import convert_official

    try:
        result = convert_official(source, out, kind=kind, config=config, encoder_weights=encoder_weights,
                                  **({"n_head": n_head} if n_head is not None else {}))
    except (FileNotFoundError, ValueError, KeyError) as err:
        fail(f"convert: {err}")
    typer.echo(f"converted {result['kind']} {source} (sha256 {result['sha256'][:16]}...) -> {out}")
