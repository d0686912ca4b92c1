"""Run logging: `metrics.jsonl` (one JSON object per logged step), optional TensorBoard, codebook usage window."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class MetricsLogger:
    """Appends `{"step": N, ...}` lines to `path` (main process only; other ranks pass `enabled=False`).

    On resumption from step K, `truncate_after(K)` drops lines with step > K (written after the checkpoint by the
    interrupted run), so a resumed run's file equals an uninterrupted run's. Non-finite floats are written as
    the strings "nan" / "inf" / "-inf" (JSON has no NaN). TensorBoard scalars are added when `tensorboard=True`
    and `torch.utils.tensorboard` imports.
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True, tensorboard: bool = False) -> None:
        self.path, self.enabled = Path(path), enabled
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))
            except Exception as err:  # tensorboard not installed: optional
                log.warning("TensorBoard logging disabled (%s)", err)

    def truncate_after(self, step: int) -> None:
        """Keep only lines with `step <= step` (atomic rewrite)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must contain an int `step`); tensors become Python floats."""
        if not self.enabled:
            return
        clean = {k: _jsonable(v) for k, v in record.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, clean["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a `metrics.jsonl` file, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class CodebookUsage:
    """Fraction of the codebook used by the most recent `window` codes (official: 65,536), independent of batch size.

    A ring buffer of the last `window` code indices (int64, -1 = empty) on the device of the codes it is given:
    `update` makes no device -> host copy (it runs every micro-batch); `usage()` syncs (call it at log time).
    `usage()` = number of distinct codes in the filled part / `codebook_size`. Its state (buffer, on CPU, + write
    position) is checkpointed so resumption is exact.
    """

    def __init__(self, codebook_size: int, window: int = 65536) -> None:
        if codebook_size < 1 or window < 1:
            raise ValueError(f"CodebookUsage: codebook_size {codebook_size} and window {window} must be >= 1")
        self.codebook_size, self.window = int(codebook_size), int(window)
        self.buffer = torch.full((self.window,), -1, dtype=torch.int64)
        self.pos = 0  # total codes seen

    def update(self, codes: torch.Tensor) -> None:
        """Add codes (any shape, int, any device) in row-major order; only the last `window` are kept."""
        flat = codes.detach().reshape(-1)[-self.window :].to(torch.int64)
        if self.buffer.device != flat.device:
            self.buffer = self.buffer.to(flat.device)
        idx = (self.pos + torch.arange(flat.numel(), device=flat.device)) % self.window
        self.buffer[idx] = flat
        self.pos += int(codes.numel())

    @property
    def filled(self) -> int:
        """How many codes the window holds (<= window)."""
        return min(self.pos, self.window)

    def usage(self) -> float:
        """Distinct codes in the window / codebook size, in [0, 1] (0.0 when empty)."""
        held = self.buffer[self.buffer >= 0]
        return float(torch.unique(held).numel()) / self.codebook_size if held.numel() else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.detach().to("cpu", copy=True), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["buffer"].numel() != self.window:
            raise ValueError(f"CodebookUsage: checkpoint window {state['buffer'].numel()} != configured {self.window}")
        self.buffer.copy_(state["buffer"])
        self.pos = int(state["pos"])
