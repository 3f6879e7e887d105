"""``mlp``: a multi-layer perceptron classifier whose layers feature and relation losses can tap.

The images ``(N, C, H, W)`` are flattened and go through the hidden blocks, then a linear head.
Module paths (the names of ``model.named_modules()``, which losses name in their ``layers``):

* ``flatten``: the flattened input ``(N, C*H*W)``;
* ``hidden.<i>``: the output of the i-th hidden block ``(N, hidden[i])``, after its activation;
  ``hidden.<i>.0`` is the block's ``Linear`` (the pre-activation). The last block's output is the
  penultimate embedding that relation losses (RKD, SP, ...) usually take;
* ``head``: the final ``Linear``, whose output is the logits (also reachable as ``"logits"``).

Activations are out of place, so a tapped output is never overwritten.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from torch import Tensor, nn

from kdframe import DataInfo, ModelSpec, Params

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


class MLPParams(Params):
    """Params of ``mlp``."""

    hidden: tuple[Annotated[int, Field(ge=1, le=65_536)], ...] = Field(
        (128, 64),
        max_length=32,
        description="Widths of the hidden layers, in order; [] gives a linear classifier.",
    )
    activation: Literal["relu", "gelu"] = Field("relu", description="Activation after each hidden Linear.")


class MLP(nn.Module):
    """Flatten, hidden blocks ``Linear -> activation``, linear head.

    The class is the spec's factory: ``MLP(params, data_info)``; the input size and the number of
    classes come from ``data_info``.
    """

    def __init__(self, params: MLPParams, data_info: DataInfo) -> None:
        super().__init__()
        height, width = data_info.image_size
        size = data_info.in_channels * height * width
        self.flatten = nn.Flatten()
        blocks: list[nn.Module] = []
        for width_out in params.hidden:
            blocks.append(nn.Sequential(nn.Linear(size, width_out), ACTIVATIONS[params.activation]()))
            size = width_out
        self.hidden = nn.Sequential(*blocks)
        self.head = nn.Linear(size, data_info.num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """Map ``(N, C, H, W)`` images to ``(N, num_classes)`` logits."""
        return self.head(self.hidden(self.flatten(images)))


SPEC = ModelSpec(
    name="mlp",
    summary="Multi-layer perceptron: flatten, Linear-activation blocks named hidden.<i>, linear head.",
    factory=MLP,
    params=MLPParams,
    family="mlp",
)
