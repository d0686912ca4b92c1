"""The `vfmtok sample` job: resolve checkpoints, choose labels, generate, decode, write PNGs + ADM npz.

Pipeline (docs/sample.md has the user-facing description):

1. Checkpoints. The GPT is our run dir / `.safetensors` (its `config.json` may name the `tokenizer` it was
   trained with) or the authors' `GPT-*.pt`; without `ckpt` the newest GPT run under `./runs` is used. The
   tokenizer is `tokenizer` or the run's recorded one. The GPT vocabulary must equal the codebook size and
   its sequence length the tokenizer's tokens per image.
2. Labels (N = num_samples, C = num_classes): `classes` -> label_i = classes[i % len(classes)];
   `balanced` -> i % C; `random` -> floor(u_i * C), u_i = BLAKE2b-64("vfmtok-label:{seed}:{i}") / 2^64.
3. Work units ("chunks"): global indices [k D, min((k+1) D, N)), D = `decode_batch`. Chunks are split into
   contiguous per-rank ranges; each rank generates its indices in batches of `batch_size` (sample i uses the
   random stream of (seed, i), `vfmtok.sampling`), decodes each *whole chunk* in one tokenizer call, converts
   it with `vfmtok.imageops.to_uint8(images, size=image_size)` and writes the chunk's PNGs, then the chunk's
   shard `DIR/parts/chunk_<k>.npy`. Decoding fixed, globally aligned chunks makes the bytes independent of
   `batch_size` and of the number of processes (decoder floats depend on the batch composition).
4. Rank 0 waits for every rank (barrier), streams the shards in index order into `DIR/samples.npz`
   (`NpzWriter`, never the whole array in memory), writes `DIR/grid.png` and `DIR/sample_config.json`
   (complete), and removes `DIR/parts`.

Resume: rerunning with the same settings skips chunks whose shard exists (a shard is written only after its
PNGs). A DIR made with other settings is refused unless `overwrite`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vfmtok.distributed import barrier, broadcast, init_from_env
from vfmtok.hashing import sha256_file
from vfmtok.sampling import SCHEDULES, cfg_scales

GPT_FORMAT = "vfmtok.gpt"
LABEL_MODES = ("random", "balanced")
CONFIG_NAME = "sample_config.json"
NPZ_NAME = "samples.npz"
GRID_NAME = "grid.png"


class SampleDirError(ValueError):
    """The output folder holds something this job must not overwrite (other settings, not a sample folder)."""


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
@dataclass
class SampleOptions:
    """Every `vfmtok sample` setting (formulas in docs/sample.md).

    Attributes:
        num_samples: N >= 1 images. classes: class ids cycled in order (sample i gets classes[i % len]), or
            None to use `labels`. labels: "random" | "balanced" (only without `classes`).
        cfg_scale, cfg_schedule, cfg_power, cfg_interval, temperature, top_k, top_p: see `vfmtok.generate`.
        batch_size: samples per GPT forward (does not change results). decode_batch: D, images per tokenizer
            decode call, aligned to global indices (part of the settings: changing it may flip a pixel by 1).
        image_size: output side in pixels (bicubic resize of the decoder output, official rule).
        png: write `images/<index:06d>.png`. overwrite: replace a DIR made with other settings.
        seed: global seed. device: 'auto' | 'cpu' | 'cuda' | 'cuda:N'. mixed_precision: no | bf16 | fp16
            (autocast on CUDA only). progress: tqdm bar on rank 0.
    """

    num_samples: int = 64
    classes: list[int] | None = None
    labels: str = "random"
    cfg_scale: float = 1.0
    cfg_schedule: str = "constant"
    cfg_power: float = 1.0
    cfg_interval: int = -1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 32
    decode_batch: int = 32
    image_size: int = 256
    png: bool = True
    overwrite: bool = False
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "no"
    progress: bool = True

    def validate(self) -> None:
        """Check every option that needs no model.

        Raises:
            ValueError: naming the option and the accepted range.
        """
        if self.num_samples < 1:
            raise ValueError(f"-n/--num-samples must be >= 1, got {self.num_samples}")
        if self.batch_size < 1 or self.decode_batch < 1:
            raise ValueError(f"--batch-size and --decode-batch must be >= 1, got {self.batch_size}, {self.decode_batch}")
        if self.image_size < 1:
            raise ValueError(f"--image-size must be >= 1, got {self.image_size}")
        if self.classes is not None:
            if not self.classes:
                raise ValueError("--class: give at least one class id")
            bad = [c for c in self.classes if c < 0]
            if bad:
                raise ValueError(f"--class {bad[0]}: class ids must be >= 0")
        elif self.labels not in LABEL_MODES:
            raise ValueError(f"--labels {self.labels!r}: expected one of {', '.join(LABEL_MODES)}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"--temperature must be a finite number >= 0 (0 = argmax), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"--top-p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.cfg_schedule not in SCHEDULES:
            raise ValueError(f"--cfg-schedule {self.cfg_schedule!r}: expected one of {', '.join(SCHEDULES)}")
        cfg_scales(1, self.cfg_scale, self.cfg_schedule, self.cfg_power, self.cfg_interval)  # raises on bad values
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"--mixed-precision {self.mixed_precision!r}: expected no, bf16 or fp16")


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
                seed: int = 0) -> np.ndarray:
    """Class label of every sample.

    Args:
        num_samples: N. num_classes: C of the GPT (ids must lie in [0, C)).
        classes: ids cycled in order (label_i = classes[i % len(classes)]); overrides `mode`.
        mode: "balanced" (label_i = i mod C, interleaved) or "random" (`random_label`).
        seed: global seed (random mode).

    Returns:
        (N,) int64 array.

    Raises:
        ValueError: a class id outside [0, C) (names it), an unknown mode.
    """
    if classes is not None:
        bad = [c for c in classes if not 0 <= int(c) < num_classes]
        if bad:
            raise ValueError(f"--class {bad[0]} out of range: this GPT has {num_classes} classes, ids must be in "
                             f"[0, {num_classes}) (the null class {num_classes} is used only through CFG)")
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

    With 2..8 distinct classes among the samples, one row per class (in order of first appearance) holding its
    first min(8, max_images // #classes) images; otherwise the first min(N, max_images) indices in rows of
    ceil(sqrt(k)) images.

    Returns:
        A list of rows, each a list of sample indices (rows may be shorter than the longest).
    """
    labels = np.asarray(labels)
    order = list(dict.fromkeys(int(c) for c in labels))
    if 1 < len(order) <= 8:
        per_row = min(8, max(1, max_images // len(order)))
        return [[int(i) for i in np.flatnonzero(labels == c)[:per_row]] for c in order]
    k = min(len(labels), max_images)
    cols = max(1, math.ceil(math.sqrt(k)))
    return [list(range(s, min(s + cols, k))) for s in range(0, k, cols)]


# ---------------------------------------------------------------------------------------------
# Checkpoint resolution
# ---------------------------------------------------------------------------------------------
@dataclass
class Checkpoints:
    """Resolved inputs: the GPT path/file, its run config (None for the authors' .pt), the tokenizer path/file."""

    gpt: Path
    gpt_file: Path
    run_config: dict[str, Any] | None
    tokenizer: Path
    tokenizer_file: Path
    chosen_automatically: bool = False




def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def find_latest_gpt_run(root: str | Path = "runs", max_depth: int = 3) -> Path:
    """The GPT run under `root` whose `model.safetensors` is newest (mtime).

    A run is a folder holding `model.safetensors` and a `config.json` with "format": "vfmtok.gpt", at most
    `max_depth` folders below `root` (folders named `checkpoints` are skipped).

    Raises:
        FileNotFoundError: `root` missing or no GPT run in it (says how to pass --ckpt).
    """
    root = Path(root)
    found: list[tuple[float, Path]] = []
    for depth in range(1, max_depth + 1):
        for weights in root.glob("/".join(["*"] * depth) + "/model.safetensors"):
            run = weights.parent
            if "checkpoints" in run.relative_to(root).parts:
                continue
            cfg = _read_json(run / "config.json")
            if cfg is not None and cfg.get("format") == GPT_FORMAT:
                found.append((weights.stat().st_mtime, run))
    if not found:
        raise FileNotFoundError(f"no GPT run found under {root.resolve()} (a folder with model.safetensors and a "
                                f"config.json of format {GPT_FORMAT!r}); train one with `vfmtok train-ar` or pass "
                                "--ckpt RUN_DIR | model.safetensors | GPT-*.pt")
    return max(found, key=lambda item: (item[0], str(item[1])))[1]


def _gpt_run_config(gpt: Path) -> dict[str, Any] | None:
    cfg_file = gpt / "config.json" if gpt.is_dir() else gpt.parent / "config.json"
    if gpt.is_file() and gpt.suffix != ".safetensors":
        return None
    cfg = _read_json(cfg_file)
    return cfg if cfg is not None and cfg.get("format") == GPT_FORMAT else None


def _tokenizer_weights(path: Path) -> Path:
    return path / "tokenizer.safetensors" if path.is_dir() else path


def resolve_checkpoints(ckpt: str | Path | None, tokenizer: str | Path | None, runs_root: str | Path = "runs") -> Checkpoints:
    """Find the GPT and the tokenizer (rules in the module docstring).

    Without `tokenizer`, the run's "tokenizer" entry (a path, or a dict with "path"/"file") is used, else the
    "path" recorded in the manifest of the run's "token_store"; a relative path is looked up relative to the
    run folder, then to the current directory.

    Raises:
        FileNotFoundError: a path that does not exist; no tokenizer given and none recorded (explains
            `--tokenizer`).
    """
    auto = ckpt is None
    gpt = find_latest_gpt_run(runs_root) if auto else Path(ckpt)
    if not gpt.exists():
        raise FileNotFoundError(f"--ckpt {gpt}: not found (a GPT run directory, a .safetensors, or GPT-*.pt)")
    gpt_file = gpt / "model.safetensors" if gpt.is_dir() else gpt
    if not gpt_file.is_file():
        raise FileNotFoundError(f"--ckpt {gpt}: no model.safetensors in this directory")
    run_cfg = _gpt_run_config(gpt)
    if tokenizer is None:
        recorded = (run_cfg or {}).get("tokenizer")
        if isinstance(recorded, dict):
            recorded = recorded.get("path") or recorded.get("file")
        store = (run_cfg or {}).get("token_store")
        if not recorded and isinstance(store, str):  # fall back to the token store's own record
            store_path = Path(store) if Path(store).is_absolute() else (gpt if gpt.is_dir() else gpt.parent) / store
            recorded = ((_read_json(store_path / "manifest.json") or {}).get("tokenizer") or {}).get("path")
        if not recorded:
            if gpt_file.suffix not in (".safetensors",):
                raise FileNotFoundError(f"--ckpt {gpt}: the authors' GPT-*.pt does not name its tokenizer; pass "
                                        "--tokenizer vfmtok-tokenizer.pt (or a tokenizer run)")
            raise FileNotFoundError(f"--ckpt {gpt}: no tokenizer recorded in its config.json (keys 'tokenizer' or "
                                    "'token_store'); pass --tokenizer RUN_OR_FILE")
        rec = Path(recorded)
        base = gpt if gpt.is_dir() else gpt.parent
        candidates = [rec] if rec.is_absolute() else [base / rec, rec]
        tok_path = next((c for c in candidates if c.exists()), None)
        if tok_path is None:
            raise FileNotFoundError(f"the tokenizer recorded by {gpt} ({recorded}) was not found; pass --tokenizer")
    else:
        tok_path = Path(tokenizer)
        if not tok_path.exists():
            raise FileNotFoundError(f"--tokenizer {tok_path}: not found (a tokenizer run directory, a .safetensors, "
                                    "or vfmtok-tokenizer.pt)")
    tok_file = _tokenizer_weights(tok_path)
    if not tok_file.is_file():
        raise FileNotFoundError(f"--tokenizer {tok_path}: no tokenizer.safetensors in this directory")
    return Checkpoints(gpt, gpt_file, run_cfg, tok_path, tok_file, auto)


def check_compatible(gpt_cfg: Any, tok_cfg: Any, gpt_src: Path, tok_src: Path) -> None:
    """Refuse a GPT/tokenizer pair whose vocabulary or sequence length differ.

    Raises:
        ValueError: vocab_size != codebook_size, or seq_len (grid_size^2) != num_tokens (names both files).
    """
    if gpt_cfg.vocab_size != tok_cfg.codebook_size:
        raise ValueError(f"GPT {gpt_src} has vocabulary {gpt_cfg.vocab_size} but tokenizer {tok_src} has "
                         f"{tok_cfg.codebook_size} codes: they were not trained together")
    if gpt_cfg.seq_len != tok_cfg.num_tokens:
        raise ValueError(f"GPT {gpt_src} generates {gpt_cfg.seq_len} tokens per image (grid {gpt_cfg.grid_size}) but "
                         f"tokenizer {tok_src} decodes {tok_cfg.num_tokens}: they were not trained together")


def verify_tokenizer_sha(run_cfg: dict[str, Any] | None, tok_sha: str, tok_src: Path, run_dir: Path | None = None
                         ) -> bool | None:
    """Compare the run's recorded "tokenizer_sha256" with the tokenizer file's sha256.

    Accepted: equal to the file sha256; or equal to the token store's tokenizer fingerprint ("weights_sha256"
    in `<token_store>/manifest.json`, a relative token_store taken from `run_dir`) when that manifest's
    "file_sha256" is this file's.

    Returns:
        True (verified), None (nothing recorded).

    Raises:
        ValueError: a recorded sha that matches neither (names both).
    """
    recorded = (run_cfg or {}).get("tokenizer_sha256")
    if not recorded:
        return None
    if recorded == tok_sha:
        return True
    store = (run_cfg or {}).get("token_store")
    if isinstance(store, str) and not Path(store).is_absolute() and run_dir is not None:
        store = str(run_dir / store)
    manifest = _read_json(Path(store) / "manifest.json") if isinstance(store, str) else None
    tok_info = (manifest or {}).get("tokenizer") or {}
    if tok_info.get("file_sha256") == tok_sha and tok_info.get("weights_sha256") == recorded:
        return True
    raise ValueError(f"tokenizer {tok_src} (sha256 {tok_sha[:16]}...) is not the one this GPT was trained with "
                     f"(recorded tokenizer_sha256 {str(recorded)[:16]}...); pass the right --tokenizer")


# ---------------------------------------------------------------------------------------------
# Distribution helpers (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)
# ---------------------------------------------------------------------------------------------






# ---------------------------------------------------------------------------------------------
# The output folder
# ---------------------------------------------------------------------------------------------
SAMPLES_FORMAT = "vfmtok.samples"
_OUR_ENTRIES = ("images", "parts", NPZ_NAME, GRID_NAME, CONFIG_NAME)


def _chunk_file(out: Path, chunk: int) -> Path:
    return out / "parts" / f"chunk_{chunk:06d}.npy"


def _clear(out: Path) -> None:
    """Remove only this job's artifacts from `out` (other files are left alone)."""
    for name in _OUR_ENTRIES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def prepare_dir(out: Path, settings: dict[str, Any], overwrite: bool, num_chunks: int, record: dict[str, Any]
                ) -> list[int] | None:
    """Make `out` ready and return the chunks still to sample (None: already complete with these settings).

    Raises:
        SampleDirError: `out` is a file; holds other files but no sample_config.json; or was made with other
            settings (lists the differing keys) -- unless `overwrite`, which removes only this job's artifacts.
    """
    if out.exists() and not out.is_dir():
        raise SampleDirError(f"--out {out} is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()):
        existing = _read_json(out / CONFIG_NAME)
        if existing is None or existing.get("format") != SAMPLES_FORMAT:
            if not overwrite:
                raise SampleDirError(f"--out {out} exists and is not a vfmtok sample folder (no {CONFIG_NAME}); "
                                     "choose another --out, or pass --overwrite (removes only images/, parts/, "
                                     f"{NPZ_NAME}, {GRID_NAME}, {CONFIG_NAME})")
            _clear(out)
        elif existing.get("settings") != settings:
            if not overwrite:
                old = existing.get("settings") or {}
                keys = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                detail = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in keys[:6])
                raise SampleDirError(f"--out {out} holds samples made with other settings ({detail}); choose "
                                     "another --out or pass --overwrite to replace them")
            _clear(out)
        elif existing.get("complete") and (out / NPZ_NAME).is_file():
            if not overwrite:
                return None
            _clear(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    if record["options"]["png"]:
        (out / "images").mkdir(exist_ok=True)
    _write_json_atomic(out / CONFIG_NAME, {**record, "complete": False})
    return [k for k in range(num_chunks) if not _chunk_file(out, k).is_file()]


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(pixels, "RGB").save(tmp, format="PNG", compress_level=4)
    os.replace(tmp, path)


def _commit_chunk(out: Path, chunk: int, start: int, pixels: np.ndarray, png: bool) -> None:
    """Write the chunk's PNGs, then its shard (the shard marks the chunk done)."""
    if png:
        for j, image in enumerate(pixels):
            _save_png(out / "images" / f"{start + j:06d}.png", image)
    shard = _chunk_file(out, chunk)
    tmp = shard.with_name(f".{shard.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, pixels, allow_pickle=False)
    os.replace(tmp, shard)


def render_grid(tiles: list[list[np.ndarray]], pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile rows of (S, S, 3) uint8 images with `pad` pixels of `fill` between and around them -> (H, W, 3) uint8."""
    side = tiles[0][0].shape[0]
    cols = max(len(row) for row in tiles)
    canvas = np.full((pad + len(tiles) * (side + pad), pad + cols * (side + pad), 3), fill, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, image in enumerate(row):
            y, x = pad + r * (side + pad), pad + c * (side + pad)
            canvas[y : y + side, x : x + side] = image
    return canvas


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
def _job_device(name: str, world: int, local_rank: int) -> torch.device:
    from vfmtok.device import resolve_device

    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    return device


def run_sample(ckpt: str | Path | None, tokenizer: str | Path | None, out: str | Path | None,
               options: SampleOptions, encoder_weights: str | Path | None = None, command: str | None = None,
               runs_root: str | Path = "runs", log=print) -> dict[str, Any]:
    """Run `vfmtok sample` (single process, or one rank under torchrun; see the module docstring).

    Args:
        ckpt: GPT run dir, `.safetensors`, authors' `GPT-*.pt`, or None (newest run under `runs_root`).
        tokenizer: tokenizer run dir / `.safetensors` / `vfmtok-tokenizer.pt`, or None (the run's record).
        out: output folder, or None for the default (`<run>/samples/<settings hash>` for our runs,
            `samples/<ckpt stem>-<settings hash>` for the authors' .pt).
        options: `SampleOptions`. encoder_weights: frozen-encoder weights for the tokenizer; decoding never
            reads them, so the default builds the encoder randomly initialised ("random").
        command: command line recorded in sample_config.json. log: printer for the one-line messages (rank 0).

    Returns:
        The sample_config.json record (on every rank; "complete" reflects rank 0's final state).

    Raises:
        ValueError: bad options, class ids outside [0, num_classes), incompatible GPT/tokenizer, tokenizer
            sha mismatch. SampleDirError: `out` must not be overwritten. FileNotFoundError: missing inputs.
    """
    options.validate()
    rank, world, local_rank, created = init_from_env()
    try:
        return _run(ckpt, tokenizer, out, options, encoder_weights, command, runs_root, log, rank, world, local_rank)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(ckpt, tokenizer, out, opts: SampleOptions, encoder_weights, command, runs_root, log, rank, world,
         local_rank) -> dict[str, Any]:
    from vfmtok import __version__
    from vfmtok.configs import config_to_dict
    from vfmtok.device import autocast_dtype
    from vfmtok.models.gpt import load_gpt
    from vfmtok.models.tokenizer import load_tokenizer

    say = log if rank == 0 else (lambda *_: None)
    started = time.time()
    ck = resolve_checkpoints(ckpt, tokenizer, runs_root)
    if ck.chosen_automatically:
        say(f"using the newest GPT run under {runs_root}/: {ck.gpt}")
    gpt = load_gpt(ck.gpt)
    labels = make_labels(opts.num_samples, gpt.config.num_classes, opts.classes, opts.labels, opts.seed)
    enc = str(encoder_weights) if encoder_weights is not None else "random"
    tok = load_tokenizer(ck.tokenizer, encoder_weights=enc)
    check_compatible(gpt.config, tok.config, ck.gpt, ck.tokenizer)
    device = _job_device(opts.device, world, local_rank)
    amp = autocast_dtype(opts.mixed_precision, device)

    shas = (sha256_file(ck.gpt_file), sha256_file(ck.tokenizer_file)) if rank == 0 else None
    gpt_sha, tok_sha = broadcast(shas, world)
    verified = verify_tokenizer_sha(ck.run_config, tok_sha, ck.tokenizer, ck.gpt if ck.gpt.is_dir() else ck.gpt.parent)
    n, d = opts.num_samples, opts.decode_batch
    settings = json.loads(json.dumps({
        "gpt_sha256": gpt_sha, "tokenizer_sha256": tok_sha, "num_samples": n,
        "classes": opts.classes, "labels": None if opts.classes is not None else opts.labels,
        "cfg_scale": opts.cfg_scale, "cfg_schedule": opts.cfg_schedule, "cfg_power": opts.cfg_power,
        "cfg_interval": opts.cfg_interval, "temperature": opts.temperature, "top_k": opts.top_k, "top_p": opts.top_p,
        "decode_batch": d, "image_size": opts.image_size, "seed": opts.seed, "device_type": device.type,
        "compute_dtype": "fp32" if amp is None else str(amp).replace("torch.", ""),
    }))
    settings_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    if out is None:
        if ck.run_config is not None:
            out = (ck.gpt if ck.gpt.is_dir() else ck.gpt.parent) / "samples" / settings_hash
        else:
            out = Path("samples") / f"{ck.gpt_file.stem}-{settings_hash}"
    out = Path(out)
    provenance = {k: ck.run_config[k] for k in ("tokenizer", "tokenizer_sha256", "token_store")
                  if ck.run_config and k in ck.run_config}
    record = {
        "format": SAMPLES_FORMAT, "format_version": 1, "vfmtok_version": __version__,
        "command": command if command is not None else " ".join(sys.argv),
        "settings": settings, "settings_hash": settings_hash, "options": asdict(opts),
        "gpt": {"path": str(ck.gpt.resolve()), "file": str(ck.gpt_file.resolve()), "sha256": gpt_sha,
                "config": config_to_dict(gpt.config), "run_provenance": provenance},
        "tokenizer": {"path": str(ck.tokenizer.resolve()), "file": str(ck.tokenizer_file.resolve()), "sha256": tok_sha,
                      "sha256_verified_against_run": verified, "encoder_weights": enc,
                      "config": config_to_dict(tok.config)},
        "labels_rule": ("classes[i % len(classes)]" if opts.classes is not None else
                        {"balanced": "i % num_classes",
                         "random": "floor(blake2b64('vfmtok-label:{seed}:{i}') * num_classes / 2^64)"}[opts.labels]),
        "num_samples": n, "num_classes": gpt.config.num_classes, "image_shape": [opts.image_size, opts.image_size, 3],
        "world_size": world, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }

    num_chunks = math.ceil(n / d)
    status: tuple[str, Any]
    if rank == 0:
        try:
            todo = prepare_dir(out, settings, opts.overwrite, num_chunks, record)
            status = ("complete", None) if todo is None else ("ok", todo)
        except (SampleDirError, OSError) as err:
            status = ("error", f"{type(err).__name__}: {err}")
    else:
        status = ("", None)
    status = broadcast(status, world)
    if status[0] == "error":
        raise SampleDirError(status[1].split(": ", 1)[1])
    if status[0] == "complete":
        say(f"{out} already holds these {n} samples (same settings); nothing to do (--overwrite to redo)")
        return _read_json(out / CONFIG_NAME) or record
    todo = status[1]
    if rank == 0 and len(todo) < num_chunks:
        say(f"resuming {out}: {num_chunks - len(todo)} of {num_chunks} chunks already done")

    mine = split_chunks(todo, world, rank)
    _sample_chunks(gpt.to(device), tok.to(device), labels, mine, out, opts, device, amp, rank, world)
    barrier(world)
    if rank == 0:
        record = _assemble(out, labels, num_chunks, opts, record, started)
        say(f"wrote {out / NPZ_NAME} ({n} images {opts.image_size}x{opts.image_size}), {out / GRID_NAME}"
            + (f", {out / 'images'}/" if opts.png else ""))
    return record


def _sample_chunks(gpt, tok, labels: np.ndarray, chunks: list[int], out: Path, opts: SampleOptions,
                   device: torch.device, amp, rank: int, world: int) -> None:
    """Generate, decode and commit `chunks` (this rank's share)."""
    from tqdm import tqdm

    from vfmtok.device import autocast
    from vfmtok.imageops import to_uint8
    from vfmtok.sampling import generate

    n, d = opts.num_samples, opts.decode_batch
    indices = [i for k in chunks for i in chunk_range(k, n, d)]
    bar = tqdm(total=len(indices), unit="img", desc=f"sample (rank 0 of {world})" if world > 1 else "sample",
               disable=rank != 0 or not opts.progress, dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=4)
    pending: list[Future] = []
    buffer: list[torch.Tensor] = []
    buffered, next_chunk = 0, 0
    try:
        for b in range(0, len(indices), opts.batch_size):
            idx = indices[b : b + opts.batch_size]
            with autocast(device, amp):
                codes = generate(gpt, torch.from_numpy(labels[idx]), cfg_scale=opts.cfg_scale,
                                 temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p, seed=opts.seed,
                                 cfg_schedule=opts.cfg_schedule, cfg_power=opts.cfg_power,
                                 cfg_interval=opts.cfg_interval, sample_indices=idx)
            buffer.append(codes)
            buffered += len(idx)
            while next_chunk < len(chunks):
                span = chunk_range(chunks[next_chunk], n, d)
                if buffered < len(span):
                    break
                joined = torch.cat(buffer)
                buffer, buffered = [joined[len(span) :]], buffered - len(span)
                with autocast(device, amp):
                    images = tok.decode_codes(joined[: len(span)])
                pixels = to_uint8(images, size=opts.image_size).cpu().numpy()
                while len(pending) >= 8:
                    pending.pop(0).result()
                pending.append(pool.submit(_commit_chunk, out, chunks[next_chunk], span.start, pixels, opts.png))
                next_chunk += 1
            bar.update(len(idx))
        for fut in pending:
            fut.result()
    finally:
        pool.shutdown(wait=True)
        bar.close()


def _assemble(out: Path, labels: np.ndarray, num_chunks: int, opts: SampleOptions, record: dict[str, Any],
              started: float) -> dict[str, Any]:
    """Rank 0: stream the shards into samples.npz, fill missing PNGs, write grid.png and the final config."""
    from PIL import Image

    from vfmtok.data.adm_npz import NpzWriter

    n, d, size = opts.num_samples, opts.decode_batch, opts.image_size
    rows = grid_rows(labels)
    wanted = {i for row in rows for i in row}
    tiles: dict[int, np.ndarray] = {}
    with NpzWriter(out / NPZ_NAME, count=n, height=size, width=size) as writer:
        for k in range(num_chunks):
            span = chunk_range(k, n, d)
            shard = _chunk_file(out, k)
            if not shard.is_file():
                raise RuntimeError(f"{shard} is missing after all ranks finished; rerun the same command to resume")
            pixels = np.load(shard, mmap_mode="r")
            if pixels.dtype != np.uint8 or pixels.shape != (len(span), size, size, 3):
                raise RuntimeError(f"{shard}: expected uint8 {(len(span), size, size, 3)}, got {pixels.dtype} "
                                   f"{pixels.shape}; rerun with --overwrite")
            writer.write(pixels, labels[span.start : span.stop])
            for j, i in enumerate(span):
                if i in wanted:
                    tiles[i] = np.array(pixels[j])
                if opts.png and not (out / "images" / f"{i:06d}.png").is_file():
                    (out / "images").mkdir(exist_ok=True)
                    _save_png(out / "images" / f"{i:06d}.png", np.array(pixels[j]))
            del pixels
    grid = render_grid([[tiles[i] for i in row] for row in rows])
    Image.fromarray(grid, "RGB").save(out / GRID_NAME, format="PNG")
    finished = time.time()
    counts = np.bincount(labels, minlength=record["num_classes"])
    record = {**record, "complete": True, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)),
              "seconds": round(finished - started, 3), "images_per_second": round(n / max(finished - started, 1e-9), 3),
              "classes_used": int((counts > 0).sum()), "grid_rows": rows,
              "outputs": {"npz": NPZ_NAME, "grid": GRID_NAME, "images": "images/" if opts.png else None}}
    _write_json_atomic(out / CONFIG_NAME, record)
    shutil.rmtree(out / "parts", ignore_errors=True)
    return record
