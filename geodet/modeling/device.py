"""Where the network runs and in which arithmetic: the one home of these rules.

:func:`resolve_device` turns a user's ``"auto" | "cpu" | "cuda[:N]"`` into a
``torch.device``. :func:`autocast_dtype` (inference) and
:func:`training_autocast_dtype` (training) say under which autocast dtype the
forward pass runs, ``None`` meaning plain float32. Both share the GPU rule:
bfloat16 where the GPU has it, else float16.
"""

from __future__ import annotations

from typing import Optional

import torch

from geodet.errors import GeodetError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; refuse ``cuda`` without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GeodetError("--device cuda was asked for but no CUDA GPU is available.")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise GeodetError(f"device must be auto, cpu or cuda, got {name!r}.")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private probes: absent from some torch releases
        return False


def cuda_half_dtype() -> torch.dtype:
    """The half-precision dtype of the current GPU: bfloat16 where supported, else float16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_dtype(device: torch.device, precision: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype of the inference forward pass, or None for plain float32.

    ``auto``: bf16 on CUDA (fp16 where the GPU lacks bf16); on the CPU bf16
    only where it is native, since emulated bf16 is slower than float32.
    Boxes and scores leave the model in float32 either way.

    Args:
        device: where the network runs.
        precision: one of :data:`geodet.config.PRECISIONS`.
    """
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "float16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}")
    if device.type == "cuda":
        return cuda_half_dtype()
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def training_autocast_dtype(device: torch.device, amp: bool) -> Optional[torch.dtype]:
    """The autocast dtype of training steps and validation, or None for plain float32.

    Mixed precision (``TrainConfig.amp``) applies on CUDA only, in the GPU's
    half dtype (:func:`cuda_half_dtype`); float16 also needs a gradient scaler.
    """
    if not amp or device.type != "cuda":
        return None
    return cuda_half_dtype()
