"""``logit_mimic``: logit regression, the "mimic learning" of Ba & Caruana (2014).

Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014, arXiv:1312.6184, train a shallow
student to regress the teacher's logits (the inputs of the softmax) with an L2 loss. For student logits
``s`` and teacher logits ``t`` of shape ``(N, K)``::

    logit_mimic = (1/N) * sum_n 1/2 * sum_k (s[n, k] - t[n, k])^2

half the squared Euclidean distance per sample, averaged over the batch, as in their objective. With
``center`` each sample's logits are first shifted to zero mean (``z - mean_k z``). The softmax ignores
such a shift, and Hinton et al. (2015, section 2.1) show that matching logits is the high-temperature
limit of distillation: as ``T`` grows, ``hinton_kd`` (``T^2 * KL``) approaches ``1/K`` times the
centred ``logit_mimic`` (``K`` classes). With several teachers the term is the (weighted) mean of the
per-teacher values. Teacher logits are detached; the computation runs in at least float32.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from kdframe import ComponentError, LossSpec, LossTerm, Params, StepOutputs


class LogitMimicParams(Params):
    """Params of ``logit_mimic``."""

    center: bool = Field(
        False,
        description="Shift each sample's student and teacher logits to zero mean before comparing "
        "them (the softmax ignores the shift; Hinton et al. 2015 relate KD at high temperature to "
        "this centred loss). False compares raw logits, as Ba & Caruana do.",
    )


def logit_distance(student: Tensor, teacher: Tensor, *, center: bool) -> Tensor:
    """``(1/N) * sum_n 1/2 * |s_n - t_n|^2`` of two ``(N, K)`` logit tensors (optionally centred)."""
    if center:
        student = student - student.mean(dim=1, keepdim=True)
        teacher = teacher - teacher.mean(dim=1, keepdim=True)
    return 0.5 * (student - teacher).pow(2).sum(dim=1).mean()


class LogitMimic(LossTerm):
    """Logit regression (Ba & Caruana 2014): half the squared L2 distance between student and teacher
    logits, summed over classes and averaged over the batch; the mean over teachers."""

    needs_teacher = True

    def __init__(self, params: LogitMimicParams) -> None:
        super().__init__()
        self.center = params.center

    def forward(self, outputs: StepOutputs) -> Tensor:
        if not outputs.teachers:
            raise ComponentError("logit_mimic needs a teacher, but the stage has none; use it in distillation stages.")
        student = outputs.student.logits
        dtype = torch.promote_types(student.dtype, torch.float32)
        values = []
        for teacher_outputs in outputs.teachers:
            teacher = teacher_outputs.logits.detach()
            if teacher.shape != student.shape or student.dim() != 2:
                raise ComponentError(
                    f"logit_mimic compares (N, K) logits of the same shape, but the student gives "
                    f"{tuple(student.shape)} and the teacher {tuple(teacher.shape)}; student and teacher "
                    "must predict the same classes."
                )
            values.append(logit_distance(student.to(dtype), teacher.to(dtype), center=self.center))
        return outputs.average_over_teachers(values)


SPEC = LossSpec(
    name="logit_mimic",
    summary="Logit regression (Ba & Caruana 2014): 1/2 squared L2 distance between student and teacher logits.",
    factory=LogitMimic,
    params=LogitMimicParams,
    family="response",
    reference="Ba & Caruana 2014, Do Deep Nets Really Need to be Deep?, NeurIPS 2014, arXiv:1312.6184",
    example={"center": False},
    layers="logits",
    weight=1.0,
    # Ba & Caruana train the student on the teacher's logits alone, without the labels.
    label_weight=0.0,
)
