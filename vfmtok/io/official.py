"""Import of the authors' released tokenizer checkpoint (`vfmtok-tokenizer.pt`); strict loading is `vfmtok.io.state`.

Our module attribute names reproduce the official state_dict keys, so the key map is the identity except:

* `encode_transformer.backbone.pretrained_encoder.*` (the frozen DINOv2, stripped from released files):
  never part of our state dict; if present, returned separately in the official DINOv2 layout so it can
  serve as encoder weights;
* `slot_quantize.codebook_used` (the official rolling usage log, all zeros in `ema`): accepted and ignored.

Every other key must be consumed with an equal shape; otherwise the error names the key
(shared/reference/checkpoints/README.md sections 1-2; vfmtok_tokenizer_keys.json).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from vfmtok.io.weights import load_official_pt, pick_state_dict

OFFICIAL_BACKBONE_PREFIX = "encode_transformer.backbone.pretrained_encoder."
IGNORED_OFFICIAL_KEYS = frozenset({"slot_quantize.codebook_used"})


def split_official_tokenizer_state(state: Mapping[str, torch.Tensor]
                                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Official tokenizer state dict -> (our state dict, backbone state dict in DINOv2 layout).

    Drops `slot_quantize.codebook_used`; moves keys containing "backbone" out (prefix
    `encode_transformer.backbone.pretrained_encoder.` removed). Raises ValueError for another "backbone" key.
    """
    ours, backbone = {}, {}
    for key, value in state.items():
        if key in IGNORED_OFFICIAL_KEYS:
            continue
        if "backbone" in key:
            if not key.startswith(OFFICIAL_BACKBONE_PREFIX):
                raise ValueError(f"unexpected frozen-encoder key {key!r} (expected prefix {OFFICIAL_BACKBONE_PREFIX!r})")
            backbone[key[len(OFFICIAL_BACKBONE_PREFIX):]] = value
        else:
            ours[key] = value
    return ours, backbone


def load_official_tokenizer_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read the authors' tokenizer `.pt` safely (weights_only, `argparse.Namespace` allow-listed), take its
    `ema` entry (falling back to `model`, `module`, `state_dict`, a flat dict), and split it.

    Returns:
        (our state dict, backbone state dict or {}).

    Raises:
        FileNotFoundError, ValueError: see `vfmtok.io.weights`.
    """
    ckpt = load_official_pt(path)
    _, state = pick_state_dict(ckpt, path, prefer=("ema", "model"))
    return split_official_tokenizer_state(state)
