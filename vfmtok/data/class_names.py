"""Human-readable class names: a dataset's class ids (WordNet ids for ImageNet) and, where known, their names.

ImageNet names are the first WordNet lemma of each synset, read from the table that the installed `timm` package
ships (`timm/data/_info/imagenet_synset_to_lemma.txt`), located without importing timm. Other class names (e.g.
folder names of an own dataset) are shown as they are.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Sequence


@functools.lru_cache(maxsize=1)
def _imagenet_lemmas() -> dict[str, str]:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    table = Path(list(spec.submodule_search_locations)[0]) / "data" / "_info" / "imagenet_synset_to_lemma.txt"
    if not table.is_file():
        return {}
    lemmas = {}
    for line in table.read_text().splitlines():
        wnid, _, names = line.partition("\t")
        if names:
            lemmas[wnid] = names.split(",")[0].strip()
    return lemmas


def imagenet_name(wnid: str) -> str | None:
    """The first WordNet lemma of ImageNet synset `wnid` (e.g. "n01440764" -> "tench"), or None when unknown."""
    return _imagenet_lemmas().get(wnid)


def describe_class(index: int, classes: Sequence[str] | None = None) -> str:
    """`index`, its class id and its name when known: "0 (n01440764 tench)", "3 (cup)", or "3".

    Args:
        index: class index (label). classes: class ids in label order (a dataset's classes.json), or None.
    """
    if classes is None or not 0 <= index < len(classes):
        return str(index)
    wnid = str(classes[index])
    name = imagenet_name(wnid)
    return f"{index} ({wnid} {name})" if name and name != wnid else f"{index} ({wnid})"


def class_label(index: int, classes: Sequence[str] | None = None) -> str:
    """A short label for grids: the ImageNet name, else the class id, else the index ("tench", "n0999", "3")."""
    if classes is None or not 0 <= index < len(classes):
        return str(index)
    wnid = str(classes[index])
    return imagenet_name(wnid) or wnid
