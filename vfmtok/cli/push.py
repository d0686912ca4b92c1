"""`vfmtok push RUN DEST`: a GPT, RAR or tokenizer run -> a Hub repository (or a local folder) with a model card."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vfmtok.cli.common import fail


def command(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A train-ar (GPT or RAR) / train-tokenizer run folder, "
                                             "or one made by `vfmtok convert` or save_pretrained (config.json + "
                                             "safetensors weights).")],
    dest: Annotated[str, typer.Argument(metavar="DEST", help="hf://OWNER/NAME or OWNER/NAME (the Hub), or file://PATH or a path "
                                             "starting with / ./ ../ ~ (a local folder).")],
    private: Annotated[bool, typer.Option("--private", help="Create the Hub repository as private.")] = False,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch to commit to (default main).")] = None,
    token: Annotated[Optional[str], typer.Option(
        "--token", help="Hub token (default: HF_TOKEN or the stored `hf auth login`).", envvar="HF_TOKEN")] = None,
) -> None:
    """Upload the run's weights, config.json and a generated model card (training command, data fingerprint,
    metrics of the run) in one commit. Load it back with --ckpt hf://OWNER/NAME or vfmtok.from_pretrained.
    See docs/hub.md.
    """
    from vfmtok.jobs.push import push_run

    try:
        result = push_run(run, dest, token=token, private=private, revision=revision)
    except (FileNotFoundError, ValueError) as err:
        fail(f"push: {err}")
    except OSError as err:  # huggingface_hub HTTP errors (authentication, permissions, network)
        fail(f"push: {type(err).__name__}: {err}")
    where = result["commit_url"] or result["destination"]
    typer.echo(f"pushed {', '.join(result['files'])} from {run} -> {where}")
