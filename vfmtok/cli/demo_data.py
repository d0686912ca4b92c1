"""`vfmtok demo-data` (placeholder until the demo-data builder lands, issue #2)."""
from __future__ import annotations

from vfmtok.cli.common import not_landed


def command() -> None:
    """Not implemented yet (issue #2)."""
    not_landed("demo-data", 2)
