"""The ``dgkd`` curriculum: densely guided KD (Son et al., ICCV 2021, arXiv:2009.08825)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from pydantic import Field

from kdframe import (
    Curriculum,
    Params,
    Schedule,
    StagePlan,
    TeacherBatch,
    TeacherPolicy,
    TeacherSelection,
    distill_stage,
    teacher_stages,
)


class DGKDParams(Params):
    """Params of ``dgkd``."""

    teacher: str = Field(
        description="The largest model. Without a checkpoint it is first trained from labels in its own stage."
    )
    assistants: list[str] = Field(
        default_factory=list,
        description="Teacher assistants from largest to smallest. Each is taught by the teacher and every "
        "larger assistant; one with a checkpoint is used as it is, not retrained.",
    )
    student: str = Field(description="The final, smallest model, taught by the teacher and every assistant.")
    teacher_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Probability that each guiding model but the nearest one sits out a batch (the "
        "paper's stochastic DGKD); applies to stages with two or more teachers. 0 keeps them all.",
    )


class TeacherDropout(TeacherPolicy):
    """Stochastic DGKD: each teacher but the first (the nearest) sits out a batch with probability
    ``dropout``; the others teach it with equal weight."""

    def __init__(self, dropout: float) -> None:
        self.dropout = dropout

    def select(self, batch: TeacherBatch) -> TeacherSelection:
        count = len(batch.teachers)
        keep = torch.rand(count - 1, generator=batch.generator) >= self.dropout
        return TeacherSelection((0, *(index + 1 for index, kept in enumerate(keep.tolist()) if kept)))

    def describe(self) -> dict[str, Any]:
        return {"policy": "teacher_dropout", "dropout": self.dropout}


class DGKD(Curriculum):
    """Densely Guided Knowledge Distillation (Son, Na, Choi and Han, ICCV 2021, arXiv:2009.08825).

    The chain ``teacher -> A1 -> ... -> Ak -> student`` as in TAKD, but every model learns from *all*
    the larger models before it, not just the previous one, so an error of one assistant does not
    propagate alone. Stages: the teacher from labels (if it has no checkpoint); then each assistant
    (without a checkpoint) taught by the teacher and every larger assistant; then the student taught by
    the teacher and every assistant.

    Each stage lists its teachers nearest first: the most recent (smallest) model, then the next larger
    one, ..., the teacher last. The first teacher is the one that feature- and relation-based terms tap
    and the one teacher dropout (:class:`TeacherDropout`, the stage's teacher policy) never leaves
    out; response terms average over the teachers a batch keeps
    (:meth:`kdframe.StepOutputs.average_over_teachers`).
    """

    def __init__(self, params: DGKDParams) -> None:
        self.params = params

    def plan(self, schedule: Schedule) -> list[StagePlan]:
        chain = [self.params.teacher, *self.params.assistants, self.params.student]
        stages = teacher_stages(schedule, [self.params.teacher], set())
        for index, current in enumerate(chain[1:], start=1):
            config = schedule.models.get(current)
            if current != self.params.student and config is not None and config.checkpoint is not None:
                continue  # a pre-trained assistant guides the later models as it is
            teachers = tuple(reversed(chain[:index]))  # nearest (smallest) first, the teacher last
            stage = distill_stage(schedule, current, teachers)
            if len(teachers) > 1 and self.params.teacher_dropout > 0:
                stage = replace(stage, teacher_policy=TeacherDropout(self.params.teacher_dropout))
            stages.append(stage)
        return stages
