"""Dataset layouts (class folders, ImageNet root, flat ImageNet val + label file) and the class index.

Layouts accepted by :func:`discover` (see ``docs/data.md``):

* **class folders** (any torchvision ``ImageFolder``, ImageNet train ``train/<wnid>/*.JPEG``, ImageNet val
  sorted into ``val/<wnid>/``): every sub-folder of the root is a class; files are found recursively.
* **ImageNet root**: ``SRC`` holds ``train/`` and/or ``val/``; ``split`` picks ``SRC/<split>``. A ``SRC``
  without those folders is itself the split root.
* **flat val + Kaggle** ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first token of the
  prediction string is the WordNet id).
* **flat val + devkit** ``ILSVRC2012_validation_ground_truth.txt`` (line k = 1-based ILSVRC2012_ID of
  ``ILSVRC2012_val_<k:08d>.JPEG``), plus the devkit ``meta.mat`` (``synsets`` struct: ``ILSVRC2012_ID``,
  ``WNID``) or a text synset list whose line i is the WordNet id of ILSVRC2012_ID i. The ILSVRC2012_ID
  order is **not** the sorted-WordNet-id order, so Kaggle's ``LOC_synset_mapping.txt`` (sorted) is wrong here.

Class index = sorted class names (for ImageNet, sorted WordNet ids: the standard 0..999 order; for any
ImageFolder, the same order as ``torchvision.datasets.ImageFolder``). Source order = sorted by
(class, relative path) for class folders, by file name for flat folders.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vfmtok.data.decode import IMAGE_EXTENSIONS

__all__ = ["LayoutError", "SourceItem", "SourceList", "discover", "resolve_split_root", "load_classes",
           "write_classes", "read_loc_val_solution", "read_devkit_ground_truth", "read_synsets",
           "LABEL_FILE_NAMES"]

LABEL_FILE_NAMES = ("LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt")
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})$")


class LayoutError(ValueError):
    """The source folder or a label/class file does not fit any supported layout (message says why)."""


@dataclass
class SourceItem:
    """One file of the source, in source-index order.

    Attributes:
        path: absolute path.
        relpath: POSIX path relative to the split root (recorded in shards and ``rejected.jsonl``).
        wnid: class name (WordNet id for ImageNet); None when the file has no label.
        reject: reason the file is skipped before decoding (non-image extension, no label), else None.
    """

    path: Path
    relpath: str
    wnid: str | None
    reject: str | None = None


@dataclass
class SourceList:
    """Result of :func:`discover`: the files, the class list and how they were found."""

    root: Path
    layout: str
    items: list[SourceItem]
    classes: list[str]
    labels_file: Path | None = None
    synsets_file: Path | None = None
    extra: dict = field(default_factory=dict)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _is_candidate(name: str) -> str | None:
    ext = os.path.splitext(name)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return None
    return f"extension {ext or '(none)'!r} is not an image extension"


def resolve_split_root(src: str | os.PathLike, split: str) -> tuple[Path, bool]:
    """Pick the folder holding the images of ``split``.

    Args:
        src: a class-folder dataset, or an ImageNet root with ``train/`` and/or ``val/``.
        split: ``"train"`` or ``"val"``.

    Returns:
        ``(split_root, is_imagenet_root)``.

    Raises:
        LayoutError: ``src`` is not a folder, or it is an ImageNet root without ``<split>/``.
    """
    src = Path(src)
    if not src.is_dir():
        raise LayoutError(f"source folder not found: {src}")
    if split not in ("train", "val"):
        raise LayoutError(f"--split must be 'train' or 'val', got {split!r}")
    has = {name: (src / name).is_dir() for name in ("train", "val")}
    if any(has.values()):
        if not has[split]:
            raise LayoutError(f"{src} looks like an ImageNet root (has {[k for k, v in has.items() if v]}) "
                              f"but has no {split}/ folder")
        return src / split, True
    return src, False


def load_classes(path: str | os.PathLike) -> list[str]:
    """Read a class index: our ``classes.json`` (``{"classes": [...]}``), a JSON list, or ``{name: index}``.

    Returns:
        Class names in index order.

    Raises:
        LayoutError: missing file, bad JSON, duplicates, or a ``{name: index}`` map that is not 0..N-1.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LayoutError(f"classes file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise LayoutError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and "classes" in data:
        classes = data["classes"]
    elif isinstance(data, list):
        classes = data
    elif isinstance(data, dict) and all(isinstance(v, int) for v in data.values()):
        if sorted(data.values()) != list(range(len(data))):
            raise LayoutError(f"{path}: class indices must be 0..{len(data) - 1}")
        classes = sorted(data, key=data.__getitem__)
    else:
        raise LayoutError(f"{path}: expected {{'classes': [...]}}, a list, or {{name: index}}")
    if not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
        raise LayoutError(f"{path}: class names must be unique strings")
    return list(classes)


def write_classes(path: str | os.PathLike, classes: list[str]) -> None:
    """Write ``classes.json``: ``{"format_version": 1, "num_classes": N, "classes": [name_0, ...]}``."""
    Path(path).write_text(json.dumps({"format_version": 1, "num_classes": len(classes), "classes": classes},
                                     indent=1) + "\n")


def read_loc_val_solution(path: str | os.PathLike) -> dict[str, str]:
    """Kaggle ``LOC_val_solution.csv`` -> ``{image_id (file stem): wnid}``.

    Raises:
        LayoutError: missing columns or an empty prediction string.
    """
    path = Path(path)
    labels: dict[str, str] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise LayoutError(f"{path}: expected columns ImageId,PredictionString, got {reader.fieldnames}")
        for row in reader:
            tokens = (row["PredictionString"] or "").split()
            if not tokens:
                raise LayoutError(f"{path}: empty PredictionString for {row['ImageId']}")
            labels[row["ImageId"]] = tokens[0]
    return labels


def read_synsets(path: str | os.PathLike) -> dict[int, str]:
    """ILSVRC2012_ID -> WordNet id, from the devkit ``meta.mat`` or a text list (line i = id i, first token).

    Raises:
        LayoutError: unreadable file or missing ``synsets`` fields.
    """
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"devkit synset file not found: {path} (pass the devkit's data/meta.mat)")
    if path.suffix.lower() == ".mat":
        from scipy.io import loadmat

        try:
            synsets = loadmat(path, squeeze_me=True)["synsets"]
            ids, wnids = synsets["ILSVRC2012_ID"], synsets["WNID"]
        except (KeyError, ValueError, TypeError) as exc:
            raise LayoutError(f"{path}: expected a 'synsets' struct with ILSVRC2012_ID and WNID ({exc})") from None
        return {int(i): str(w) for i, w in zip(ids.ravel(), wnids.ravel())}
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return {i + 1: tokens[0] for i, tokens in enumerate(lines)}


