"""Generation throughput: eager vs compiled decoding (tokens/s), CFG overhead, and the batch-1 decode step
against the weight-read bound.

Usage:
    .venv/bin/python benchmarks/sample.py                       # GPT-tiny (L=256) and GPT-B (L=64) on CPU
    .venv/bin/python benchmarks/sample.py --models RAR-tiny     # RAR (raster order, L=256) on CPU
    .venv/bin/python benchmarks/sample.py --models GPT-B,GPT-L --grid-size 16 --batch 32 --device cuda

Random weights (GPT output head and RAR adaLN layers re-initialised, as they start at zero, so the distribution is
not uniform). `RAR-*` names select the RAR generator (vocab 16384, 1000 classes, L = grid**2). Timings are
wall-clock medians over `--repeats` runs after one warm-up run, which for `compile` includes the compilation
(printed apart).

1. `vfmtok.generate` tokens/s (image tokens per second, batch B) for eager and compiled decoding at cfg 1 and
   cfg 2 (the CFG batch has 2B rows), with the compiled / eager speed-up and the CFG overhead.
2. Batch-1 decode step: seconds per `gpt.decode` call at position L/2 (eager int step; compiled static step),
   against the weight-read bound = bytes of the weights a step reads / memory bandwidth. The bytes are every
   Linear and norm weight (the token table contributes one row, the class table nothing; RAR: one row of its
   embedding table and of each of its three position tables) plus the KV cache the step attends over. Bandwidth: `--bandwidth-gbs`; default 4800 GB/s (H200 HBM3e) on CUDA, and on
   CPU the measured copy bandwidth of this machine (read + write of a 256 MiB tensor).
On CUDA the weights are cast to `--dtype` (bf16 by default, as the official sampler); CPU runs fp32.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from vfmtok.models.gpt_io import create_gpt
from vfmtok.models.rar_io import create_rar
from vfmtok.sampling import compiled_decode, generate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """(first call seconds, median of `repeats` further calls)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def copy_bandwidth(device: torch.device, mib: int = 256) -> float:
    """Bytes/s of a device tensor copy (counts the read and the write)."""
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    _, sec = timed(lambda: dst.copy_(src), 5, device)
    return 2 * src.numel() * 4 / sec


TABLES = ("tok_embeddings", "cls_embedding", "embeddings", "pos_embed", "target_aware_pos_embed",
          "timesteps_embeddings", "cls_token")  # tables of which a step reads single rows


def step_bytes(model, batch: int) -> int:
    """Bytes a decode step must read: Linear + norm weights, one token-table row per row (RAR: + one row of each of
    its three position tables), the KV cache."""
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith(TABLES))
    is_rar = hasattr(model, "embeddings")
    row = model.embeddings.weight if is_rar else model.tok_embeddings.weight
    weights += 3 * row.shape[1] * row.element_size() if is_rar else 0
    cfg = model.config
    cache = 2 * cfg.n_layer * batch * model.cache_len * cfg.dim * row.element_size()
    return weights + batch * row.shape[1] * row.element_size() + cache


def decode_step_seconds(model, device: torch.device, compiled: bool, iters: int) -> float:
    """Median seconds of one batch-1 decode call at position L/2 (the cache is prefilled with zeros)."""
    model.setup_cache(1)
    pos = model.config.seq_len // 2
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    if compiled:
        step, where = compiled_decode(model, device), torch.tensor([pos], device=device)

        def call():
            if device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            return step(model, token, where)
    else:
        def call():
            return model.decode(token, pos)
    with torch.no_grad():
        model.prefill(torch.zeros(1, dtype=torch.long, device=device))
        for _ in range(3):
            call()  # warm-up (compiles / records the graph)
        _sync(device)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            call()
            _sync(device)
            times.append(time.perf_counter() - start)
    model.reset_cache()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="GPT-tiny,GPT-B")
    parser.add_argument("--grid-size", type=int, default=None, help="token grid side (default: 16; 8 for GPT-B+ on CPU)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest for tiny models on a shared box)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="weights dtype on CUDA (CPU: fp32)")
    parser.add_argument("--bandwidth-gbs", type=float, default=None,
                        help="memory bandwidth in GB/s for the weight-read bound (default: 4800 on CUDA = H200, "
                             "measured copy bandwidth on CPU)")
    parser.add_argument("--step-iters", type=int, default=50, help="timed batch-1 decode calls")
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" and args.dtype == "bf16" else torch.float32
    if args.bandwidth_gbs is not None:
        bandwidth, source = args.bandwidth_gbs * 1e9, "given"
    elif device.type == "cuda":
        bandwidth, source = 4800e9, "H200 default"
    else:
        bandwidth, source = copy_bandwidth(device), "measured copy"
    print(f"device={device} dtype={str(dtype).replace('torch.', '')} threads={torch.get_num_threads()} "
          f"batch={args.batch} bandwidth={bandwidth / 1e9:.1f} GB/s ({source}) torch={torch.__version__}")
    modes = ("eager",) if args.skip_compile else ("eager", "compiled")
    for name in args.models.split(","):
        grid = args.grid_size or (8 if name not in ("GPT-tiny", "RAR-tiny") and device.type == "cpu" else 16)
        torch.manual_seed(0)
        if name.startswith("RAR-"):
            model = create_rar(name, vocab_size=16384, num_classes=1000, seq_len=grid * grid)
            for block in [*model.blocks, model.adaln_before_head]:
                torch.nn.init.normal_(block.adaLN_modulation[1].weight, std=0.02)
        else:
            model = create_gpt(name, vocab_size=16384, num_classes=1000, grid_size=grid)
            torch.nn.init.normal_(model.output.weight, std=0.02)
        model = model.to(device, dtype).eval()
        L = model.config.seq_len
        labels = torch.arange(args.batch) % 1000
        results = {}
        for mode in modes:
            for scale in (1.0, 2.0):
                run = lambda: generate(model, labels, cfg_scale=scale, seed=0, compile=mode == "compiled")  # noqa: E731
                first, sec = timed(run, args.repeats, device)
                results[(mode, scale)] = sec
                print(f"{name:8s} L={L:3d} {mode:8s} cfg={scale:.1f}: {sec:8.3f} s/batch {args.batch * L / sec:10.1f} "
                      f"tokens/s {args.batch / sec:8.3f} images/s (first call {first:.1f} s)")
            model.reset_cache()
        if "compiled" in modes:
            print(f"{name:8s} compiled / eager speed-up: {results[('eager', 1.0)] / results[('compiled', 1.0)]:.2f}x "
                  f"(cfg 1), {results[('eager', 2.0)] / results[('compiled', 2.0)]:.2f}x (cfg 2)")
        for mode in modes:
            print(f"{name:8s} CFG overhead {mode} (cfg 2 / cfg 1): {results[(mode, 2.0)] / results[(mode, 1.0)]:.2f}x")
        nbytes = step_bytes(model, 1)
        bound = nbytes / bandwidth
        for mode in modes:
            sec = decode_step_seconds(model, device, mode == "compiled", args.step_iters)
            print(f"{name:8s} batch-1 decode step {mode:8s}: {sec * 1e3:8.3f} ms; weight-read bound "
                  f"{bound * 1e3:.3f} ms ({nbytes / 1e6:.1f} MB) -> {sec / bound:.1f}x the bound")
        if device.type == "cuda":
            print(f"{name:8s} peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
