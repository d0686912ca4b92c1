"""Strict state-dict loading, shared by every loader (tokenizer, GPT, frozen encoder, trainer checkpoints).

A checkpoint that does not fit a model must fail with one error naming the file, the missing keys, the
unexpected keys and the shape mismatches, never load partially.
"""
from __future__ import annotations

from typing import Callable, Collection, Mapping, Sequence

import torch
from torch import nn

_SHOWN = 8  # keys listed per kind of problem


def state_dict_problems(expected: Mapping[str, Sequence[int]], state: Mapping[str, torch.Tensor],
                        allowed_missing: Collection[str] = ()) -> list[str]:
    """What keeps `state` from matching `expected` key for key and shape for shape.

    Args:
        expected: key -> shape of the model's state dict.
        state: the loaded tensors.
        allowed_missing: keys of `expected` that `state` may omit (e.g. frozen parameters).

    Returns:
        Up to three strings, e.g. "2 missing key(s): a, b", "1 unexpected key(s): c",
        "1 shape mismatch(es): d: checkpoint (3, 4) vs model (4, 3)"; empty when `state` fits.
    """
    missing = sorted(k for k in expected if k not in state and k not in allowed_missing)
    unexpected = sorted(k for k in state if k not in expected)
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}" for k in sorted(expected)
              if k in state and tuple(state[k].shape) != tuple(expected[k])]
    problems = []
    for label, items in (("missing key(s)", missing), ("unexpected key(s)", unexpected),
                         ("shape mismatch(es)", shapes)):
        if items:
            more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:_SHOWN])}{more}")
    return problems


def strict_load(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str = "the model",
                allowed_missing: Collection[str] = (),
                convert: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """Load `state` into `model`, requiring every key and shape to match.

    A model built on the meta device is materialised from the tensors (`assign=True`, cast to the model's dtypes).

    Args:
        model: the module to fill. state: key -> tensor. source: the file (or description) named in errors.
        what: what the weights are for, named in errors ("the tokenizer", "the GPT config"...).
        allowed_missing: keys the state may omit (they keep the model's values).
        convert: applied to every tensor before loading (e.g. a cast to float32).

    Raises:
        ValueError: "{source}: weights do not match {what}: <problems>" (see `state_dict_problems`).
    """
    own = model.state_dict()
    problems = state_dict_problems({k: tuple(v.shape) for k, v in own.items()}, state, allowed_missing)
    if problems:
        raise ValueError(f"{source}: weights do not match {what}: " + "; ".join(problems))
    tensors = {k: convert(v) for k, v in state.items()} if convert is not None else dict(state)
    meta = any(v.is_meta for v in own.values())
    if meta:  # assigned tensors keep their own dtype and layout: match the model's, as a copy-load would
        tensors = {k: v.to(dtype=own[k].dtype).contiguous() for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=not allowed_missing, assign=meta)


def floats_to_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Floating-point tensors cast to float32 (bf16/fp16 release files load into fp32 models); others unchanged."""
    return tensor.to(torch.float32) if tensor.is_floating_point() else tensor
