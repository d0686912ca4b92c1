"""Training throughput of `train-ar`: tokens/s, achieved TFLOP/s and MFU per GPT or RAR preset (not run by CI).

Builds a synthetic token store (random codes, 16x16 grid, 16384-entry codebook, 1000 classes) in a temporary
directory, runs `vfmtok.jobs.train_ar.train_ar` for 2 x `--steps` optimizer steps and reports the second window
(the first one holds the warm-up: allocator, compilation) from metrics.jsonl. FLOPs/token come from `GPT.flops_per_token()`
(6N + attention, PaLM convention); MFU = achieved / peak, with the peak from `vfmtok.engine.mfu.PEAK_BF16_FLOPS` on CUDA or
`--peak-tflops` (CPU has no default peak: MFU is printed as n/a).

    python benchmarks/train_ar.py                                    # CPU: GPT-tiny and GPT-B, fp32
    python benchmarks/train_ar.py --device cuda --models GPT-B GPT-L --batch-size 64 --precision bf16 [--compile]
    python benchmarks/train_ar.py --device cuda --models RAR-L --neighbours 2 --batch-size 32 --precision bf16

With `--neighbours 2` the store holds a second-nearest sequence per image, so RAR (all neighbours per step) trains
on 2 x batch sequences per step; tokens/s counts every sequence.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vfmtok.data.token_store import format as tsf
from vfmtok.data.token_store import writer as tsw
from vfmtok.jobs.train_ar import train_ar
from vfmtok.jobs.train_ar_config import TrainARConfig


def synthetic_store(out: Path, num_images: int, grid: int = 16, vocab: int = 16384, classes: int = 1000,
                    neighbours: int = 1) -> Path:
    """A complete store of `num_images` x `neighbours` random sequences (1 crop view) for throughput measurements."""
    rng = np.random.default_rng(0)
    tsw.create_store(out, tsf.StoreLayout(num_images, neighbours, grid * grid, vocab),
                    {"num_classes": classes, "grid_size": grid, "tokenizer": {"path": None},
                     "crop": {"neighbours": neighbours}})
    with tsw.StoreWriter(out) as writer:
        writer.write(np.arange(num_images), rng.integers(0, vocab, (num_images, neighbours, grid * grid)),
                     rng.integers(0, classes, num_images))
    tsw.finalize_store(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["GPT-tiny", "GPT-B"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="bf16", help="no | bf16 | fp16 (CUDA only; CPU always fp32)")
    ap.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: 4 on CPU, 64 on CUDA)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps (after as many warm-up steps)")
    ap.add_argument("--neighbours", type=int, default=1, help="sequences per image in the store (RAR recipe: 2)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: GPU table)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch_size or (64 if args.device.startswith("cuda") else 4)
    total = 2 * args.steps
    print(f"device={args.device} precision={args.precision} batch={batch} seq=256 threads={torch.get_num_threads()} "
          f"compile={args.compile}")
    print(f"{'model':10s} {'params':>9s} {'GFLOP/tok':>9s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'MFU':>7s} "
          f"{'s/step':>7s} {'peak GiB':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp) / "store", batch * total + batch, neighbours=args.neighbours)
        for name in args.models:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            out = Path(tmp) / f"run-{name}"
            t0 = time.perf_counter()
            train_ar(TrainARConfig(
                tokens=store, out=out, model=name, steps=total, batch_size=batch, val_count=0,
                log_every=args.steps, val_every=args.steps * 100, save_every=0,
                num_workers=2, device=args.device, mixed_precision=args.precision, compile=args.compile,
                grad_checkpointing=args.grad_checkpointing, peak_tflops=args.peak_tflops, progress=False))
            wall = time.perf_counter() - t0
            rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
            cfg = json.loads((out / "config.json").read_text())["train"]
            tps, fpt = rec["tokens_per_s"], cfg["flops_per_token"]
            mfu = f"{100 * rec['mfu']:.1f}%" if rec.get("mfu") is not None else "n/a"
            mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
            print(f"{name:10s} {cfg['num_params'] / 1e6:8.1f}M {fpt / 1e9:9.3f} {tps:10.0f} {tps * fpt / 1e12:8.3f} "
                  f"{mfu:>7s} {cfg['tokens_per_step'] / tps:7.3f} {mem:8.1f}   (wall {wall:.0f} s incl. set-up; "
                  f"{cfg['sequences_per_step']} sequences/step)")


if __name__ == "__main__":
    main()
