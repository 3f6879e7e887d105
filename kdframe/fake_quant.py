"""Quantization-aware distillation: train a student as it will compute after int8 quantization.

With ``training.quantization_aware: true`` a stage trains its student with **fake quantization**:
every ``nn.Conv2d`` and ``nn.Linear`` computes with its weight rounded to int8 (symmetric, one scale
per output channel: ``max |w| / 127``) and its input rounded to 8 bits (affine, the batch's own
minimum and maximum: a dynamic per-tensor range). Rounding uses PyTorch's
``torch.fake_quantize_per_channel_affine`` and ``torch.fake_quantize_per_tensor_affine``, whose
gradient is the straight-through estimator, so the float weights keep learning while the loss sees
the quantization error. This is the same rounding that ``kdframe export --int8`` (ONNX Runtime's
static quantizer: int8 per-channel weights, 8-bit activations) applies afterwards, so the student
learns to be robust to it.

The rounding is installed by replacing the modules' ``forward`` on the instance, so the model's
``state_dict`` (checkpoints, resume, snapshots) and its feature taps are unchanged, and it keeps no
state (ranges come from each batch), so a resumed stage continues bit for bit. It is removed when
the stage ends: ``student.pt`` holds float weights, and a later stage that learns from the model
sees its float outputs. The stage's test accuracy is that of the fake-quantized model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

#: The module types whose weights and inputs are fake-quantized.
QUANTIZED_MODULES = (nn.Conv2d, nn.Linear)


def quantize_weight(weight: Tensor) -> Tensor:
    """``weight`` rounded to symmetric int8 with one scale per output channel (dimension 0)."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-12).float()
    zero_point = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -127, 127)


def quantize_activation(values: Tensor) -> Tensor:
    """``values`` rounded to 8 bits over their own range (which always includes 0), per tensor."""
    low = min(float(values.detach().min()), 0.0)
    high = max(float(values.detach().max()), 0.0)
    scale = max((high - low) / 255.0, 1e-12)
    zero_point = int(round(-low / scale))
    return torch.fake_quantize_per_tensor_affine(values, scale, min(max(zero_point, 0), 255), 0, 255)


def _fake_quant_forward(module: nn.Module) -> Callable[[Tensor], Tensor]:
    if isinstance(module, nn.Conv2d):
        return lambda x: module._conv_forward(quantize_activation(x), quantize_weight(module.weight), module.bias)
    return lambda x: nn.functional.linear(quantize_activation(x), quantize_weight(module.weight), module.bias)


def install(model: nn.Module) -> Callable[[], None]:
    """Fake-quantize every convolution and linear layer of ``model``; return the function that
    removes it again (restoring each module's own ``forward``)."""
    patched = [module for module in model.modules() if type(module) in QUANTIZED_MODULES and "forward" not in vars(module)]
    for module in patched:
        module.forward = _fake_quant_forward(module)  # type: ignore[method-assign]

    def remove() -> None:
        for module in patched:
            vars(module).pop("forward", None)

    return remove
