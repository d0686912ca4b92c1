"""LlamaGen-style class-conditional GPT over VFMTok codes (VFMTok paper, arXiv 2507.08441, section 4.1).

The generator of the paper is LlamaGen's `GPT-*` (Sun et al. 2024, arXiv 2406.06525): pre-norm RMSNorm
(eps 1e-5), SwiGLU FFN (hidden = 8*dim/3 rounded up to a multiple of 256), bias-free multi-head attention,
2D RoPE over the token grid, one class-token prefix whose embedding table has a null row (id =
`num_classes`) for classifier-free guidance. Parameter names equal the authors' state-dict keys, so their
released `GPT-*.pt` files load strictly (shared/reference/checkpoints/README.md, "GPT key groups" and 3.5).

Sequence convention: position 0 holds the class embedding, positions 1..L-1 the embeddings of image tokens
0..L-2; the output at position i predicts image token i (L = grid_size**2 = 256 for VFMTok).
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from vfmtok.configs import GPT_PRESETS, config_from_dict, config_to_dict

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "vfmtok.gpt"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Config and presets
# ---------------------------------------------------------------------------------------------
@dataclass
class GPTConfig:
    """Shape and regularisation of a class-conditional GPT.

    Attributes:
        dim: model width. n_layer: transformer blocks. n_head: attention heads (head dim = dim / n_head,
            must be divisible by 4 for the 2D RoPE).
        vocab_size: codebook size (image-token ids in [0, vocab_size)).
        num_classes: class count; the class table has num_classes + 1 rows, the last being the null class.
        grid_size: token grid side; sequence length L = grid_size**2.
        cls_token_num: class-token prefix length (only 1 is supported, as in every official model).
        multiple_of: FFN hidden size rounding (LlamaGen `find_multiple(int(2*4*dim/3), multiple_of)`).
        rope_base: RoPE base. norm_eps: RMSNorm epsilon.
        class_dropout: training-time probability of replacing a label by the null class (CFG training).
        token_dropout, resid_dropout, ffn_dropout, attn_dropout: dropout probabilities (training only).
        init_std: std of the N(0, std) init of Linear/Embedding weights (output head is zero-initialised).
    """

    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    vocab_size: int = 16384
    num_classes: int = 1000
    grid_size: int = 16
    cls_token_num: int = 1
    multiple_of: int = 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    class_dropout: float = 0.1
    token_dropout: float = 0.1
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    attn_dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("dim", "n_layer", "n_head", "vocab_size", "num_classes", "grid_size", "multiple_of"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.cls_token_num != 1:
            raise ValueError(f"GPTConfig.cls_token_num must be 1 (class-conditional GPT), got {self.cls_token_num}")
        if self.dim % self.n_head:
            raise ValueError(f"GPTConfig: dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.head_dim % 4:
            raise ValueError(f"GPTConfig: head dim {self.head_dim} must be divisible by 4 (2D RoPE: row and column pairs)")
        for name in ("class_dropout", "token_dropout", "resid_dropout", "ffn_dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"GPTConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def seq_len(self) -> int:
        """Number of image tokens L = grid_size**2."""
        return self.grid_size**2

    @property
    def ffn_hidden(self) -> int:
        """SwiGLU hidden width: int(2 * 4 * dim / 3) rounded up to a multiple of `multiple_of`."""
        hidden = int(2 * 4 * self.dim / 3)
        return -(-hidden // self.multiple_of) * self.multiple_of


def _preset(dim: int, n_layer: int, n_head: int):
    return lambda: GPTConfig(dim=dim, n_layer=n_layer, n_head=n_head)


# Official LlamaGen shapes (reference/vfmtok.md table 3.1); GPT-tiny = the authors' parity fixture shape.
PRESET_SHAPES: dict[str, tuple[int, int, int]] = {
    "GPT-B": (768, 12, 12),
    "GPT-L": (1024, 24, 16),
    "GPT-XL": (1280, 36, 20),
    "GPT-XXL": (1536, 48, 24),
    "GPT-2B": (1920, 48, 32),
    "GPT-3B": (3200, 24, 32),
    "GPT-tiny": (64, 2, 4),
}
for _name, (_dim, _layers, _heads) in PRESET_SHAPES.items():
    GPT_PRESETS[_name] = _preset(_dim, _layers, _heads)


# ---------------------------------------------------------------------------------------------
# 2D rotary position embedding
# ---------------------------------------------------------------------------------------------
def rope_table_2d(head_dim: int, grid_size: int, base: float = 10000.0, cls_token_num: int = 1) -> Tensor:
    """The 2D RoPE table of LlamaGen (checkpoints/README.md 3.5), float32 on CPU.

    Pair k (channels 2k, 2k+1) of a head rotates by angle row * f_k for k < hd/4 and by col * f_{k-hd/4}
    otherwise, f_k = base**(-2k/(hd/2)); image token p sits at row p // grid, col p % grid. The first
    `cls_token_num` rows are cos = sin = 0 (the class position's q and k are zeroed, an official quirk).

    Returns:
        (cls_token_num + grid_size**2, head_dim // 2, 2) float32 holding (cos, sin).
    """
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(0, half, 2, device="cpu")[: half // 2].float() / half)  # (hd/4,)
    coords = torch.arange(grid_size, device="cpu").float()
    angles_1d = torch.outer(coords, inv_freq)  # (G, hd/4)
    rows = angles_1d[:, None, :].expand(grid_size, grid_size, -1)
    cols = angles_1d[None, :, :].expand(grid_size, grid_size, -1)
    angles = torch.cat([rows, cols], dim=-1).reshape(grid_size * grid_size, half)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return torch.cat([torch.zeros(cls_token_num, half, 2, device="cpu"), table])


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate interleaved channel pairs of `x` (B, S, H, hd) by `table` (S, hd/2, 2); computed in fp32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1)
    return out.flatten(3).type_as(x)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """RMSNorm computed in fp32: x / sqrt(mean(x^2) + eps) * weight (LlamaGen)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: dropout(w2(silu(w1 x) * w3 x)), no biases."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Attention(nn.Module):
    """Multi-head causal self-attention with 2D RoPE and an optional static KV cache.

    The cache (`k_cache`, `v_cache`: (B, H, cache_len, hd)) is a plain attribute, never part of the state
    dict, allocated by `GPT.setup_cache` and freed by `GPT.reset_cache`.
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.dim = cfg.n_head, cfg.head_dim, cfg.dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout = cfg.attn_dropout
        self.resid_dropout = nn.Dropout(cfg.resid_dropout)
        self.k_cache: Tensor | None = None
        self.v_cache: Tensor | None = None

    def forward(self, x: Tensor, rope: Tensor, start_pos: int | None) -> Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.wqkv(x).split(self.dim, dim=-1)
        q, k, v = (t.reshape(batch, seq, self.n_head, self.head_dim) for t in (q, k, v))
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, hd)
        if start_pos is None:  # full sequence, causal
            dropout = self.attn_dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:  # write this chunk into the static cache, attend over the filled prefix
            assert self.k_cache is not None and self.v_cache is not None
            end = start_pos + seq
            self.k_cache[:, :, start_pos:end] = k
            self.v_cache[:, :, start_pos:end] = v
            keys, values = self.k_cache[:, :, :end], self.v_cache[:, :, :end]
            mask = None
            if seq > 1:
                q_pos = torch.arange(start_pos, end, device=x.device)[:, None]
                mask = torch.arange(end, device=x.device)[None, :] <= q_pos
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, seq, self.dim)
        return self.resid_dropout(self.wo(out))


class TransformerBlock(nn.Module):
    """Pre-norm block: h = x + attn(norm(x)); out = h + ffn(norm(h))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: Tensor, rope: Tensor, start_pos: int | None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, start_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    """Class embedding with a null row (id = num_classes); in training, labels become null w.p. `dropout`."""

    def __init__(self, num_classes: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor) -> Tensor:
        if self.training and self.dropout > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class GPT(nn.Module):
    """Class-conditional LlamaGen GPT (state-dict keys = the authors' `GPT-*.pt` keys).

    Set `activation_checkpointing = True` to recompute each `TransformerBlock` in the backward pass
    (training only; same gradients, dropout masks preserved). For FSDP, wrap per `TransformerBlock`.

    Args:
        config: the `GPTConfig`.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.cls_embedding = LabelEmbedder(config.num_classes, config.dim, config.class_dropout)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.tok_dropout = nn.Dropout(config.token_dropout)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self._rope_cpu = rope_table_2d(config.head_dim, config.grid_size, config.rope_base, config.cls_token_num)
        self._rope_by_device: dict[torch.device, Tensor] = {}
        self.cache_batch: int = 0
        # Recompute each block in the backward pass (training memory saver; set by the training loop).
        self.activation_checkpointing = False
        self.initialize_weights()

    # -- init ------------------------------------------------------------------------------------
    def initialize_weights(self) -> None:
        """Linear and Embedding weights ~ N(0, init_std); RMSNorm weights 1; output head zero (LlamaGen)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        nn.init.zeros_(self.output.weight)

    @property
    def freqs_cis(self) -> Tensor:
        """The RoPE table (1 + L, hd/2, 2) float32 on CPU (row 0 = class position, zeros)."""
        return self._rope_cpu

    def _rope(self, device: torch.device) -> Tensor:
        if device not in self._rope_by_device:
            self._rope_by_device[device] = self._rope_cpu.to(device)
        return self._rope_by_device[device]

    # -- teacher forcing ---------------------------------------------------------------------------
    def forward(self, tokens: Tensor, labels: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced forward: logits for image tokens 0..S from the class and tokens 0..S-1.

        Args:
            tokens: (B, S) int64 image tokens in [0, vocab_size), 0 <= S <= L-1 (for training pass
                `codes[:, :-1]`).
            labels: (B,) int64 class ids in [0, num_classes] (num_classes = null class).
            targets: optional (B, S+1) int64 tokens to predict (for training pass `codes`).

        Returns:
            (logits, loss): logits (B, S+1, vocab_size) float32, position i predicting image token i; loss =
            mean cross-entropy over all positions (float32 scalar) when `targets` is given, else None.

        Raises:
            ValueError: wrong shapes, too long a sequence, or ids out of range (names the offending value).
        """
        cfg = self.config
        if tokens.ndim != 2 or labels.ndim != 1 or labels.shape[0] != tokens.shape[0]:
            raise ValueError(f"expected tokens (B, S) and labels (B,), got {tuple(tokens.shape)} and {tuple(labels.shape)}")
        if tokens.shape[1] > cfg.seq_len - 1:
            raise ValueError(f"tokens hold {tokens.shape[1]} positions; at most L-1 = {cfg.seq_len - 1} (pass codes[:, :-1])")
        _check_range(tokens, cfg.vocab_size, "image token")
        _check_range(labels, cfg.num_classes + 1, "class label")
        if targets is not None and targets.shape != (tokens.shape[0], tokens.shape[1] + 1):
            raise ValueError(f"targets must be (B, S+1) = {(tokens.shape[0], tokens.shape[1] + 1)}, got {tuple(targets.shape)}")
        h = torch.cat([self.cls_embedding(labels)[:, None], self.tok_embeddings(tokens)], dim=1)
        h = self.tok_dropout(h)
        rope = self._rope(h.device)[: h.shape[1]]
        for layer in self.layers:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(layer, h, rope, None, use_reentrant=False)
            else:
                h = layer(h, rope, None)
        logits = self.output(self.norm(h)).float()
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    # -- KV cache ----------------------------------------------------------------------------------
    @property
    def cache_len(self) -> int:
        """Static cache length: 1 + L rounded up to a multiple of 8 (264 for L = 256, as the official code)."""
        return -(-(self.config.cls_token_num + self.config.seq_len) // 8) * 8

    def setup_cache(self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        """Allocate a fresh, zeroed static KV cache of (batch_size, H, cache_len, hd) per layer.

        Any previous cache is discarded, so no state carries over between batches.

        Args:
            batch_size: rows decoded together (doubled by the caller for CFG).
            dtype, device: default to the model's parameter dtype and device.
        """
        param = self.output.weight
        dtype, device = dtype or param.dtype, torch.device(device) if device is not None else param.device
        shape = (batch_size, self.config.n_head, self.cache_len, self.config.head_dim)
        for layer in self.layers:
            layer.attention.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            layer.attention.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.cache_batch = batch_size

    def reset_cache(self) -> None:
        """Free the KV cache (a later `prefill` needs a new `setup_cache`)."""
        for layer in self.layers:
            layer.attention.k_cache = layer.attention.v_cache = None
        self.cache_batch = 0

    def prefill(self, labels: Tensor, tokens: Tensor | None = None) -> Tensor:
        """Fill the cache from position 0 with the class token (and optional image tokens 0..S-1).

        Args:
            labels: (B,) int64 class ids in [0, num_classes] (B = the cache batch).
            tokens: optional (B, S) int64 image-token prefix.

        Returns:
            (B, 1+S, vocab_size) float32 logits; the last predicts image token S.
        """
        h = self.cls_embedding(labels)[:, None]
        if tokens is not None and tokens.shape[1] > 0:
            h = torch.cat([h, self.tok_embeddings(tokens)], dim=1)
        return self._cached(h, 0)

    def decode(self, tokens: Tensor, start_pos: int) -> Tensor:
        """Feed image tokens at sequence positions start_pos.. (image token j sits at position j+1).

        Args:
            tokens: (B, S) int64 image tokens; B = the cache batch.
            start_pos: first sequence position, 1 <= start_pos and start_pos + S <= L.

        Returns:
            (B, S, vocab_size) float32 logits; row s predicts image token start_pos + s.
        """
        return self._cached(self.tok_embeddings(tokens), start_pos)

    def _cached(self, h: Tensor, start_pos: int) -> Tensor:
        if self.layers[0].attention.k_cache is None:
            raise RuntimeError("KV cache not set up: call setup_cache(batch_size, dtype, device) first")
        if h.shape[0] != self.cache_batch:
            raise ValueError(f"batch {h.shape[0]} does not match the KV cache batch {self.cache_batch}")
        end = start_pos + h.shape[1]
        if start_pos < 0 or end > self.config.seq_len:
            raise ValueError(f"positions {start_pos}..{end - 1} outside 0..{self.config.seq_len - 1}")
        h = h.to(self.output.weight.dtype)
        rope = self._rope(h.device)[start_pos:end]
        for layer in self.layers:
            h = layer(h, rope, start_pos)
        return self.output(self.norm(h)).float()

    # -- accounting --------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; `non_embedding` excludes the token table, class table and output head."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= sum(m.weight.numel() for m in (self.tok_embeddings, self.cls_embedding.embedding_table, self.output))
        return total

    def flops_per_token(self, training: bool = True) -> float:
        """FLOPs per token (PaLM/nanoGPT convention) for MFU estimates.

        forward = 2 * N_matmul + 4 * n_layer * L * dim, with N_matmul = all Linear weights (attention,
        FFN, output head; no embeddings or norms) and L = sequence length (full attention, not halved for
        causality). Training (forward + backward) = 3 * forward.
        """
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        forward = 2 * matmul + 4 * self.config.n_layer * self.config.seq_len * self.config.dim
        return float(3 * forward if training else forward)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: weight decay on parameters with >= 2 dims only (LlamaGen `configure_optimizers`).

        Returns:
            [{"params": >=2-D params, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}].
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]


def _check_range(ids: Tensor, upper: int, what: str) -> None:
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{what} ids must be an integer tensor, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= upper):
        raise ValueError(f"{what} ids must be in [0, {upper}), got values in [{int(ids.min())}, {int(ids.max())}]")


# ---------------------------------------------------------------------------------------------
# Construction, saving, loading
# ---------------------------------------------------------------------------------------------
def create_gpt(
    name_or_config: str | GPTConfig,
    vocab_size: int | None = None,
    num_classes: int | None = None,
    grid_size: int | None = None,
    **overrides: Any,
) -> GPT:
    """Build a randomly initialised GPT from a preset name or a config.

    Args:
        name_or_config: a preset of `vfmtok.configs.GPT_PRESETS` ("GPT-B" ... "GPT-3B", "GPT-tiny") or a
            `GPTConfig`.
        vocab_size, num_classes, grid_size: data-dependent sizes (from the token store manifest); None keeps
            the config's value (16384, 1000, 16 for presets).
        **overrides: any other `GPTConfig` field (e.g. `class_dropout=0.0`).

    Raises:
        KeyError: unknown preset (lists them). ValueError: unknown override field or invalid config.
    """
    cfg = GPT_PRESETS[name_or_config]() if isinstance(name_or_config, str) and name_or_config in GPT_PRESETS else name_or_config
    if isinstance(cfg, str):
        raise KeyError(f"unknown GPT preset {cfg!r}; available: {', '.join(sorted(GPT_PRESETS))}")
    sizes = {"vocab_size": vocab_size, "num_classes": num_classes, "grid_size": grid_size}
    return GPT(_with_overrides(cfg, {**{k: v for k, v in sizes.items() if v is not None}, **overrides}))


def _check_fields(overrides: dict[str, Any]) -> None:
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown GPTConfig field(s) {unknown}; expected some of {sorted(fields)}")


def _with_overrides(cfg: GPTConfig, overrides: dict[str, Any]) -> GPTConfig:
    _check_fields(overrides)
    return dataclasses.replace(cfg, **overrides)


def save_gpt(model: GPT, out_dir: str | Path) -> Path:
    """Write `out_dir/model.safetensors` (weights, fp32 as held) and `out_dir/config.json`.

    config.json = {"format": "vfmtok.gpt", "format_version": 1, "gpt_config": {GPTConfig fields}}; the same
    config is also stored in the safetensors metadata, so the weights file alone is loadable.

    Returns:
        The weights path.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = config_to_dict(model.config)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = out_dir / WEIGHTS_FILE
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT_NAME, "gpt_config": json.dumps(cfg)})
    tmp.replace(path)
    doc = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "gpt_config": cfg}
    (out_dir / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return path


def load_gpt(path: str | Path, **overrides: Any) -> GPT:
    """Load a GPT (eval mode, fp32, CPU) from our run dir, a `.safetensors` file, or the authors' `GPT-*.pt`.

    Accepted inputs:
      * a directory holding `model.safetensors` and `config.json` (written by `save_gpt` / train-ar);
      * a `.safetensors` file whose config is in `config.json` beside it or in its own metadata;
      * the authors' checkpoint (`ema` entry, else `model`), read with `torch.load(weights_only=True)`.
        Its config is inferred: dim/vocab/classes/layers/FFN width from shapes, heads from the preset named
        in `args.gpt_model`, in the file name (`GPT-L-300e.pt`), or the preset with the same dim and depth;
        grid size from `args.latent_size` (else 16).

    config.json may hold the GPTConfig fields under "gpt_config" (or "model"), or flat.

    Args:
        path: file or directory. **overrides: GPTConfig fields to force (e.g. `n_head`, `grid_size`).

    Raises:
        FileNotFoundError: nothing loadable at `path` (names the files expected).
        ValueError: config cannot be inferred, or the weights do not match it strictly (names the missing,
            unexpected or mis-shaped keys).
    """
    from vfmtok.checkpoint_io import load_official_pt, pick_state_dict

    path = Path(path)
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE} in this run directory")
        return load_gpt(weights, **overrides)
    if not path.is_file():
        raise FileNotFoundError(f"GPT checkpoint not found: {path} (expected a run dir, a .safetensors or a GPT-*.pt)")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        state = load_file(str(path))
        cfg_dict = _read_config_json(path.parent / CONFIG_FILE)
        if cfg_dict is None:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if "gpt_config" not in meta:
                raise FileNotFoundError(f"{path}: no {CONFIG_FILE} beside it and no gpt_config in its metadata")
            cfg_dict = json.loads(meta["gpt_config"])
        cfg = _with_overrides(config_from_dict(GPTConfig, cfg_dict), overrides)
        source = str(path)
    else:
        ckpt = load_official_pt(path)
        entry, state = pick_state_dict(ckpt, path)
        cfg = infer_official_config(state, path, ckpt.get("args"), **overrides)
        source = f"{path} [{entry}]"
    model = GPT(cfg)
    load_state_strict(model, state, source)
    return model.eval()


