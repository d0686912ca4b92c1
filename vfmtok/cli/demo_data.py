"""`vfmtok demo-data OUT`: thin CLI over :func:`vfmtok.data.demo.build_demo_data`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vfmtok.cli.common import fail


def command(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder; receives train/<wnid>/*.JPEG and val/<wnid>/*.JPEG.")],
    train_per_class: Annotated[int, typer.Option("--train-per-class", help="Train images per class.")] = 32,
    val_per_class: Annotated[int, typer.Option("--val-per-class", help="Val images per class.")] = 8,
    size: Annotated[int, typer.Option("--size", help="Short side of every image in pixels.")] = 128,
    quality: Annotated[int, typer.Option("--quality", help="JPEG quality.")] = 90,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random crops and flips.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Allow a non-empty folder that is not a demo folder.")] = False,
) -> None:
    """Build a small ImageNet-layout dataset from real photos installed by scikit-image, scikit-learn, matplotlib.

    Nine classes (one per photo, named by an ImageNet WordNet id, e.g. n02123045 tabby = skimage's
    chelsea), made of distinct random crops (25-100 % of the area) and horizontal flips, saved as JPEG.
    Deterministic for a seed; a folder already built with the same options is left as is.
    The class/photo table is in docs/data.md and OUT/demo_data.json.
    """
    from vfmtok.data.demo import DemoSettings, build_demo_data

    try:
        record = build_demo_data(out, DemoSettings(train_per_class, val_per_class, size, quality, seed), overwrite)
    except (ValueError, ImportError) as exc:
        fail(str(exc))
    n_classes = len(record["classes"])
    typer.echo(f"demo data: {n_classes} classes x ({train_per_class} train + {val_per_class} val) JPEGs, "
               f"short side {size} px -> {out}")
