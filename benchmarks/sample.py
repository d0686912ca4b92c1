"""Generation throughput: tokens/s and images/s with and without the KV cache, and the CFG overhead.

Usage:
    .venv/bin/python benchmarks/sample.py                       # GPT-tiny (L=256) and GPT-B (L=64) on CPU
    .venv/bin/python benchmarks/sample.py --models GPT-B --grid-size 16 --batch 8 --device cuda

Random weights (output head re-initialised so the distribution is not uniform); timings are wall-clock
medians over `--repeats` runs after one warm-up. Prints one line per configuration and the ratios:
cache speed-up = tokens/s with cache / without, CFG overhead = time with CFG (s = 2) / time without.
On CUDA the model runs in bf16 (as the official sampler).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from vfmtok.models.gpt_io import create_gpt
from vfmtok.sampling import generate


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="GPT-tiny,GPT-B")
    parser.add_argument("--grid-size", type=int, default=None, help="token grid side (default: 16 tiny, 8 GPT-B on CPU)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest for tiny models on a shared box)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-no-cache", action="store_true", help="skip the (slow) full-recompute runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} torch={torch.__version__}")
    for name in args.models.split(","):
        grid = args.grid_size or (8 if name != "GPT-tiny" and device.type == "cpu" else 16)
        torch.manual_seed(0)
        model = create_gpt(name, vocab_size=16384, num_classes=1000, grid_size=grid)
        torch.nn.init.normal_(model.output.weight, std=0.02)
        model = model.to(device, torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
        L = model.config.seq_len
        labels = torch.arange(args.batch) % 1000
        results = {}
        for cache in (True, False):
            if not cache and args.skip_no_cache:
                continue
            for scale in (1.0, 2.0):
                sec = timed(lambda: generate(model, labels, cfg_scale=scale, use_cache=cache, seed=0), args.repeats)
                results[(cache, scale)] = sec
                print(f"{name:8s} L={L:3d} cache={str(cache):5s} cfg={scale:.1f}: {sec:8.3f} s/batch "
                      f"{args.batch * L / sec:10.1f} tokens/s {args.batch / sec:8.3f} images/s")
        if (False, 1.0) in results:
            print(f"{name:8s} KV-cache speed-up: {results[(False, 1.0)] / results[(True, 1.0)]:.2f}x (cfg 1), "
                  f"{results[(False, 2.0)] / results[(True, 2.0)]:.2f}x (cfg 2)")
        print(f"{name:8s} CFG overhead (cfg 2 / cfg 1, cached): {results[(True, 2.0)] / results[(True, 1.0)]:.2f}x")


if __name__ == "__main__":
    main()
