"""Autoregressive decoding for the class-conditional GPT and RAR: KV cache, classifier-free guidance, filters.

Conventions (reference/vfmtok.md section 4 and checkpoints/README.md 3.5, the authors' LlamaGen sampler):

* Decoding: prefill the KV cache with the class token (position 0), then one image token per step at
  positions 1..L-1. `use_cache=False` recomputes the whole prefix every step (same tokens; for checks).
* CFG: the batch is doubled as [conditional rows | same rows with the null class]; with scale s_t for image
  token t the guided logits are `uncond + s_t * (cond - uncond)`, on raw logits, before temperature. Where
  s_t == 1 the conditional logits are used as they are. The sampled token is fed to both halves.
* Schedules (t = 0..L-1 is the index of the image token being drawn, s = `cfg_scale`, p = `cfg_power`):
    - constant: s_t = s
    - linear:   s_t = 1 + (s - 1) * t / L                              (ramps from 1 towards s)
    - cosine:   s_t = 1 + (s - 1) * (1 - cos(pi * (t / L) ** p)) / 2   (RAR's power-cosine ramp)
* `cfg_interval` N >= 0: guidance only for image tokens 0..N+1 (the official prefill plus decode steps
  0..N), s_t = 1 afterwards; -1 = guidance on every token.
* s = 1 runs a single conditional pass; s = 0 (constant schedule, no interval) a single null-class pass
  (the unconditional model); s < 0 is rejected. Deviation: the official sampler treats every s <= 1 as "no
  guidance"; here 0 < s < 1 interpolates between the unconditional and conditional logits.
* RAR (`vfmtok.models.rar.RAR`, the authors' VFMTok-RAR sampler): raster order, guidance with the cosine
  schedule whenever their S != 0, so `cfg_schedule="cosine", cfg_scale=S, cfg_power=p` reproduces it for
  S > 0 (S = 1 is conditional sampling in both). Their S = 0 means "no guidance" (conditional sampling):
  use cfg_scale = 1 here; our s = 0 with the cosine schedule ramps from 1 down to 0 instead. Negative S
  (allowed there) is rejected here.
* Token choice: temperature T = 0 -> argmax of the guided logits (filters are irrelevant). Otherwise
  logits / T, then top-k (keep logits >= the k-th largest; k = 0 or k >= vocab: off), then top-p on the
  temperature-scaled, top-k-filtered distribution (keep the smallest set of most probable tokens whose
  probability reaches p; p = 1: off), then softmax.
* Reproducibility: sample i draws its L uniforms u_0..u_{L-1} (float64) from its own CPU
  `torch.Generator` seeded with `sample_seed(seed, i)` (a BLAKE2b hash of (seed, i)); token t is the
  inverse-CDF draw: the first id whose cumulative probability exceeds u_t * total. So sample i depends only
  on (seed, i) (and the model), not on batch size, batch composition or process count (up to float
  differences of the logits themselves between kernels).
* Once guidance has ended (s_t == 1 for every remaining token, e.g. after `cfg_interval`), the unconditional
  half of the CFG batch is no longer fed (the model's `decode` then runs on the first B rows of its cache):
  the guided logits there are the conditional ones anyway, so the tokens are those of the full CFG batch.
  Only for models with `supports_row_subset` (the GPT); a RAR decodes every row to the end.
* `compile=True` (GPT and RAR): each decode step is the model's static step (position tensor, fixed shapes) captured by
  `torch.compile` (mode="reduce-overhead" = CUDA graphs on CUDA, plain inductor elsewhere); prefill and the
  token draw stay eager. Same tokens as eager decoding up to float rounding of the logits (masked attention
  over the whole cache, fused kernels): equal except where two logits tie within ~1e-6.
* Devices: the draw (float64 softmax / top-p / inverse CDF) runs on the model's device, except on Apple MPS,
  which has no float64: there the guided float32 logits go to the CPU for the draw and the chosen ids come
  back (`draw_device`), so MPS samples equal CPU samples up to the logits' own float differences.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from vfmtok.guidance import cfg_scales  # the schedules live torch-free (vfmtok.guidance) for the CLI


# ---------------------------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------------------------
def guide(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance on raw logits: uncond + scale * (cond - uncond); `cond` itself when scale == 1."""
    return cond if scale == 1.0 else uncond + scale * (cond - uncond)


