"""Classifier-free guidance schedules s_t, in pure Python (no torch), so the CLI can check them before heavy imports.

Formulas (t = 0..L-1 is the index of the image token being drawn, s = `cfg_scale`, p = `cfg_power`; the full
sampling conventions are in `vfmtok.sampling`):

* constant: s_t = s
* linear:   s_t = 1 + (s - 1) * t / L                              (ramps from 1 towards s)
* cosine:   s_t = 1 + (s - 1) * (1 - cos(pi * (t / L) ** p)) / 2   (RAR's power-cosine ramp)
* `interval` N >= 0: guidance only for image tokens 0..N+1, s_t = 1 afterwards; -1 = guidance on every token.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def cfg_scales(
    seq_len: int, cfg_scale: float, schedule: str = "constant", power: float = 1.0, interval: int = -1
) -> list[float]:
    """Per-token guidance scales s_t, t = 0..seq_len-1 (formulas in the module docstring; the official LlamaGen/RAR samplers' rules).

    Args:
        seq_len: L, number of image tokens. cfg_scale: s >= 0. schedule: constant | linear | cosine.
        power: p > 0 of the cosine schedule. interval: N >= 0 keeps guidance for tokens 0..N+1, -1 always.

    Returns:
        A list of L floats; 1.0 means "conditional logits only".

    Raises:
        ValueError: invalid scale, schedule, power or interval (names the value).
    """
    if not math.isfinite(cfg_scale) or cfg_scale < 0:
        raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale}")
    if schedule not in SCHEDULES:
        raise ValueError(f"cfg_schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if not math.isfinite(power) or power <= 0:
        raise ValueError(f"cfg_power must be > 0, got {power}")
    if not isinstance(interval, int) or interval < -1:
        raise ValueError(f"cfg_interval must be an int >= -1 (-1 = always), got {interval!r}")
    scales = []
    for t in range(seq_len):
        frac = t / seq_len
        if schedule == "constant":
            s = cfg_scale
        elif schedule == "linear":
            s = 1.0 + (cfg_scale - 1.0) * frac
        else:
            s = 1.0 + (cfg_scale - 1.0) * (1.0 - math.cos(math.pi * frac**power)) / 2.0
        if interval >= 0 and t > interval + 1:
            s = 1.0
        scales.append(float(s))
    return scales
