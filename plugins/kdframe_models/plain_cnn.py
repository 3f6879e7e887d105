"""The plain CNNs of the TAKD paper (Mirzadeh et al. 2019), with 2, 4, 6, 8 or 10 conv layers.

Each ``ConvN`` is a 3x3 convolution (padding 1, no bias) followed by ``BatchNorm2d`` and ``ReLU``;
``M`` is a 2x2 max-pool; the fully connected layers have a ReLU between them but not after the last.

Module paths (what feature and relation losses tap):

* ``features.<i>``: the children of ``features`` in order. A conv block is one child
  ``Sequential(conv, bn, relu)``, so its output is the activation after ReLU; every max-pool is its
  own child. For depth 10 on 28x28 images, ``features.0`` is the first block and ``features.14`` the
  last pool.
* ``flatten``: the flattened feature map, the penultimate embedding for relation losses.
* ``classifier``: the fully connected layers (``classifier.0`` is the first ``Linear``).

Every ReLU is out of place, so a tapped output is never overwritten.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from torch import nn

from kdframe import ComponentError, DataInfo, ModelSpec, Params

#: Layer configuration per depth: ints are conv channels, ``"M"`` is a max-pool. Then the hidden
#: widths of the fully connected layers before the final ``Linear(num_classes)``.
CONFIGS: dict[int, tuple[list[int | str], list[int]]] = {
    2: ([16, "M", 16, "M"], []),
    4: ([16, 16, "M", 32, 32, "M"], []),
    6: ([16, 16, "M", 32, 32, "M", 64, 64, "M"], []),
    8: ([16, 16, "M", 32, 32, "M", 64, 64, "M", 128, 128, "M"], [64]),
    10: ([32, 32, "M", 64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"], [128]),
}


class PlainCNNParams(Params):
    """Parameters of ``plain_cnn``."""

    depth: Literal[2, 4, 6, 8, 10] = Field(
        description="Number of convolutional layers, as in TAKD's table (10 is their teacher, 4 "
        "the teacher assistant, 2 the student); depths 8 and 10 add a hidden fully connected layer."
    )
    in_channels: int | None = Field(
        None, ge=1, description="Input channels; null takes them from the dataset."
    )
    image_size: int | tuple[int, int] | None = Field(
        None,
        description="Input height and width (one number for square images, or [height, width]); "
        "null takes it from the dataset. It fixes the size of the first fully connected layer, so "
        "the model then accepts only this size.",
    )
    num_classes: int | None = Field(
        None, ge=1, description="Number of output logits; null takes it from the dataset."
    )
    width_multiplier: float = Field(
        1.0,
        gt=0.0,
        le=64.0,
        description="Scales every channel count and hidden fully connected width (rounded, at "
        "least 1); 1.0 is the paper's model.",
    )

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, value: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        sizes = (value,) if isinstance(value, int) else value or ()
        if any(size < 1 for size in sizes):
            raise ValueError("image_size must be positive")
        return value


def _scaled(width: int, multiplier: float) -> int:
    return max(1, round(width * multiplier))


class PlainCNN(nn.Module):
    """A TAKD plain CNN: ``features`` (conv blocks and pools), ``flatten``, ``classifier``.

    The class is the spec's factory: ``PlainCNN(params, data_info)``; params left unset (``None``)
    come from ``data_info``.
    """

    def __init__(self, params: PlainCNNParams, data_info: DataInfo) -> None:
        super().__init__()
        depth, width_multiplier = params.depth, params.width_multiplier
        in_channels = params.in_channels if params.in_channels is not None else data_info.in_channels
        num_classes = params.num_classes if params.num_classes is not None else data_info.num_classes
        size = params.image_size if params.image_size is not None else data_info.image_size
        image_size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        layers, hidden = CONFIGS[depth]
        pools = layers.count("M")
        minimum = 2**pools
        height, width = image_size
        if height < minimum or width < minimum:
            raise ComponentError(
                f"plain_cnn depth {depth} has {pools} 2x2 max-pools, so it needs images of at least "
                f"{minimum}x{minimum} pixels; got {height}x{width}. Use a smaller depth or larger images."
            )

        features: list[nn.Module] = []
        channels = in_channels
        for item in layers:
            if item == "M":
                features.append(nn.MaxPool2d(kernel_size=2, stride=2))
                height, width = height // 2, width // 2
            else:
                out = _scaled(int(item), width_multiplier)
                features.append(
                    nn.Sequential(
                        nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
                        nn.BatchNorm2d(out),
                        nn.ReLU(inplace=False),
                    )
                )
                channels = out
        self.features = nn.Sequential(*features)
        self.flatten = nn.Flatten()

        classifier: list[nn.Module] = []
        size = channels * height * width
        for hidden_width in hidden:
            out = _scaled(hidden_width, width_multiplier)
            classifier += [nn.Linear(size, out), nn.ReLU(inplace=False)]
            size = out
        classifier.append(nn.Linear(size, num_classes))
        self.classifier = nn.Sequential(*classifier)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x):  # noqa: D102 - (N, C, H, W) images to (N, num_classes) logits
        return self.classifier(self.flatten(self.features(x)))


SPEC = ModelSpec(
    name="plain_cnn",
    summary="TAKD's plain CNNs (Mirzadeh et al. 2019), 2 to 10 layers of conv-BN-ReLU and max-pools.",
    factory=PlainCNN,
    params=PlainCNNParams,
    family="cnn",
)
