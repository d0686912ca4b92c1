"""File fingerprints recorded in every manifest (tokenizer, GPT, token store, reference batches)."""
from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 16 << 20) -> str:
    """Hex sha256 digest of a file's bytes, read in 16 MiB chunks (constant memory).

    Raises:
        FileNotFoundError / OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
