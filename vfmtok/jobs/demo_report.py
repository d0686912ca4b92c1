"""Demo reporting: the class-consistency check of generated samples and the final summary table.

Used by `make demo` (scripts/demo.sh) and by the end-to-end test:

    python -m vfmtok.jobs.demo_report class-check SAMPLES.npz TRAIN_DATA --inception-weights W.pth --json OUT.json
    python -m vfmtok.jobs.demo_report psnr-baselines TRAIN_DATA VAL_DATA --size 56 --json OUT.json
    python -m vfmtok.jobs.demo_report summary DEMO_DIR

Class check (issue #9 quality floor): every generated sample is assigned to the nearest class mean of the
training photos' features (Euclidean distance); the reported number is the fraction assigned to the class
it was generated for. Features are Inception-v3 pool3 (2048-d, the FID network) when weights are given,
otherwise the tokenizer's frozen-encoder features (mean over patch tokens of the last level). With
`--reference reconstructions` the class means are taken over the tokenizer's reconstructions of the training
photos (at the generator's resolution, upsampled as `vfmtok sample` does), so a blurry demo tokenizer does not
hide whether the GPT generates the right class; the demo uses it and also prints the plain-photo figure.

PSNR baselines (to read the tokenizer's PSNR): on the same ADM centre crops of the validation images that
`vfmtok evaluate --tokenizer` scores, and under its protocol (uint8, PIL bicubic to 256 px), the PSNR of two
reconstructions that carry no detail of the image: its own mean colour (a flat image), and the mean image of its
class's training crops (what a tokenizer that only recognised the class could output). A tokenizer whose PSNR is
not above both has learnt nothing image-specific.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import numpy as np
import typer

if TYPE_CHECKING:
    from vfmtok.models.tokenizer import VFMTokenizer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


def _centre_crops(train_dir: Path, size: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """ADM-centre-cropped uint8 (M, size, size, 3) images of a prepared folder, at most `per_class` per class, + labels."""
    from PIL import Image

    from vfmtok.data.crops import adm_center_crop
    from vfmtok.data.datasets import PreparedDataset

    ds = PreparedDataset(train_dir)
    taken: dict[int, int] = {}
    images, labels = [], []
    for i in range(len(ds)):
        label = int(ds.labels[i])
        if taken.get(label, 0) >= per_class:
            continue
        taken[label] = taken.get(label, 0) + 1
        image, _ = ds[i]
        images.append(adm_center_crop(Image.fromarray(image), size))
        labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _inception_features(images: np.ndarray, weights: Path, batch_size: int = 32) -> np.ndarray:
    import torch

    from vfmtok.metrics.inception import InceptionFeatureExtractor
    from vfmtok.metrics.weights import load_inception_weights

    state, info = load_inception_weights(weights)
    net = InceptionFeatureExtractor(state, has_fc=info.has_fc)
    feats = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            feats.append(net(images[start : start + batch_size]).pool3.double().numpy())
    return np.concatenate(feats)


def _encoder_features(images: np.ndarray, tok: VFMTokenizer, batch_size: int = 16) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    from vfmtok.imageops import from_uint8

    feats = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = from_uint8(torch.from_numpy(images[start : start + batch_size]))
            x = F.interpolate(x, size=(tok.config.image_size,) * 2, mode="bicubic", align_corners=False)
            levels = tok.vfm(x)
            feats.append(levels[-1].mean(dim=1).double().numpy())
    return np.concatenate(feats)


def nearest_class_mean(train_feats: np.ndarray, train_labels: np.ndarray, sample_feats: np.ndarray) -> np.ndarray:
    """Index of the nearest class mean (Euclidean) for every sample.

    Args:
        train_feats: (M, D) features of the training images; train_labels: (M,) int class ids.
        sample_feats: (N, D) features of the samples.

    Returns:
        (N,) int64 class ids (ids that have no training image are never predicted).
    """
    classes = np.unique(train_labels)
    means = np.stack([train_feats[train_labels == c].mean(axis=0) for c in classes])
    d2 = ((sample_feats[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    return classes[np.argmin(d2, axis=1)].astype(np.int64)


def _as_generated(crops: np.ndarray, size: int) -> np.ndarray:
    """uint8 (M, S, S, 3) crops -> uint8 (M, size, size, 3) resized exactly as `vfmtok sample` turns decoder output
    into images (bicubic, no antialias, before rounding); unchanged when S == size."""
    import torch

    from vfmtok.imageops import from_uint8, to_uint8

    if crops.shape[1] == size:
        return crops
    return to_uint8(from_uint8(torch.from_numpy(crops)), size=size).numpy()


def _reconstruct(images: np.ndarray, tok: VFMTokenizer, size: int, batch_size: int = 16) -> np.ndarray:
    """uint8 (M, S, S, 3) crops at the tokenizer's resolution -> decode(encode(x)) as uint8 (M, size, size, 3),
    resized exactly as `vfmtok sample` resizes decoder output (bicubic, no antialias, before rounding)."""
    import torch

    from vfmtok.imageops import from_uint8, to_uint8

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = from_uint8(torch.from_numpy(images[start : start + batch_size]))
            out.append(to_uint8(tok.decode_codes(tok.encode(x)), size=size).numpy())
    return np.concatenate(out)


def class_check(samples_npz: Path, train_dir: Path, inception_weights: Optional[Path] = None,
                tokenizer: Optional[Path] = None, per_class: int = 8, native_size: Optional[int] = None,
                reference: str = "photos") -> dict:
    """Fraction of samples whose nearest training-class mean is their own class.

    Args:
        samples_npz: ADM-format samples (`arr_0` uint8 N x H x W x 3, `arr_1` int64 labels).
        train_dir: prepared training data (`vfmtok prepare-data` output).
        inception_weights: FID Inception weights file; when None, `tokenizer` is required.
        tokenizer: tokenizer run (encoder features are used when no Inception weights are given).
        per_class: training images per class for the class means.
        native_size: the generator's own resolution (the tokenizer's `image_size`) when the samples were
            upsampled from it; the training crops are then taken at that size and upsampled the same way, so
            the check compares content, not sharpness. None: the tokenizer's `image_size` when `tokenizer` is
            given, else the samples' size.
        reference: "photos": class means of the training crops themselves; "reconstructions": class means of
            the same crops passed through the tokenizer (`decode(encode(x))`, needs `tokenizer`), i.e. how the
            tokenizer renders class k; this asks whether the generator produces class k independently of the
            tokenizer's blur (with Inception features, blurry decodes of real val photos land near the sharp
            photos' means of the wrong class, so "photos" measures sharpness more than class). The other reference's fraction is reported too (`fraction_vs_photos` /
            `fraction_vs_reconstructions`) when a tokenizer is given.

    Returns:
        dict with `fraction` (against `reference`), `reference`, `fraction_vs_<other reference>` (when both
        could be computed), `chance` (1 / number of classes), `feature`, `n`, `train_images_per_class`,
        `train_resolution` and `per_class_fraction`.

    Raises:
        ValueError: the samples have no labels, neither feature source is given, reference is unknown or
            "reconstructions" without `tokenizer`, or `native_size` differs from the tokenizer's `image_size`.
    """
    if reference not in ("photos", "reconstructions"):
        raise ValueError(f"class check: reference must be 'photos' or 'reconstructions', got {reference!r}")
    if reference == "reconstructions" and tokenizer is None:
        raise ValueError("class check: reference 'reconstructions' needs --tokenizer")
    from vfmtok.data.adm_npz import read_npz_array
    from vfmtok.models.tokenizer_io import load_tokenizer

    tok = None if tokenizer is None else load_tokenizer(tokenizer).eval()
    if tok is not None:
        if native_size is None:
            native_size = tok.config.image_size
        elif native_size != tok.config.image_size:
            raise ValueError(f"class check: --native-size {native_size} but the tokenizer {tokenizer} works at "
                             f"{tok.config.image_size} px; omit --native-size to use the tokenizer's")

    images = read_npz_array(samples_npz, "arr_0")
    try:
        labels = read_npz_array(samples_npz, "arr_1").astype(np.int64)
    except KeyError as err:
        raise ValueError(f"{samples_npz}: no arr_1 labels; the class check needs them") from err
    size = images.shape[1]
    native = native_size or size
    crops, train_labels = _centre_crops(train_dir, native, per_class)
    if inception_weights is not None:
        feature = "inception-pool3"

        def features(x: np.ndarray) -> np.ndarray:
            return _inception_features(x, inception_weights)
    elif tok is not None:
        feature = "tokenizer-encoder"

        def features(x: np.ndarray) -> np.ndarray:
            return _encoder_features(x, tok)
    else:
        raise ValueError("class check needs --inception-weights or --tokenizer for features")
    sample_feats = features(images)
    references = {"photos": _as_generated(crops, size)}
    if tok is not None:
        references["reconstructions"] = _reconstruct(crops, tok, size)
    predictions = {ref: nearest_class_mean(features(ref_images), train_labels, sample_feats)
                   for ref, ref_images in references.items()}
    fractions = {ref: float((pred == labels).mean()) for ref, pred in predictions.items()}
    predicted = predictions[reference]
    per_class_fraction = {int(c): float((predicted[labels == c] == c).mean()) for c in np.unique(labels)}
    extra = {f"fraction_vs_{ref}": frac for ref, frac in fractions.items() if ref != reference}
    return {
        "fraction": fractions[reference],
        "reference": reference,
        **extra,
        "chance": 1.0 / len(np.unique(train_labels)),
        "feature": feature,
        "n": int(len(labels)),
        "train_images_per_class": per_class,
        "train_resolution": f"{native} px crops" + (f" -> {size} px bicubic" if native != size else ""),
        "per_class_fraction": per_class_fraction,
    }


@app.command("class-check")
def class_check_cmd(
    samples: Annotated[Path, typer.Argument(help="samples.npz with arr_1 labels")],
    train: Annotated[Path, typer.Argument(help="prepared training data folder")],
    inception_weights: Annotated[Optional[Path], typer.Option("--inception-weights")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option("--tokenizer")] = None,
    per_class: Annotated[int, typer.Option("--per-class")] = 8,
    native_size: Annotated[Optional[int], typer.Option(
        "--native-size", help="generator resolution the samples were upsampled from (default: the --tokenizer's "
        "image_size, else the samples' size)")] = None,
    reference: Annotated[str, typer.Option(
        "--reference", help="photos | reconstructions (class means of the tokenizer's decodes of the photos)")] = "photos",
    json_out: Annotated[Optional[Path], typer.Option("--json")] = None,
) -> None:
    """Assign each sample to the nearest training-class mean; print the fraction assigned to its own class."""
    try:
        result = class_check(samples, train, inception_weights, tokenizer, per_class, native_size, reference)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(f"class check ({result['feature']}, class means of the training {reference}): {result['fraction']:.3f} "
               f"of {result['n']} samples nearest to their own class mean (chance {result['chance']:.3f})")
    for key in ("fraction_vs_photos", "fraction_vs_reconstructions"):
        if key in result:
            typer.echo(f"  {key}: {result[key]:.3f}")
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")


def psnr_baselines(train_dir: Path, val_dir: Path, size: int, eval_size: int = 256) -> dict:
    """PSNR (dB, per image, averaged) of two detail-free stand-ins for each validation image, measured exactly as
    `vfmtok evaluate --tokenizer` measures reconstructions, so the numbers are directly comparable.

    Protocol (`vfmtok.jobs.evaluate_tokenizer`): ADM centre crop at `size`; the stand-in (float, [0, 1]) and the crop
    both go to uint8 by clamp(127.5 x + 128) on [-1, 1], are PIL-bicubic-resized to `eval_size` and compared as
    [0, 1] floats.

    Args:
        train_dir, val_dir: prepared data folders (`vfmtok prepare-data` output) with the same classes.
        size: crop side in pixels (the tokenizer's `image_size`).
        eval_size: side both images are resized to before PSNR (256, as `evaluate`).

    Returns:
        dict with `mean_colour_psnr` (the image's own per-channel mean colour, flat), `class_mean_psnr` (the
        pixel-wise mean of all training crops of its class), `count` (validation images), `size`, `eval_size`.

    Raises:
        ValueError: a validation class has no training image.
    """
    import torch

    from vfmtok.metrics.recon import psnr
    from vfmtok.jobs.evaluate_tokenizer import to_uint8_resized

    def crops(folder: Path) -> tuple[torch.Tensor, np.ndarray]:
        images, labels = _centre_crops(folder, size, per_class=10**9)
        return torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255.0, labels

    def as_evaluated(x: torch.Tensor) -> torch.Tensor:  # [0, 1] (B, 3, S, S) -> [0, 1] (B, 3, E, E), via uint8
        return torch.from_numpy(to_uint8_resized(x * 2 - 1, eval_size)).permute(0, 3, 1, 2).double() / 255.0

    train, train_labels = crops(train_dir)
    val, val_labels = crops(val_dir)
    missing = sorted(set(val_labels.tolist()) - set(train_labels.tolist()))
    if missing:
        raise ValueError(f"{val_dir}: classes {missing} have no training image in {train_dir}")
    class_means = {int(c): train[torch.from_numpy(train_labels == c)].mean(0) for c in np.unique(train_labels)}
    class_mean_images = torch.stack([class_means[int(c)] for c in val_labels])
    flat = val.mean(dim=(2, 3), keepdim=True).expand_as(val)
    truth = as_evaluated(val)
    return {
        "mean_colour_psnr": float(psnr(as_evaluated(flat), truth).mean()),
        "class_mean_psnr": float(psnr(as_evaluated(class_mean_images), truth).mean()),
        "count": int(len(val)),
        "size": int(size),
        "eval_size": int(eval_size),
    }


@app.command("psnr-baselines")
def psnr_baselines_cmd(
    train: Annotated[Path, typer.Argument(help="prepared training data folder")],
    val: Annotated[Path, typer.Argument(help="prepared validation data folder")],
    size: Annotated[int, typer.Option("--size", help="tokenizer image_size (pixels)")],
    eval_size: Annotated[int, typer.Option("--eval-size", help="PSNR resolution (256, as evaluate)")] = 256,
    json_out: Annotated[Optional[Path], typer.Option("--json")] = None,
) -> None:
    """PSNR of detail-free stand-ins (mean colour, class-mean image) for the validation crops."""
    result = psnr_baselines(train, val, size, eval_size)
    typer.echo(f"PSNR baselines ({size} px crops, compared at {eval_size} px as evaluate does) on {result['count']} "
               "val images: own mean colour "
               f"{result['mean_colour_psnr']:.2f} dB, class-mean image {result['class_mean_psnr']:.2f} dB")
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


PSNR_NOTE = ("the tokenizer PSNR above differs from the psnr in the training log (runs/tokenizer/metrics.jsonl): "
             "it is measured on held-out val crops with the EMA weights, after both images are converted to uint8 and "
             "resized to 256 px as `vfmtok evaluate` does; the log's is the raw model's, on the training batch, at the "
             "tokenizer's own resolution, in [-1, 1] floats.")


ENVIRONMENT_NOTE = ("measured with torch {torch}, {cpu_capability} CPU kernels, {threads} threads: the figures "
                    "repeat exactly on this kind of machine, but another CPU instruction set rounds differently and "
                    "trains to somewhat different figures (docs/quickstart.md, 'Why the figures differ between "
                    "machines').")


@app.command("summary")
def summary_cmd(out: Annotated[Path, typer.Argument(help="demo output folder")]) -> None:
    """Print the demo's final table: each metric and each step's wall time, and the numerics environment
    (`vfmtok.device.numerics_environment`) that decides the exact figures; write OUT/summary.json with keys
    `metrics`, `timings_s`, `recon_grid`, `sample_grid` and `environment`."""
    from vfmtok.device import numerics_environment

    tok = _load(out / "eval_tokenizer.json")
    smp = _load(out / "eval_samples.json")
    cls = _load(out / "class_check.json")
    base = _load(out / "psnr_baselines.json")
    metrics_rows = [
        ("tokenizer rFID (val, 256 px)", tok.get("rfid")),
        ("tokenizer PSNR (dB, val, 256 px)", tok.get("psnr")),
        ("  baseline: class-mean image PSNR (dB)", base.get("class_mean_psnr")),
        ("  baseline: own mean colour PSNR (dB)", base.get("mean_colour_psnr")),
        ("tokenizer SSIM", tok.get("ssim")),
        ("tokenizer codebook usage", tok.get("codebook_usage")),
        ("samples FID vs val ref", smp.get("fid")),
        ("samples sFID", smp.get("sfid")),
        ("samples precision", smp.get("precision")),
        ("samples recall", smp.get("recall")),
        ("samples in own class (nearest class mean)", cls.get("fraction")),
        ("  same, class means of the raw photos", cls.get("fraction_vs_photos")),
    ]
    timings = []
    tsv = out / "timings.tsv"
    if tsv.is_file():
        for line in tsv.read_text().splitlines():
            name, seconds = line.split("\t")
            timings.append((name, int(seconds)))
    typer.echo("\n==================== vfmtok demo summary ====================")
    typer.echo(f"{'metric':<44} value")
    for name, value in metrics_rows:
        typer.echo(f"{name:<44} {_fmt(value)}")
    typer.echo(f"\n{'step':<44} seconds")
    for name, seconds in timings:
        typer.echo(f"{name:<44} {seconds}")
    typer.echo(f"{'total':<44} {sum(s for _, s in timings)}")
    typer.echo(f"\nreconstructions (inputs above, reconstructions below): {out / 'recon_grid.png'}")
    typer.echo(f"samples (one row per class): {out / 'sample_grid.png'}")
    typer.echo(f"note: {PSNR_NOTE}")
    typer.echo("note: demo-scale numbers (tens of images, minutes of CPU training) are a smoke test, "
               "not comparable to the paper's ImageNet figures.")
    env = numerics_environment()
    typer.echo(f"note: {ENVIRONMENT_NOTE.format(**env)}")
    summary = {"metrics": {name.strip(): value for name, value in metrics_rows}, "timings_s": dict(timings),
               "recon_grid": str(out / "recon_grid.png"), "sample_grid": str(out / "sample_grid.png"),
               "environment": env}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    app()
