"""The two generator families `train-ar` trains, LlamaGen's GPT and RAR: recipes, construction, orders, export.

`vfmtok.jobs.train_ar` runs one loop for both; what differs lives here:

| | GPT (VFMTok paper 4.1, `train_c2i.py`) | RAR (the authors' VFMTok-RAR, shared/reference/rar.md s. 3) |
|---|---|---|
| optimizer | AdamW lr 1e-4, betas (0.9, 0.95), wd 0.05 | AdamW lr 4e-4, betas (0.9, 0.96), wd 0.03 |
| schedule | constant, no warm-up | linear warm-up over 25 % of the steps (62,500 of 250,000), cosine to 1e-5 |
| EMA | 0.9999, exported | none (the live weights are exported) unless `--ema-decay` |
| batch | 512 sequences | 2048 images |
| views | one stored view per image and epoch | all neighbour sequences of one crop view (nearest + second nearest) |
| epochs | 300 (B, L), 200 (larger) | 400 (250,000 steps x 2048 images / 1.28 M) |
| order | raster | random with probability r(step), annealed 1 -> 0 between 50 % and 75 % of the run |

Both: gradient clipping 1.0, bf16 autocast on CUDA, class dropout 0.1. Explicit options override every entry.

Orders are a pure function of (seed, optimizer step, store index, neighbour rank): sequence k of image `row` at step
t draws with a CPU generator seeded by `sequence_seed(seed, t, row, k)`. So they do not depend on the number of
processes, micro-batches or workers, and a resumed run draws exactly the orders of an uninterrupted one without any
generator state in the checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vfmtok.data.token_store.format import splitmix64
from vfmtok.data.token_store.reader import StoreInfo, TokenStoreError
from vfmtok.models.gpt import GPT
from vfmtok.models.gpt_config import GPT_PRESETS
from vfmtok.models.gpt_io import create_gpt, load_gpt, save_gpt
from vfmtok.models.gpt_layers import TransformerBlock
from vfmtok.models.rar import RAR, draw_orders, random_order_prob
from vfmtok.models.rar_config import RAR_PRESETS
from vfmtok.models.rar_io import create_rar, save_rar
from vfmtok.models.rar_layers import Block

VIEWS = ("per-epoch", "all-neighbours")
LR_SCHEDULES = ("constant", "cosine")
RAR_ANNEAL_FRACTIONS = (0.5, 0.75)  # the authors' 125,000 and 187,500 of 250,000 steps


@dataclass(frozen=True)
class Recipe:
    """Defaults of one generator family (table in the module docstring).

    Attributes:
        lr, betas, weight_decay: AdamW. ema_decay: None = no EMA (export the live weights).
        lr_schedule: "constant" | "cosine". warmup_fraction: warm-up steps as a fraction of the run.
        end_lr: the cosine schedule's final lr. batch_size: global images per step. views: see `VIEWS`.
        epochs: default run length per preset name (None: not listed).
    """

    lr: float
    betas: tuple[float, float]
    weight_decay: float
    ema_decay: float | None
    lr_schedule: str
    warmup_fraction: float
    end_lr: float
    batch_size: int
    views: str
    epochs: dict[str, float]


GPT_RECIPE = Recipe(1e-4, (0.9, 0.95), 0.05, 0.9999, "constant", 0.0, 0.0, 512, "per-epoch",
                    {"GPT-B": 300, "GPT-L": 300, "GPT-XL": 200, "GPT-XXL": 200, "GPT-2B": 200, "GPT-3B": 200})
RAR_RECIPE = Recipe(4e-4, (0.9, 0.96), 0.03, None, "cosine", 0.25, 1e-5, 2048, "all-neighbours",
                    {"RAR-L": 400, "RAR-XL": 400, "RAR-XXL": 400})


def generator_kind(model: str | nn.Module) -> str:
    """"gpt" or "rar" for a preset name or a model.

    Raises:
        KeyError: an unknown preset name (lists every GPT and RAR preset).
    """
    if isinstance(model, nn.Module):
        return "rar" if isinstance(model, RAR) else "gpt"
    if model in RAR_PRESETS:
        return "rar"
    if model in GPT_PRESETS:
        return "gpt"
    raise KeyError(f"--model {model!r}: unknown; expected a GPT preset ({', '.join(GPT_PRESETS)}) or a RAR preset "
                   f"({', '.join(RAR_PRESETS)})")


def recipe(kind: str) -> Recipe:
    """The `Recipe` of "gpt" or "rar"."""
    return RAR_RECIPE if kind == "rar" else GPT_RECIPE


def default_anneal(total_steps: int) -> tuple[int, int]:
    """RAR's random-order anneal (start, end) in optimizer steps: the authors' fractions 0.5 and 0.75 of the run
    (125,000 and 187,500 of 250,000), rounded to the nearest step."""
    return tuple(int(round(f * total_steps)) for f in RAR_ANNEAL_FRACTIONS)  # type: ignore[return-value]


def config_key(kind: str) -> str:
    """The key of the model config in config.json / train_settings.json: "gpt_config" or "rar_config"."""
    return f"{kind}_config"


def build_generator(kind: str, name: str, info: StoreInfo, class_dropout: float, dropout: float | None,
                    init_from: str | Path | None) -> nn.Module:
    """A fresh generator of preset `name` sized to the store, or `init_from`'s weights (must be of the same kind).

    Args:
        kind: "gpt" | "rar". name: the preset. info: the checked store (vocabulary, grid, classes).
        class_dropout: null-class probability. dropout: every dropout of the model (None: the preset's 0.1).
        init_from: run dir / .safetensors / the authors' file, or None.

    Raises:
        TokenStoreError: `init_from` holds the other kind of generator.
    """
    overrides: dict[str, Any] = {"class_dropout": class_dropout}
    if dropout is not None:
        overrides.update({"dropout": dropout, "attn_dropout": dropout} if kind == "rar" else
                         {"token_dropout": dropout, "resid_dropout": dropout, "ffn_dropout": dropout})
    if init_from is not None:
        model = load_gpt(init_from, **overrides)
        if generator_kind(model) != kind:
            raise TokenStoreError(f"--init-from {init_from} holds a {type(model).__name__}, but --model {name} is a "
                                  f"{'RAR' if kind == 'rar' else 'GPT'} preset")
        return model
    if kind == "rar":
        return create_rar(name, vocab_size=info.vocab_size, num_classes=info.num_classes, seq_len=info.num_tokens,
                          **overrides)
    return create_gpt(name, vocab_size=info.vocab_size, num_classes=info.num_classes, grid_size=info.grid_size,
                      **overrides)


def fresh_like(model: nn.Module) -> nn.Module:
    """An unsharded model of the same class and config (random init), e.g. to receive gathered FSDP weights."""
    return (RAR if isinstance(model, RAR) else GPT)(model.config)


def save_generator(model: nn.Module, out: Path) -> Path:
    """`save_rar` or `save_gpt` (model.safetensors + config.json in `out`); returns the weights path."""
    return save_rar(model, out) if isinstance(model, RAR) else save_gpt(model, out)


def block_types(kind: str) -> tuple[type, ...]:
    """The FSDP wrap unit / per-block compile unit: RAR's `Block` or the GPT's `TransformerBlock`."""
    return (Block,) if kind == "rar" else (TransformerBlock,)


def blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks (`RAR.blocks`, `GPT.layers`)."""
    return model.blocks if isinstance(model, RAR) else model.layers


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups. GPT: `GPT.param_groups` (decay on >= 2-D parameters). RAR: decay on >= 2-D parameters except
    the embedding, position and timestep tables (names containing "embed"); biases, LayerNorms and the tables get
    none. (Our rule: rar.md does not record the authors' exclusion list.)"""
    if not isinstance(model, RAR):
        return model.param_groups(weight_decay)
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "embed" not in name else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def teacher_forced_loss(model: nn.Module, codes: Tensor, labels: Tensor, check_ids: bool = True) -> Tensor:
    """Mean token cross-entropy (float32 scalar, nats) of raster-order sequences `codes` (B, L) int64 given labels
    (B,) int64: the validation loss of both families (RAR in raster order, the order it samples in)."""
    if isinstance(model, RAR):
        return model(codes, labels, targets=codes, check_ids=check_ids)[1]
    return model(codes[:, :-1], labels, targets=codes, check_ids=check_ids)[1]


# ---------------------------------------------------------------------------------------------
# Training orders
# ---------------------------------------------------------------------------------------------
def sequence_seed(seed: int, step: int, row: int, neighbour: int) -> int:
    """63-bit seed of the order of neighbour sequence `neighbour` of store image `row` at optimizer step `step`:
    a SplitMix64 chain over (seed, step, row, neighbour)."""
    x = splitmix64(seed & (2**64 - 1))
    for value in (step, row, neighbour):
        x = splitmix64(x ^ (value & (2**64 - 1)))
    return x >> 1


def training_orders(seed: int, step: int, rows: Tensor, neighbours: int, seq_len: int, prob: float) -> Tensor:
    """Token orders of one micro-batch: for image rows[b] and neighbour k (sequence b * K + k), a random permutation
    with probability `prob`, else raster, drawn by `vfmtok.models.rar.draw_orders` from a CPU generator seeded with
    `sequence_seed(seed, step, rows[b], k)`.

    Args:
        rows: (B,) int64 store indices. neighbours: K sequences per image. prob: in [0, 1].

    Returns:
        (B * K, seq_len) int64 on CPU, each row a permutation of 0..seq_len-1.
    """
    gen = torch.Generator()
    out = []
    for row in rows.tolist():
        for k in range(neighbours):
            gen.manual_seed(sequence_seed(seed, step, int(row), k))
            out.append(draw_orders(1, seq_len, prob, gen))
    return torch.cat(out) if out else torch.empty(0, seq_len, dtype=torch.long)


def order_prob(step: int, anneal: tuple[int, int]) -> float:
    """RAR's random-order probability at 0-based optimizer step `step` for the anneal (start, end)."""
    return random_order_prob(step, *anneal)
