"""Demo dataset in ImageNet layout, built on demand from the real photos that pip packages install.

Nine photos (``shared/reference/offline_assets.md``), one class each, named by an ImageNet-1k WordNet id.
The ids are hand-picked stand-ins (the nearest ImageNet class, not a semantic claim where the photo has no
ImageNet class: the astronaut and the Hubble deep field):

=========  ================================  ===================================================
WordNet id  ImageNet lemma                    source photo
=========  ================================  ===================================================
n02123045  tabby, tabby cat                  ``skimage.data.chelsea()``
n02916936  bulletproof vest                  ``skimage.data.astronaut()`` (flight suit)
n03763968  military uniform                  matplotlib ``grace_hopper.jpg``
n03773504  missile                           ``skimage.data.rocket()``
n03785016  moped                             ``skimage.data.stereo_motorcycle()[0]`` (left view)
n03877845  palace                            scikit-learn ``china.jpg``
n04044716  radio telescope                   ``skimage.data.hubble_deep_field()``
n07920052  espresso                          ``skimage.data.coffee()``
n11939491  daisy                             scikit-learn ``flower.jpg``
=========  ================================  ===================================================

Each image is a random crop (area 25-100 % of the photo, aspect ratio 3/4..4/3, uniform position),
resized (BICUBIC) to a short side of ``size`` pixels and flipped horizontally with p = 0.5, saved as JPEG.
Crops are drawn from ``numpy.random.default_rng([seed, class, split])`` and never repeat within a class.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["DEMO_CLASSES", "DemoSettings", "load_demo_photos", "build_demo_data"]

DEMO_CLASSES: dict[str, tuple[str, str]] = {
    "n02123045": ("tabby, tabby cat", "skimage:chelsea"),
    "n02916936": ("bulletproof vest", "skimage:astronaut"),
    "n03763968": ("military uniform", "matplotlib:grace_hopper.jpg"),
    "n03773504": ("missile", "skimage:rocket"),
    "n03785016": ("moped", "skimage:stereo_motorcycle"),
    "n03877845": ("palace", "sklearn:china.jpg"),
    "n04044716": ("radio telescope", "skimage:hubble_deep_field"),
    "n07920052": ("espresso", "skimage:coffee"),
    "n11939491": ("daisy", "sklearn:flower.jpg"),
}
"""WordNet id -> (ImageNet lemma, source photo), in class-index (sorted) order."""

_MARKER = "demo_data.json"


@dataclass
class DemoSettings:
    """Demo-data parameters: images per class and split, short side in pixels, JPEG quality, seed."""

    train_per_class: int = 32
    val_per_class: int = 8
    size: int = 128
    quality: int = 90
    seed: int = 0


def _load_photo(source: str) -> Image.Image:
    package, name = source.split(":")
    if package == "skimage":
        import skimage.data

        arr = getattr(skimage.data, name)()
        arr = arr[0] if isinstance(arr, tuple) else arr
        return Image.fromarray(np.asarray(arr, dtype=np.uint8)).convert("RGB")
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(name)).convert("RGB")
    import matplotlib.cbook

    with Image.open(matplotlib.cbook.get_sample_data(name, asfileobj=False)) as image:
        return image.convert("RGB")


def load_demo_photos() -> dict[str, Image.Image]:
    """The nine source photos as RGB PIL images keyed by WordNet id.

    Raises:
        ImportError: scikit-image, scikit-learn or matplotlib missing (install the ``dev`` extra).
    """
    return {wnid: _load_photo(source) for wnid, (_, source) in DEMO_CLASSES.items()}


def _crop_params(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int, bool]:
    area = width * height * rng.uniform(0.25, 1.0)
    ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w = int(min(width, round(np.sqrt(area * ratio))))
    h = int(min(height, round(np.sqrt(area / ratio))))
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return x, y, w, h, bool(rng.random() < 0.5)


def _render(photo: Image.Image, params: tuple[int, int, int, int, bool], size: int) -> Image.Image:
    x, y, w, h, flip = params
    crop = photo.crop((x, y, x + w, y + h))
    scale = size / min(w, h)
    crop = crop.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample=Image.BICUBIC)
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if flip else crop


def build_demo_data(out: str | Path, settings: DemoSettings | None = None, overwrite: bool = False) -> dict:
    """Write ``out/train/<wnid>/<wnid>_<i:04d>.JPEG`` and ``out/val/<wnid>/ILSVRC2012_val_<k:08d>.JPEG``.

    Deterministic for given settings (same bytes on the same Pillow version). A folder already built with
    the same settings is left as is; one built with other settings is rebuilt.

    Args:
        out: output folder.
        settings: :class:`DemoSettings`.
        overwrite: allow writing into a non-empty folder that is not a demo folder.

    Returns:
        The ``demo_data.json`` record (settings, classes, counts).

    Raises:
        ValueError: bad settings, or ``out`` non-empty and not a demo folder (without ``overwrite``).
    """
    settings = settings or DemoSettings()
    if min(settings.train_per_class, settings.val_per_class) < 1 or settings.size < 8 or not 1 <= settings.quality <= 100:
        raise ValueError(f"need >= 1 image per class and split, size >= 8, quality 1..100; got {settings}")
    out = Path(out)
    record = {"settings": asdict(settings), "classes": {k: {"lemma": v[0], "photo": v[1]}
                                                        for k, v in DEMO_CLASSES.items()}}
    marker = out / _MARKER
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous.get("settings") == record["settings"] and previous.get("complete"):
            return previous
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} is not empty and is not a demo-data folder; choose another folder or --overwrite")
    for split in ("train", "val"):
        shutil.rmtree(out / split, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    photos = load_demo_photos()
    val_counter = 0
    counts = {}
    for class_id, (wnid, photo) in enumerate(photos.items()):
        seen: set = set()
        for split_id, (split, n) in enumerate((("train", settings.train_per_class), ("val", settings.val_per_class))):
            rng = np.random.default_rng([settings.seed, class_id, split_id])
            folder = out / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                params = _crop_params(rng, *photo.size)
                while params in seen:  # train and val crops never coincide
                    params = _crop_params(rng, *photo.size)
                seen.add(params)
                if split == "train":
                    name = f"{wnid}_{i:04d}.JPEG"
                else:
                    val_counter += 1
                    name = f"ILSVRC2012_val_{val_counter:08d}.JPEG"
                _render(photo, params, settings.size).save(folder / name, "JPEG", quality=settings.quality)
        counts[wnid] = {"train": settings.train_per_class, "val": settings.val_per_class}
    record.update({"counts": counts, "complete": True})
    marker.write_text(json.dumps(record, indent=1) + "\n")
    return record
