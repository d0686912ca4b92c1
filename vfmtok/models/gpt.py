"""LlamaGen-style class-conditional GPT over VFMTok codes (VFMTok paper, arXiv 2507.08441, section 4.1).

The generator of the paper is LlamaGen's `GPT-*` (Sun et al. 2024, arXiv 2406.06525): pre-norm RMSNorm
(eps 1e-5), SwiGLU FFN (hidden = 8*dim/3 rounded up to a multiple of 256), bias-free multi-head attention,
2D RoPE over the token grid, one class-token prefix whose embedding table has a null row (id =
`num_classes`) for classifier-free guidance. Parameter names equal the authors' state-dict keys, so their
released `GPT-*.pt` files load strictly (shared/reference/checkpoints/README.md, "GPT key groups" and 3.5).

Sequence convention: position 0 holds the class embedding, positions 1..L-1 the embeddings of image tokens
0..L-2; the output at position i predicts image token i (L = grid_size**2 = 256 for VFMTok).

Layout: `vfmtok.models.gpt_config` (GPTConfig, presets), `vfmtok.models.gpt_layers` (RoPE and blocks), this
module (the `GPT` model with its KV cache), `vfmtok.models.gpt_io` (create / save / load, the authors' `.pt`;
it imports this module, never the other way round).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from vfmtok.device import compute_dtype
from vfmtok.models.attention import zeroed_cache
from vfmtok.models.gpt_config import GPTConfig
from vfmtok.models.gpt_layers import LabelEmbedder, RMSNorm, TransformerBlock, rope_table_2d

__all__ = ["GPT"]


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class GPT(nn.Module):
    """Class-conditional LlamaGen GPT (state-dict keys = the authors' `GPT-*.pt` keys).

    Set `activation_checkpointing = True` to recompute each `TransformerBlock` in the backward pass
    (training only; same gradients, dropout masks preserved). FSDP: `vfmtok.engine.fsdp.shard_model` shards
    per `TransformerBlock`.

    Args:
        config: the `GPTConfig`.
    """

    # `vfmtok.generate` capabilities beyond the base protocol (setup_cache / prefill / decode / reset_cache):
    supports_row_subset = True  # decode() accepts the first B <= cache_batch rows
    supports_static_decode = True  # decode() accepts a position tensor (compiled decoding)

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
    def forward(self, tokens: Tensor, labels: Tensor, targets: Tensor | None = None,
                check_ids: bool = True) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced forward: logits for image tokens 0..S from the class and tokens 0..S-1.

        Args:
            tokens: (B, S) int64 image tokens in [0, vocab_size), 0 <= S <= L-1 (for training pass
                `codes[:, :-1]`).
            labels: (B,) int64 class ids in [0, num_classes] (num_classes = null class).
            targets: optional (B, S+1) int64 tokens to predict (for training pass `codes`).
            check_ids: check that token and class ids lie in range (reads their min/max on the host: a device
                sync on GPU). Training passes False: `train-ar` checks the whole token store on the host first.

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
        if check_ids:
            _check_range(tokens, cfg.vocab_size, "image token")
            _check_range(labels, cfg.num_classes + 1, "class label")
        elif tokens.is_floating_point() or labels.is_floating_point():
            raise ValueError(f"ids must be integer tensors, got {tokens.dtype} tokens and {labels.dtype} labels")
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
        """Set up a zeroed static KV cache of (batch_size, H, cache_len, hd) per layer.

        A cache still allocated with the same shape, dtype and device is zeroed in place (its memory keeps its
        address, which CUDA graphs of a compiled decode step rely on); otherwise a new one is allocated. Either
        way no state carries over between batches.

        Args:
            batch_size: rows decoded together (doubled by the caller for CFG).
            dtype: default = the compute dtype: the autocast dtype when autocast is enabled on the model's
                device at this call (bf16 sampling keeps a bf16 cache: half the memory, no per-step cast of
                the prefix), else the parameter dtype.
            device: default = the parameters' device.
        """
        param = self.output.weight
        device = torch.device(device) if device is not None else param.device
        dtype = dtype or compute_dtype(device.type, param.dtype)
        shape = (batch_size, self.config.n_head, self.cache_len, self.config.head_dim)
        for layer in self.layers:
            attn = layer.attention
            attn.k_cache = zeroed_cache(attn.k_cache, shape, dtype, device)
            attn.v_cache = zeroed_cache(attn.v_cache, shape, dtype, device)
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

    def decode(self, tokens: Tensor, start_pos: int | Tensor) -> Tensor:
        """Feed image tokens at sequence positions start_pos.. (image token j sits at position j+1).

        Args:
            tokens: (B, S) int64 image tokens; B <= the cache batch: fewer rows use the cache's first B rows
                (how `generate` stops computing the unconditional half of a CFG batch once guidance ends).
            start_pos: first sequence position (an int, 1 <= start_pos and start_pos + S <= L), or the static
                step: a (S,) int64 tensor of positions on the model's device (not range-checked, to avoid a
                device sync), whose shapes never change between steps, so `torch.compile` captures one graph
                (CUDA graphs with mode="reduce-overhead"); it attends over the whole cache under a position
                mask, giving the int path's logits up to float rounding.

        Returns:
            (B, S, vocab_size) float32 logits; row s predicts image token start_pos + s.

        Raises:
            RuntimeError: no cache set up. ValueError: more rows than the cache, positions out of range (int).
        """
        return self._cached(self.tok_embeddings(tokens), start_pos)

    def _cached(self, h: Tensor, start_pos: int | Tensor) -> Tensor:
        if self.layers[0].attention.k_cache is None:
            raise RuntimeError("KV cache not set up: call setup_cache(batch_size, dtype, device) first")
        if h.shape[0] > self.cache_batch:
            raise ValueError(f"batch {h.shape[0]} exceeds the KV cache batch {self.cache_batch}")
        if isinstance(start_pos, Tensor):
            if start_pos.shape != (h.shape[1],):
                raise ValueError(f"position tensor of shape {tuple(start_pos.shape)}; expected ({h.shape[1]},)")
            rope = self._rope(h.device)[start_pos]
        else:
            end = start_pos + h.shape[1]
            if start_pos < 0 or end > self.config.seq_len:
                raise ValueError(f"positions {start_pos}..{end - 1} outside 0..{self.config.seq_len - 1}")
            rope = self._rope(h.device)[start_pos:end]
        h = h.to(self.output.weight.dtype)
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
