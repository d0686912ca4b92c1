"""Options and helpers shared by the `vfmtok` subcommands (the CLI contract of DESIGN.md).

One vocabulary: an option that several commands take has one spelling, one default and one help text, from
the `Annotated` aliases below. A command takes `--seed`, `--device` and `--mixed-precision` only where they
change what it does (prepare-data and extract-tokens are deterministic CPU/encoder jobs without a seed;
prepare-data has no device). `--mixed-precision` defaults to bf16 (CUDA only; CPU runs fp32) everywhere
except `evaluate`, whose Inception network runs in fp32 like the ADM evaluator; each command's alias says what
the setting applies to there. `--num-workers` defaults to min(4, CPUs available to the process) and a larger
request is lowered to that number with a one-line note (`clamp_workers`).
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from enum import Enum
from typing import Annotated, Any, Iterator, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup


class MixedPrecision(str, Enum):
    """`--mixed-precision` values: `no` (fp32), `bf16` or `fp16` autocast (CUDA only; CPU runs fp32)."""

    no = "no"
    bf16 = "bf16"
    fp16 = "fp16"


def available_cpus() -> int:
    """CPUs this process may run on: len(os.sched_getaffinity(0)) (os.cpu_count() where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


DEFAULT_NUM_WORKERS = min(4, available_cpus())


def clamp_workers(requested: int) -> int:
    """`--num-workers` lowered to the CPUs available (`available_cpus()`), printing one note line when lowered.

    Args:
        requested: worker processes asked for (>= 0; 0 = load in the main process).
    Returns:
        min(requested, available_cpus()).
    """
    limit = available_cpus()
    if requested > limit:
        typer.echo(f"note: --num-workers {requested} is more than the {limit} CPU(s) available to this process; "
                   f"using {limit}", err=True)
        return limit
    return requested


def precision_option(applies_to: str) -> Any:
    """The `--mixed-precision` option with a help text saying what it applies to on this command."""
    return Annotated[MixedPrecision, typer.Option(
        "--mixed-precision", help=f"Autocast dtype on CUDA: no (fp32) | bf16 | fp16. {applies_to}")]


SeedOpt = Annotated[int, typer.Option("--seed", help="Global random seed (results depend only on it).")]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="Device: 'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1', ..."),
]
PrintEveryOpt = Annotated[int, typer.Option(
    "--print-every", metavar="N", help="Print a one-line summary (losses, lr, throughput, ETA) every N steps; "
    "0 = never. Independent of the progress bar.")]
ProgressOpt = Annotated[bool, typer.Option(
    "--progress/--no-progress", help="Show progress bars (stderr). Summary lines and results print either way.")]
NumWorkersOpt = Annotated[int, typer.Option(
    "--num-workers", min=0, metavar="N", help="Data-loading worker processes (0 = in the main process); "
    "at most the CPUs available (a larger value is lowered, with a note).")]


class _PlainHelp:
    """`--help` rendering shared by `Command` and `Group`: flags without a type column, help texts taken literally.

    Typer prints `<bool>` beside flags and would read `[...]` in help texts (e.g. `hf://OWNER/REPO[/PATH]`) as
    rich markup (a MarkupError for `[/PATH]`); both are fixed here, once for all commands.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        _flags_without_type(self)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option

    def format_help(self, ctx: Any, formatter: Any) -> Any:
        _literal_help(self)  # only when help is shown: rich is not imported for a refusal
        return super().format_help(ctx, formatter)  # type: ignore[misc]


class Command(_PlainHelp, TyperCommand):
    """Every subcommand's click command, with `_PlainHelp`'s `--help` rendering."""


class Group(_PlainHelp, TyperGroup):
    """The top-level `vfmtok` group, with the same `--help` rendering as `Command`."""


def _flags_without_type(command: Any) -> None:
    for param in command.params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


def _literal_help(command: Any) -> None:
    if getattr(command, "rich_markup_mode", None) != "rich" or getattr(command, "_help_escaped", False):
        return  # plain click help (TYPER_USE_RICH=0) prints texts as they are
    from rich.markup import escape

    if command.help:
        command.help = escape(command.help)
    for param in command.params:
        if getattr(param, "help", None):
            param.help = escape(param.help)
    command._help_escaped = True


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
