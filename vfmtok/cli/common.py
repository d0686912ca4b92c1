"""Options and helpers shared by every `vfmtok` subcommand (the CLI contract of DESIGN.md).

Every subcommand accepts `--seed`, `--device` and `--mixed-precision`; use the `Annotated` aliases
below so the names, defaults and help texts stay identical across commands.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from enum import Enum
from typing import Annotated, Iterator, NoReturn

import typer


class MixedPrecision(str, Enum):
    """`--mixed-precision` values: `no` (fp32), `bf16` or `fp16` autocast (CUDA only; CPU runs fp32)."""

    no = "no"
    bf16 = "bf16"
    fp16 = "fp16"


SeedOpt = Annotated[int, typer.Option("--seed", help="Global random seed (results depend only on it).")]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="Device: 'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1', ..."),
]
PrecisionOpt = Annotated[
    MixedPrecision,
    typer.Option(
        "--mixed-precision",
        help="Autocast dtype on CUDA (CPU runs are fp32): no | bf16 | fp16. The tokenizer's deformable attention and "
        "quantizer distances always run in fp32.",
    ),
]
PrintEveryOpt = Annotated[int, typer.Option(
    "--print-every", help="Print a one-line summary (losses, lr, throughput, ETA) every N steps; 0 = never. "
    "Independent of the progress bar.")]
NoProgressOpt = Annotated[bool, typer.Option("--no-progress", help="Hide the progress bar (summary lines: --print-every).")]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear error line to stderr and exit with `code` (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Print every Python warning raised inside as one `warning: ...` line on stderr, when it is raised.

    Used around long jobs so that a caveat about the inputs (too few samples, a resize) shows before the work,
    not after it, and library warnings (e.g. scipy's LinAlgWarning) appear as one readable line, not a raw
    `file:line: Category: ...` block.
    """
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 (warnings' signature)
        typer.echo(f"warning: {message}", err=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


def not_landed(command: str, issue: int) -> NoReturn:
    """Exit non-zero with one line saying that `command` is not implemented yet."""
    typer.echo(
        f"error: `vfmtok {command}` is not implemented yet (tracked in issue #{issue}); "
        "see CHANGELOG.md for what has landed.",
        err=True,
    )
    sys.exit(3)
