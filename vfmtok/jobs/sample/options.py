"""The settings of `vfmtok sample` (`SampleOptions`) and their validation, which needs no model."""
from __future__ import annotations

import math
from dataclasses import dataclass

from vfmtok.jobs.sample.plan import LABEL_MODES
from vfmtok.guidance import SCHEDULES, cfg_scales


@dataclass
class SampleOptions:
    """Every `vfmtok sample` setting (formulas in docs/sample.md).

    Attributes:
        num_samples: N >= 1 images. classes: class ids cycled in order (sample i gets classes[i % len]), or
            None to use `labels`. labels: "random" | "balanced" (only without `classes`).
        cfg_scale, cfg_schedule, cfg_power, cfg_interval, temperature, top_k, top_p: see `vfmtok.generate`.
        batch_size: samples per GPT forward (does not change results). decode_batch: D, images per tokenizer
            decode call, aligned to global indices (part of the settings: changing it may flip a pixel by 1).
        image_size: output side in pixels (bicubic resize of the decoder output, official rule).
        png: write `images/<index:06d>.png`. overwrite: replace a DIR made with other settings.
        compile: decode steps through torch.compile (CUDA graphs on CUDA; see `vfmtok.generate`); same tokens as
            eager decoding up to float rounding, recorded in the settings only when on.
        seed: global seed. device: 'auto' | 'cpu' | 'cuda' | 'cuda:N'. mixed_precision: no | bf16 | fp16
            (autocast of the GPT, its KV cache and the decoder on CUDA only; default bf16, so CUDA samples in
            bf16 and CPU in fp32; the effective precision is recorded). progress: tqdm bar on rank 0.
    """

    num_samples: int = 64
    classes: list[int] | None = None
    labels: str = "random"
    cfg_scale: float = 1.0
    cfg_schedule: str = "constant"
    cfg_power: float = 1.0
    cfg_interval: int = -1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 32
    decode_batch: int = 32
    image_size: int = 256
    png: bool = True
    overwrite: bool = False
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "bf16"
    progress: bool = True

    def validate(self) -> None:
        """Check every option that needs no model.

        Raises:
            ValueError: naming the option and the accepted range.
        """
        if self.num_samples < 1:
            raise ValueError(f"-n/--num-samples must be >= 1, got {self.num_samples}")
        if self.batch_size < 1 or self.decode_batch < 1:
            raise ValueError(f"--batch-size and --decode-batch must be >= 1, got {self.batch_size}, {self.decode_batch}")
        if self.image_size < 1:
            raise ValueError(f"--image-size must be >= 1, got {self.image_size}")
        if self.classes is not None:
            if not self.classes:
                raise ValueError("--class: give at least one class id")
            bad = [c for c in self.classes if c < 0]
            if bad:
                raise ValueError(f"--class {bad[0]}: class ids must be >= 0")
        elif self.labels not in LABEL_MODES:
            raise ValueError(f"--labels {self.labels!r}: expected one of {', '.join(LABEL_MODES)}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"--temperature must be a finite number >= 0 (0 = argmax), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"--top-p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.cfg_schedule not in SCHEDULES:
            raise ValueError(f"--cfg-schedule {self.cfg_schedule!r}: expected one of {', '.join(SCHEDULES)}")
        cfg_scales(1, self.cfg_scale, self.cfg_schedule, self.cfg_power, self.cfg_interval)  # raises on bad values
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"--mixed-precision {self.mixed_precision!r}: expected no, bf16 or fp16")
