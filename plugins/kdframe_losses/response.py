"""``hinton_kd``: response-based distillation from the teachers' softened logits.

Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", arXiv:1503.02531.
For student logits ``s`` and teacher logits ``t`` (N, K) and temperature ``T``::

    hinton_kd = T^2 * (1/N) * sum_n KL( softmax(t_n / T) || softmax(s_n / T) )
              = T^2 * (1/N) * sum_n sum_k p_t[n,k] * (log p_t[n,k] - log p_s[n,k])

i.e. the KL divergence summed over classes and averaged over the batch ("batchmean"), scaled by
``T^2`` so that its gradients keep the same magnitude as the temperature changes. With several
teachers (an ensemble) the term is the mean of the per-teacher terms. Gradients flow to the student
only: teacher logits are detached.

The classic loss ``(1 - a) * CE(s, y) + a * T^2 * KL(...)`` is written in a schedule as two terms,
because weights live in the schedule, not in the term::

    "losses": [
        {"name": "cross_entropy", "weight": 0.1},
        {"name": "hinton_kd", "weight": 0.9, "params": {"temperature": 4.0}}
    ]
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from kdframe import ComponentError, LossSpec, LossTerm, Params, StepOutputs
from kdframe_losses._common import require_teacher, shape_text, soft_kl


class HintonKDParams(Params):
    """Params of ``hinton_kd``."""

    temperature: float = Field(
        4.0,
        gt=0.0,
        allow_inf_nan=False,
        description=(
            "Softmax temperature T > 0 applied to both student and teacher logits; the term is "
            "scaled by T^2. Higher T gives softer targets."
        ),
    )


class HintonKDLoss(LossTerm):
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch-mean, averaged over the teachers."""

    needs_teacher = True

    def __init__(self, params: HintonKDParams) -> None:
        super().__init__()
        self.temperature = float(params.temperature)

    def forward(self, outputs: StepOutputs) -> Tensor:
        require_teacher(outputs.teachers, "hinton_kd")
        student = outputs.student.logits
        if student.dim() != 2:
            raise ComponentError(
                f"hinton_kd expects logits of shape (batch, classes); the student gives "
                f"{shape_text(student.shape)}."
            )
        terms = []
        for index, teacher in enumerate(outputs.teachers):
            if teacher.logits.shape != student.shape:
                raise ComponentError(
                    f"hinton_kd: teacher {index} gives logits of shape {shape_text(teacher.logits.shape)} "
                    f"but the student gives {shape_text(student.shape)}; teacher and student must "
                    "predict the same classes."
                )
            terms.append(soft_kl(student, teacher.logits, self.temperature))
        kl = terms[0] if len(terms) == 1 else torch.stack(terms).mean()
        return (self.temperature**2) * kl

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def make_hinton_kd(params: HintonKDParams) -> HintonKDLoss:
    """Factory of ``hinton_kd``."""
    return HintonKDLoss(params)


HINTON_KD = LossSpec(
    name="hinton_kd",
    summary="Hinton et al. 2015: T^2 * KL(softmax(t/T) || softmax(s/T)), mean over teachers.",
    factory=make_hinton_kd,
    params=HintonKDParams,
    family="response",
)
