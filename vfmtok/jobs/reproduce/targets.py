"""The reproducible targets: the authors' generators and tokenizer, their files and the paper's numbers.

Numbers: shared/reference/vfmtok.md section 6 (VFMTok README = paper tables; 50k samples, ADM evaluator vs
VIRTUAL_imagenet256_labeled.npz) and rar.md section 1 (VFMTok-RAR README). Metric keys follow
`vfmtok.jobs.evaluate.evaluate_samples`: fid, sfid, inception_score, precision, recall.

CFG: the with-CFG rows of the GPT table do not publish their scale; the without-CFG rows are scale 1.0. So a GPT
target defaults to scale 1.0 and is compared with the without-CFG row; any other scale is compared with the
with-CFG row (flagged "scale unpublished"). RAR targets default to the scale and cosine power of the authors'
configs (L and XXL: 16 / 2.75, XL: 6.5 / 1.0) and are compared with the with-CFG row.
"""
from __future__ import annotations

from dataclasses import dataclass, field

KEYS = ("fid", "sfid", "inception_score", "precision", "recall")


def _row(*values: float) -> dict[str, float]:
    return dict(zip(KEYS, values))


@dataclass(frozen=True)
class Target:
    """One `vfmtok reproduce` target.

    Attributes:
        name: CLI name. kind: "gpt", "rar" or "tokenizer". generator: short name of the authors' generator file
            (`vfmtok.io.hub.AUTHORS_FILES`), None for the tokenizer. label: the row name in the paper's table.
        with_cfg / without_cfg: the paper's metrics (KEYS; tokenizer: rfid, ris, psnr, ssim in `without_cfg`).
        cfg_scale, cfg_schedule, cfg_power: the default guidance. epochs: training epochs of the released file.
    """

    name: str
    kind: str
    generator: str | None
    label: str
    with_cfg: dict[str, float] = field(default_factory=dict)
    without_cfg: dict[str, float] = field(default_factory=dict)
    cfg_scale: float = 1.0
    cfg_schedule: str = "constant"
    cfg_power: float = 1.0
    epochs: int | None = None

    def paper(self, cfg_scale: float) -> tuple[dict[str, float], str]:
        """(the paper's row for this scale, a note saying which row and why)."""
        if self.kind == "tokenizer":
            return self.without_cfg, "VFMTok README (ImageNet val 50k, 256 px after resize)"
        if self.kind == "gpt":
            if cfg_scale == 1.0:
                return self.without_cfg, "paper table, without CFG (scale 1.0)"
            return self.with_cfg, "paper table, with CFG (the scale behind this row is unpublished)"
        note = f"VFMTok-RAR README, with CFG (authors' config: scale {self.cfg_scale}, power {self.cfg_power})"
        return (self.with_cfg, note) if cfg_scale != 1.0 else (self.without_cfg, "VFMTok-RAR README, without CFG")


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("gpt-b", "gpt", "GPT-B", "VFMTok-B", _row(3.43, 5.88, 252.2, 0.85, 0.53), _row(3.09, 5.67, 173.6, 0.80, 0.58), epochs=300),
    Target("gpt-l", "gpt", "GPT-L", "VFMTok-L", _row(2.76, 5.69, 276.1, 0.84, 0.57), _row(2.15, 5.44, 230.1, 0.82, 0.60), epochs=300),
    Target("gpt-xl", "gpt", "GPT-XL", "VFMTok-XL", _row(2.38, 5.54, 277.2, 0.83, 0.60), _row(2.06, 5.59, 257.2, 0.82, 0.61), epochs=200),
    Target("gpt-xxl", "gpt", "GPT-XXL", "VFMTok-XXL", _row(2.28, 5.49, 274.3, 0.83, 0.60), _row(2.09, 5.48, 259.3, 0.82, 0.61), epochs=200),
    Target("gpt-2b", "gpt", "GPT-2B", "VFMTok-2B", _row(2.27, 5.56, 283.6, 0.82, 0.61), _row(2.20, 5.54, 279.7, 0.82, 0.61), epochs=200),
    Target("gpt-3b", "gpt", "GPT-3B", "VFMTok-3B", _row(2.07, 5.46, 280.4, 0.82, 0.61), _row(2.04, 5.43, 267.8, 0.82, 0.61), epochs=200),
    Target("rar-l-ultra", "rar", "RAR-L-ultra", "VFMTok RAR-L-ultra", _row(1.33, 5.72, 317.4, 0.78, 0.65),
           _row(2.01, 5.34, 211.1, 0.78, 0.63), 16.0, "cosine", 2.75, 400),
    Target("rar-l", "rar", "RAR-L", "VFMTok RAR-L", _row(1.44, 6.03, 312.8, 0.78, 0.66), _row(2.02, 5.51, 210.4, 0.79, 0.63),
           16.0, "cosine", 2.75, 400),
    Target("rar-xl", "rar", "RAR-XL", "VFMTok RAR-XL", _row(1.38, 5.86, 310.2, 0.78, 0.65), _row(1.74, 5.33, 233.0, 0.80, 0.63),
           6.5, "cosine", 1.0, 400),
    Target("rar-xxl", "rar", "RAR-XXL", "VFMTok RAR-XXL", _row(1.36, 5.86, 301.3, 0.78, 0.66), _row(1.65, 5.55, 253.7, 0.80, 0.63),
           16.0, "cosine", 2.75, 400),
    Target("tokenizer", "tokenizer", None, "VFMTok tokenizer", {}, {"rfid": 0.89, "ris": 215.4, "psnr": 20.6, "ssim": 0.67}),
    Target("tiny", "gpt", None, "tiny (CI)"),
]}


def get_target(name: str) -> Target:
    """The target called `name` (case-insensitive). Raises KeyError listing the targets."""
    key = name.lower()
    if key not in TARGETS:
        raise KeyError(f"unknown target {name!r}; expected one of {', '.join(TARGETS)}")
    return TARGETS[key]
