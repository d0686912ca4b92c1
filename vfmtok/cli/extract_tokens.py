"""`vfmtok extract-tokens DATA OUT --tokenizer RUN`: thin CLI over :func:`vfmtok.jobs.extract.extract_tokens`."""
from __future__ import annotations

import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vfmtok.cli.common import (DEFAULT_NUM_WORKERS, DeviceOpt, MixedPrecision, NumWorkersOpt, ProgressOpt, clamp_workers,
                               fail, precision_option)

PrecisionOpt = precision_option(
    "Applies to the tokenizer's encoder; deformable attention, the pre-quantization projection and the codebook "
    "distances stay fp32; CPU runs fp32. docs/precision.md")


class Aug(str, Enum):
    none = "none"
    flip = "flip"
    ten_crop = "ten-crop"


class Split(str, Enum):
    train = "train"
    val = "val"


def _tokenizer_info(path: Path, encoder_weights: Optional[Path]) -> dict:
    """Provenance of the tokenizer file(s): absolute path and sha256 of the weights file."""
    from vfmtok.io.hashing import sha256_file

    weights = path / "tokenizer.safetensors" if path.is_dir() else path
    info = {"path": str(path.resolve()), "file": str(weights.resolve()), "file_sha256": sha256_file(weights)}
    if encoder_weights is not None:
        info["encoder_weights"] = str(encoder_weights.resolve())
    return info


def command(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Prepared data (vfmtok prepare-data output) or a folder of images "
                                              "(class folders, or an ImageNet root with --split).")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Token store directory (created; an unfinished store with the same "
                                             "settings is resumed).")],
    tokenizer: Annotated[Optional[Path], typer.Option(
        "--tokenizer", help="Tokenizer: a train-tokenizer run directory, a .safetensors file (config.json beside "
                            "it), the authors' vfmtok-tokenizer.pt, or a Hub reference (hf://OWNER/REPO[/PATH][@REV], "
                            "authors/tokenizer). Default: the newest tokenizer run under ./runs (printed).")] = None,
    aug: Annotated[Aug, typer.Option(
        "--aug", metavar="MODE", help="Views per image: none (ADM centre crop), flip (+ its mirror: 2), ten-crop "
                                      "(LlamaGen: 5 crops of a 1.1x centre crop + their mirrors: 10).")] = Aug.none,
    neighbours: Annotated[int, typer.Option(
        "--neighbours", min=1, max=2,
        help="1: nearest code; 2: also store the second-nearest code sequence of every view "
             "(VFMTok-RAR augmentation; doubles the augmentations A).")] = 1,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="Images per encoder step (the model sees batch-size x views crops). Keep it "
                                    "fixed when resuming for bit-identical results.")] = 64,
    num_workers: NumWorkersOpt = DEFAULT_NUM_WORKERS,
    split: Annotated[Split, typer.Option("--split", help="Split of an ImageNet root given as DATA.")] = Split.train,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a store in OUT made with another tokenizer or other settings.")] = False,
    encoder_weights: Annotated[Optional[Path], typer.Option(
        "--encoder-weights", help="Frozen encoder weights file (e.g. dinov2_vitl14_reg4_pretrain.pth) when the "
                                  "tokenizer run does not find its own.")] = None,
    progress: ProgressOpt = True,
    device: DeviceOpt = "auto",
    mixed_precision: PrecisionOpt = MixedPrecision.bf16,
) -> None:
    """Encode every image of DATA once into a token store: OUT/codes.npy (N x A x L uint16), labels.npy, manifest.json.

    Crops at the tokenizer's input size S: ADM centre crop; --aug flip adds its mirror, --aug ten-crop
    stores LlamaGen's ten crops. --neighbours 2 also stores the second-nearest codes (A = 2 x views).
    Under `torchrun --nproc_per_node G vfmtok extract-tokens ...` every rank encodes a disjoint contiguous
    block; the result is the same store a single process writes. A killed run resumes where it stopped
    when started again with the same command; a store made with other settings is refused unless
    --overwrite. The store feeds `vfmtok train-ar --tokens OUT`. Extraction is deterministic.
    See docs/token_store.md.
    """
    if not data.is_dir():
        fail(f"DATA {data}: not a folder (expected prepared data or a folder of images)")
    if tokenizer is None:
        from vfmtok.io.runs import find_latest_run
        from vfmtok.models.tokenizer_io import FORMAT as TOKENIZER_FORMAT

        tokenizer = find_latest_run("runs", "tokenizer.safetensors", TOKENIZER_FORMAT)
        if tokenizer is None:
            fail("no --tokenizer given and no tokenizer run under ./runs: train one first (`vfmtok train-tokenizer "
                 f"{data}` writes runs/tokenizer-tiny), or pass the authors' tokenizer: --tokenizer authors/tokenizer "
                 "(Hugging Face Hub) or a downloaded vfmtok-tokenizer.pt (docs/reproduce.md)")
        typer.echo(f"tokenizer: {tokenizer} (newest tokenizer run under ./runs; --tokenizer to choose)")

    from vfmtok.io.hub import resolve_path

    try:  # Hub references (hf://..., authors/NAME) -> files in the Hugging Face cache
        tokenizer = resolve_path(tokenizer)
        encoder_weights = None if encoder_weights is None else resolve_path(encoder_weights)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    if not tokenizer.exists():
        fail(f"--tokenizer {tokenizer}: not found (a run directory, .safetensors file, or vfmtok-tokenizer.pt)")
    if encoder_weights is not None and not encoder_weights.is_file():
        fail(f"--encoder-weights {encoder_weights}: file not found")
    from vfmtok.data.sources import open_image_source
    from vfmtok.jobs.extract import ExtractOptions, StoreMismatchError, extract_tokens

    try:
        source = open_image_source(data, split=split.value)
    except (FileNotFoundError, ValueError) as err:
        fail(f"DATA {data}: {err}")
    if len(source) == 0:
        fail(f"DATA {data}: no images found")

    import vfmtok

    try:
        tok = vfmtok.load_tokenizer(tokenizer, encoder_weights=encoder_weights)
        info = _tokenizer_info(tokenizer, encoder_weights)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        fail(f"--tokenizer {tokenizer}: {err}")
    options = ExtractOptions(
        aug=aug.value, neighbours=neighbours, batch_size=batch_size, num_workers=clamp_workers(num_workers), device=device,
        mixed_precision=mixed_precision.value, overwrite=overwrite, progress=progress,
    )
    try:
        manifest = extract_tokens(source, out, tok, options=options, tokenizer_info=info,
                                  command=shlex.join(["vfmtok", *sys.argv[1:]]))
    except StoreMismatchError as err:
        fail(str(err))
    except ValueError as err:
        fail(f"extract-tokens: {err}")
    if manifest is not None:
        typer.echo(
            f"{out}: {manifest['num_images']} images x {manifest['num_augmentations']} augmentations x "
            f"{manifest['num_tokens']} tokens ({manifest['dtype']}), {manifest['num_classes']} classes"
        )
