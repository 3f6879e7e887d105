"""An ensemble of trained models, evaluated as the mean of their softmax outputs."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SoftmaxEnsemble(nn.Module):
    """Returns ``log(mean_i softmax(model_i(x)))``: log-probabilities, usable as logits.

    Their argmax is the ensemble's prediction and their cross-entropy its loss.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: Tensor) -> Tensor:
        log_probs = torch.stack([torch.log_softmax(member(images), dim=1) for member in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))
