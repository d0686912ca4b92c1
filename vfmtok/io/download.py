"""Resumable downloads from plain URLs (the Inception weights, the ADM reference batch, the DINOv2 file).

`download_url` writes to `DEST.part`, resuming an existing `.part` with an HTTP Range request (a server that
ignores it restarts from zero), shows a tqdm progress bar, checks the size the server announced and, when known,
the sha256 (or a sha256 prefix, as the torch-hub file names carry), then renames onto DEST. A wrong file is
deleted and never used. Only the standard library's urllib is used (no extra dependency).
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path


class DownloadError(OSError):
    """A download failed or produced a wrong file (the message names the URL and the destination)."""


def download_url(url: str, dest: str | os.PathLike, sha256: str | None = None, progress: bool = True,
                 timeout: float = 60.0, chunk_bytes: int = 1 << 20) -> Path:
    """Download `url` to `dest` (resumable; see the module docstring).

    Args:
        url: http(s) URL. dest: final file path (its folder is created). sha256: full hex digest or a prefix of
            it (e.g. "6726825d"); None = no hash check. progress: tqdm bar. timeout: seconds per socket operation.

    Returns:
        `dest` as a Path (an existing `dest` is returned without a download).

    Raises:
        DownloadError: network/HTTP failure (the partial `.part` file is kept for the next attempt), a size
            mismatch, or a sha256 mismatch (the file is deleted).
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # the .part is already complete
            response = None
        else:
            raise DownloadError(f"{url}: HTTP {err.code} {err.reason} (destination {dest})") from err
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"{url}: cannot connect ({err}); destination {dest}") from err
    if response is not None:
        from tqdm import tqdm

        with response:
            if start and response.status != 206:
                start = 0  # the server ignored the Range header: start again
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=dest.name, disable=not progress)
            try:
                with open(part, "ab" if start else "wb") as fh:
                    while block := response.read(chunk_bytes):
                        fh.write(block)
                        bar.update(len(block))
            except (OSError, ValueError) as err:  # http.client.IncompleteRead is an HTTPException
                raise DownloadError(f"{url}: connection lost after {part.stat().st_size} bytes ({err}); run again "
                                    f"to resume from {part}") from err
            except Exception as err:
                raise DownloadError(f"{url}: connection lost after {part.stat().st_size} bytes "
                                    f"({type(err).__name__}); run again to resume from {part}") from err
            finally:
                bar.close()
        size = part.stat().st_size
        if total is not None and size < total:  # the connection ended early: keep the part for a resume
            raise DownloadError(f"{url}: connection lost after {size} of {total} bytes; run again to resume from {part}")
        if total is not None and size > total:
            part.unlink()
            raise DownloadError(f"{url}: got {size} bytes, the server announced {total}; the file was deleted")
    if sha256:
        from vfmtok.io.hashing import sha256_file

        actual = sha256_file(part)
        if not actual.startswith(sha256.lower()):
            part.unlink()
            raise DownloadError(f"{url}: sha256 {actual} does not match the published {sha256}; the file was deleted")
    os.replace(part, dest)
    return dest


def sha256_matches(path: str | os.PathLike, sha256: str | None) -> bool:
    """True when `sha256` is None or the file's sha256 starts with it."""
    if not sha256:
        return True
    from vfmtok.io.hashing import sha256_file

    return sha256_file(path).startswith(sha256.lower())


