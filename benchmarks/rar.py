"""RAR generator throughput: sampling tokens/s with and without the KV cache (256 tokens), and a training step.

Usage:
    .venv/bin/python benchmarks/rar.py --models RAR-tiny --threads 1            # CPU, full vocab, both ways
    .venv/bin/python benchmarks/rar.py --models RAR-L --no-warmup --threads 1 # CPU: cached sampling + train step
    .venv/bin/python benchmarks/rar.py --models RAR-L --n-layer 4 --no-cache-all --no-warmup --threads 1 --skip-train
    .venv/bin/python benchmarks/rar.py --models RAR-L RAR-XL --batch 8 --train-batch 32 --device cuda

Random weights (every parameter re-drawn N(0, 0.02) so the zero-initialised adaLN layers are active), vocab
16384, 1000 classes, 256 tokens. Sampling: `vfmtok.generate` with the authors' cosine CFG (RAR-L: S 16,
p 2.75; others 6.5 / 1.0) and temperature 1; a wall-clock median over `--repeats` runs after one warm-up;
prints tokens/s and the cache speed-up = time without cache / time with. Training: one AdamW step (forward
with random orders, loss, backward, optimizer step), median of `--train-steps` after one warm-up. On CUDA
sampling runs the model in bf16 and training under bf16 autocast (as the authors). Full recompute of
RAR-L on a 2-core CPU would take ~15 minutes per image, so on CPU it is skipped for models other than
RAR-tiny unless `--no-cache-all` is given; `--n-layer N` builds a stand-in with the preset's width and N
blocks (name shown as `RAR-L/N`). On a loaded 2-core box use `--threads 1`: with 2 threads every small op of
the cached decode waits for a descheduled worker (measured 11x slower for RAR-L).
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from vfmtok.models.rar import draw_orders
from vfmtok.models.rar_config import AUTHORS_CFG
from vfmtok.models.rar_io import create_rar
from vfmtok.sampling import generate


def timed(fn, repeats: int, device: torch.device, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_sampling(name: str, model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> None:
    """Print s/batch and tokens/s of `generate` with and without the KV cache, and the cache speed-up."""
    cuda = device.type == "cuda"
    scale, power = AUTHORS_CFG.get(name.split("/")[0], (6.5, 1.0))
    labels = torch.arange(args.batch) % 1000
    sampler = model.to(device, torch.bfloat16 if cuda else torch.float32).eval()
    results = {}
    for cache in (True, False):
        if not cache and not cuda and not name.startswith("RAR-tiny") and not args.no_cache_all:
            print(f"{name:8s} cache=False: skipped on CPU (use --no-cache-all)")
            continue

        def run(cache: bool = cache) -> None:
            generate(sampler, labels, cfg_scale=scale, cfg_schedule="cosine", cfg_power=power, use_cache=cache, seed=0)

        results[cache] = sec = timed(run, args.repeats, device, not args.no_warmup)
        print(f"{name:8s} cache={str(cache):5s} cfg={scale}/{power}: {sec:8.2f} s/batch "
              f"{args.batch * 256 / sec:9.1f} tokens/s")
    if False in results:
        print(f"{name:8s} KV-cache speed-up: {results[False] / results[True]:.1f}x")


def bench_training(name: str, model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> None:
    """Print the time of one AdamW step (random orders, loss, backward, clip, step) and tokens/s."""
    cuda = device.type == "cuda"
    model = model.to(device, torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, betas=(0.9, 0.96), weight_decay=0.03)
    tokens = torch.randint(0, 16384, (args.train_batch, 256), device=device)
    labels = torch.randint(0, 1000, (args.train_batch,), device=device)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        orders = draw_orders(args.train_batch, 256, 1.0, gen).to(device)
        with torch.autocast("cuda", torch.bfloat16) if cuda else nullcontext():
            loss = model(tokens, labels, orders, targets=tokens)[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sec = timed(step, args.train_steps, device, not args.no_warmup)
    flops = model.flops_per_token() * args.train_batch * 256
    print(f"{name:8s} train step (batch {args.train_batch} x 256, random orders): {sec:8.2f} s/step "
          f"{args.train_batch * 256 / sec:9.1f} tokens/s {flops / sec / 1e12:.3f} TFLOP/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["RAR-tiny", "RAR-L"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1, help="images sampled together (doubled for CFG)")
    ap.add_argument("--train-batch", type=int, default=2, help="sequences per training step")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (1 is fastest for RAR-tiny on a shared box)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up runs (big models on CPU)")
    ap.add_argument("--no-cache-all", action="store_true", help="also time full recompute for big models on CPU")
    ap.add_argument("--n-layer", type=int, default=None, help="stand-in: the preset's width with fewer blocks")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} train_batch={args.train_batch} "
          f"torch={torch.__version__}")
    for name in args.models:
        torch.manual_seed(0)
        model = create_rar(name, **({"n_layer": args.n_layer} if args.n_layer else {}))
        if args.n_layer:
            name = f"{name}/{args.n_layer}"
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0.0, 0.02)
        print(f"{name:8s} {model.num_params() / 1e6:.1f}M parameters, "
              f"{model.flops_per_token() / 1e9:.2f} training GFLOP/token")
        bench_sampling(name, model, args, device)
        if not args.skip_train:
            bench_training(name, model, args, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
