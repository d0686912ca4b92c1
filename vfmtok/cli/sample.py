"""`vfmtok sample` (placeholder until issue #7 lands)."""
from __future__ import annotations

import typer

from vfmtok.cli.common import DeviceOpt, MixedPrecision, PrecisionOpt, SeedOpt, not_landed


def command(
    ctx: typer.Context,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    mixed_precision: PrecisionOpt = MixedPrecision.no,
) -> None:
    """Not implemented yet (issue #7)."""
    not_landed("sample", 7)
