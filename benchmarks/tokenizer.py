"""Tokenizer throughput and deformable-attention cost (prints numbers; not run by CI).

    .venv/bin/python benchmarks/tokenizer.py                      # tiny + vfmtok-l, current device
    .venv/bin/python benchmarks/tokenizer.py --presets tiny --batch-size 8 --iters 5
    .venv/bin/python benchmarks/tokenizer.py --skip-tokenizer      # deformable attention only

Tokenizers are random-weight models (`encoder_weights="random"`), fp32 on CPU, bf16 autocast on CUDA
(the deformable attention and quantizer distances stay fp32 inside). Reports encode and decode images/s.
The deformable attention part times the grid_sample implementation against the explicit-loop reference at
the paper's shapes (8 heads x 64, 4 levels of 24 x 24, 4 points, 256 queries) and reports peak memory
(CUDA: allocator peak above the inputs; CPU: growth of the peak resident set above the inputs, measured in a
fresh subprocess per method after a batch-1 warm-up; a rough figure, it misses peaks below the warm-up's).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import torch

from vfmtok.device import resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timeit(fn, device: torch.device, iters: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def bench_tokenizer(preset: str, device: torch.device, batch: int, iters: int) -> None:
    from vfmtok.models.tokenizer_io import create_tokenizer

    start = time.perf_counter()
    tok = create_tokenizer(preset, encoder_weights="random").to(device).eval()
    built = time.perf_counter() - start
    size = tok.config.image_size
    images = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def encode():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return tok.encode(images)

    codes = encode()

    def decode():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return tok.decode_codes(codes)

    t_enc = _timeit(encode, device, iters)
    t_dec = _timeit(decode, device, iters)
    n_train = sum(p.numel() for p in tok.trainable_parameters())
    print(f"{preset:9s} {size}px batch {batch} ({'bf16' if dtype else 'fp32'}, {device}): "
          f"encode {batch / t_enc:8.2f} img/s, decode {batch / t_dec:8.2f} img/s "
          f"[trainable {n_train / 1e6:.2f} M, built in {built:.1f} s]")


def _deform_inputs(batch: int, device: torch.device):
    shapes = [(24, 24)] * 4
    gen = torch.Generator(device="cpu").manual_seed(0)
    value = torch.randn(batch, 4 * 576, 8, 64, generator=gen).to(device)
    locations = (torch.rand(batch, 256, 8, 4, 4, 2, generator=gen) * 1.2 - 0.1).to(device)
    weights = torch.rand(batch, 256, 8, 4, 4, generator=gen).to(device)
    weights = weights / weights.sum(dim=(-2, -1), keepdim=True)
    return value, shapes, locations, weights


def _current_rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def _deform_worker(method: str, batch: int, iters: int, device_name: str, queue) -> None:
    from vfmtok.models.deform_attn import ms_deform_attn, ms_deform_attn_naive

    torch.set_num_threads(torch.get_num_threads())
    device = torch.device(device_name)
    fn = ms_deform_attn if method == "grid_sample" else ms_deform_attn_naive
    fn(*_deform_inputs(1, device))  # warm-up: library initialisation must not count as the method's memory
    args = _deform_inputs(batch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _current_rss_kib()
    out = fn(*args)
    if device.type == "cuda":
        peak_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    seconds = _timeit(lambda: fn(*args), device, iters, warmup=0)
    # numpy, not a tensor: torch shares tensors through file descriptors that die with this process
    queue.put((seconds, max(peak_mib, 0.0), out.cpu().numpy()))


def bench_deform_attn(device: torch.device, batch: int, iters: int) -> None:
    ctx = mp.get_context("spawn")
    results = {}
    for method in ("grid_sample", "naive"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_deform_worker, args=(method, batch, iters, str(device), queue))
        proc.start()
        results[method] = queue.get()
        proc.join()
    err = float(abs(results["grid_sample"][2] - results["naive"][2]).max())
    for method, (seconds, peak, _) in results.items():
        print(f"deform-attn {method:11s} batch {batch} ({device}): {seconds * 1e3:9.2f} ms/call, "
              f"peak extra memory {peak:8.1f} MiB")
    speed = results["naive"][0] / results["grid_sample"][0]
    print(f"deform-attn grid_sample vs naive: {speed:.1f}x faster, max |diff| {err:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "vfmtok-l"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=0, help="default: 4 on CPU, 32 on CUDA")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--skip-tokenizer", action="store_true")
    parser.add_argument("--skip-deform", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    batch = args.batch_size or (32 if device.type == "cuda" else 4)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    if not args.skip_tokenizer:
        for preset in args.presets:
            bench_tokenizer(preset, device, batch if preset != "vfmtok-l" or device.type == "cuda" else 1, args.iters)
    if not args.skip_deform:
        bench_deform_attn(device, 2 if device.type == "cpu" else 16, args.iters)


if __name__ == "__main__":
    main()
