"""Mixed precision: autocast contexts, the fp16 gradient scaler, and checks of what a device supports.

``training.precision`` is ``"fp32"`` (the default: no autocast), ``"bf16"`` or ``"fp16"``. Model
forward passes (student, teachers, evaluation) run under :func:`torch.autocast` in that dtype; their
logits and tapped features are then cast back to float32, so loss terms and their adapters always
compute in float32. ``fp16`` adds a :class:`torch.amp.GradScaler`, because fp16 gradients underflow;
bf16 has fp32's exponent range and needs none.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from kdframe.errors import TrainingError

Precision = Literal["fp32", "bf16", "fp16"]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: Precision, device: torch.device) -> None:
    """Raise :class:`TrainingError` when ``device`` cannot autocast to ``precision``.

    bf16 on a CPU without native bf16 instructions works but is emulated (slow): that is a warning.
    """
    if precision == "fp32":
        return
    if not torch.amp.is_autocast_available(device.type):
        raise TrainingError(
            f"training.precision is '{precision}', but PyTorch cannot autocast on device '{device}'. "
            "Set training.precision to \"fp32\"."
        )
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise TrainingError(
            f"training.precision is 'bf16', but CUDA device '{device}' does not support bfloat16. "
            "Use \"fp16\" (with loss scaling) or \"fp32\"."
        )
    if device.type == "cpu" and precision == "bf16" and not cpu_has_native_bf16():
        warnings.warn(
            "training.precision is 'bf16' but this CPU has no native bfloat16 instructions "
            "(avx512_bf16 or AMX); bf16 is emulated and likely slower than fp32.",
            RuntimeWarning,
            stacklevel=2,
        )


def cpu_has_native_bf16() -> bool:
    """Whether the CPU has bfloat16 instructions (AVX512-BF16 or AMX)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


@contextlib.contextmanager
def autocast(precision: Precision, device: torch.device) -> Iterator[None]:
    """Autocast to ``precision`` on ``device``'s type; nothing for fp32."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=DTYPES[precision]):
        yield


def make_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (on any device that has one); ``None`` otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def to_float32(tensor: Tensor) -> Tensor:
    """``tensor`` as float32 when it is a lower-precision float (autocast output); else unchanged."""
    if tensor.is_floating_point() and tensor.dtype != torch.float32 and tensor.dtype != torch.float64:
        return tensor.float()
    return tensor


def layout(images: Tensor, channels_last: bool) -> Tensor:
    """``images`` in the channels_last memory format when asked (faster convnets on CPU)."""
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images
