"""`vfmtok evaluate`: ADM-suite metrics (IS, FID, sFID, precision, recall) in PyTorch."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from vfmtok.cli.common import (DEFAULT_NUM_WORKERS, DeviceOpt, MixedPrecision, NumWorkersOpt, ProgressOpt, clamp_workers,
                               fail, precision_option, warnings_as_lines)

PrecisionOpt = precision_option(
    "Applies to the Inception network of SAMPLES mode; default no: fp32 like the ADM TensorFlow evaluator "
    "(bf16/fp16 are faster on CUDA but shift the numbers).")


def command(
    samples: Annotated[Optional[Path], typer.Argument(
        metavar="SAMPLES",
        help="Sample batch npz (arr_0 uint8 N x H x W x 3), or a folder (a GPT run, a sample folder): its newest "
             "samples.npz is used (printed).")] = None,
    ref: Annotated[Optional[Path], typer.Option("--ref", help="Reference batch npz, e.g. VIRTUAL_imagenet256_labeled.npz.")] = None,
    inception_weights: Annotated[Optional[Path], typer.Option(
        "--inception-weights",
        help="TF-2015 Inception weights (pt_inception-2015-12-05-6726825d.pth). Default: $VFMTOK_INCEPTION_WEIGHTS, "
             "then the torch hub cache.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every metric plus provenance to this JSON file.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per Inception forward.")] = 64,
    allow_resize: Annotated[bool, typer.Option(
        "--allow-resize", help="Accept samples and reference of different resolutions (not comparable to papers).")] = False,
    is_shuffle_seed: Annotated[int, typer.Option(
        "--is-shuffle-seed", help="Seed of the permutation applied before the contiguous 5000-image IS splits.")] = 0,
    no_is_shuffle: Annotated[bool, typer.Option(
        "--no-is-shuffle", help="Keep the stored sample order for the IS splits (exactly what the TF evaluator does).")] = False,
    fid_method: Annotated[str, typer.Option(
        "--fid-method", help="Trace term of FID/sFID: sqrtm (ADM/TTUR numerics, default), eig (torch-fidelity), "
                             "eigh (symmetric form; same value, much faster on CPU).")] = "sqrtm",
    tokenizer: Annotated[Optional[Path], typer.Option(
        "--tokenizer", help="Tokenizer mode: run dir, .safetensors or the authors' .pt; scores reconstructions of --data.")] = None,
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="Tokenizer mode: prepared data folder or image folder (val split) of ground-truth images.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=2, help="Tokenizer mode: only the first N images.")] = None,
    encoder_weights: Annotated[Optional[Path], typer.Option(
        "--encoder-weights", help="Tokenizer mode: frozen-encoder weights (dinov2_vitl14_reg4_pretrain.pth) for a "
                                  "tokenizer file without them, e.g. the authors' vfmtok-tokenizer.pt.")] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Do not read or write the cached statistics of --ref (samples mode) or of the ground "
                           "truth of --data (tokenizer mode).")] = False,
    num_workers: NumWorkersOpt = DEFAULT_NUM_WORKERS,
    progress: ProgressOpt = True,
    device: DeviceOpt = "auto",
    mixed_precision: PrecisionOpt = MixedPrecision.no,
) -> None:
    """Score SAMPLES.npz against --ref REF.npz like OpenAI's ADM TensorFlow evaluator.

    Prints N and resolution of both files, then the evaluator's five lines (Inception Score, FID, sFID,
    Precision, Recall). Inception runs in fp32 by default (--mixed-precision bf16/fp16 is faster on CUDA but
    shifts the numbers). The metrics are deterministic (the IS shuffle uses --is-shuffle-seed). See
    docs/evaluate.md.
    """
    if tokenizer is not None or data is not None:
        if tokenizer is None or data is None or samples is not None or ref is not None:
            fail("tokenizer mode takes exactly --tokenizer RUN --data DATA (no SAMPLES.npz / --ref)")
        _tokenizer_mode(tokenizer, data, inception_weights, json_out, batch_size, limit, device,
                        None if no_is_shuffle else is_shuffle_seed, fid_method, encoder_weights, progress,
                        clamp_workers(num_workers), not no_cache)
        return
    if samples is None or ref is None:
        fail("usage: vfmtok evaluate SAMPLES.npz --ref REF.npz, or vfmtok evaluate --tokenizer RUN --data DATA")
    samples = _resolve_samples(samples)
    from vfmtok.jobs.evaluate import EvaluationInputError, evaluate_samples, format_adm_lines
    from vfmtok.metrics.reference import validate_image_npz
    from vfmtok.metrics.weights import InceptionWeightsError, InceptionWeightsNotFound

    if fid_method not in ("sqrtm", "eig", "eigh"):
        fail(f"--fid-method {fid_method!r}: expected sqrtm, eig or eigh")

    try:
        for role, path in (("samples", samples), ("reference", ref)):
            info = validate_image_npz(path, role)
            typer.echo(f"{role}: {info.path}  N={info.count}  {info.height}x{info.width}")
        with warnings_as_lines():
            result = evaluate_samples(
                samples, ref, inception_weights=inception_weights, batch_size=batch_size, device=device,
                mixed_precision=mixed_precision.value, allow_resize=allow_resize, is_shuffle_seed=None if no_is_shuffle else is_shuffle_seed,
                use_cache=not no_cache, progress=progress, fid_method=fid_method,
            )
    except (EvaluationInputError, InceptionWeightsNotFound, InceptionWeightsError, ValueError) as err:
        fail(str(err))
    w = result["inception_weights"]
    typer.echo(f"inception weights: {w['path']} sha256={w['sha256']} origin={w['origin']}")
    typer.echo(f"reference statistics: {result['reference']['statistics']}")
    for line in format_adm_lines(result):
        typer.echo(line)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")


def _newest_samples(folder: Path, max_depth: int = 4) -> Optional[Path]:
    """The newest (mtime) `samples.npz` at most `max_depth` folders below `folder`, or None."""
    found = [p for depth in range(max_depth + 1) for p in folder.glob("/".join(["*"] * depth + ["samples.npz"]))]
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


def _resolve_samples(samples: Path) -> Path:
    """SAMPLES as given: a file is used as is; a folder gives its newest samples.npz; a missing file fails with
    the newest samples.npz under ./runs as the one-line fix."""
    if samples.is_dir():
        newest = _newest_samples(samples)
        if newest is None:
            fail(f"SAMPLES {samples}: no samples.npz in this folder or below; run `vfmtok sample --ckpt RUN` first")
        typer.echo(f"samples: {newest} (newest samples.npz under {samples})")
        return newest
    if not samples.exists():
        hint = _newest_samples(Path("runs")) if Path("runs").is_dir() else None
        fix = (f"the newest samples are {hint}: `vfmtok evaluate {hint} --ref ...`" if hint is not None else
               "`vfmtok sample` prints where it writes samples.npz (by default under the GPT run's samples/ folder)")
        fail(f"SAMPLES {samples}: file not found; {fix}")
    return samples


def _tokenizer_mode(tokenizer: Path, data: Path, inception_weights: Optional[Path], json_out: Optional[Path],
                    batch_size: int, limit: Optional[int], device: str, is_shuffle_seed: Optional[int],
                    fid_method: str, encoder_weights: Optional[Path] = None, progress: bool = True,
                    num_workers: int = 0, use_cache: bool = True) -> None:
    """`--tokenizer RUN --data DATA`: rFID, rIS, PSNR, SSIM, codebook usage (see docs/evaluate.md)."""
    from vfmtok.jobs.evaluate_tokenizer import evaluate_tokenizer
    from vfmtok.metrics.weights import InceptionWeightsError, InceptionWeightsNotFound

    try:
        with warnings_as_lines():
            result = evaluate_tokenizer(str(tokenizer), str(data), inception_weights=inception_weights,
                                        batch_size=batch_size, limit=limit, device=device,
                                        is_shuffle_seed=is_shuffle_seed, fid_method=fid_method,
                                        encoder_weights=None if encoder_weights is None else str(encoder_weights),
                                        progress=progress, num_workers=num_workers, use_cache=use_cache)
    except (FileNotFoundError, InceptionWeightsNotFound, InceptionWeightsError, ValueError) as err:
        fail(str(err))
    typer.echo(f"tokenizer: {tokenizer}  image size {result['image_size']}  codebook {result['codebook_size']}")
    typer.echo(f"data: {data}  N={result['count']}  (both sides resized to {result['eval_size']})")
    w = result["inception_weights"]
    typer.echo(f"inception weights: {w['path']} sha256={w['sha256']} origin={w['origin']}")
    gt = result["gt_statistics"]
    typer.echo(f"ground-truth statistics: {gt['source']}" + (f" ({gt['cache_path']})" if gt["cache_path"] else ""))
    typer.echo(f"rFID: {result['rfid']}")
    typer.echo(f"rIS: {result['ris'] if result['ris'] is not None else result.get('ris_status')}")
    typer.echo(f"PSNR: {result['psnr']}")
    typer.echo(f"SSIM: {result['ssim']}")
    typer.echo(f"SSIM (official data_range=2 variant): {result['ssim_official_data_range_2']}")
    typer.echo(f"codebook usage: {result['codebook_usage']} ({result['codes_used']}/{result['codebook_size']} codes), "
               f"perplexity {result['codebook_perplexity']:.1f}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")
