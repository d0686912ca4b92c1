"""Core of ``vfmtok prepare-data``: source folder -> resumable sharded dataset (+ optional ADM npz batch).

Output folder (``docs/data.md``)::

    OUT/manifest.json      format version, settings, source fingerprint, counts, shards, command line, times
    OUT/classes.json       class index (sorted WordNet ids, or the --classes file)
    OUT/rejected.jsonl     one {"index", "path", "reason"} line per skipped file, in source order
    OUT/index.npz          per image: shard, byte offset and size of the image member, label, source index
    OUT/shard-000000.tar   webdataset-compatible tar shards (vfmtok.data.shards)
    OUT/.progress/         one JSON record per completed shard (what makes a killed run resumable)

Shard ``k`` holds the accepted files among source items ``[k * shard_size, (k + 1) * shard_size)``, so
every shard is a pure function of (source list, settings): shards are processed in parallel, written
atomically, recorded in ``.progress/`` once complete, and skipped when a run is restarted. The final
files are therefore identical whether or not a run was interrupted (``manifest.json`` differs only in
its timestamps and command line).

Stored resolution: images whose short side is at least ``2 * min_size`` are BOX-halved (the first step of
both ADM crops) until it is below ``2 * min_size``; smaller images are stored at their size (never
upscaled). Because ADM centre/random crops to any target ``<= min_size`` start by the same halvings, a
crop of the stored image equals the crop of the original whenever the stored copy is lossless (verbatim
or PNG). Unchanged JPEG/PNG files are stored verbatim (byte copies); others are re-encoded (``store_format``).
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from vfmtok.data.adm_npz import NpzWriter
from vfmtok.data.crops import adm_box_halve, adm_center_crop
from vfmtok.data.decode import DecodeError, decode_image
from vfmtok.data.layouts import SourceList, discover, load_classes, write_classes
from vfmtok.data.shards import PREPARED_FORMAT, PREPARED_FORMAT_VERSION, ShardSample, shard_name, write_shard
from vfmtok.io.hashing import sha256_file

__all__ = ["PrepareSettings", "NpzRequest", "PrepareResult", "PrepareError", "prepare_dataset",
           "encode_for_storage"]

FAIL_AFTER_ENV = "VFMTOK_PREPARE_FAIL_AFTER"  # test hook: "k" raises after k shards, "k:kill" sends SIGKILL
_OUR_FILES = ("manifest.json", "classes.json", "rejected.jsonl", "index.npz")


class PrepareError(RuntimeError):
    """Preparation refused or failed (the message says why and what to do)."""


@dataclass
class PrepareSettings:
    """Settings that define the prepared data (a restarted run must use the same ones).

    Attributes:
        split: ``"train"`` or ``"val"``.
        min_size: keep a stored short side of at least this many pixels (BOX-halve only while the short
            side is >= ``2 * min_size``); 0 stores every image at its original size.
        store_format: ``"auto"`` (verbatim when unchanged, else JPEG for JPEG sources and PNG for others),
            ``"jpeg"`` or ``"png"`` (for every re-encoded image).
        jpeg_quality: quality of re-encoded JPEGs (1..100; chroma not subsampled).
        shard_size: source items per shard (>= 1).
    """

    split: str = "train"
    min_size: int = 420
    store_format: str = "auto"
    jpeg_quality: int = 95
    shard_size: int = 1000

    def validate(self) -> None:
        if self.split not in ("train", "val"):
            raise PrepareError(f"split must be 'train' or 'val', got {self.split!r}")
        if self.min_size < 0 or self.shard_size < 1 or not 1 <= self.jpeg_quality <= 100:
            raise PrepareError(f"need min_size >= 0, shard_size >= 1, 1 <= jpeg_quality <= 100; got {self}")
        if self.store_format not in ("auto", "jpeg", "png"):
            raise PrepareError(f"store_format must be auto, jpeg or png, got {self.store_format!r}")


@dataclass
class NpzRequest:
    """ADM batch to write beside the shards: ``path``, crop ``size``, ``count`` (None = all), ``shuffle_seed``."""

    path: Path
    size: int = 256
    count: int | None = None
    shuffle_seed: int | None = None


@dataclass
class PrepareResult:
    """Summary of a finished run."""

    out: Path
    num_images: int
    num_rejected: int
    counts_per_class: dict[str, int]
    resumed_shards: int
    npz_path: Path | None = None
    rejected: list[dict] = field(default_factory=list)


def encode_for_storage(data: bytes, decoded, settings: PrepareSettings) -> tuple[bytes, str, tuple[int, int], str]:
    """Apply the stored-resolution policy (module docstring) to one decoded image.

    Args:
        data: the source file bytes.
        decoded: :class:`vfmtok.data.decode.DecodedImage` of ``data``.
        settings: preparation settings.

    Returns:
        ``(bytes, ext, (w, h), how)`` with ext ``"jpg"``/``"png"`` and how ``"verbatim"``/``"reencoded"``.
    """
    image = decoded.image
    stored = adm_box_halve(image, settings.min_size) if settings.min_size > 0 else image
    if (settings.store_format == "auto" and stored is image and not decoded.transformed
            and decoded.format in ("JPEG", "PNG")):
        return data, ("jpg" if decoded.format == "JPEG" else "png"), image.size, "verbatim"
    fmt = settings.store_format
    if fmt == "auto":
        fmt = "jpeg" if decoded.format == "JPEG" else "png"
    buf = io.BytesIO()
    if fmt == "jpeg":
        stored.save(buf, "JPEG", quality=settings.jpeg_quality, subsampling=0)
    else:
        stored.save(buf, "PNG", compress_level=1)
    return buf.getvalue(), ("jpg" if fmt == "jpeg" else "png"), stored.size, "reencoded"


# ----------------------------------------------------------------------------------------------------
# One shard (runs in a worker process)
# ----------------------------------------------------------------------------------------------------
def _crop_file(progress: Path, shard: int, size: int) -> Path:
    return progress / f"shard-{shard:06d}.crops{size}.npy"


def _run_shard(job: dict) -> dict:
    settings = PrepareSettings(**job["settings"])
    out, progress, npz_size = Path(job["out"]), Path(job["progress"]), job["npz_size"]
    samples, rejected, crops, class_counts = [], [], [], {}
    short_sides, how_counts = [], {"verbatim": 0, "reencoded": 0}
    content = hashlib.sha256()  # of the accepted source files' bytes, in source order
    for index, path, relpath, label, wnid, reject in job["items"]:
        if reject is None:
            try:
                data = Path(path).read_bytes()
                decoded = decode_image(data)
            except (DecodeError, OSError) as exc:
                reject = str(exc)
        if reject is not None:
            rejected.append({"index": index, "path": relpath, "reason": reject})
            continue
        content.update(hashlib.sha256(data).digest())
        if npz_size:
            crops.append(adm_center_crop(decoded.image, npz_size))
        if job["write"]:
            blob, ext, size, how = encode_for_storage(data, decoded, settings)
            meta = {"src": relpath, "wnid": wnid, "label": label, "orig_size": list(decoded.image.size),
                    "size": list(size), "stored": how}
            samples.append(ShardSample(f"{index:08d}", blob, ext, label, meta))
            class_counts[wnid] = class_counts.get(wnid, 0) + 1
            short_sides.append(min(size))
            how_counts[how] += 1
    if npz_size:
        target = _crop_file(progress, job["shard"], npz_size)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        arr = np.stack(crops) if crops else np.zeros((0, npz_size, npz_size, 3), np.uint8)
        with open(tmp, "wb") as handle:
            np.save(handle, arr)
        os.replace(tmp, target)
    if not job["write"]:
        return {"shard": job["shard"], "crops_only": True}
    shard_path = out / shard_name(job["shard"])
    index = write_shard(shard_path, samples)
    return {
        "shard": job["shard"], "name": shard_path.name, "count": len(samples), "sha256": sha256_file(shard_path),
        "bytes": shard_path.stat().st_size, "rejected": rejected, "class_counts": class_counts,
        "members": [[int(k), off, size, label] for k, _, off, size, label in index],
        "short_side": [min(short_sides), max(short_sides)] if short_sides else None, "stored": how_counts,
        "source_sha256": content.hexdigest(),
    }


# ----------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------
def _fingerprint(sources: SourceList, settings: PrepareSettings) -> dict:
    digest = hashlib.sha256()
    for item in sources.items:
        size = item.path.stat().st_size if item.reject is None else -1
        digest.update(json.dumps([item.relpath, size, item.wnid, item.reject]).encode())
        digest.update(b"\n")
    return {
        "settings": asdict(settings),
        "source_root": str(sources.root),
        "layout": sources.layout,
        "classes_sha256": hashlib.sha256(json.dumps(sources.classes).encode()).hexdigest(),
        "files_sha256": digest.hexdigest(),
        "num_files": len(sources.items),
    }


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _clear_outputs(out: Path) -> None:
    for name in _OUR_FILES:
        (out / name).unlink(missing_ok=True)
    for path in out.glob("shard-*.tar"):
        path.unlink()
    shutil.rmtree(out / ".progress", ignore_errors=True)


def _check_out(out: Path, fingerprint: dict, overwrite: bool) -> dict | None:
    """Return the previous manifest if OUT holds a compatible run; refuse or clear otherwise."""
    if out.exists() and not out.is_dir():
        raise PrepareError(f"output {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return None
    manifest_path = out / "manifest.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if previous is not None and previous.get("fingerprint") == fingerprint:
        return previous
    if not overwrite:
        if previous is None:
            raise PrepareError(f"{out} is not empty and holds no prepare-data manifest; choose an empty folder "
                               f"or pass --overwrite")
        old = previous.get("fingerprint", {})
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {fingerprint.get(k)!r}" if k != "files_sha256" else
                           "source files changed" for k in diff)
        raise PrepareError(f"{out} was prepared with different settings or source ({detail}); "
                           f"pass --overwrite to replace it")
    _clear_outputs(out)
    return None


def prepare_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    settings: PrepareSettings | None = None,
    *,
    classes_file: str | os.PathLike | None = None,
    labels_file: str | os.PathLike | None = None,
    synsets_file: str | os.PathLike | None = None,
    npz: NpzRequest | None = None,
    workers: int = 1,
    overwrite: bool = False,
    command_line: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
    progress_total: Callable[[int], None] | None = None,
) -> PrepareResult:
    """Prepare ``src`` into ``out`` (module docstring); resumes a compatible interrupted run.

    Args:
        src: source folder (see :func:`vfmtok.data.layouts.discover`).
        out: output folder (created).
        settings: :class:`PrepareSettings` (default: train split, min_size 420).
        classes_file: fixed class index (the train ``classes.json``); other classes are refused.
        labels_file, synsets_file: flat-val label files (see ``discover``).
        npz: also write an ADM centre-crop batch (``arr_0`` uint8 N x size x size x 3, ``arr_1`` int64).
        workers: decoding processes (1 = in this process).
        overwrite: replace an OUT made with other settings (only our own files are removed).
        command_line: recorded in the manifest (default ``sys.argv``).
        progress: called with the number of source items of each finished shard.
        progress_total: called once with the number of source items still to process.

    Returns:
        :class:`PrepareResult`.

    Raises:
        PrepareError: refused OUT, bad settings or npz request.
        vfmtok.data.layouts.LayoutError: unusable source layout or class file.
    """
    settings = settings or PrepareSettings()
    settings.validate()
    if workers < 1:
        raise PrepareError(f"workers must be >= 1, got {workers}")
    out = Path(out).resolve()
    classes = load_classes(classes_file) if classes_file else None
    sources = discover(src, settings.split, classes=classes, labels_file=labels_file, synsets_file=synsets_file)
    candidates = sum(it.reject is None for it in sources.items)
    if npz is not None and npz.count is not None and not 0 < npz.count <= candidates:
        raise PrepareError(f"--npz-count {npz.count} must be in 1..{candidates} (image files found)")
    if npz is not None and npz.size < 1:
        raise PrepareError(f"--npz-size must be >= 1, got {npz.size}")
    fingerprint = _fingerprint(sources, settings)
    previous = _check_out(out, fingerprint, overwrite)
    progress_dir = out / ".progress"
    progress_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob(".*.tmp-*"), *progress_dir.glob(".*.tmp-*")]:
        stale.unlink()
    created = (previous or {}).get("created_utc") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = {
        "format": PREPARED_FORMAT, "format_version": PREPARED_FORMAT_VERSION, "status": "in_progress",
        "fingerprint": fingerprint, "created_utc": created,
        "command_line": list(command_line if command_line is not None else sys.argv),
    }
    _atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    write_classes(out / "classes.json", sources.classes)

    class_index = {wnid: i for i, wnid in enumerate(sources.classes)}
    n_shards = -(-len(sources.items) // settings.shard_size)
    records: dict[int, dict] = {}
    for k in range(n_shards):
        record_path = progress_dir / f"shard-{k:06d}.json"
        if record_path.is_file() and (out / shard_name(k)).is_file():
            record = json.loads(record_path.read_text())
            if (out / shard_name(k)).stat().st_size == record["bytes"]:
                records[k] = record
    resumed = len(records)
    npz_size = npz.size if npz else None
    pending = []  # (shard, write the shard?, compute crops?)
    for k in range(n_shards):
        need_crops = bool(npz_size) and not _crop_file(progress_dir, k, npz_size).is_file()
        if k not in records or need_crops:
            pending.append((k, k not in records, need_crops))

    if progress_total is not None:
        progress_total(sum(len(sources.items[k * settings.shard_size : (k + 1) * settings.shard_size])
                           for k, _, _ in pending))

    def _jobs():  # built lazily: a job lists its source files
        for k, write, need_crops in pending:
            chunk = sources.items[k * settings.shard_size : (k + 1) * settings.shard_size]
            items = [(k * settings.shard_size + i, str(it.path), it.relpath,
                      class_index.get(it.wnid, -1) if it.wnid else -1, it.wnid, it.reject)
                     for i, it in enumerate(chunk)]
            yield {"shard": k, "items": items, "settings": asdict(settings), "out": str(out),
                   "progress": str(progress_dir), "npz_size": npz_size if need_crops else None, "write": write}

    hook = os.environ.get(FAIL_AFTER_ENV, "")  # "k" raises after k shards, "k:kill" SIGKILLs this process
    fail_after, kill = int(hook.split(":")[0] or 0), hook.endswith(":kill")
    done_now = 0

    def _finish(result: dict) -> None:
        nonlocal done_now
        k = result["shard"]
        if not result.get("crops_only"):
            _atomic_write_text(progress_dir / f"shard-{k:06d}.json", json.dumps(result) + "\n")
            records[k] = result
        done_now += 1
        if progress is not None:
            progress(len(sources.items[k * settings.shard_size : (k + 1) * settings.shard_size]))
        if fail_after and done_now >= fail_after:
            if kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure after {done_now} shard(s) ({FAIL_AFTER_ENV})")

    if workers == 1 or len(pending) <= 1:
        for job in _jobs():
            _finish(_run_shard(job))
    else:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ctx.Pool(min(workers, len(pending))) as pool:
            for result in pool.imap_unordered(_run_shard, _jobs()):
                _finish(result)
    return _finalize(out, sources, manifest, [records[k] for k in range(n_shards)], npz, resumed)


def _finalize(out: Path, sources: SourceList, manifest: dict, records: list[dict], npz: NpzRequest | None,
              resumed: int) -> PrepareResult:
    counts = {wnid: 0 for wnid in sources.classes}
    rejected, shards, members = [], [], []
    stored = {"verbatim": 0, "reencoded": 0}
    sides = [r["short_side"] for r in records if r["short_side"]]
    first = 0
    for k, record in enumerate(records):
        for wnid, n in record["class_counts"].items():
            counts[wnid] += n
        rejected.extend(record["rejected"])
        for key in stored:
            stored[key] += record["stored"][key]
        shards.append({"name": record["name"], "count": record["count"], "first_index": first,
                       "sha256": record["sha256"], "bytes": record["bytes"]})
        members.extend([k, *m] for m in record["members"])
        first += record["count"]
    content = hashlib.sha256("".join(r["source_sha256"] for r in records).encode()).hexdigest()
    table = np.asarray(members, dtype=np.int64).reshape(-1, 5)
    with open(out / ".index.npz.tmp", "wb") as handle:
        np.savez(handle, shard=table[:, 0], source_index=table[:, 1], offset=table[:, 2], size=table[:, 3],
                 label=table[:, 4])
    os.replace(out / ".index.npz.tmp", out / "index.npz")
    _atomic_write_text(out / "rejected.jsonl", "".join(json.dumps(r) + "\n" for r in rejected))
    settings = manifest["fingerprint"]["settings"]
    manifest.update({
        "status": "complete",
        "split": settings["split"],
        "source": {"path": str(sources.root), "layout": sources.layout,
                   "labels_file": str(sources.labels_file) if sources.labels_file else None,
                   "synsets_file": str(sources.synsets_file) if sources.synsets_file else None,
                   "num_files": len(sources.items), "content_sha256": content},
        "settings": settings,
        "stored_resolution": {
            "policy": f"BOX-halved while the short side >= 2 * {settings['min_size']} (ADM pre-shrink); never "
                      "upscaled" if settings["min_size"] else "original size",
            "min_size": settings["min_size"],
            "short_side_range": [min(s[0] for s in sides), max(s[1] for s in sides)] if sides else None,
            **stored,
        },
        "num_images": first, "num_rejected": len(rejected), "num_classes": len(sources.classes),
        "counts_per_class": counts, "shards": shards,
    })
    npz_path = None
    if npz is not None:
        manifest["npz"] = _write_npz(out, npz, records, table[:, 4])
        npz_path = Path(npz.path)
    for crops in (out / ".progress").glob("shard-*.crops*.npy"):  # also those of killed runs / other sizes
        crops.unlink()
    manifest["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return PrepareResult(out=out, num_images=first, num_rejected=len(rejected), counts_per_class=counts,
                         resumed_shards=resumed, npz_path=npz_path, rejected=rejected)


def _write_npz(out: Path, npz: NpzRequest, records: list[dict], labels: np.ndarray) -> dict:
    progress_dir = out / ".progress"
    total = len(labels)
    count = total if npz.count is None else npz.count
    if not 0 < count <= total:
        raise PrepareError(f"--npz-count {count} must be in 1..{total} (accepted images)")
    order = np.arange(total)
    if npz.shuffle_seed is not None:
        order = np.random.default_rng(npz.shuffle_seed).permutation(total)
    order = order[:count]
    crops = [np.load(_crop_file(progress_dir, r["shard"], npz.size), mmap_mode="r") for r in records]
    starts = np.cumsum([0] + [len(c) for c in crops])
    if starts[-1] != total:
        raise PrepareError(f"crop files hold {starts[-1]} images, expected {total}; rerun with --overwrite")
    shard_of = np.searchsorted(starts, order, side="right") - 1
    with NpzWriter(npz.path, count=count, height=npz.size, width=npz.size) as writer:
        for begin in range(0, count, 256):
            sel = slice(begin, begin + 256)
            batch = np.stack([crops[s][i - starts[s]] for s, i in zip(shard_of[sel], order[sel])])
            writer.write(batch, labels[order[sel]])
    return {"path": str(Path(npz.path).resolve()), "size": npz.size, "count": count,
            "shuffle_seed": npz.shuffle_seed, "crop": "ADM centre crop of the decoded source image",
            "sha256": sha256_file(npz.path)}
