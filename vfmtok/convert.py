"""Import of the authors' released tokenizer checkpoint (`vfmtok-tokenizer.pt`) and strict state-dict loading.

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
from typing import Mapping, Sequence

import torch
from torch import nn

from vfmtok.checkpoint_io import load_official_pt, pick_state_dict

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
        FileNotFoundError, ValueError: see `vfmtok.checkpoint_io`.
    """
    ckpt = load_official_pt(path)
    _, state = pick_state_dict(ckpt, path, prefer=("ema", "model"))
    return split_official_tokenizer_state(state)


def check_state_dict(expected: Mapping[str, Sequence[int]], state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse a state dict that does not match `expected` key for key.

    Args:
        expected: key -> shape.
        state: the loaded tensors.
        source: file name used in the message.

    Raises:
        ValueError: naming the missing keys, unexpected keys and shape mismatches (first few of each).
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"missing key(s) {missing[:6]}{' ...' if len(missing) > 6 else ''} ({len(missing)} in all)")
    if unexpected:
        parts.append(f"unexpected key(s) {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''} ({len(unexpected)} in all)")
    if wrong:
        parts.append("shape mismatch: " + "; ".join(
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}" for k in wrong[:6]))
    raise ValueError(f"{source}: weights do not match the tokenizer: " + "; ".join(parts))


def strict_load(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model` requiring every key and shape to match (see `check_state_dict`).

    A model built on the meta device is materialised from the tensors (`assign=True`).

    Raises:
        ValueError: names the offending keys and `source`.
    """
    own = model.state_dict()
    check_state_dict({k: tuple(v.shape) for k, v in own.items()}, state, source)
    meta = any(v.is_meta for v in own.values())
    model.load_state_dict(dict(state), strict=True, assign=meta)
