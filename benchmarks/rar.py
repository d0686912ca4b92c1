"""RAR sampling speed with and without the KV cache (not run by CI).

Times greedy raster decoding of the first `--tokens` image tokens (all 256 by default) of a randomly initialised
RAR preset, batch `--batch`, no CFG:

- KV cache: `setup_cache` + `prefill` ([cls, condition]) + one `decode` step per further token (what `vfmtok
  sample` runs);
- no cache: for each token, a full teacher-forced forward over [cls, condition, tokens so far] (`RAR.forward`).

Both produce the same tokens (checked); the ratio is the cache's speed-up (goal >= 10x at 256 tokens on a GPU).
Training step time: `python benchmarks/train_ar.py --models RAR-L --neighbours 2`.

    python benchmarks/rar.py                                           # CPU: RAR-tiny, 256 tokens, batch 4
    python benchmarks/rar.py --model RAR-L --tokens 32 --batch 1       # CPU: a prefix of RAR-L
    python benchmarks/rar.py --model RAR-L --device cuda --batch 8 --precision bf16
"""
from __future__ import annotations

import argparse
import time

import torch

from vfmtok.models.rar_io import create_rar


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def decode_cached(model, labels: torch.Tensor, tokens: int) -> torch.Tensor:
    """Greedy raster decoding of `tokens` image tokens through the KV cache; (B, tokens) int64."""
    model.setup_cache(labels.shape[0])
    logits = model.prefill(labels)[:, -1]
    out = [logits.argmax(-1)]
    for t in range(1, tokens):
        out.append(model.decode(out[-1][:, None], t)[:, -1].argmax(-1))
    model.reset_cache()
    return torch.stack(out, 1)


@torch.no_grad()
def decode_uncached(model, labels: torch.Tensor, tokens: int) -> torch.Tensor:
    """The same tokens by recomputing the whole prefix for every token; (B, tokens) int64."""
    seq = torch.empty(labels.shape[0], 0, dtype=torch.long, device=labels.device)
    for _ in range(tokens):
        logits, _ = model(seq, labels)
        seq = torch.cat([seq, logits[:, -1].argmax(-1)[:, None]], 1)
    return seq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="RAR-tiny")
    ap.add_argument("--tokens", type=int, default=256, help="image tokens decoded (<= 256)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="no", help="no | bf16 (CUDA autocast)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_rar(args.model).eval().to(device)
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # varied greedy tokens
    labels = torch.arange(args.batch, device=device) % model.config.num_classes
    amp = torch.autocast(device.type, torch.bfloat16, enabled=args.precision == "bf16" and device.type == "cuda")
    results = {}
    with amp:
        for name, fn in (("kv-cache", decode_cached), ("no-cache", decode_uncached)):
            fn(model, labels, min(4, args.tokens))  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            tokens = fn(model, labels, args.tokens)
            _sync(device)
            results[name] = (time.perf_counter() - t0, tokens)
    same = bool((results["kv-cache"][1] == results["no-cache"][1]).float().mean() > 0.99)
    rate = {k: args.batch * args.tokens / v[0] for k, v in results.items()}
    print(f"{args.model} {model.num_params() / 1e6:.1f}M params, device={args.device} precision={args.precision} "
          f"batch={args.batch} tokens={args.tokens} threads={torch.get_num_threads()}")
    print(f"RAR sample {args.model}: kv-cache {rate['kv-cache']:.1f} tokens/s, no-cache {rate['no-cache']:.1f} tokens/s, "
          f"speed-up {rate['kv-cache'] / rate['no-cache']:.1f}x at {args.tokens} tokens; same tokens: {same}")


if __name__ == "__main__":
    main()
