"""Model FLOPs utilisation (MFU): the peak bf16 FLOP/s of the device a training process runs on.

MFU = achieved model FLOP/s (6 N per token + attention, PaLM convention, `flops_per_token` of each model) / peak;
reported by `train-ar` on CUDA GPUs of the table below (or with an explicit peak), `null` elsewhere.
"""
from __future__ import annotations

import torch

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s per GPU, from the vendors' datasheets. Matched in order
# against `torch.cuda.get_device_name()`; the first matching substring wins.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),
    ("GH200", 989.4e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362.05e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165.2e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16 tensor cores (no bf16)
)


def device_peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one process's device for the MFU estimate.

    Args:
        device: the training device. override_tflops: user value in TFLOP/s (wins when given).

    Returns:
        FLOP/s, or None on CPU / unknown GPUs without an override (MFU is then not reported).
    """
    if override_tflops:
        return float(override_tflops) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)
