"""Hugging Face Hub references: `hf://OWNER/REPO[/PATH][@REVISION]` and short names for the authors' files.

Resolution (`resolve_path`) turns a reference into a local path, downloading into the standard Hugging Face
cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) with `huggingface_hub`'s public
API (`hf_hub_download`, `snapshot_download`), then returns the cached file; the existing loaders read it with
`weights_only=True` / safetensors. Rules:

* `hf://OWNER/REPO/PATH[@REV]` -> one file (revision: branch, tag or commit; default `main`).
* `hf://OWNER/REPO[@REV]` -> the whole repository as a folder (a run pushed by `vfmtok push`).
* `authors/NAME` -> the authors' released file NAME in `yexiguafu/VFMTok` (`AUTHORS_FILES`; e.g.
  `authors/GPT-B`, `authors/tokenizer`), used only when no local path of that name exists.
* anything else is a local path and is returned unchanged.

Integrity: the Hub names every file by its git object id (a 40-hex git blob sha1 for small files, the 64-hex
sha256 for LFS files), which `huggingface_hub` uses as the cached blob's name but does not check against the
bytes it wrote. Every file resolved here is hashed and compared with that id once (a marker under
`$VFMTOK_CACHE/hub-verified`, default `~/.cache/vfmtok`, records a verified (size, mtime)); a mismatch deletes
the cached copy and raises `HubFileCorrupt`, so a corrupt file is never used. A size mismatch is refused by
`huggingface_hub` itself during the download.

Offline (`HF_HUB_OFFLINE=1`, or the Hub unreachable): a cached file is used; a missing one raises
`HubFileMissing`, whose message names the file, its URL and where to put a manually downloaded copy.
`HF_ENDPOINT` and `HF_HUB_OFFLINE` are read at each call (not at import), so they can be changed at run time.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

HF_SCHEME = "hf://"
DEFAULT_ENDPOINT = "https://huggingface.co"
AUTHORS_REPO = "yexiguafu/VFMTok"
AUTHORS_PREFIX = "authors/"
# short name -> path in the authors' repository (shared/reference/vfmtok.md section 7, rar.md section 1)
AUTHORS_FILES = {
    "tokenizer": "DINOv2/tokenizer/vfmtok-tokenizer.pt",
    "GPT-B": "DINOv2/GPT-B/GPT-B-300e.pt",
    "GPT-L": "DINOv2/GPT-L/GPT-L-300e.pt",
    "GPT-XL": "DINOv2/GPT-XL/GPT-XL-200e.pt",
    "GPT-XXL": "DINOv2/GPT-XXL/GPT-XXL-200e.pt",
    "GPT-2B": "DINOv2/GPT-2B/GPT-2B-200e.pt",
    "GPT-3B": "DINOv2/GPT-3B/GPT-3B-200e.pt",
    "RAR-L-ultra": "VFMTok-RAR/RAR-L-ultra/model.safetensors",
    "RAR-L": "VFMTok-RAR/RAR-vanilla/vfmtok-rar-l.safetensors",
    "RAR-XL": "VFMTok-RAR/RAR-vanilla/vfmtok-rar-xl.safetensors",
    "RAR-XXL": "VFMTok-RAR/RAR-vanilla/vfmtok-rar-xxl.safetensors",
}
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class HubFileMissing(FileNotFoundError):
    """A Hub file is neither cached nor downloadable now; the message names it, its URL and where to put it."""


class HubFileCorrupt(ValueError):
    """A downloaded or cached Hub file does not match its published size or hash; the copy was deleted."""


@dataclass(frozen=True)
class HubRef:
    """A parsed Hub reference. `path` is "" for the whole repository; `revision` None means "main"."""

    repo_id: str
    path: str = ""
    revision: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HF_SCHEME}{self.repo_id}{'/' + self.path if self.path else ''}{rev}"

    def url(self, endpoint: str | None = None) -> str:
        """The download URL (`{endpoint}/{repo}/resolve/{revision}/{path}`; the repository page for a folder)."""
        base = (endpoint or hub_endpoint()).rstrip("/")
        if not self.path:
            return f"{base}/{self.repo_id}/tree/{self.revision or 'main'}"
        return f"{base}/{self.repo_id}/resolve/{self.revision or 'main'}/{self.path}"


def hub_endpoint() -> str:
    """`$HF_ENDPOINT` (read now), else https://huggingface.co."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """The standard Hugging Face cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def vfmtok_cache_dir() -> Path:
    """vfmtok's own cache (downloads from plain URLs, verification markers): `$VFMTOK_CACHE` or ~/.cache/vfmtok."""
    default = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "vfmtok")
    return Path(os.environ.get("VFMTOK_CACHE") or default).expanduser()