def read_devkit_ground_truth(path: str | os.PathLike, synsets: dict[int, str]) -> dict[str, str]:
    """Devkit ``ILSVRC2012_validation_ground_truth.txt`` -> ``{"ILSVRC2012_val_<k:08d>": wnid}``.

    Raises:
        LayoutError: a line that is not an integer id known to ``synsets``.
    """
    path = Path(path)
    labels = {}
    for k, line in enumerate(path.read_text().split(), start=1):
        try:
            labels[f"ILSVRC2012_val_{k:08d}"] = synsets[int(line)]
        except (ValueError, KeyError):
            raise LayoutError(f"{path}: line {k}: {line!r} is not an ILSVRC2012_ID of the synset file") from None
    return labels


def _find_label_file(root: Path, src: Path) -> Path | None:
    folders = [root, *list(root.parents)[:4]]
    if src not in folders:
        folders.append(src)
    for folder in folders:
        for sub in (Path("."), Path("ILSVRC2012_devkit_t12") / "data"):
            for name in LABEL_FILE_NAMES:
                if (folder / sub / name).is_file():
                    return folder / sub / name
    return None


def _walk_files(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        found.extend(Path(dirpath) / f for f in filenames if _visible(f))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _val_classes_from_train(train_root: Path, val_classes: list[str]) -> list[str]:
    """The class index of an ImageNet root's val split: its train/ class folders, so label k names the same class.

    Raises:
        LayoutError: val holds classes that train/ lacks (names them).
    """
    train_classes = sorted(e for e in os.listdir(train_root) if _visible(e) and (train_root / e).is_dir())
    if not train_classes:
        return val_classes
    extra = sorted(set(val_classes) - set(train_classes))
    if extra:
        raise LayoutError(f"val holds {len(extra)} class(es) that {train_root} does not: {extra[:10]}"
                          f"{' ...' if len(extra) > 10 else ''}; pass the class index to use with --classes FILE")
    return train_classes


def discover(src: str | os.PathLike, split: str = "train", classes: list[str] | None = None,
             labels_file: str | os.PathLike | None = None,
             synsets_file: str | os.PathLike | None = None) -> SourceList:
    """List the files of a dataset in source-index order with their classes.

    Args:
        src: class-folder dataset or ImageNet root (module docstring).
        split: ``"train"`` or ``"val"`` (chooses the sub-folder of an ImageNet root).
        classes: a fixed class index (e.g. the train ``classes.json``); files of other classes are refused.
            Default: the sorted class names found; for the val split of an ImageNet root with a ``train/``
            folder, train's class folders (so val labels never renumber when val lacks some classes).
        labels_file: ``LOC_val_solution.csv`` or ``ILSVRC2012_validation_ground_truth.txt`` for a flat folder
            (default: searched in the split root, its 4 parents and their ``ILSVRC2012_devkit_t12/data``).
        synsets_file: devkit ``meta.mat`` or synset list for the ground-truth file (default: ``meta.mat`` beside it).

    Returns:
        :class:`SourceList`. Hidden files/folders (``.*``) are ignored; files with non-image extensions,
        loose files beside class folders and flat files without a label are kept with a ``reject`` reason.

    Raises:
        LayoutError: no files, a flat folder without a label file, classes outside ``classes``, or (val of an
            ImageNet root) classes that its ``train/`` folder lacks.
    """
    src = Path(src).resolve()
    root, is_imagenet_root = resolve_split_root(src, split)
    entries = sorted(e for e in os.listdir(root) if _visible(e))
    subdirs = [e for e in entries if (root / e).is_dir()]
    items: list[SourceItem] = []
    labels_path = synsets_path = None
    if subdirs:
        layout = "class-folders"
        found_classes = subdirs
        for name in entries:
            if name not in subdirs:
                items.append(SourceItem(root / name, name, None, "file outside a class folder"))
        for wnid in subdirs:
            for path in _walk_files(root / wnid):
                rel = path.relative_to(root).as_posix()
                items.append(SourceItem(path, rel, wnid, _is_candidate(path.name)))
        items.sort(key=lambda it: (it.wnid is not None, it.wnid or "", it.relpath))
    else:
        labels_path = Path(labels_file) if labels_file else _find_label_file(root, src)
        if labels_path is None:
            raise LayoutError(f"{root} holds no class folders: put the images in one sub-folder per class "
                              f"({root}/<class>/*.jpg; a single sub-folder for unlabelled images), or, for a flat "
                              f"ImageNet val folder, provide {' or '.join(LABEL_FILE_NAMES)} (--val-labels FILE)")
        if not labels_path.is_file():
            raise LayoutError(f"labels file not found: {labels_path}")
        if labels_path.suffix.lower() == ".csv":
            layout, labels = "flat+LOC_val_solution.csv", read_loc_val_solution(labels_path)
        else:
            synsets_path = Path(synsets_file) if synsets_file else labels_path.parent / "meta.mat"
            if not synsets_path.is_file():
                raise LayoutError(f"{labels_path} holds ILSVRC2012_IDs; mapping them to WordNet ids needs the devkit "
                                  f"meta.mat (looked for {synsets_path}; pass --devkit-meta FILE)")
            layout = "flat+devkit-ground-truth"
            labels = read_devkit_ground_truth(labels_path, read_synsets(synsets_path))
        found_classes = sorted(set(labels.values()))
        for name in entries:
            stem = os.path.splitext(name)[0]
            reject = _is_candidate(name)
            wnid = labels.get(stem)
            if wnid is None and reject is None:
                reject = f"no label for {stem!r} in {labels_path.name}"
            items.append(SourceItem(root / name, name, wnid, reject))
    if not items:
        raise LayoutError(f"no files found under {root}")
    if classes is not None:
        unknown = sorted({it.wnid for it in items if it.wnid is not None and it.reject is None} - set(classes))
        if unknown:
            raise LayoutError(f"{len(unknown)} class(es) of {root} are not in the given class index: "
                              f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
        final_classes = list(classes)
    else:
        final_classes = sorted(found_classes)
        if split == "val" and is_imagenet_root and (src / "train").is_dir():
            final_classes = _val_classes_from_train(src / "train", final_classes)
    return SourceList(root=root, layout=layout, items=items, classes=final_classes, labels_file=labels_path,
                      synsets_file=synsets_path)
