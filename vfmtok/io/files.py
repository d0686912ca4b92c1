"""Small, crash-safe file helpers shared by every job: atomic text/JSON writes and tolerant JSON reads.

An atomic write goes to a hidden temporary file in the same folder (same file system) and is moved onto the
target with `os.replace`, so a crash or kill leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; an existing file is replaced.

    Raises:
        OSError: the folder does not exist or is not writable.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | os.PathLike, doc: Any, indent: int = 2) -> Path:
    """Write `json.dumps(doc, indent=indent)` plus a newline to `path` atomically (see `write_text_atomic`).

    Raises:
        TypeError: `doc` is not JSON-serialisable. OSError: as `write_text_atomic`.
    """
    return write_text_atomic(path, json.dumps(doc, indent=indent) + "\n")


def read_json_dict(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object stored in `path`, or None when the file is missing, unreadable, not JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