# ---------------------------------------------------------------------------------------------
# Filters and the token draw
# ---------------------------------------------------------------------------------------------
def top_k_filter(logits: Tensor, top_k: int) -> Tensor:
    """Mask to -inf every logit below the k-th largest of its row (ties at the k-th value are kept).

    Args:
        logits: (B, V) float. top_k: 0 or k >= V means off.

    Returns:
        (B, V) float, a new tensor.
    """
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Keep per row the smallest set of most probable tokens whose total probability reaches `top_p`.

    Token j (in decreasing probability order) is kept iff the probability of the tokens before it is < p;
    the most probable token is always kept. Probabilities are softmax(logits) in float64.

    Args:
        logits: (B, V) float (already temperature-scaled and top-k filtered). top_p: in (0, 1]; 1 = off.

    Returns:
        (B, V) float with removed entries at -inf.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.double(), dim=-1)
    before = probs.cumsum(-1) - probs
    remove_sorted = before >= top_p
    remove_sorted[:, 0] = False
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def inverse_cdf(probs: Tensor, uniforms: Tensor) -> Tensor:
    """Draw one id per row by inverse CDF: the first id whose cumulative probability exceeds u * total.

    Args:
        probs: (B, V) non-negative float (need not sum to 1). uniforms: (B,) in [0, 1).

    Returns:
        (B,) int64; never an id of probability 0.
    """
    cdf = probs.double().cumsum(-1)
    target = uniforms.to(cdf) * cdf[:, -1]
    ids = torch.searchsorted(cdf, target[:, None], right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)
    last_support = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(-1)
    return torch.minimum(ids, last_support)


def pick_tokens(logits: Tensor, temperature: float, top_k: int, top_p: float, uniforms: Tensor | None) -> Tensor:
    """Choose one token per row from guided logits.

    Args:
        logits: (B, V) float32 guided logits. temperature: 0 = argmax, else logits / T.
        top_k, top_p: filters (see `top_k_filter`, `top_p_filter`), applied in that order after temperature.
        uniforms: (B,) float64 in [0, 1), one per row (unused when temperature == 0).

    Returns:
        (B,) int64 token ids.
    """
    if temperature == 0:
        return logits.argmax(-1)
    scaled = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    probs = torch.softmax(scaled.double(), dim=-1)
    assert uniforms is not None
    return inverse_cdf(probs, uniforms)


