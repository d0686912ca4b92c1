"""Finding run directories: the newest training run of a kind under a folder (default `./runs`).

A run is a folder holding a weights file (`model.safetensors` for a GPT, `tokenizer.safetensors` for a tokenizer)
and a `config.json` whose `format` names the kind. Commands that take a checkpoint fall back to the newest run, so
`vfmtok sample` and `vfmtok extract-tokens` work as typed right after training.
"""
from __future__ import annotations

from pathlib import Path

from vfmtok.io.files import read_json_dict


def find_latest_run(root: str | Path, weights_file: str, fmt: str | tuple[str, ...], max_depth: int = 3) -> Path | None:
    """The run under `root` whose `weights_file` is newest (mtime; ties broken by path), or None.

    Args:
        root: folder to search (missing: None). weights_file: e.g. "model.safetensors". fmt: the `format` its
            config.json must carry (or a tuple of accepted formats). max_depth: how many folder levels below `root` to look (folders named
            `checkpoints` are skipped).

    Returns:
        The run directory, or None when there is none.
    """
    root = Path(root)
    found: list[tuple[float, str, Path]] = []
    for depth in range(1, max_depth + 1):
        for weights in root.glob("/".join(["*"] * depth) + "/" + weights_file):
            run = weights.parent
            if "checkpoints" in run.relative_to(root).parts:
                continue
            cfg = read_json_dict(run / "config.json")
            if cfg is not None and cfg.get("format") in ((fmt,) if isinstance(fmt, str) else fmt):
                found.append((weights.stat().st_mtime, str(run), run))
    return max(found)[2] if found else None
