"""`vfmtok sample`: class-conditional images from a GPT or RAR run -> PNGs, grid.png and an ADM-format samples.npz."""
from __future__ import annotations

import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vfmtok.cli.common import DeviceOpt, MixedPrecision, ProgressOpt, SeedOpt, fail, precision_option, warnings_as_lines

PrecisionOpt = precision_option(
    "Applies to the GPT, its KV cache and the tokenizer's decoder; CPU samples fp32; the effective precision is "
    "recorded in sample_config.json. docs/sample.md")


class Labels(str, Enum):
    random = "random"
    balanced = "balanced"


class Schedule(str, Enum):
    constant = "constant"
    linear = "linear"
    cosine = "cosine"


def parse_classes(values: list[str] | None) -> list[int] | None:
    """`--class 88 --class 3,7` -> [88, 3, 7].

    Raises:
        ValueError: an entry that is not an integer (names it).
    """
    if not values:
        return None
    ids = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                ids.append(int(part))
            except ValueError:
                raise ValueError(f"--class {value!r}: expected integer class ids (repeat --class or use a comma list)")
    return ids


def command(
    ckpt: Annotated[Optional[Path], typer.Option(
        "--ckpt", help="Generator (GPT or RAR): a train-ar run directory, a model.safetensors, the authors' GPT-*.pt "
                       "or RAR .safetensors, or a Hub reference (hf://OWNER/REPO[/PATH][@REV], authors/GPT-B, "
                       "authors/RAR-L; docs/hub.md). "
                       "Default: the run with the newest model.safetensors under ./runs (printed).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(
        "--tokenizer", help="Tokenizer run directory, .safetensors, vfmtok-tokenizer.pt, or a Hub reference (hf://..., "
                            "authors/tokenizer). Default: the tokenizer "
                            "recorded in the GPT run's config.json (required for the authors' GPT-*.pt).")] = None,
    encoder_weights: Annotated[Optional[Path], typer.Option(
        "--encoder-weights", help="Frozen-encoder weights for the tokenizer. Decoding never reads them, so by "
                                  "default the tokenizer is loaded without its encoder (no download, no memory).")
    ] = None,
    classes: Annotated[Optional[list[str]], typer.Option(
        "--class", metavar="ID", help="Class id(s) in [0, num_classes); repeat or comma-separate (--class 88 --class 3,7). "
                        "Sample i gets the (i mod m)-th of the m ids given. Ids follow the token store's classes.json "
                        "order; an id out of range lists every id with its class name.")] = None,
    labels: Annotated[Optional[Labels], typer.Option(
        "--labels", help="Without --class: random (default; label_i = floor(C * BLAKE2b64('vfmtok-label:{seed}:{i}') "
                         "/ 2^64), uniform, depends only on (seed, i)) or balanced (label_i = i mod C, interleaved).")
    ] = None,
    num_samples: Annotated[int, typer.Option("-n", "--num-samples", min=1, help="Number of images N.")] = 64,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Output folder. Default: RUN/samples/<settings hash> (authors' .pt: "
                      "samples/<ckpt name>-<settings hash>).")] = None,
    cfg_scale: Annotated[float, typer.Option(
        "--cfg-scale", help="Guidance s >= 0: logits = uncond + s_t * (cond - uncond). 1 = no guidance (one "
                            "conditional pass); 0 = unconditional model.")] = 1.0,
    cfg_schedule: Annotated[Schedule, typer.Option(
        "--cfg-schedule", help="s_t for image token t of L: constant s_t = s; linear s_t = 1 + (s-1) t/L; cosine "
                               "s_t = 1 + (s-1) (1 - cos(pi (t/L)^p)) / 2.")] = Schedule.constant,
    cfg_power: Annotated[float, typer.Option("--cfg-power", help="p > 0 of the cosine schedule.")] = 1.0,
    cfg_interval: Annotated[int, typer.Option(
        "--cfg-interval", help="N >= 0: guide image tokens 0..N+1 only (s_t = 1 after); -1 = every token.")] = -1,
    temperature: Annotated[float, typer.Option(
        "--temperature", help="T >= 0: logits / T before the filters; 0 = argmax (deterministic).")] = 1.0,
    top_k: Annotated[int, typer.Option(
        "--top-k", help="Keep logits >= the k-th largest (applied after temperature, before top-p); 0 or >= vocab = "
                        "off.")] = 0,
    top_p: Annotated[float, typer.Option(
        "--top-p", help="Keep the smallest set of most probable tokens whose probability reaches p (on the "
                        "temperature-scaled, top-k-filtered softmax); 1 = off.")] = 1.0,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="Samples per GPT pass per process (results do not depend on it).")] = 32,
    decode_batch: Annotated[int, typer.Option(
        "--decode-batch", min=1, help="D: images per tokenizer decode call, in blocks [kD, (k+1)D) of global "
                                      "indices (part of the settings; makes bytes independent of --batch-size and "
                                      "the process count).")] = 32,
    image_size: Annotated[int, typer.Option(
        "--image-size", min=1, help="Output side S: decoder output bicubic-resized (no antialias) to S, then "
                                    "uint8 = floor(clamp(127.5 v + 128, 0, 255)) for PNG and npz alike.")] = 256,
    png: Annotated[bool, typer.Option("--png/--no-png", help="Write DIR/images/<index:06d>.png.")] = True,
    compile_: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the GPT/RAR decode step (static KV cache; CUDA graphs on CUDA). The first "
                          "batch compiles (up to a minute); same tokens as eager up to float rounding.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a DIR made with other settings (removes only images/, parts/, samples.npz, "
                            "grid.png, sample_config.json).")] = False,
    progress: ProgressOpt = True,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    mixed_precision: PrecisionOpt = MixedPrecision.bf16,
) -> None:
    """Sample N class-conditional images from a GPT or RAR run.

    Writes DIR/samples.npz (arr_0 uint8 N x S x S x 3, arr_1 int64 labels),
    DIR/images/*.png, DIR/grid.png and DIR/sample_config.json.

    Sample i depends only on (--seed, i): any --batch-size and any number of
    processes (torchrun --nproc_per_node K -m vfmtok sample ...) give the same
    bytes. Rerunning the same command resumes an interrupted DIR.
    --mixed-precision defaults to bf16, which applies on CUDA only: CPU samples
    in fp32 (the effective precision is recorded in sample_config.json).
    Formulas and details: docs/sample.md.
    """
    from vfmtok.jobs.sample.options import SampleOptions  # torch-free: bad options are refused before torch loads

    try:
        class_ids = parse_classes(classes)
    except ValueError as err:
        fail(str(err))
    if class_ids is not None and labels is not None:
        fail("give either --class or --labels, not both")
    opts = SampleOptions(
        num_samples=num_samples, classes=class_ids, labels=(labels or Labels.random).value, cfg_scale=cfg_scale,
        cfg_schedule=cfg_schedule.value, cfg_power=cfg_power, cfg_interval=cfg_interval, temperature=temperature,
        top_k=top_k, top_p=top_p, batch_size=batch_size, decode_batch=decode_batch, image_size=image_size, png=png,
        compile=compile_,
        overwrite=overwrite, seed=seed, device=device, mixed_precision=getattr(mixed_precision, "value", mixed_precision),
        progress=progress,
    )
    try:
        opts.validate()
    except ValueError as err:
        fail(str(err))
    from vfmtok.io.hub import is_hub_ref

    if encoder_weights is not None and not is_hub_ref(encoder_weights) and not encoder_weights.is_file():
        fail(f"--encoder-weights {encoder_weights}: file not found")
    from vfmtok.jobs.sample.job import run_sample
    from vfmtok.jobs.sample.output import SampleDirError

    try:
        with warnings_as_lines():  # an unfinished run, near-identical samples: one `warning:` line each
            run_sample(ckpt, tokenizer, out, opts, encoder_weights=encoder_weights,
                       command=shlex.join(["vfmtok", *sys.argv[1:]]))
    except SampleDirError as err:
        fail(str(err))
    except (FileNotFoundError, ValueError) as err:
        fail(f"sample: {err}")
