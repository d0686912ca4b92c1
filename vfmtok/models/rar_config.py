"""`RARConfig` and the size presets of the RAR generator ("RAR-tiny", "RAR-L", "RAR-XL", "RAR-XXL").

RAR = "Randomized Autoregressive visual generation" (Yu et al. 2024, arXiv 2411.00776), trained by the
VFMTok authors on VFMTok codes (CVMI-Lab/VFMTok-RAR; shared/reference/rar.md section 2). The presets live in
`RAR_PRESETS` here (name -> factory); nothing is registered elsewhere. The model is in `vfmtok.models.rar`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

# Extra rows of the authors' position tables beyond the sequence length (only the first 258 rows are used).
POS_TABLE_EXTRA = 1024
TIMESTEP_TABLE_EXTRA = 100


@dataclass
class RARConfig:
    """Shape and regularisation of a class-conditional RAR generator.

    Attributes:
        dim: hidden width D. n_layer: blocks N. n_head: attention heads H (head dim D/H).
        mlp_dim: MLP hidden width F (Linear D->F, exact GELU, Linear F->D).
        vocab_size: codebook size V (image-token ids in [0, V)).
        num_classes: class count C. The embedding table has V + 1 + C + 1 rows: codes, the (unused) mask
            token V, class k at V+1+k, the null class at V+C+1. At the model interface labels are 0..C-1
            and label C is the null class (as the GPT).
        seq_len: image tokens per sequence (256 for VFMTok).
        dropout: dropout after the attention projection, after the GELU and after the MLP output (training only).
        attn_dropout: attention-probability dropout (training only).
        class_dropout: training-time probability of replacing a label by the null class (CFG training).
        init_std: std of the trunc-normal init of Linear/Embedding weights and of the position tables.
    """

    dim: int = 1024
    n_layer: int = 24
    n_head: int = 16
    mlp_dim: int = 4096
    vocab_size: int = 16384
    num_classes: int = 1000
    seq_len: int = 256
    dropout: float = 0.1
    attn_dropout: float = 0.1
    class_dropout: float = 0.1
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("dim", "n_layer", "n_head", "mlp_dim", "vocab_size", "num_classes", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"RARConfig.{name} must be a positive int, got {value!r}")
        if self.dim % self.n_head:
            raise ValueError(f"RARConfig: dim {self.dim} is not divisible by n_head {self.n_head}")
        for name in ("dropout", "attn_dropout", "class_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"RARConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def grid_size(self) -> int:
        """Side of the token grid, isqrt(seq_len) (16 for 256 tokens); informational, RAR itself is 1-D."""
        return math.isqrt(self.seq_len)

    @property
    def num_embeddings(self) -> int:
        """Rows of the shared embedding table: V codes + mask + C classes + null."""
        return self.vocab_size + 1 + self.num_classes + 1

    @property
    def null_id(self) -> int:
        """Embedding id of the null ("drop") class, V + C + 1."""
        return self.vocab_size + self.num_classes + 1


# (dim, n_layer, n_head, mlp_dim). L/XL/XXL: the authors' configs/training/generator/rar*.yaml (rar.md s.2);
# RAR-tiny = the rar_tiny parity fixture's shape (for tests and the demo).
PRESET_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "RAR-tiny": (64, 2, 4, 256),
    "RAR-L": (1024, 24, 16, 4096),
    "RAR-XL": (1280, 32, 16, 4096),
    "RAR-XXL": (1408, 40, 16, 6144),
}

# Sampling settings of the authors' configs (guidance scale S, cosine power p); rar.md s.1.
AUTHORS_CFG: dict[str, tuple[float, float]] = {"RAR-L": (16.0, 2.75), "RAR-XL": (6.5, 1.0), "RAR-XXL": (16.0, 2.75)}


def _factory(dim: int, n_layer: int, n_head: int, mlp_dim: int) -> Callable[[], RARConfig]:
    return lambda: RARConfig(dim=dim, n_layer=n_layer, n_head=n_head, mlp_dim=mlp_dim)


RAR_PRESETS: dict[str, Callable[[], RARConfig]] = {name: _factory(*shape) for name, shape in PRESET_SHAPES.items()}
