"""Device and precision selection: the one place that decides where tensors live.

No other module calls `.cuda()`; they ask `resolve_device` and use `autocast` from here.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

_DTYPES = {"no": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a user string into a `torch.device`.

    Args:
        name: 'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'.

    Raises:
        ValueError: if a CUDA/MPS device is requested but not available, or the string is not a device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r} is not a device name (expected auto, cpu, cuda, cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} requested but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name!r} requested but MPS is not available")
    return device


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `--mixed-precision` on `device`, or None for fp32.

    bf16/fp16 autocast is only used on CUDA; on CPU every computation stays fp32 (tests rely on it).

    Raises:
        ValueError: for a value other than no/fp32/bf16/fp16.
    """
    key = getattr(mixed_precision, "value", mixed_precision)
    if key not in _DTYPES:
        raise ValueError(f"--mixed-precision {key!r}: expected one of no, bf16, fp16")
    return _DTYPES[key] if device.type == "cuda" else None


def compute_dtype(device_type: str, default: torch.dtype) -> torch.dtype:
    """The dtype activations are computed in on `device_type`: autocast's dtype while autocast is enabled there
    (e.g. torch.bfloat16 inside `autocast(cuda, bf16)`), else `default` (typically the parameter dtype).

    Used to size buffers that hold activations (the GPT's KV cache) so they need no cast per step.
    """
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return default


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to `dtype` on `device` (no-op when dtype is None)."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield



# TF32 (10-bit mantissa matmuls/convolutions on Ampere+ GPUs) per job, decided explicitly rather than left to
# torch's defaults (CUDA matmul off, cuDNN convolutions on):
# * training: on, as LlamaGen's/VFMTok's training scripts set it (speed; bf16 autocast dominates anyway);
# * extract-tokens: off, so the fp32 regions (pre-quant projection, quantizer distances, deformable attention)
#   are true fp32 and the codes match an fp32 evaluation pass;
# * evaluate: off, the ADM evaluator's Inception network runs in fp32 (FID/IS are sensitive to feature noise).
TF32_BY_JOB = {"train-tokenizer": True, "train-ar": True, "extract-tokens": False, "evaluate": False}


def tf32_settings() -> dict[str, bool]:
    """The process's current TF32 flags: `cuda_matmul` (torch.backends.cuda.matmul.allow_tf32) and `cudnn`
    (torch.backends.cudnn.allow_tf32). Readable and settable on CPU-only builds too (no effect there)."""
    return {"cuda_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn": bool(torch.backends.cudnn.allow_tf32)}


def set_tf32(enabled: bool) -> dict[str, bool]:
    """Allow or forbid TF32 for CUDA matmuls and cuDNN convolutions, process-wide; returns `tf32_settings()`."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)
    return tf32_settings()


def set_tf32_for_job(job: str) -> dict[str, Any]:
    """Apply the TF32 decision of `job` (`TF32_BY_JOB`) and return what to record in its output's config:
    `{"enabled": bool, "cuda_matmul": bool, "cudnn": bool}`.

    Raises:
        KeyError: an unknown job name (lists the known ones).
    """
    if job not in TF32_BY_JOB:
        raise KeyError(f"no TF32 policy for job {job!r}; known: {sorted(TF32_BY_JOB)}")
    return {"enabled": TF32_BY_JOB[job], **set_tf32(TF32_BY_JOB[job])}


def numerics_environment() -> dict[str, Any]:
    """What decides the floating-point results of a run on this machine, recorded beside its figures.

    A CPU run is bit-reproducible for the same code, seeds and data only on the same torch build, the same CPU
    kernel path and the same intra-op thread count: ATen picks vectorised kernels by the CPU's instruction set
    (`torch.backends.cpu.get_cpu_capability()`: "DEFAULT", "AVX2", "AVX512", ...; the environment variable
    `ATEN_CPU_CAPABILITY` forces a lower one), and different kernels round differently. A short training run
    amplifies those last-bit differences, so the demo's figures move from one kind of CPU to another (measured
    in docs/quickstart.md) while staying identical between runs on one machine.

    Returns:
        `{"torch": str, "cpu_capability": str, "threads": int, "cuda": str}`; `cuda` is "none" without a
        visible CUDA device, else "<count> x <name of device 0>".
    """
    cuda = "none"
    if torch.cuda.is_available():
        cuda = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "cuda": cuda}
