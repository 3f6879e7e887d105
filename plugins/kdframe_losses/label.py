"""``cross_entropy``: the label term, cross-entropy of the student's logits with the true labels.

For logits ``s`` (N, K) and labels ``y``::

    CE = -(1/N) * sum_n [ (1 - eps) * log softmax(s_n)[y_n] + (eps / K) * sum_k log softmax(s_n)[k] ]

with ``eps`` the label smoothing (Szegedy et al. 2016, "Rethinking the Inception Architecture"): the
target is ``(1 - eps) * onehot(y) + eps / K``. With ``eps = 0`` this is plain cross-entropy, averaged
over the batch. The term needs no teacher, so it is the loss of teachers trained from scratch and the
"hard label" half of Hinton's KD loss (see :mod:`kdframe_losses.response`).
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdframe import LossSpec, LossTerm, Params, StepOutputs


class CrossEntropyParams(Params):
    """Params of ``cross_entropy``."""

    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description=(
            "Label smoothing eps in [0, 1): the target is (1 - eps) * one-hot + eps / num_classes. "
            "0 gives plain cross-entropy."
        ),
    )


class CrossEntropyLoss(LossTerm):
    """Cross-entropy of the student's logits with the labels, averaged over the batch."""

    needs_teacher = False

    def __init__(self, params: CrossEntropyParams) -> None:
        super().__init__()
        self.label_smoothing = float(params.label_smoothing)

    def forward(self, outputs: StepOutputs) -> Tensor:
        return F.cross_entropy(
            outputs.student.logits, outputs.labels, label_smoothing=self.label_smoothing
        )

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


def make_cross_entropy(params: CrossEntropyParams) -> CrossEntropyLoss:
    """Factory of ``cross_entropy``."""
    return CrossEntropyLoss(params)


CROSS_ENTROPY = LossSpec(
    name="cross_entropy",
    summary="Cross-entropy with the true labels (optional label smoothing); needs no teacher.",
    factory=make_cross_entropy,
    params=CrossEntropyParams,
    family="label",
    reference="The supervised baseline; label smoothing: Szegedy et al. 2016, arXiv:1512.00567.",
    example={"label_smoothing": 0.0},
    layers="logits (student only)",
    weight_source=(
        "1 beside most terms; 1 - alpha (0.1) beside hinton_kd and logit_standard_kd, as each method's "
        "label_weight says."
    ),
)
SPECS = [CROSS_ENTROPY]
