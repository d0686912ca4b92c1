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

Layout: `vfmtok.jobs.sample.options` (SampleOptions), `vfmtok.jobs.sample.plan` (labels, chunks, grid rows),
`vfmtok.jobs.sample.checkpoints` (step 1), `vfmtok.jobs.sample.output` (the output folder, resume, assembly), this
module (the job).
"""
from __future__ import annotations

import hashlib
import json
import math
import shlex
import sys
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfmtok.distributed import barrier, broadcast, init_from_env
from vfmtok.io.files import read_json_dict
from vfmtok.io.hashing import sha256_file
from vfmtok.jobs.sample.checkpoints import (check_compatible, resolve_checkpoints, unfinished_run_message,
                                           verify_tokenizer_sha)
from vfmtok.jobs.sample.options import SampleOptions
from vfmtok.jobs.sample.output import (CONFIG_NAME, GRID_NAME, NEAR_IDENTICAL_SPREAD, NPZ_NAME, SAMPLES_FORMAT,
                                      SampleDirError, assemble, commit_chunk, prepare_dir)
from vfmtok.jobs.sample.plan import chunk_range, make_labels, split_chunks

# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
_PRECISION_NAMES = {"fp32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _dtype_name(amp: torch.dtype | None) -> str:
    """'fp32' (no autocast), else the torch dtype name ('bfloat16', 'float16'), as stored in the settings."""
    return "fp32" if amp is None else str(amp).replace("torch.", "")


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
            reads them, so by default the tokenizer is loaded decode-only (no encoder built; recorded as
            "none (decode-only)").
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
    from vfmtok.models.gpt_io import load_gpt
    from vfmtok.models.tokenizer import DECODE_ONLY
    from vfmtok.models.tokenizer_io import load_tokenizer

    say = log if rank == 0 else (lambda *_: None)
    started = time.time()
    ck = resolve_checkpoints(ckpt, tokenizer, runs_root)
    if ck.chosen_automatically:
        say(f"using the newest GPT run under {runs_root}/: {ck.gpt}")
    unfinished = unfinished_run_message(ck.gpt, ck.run_config)
    if unfinished is not None and rank == 0:
        warnings.warn(unfinished, stacklevel=2)
    gpt = load_gpt(ck.gpt)
    class_names = (ck.run_config or {}).get("classes")
    labels = make_labels(opts.num_samples, gpt.config.num_classes, opts.classes, opts.labels, opts.seed, class_names)
    if encoder_weights is None:  # decoding never reads the frozen encoder: do not build it (304 M params for DINOv2-L)
        tok, enc = load_tokenizer(ck.tokenizer, with_encoder=False), DECODE_ONLY
    else:
        enc = str(encoder_weights)
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
        "compute_dtype": _dtype_name(amp),
        **({"decode": "compiled"} if opts.compile else {}),  # absent when off: older settings hashes stay valid
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
        "precision": {"requested": opts.mixed_precision, "effective": _PRECISION_NAMES[_dtype_name(amp)],
                      "device_type": device.type},
        "num_samples": n, "num_classes": gpt.config.num_classes, "image_shape": [opts.image_size, opts.image_size, 3],
        "class_names": class_names if class_names and len(class_names) == gpt.config.num_classes else None,
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
        for line in next_steps(out):
            say(line)
        return read_json_dict(out / CONFIG_NAME) or record
    todo = status[1]
    if rank == 0 and len(todo) < num_chunks:
        say(f"resuming {out}: {num_chunks - len(todo)} of {num_chunks} chunks already done")

    mine = split_chunks(todo, world, rank)
    _sample_chunks(gpt.to(device), tok.to(device), labels, mine, out, opts, device, amp, rank, world)
    barrier(world)
    if rank == 0:
        record = assemble(out, labels, num_chunks, opts, record, started)
        spread = record.get("pixel_spread")
        if spread is not None and spread < NEAR_IDENTICAL_SPREAD:
            warnings.warn(f"the {n} samples are near-identical (pixel spread across samples {spread:.3g} uint8 levels "
                          f"< {NEAR_IDENTICAL_SPREAD:g}): the tokenizer's decoder may ignore its codes, or the GPT "
                          f"collapsed; check {out / GRID_NAME}", stacklevel=2)
        say(f"wrote {n} images {opts.image_size}x{opts.image_size}" + (f" ({out / 'images'}/*.png)" if opts.png else ""))
        for line in next_steps(out):
            say(line)
    return record


def next_steps(out: Path) -> list[str]:
    """The lines `vfmtok sample` ends with: the output folder, samples.npz, grid.png and the evaluate command.

    `out` is printed as given (relative to the working directory when it was), so the command can be pasted.
    """
    npz = out / NPZ_NAME
    return [f"output folder: {out}", f"  samples: {npz}", f"  grid:    {out / GRID_NAME}",
            f"next: vfmtok evaluate {shlex.quote(str(npz))} --ref REF.npz   (REF.npz: e.g. VIRTUAL_imagenet256_labeled.npz, "
            "or `vfmtok prepare-data VAL OUT --npz REF.npz`)"]


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
                                 cfg_interval=opts.cfg_interval, sample_indices=idx, compile=opts.compile)
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
                pending.append(pool.submit(commit_chunk, out, chunks[next_chunk], span.start, pixels, opts.png))
                next_chunk += 1
            bar.update(len(idx))
        for fut in pending:
            fut.result()
    finally:
        pool.shutdown(wait=True)
        bar.close()
