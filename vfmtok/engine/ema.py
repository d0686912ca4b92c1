"""Exponential moving average of a module's trainable parameters (official: decay 0.9999 every step).

`ema = decay * ema + (1 - decay) * param` after every optimizer step, kept in fp32; buffers are copied. The
exported weights of a run (`tokenizer.safetensors`, `model.safetensors`) are the EMA weights.
"""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    """EMA shadow of `module`'s parameters with `requires_grad=True` (frozen parameters are not tracked).

    Args:
        module: the (unwrapped) module to track; its current values initialise the shadow.
        decay: EMA decay in [0, 1).
    """

    def __init__(self, module: nn.Module, decay: float = 0.9999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        params = dict(module.named_parameters())
        self.shadow = {n: params[n].detach().float().clone() for n in self.names}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the shadow towards `module`'s current parameters."""
        params = dict(module.named_parameters())
        shadows = [self.shadow[n] for n in self.names]
        currents = [params[n].detach().float() for n in self.names]
        torch._foreach_lerp_(shadows, currents, 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the EMA weights into `module` (in its dtype); other parameters and buffers are untouched."""
        params = dict(module.named_parameters())
        for n in self.names:
            params[n].copy_(self.shadow[n].to(params[n].dtype))

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "shadow": {n: t.clone() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        shadow = state["shadow"]
        missing = sorted(set(self.names) - set(shadow))  # type: ignore[arg-type]
        if missing:
            raise KeyError(f"EMA state lacks parameters {missing[:5]}{'...' if len(missing) > 5 else ''}")
        self.decay = float(state["decay"])  # type: ignore[arg-type]
        for n in self.names:
            self.shadow[n].copy_(shadow[n])  # type: ignore[index]
