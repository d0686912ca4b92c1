"""The `vfmtok reproduce` job: resolve the files, sample (the `sample` job, resumable, multi-GPU under torchrun),
evaluate (the ADM port of `evaluate`), and write `DIR/reproduce.json` and `DIR/reproduce.md`.

reproduce.json: {"target", "label", "runs": [per CFG scale: {"cfg_scale", "metrics", "paper", "paper_row",
"difference" (ours - paper), "samples", "markdown"}], "files": {role: {"path", "sha256"}}, "protocol": {N, label
scheme, seed, CFG scale/schedule/power, temperature, top-k, top-p, precision, TF32, image size and resize,
evaluator, IS shuffle seed}, "versions", "gpu", "wall_time_s", "command"}.
"""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vfmtok.io.files import read_json_dict, write_json_atomic, write_text_atomic
from vfmtok.io.hashing import sha256_file
from vfmtok.jobs.reproduce.files import resolve_files
from vfmtok.jobs.reproduce.targets import KEYS, Target, get_target

RESIZE = "tokenizer output bicubic-resized (no antialias) to the image size, uint8 = floor(clamp(127.5 v + 128))"


@dataclass
class ReproduceOptions:
    """Settings of `vfmtok reproduce` (CLI help and docs/reproduce.md). `cfg_scales` None = the target's default;
    `expected` = a previous reproduce.json whose metrics replace the paper's (the tiny CI target)."""

    target: str
    out: Path
    cfg_scales: list[float] | None = None
    num_samples: int = 50_000
    labels: str = "balanced"
    seed: int = 0
    files: dict[str, str | None] = field(default_factory=dict)
    files_dir: str | None = None
    offline: bool = False
    fetch_only: bool = False
    expected: str | None = None
    image_size: int = 256
    batch_size: int = 32
    eval_batch_size: int = 64
    device: str = "auto"
    mixed_precision: str = "bf16"
    progress: bool = True
    limit: int | None = None
    fid_method: str = "sqrtm"


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    from vfmtok import __version__

    out = {"vfmtok": __version__, "python": platform.python_version()}
    for pkg in ("torch", "numpy", "scipy", "timm", "safetensors", "huggingface_hub"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _gpu() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none (CPU)"
    return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"


def markdown_row(target: Target, cfg: float, n: int, metrics: dict[str, Any], paper: dict[str, float]) -> str:
    """`| label | cfg | N | FID ours (paper) | sFID | IS | Prec | Rec |` for generators; rFID/rIS/PSNR/SSIM for
    the tokenizer. Missing values print as "-"."""
    keys = ("rfid", "ris", "psnr", "ssim") if target.kind == "tokenizer" else KEYS

    def cell(k: str) -> str:
        ours = metrics.get(k)
        text = "-" if ours is None else f"{ours:.4g}" if k in ("psnr", "ssim", "precision", "recall") else f"{ours:.3f}"
        return f"{text} ({paper[k]})" if k in paper else text

    head = f"| {target.label} | " + ("- " if target.kind == "tokenizer" else f"cfg {cfg:g} ") + f"| N={n} |"
    return head + "".join(f" {cell(k)} |" for k in keys)


def run_reproduce(opts: ReproduceOptions, command: str | None = None, log=print) -> dict[str, Any] | None:
    """Run a target end to end (module docstring). Returns the reproduce.json record (None with `fetch_only`
    and on ranks other than 0 under torchrun).

    Raises:
        KeyError: unknown target. MissingFiles: inputs missing (before any work). ValueError: bad options.
    """
    target = get_target(opts.target)
    started = time.time()
    if opts.labels not in ("balanced", "random"):
        raise ValueError(f"--labels {opts.labels!r}: expected balanced or random")
    paths = resolve_files(target, opts.files, opts.files_dir, opts.offline, opts.progress, log)
    if opts.fetch_only:
        log("all input files present:\n" + "\n".join(f"  {k}: {v}" for k, v in paths.items()))
        return None
    expected = None
    if opts.expected is not None:
        doc = read_json_dict(opts.expected)
        if doc is None or not doc.get("runs"):
            raise ValueError(f"--expected {opts.expected}: not a reproduce.json with runs")
        expected = {r["cfg_scale"]: r["metrics"] for r in doc["runs"]}
    scales = opts.cfg_scales or [target.cfg_scale]
    out = Path(opts.out)
    runs = []
    if target.kind == "tokenizer":
        runs.append(_tokenizer_run(target, paths, opts, log))
    else:
        for scale in scales:
            run = _generator_run(target, paths, opts, scale, out, command, log)
            if run is None:
                return None  # not rank 0
            runs.append(run)
    for run in runs:
        paper, note = (target.paper(run["cfg_scale"]) if expected is None else
                       (expected.get(run["cfg_scale"], {}), f"expected values from {opts.expected}"))
        paper = {k: v for k, v in paper.items() if isinstance(v, (int, float))}
        run["paper"], run["paper_row"] = paper, note
        run["difference"] = {k: run["metrics"][k] - v for k, v in paper.items() if run["metrics"].get(k) is not None}
        run["markdown"] = markdown_row(target, run["cfg_scale"], run.get("num_samples", opts.num_samples),
                                       run["metrics"], paper)
    record = {
        "target": target.name, "label": target.label, "runs": runs,
        "files": {role: {"path": str(Path(p).resolve()),
                         "sha256": sha256_file(p) if Path(p).is_file() else "folder"} for role, p in paths.items()},
        "protocol": _protocol(target, opts, scales), "versions": _versions(), "gpu": _gpu(),
        "platform": platform.platform(), "wall_time_s": round(time.time() - started, 3),
        "command": command if command is not None else " ".join(sys.argv),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "reproduce.json", record)
    write_text_atomic(out / "reproduce.md", "\n".join(r["markdown"] for r in runs) + "\n")
    return record


def _protocol(target: Target, opts: ReproduceOptions, scales: list[float]) -> dict[str, Any]:
    import torch

    from vfmtok.metrics.inception_score import DEFAULT_SHUFFLE_SEED

    common = {"seed": opts.seed, "precision": opts.mixed_precision, "device": opts.device,
              "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32), "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
              "evaluator": "vfmtok PyTorch port of the ADM evaluator (TF-2015 Inception, TF1 bilinear resize to 299)",
              "is_shuffle_seed": DEFAULT_SHUFFLE_SEED, "fid_method": opts.fid_method}
    if target.kind == "tokenizer":
        return {**common, "data": "ImageNet val, ADM centre crop to the tokenizer's size, both sides resized to 256",
                "limit": opts.limit}
    return {**common, "num_samples": opts.num_samples,
            "labels": {"balanced": "label_i = i mod 1000 (50 per class at N = 50000)",
                       "random": "uniform, BLAKE2b of (seed, i)"}[opts.labels],
            "cfg_scales": scales, "cfg_schedule": target.cfg_schedule, "cfg_power": target.cfg_power,
            "cfg_interval": -1, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "image_size": opts.image_size,
            "resize": RESIZE, "reference": "VIRTUAL_imagenet256_labeled.npz (ADM)" if target.name != "tiny" else "tiny"}


def _generator_run(target: Target, paths: dict[str, Path], opts: ReproduceOptions, scale: float, out: Path,
                   command: str | None, log) -> dict[str, Any] | None:
    import os
    from vfmtok.jobs.evaluate import evaluate_samples
    from vfmtok.jobs.sample.job import run_sample
    from vfmtok.jobs.sample.options import SampleOptions

    sample_opts = SampleOptions(
        num_samples=opts.num_samples, labels=opts.labels, cfg_scale=scale, cfg_schedule=target.cfg_schedule,
        cfg_power=target.cfg_power, temperature=1.0, top_k=0, top_p=1.0, batch_size=opts.batch_size,
        image_size=opts.image_size, png=False, seed=opts.seed, device=opts.device,
        mixed_precision=opts.mixed_precision, progress=opts.progress)
    sample_dir = out / f"samples-cfg{scale:g}"
    run_sample(paths["ckpt"], paths["tokenizer"], sample_dir, sample_opts, command=command, log=log)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 evaluates
        return None
    result = evaluate_samples(sample_dir / "samples.npz", paths["ref"], inception_weights=paths["inception_weights"],
                              batch_size=opts.eval_batch_size, device=opts.device, progress=opts.progress,
                              fid_method=opts.fid_method)
    metrics = {k: result[k] for k in KEYS}
    log(f"cfg {scale:g}: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))
    return {"cfg_scale": scale, "num_samples": opts.num_samples, "metrics": metrics,
            "samples": str(sample_dir / "samples.npz"), "evaluation": {k: result[k] for k in (
                "inception_score_status", "warnings", "reference", "inception_weights", "protocol")}}


def _tokenizer_run(target: Target, paths: dict[str, Path], opts: ReproduceOptions, log) -> dict[str, Any]:
    from vfmtok.jobs.evaluate_tokenizer import evaluate_tokenizer

    result = evaluate_tokenizer(str(paths["tokenizer"]), str(paths["data"]), inception_weights=paths["inception_weights"],
                                batch_size=opts.eval_batch_size, limit=opts.limit, device=opts.device,
                                encoder_weights=str(paths["encoder_weights"]), progress=opts.progress,
                                fid_method=opts.fid_method)
    metrics = {k: result.get(k) for k in ("rfid", "ris", "psnr", "ssim", "codebook_usage")}
    log("tokenizer: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))
    return {"cfg_scale": 1.0, "num_samples": result.get("count"), "metrics": metrics}
