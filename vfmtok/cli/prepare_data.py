"""`vfmtok prepare-data SRC OUT`: thin CLI over :func:`vfmtok.jobs.prepare.prepare_dataset`."""
from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vfmtok.cli.common import DEFAULT_NUM_WORKERS, NumWorkersOpt, ProgressOpt, clamp_workers, fail


class Split(str, Enum):
    train = "train"
    val = "val"


class StoreFormat(str, Enum):
    auto = "auto"
    jpeg = "jpeg"
    png = "png"


def _set_total(bar):
    def set_total(total: int) -> None:
        bar.total = total
        bar.refresh()

    return set_total


def command(
    src: Annotated[Path, typer.Argument(metavar="SRC", help="Folder of class folders (any ImageFolder), or an ImageNet root "
                                             "holding train/ and val/.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder (created; a compatible unfinished run is resumed).")],
    split: Annotated[Split, typer.Option("--split", help="Split to prepare from an ImageNet root.")] = Split.train,
    classes: Annotated[Optional[Path], typer.Option(
        "--classes", help="Existing classes.json (the train split's): use its class index, refuse other classes.")] = None,
    val_labels: Annotated[Optional[Path], typer.Option(
        "--val-labels", help="Labels of a flat val folder: Kaggle LOC_val_solution.csv or devkit "
                             "ILSVRC2012_validation_ground_truth.txt (default: searched beside the folder).")] = None,
    devkit_meta: Annotated[Optional[Path], typer.Option(
        "--devkit-meta", help="Devkit data/meta.mat (or a text list, line i = WordNet id of ILSVRC2012_ID i) "
                              "mapping the ground-truth ids; default: meta.mat beside the ground-truth file.")] = None,
    min_size: Annotated[int, typer.Option(
        "--min-size", help="Stored short side: BOX-halve images while their short side >= 2x this (ADM pre-shrink; "
                           "420 keeps the 336 px ADM random crop exact); never upscale. 0 = keep original size.")] = 420,
    store_format: Annotated[StoreFormat, typer.Option(
        "--store-format", help="Re-encoding of changed images: auto (JPEG for JPEG sources, PNG otherwise; "
                               "unchanged JPEG/PNG files are copied verbatim), jpeg or png.")] = StoreFormat.auto,
    jpeg_quality: Annotated[int, typer.Option("--jpeg-quality", help="Quality of re-encoded JPEGs (4:4:4).")] = 95,
    shard_size: Annotated[int, typer.Option("--shard-size", help="Source files per tar shard.")] = 1000,
    num_workers: NumWorkersOpt = DEFAULT_NUM_WORKERS,
    workers: Annotated[Optional[int], typer.Option("--workers", hidden=True, help="Old name of --num-workers.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an OUT prepared with other settings (only prepare-data's own files).")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit non-zero if any file was rejected (the dataset is still written).")] = False,
    npz: Annotated[Optional[Path], typer.Option(
        "--npz", help="Also write an ADM-format batch: arr_0 uint8 N x S x S x 3 ADM centre crops, arr_1 int64.")] = None,
    npz_size: Annotated[int, typer.Option("--npz-size", help="Crop size S of the --npz batch.")] = 256,
    npz_count: Annotated[Optional[int], typer.Option(
        "--npz-count", help="Number of images in the --npz batch (default: all accepted images).")] = None,
    shuffle_seed: Annotated[Optional[int], typer.Option(
        "--shuffle-seed", help="Shuffle the --npz batch with this seed (IS splits need mixed classes); "
                               "default: source order.")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Prepare images into resumable tar shards + manifest.json, classes.json, rejected.jsonl (+ ADM npz).

    Layouts: SRC/<class>/** (ImageNet train or val in class folders, any ImageFolder); an ImageNet root
    with train/ and val/ (--split); a flat val folder with LOC_val_solution.csv or the devkit ground
    truth (+ meta.mat). Class index = sorted class names (WordNet ids), or --classes FILE.

    Every image is decoded to 8-bit sRGB (EXIF rotation, ICC profiles, CMYK, palette, 16-bit scaled,
    alpha composited on white). Undecodable files go to rejected.jsonl with the reason and are skipped.
    A killed run restarted with the same command finishes with identical output (whatever
    --num-workers). Runs on CPU, deterministically. See docs/data.md.
    """
    from vfmtok.data.layouts import LayoutError
    from vfmtok.jobs.prepare import NpzRequest, PrepareError, PrepareSettings, prepare_dataset

    if npz is None and (npz_count is not None or shuffle_seed is not None):
        fail("--npz-count/--shuffle-seed need --npz FILE")
    if npz is not None and (npz_size < 1 or (npz_count is not None and npz_count < 1)):
        fail(f"--npz-size and --npz-count must be >= 1, got {npz_size}, {npz_count}")
    if npz is not None and not npz.parent.is_dir():
        npz.parent.mkdir(parents=True, exist_ok=True)
    workers = max(1, clamp_workers(workers if workers is not None else num_workers))
    settings = PrepareSettings(split=split.value, min_size=min_size, store_format=store_format.value,
                               jpeg_quality=jpeg_quality, shard_size=shard_size)
    request = NpzRequest(npz, npz_size, npz_count, shuffle_seed) if npz is not None else None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"prepare-data {split.value}", unit="img", dynamic_ncols=True)
    try:
        result = prepare_dataset(src, out, settings, classes_file=classes, labels_file=val_labels,
                                 synsets_file=devkit_meta, npz=request, workers=workers, overwrite=overwrite,
                                 command_line=["vfmtok", *sys.argv[1:]], progress=bar.update if bar is not None else None,
                                 progress_total=_set_total(bar) if bar is not None else None)
    except (PrepareError, LayoutError, FileNotFoundError) as exc:
        fail(str(exc))
    finally:
        if bar is not None:
            bar.close()
    typer.echo(f"prepared {result.num_images} images in {len(result.counts_per_class)} classes -> {result.out}"
               f" ({result.num_rejected} rejected, see rejected.jsonl"
               f"{f'; reused {result.resumed_shards} shard(s) finished earlier' if result.resumed_shards else ''})")
    if result.npz_path is not None:
        typer.echo(f"ADM batch -> {result.npz_path}")
    if strict and result.num_rejected:
        first = result.rejected[0]
        fail(f"--strict: {result.num_rejected} file(s) rejected, e.g. {first['path']}: {first['reason']}", code=1)
