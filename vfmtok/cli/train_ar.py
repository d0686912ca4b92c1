"""`vfmtok train-ar` (placeholder until issue #6 lands)."""
from __future__ import annotations

import typer

from vfmtok.cli.common import DeviceOpt, MixedPrecision, PrecisionOpt, SeedOpt, not_landed


def command(
    ctx: typer.Context,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    mixed_precision: PrecisionOpt = MixedPrecision.no,
) -> None:
    """Not implemented yet (issue #6)."""
    not_landed("train-ar", 6)
