"""`vfmtok reproduce TARGET`: the paper's number in one command (files, sampling, evaluation, comparison)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from vfmtok.cli.common import DeviceOpt, MixedPrecision, ProgressOpt, SeedOpt, fail, precision_option

PrecisionOpt = precision_option(
    "Applies to sampling (GPT, KV cache, decoder); the evaluation's Inception network always runs fp32.")


def _scales(cfg_scale: Optional[float], sweep: Optional[str]) -> list[float] | None:
    if cfg_scale is not None and sweep is not None:
        fail("give --cfg-scale or --sweep, not both")
    if sweep is not None:
        try:
            return [float(v) for v in sweep.split(",") if v.strip()]
        except ValueError:
            fail(f"--sweep {sweep!r}: expected comma-separated numbers, e.g. 1.0,1.25,1.5")
    return None if cfg_scale is None else [cfg_scale]


def command(
    target: Annotated[Optional[str], typer.Argument(
        metavar="TARGET",
        help="gpt-b, gpt-l, gpt-xl, gpt-xxl, gpt-2b, gpt-3b, rar-l-ultra, rar-l, rar-xl, rar-xxl, tokenizer "
             "(or nothing with --tiny).")] = None,
    cfg_scale: Annotated[Optional[float], typer.Option(
        "--cfg-scale", help="Guidance scale. Default: the paper's published setting (GPT: 1.0, compared with the "
                            "without-CFG row; RAR: the authors' config).")] = None,
    sweep: Annotated[Optional[str], typer.Option("--sweep", help="Several scales, e.g. 1.0,1.25,1.5,1.75,2.0.")] = None,
    num_samples: Annotated[int, typer.Option("-n", "--num-samples", min=1, help="Samples per scale.")] = 50_000,
    labels: Annotated[str, typer.Option("--labels", help="balanced (i mod 1000: 50 per class) or random.")] = "balanced",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default reproduce/TARGET).")] = None,
    files: Annotated[Optional[Path], typer.Option(
        "--files", help="A folder holding the input files under their published names (searched before the "
                        "caches and the network).")] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Tokenizer file/run or Hub reference.")] = None,
    ckpt: Annotated[Optional[str], typer.Option("--ckpt", help="Generator file/run or Hub reference.")] = None,
    inception_weights: Annotated[Optional[str], typer.Option(
        "--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (with the IS layer).")] = None,
    ref: Annotated[Optional[str], typer.Option("--ref", help="VIRTUAL_imagenet256_labeled.npz.")] = None,
    encoder_weights: Annotated[Optional[str], typer.Option(
        "--encoder-weights", help="tokenizer target: dinov2_vitl14_reg4_pretrain.pth.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="tokenizer target: the ImageNet val folder.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=2, help="tokenizer target: first N images only.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never use the network (also: HF_HUB_OFFLINE=1).")] = False,
    fetch_only: Annotated[bool, typer.Option("--fetch-only", help="Resolve/download the inputs, then stop "
                                                                  "(do this once before a torchrun launch).")] = False,
    tiny: Annotated[bool, typer.Option("--tiny", help="CI mode: the same path on a tiny model pair given with "
                                                      "--tokenizer/--ckpt/--ref/--inception-weights.")] = False,
    expected: Annotated[Optional[Path], typer.Option(
        "--expected", help="A previous reproduce.json whose metrics are the expected values (instead of the "
                           "paper's).")] = None,
    image_size: Annotated[int, typer.Option("--image-size", min=1, help="Sample side (paper: 256).")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="GPT batch per process.")] = 32,
    eval_batch_size: Annotated[int, typer.Option("--eval-batch-size", min=1, help="Inception batch.")] = 64,
    fid_method: Annotated[str, typer.Option(
        "--fid-method", help="sqrtm (ADM numerics, default), eig or eigh (same value, much faster on CPU).")] = "sqrtm",
    progress: ProgressOpt = True,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    mixed_precision: PrecisionOpt = MixedPrecision.bf16,
) -> None:
    """Reproduce one of the paper's numbers: fetch every file, sample, evaluate, compare.

    Files come from the options, then --files DIR, then the standard caches, then the network (Hugging Face Hub
    for the authors' files, the documented URLs for the others); offline, every missing file is listed with its
    URL before anything runs. Writes DIR/reproduce.json (metrics, the paper's values and the differences, input
    sha256s, the full protocol, versions, GPU, wall time) and DIR/reproduce.md (a table row). Sampling is
    resumable and runs on several GPUs under torchrun. See docs/reproduce.md.
    """
    from vfmtok.jobs.reproduce.files import MissingFiles
    from vfmtok.jobs.reproduce.job import ReproduceOptions, run_reproduce

    if tiny:
        if target not in (None, "tiny"):
            fail("--tiny runs the tiny CI target; do not name another target")
        target = "tiny"
    if fid_method not in ("sqrtm", "eig", "eigh"):
        fail(f"--fid-method {fid_method!r}: expected sqrtm, eig or eigh")
    if target is None:
        fail("name a target (e.g. vfmtok reproduce gpt-b) or pass --tiny")
    opts = ReproduceOptions(
        target=target, out=out or Path("reproduce") / target, cfg_scales=_scales(cfg_scale, sweep),
        num_samples=num_samples, labels=labels, seed=seed,
        files={"tokenizer": tokenizer, "ckpt": ckpt, "inception_weights": inception_weights, "ref": ref,
               "encoder_weights": encoder_weights, "data": data},
        files_dir=None if files is None else str(files), offline=offline, fetch_only=fetch_only,
        expected=None if expected is None else str(expected), image_size=image_size, batch_size=batch_size,
        eval_batch_size=eval_batch_size, device=device, mixed_precision=mixed_precision.value, progress=progress,
        limit=limit, fid_method=fid_method)
    try:
        record = run_reproduce(opts, command=shlex.join(["vfmtok", *sys.argv[1:]]), log=typer.echo)
    except MissingFiles as err:
        fail(str(err))
    except (KeyError, RuntimeError, FileNotFoundError, ValueError) as err:
        fail(f"reproduce: {err.args[0] if isinstance(err, KeyError) else err}")
    if record is not None:
        typer.echo(f"wrote {opts.out / 'reproduce.json'}")
        for run in record["runs"]:
            typer.echo(run["markdown"])
