"""Codebook usage: which codes a tokenizer uses, over a whole evaluation pass or a rolling training window.

Usage = distinct codes seen / codebook size K (in [0, 1]); perplexity = exp(entropy in nats) of the code
histogram (in [1, K]). Training logs the usage of the most recent 65,536 codes, as the authors' code does
(window independent of batch size); `evaluate --tokenizer` counts the whole pass.
"""
from __future__ import annotations

import math
from typing import Any

import torch


class CodebookUsage:
    """Counts code indices, over everything seen (`window=None`) or over the last `window` codes.

    Args:
        codebook_size: K >= 1; codes must lie in [0, K).
        window: None for a whole pass; else keep only the most recent `window` codes (a ring buffer of int64
            indices, -1 = empty, on the device of the codes it is given: `update` then makes no device -> host
            copy, as it runs every training micro-batch; `usage()` syncs, call it at log time), checkpointable
            with `state_dict` / `load_state_dict` (buffer on CPU) for exact resumption.

    Raises:
        ValueError: K or window < 1.
    """

    def __init__(self, codebook_size: int, window: int | None = None) -> None:
        if codebook_size < 1 or (window is not None and window < 1):
            raise ValueError(f"CodebookUsage: codebook_size {codebook_size} and window {window} must be >= 1")
        self.codebook_size = int(codebook_size)
        self.window = None if window is None else int(window)
        self.pos = 0  # total codes seen
        self._counts = torch.zeros(self.codebook_size, dtype=torch.int64)
        self.buffer = None if self.window is None else torch.full((self.window,), -1, dtype=torch.int64)

    def update(self, codes: torch.Tensor) -> None:
        """Add integer codes (any shape) in row-major order.

        Whole pass: the codes are checked to lie in [0, K) and counted on the host. Window: kept on the codes'
        device without a check (they come from the quantizer's argmin), so no host sync happens here.

        Raises:
            ValueError: whole pass, a code outside [0, K) (names the range found).
        """
        flat = codes.detach().reshape(-1).to(torch.int64)
        if self.buffer is None:
            flat = flat.cpu()
            if flat.numel() and (flat.min() < 0 or flat.max() >= self.codebook_size):
                raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{int(flat.min())}, "
                                 f"{int(flat.max())}]")
            self._counts += torch.bincount(flat, minlength=self.codebook_size)
        else:
            if self.buffer.device != flat.device:
                self.buffer = self.buffer.to(flat.device)
            kept = flat[-self.window:]
            start = self.pos + flat.numel() - kept.numel()
            self.buffer[(start + torch.arange(kept.numel(), device=flat.device)) % self.window] = kept
        self.pos += int(flat.numel())

    @property
    def counts(self) -> torch.Tensor:
        """(K,) int64 occurrences of each code (in the window, when there is one)."""
        if self.buffer is None:
            return self._counts
        held = self.buffer[self.buffer >= 0].cpu()
        return torch.bincount(held, minlength=self.codebook_size)

    @property
    def filled(self) -> int:
        """How many codes are counted (<= window when there is one)."""
        return self.pos if self.window is None else min(self.pos, self.window)

    def usage(self) -> float:
        """Fraction of codes used at least once, in [0, 1] (0.0 before any update)."""
        return float((self.counts > 0).sum()) / self.codebook_size

    def perplexity(self) -> float:
        """exp(entropy) of the code distribution in nats, in [1, K]; 0.0 before any update."""
        counts = self.counts
        total = int(counts.sum())
        if total == 0:
            return 0.0
        p = counts[counts > 0].double() / total
        return float(math.exp(-(p * p.log()).sum()))

    def state_dict(self) -> dict[str, Any]:
        target = self.buffer if self.buffer is not None else self._counts
        return {"buffer": target.detach().to("cpu", copy=True), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output.

        Raises:
            ValueError: the checkpoint's window (or codebook size) differs from this counter's.
        """
        target = self.buffer if self.buffer is not None else self._counts
        if state["buffer"].numel() != target.numel():
            raise ValueError(f"CodebookUsage: checkpoint window {state['buffer'].numel()} != configured {target.numel()}")
        target.copy_(state["buffer"])
        self.pos = int(state["pos"])
