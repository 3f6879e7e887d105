"""CIFAR-style ResNets (He et al. 2016, section 4.2): depth ``6n + 2``, three stages of ``n`` basic blocks.

A 3x3 stem convolution with 16 channels, then stages of 16, 32 and 64 channels (times
``width_multiplier``) where the second and third start with a stride-2 block, global average pooling
and one fully connected layer. Adaptive pooling makes the model accept any image size and channel
count (1-channel Fashion-MNIST included).

Shortcuts where the shape changes:

* ``"A"``: the paper's CIFAR choice, parameter free: subsample by 2 and pad the new channels with
  zeros. ResNet-20 then has the paper's 0.27M parameters.
* ``"B"`` (default): a 1x1 strided convolution and BatchNorm, as in the ResNets of common
  distillation code bases (e.g. CRD's resnet8 ... resnet110); a few more parameters.

Module paths (what feature and relation losses tap): ``conv1``, ``bn1``, ``relu`` (the stem's
output), ``layer1``, ``layer2``, ``layer3`` (each stage's output after its last block's ReLU;
``layer3`` is the last feature map), ``layer<k>.<i>`` (one block's output), ``avgpool``, ``flatten``
(the embedding) and ``fc`` (the logits). Every ReLU is out of place and used once, so a tapped
output is never overwritten and its hook fires once per forward pass.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from kdframe import DataInfo, ModelSpec, Params

COMMON_DEPTHS = (8, 14, 20, 32, 44, 56, 110)


class ResNetParams(Params):
    """Parameters of ``resnet``."""

    depth: int = Field(
        description="Number of layers, 6n + 2 for n blocks per stage: 8, 14, 20, 32, 44, 56, 110, ..."
    )
    shortcut: Literal["A", "B"] = Field(
        "B",
        description="Shortcut where the shape changes: 'A' pads with zeros (parameter free, the "
        "paper's CIFAR models), 'B' uses a 1x1 convolution and BatchNorm (common in KD code).",
    )
    in_channels: int | None = Field(
        None, ge=1, description="Input channels; null takes them from the dataset."
    )
    num_classes: int | None = Field(
        None, ge=1, description="Number of output logits; null takes it from the dataset."
    )
    width_multiplier: float = Field(
        1.0,
        gt=0.0,
        le=64.0,
        description="Scales the channels of every stage (16, 32, 64; rounded, at least 1).",
    )

    @field_validator("depth")
    @classmethod
    def _six_n_plus_two(cls, depth: int) -> int:
        if depth < 8 or (depth - 2) % 6 != 0:
            allowed = ", ".join(str(value) for value in COMMON_DEPTHS)
            raise ValueError(
                f"resnet depth must be 6n + 2 with n >= 1 (e.g. {allowed}); {depth} is not"
            )
        return depth


class PadShortcut(nn.Module):
    """Option A: subsample spatially by ``stride`` and append zero channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut; ``relu2`` follows the addition."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=False)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images.

    The class is the spec's factory: ``CifarResNet(params, data_info)``; params left unset
    (``None``) come from ``data_info``.
    """

    def __init__(self, params: ResNetParams, data_info: DataInfo) -> None:
        super().__init__()
        in_channels = params.in_channels if params.in_channels is not None else data_info.in_channels
        num_classes = params.num_classes if params.num_classes is not None else data_info.num_classes
        blocks = (params.depth - 2) // 6
        widths = [max(1, round(base * params.width_multiplier)) for base in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=False)
        channels = widths[0]
        stages = []
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            stage = []
            for block in range(blocks):
                stage.append(BasicBlock(channels, width, stride if block == 0 else 1, params.shortcut))
                channels = width
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - images to logits
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


SPEC = ModelSpec(
    name="resnet",
    summary="CIFAR-style ResNet-(6n+2) of He et al. 2016: 3 stages of basic blocks, 16/32/64 channels.",
    factory=CifarResNet,
    params=ResNetParams,
    family="resnet",
)
