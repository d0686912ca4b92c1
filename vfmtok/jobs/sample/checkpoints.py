"""Checkpoint resolution of `vfmtok sample`: find the GPT (newest run under ./runs by default) and its tokenizer,
and refuse a GPT/tokenizer pair that was not trained together.

Every public name here is also importable from `vfmtok.jobs.sample.job`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfmtok.io.files import read_json_dict
from vfmtok.io.hub import resolve_path
from vfmtok.io.runs import find_latest_run

GPT_FORMAT = "vfmtok.gpt"
RAR_FORMAT = "vfmtok.rar"
GENERATOR_FORMATS = (GPT_FORMAT, RAR_FORMAT)  # run folders `sample` accepts (train-ar --model GPT-* / RAR-*)


# ---------------------------------------------------------------------------------------------
# Checkpoint resolution
# ---------------------------------------------------------------------------------------------
@dataclass
class Checkpoints:
    """Resolved inputs: the GPT path/file, its run config (None for the authors' .pt), the tokenizer path/file."""

    gpt: Path
    gpt_file: Path
    run_config: dict[str, Any] | None
    tokenizer: Path
    tokenizer_file: Path
    chosen_automatically: bool = False


def find_latest_gpt_run(root: str | Path = "runs", max_depth: int = 3) -> Path:
    """The generator run (GPT or RAR) under `root` whose `model.safetensors` is newest (mtime).

    A run is a folder holding `model.safetensors` and a `config.json` with "format": "vfmtok.gpt" or "vfmtok.rar",
    at most `max_depth` folders below `root` (folders named `checkpoints` are skipped).

    Raises:
        FileNotFoundError: `root` missing or no GPT run in it (says how to pass --ckpt).
    """
    run = find_latest_run(root, "model.safetensors", GENERATOR_FORMATS, max_depth)
    if run is None:
        raise FileNotFoundError(f"no GPT run found under {Path(root).resolve()} (a folder with model.safetensors and a "
                                f"config.json of format {GPT_FORMAT!r} or {RAR_FORMAT!r}); train one with `vfmtok "
                                "train-ar` or pass --ckpt RUN_DIR | model.safetensors | GPT-*.pt")
    return run


def unfinished_run_message(run: Path, run_config: dict[str, Any] | None) -> str | None:
    """A one-line warning when the GPT run stopped before its planned length, else None.

    Reads the run's config.json: `step` (steps done), `interrupted` and `train.total_steps` (planned). The
    authors' files (no run config) and configs without these keys give None.
    """
    if not run_config or "step" not in run_config:
        return None
    step, planned = run_config.get("step"), (run_config.get("train") or {}).get("total_steps")
    interrupted = bool(run_config.get("interrupted"))
    if not interrupted and (planned is None or step >= planned):
        return None
    of = f" of {planned} planned" if planned is not None else ""
    return (f"GPT run {run} is unfinished: {step} steps done{of}{' (interrupted)' if interrupted else ''}; its samples "
            f"show an early model (continue it with the train-ar command in its config.json plus --resume, or pass "
            "--ckpt)")


def _gpt_run_config(gpt: Path) -> dict[str, Any] | None:
    cfg_file = gpt / "config.json" if gpt.is_dir() else gpt.parent / "config.json"
    if gpt.is_file() and gpt.suffix != ".safetensors":
        return None
    cfg = read_json_dict(cfg_file)
    return cfg if cfg is not None and cfg.get("format") in GENERATOR_FORMATS else None


def _tokenizer_weights(path: Path) -> Path:
    return path / "tokenizer.safetensors" if path.is_dir() else path


def resolve_checkpoints(ckpt: str | Path | None, tokenizer: str | Path | None, runs_root: str | Path = "runs") -> Checkpoints:
    """Find the GPT and the tokenizer (rules in the module docstring).

    Without `tokenizer`, the run's "tokenizer" entry (a path, or a dict with "path"/"file") is used, else the
    "path" recorded in the manifest of the run's "token_store"; a relative path is looked up relative to the
    run folder, then to the current directory.

    `ckpt` and `tokenizer` may be Hub references (`hf://...`, `authors/NAME`; `vfmtok.io.hub`): they are
    downloaded into the Hugging Face cache (or found there) first.

    Raises:
        FileNotFoundError: a path that does not exist; no tokenizer given and none recorded (explains
            `--tokenizer`); a Hub file neither cached nor downloadable. ValueError: a corrupt Hub file.
    """
    auto = ckpt is None
    gpt = find_latest_gpt_run(runs_root) if auto else resolve_path(ckpt)
    if not gpt.exists():
        raise FileNotFoundError(f"--ckpt {gpt}: not found (a GPT run directory, a .safetensors, or GPT-*.pt)")
    gpt_file = gpt / "model.safetensors" if gpt.is_dir() else gpt
    if not gpt_file.is_file():
        raise FileNotFoundError(f"--ckpt {gpt}: no model.safetensors in this directory")
    run_cfg = _gpt_run_config(gpt)
    if tokenizer is None:
        recorded = (run_cfg or {}).get("tokenizer")
        if isinstance(recorded, dict):
            recorded = recorded.get("path") or recorded.get("file")
        store = (run_cfg or {}).get("token_store")
        if not recorded and isinstance(store, str):  # fall back to the token store's own record
            store_path = Path(store) if Path(store).is_absolute() else (gpt if gpt.is_dir() else gpt.parent) / store
            recorded = ((read_json_dict(store_path / "manifest.json") or {}).get("tokenizer") or {}).get("path")
        if not recorded:
            if gpt_file.suffix not in (".safetensors",):
                raise FileNotFoundError(f"--ckpt {gpt}: the authors' GPT-*.pt does not name its tokenizer; pass "
                                        "--tokenizer vfmtok-tokenizer.pt (or a tokenizer run)")
            raise FileNotFoundError(f"--ckpt {gpt}: no tokenizer recorded in its config.json (keys 'tokenizer' or "
                                    "'token_store'); pass --tokenizer RUN_OR_FILE")
        rec = Path(recorded)
        base = gpt if gpt.is_dir() else gpt.parent
        candidates = [rec] if rec.is_absolute() else [base / rec, rec]
        tok_path = next((c for c in candidates if c.exists()), None)
        if tok_path is None:
            raise FileNotFoundError(f"the tokenizer recorded by {gpt} ({recorded}) was not found; pass --tokenizer")
    else:
        tok_path = resolve_path(tokenizer)
        if not tok_path.exists():
            raise FileNotFoundError(f"--tokenizer {tok_path}: not found (a tokenizer run directory, a .safetensors, "
                                    "or vfmtok-tokenizer.pt)")
    tok_file = _tokenizer_weights(tok_path)
    if not tok_file.is_file():
        raise FileNotFoundError(f"--tokenizer {tok_path}: no tokenizer.safetensors in this directory")
    return Checkpoints(gpt, gpt_file, run_cfg, tok_path, tok_file, auto)


def check_compatible(gpt_cfg: Any, tok_cfg: Any, gpt_src: Path, tok_src: Path) -> None:
    """Refuse a GPT/tokenizer pair whose vocabulary or sequence length differ.

    Raises:
        ValueError: vocab_size != codebook_size, or seq_len (grid_size^2) != num_tokens (names both files).
    """
    if gpt_cfg.vocab_size != tok_cfg.codebook_size:
        raise ValueError(f"GPT {gpt_src} has vocabulary {gpt_cfg.vocab_size} but tokenizer {tok_src} has "
                         f"{tok_cfg.codebook_size} codes: they were not trained together")
    if gpt_cfg.seq_len != tok_cfg.num_tokens:
        raise ValueError(f"GPT {gpt_src} generates {gpt_cfg.seq_len} tokens per image (grid {gpt_cfg.grid_size}) but "
                         f"tokenizer {tok_src} decodes {tok_cfg.num_tokens}: they were not trained together")


def verify_tokenizer_sha(run_cfg: dict[str, Any] | None, tok_sha: str, tok_src: Path, run_dir: Path | None = None
                         ) -> bool | None:
    """Compare the run's recorded "tokenizer_sha256" with the tokenizer file's sha256.

    Accepted: equal to the file sha256; or equal to the token store's tokenizer fingerprint ("weights_sha256"
    in `<token_store>/manifest.json`, a relative token_store taken from `run_dir`) when that manifest's
    "file_sha256" is this file's.

    Returns:
        True (verified), None (nothing recorded).

    Raises:
        ValueError: a recorded sha that matches neither (names both).
    """
    recorded = (run_cfg or {}).get("tokenizer_sha256")
    if not recorded:
        return None
    if recorded == tok_sha:
        return True
    store = (run_cfg or {}).get("token_store")
    if isinstance(store, str) and not Path(store).is_absolute() and run_dir is not None:
        store = str(run_dir / store)
    manifest = read_json_dict(Path(store) / "manifest.json") if isinstance(store, str) else None
    tok_info = (manifest or {}).get("tokenizer") or {}
    if tok_info.get("file_sha256") == tok_sha and tok_info.get("weights_sha256") == recorded:
        return True
    raise ValueError(f"tokenizer {tok_src} (sha256 {tok_sha[:16]}...) is not the one this GPT was trained with "
                     f"(recorded tokenizer_sha256 {str(recorded)[:16]}...); pass the right --tokenizer")