def draw_device(device: torch.device) -> torch.device:
    """Device of the float64 token draw for a model on `device`: the CPU for MPS (no float64 there), else `device`."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def sample_seed(seed: int, index: int) -> int:
    """63-bit seed of sample `index` under global `seed`: BLAKE2b-64 of "vfmtok-sample:{seed}:{index}"."""
    digest = hashlib.blake2b(f"vfmtok-sample:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def sample_uniforms(seed: int, indices: Sequence[int], seq_len: int) -> Tensor:
    """(B, seq_len) float64 uniforms in [0, 1) on CPU; row b comes only from (seed, indices[b])."""
    rows = []
    for index in indices:
        gen = torch.Generator(device="cpu").manual_seed(sample_seed(seed, int(index)))
        rows.append(torch.rand(seq_len, generator=gen, dtype=torch.float64))
    return torch.stack(rows) if rows else torch.empty(0, seq_len, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
def _labels_tensor(labels: Tensor | Sequence[int], num_classes: int) -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D sequence of class ids, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    labels = labels.long().cpu()
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise ValueError(
            f"class id {int(bad[0])} out of range: the model has {num_classes} classes, ids must be in "
            f"[0, {num_classes}) (the null class {num_classes} is used only through CFG)"
        )
    return labels


def guidance_end(scales: Sequence[float]) -> int:
    """First token index t from which every scale is 1 (no guidance left); len(scales) if the last one is not."""
    end = len(scales)
    while end > 0 and scales[end - 1] == 1.0:
        end -= 1
    return end


_COMPILED: dict[tuple[type, str | None], Callable] = {}


def compiled_decode(gpt: torch.nn.Module, device: torch.device) -> Callable:
    """`type(gpt).decode` compiled with torch.compile, shared by every model of that class (called as
    `fn(gpt, tokens, positions)`); mode "reduce-overhead" (CUDA graphs) on CUDA, inductor defaults elsewhere.

    dynamic=False: one graph per (batch rows, model) met, e.g. 2B rows with CFG and B after the CFG interval.
    """
    mode = "reduce-overhead" if device.type == "cuda" else None
    key = (type(gpt), mode)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(type(gpt).decode, mode=mode, dynamic=False, fullgraph=True)
    return _COMPILED[key]


@torch.no_grad()
def generate(
    gpt: torch.nn.Module,
    labels: Tensor | Sequence[int],
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    cfg_schedule: str = "constant",
    cfg_power: float = 1.0,
    cfg_interval: int = -1,
    sample_indices: Tensor | Sequence[int] | None = None,
    use_cache: bool = True,
    compile: bool = False,
) -> Tensor:
    """Generate image-token sequences for class labels (conventions in the module docstring).

    Args:
        gpt: a `vfmtok.models.gpt.GPT` or `vfmtok.models.rar.RAR` (any device/dtype; put in eval mode for the
            call, then restored). Any model works that has `config.seq_len`, `config.num_classes` (the null
            class id), `setup_cache`, `prefill`, `decode`, `reset_cache` and `forward(tokens, labels)[0]`.
        labels: (B,) class ids in [0, num_classes).
        cfg_scale: guidance scale s >= 0 (1 = none, single pass; 0 = unconditional).
        temperature: T >= 0; 0 = argmax.
        top_k: keep the k most likely tokens (0 or >= vocab: off). top_p: nucleus mass in (0, 1] (1: off).
        seed: global seed; with `sample_indices`, sample b uses the random stream of (seed, sample_indices[b]).
        cfg_schedule: constant | linear | cosine. cfg_power: p of the cosine schedule (> 0).
        cfg_interval: N >= 0 guides image tokens 0..N+1 only; -1 guides all.
        sample_indices: (B,) global sample indices (default 0..B-1); pass each rank's / batch's global
            indices so results do not depend on batching.
        use_cache: KV-cache decoding (True) or full recompute every step (False; same tokens, slower).
        compile: decode steps through `torch.compile` (see the module docstring; needs `use_cache` and a model
            with `supports_static_decode`). The first call per batch shape compiles (seconds to a minute); the
            KV cache then stays allocated on the model so later calls of the same batch reuse its memory
            (and the captured CUDA graph); `gpt.reset_cache()` frees it.

    Returns:
        codes: (B, L) int64 on the model's device, values in [0, vocab_size).

    Raises:
        ValueError: a class id outside [0, num_classes), or any option out of range (checked before any work);
            compile without use_cache or on a model without a static decode step.
    """
    cfg = gpt.config
    seq_len = cfg.seq_len
    labels = _labels_tensor(labels, cfg.num_classes)
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = argmax), got {temperature}")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
    scales = cfg_scales(seq_len, cfg_scale, cfg_schedule, cfg_power, cfg_interval)
    batch = labels.shape[0]
    indices = list(range(batch)) if sample_indices is None else [int(i) for i in torch.as_tensor(sample_indices).reshape(-1)]
    if len(indices) != batch or any(i < 0 for i in indices):
        raise ValueError(f"sample_indices must hold {batch} non-negative ints, got {len(indices)} values")

    if compile and not use_cache:
        raise ValueError("compile=True needs use_cache=True (the compiled step is the KV-cache decode step)")
    if compile and not getattr(gpt, "supports_static_decode", False):
        raise ValueError(f"compile=True: {type(gpt).__name__}.decode has no static (position-tensor) step")

    device = next(gpt.parameters()).device  # GPT and RAR keep all parameters on one device
    if batch == 0:
        return torch.empty(0, seq_len, dtype=torch.long, device=device)
    draw_on = draw_device(device)
    uniforms = sample_uniforms(seed, indices, seq_len).to(draw_on) if temperature > 0 else None

    if all(s == 1.0 for s in scales):
        mode, rows = "cond", labels
    elif all(s == 0.0 for s in scales):
        mode, rows = "uncond", torch.full_like(labels, cfg.num_classes)
    else:
        mode, rows = "cfg", torch.cat([labels, torch.full_like(labels, cfg.num_classes)])
    rows = rows.to(device)

    # from token `drop_at` on, guidance is over: feed only the conditional rows (first half of the cache)
    drop_at = guidance_end(scales) if mode == "cfg" and use_cache and getattr(gpt, "supports_row_subset", False) \
        else seq_len
    step = compiled_decode(gpt, device) if compile else None
    positions = torch.arange(seq_len, device=device) if compile else None

    was_training = gpt.training
    gpt.eval()
    codes = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
    try:
        if use_cache:
            gpt.setup_cache(rows.shape[0])
        for t in range(seq_len):
            if use_cache and t == 0:
                logits = gpt.prefill(rows)[:, -1]
            elif use_cache:
                fed = codes[:, t - 1 : t].repeat((rows.shape[0] if t < drop_at else batch) // batch, 1)
                if step is None:
                    logits = gpt.decode(fed, t)[:, -1]
                else:
                    if device.type == "cuda":
                        torch.compiler.cudagraph_mark_step_begin()
                    logits = step(gpt, fed, positions[t : t + 1])[:, -1]
            else:
                prefix = codes[:, :t].repeat(rows.shape[0] // batch, 1)
                logits = gpt(prefix, rows)[0][:, -1]
            if mode == "cfg" and logits.shape[0] == 2 * batch:
                logits = guide(logits[:batch], logits[batch:], scales[t])
            step_u = uniforms[:, t] if uniforms is not None else None
            codes[:, t] = pick_tokens(logits.float().to(draw_on), temperature, top_k, top_p, step_u).to(device)
    finally:
        if use_cache and not compile:
            gpt.reset_cache()
        gpt.train(was_training)
    return codes
