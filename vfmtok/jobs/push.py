"""`vfmtok push RUN DEST`: a GPT, RAR or tokenizer run folder -> a Hub model repository (or a local folder).

What is uploaded: the weights (`model.safetensors` / `tokenizer.safetensors`), `config.json` and a generated
model card `README.md` (`vfmtok.models.pretrained.model_card`: training command, data fingerprint, metrics of
the run). Training checkpoints, logs and samples stay local. DEST is `hf://OWNER/NAME` or `OWNER/NAME` (the Hub;
`vfmtok.io.hub.push_folder`), or `file://PATH` / a path starting with `/`, `./`, `../` or `~` (a local folder,
e.g. a git clone of the repository, for review or offline use). What comes back from either loads with
`vfmtok.from_pretrained` / `load_gpt` / `load_rar` / `load_tokenizer`, and samples with `vfmtok sample --ckpt
hf://OWNER/NAME`.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from vfmtok.io.files import write_text_atomic
from vfmtok.io.hub import HF_SCHEME, push_folder
from vfmtok.models.pretrained import MODEL_CARD, model_card, run_format


def is_local_destination(dest: str) -> bool:
    """True for `file://PATH` or a path starting with '/', './', '../' or '~' (see the module docstring)."""
    return dest.startswith(("file://", "/", "./", "../", "~"))


def push_run(run: str | Path, dest: str, token: str | None = None, private: bool = False,
             revision: str | None = None, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Push the run folder `run` to `dest` (rules in the module docstring).

    Returns:
        {"destination", "files", "commit_url" (Hub only, else None), "local" (bool)}.

    Raises:
        FileNotFoundError / ValueError: `run` is not a vfmtok GPT, RAR or tokenizer run (see `run_format`); a bad
            repository id. huggingface_hub HTTP errors (authentication, permissions) pass through.
    """
    run = Path(run)
    _, weights = run_format(run)
    files = [weights, "config.json", MODEL_CARD]
    if is_local_destination(dest):
        target = Path(dest[len("file://"):] if dest.startswith("file://") else dest).expanduser()
        target.mkdir(parents=True, exist_ok=True)
        for name in files[:2]:
            shutil.copyfile(run / name, target / name)
        write_text_atomic(target / MODEL_CARD, model_card(run, None, metrics))
        return {"destination": str(target), "files": files, "commit_url": None, "local": True}
    repo_id = dest[len(HF_SCHEME):] if dest.startswith(HF_SCHEME) else dest
    with tempfile.TemporaryDirectory(prefix="vfmtok-push-") as tmp:
        stage = Path(tmp)
        for name in files[:2]:
            (stage / name).symlink_to((run / name).resolve())
        (stage / MODEL_CARD).write_text(model_card(run, repo_id, metrics))
        url = push_folder(stage, repo_id, files, token=token, private=private, revision=revision,
                          commit_message=f"Upload {run.name} with vfmtok push")
    return {"destination": f"{HF_SCHEME}{repo_id}", "files": files, "commit_url": url, "local": False}
