"""Every input file of a `vfmtok reproduce` target, found locally or fetched, before any work starts.

Order for each file: the explicit option (`--tokenizer`, `--ckpt`, `--inception-weights`, `--ref`,
`--encoder-weights`, `--data`), then `--files DIR` (the file's name in DIR or one folder below), then the
standard cache (the Hugging Face cache for the authors' files; the torch hub cache
`$TORCH_HOME/hub/checkpoints` for the Inception and DINOv2 weights, and `$VFMTOK_INCEPTION_WEIGHTS`; vfmtok's
cache `$VFMTOK_CACHE/ref_batches` for the reference batch), and only then the network: the Hub
(`huggingface_hub`, for the authors' files) or the file's documented URL (resumable, `vfmtok.io.download`), into
that same cache. Without network (or with `offline`), every missing file is listed at once, with its URL and
where to put it (`MissingFiles`), before anything is sampled.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vfmtok.io.download import DownloadError, download_url
from vfmtok.io.hub import AUTHORS_FILES, AUTHORS_REPO, HubRef, download_hub_ref, hub_cache_dir, hub_offline, \
    resolve_path, vfmtok_cache_dir
from vfmtok.jobs.reproduce.targets import Target

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILE}"
INCEPTION_SHA256_PREFIX = "6726825d"
VIRTUAL_FILE = "VIRTUAL_imagenet256_labeled.npz"
VIRTUAL_URL = f"https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/{VIRTUAL_FILE}"


class MissingFiles(FileNotFoundError):
    """Some input files are neither local nor downloadable; the message lists each with its URL and destination."""


@dataclass(frozen=True)
class FileSpec:
    """One input: `role` (option name without dashes), file name, and where it comes from (`hub` short name or
    `url`), `sha256` prefix to check after a URL download, `cache` = where the standard cache keeps it."""

    role: str
    name: str
    hub: str | None = None
    url: str | None = None
    sha256: str | None = None
    cache: Path | None = None
    folder: bool = False

    def where(self) -> str:
        if self.hub:
            return f"{HubRef(AUTHORS_REPO, AUTHORS_FILES[self.hub]).url()}"
        return self.url or "no public URL"


def _torch_hub_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def needed_files(target: Target) -> list[FileSpec]:
    """The inputs of `target` (the tiny CI target has no public files: all must be given explicitly)."""
    from vfmtok.models.vfm import DINOV2_L_FILE, DINOV2_L_URL

    if target.name == "tiny":
        return [FileSpec("tokenizer", "tokenizer"), FileSpec("ckpt", "generator"), FileSpec("ref", "reference npz"),
                FileSpec("inception_weights", "inception weights")]
    inception = FileSpec("inception_weights", INCEPTION_FILE, url=INCEPTION_URL, sha256=INCEPTION_SHA256_PREFIX,
                         cache=_torch_hub_dir() / INCEPTION_FILE)
    tok = FileSpec("tokenizer", Path(AUTHORS_FILES["tokenizer"]).name, hub="tokenizer")
    if target.kind == "tokenizer":
        return [tok, inception, FileSpec("encoder_weights", DINOV2_L_FILE, url=DINOV2_L_URL,
                                         cache=_torch_hub_dir() / DINOV2_L_FILE),
                FileSpec("data", "ImageNet val folder (val/<wnid>/*.JPEG, or a prepare-data --split val output)",
                         folder=True)]
    return [tok, FileSpec("ckpt", Path(AUTHORS_FILES[target.generator]).name, hub=target.generator), inception,
            FileSpec("ref", VIRTUAL_FILE, url=VIRTUAL_URL, cache=vfmtok_cache_dir() / "ref_batches" / VIRTUAL_FILE)]


def _local(spec: FileSpec, explicit: str | None, files_dir: Path | None) -> Path | None:
    if explicit is not None:
        return resolve_path(explicit)
    if files_dir is not None and not spec.folder:
        for candidate in (files_dir / spec.name, *sorted(files_dir.glob(f"*/{spec.name}"))):
            if candidate.is_file():
                return candidate
    if spec.hub:
        try:
            return download_hub_ref(HubRef(AUTHORS_REPO, AUTHORS_FILES[spec.hub]), local_only=True)
        except FileNotFoundError:
            return None
    if spec.role == "inception_weights" and os.environ.get("VFMTOK_INCEPTION_WEIGHTS"):
        env = Path(os.environ["VFMTOK_INCEPTION_WEIGHTS"]).expanduser()
        if env.is_file():
            return env
    if spec.cache is not None and spec.cache.is_file():
        return spec.cache
    return None


def resolve_files(target: Target, explicit: dict[str, str | None], files_dir: str | Path | None = None,
                  offline: bool = False, progress: bool = True, log=print) -> dict[str, Path]:
    """Find or fetch every input of `target` (order in the module docstring).

    Args:
        explicit: role -> value of its option (None = not given). files_dir: `--files DIR`.
        offline: never use the network (also implied by HF_HUB_OFFLINE=1). log: one line per download.

    Returns:
        role -> local path.

    Raises:
        MissingFiles: one message naming every file still missing, its URL and where to put it.
        ValueError: a corrupt download or a malformed Hub reference (from `vfmtok.io.hub`).
    """
    files_dir = Path(files_dir) if files_dir is not None else None
    if files_dir is not None and not files_dir.is_dir():
        raise MissingFiles(f"--files {files_dir}: no such folder")
    found: dict[str, Path] = {}
    missing: list[tuple[FileSpec, str]] = []
    network = not (offline or hub_offline())
    for spec in needed_files(target):
        given = explicit.get(spec.role)
        try:
            path = _local(spec, given, files_dir)
        except FileNotFoundError as err:  # an explicit Hub reference that is not cached and cannot be fetched
            missing.append((spec, str(err)))
            continue
        if path is not None and not path.exists():
            missing.append((spec, f"--{spec.role.replace('_', '-')} {given}: not found"))
            continue
        if path is None and network and (spec.hub or spec.url):
            log(f"fetching {spec.name} from {spec.where()}")
            try:
                if spec.hub:
                    path = download_hub_ref(HubRef(AUTHORS_REPO, AUTHORS_FILES[spec.hub]), progress=progress)
                else:
                    path = download_url(spec.url, spec.cache, sha256=spec.sha256, progress=progress)
            except (FileNotFoundError, DownloadError) as err:
                missing.append((spec, f"download failed: {err}"))
                continue
        if path is None:
            missing.append((spec, "not found locally" + ("" if network else " (offline)")))
            continue
        found[spec.role] = path
    if missing:
        lines = []
        for spec, why in missing:
            option = f"--{spec.role.replace('_', '-')}"
            if spec.folder or not (spec.hub or spec.url):
                dest = f"pass {option} PATH"
            else:
                cache = spec.cache or (hub_cache_dir() if spec.hub else None)
                dest = f"pass {option} PATH, or put it in --files DIR" + (f" or {cache}" if spec.cache else "")
            lines.append(f"  - {spec.name} ({option}): {why}; URL: {spec.where()}; {dest}")
        raise MissingFiles(f"{len(missing)} input file(s) missing; nothing was run:\n" + "\n".join(lines))
    return found