def _read_config_json(file: Path) -> dict[str, Any] | None:
    if not file.is_file():
        return None
    data = json.loads(file.read_text())
    for key in ("gpt_config", "model"):
        if isinstance(data.get(key), dict):
            return data[key]
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    if set(data) <= fields:
        return data
    raise ValueError(f"{file}: no GPT config found (expected a 'gpt_config' entry with {sorted(fields)})")


def infer_official_config(state: dict[str, Tensor], path: str | Path, args: Any = None, **overrides: Any) -> GPTConfig:
    """Infer the `GPTConfig` of an official state dict from its shapes, `args` and file name.

    Raises:
        ValueError: a key needed for inference is missing, or the head count cannot be determined.
    """
    need = ("tok_embeddings.weight", "cls_embedding.embedding_table.weight", "layers.0.feed_forward.w1.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"{path}: not a LlamaGen GPT state dict, missing key(s) {missing}")
    vocab, dim = state["tok_embeddings.weight"].shape
    num_classes = state["cls_embedding.embedding_table.weight"].shape[0] - 1
    n_layer = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k)))
    hidden = state["layers.0.feed_forward.w1.weight"].shape[0]
    candidates = []
    arg_name = getattr(args, "gpt_model", None)
    if isinstance(arg_name, str):
        candidates += [arg_name, f"GPT-{arg_name}"]
    candidates += re.findall(r"GPT-(?:XXL|XL|3B|2B|B|L|tiny)", Path(path).name)
    n_head = None
    for name in candidates:
        if name in PRESET_SHAPES and PRESET_SHAPES[name][:2] == (dim, n_layer):
            n_head = PRESET_SHAPES[name][2]
            break
    if n_head is None:
        n_head = next((h for d, n, h in PRESET_SHAPES.values() if (d, n) == (dim, n_layer)), None)
    grid = getattr(args, "latent_size", None)
    base = {"dim": int(dim), "n_layer": n_layer, "vocab_size": int(vocab), "num_classes": int(num_classes),
            "grid_size": grid if isinstance(grid, int) else 16}
    if "n_head" not in overrides and n_head is None:
        raise ValueError(f"{path}: cannot infer the head count of a GPT with dim {dim} and {n_layer} layers; pass n_head=...")
    _check_fields(overrides)
    cfg = GPTConfig(**{**base, "n_head": n_head, **overrides})
    if cfg.ffn_hidden != hidden:
        raise ValueError(f"{path}: FFN width {hidden} does not match the LlamaGen rule for dim {dim} ({cfg.ffn_hidden})")
    return cfg


def load_state_strict(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """`load_state_dict(strict=True)` with one clear error naming missing, unexpected and mis-shaped keys.

    Raises:
        ValueError: the key sets or shapes differ (lists up to 8 keys per kind, with counts).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if state[k].shape != own[k].shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
            problems.append(f"{len(items)} {label} key(s): {', '.join(items[:8])}{more}")
    if problems:
        raise ValueError(f"{source}: weights do not match the GPT config strictly; " + "; ".join(problems))
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()})
