"""The `vfmtok` command: one typer app, one module per subcommand (parse, validate, call the core)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from vfmtok import __version__
from vfmtok.cli import (convert, demo_data, evaluate, extract_tokens, prepare_data, push, reproduce, sample,
                        train_ar, train_tokenizer)
from vfmtok.cli.common import Command, Group

app = typer.Typer(
    name="vfmtok",
    help=(
        "VFMTok: frozen vision-foundation-model image tokenizers and autoregressive image generators.\n\n"
        "Pipeline: prepare-data -> train-tokenizer -> extract-tokens -> train-ar -> sample -> evaluate."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: brackets such as hf://OWNER/REPO[/PATH][@REV] are not markup
    cls=Group,
)

_SUBCOMMANDS = [
    ("prepare-data", prepare_data),
    ("train-tokenizer", train_tokenizer),
    ("extract-tokens", extract_tokens),
    ("train-ar", train_ar),
    ("sample", sample),
    ("evaluate", evaluate),
    ("demo-data", demo_data),
    ("convert", convert),
    ("push", push),
    ("reproduce", reproduce),
]
for _name, _module in _SUBCOMMANDS:
    app.command(_name, cls=Command, help=_module.command.__doc__, context_settings={"help_option_names": ["-h", "--help"]})(
        _module.command
    )


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vfmtok {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """VFMTok toolkit."""


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
