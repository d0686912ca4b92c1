"""Exponential moving average of a module's trainable parameters (official: decay 0.9999 every step).

`ema = decay * ema + (1 - decay) * param` after every optimizer step, kept in fp32; buffers are copied. The
exported weights of a run (`tokenizer.safetensors`, `model.safetensors`) are the EMA weights.

Under FSDP (vfmtok.engine.fsdp) the parameters are sharded DTensors; the shadow then holds DTensors with the same
sharding and every rank updates only its local shard (same parameter order on every rank), so the EMA costs
4 bytes per parameter / world size and no communication. `full_state_dict` gathers it for the export.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from vfmtok.engine.fsdp import full_tensor, is_dtensor, local


class EMA:
    """EMA shadow of `module`'s parameters with `requires_grad=True` (frozen parameters are not tracked).

    Args:
        module: the (unwrapped, possibly FSDP-sharded) module to track; its current values initialise the shadow
            (fp32 tensors, or fp32 DTensors with the parameters' sharding).
        decay: EMA decay in [0, 1).

    Raises:
        ValueError: decay outside [0, 1).
    """

    def __init__(self, module: nn.Module, decay: float = 0.9999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        params = dict(module.named_parameters())
        self.shadow = {n: params[n].detach().float().clone() for n in self.names}

    @property
    def sharded(self) -> bool:
        """True when the shadow is sharded (FSDP): `copy_to` then needs a module with the same sharding."""
        return any(is_dtensor(t) for t in self.shadow.values())

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the shadow towards `module`'s current parameters (local shards only under FSDP)."""
        params = dict(module.named_parameters())
        shadows = [local(self.shadow[n]) for n in self.names]
        currents = [local(params[n].detach()).float() for n in self.names]
        torch._foreach_lerp_(shadows, currents, 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the EMA weights into `module` (in its dtype); other parameters and buffers are untouched.

        `module` must be sharded like the shadow (the tracked module itself, or any unsharded module for an
        unsharded shadow).
        """
        params = dict(module.named_parameters())
        for n in self.names:
            local(params[n]).copy_(local(self.shadow[n]).to(params[n].dtype))

    @contextlib.contextmanager
    def swapped_into(self, module: nn.Module) -> Iterator[nn.Module]:
        """Context manager: `module` holds the EMA weights inside, its own weights (restored exactly) after.

        Costs one copy of the tracked parameters (of the local shards under FSDP). Under FSDP call
        `vfmtok.engine.fsdp.reshard(module)` before and after forward passes inside, so they see these values.
        """
        params = dict(module.named_parameters())
        with torch.no_grad():
            saved = {n: local(params[n]).detach().clone() for n in self.names}
            self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                for n in self.names:
                    local(params[n]).copy_(saved[n])

    def full_state_dict(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """The full (unsharded) fp32 shadow on CPU: name -> tensor with the parameter's full shape.

        Collective under FSDP: every rank must call it; parameters are gathered one at a time and only ranks with
        `keep=True` (the writer, usually rank 0) hold the result, so the others never hold more than one full
        parameter. With `keep=False` it returns {}.
        """
        out = {}
        for n, t in self.shadow.items():
            full = full_tensor(t.detach())  # collective for DTensors
            if keep:
                out[n] = full.to("cpu", copy=True)
        return out

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


def initial_weight(decay: float, steps: int) -> float:
    """Weight the EMA still gives its initial value after `steps` updates with `decay`: `decay ** steps`
    (the EMA is a convex combination of the initial weights and every step's weights; no decay warm-up here)."""
    return float(decay) ** int(steps)


def short_run_warning(decay: float | None, steps: int, option: str = "--ema-decay") -> str | None:
    """The warning to print when an EMA with `decay` cannot leave its initialisation within a run of `steps`
    optimizer steps, else None.

    It fires when the initialisation keeps more than 5 % of the EMA after the run (`initial_weight(decay, steps)
    > 0.05`, i.e. about `steps * (1 - decay) < 3`): the exported weights, which are the EMA's, are then mostly
    untrained (a 200-step run with the paper's 0.9999 keeps 98 % of its random initialisation). The suggested
    decay, `1 - 10 / steps` rounded down to 2 significant digits of `1 - decay`, leaves e**-10 of it.

    Args:
        decay: EMA decay in [0, 1), or None / 0 for no EMA (never warns).
        steps: optimizer steps of the run (>= 1).
        option: the command-line spelling named in the text.
    """
    if not decay or steps < 1 or initial_weight(decay, steps) <= 0.05:
        return None
    suggested = 1.0 - float(f"{10.0 / steps:.2g}")
    hint = f"pass {option} {suggested:.4g} or smaller" if suggested > 0 else f"pass {option} 0 (no EMA)"
    return (f"{option} {decay:g} over {steps} steps: the exported EMA weights keep "
            f"{initial_weight(decay, steps):.0%} of the initialisation; {hint} for a run this short")
