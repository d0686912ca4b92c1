"""`GPTConfig` and the LlamaGen size presets ("GPT-B" ... "GPT-3B", "GPT-tiny") of the class-conditional GPT.

`GPT_PRESETS` maps each preset name to a config factory. The model itself is in `vfmtok.models.gpt`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vfmtok.configs import preset_lookup


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
GPT_PRESETS: dict[str, Callable[[], GPTConfig]] = {
    name: _preset(dim, n_layer, n_head) for name, (dim, n_layer, n_head) in PRESET_SHAPES.items()
}


def gpt_preset(name: str) -> GPTConfig:
    """The `GPTConfig` of preset `name`.

    Raises:
        KeyError: unknown preset (lists the presets).
    """
    return preset_lookup(GPT_PRESETS, name, "GPT")
