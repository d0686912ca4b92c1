"""Tokenizer-training throughput: images/s and seconds per optimizer step (full recipe: LPIPS, semantic, VQ, GAN).

    python benchmarks/train_tokenizer.py                          # tiny preset on CPU, fp32
    python benchmarks/train_tokenizer.py --preset vfmtok-l --device cuda --mixed-precision bf16 --batch-size 16

Data: demo photos (built once under --work). Weights are random (the frozen encoder and the DINO discriminator
trunk too): throughput does not depend on them. The discriminator is active from step 0 (--disc-start 0) so the
numbers include it; pass --disc-start 100000 to time the first 20k steps of the recipe (no GAN). The first
--warmup steps are excluded from the averages. Prints one line per setting and, on CUDA, the peak memory.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from vfmtok.data.demo import DemoSettings, build_demo_data
from vfmtok.jobs.train_tokenizer import TokenizerTrainConfig, train_tokenizer
from vfmtok.losses import TokenizerLossConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mixed-precision", default="no")
    ap.add_argument("--disc", default="auto")
    ap.add_argument("--disc-start", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vfmtok_bench_tok")
    args = ap.parse_args()
    data = args.work / "data"
    size = 512 if args.preset == "vfmtok-l" else 128
    build_demo_data(data, DemoSettings(train_per_class=max(2, args.batch_size), val_per_class=1, size=size))
    out = args.work / "run"
    shutil.rmtree(out, ignore_errors=True)
    cfg = TokenizerTrainConfig(
        data=str(data), out=str(out), preset=args.preset, steps=args.steps + args.warmup, batch_size=args.batch_size,
        device=args.device, mixed_precision=args.mixed_precision, disc=args.disc, disc_weights="random",
        encoder_weights="random", save_every=0, log_every=1, grid_every=0, num_workers=4, progress=False,
        loss=TokenizerLossConfig(disc_start=args.disc_start),
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_tokenizer(cfg)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][args.warmup :]
    sec = statistics.median(r["sec_per_step"] for r in recs)
    line = (f"preset={args.preset} device={args.device} precision={args.mixed_precision} batch={args.batch_size} "
            f"disc={'on' if args.disc_start <= args.warmup else 'off'}: {sec:.3f} s/step, "
            f"{args.batch_size / sec:.2f} images/s (median of {len(recs)} steps)")
    if torch.cuda.is_available() and args.device != "cpu":
        line += f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    print(line)


if __name__ == "__main__":
    main()
