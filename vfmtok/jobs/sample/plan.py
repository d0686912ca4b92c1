"""Labels, work chunks and the grid layout of `vfmtok sample` (rules in the `vfmtok.jobs.sample.job` docstring).

Every name here is also importable from `vfmtok.jobs.sample.job`.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np

from vfmtok.data.class_names import describe_class

LABEL_MODES = ("random", "balanced")


# ---------------------------------------------------------------------------------------------
# Labels and the chunk plan
# ---------------------------------------------------------------------------------------------
def random_label(seed: int, index: int, num_classes: int) -> int:
    """Label of sample `index` under `--labels random`: floor(u * C), u = BLAKE2b-64("vfmtok-label:{seed}:{index}") / 2^64.

    Depends only on (seed, index, C); uniform over [0, C) up to a bias below C / 2^64.
    """
    digest = hashlib.blake2b(f"vfmtok-label:{seed}:{index}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") * num_classes) >> 64


def make_labels(num_samples: int, num_classes: int, classes: Sequence[int] | None = None, mode: str = "random",
                seed: int = 0, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Class label of every sample.

    Args:
        num_samples: N. num_classes: C of the GPT (ids must lie in [0, C)).
        classes: ids cycled in order (label_i = classes[i % len(classes)]); overrides `mode`.
        mode: "balanced" (label_i = i mod C, interleaved) or "random" (`random_label`).
        seed: global seed (random mode).
        class_names: the GPT's class ids in label order (its token store's classes), named in errors.

    Returns:
        (N,) int64 array.

    Raises:
        ValueError: a class id outside [0, C) (names it), an unknown mode.
    """
    if classes is not None:
        bad = [c for c in classes if not 0 <= int(c) < num_classes]
        if bad:
            known = ""
            if class_names:
                shown = ", ".join(describe_class(i, class_names) for i in range(min(num_classes, 10)))
                known = f"; its classes: {shown}{', ...' if num_classes > 10 else ''}"
            raise ValueError(f"--class {bad[0]} out of range: this GPT has {num_classes} classes, ids must be in "
                             f"[0, {num_classes}) (the null class {num_classes} is used only through CFG){known}")
        cyc = np.asarray([int(c) for c in classes], dtype=np.int64)
        return cyc[np.arange(num_samples) % len(cyc)]
    if mode == "balanced":
        return np.arange(num_samples, dtype=np.int64) % num_classes
    if mode == "random":
        return np.asarray([random_label(seed, i, num_classes) for i in range(num_samples)], dtype=np.int64)
    raise ValueError(f"--labels {mode!r}: expected one of {', '.join(LABEL_MODES)}")


def chunk_range(chunk: int, num_samples: int, decode_batch: int) -> range:
    """Global indices of chunk k: [k D, min((k+1) D, N))."""
    return range(chunk * decode_batch, min((chunk + 1) * decode_batch, num_samples))


def split_chunks(chunks: Sequence[int], world_size: int, rank: int) -> list[int]:
    """Contiguous share of `chunks` for `rank`: chunks[m r // W : m (r+1) // W], m = len(chunks) (may be empty)."""
    m = len(chunks)
    return list(chunks[m * rank // world_size : m * (rank + 1) // world_size])


def grid_rows(labels: np.ndarray, max_images: int = 64) -> list[list[int]]:
    """Indices shown in grid.png, as rows.

    With 2..16 distinct classes among the samples, one row per class (in order of first appearance) holding its
    first min(8, max_images // #classes) images; otherwise the first min(N, max_images) indices in rows of
    ceil(sqrt(k)) images.

    Returns:
        A list of rows, each a list of sample indices (rows may be shorter than the longest).
    """
    labels = np.asarray(labels)
    order = list(dict.fromkeys(int(c) for c in labels))
    if 1 < len(order) <= 16:
        per_row = min(8, max(1, max_images // len(order)))
        return [[int(i) for i in np.flatnonzero(labels == c)[:per_row]] for c in order]
    k = min(len(labels), max_images)
    cols = max(1, math.ceil(math.sqrt(k)))
    return [list(range(s, min(s + cols, k))) for s in range(0, k, cols)]
