"""RAR: Randomized AutoRegressive generator over VFMTok codes (the authors' VFMTok-RAR).

RAR (Yu et al. 2024, "Randomized Autoregressive Visual Generation", arXiv 2411.00776) is a decoder-only
transformer trained on token sequences in a random order with probability r (annealed from 1 to 0 during
training) and sampled in raster order. The VFMTok authors trained it on VFMTok codes (CVMI-Lab/VFMTok-RAR);
this module reproduces their `modeling/rar.py` exactly (shared/reference/rar.md sections 2-4), so their
released `model.safetensors` / `vfmtok-rar-*.safetensors` load strictly.

Sequence: [cls, condition, token_{o_0}, ..., token_{o_255}] for an order o (raster = identity). Every slot
gets `pos_embed[2 + o_j]` (cls and condition: rows 0 and 1) plus a target-aware embedding
`target_aware_pos_embed[2 + o_j]` of the token it must predict next (cls and the last slot: 0). Each block is
modulated (adaLN) by a per-position condition embedding(condition id) + timesteps_embeddings[p]. Output slot
1 + j predicts token o_j; the cls output is dropped, so logits are (B, 257, V) and the last one is unused.

Layout: `vfmtok.models.rar_config` (RARConfig, RAR_PRESETS), `vfmtok.models.rar_layers` (blocks), this
module (the model, its KV cache, training orders), `vfmtok.models.rar_io` (create / save / load).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from vfmtok.models.attention import zeroed_cache
from vfmtok.models.rar_config import POS_TABLE_EXTRA, TIMESTEP_TABLE_EXTRA, RARConfig
from vfmtok.models.rar_layers import Block, FinalLayer

# Random-order annealing of the authors' rar.yaml (optimizer steps; rar.md section 3).
ANNEAL_START = 125_000
ANNEAL_END = 187_500


# ---------------------------------------------------------------------------------------------
# Training orders
# ---------------------------------------------------------------------------------------------
def random_order_prob(step: int, anneal_start: int = ANNEAL_START, anneal_end: int = ANNEAL_END) -> float:
    """Probability that a training sequence uses a random order at optimizer step `step` (RAR's annealing).

    1.0 for step < anneal_start, 1 - (step - start) / (end - start) in between, 0.0 for step > anneal_end
    (the authors' `get_rar_random_ratio`; defaults 125,000 and 187,500 of a 250,000-step run).

    Raises:
        ValueError: negative step, or not 0 <= anneal_start <= anneal_end.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0 <= anneal_start <= anneal_end:
        raise ValueError(f"need 0 <= anneal_start <= anneal_end, got {anneal_start} and {anneal_end}")
    if step < anneal_start:
        return 1.0
    if step >= anneal_end:
        return 0.0
    return 1.0 - (step - anneal_start) / (anneal_end - anneal_start)


def draw_orders(batch_size: int, seq_len: int, prob: float, generator: torch.Generator) -> Tensor:
    """Per-sequence token orders: a random permutation with probability `prob`, else raster (the identity).

    Row b draws u ~ U[0, 1) then, if u < prob, `torch.randperm(seq_len)`, both from `generator` (CPU), so the
    result depends only on the generator's state. The authors draw one order per sequence, so the two
    sequences (nearest and second-nearest codes) of an image get independent orders.

    Returns:
        (batch_size, seq_len) int64 on CPU; each row a permutation of 0..seq_len-1.

    Raises:
        ValueError: prob outside [0, 1], or a negative size.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    if batch_size < 0 or seq_len <= 0:
        raise ValueError(f"need batch_size >= 0 and seq_len > 0, got {batch_size} and {seq_len}")
    rows = []
    for _ in range(batch_size):
        shuffle = float(torch.rand((), generator=generator)) < prob
        rows.append(torch.randperm(seq_len, generator=generator) if shuffle else torch.arange(seq_len))
    return torch.stack(rows) if rows else torch.empty(0, seq_len, dtype=torch.long)


def permute_tokens(tokens: Tensor, orders: Tensor) -> Tensor:
    """tokens (B, L) in raster order -> (B, L) in the given orders: out[b, j] = tokens[b, orders[b, j]]."""
    return tokens.gather(1, orders)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class RAR(nn.Module):
    """Class-conditional RAR generator (state-dict keys = the authors' RAR `model.safetensors` keys).

    The decoding protocol equals the GPT's (`config.seq_len`, `config.num_classes`, `setup_cache`, `prefill`,
    `decode`, `reset_cache`), so `vfmtok.sampling.generate` samples from it unchanged (raster order), including
    the static decode step of compiled decoding (`decode` with a position tensor). Every cached row is decoded
    at every step (no `supports_row_subset`: the unconditional CFG rows run to the end).

    Args:
        config: the `RARConfig`.
    """

    # `vfmtok.generate` capabilities beyond the base protocol (setup_cache / prefill / decode / reset_cache):
    supports_static_decode = True  # decode() accepts a position tensor (compiled decoding)

    def __init__(self, config: RARConfig) -> None:
        super().__init__()
        self.config = config
        dim, seq_len = config.dim, config.seq_len
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, seq_len + POS_TABLE_EXTRA, dim))
        self.target_aware_pos_embed = nn.Parameter(torch.zeros(1, seq_len + POS_TABLE_EXTRA, dim))
        self.timesteps_embeddings = nn.Parameter(torch.zeros(1, seq_len + TIMESTEP_TABLE_EXTRA, dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.embeddings = nn.Embedding(config.num_embeddings, dim)
        self.adaln_before_head = FinalLayer(config)
        self.lm_head = nn.Linear(dim, config.vocab_size)
        self.cache_batch: int = 0
        # (B, D) condition embedding of the cached rows: a non-persistent buffer like the KV cache (static
        # address for CUDA graphs), written in place by `prefill`.
        self.register_buffer("cond_cache", None, persistent=False)
        self._prefilled = False
        # Recompute each block in the backward pass (training memory saver; the authors' XXL setting).
        self.activation_checkpointing = False
        self.initialize_weights()

    # -- init ------------------------------------------------------------------------------------
    def initialize_weights(self) -> None:
        """Authors' init: trunc-normal(init_std) Linear/Embedding weights and position tables, zero biases,
        LayerNorm (1, 0), zero cls token, and every adaLN Linear (blocks and final layer) zero."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for table in (self.pos_embed, self.target_aware_pos_embed, self.timesteps_embeddings):
            nn.init.trunc_normal_(table, mean=0.0, std=std)
        nn.init.zeros_(self.cls_token)
        for block in [*self.blocks, self.adaln_before_head]:
            nn.init.zeros_(block.adaLN_modulation[1].weight)
            nn.init.zeros_(block.adaLN_modulation[1].bias)

    def condition_ids(self, labels: Tensor) -> Tensor:
        """Class labels 0..C (C = null) -> embedding ids V+1+label (the null class maps to V+C+1)."""
        return labels.long() + self.config.vocab_size + 1

    # -- teacher forcing ---------------------------------------------------------------------------
    def forward(
        self, tokens: Tensor, labels: Tensor, orders: Tensor | None = None, targets: Tensor | None = None,
        check_ids: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced forward in a given token order (the training path; raster when `orders` is None).

        Args:
            tokens: (B, S) int64 image tokens in raster order, ids in [0, vocab_size); S = seq_len for
                training, S < seq_len only in raster order (a prefix, e.g. during cache-free decoding).
            labels: (B,) int64 class ids in [0, num_classes] (num_classes = null class). In training mode each
                is replaced by the null class with probability `class_dropout`.
            orders: optional (B, seq_len) int64, each row a permutation of 0..seq_len-1 (see `draw_orders`).
            targets: optional (B, S) int64 raster-order tokens to predict (normally `tokens` itself).
            check_ids: check id ranges and that every order is a permutation (host-device syncs). The training
                step passes False: the token store was range-checked on the host and its orders are permutations
                by construction (`draw_orders`). Shapes are always checked.

        Returns:
            (logits, loss): logits (B, S+1, vocab_size) float32, row j predicting token orders[:, j] (the last
            row of a full sequence predicts nothing); loss = mean cross-entropy of logits[:, :S] against
            `targets` permuted by the orders (float32 scalar), or None without targets.

        Raises:
            ValueError: wrong shapes or ids out of range, orders that are not permutations or used with a
                partial sequence (names the offending value).
        """
        cfg = self.config
        seq_len = cfg.seq_len
        if tokens.ndim != 2 or labels.ndim != 1 or labels.shape[0] != tokens.shape[0]:
            raise ValueError(f"expected tokens (B, S) and labels (B,), got {tuple(tokens.shape)} and "
                             f"{tuple(labels.shape)}")
        batch, seq = tokens.shape
        if seq > seq_len:
            raise ValueError(f"tokens hold {seq} positions; at most seq_len = {seq_len}")
        if check_ids:
            _check_range(tokens, cfg.vocab_size, "image token")
            _check_range(labels, cfg.num_classes + 1, "class label")
        if targets is not None and targets.shape != tokens.shape:
            raise ValueError(f"targets must have the shape of tokens {tuple(tokens.shape)}, got {tuple(targets.shape)}")
        device = tokens.device
        raster = torch.arange(seq_len, device=device).expand(batch, seq_len)
        if orders is None:
            orders = raster
        else:
            if orders.shape != (batch, seq_len):
                raise ValueError(f"orders must be (B, seq_len) = {(batch, seq_len)}, got {tuple(orders.shape)}")
            if seq != seq_len:
                raise ValueError(f"orders need the full sequence of {seq_len} tokens, got {seq}")
            orders = orders.to(device=device, dtype=torch.long)
            if check_ids and not torch.equal(orders.sort(dim=-1).values, raster):
                raise ValueError("every row of orders must be a permutation of 0..seq_len-1")
        if self.training and cfg.class_dropout > 0:
            drop = torch.rand(batch, device=labels.device) < cfg.class_dropout
            labels = torch.where(drop, torch.full_like(labels, cfg.num_classes), labels)
        cond_ids = self.condition_ids(labels)
        ids = torch.cat([cond_ids[:, None], tokens.long().gather(1, orders[:, :seq])], dim=1)
        h = torch.cat([self.cls_token.expand(batch, -1, -1), self.embeddings(ids)], dim=1)  # (B, 2+S, D)
        slots = torch.cat([torch.arange(2, device=device).expand(batch, 2), 2 + orders[:, :seq]], dim=1)
        h = h + self.pos_embed[0][slots]
        zero = h.new_zeros(batch, 1, cfg.dim)
        h = h + torch.cat([zero, self.target_aware_pos_embed[0][2 + orders], zero], dim=1)[:, : 2 + seq]
        cond = self.embeddings(cond_ids)[:, None] + self.timesteps_embeddings[:, : 2 + seq]
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, h, cond, None, use_reentrant=False)
            else:
                h = block(h, cond, None)
        logits = self.lm_head(self.adaln_before_head(h[:, 1:], cond[:, 1:])).float()
        loss = None
        if targets is not None:
            wanted = targets.long().gather(1, orders[:, :seq])
            loss = F.cross_entropy(logits[:, :seq].reshape(-1, logits.shape[-1]), wanted.reshape(-1))
        return logits, loss

    # -- KV cache (raster order) -------------------------------------------------------------------
    @property
    def cache_len(self) -> int:
        """Cache slots: cls + condition + seq_len tokens = seq_len + 2 (258 for 256 tokens)."""
        return self.config.seq_len + 2

    def setup_cache(
        self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> None:
        """Set up a zeroed static KV cache of (batch_size, H, cache_len, hd) per block and a (batch_size, D)
        condition cache (the embeddings' dtype).

        A cache still allocated with the same shape, dtype and device is zeroed in place (its memory keeps its
        address, which CUDA graphs of a compiled decode step rely on); otherwise a new one is allocated. Either
        way no state carries over between batches: `prefill` must run before `decode`.

        Args:
            batch_size: rows decoded together (doubled by the caller for CFG).
            dtype, device: default to the model's parameter dtype and device.
        """
        param = self.lm_head.weight
        dtype, device = dtype or param.dtype, torch.device(device) if device is not None else param.device
        shape = (batch_size, self.config.n_head, self.cache_len, self.config.head_dim)
        for block in self.blocks:
            attn = block.attn
            attn.k_cache = zeroed_cache(attn.k_cache, shape, dtype, device)
            attn.v_cache = zeroed_cache(attn.v_cache, shape, dtype, device)
        self.cond_cache = zeroed_cache(self.cond_cache, (batch_size, self.config.dim), self.embeddings.weight.dtype,
                                       device)
        self.cache_batch = batch_size
        self._prefilled = False

    def reset_cache(self) -> None:
        """Free the KV and condition caches (a later `prefill` needs a new `setup_cache`)."""
        for block in self.blocks:
            block.attn.k_cache = block.attn.v_cache = None
        self.cond_cache = None
        self.cache_batch = 0
        self._prefilled = False

    def prefill(self, labels: Tensor, tokens: Tensor | None = None) -> Tensor:
        """Fill the cache from slot 0 with [cls, condition] (and optional raster image tokens 0..S-1).

        Args:
            labels: (B,) int64 class ids in [0, num_classes] (B = the cache batch).
            tokens: optional (B, S) int64 image-token prefix.

        Returns:
            (B, 1+S, vocab_size) float32 logits; row i predicts image token i (the cls output is dropped).

        Raises:
            RuntimeError: no cache set up. ValueError: class ids out of range, a batch other than the cache's.
        """
        _check_range(labels, self.config.num_classes + 1, "class label")
        if self.cond_cache is None:
            raise RuntimeError("KV cache not set up: call setup_cache(batch_size, dtype, device) first")
        if labels.shape[0] != self.cache_batch:
            raise ValueError(f"batch {labels.shape[0]} does not match the KV cache batch {self.cache_batch}")
        self.cond_cache.copy_(self.embeddings(self.condition_ids(labels)))
        self._prefilled = True
        h = torch.cat([self.cls_token.expand(labels.shape[0], -1, -1), self.cond_cache[:, None]], dim=1)
        if tokens is not None and tokens.shape[1] > 0:
            h = torch.cat([h, self.embeddings(tokens)], dim=1)
        return self._cached(h, 0)[:, 1:]

    def decode(self, tokens: Tensor, start_pos: int | Tensor) -> Tensor:
        """Feed raster image tokens start_pos-1 .. start_pos+S-2 (image token j sits at slot j + 2).

        Args:
            tokens: (B, S) int64 image tokens; B = the cache batch.
            start_pos: index of the image token the first row predicts, an int with 1 <= start_pos and
                start_pos + S <= seq_len + 1 (the last row may be the unused prediction after the last token),
                or the static step: a (S,) int64 tensor of those indices on the model's device (not
                range-checked, to avoid a device sync), whose shapes never change between steps, so
                `torch.compile` captures one graph (CUDA graphs with mode="reduce-overhead"); it writes the
                cache with `index_copy_` and attends over the whole cache under a slot mask, giving the int
                path's logits up to float rounding. Position embeddings, the raster target-aware embedding and
                the per-position adaLN condition are gathered at the same slots in both paths.

        Returns:
            (B, S, vocab_size) float32 logits; row s predicts image token start_pos + s (same contract as
            `GPT.decode`).

        Raises:
            RuntimeError: no cache set up or no prefill since. ValueError: a batch other than the cache's, an
                int start_pos out of range, a position tensor of another shape than (S,).
        """
        if not self._prefilled:
            raise RuntimeError("decode before prefill: call setup_cache(...) then prefill(labels) first")
        if not isinstance(start_pos, Tensor) and start_pos < 1:
            raise ValueError(f"start_pos must be >= 1 (image token 0 is predicted by prefill), got {start_pos}")
        return self._cached(self.embeddings(tokens), start_pos + 1)

    def _cached(self, h: Tensor, start: int | Tensor) -> Tensor:
        """Run content embeddings h (B, S, D) at slots start.. (an int, or a (S,) slot tensor) through the cache;
        logits of those slots."""
        if self.blocks[0].attn.k_cache is None or self.cond_cache is None:
            raise RuntimeError("KV cache not set up: call setup_cache(batch_size, dtype, device) first")
        if h.shape[0] != self.cache_batch:
            raise ValueError(f"batch {h.shape[0]} does not match the KV cache batch {self.cache_batch}")
        if isinstance(start, Tensor):
            if start.shape != (h.shape[1],):
                raise ValueError(f"position tensor of shape {tuple(start.shape)}; expected ({h.shape[1]},)")
            slots: slice | Tensor = start
        else:
            end = start + h.shape[1]
            if end > self.cache_len:
                raise ValueError(f"slots {start}..{end - 1} outside 0..{self.cache_len - 1}")
            slots = slice(start, end)
        seq_len = self.config.seq_len
        h = h.to(self.lm_head.weight.dtype) + self.pos_embed[0, slots]
        # Raster target-aware embedding: slot s (1 <= s <= seq_len) predicts token s-1 -> row s+1; else 0.
        target_aware = self.target_aware_pos_embed[0, 2 : seq_len + 2]
        zero = target_aware.new_zeros(1, target_aware.shape[-1])
        h = h + torch.cat([zero, target_aware, zero])[slots]
        cond = self.cond_cache[:, None] + self.timesteps_embeddings[0, slots]  # adaLN condition per slot
        for block in self.blocks:
            h = block(h, cond, start)
        return self.lm_head(self.adaln_before_head(h, cond)).float()

    # -- accounting --------------------------------------------------------------------------------
    def num_params(self) -> int:
        """Parameter count (RAR-L on VFMTok's 16384 codes: 493,140,992)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, training: bool = True) -> float:
        """FLOPs per token (PaLM/nanoGPT convention): forward = 2 * N_linear + 4 * n_layer * T * dim.

        N_linear = all Linear weights (attention, MLP, adaLN, head), T = seq_len + 2 slots (full attention,
        not halved for causality). Training (forward + backward) = 3 * forward.
        """
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        forward = 2 * matmul + 4 * self.config.n_layer * self.cache_len * self.config.dim
        return float(3 * forward if training else forward)


def _check_range(ids: Tensor, upper: int, what: str) -> None:
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{what} ids must be an integer tensor, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= upper):
        raise ValueError(f"{what} ids must be in [0, {upper}), got values in [{int(ids.min())}, {int(ids.max())}]")