def hub_offline() -> bool:
    """True when `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is set to 1/true/yes/on (read now)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "true", "yes", "on")


def parse_hub_ref(ref: str | os.PathLike) -> HubRef | None:
    """Parse `hf://OWNER/REPO[/PATH][@REVISION]` or `authors/NAME`; None for anything else.

    `authors/NAME` is a Hub reference only when no local path `authors/NAME` exists (a local file wins).

    Raises:
        ValueError: an `hf://` reference without OWNER/REPO, with an invalid owner/repo name or an empty
            revision; `authors/NAME` with a NAME that is not in `AUTHORS_FILES` (lists them).
    """
    text = os.fspath(ref)
    if not isinstance(text, str):
        return None
    if text.startswith("hf:/") and not text.startswith(HF_SCHEME):  # a Path object collapsed the '//'
        text = HF_SCHEME + text[len("hf:/"):]
    if text.startswith(AUTHORS_PREFIX) and not Path(text).exists():
        name = text[len(AUTHORS_PREFIX):]
        name, _, rev = name.partition("@")
        if name not in AUTHORS_FILES:
            raise ValueError(f"{text!r}: unknown short name {name!r} for the authors' files; expected one of "
                             f"{', '.join('authors/' + k for k in AUTHORS_FILES)}")
        return HubRef(AUTHORS_REPO, AUTHORS_FILES[name], rev or None)
    if not text.startswith(HF_SCHEME):
        return None
    body = text[len(HF_SCHEME):]
    revision = None
    if "@" in body:
        body, revision = body.rsplit("@", 1)
        if not revision:
            raise ValueError(f"{text!r}: empty revision after '@' (expected hf://OWNER/REPO/PATH@REVISION)")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2 or not all(_REPO_PART.match(p) for p in parts[:2]):
        raise ValueError(f"{text!r}: expected hf://OWNER/REPO[/PATH][@REVISION] (e.g. "
                         f"hf://{AUTHORS_REPO}/{AUTHORS_FILES['GPT-B']})")
    return HubRef("/".join(parts[:2]), "/".join(parts[2:]), revision)


def is_hub_ref(ref: object) -> bool:
    """True for an `hf://` reference or an `authors/NAME` short name (see `parse_hub_ref`); never raises."""
    try:
        return isinstance(ref, (str, os.PathLike)) and parse_hub_ref(ref) is not None
    except ValueError:
        return True


def _missing_message(ref: HubRef, cause: str) -> str:
    where = ("pass the downloaded file's path instead" if ref.path else
             "download the repository files into a folder and pass that folder instead")
    return (f"{ref} is not in the Hugging Face cache ({hub_cache_dir()}) and cannot be downloaded now ({cause}). "
            f"Get it from {ref.url()} and {where}, or run once with network access to fill the cache.")


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        while block := handle.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_cached_blob(file: Path, ref: HubRef) -> None:
    """Check a cached Hub file against its object id (the blob name in the cache; see the module docstring).

    A 64-hex id must equal the file's sha256, a 40-hex id its git blob sha1; other names (non-Hub caches) are
    not checked. A verified (size, mtime) is remembered under `vfmtok_cache_dir()/hub-verified`.

    Raises:
        HubFileCorrupt: the bytes do not match (the cached blob and its snapshot link are deleted first).
    """
    from vfmtok.io.hashing import sha256_file

    blob = file.resolve()
    expected = blob.name
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", expected):
        return
    stat = blob.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    marker = vfmtok_cache_dir() / "hub-verified" / expected
    try:
        if json.loads(marker.read_text()) == stamp:
            return
    except (OSError, ValueError):
        pass
    actual = sha256_file(blob) if len(expected) == 64 else _git_blob_sha1(blob)
    if actual != expected:
        for victim in (file, blob):
            try:
                victim.unlink()
            except OSError:
                pass
        kind = "sha256" if len(expected) == 64 else "git blob sha1"
        raise HubFileCorrupt(f"{ref}: the downloaded file's {kind} is {actual}, but the Hub publishes {expected} "
                             f"({ref.url()}); the corrupt copy was deleted, run again to download it anew")
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(stamp))
    except OSError:
        pass


def download_hub_ref(ref: HubRef, progress: bool = True, local_only: bool = False) -> Path:
    """Download (or find in the cache) the file or repository `ref` and verify it (see the module docstring).

    Args:
        ref: a parsed reference. progress: show `huggingface_hub`'s progress bar while downloading.
        local_only: look in the cache only (as offline), never at the network.

    Returns:
        The cached file, or the snapshot folder for a whole-repository reference.

    Raises:
        HubFileMissing: not cached and the Hub is offline/unreachable, or the repo/revision/file does not exist
            (the message names the URL). HubFileCorrupt: hash mismatch. OSError: size mismatch while
            downloading (from `huggingface_hub`).
    """
    import huggingface_hub as hf
    from huggingface_hub import errors

    kwargs = dict(repo_id=ref.repo_id, revision=ref.revision, cache_dir=str(hub_cache_dir()),
                  local_files_only=hub_offline() or local_only, endpoint=hub_endpoint())
    if not progress:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars, are_progress_bars_disabled

        was_disabled = are_progress_bars_disabled()
        disable_progress_bars()
    try:
        if ref.path:
            local = Path(hf.hf_hub_download(filename=ref.path, etag_timeout=30, **kwargs))
            verify_cached_blob(local, ref)
            return local
        folder = Path(hf.snapshot_download(**kwargs))
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                verify_cached_blob(file, ref)
        return folder
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.RemoteEntryNotFoundError) as err:
        raise HubFileMissing(f"{ref}: not found on the Hub ({ref.url()}): {type(err).__name__}") from err
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, errors.HfHubHTTPError,
            errors.FileMetadataError, ConnectionError) as err:
        cause = "HF_HUB_OFFLINE is set" if hub_offline() else "cache only" if local_only else f"{type(err).__name__}: {str(err).splitlines()[0]}"
        raise HubFileMissing(_missing_message(ref, cause)) from err
    except OSError as err:
        if "Consistency check failed" not in str(err):
            raise
        raise HubFileCorrupt(f"{ref}: the download's size differs from the size the Hub publishes ({ref.url()}): "
                             f"{str(err).splitlines()[0]}; nothing was kept, run again to retry") from err
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()


def resolve_path(ref: str | os.PathLike, progress: bool = True) -> Path:
    """A local path for `ref`: Hub references are downloaded/cached and verified, local paths returned as given.

    Args:
        ref: `hf://...`, `authors/NAME`, or a local path (its existence is not checked here).

    Raises:
        ValueError: malformed Hub reference. HubFileMissing, HubFileCorrupt: see `download_hub_ref`.
    """
    hub = parse_hub_ref(ref)
    return Path(ref) if hub is None else download_hub_ref(hub, progress=progress)


def push_folder(folder: str | os.PathLike, repo_id: str, files: list[str], *, token: str | None = None,
                private: bool = False, revision: str | None = None, commit_message: str = "Upload with vfmtok push"
                ) -> str:
    """Upload `files` (paths relative to `folder`) to the Hub model repository `repo_id` in one commit.

    The repository is created when missing (`exist_ok`); `HF_ENDPOINT` is read now; the token is `token`, else
    huggingface_hub's (`HF_TOKEN` or the stored login).

    Returns:
        The commit URL.

    Raises:
        ValueError: `repo_id` is not OWNER/NAME, or offline mode is set. huggingface_hub's HTTP errors
            (`HfHubHTTPError`: authentication, permissions) pass through.
    """
    from huggingface_hub import HfApi

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", repo_id):
        raise ValueError(f"repository {repo_id!r}: expected OWNER/NAME")
    if hub_offline():
        raise ValueError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set")
    api = HfApi(endpoint=hub_endpoint(), token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, allow_patterns=list(files),
                             revision=revision, commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
