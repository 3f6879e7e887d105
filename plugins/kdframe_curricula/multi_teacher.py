"""The ``multi_teacher`` curriculum: several teachers teach one student at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from pydantic import Field, NonNegativeFloat, model_validator

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


class MultiTeacherParams(Params):
    """Params of ``multi_teacher``."""

    teachers: list[str] = Field(
        min_length=1,
        description="Models that teach the student together; each one without a checkpoint is first "
        "trained from labels in its own stage. The first is the one feature- and relation-based "
        "terms learn from.",
    )
    student: str = Field(description="Model taught by all the teachers.")
    weights: list[NonNegativeFloat] | None = Field(
        None,
        description="Relative weight of each teacher (one per teacher, in the same order, not all zero) "
        "in the response terms' weighted mean over teachers. None weighs them equally.",
    )

    @model_validator(mode="after")
    def _check(self) -> MultiTeacherParams:
        duplicates = sorted({t for t in self.teachers if self.teachers.count(t) > 1})
        if duplicates:
            raise ValueError(f"teachers names {', '.join(duplicates)} more than once")
        if self.weights is not None:
            if len(self.weights) != len(self.teachers):
                raise ValueError(
                    f"weights has {len(self.weights)} value(s) but there are {len(self.teachers)} teacher(s); "
                    "give one weight per teacher, in the same order"
                )
            if sum(self.weights) <= 0:
                raise ValueError("weights are all zero; at least one teacher needs a positive weight")
        return self


class FixedTeacherWeights(TeacherPolicy):
    """Every teacher teaches every batch, with fixed relative weights."""

    def __init__(self, weights: tuple[float, ...]) -> None:
        self.selection = TeacherSelection(tuple(range(len(weights))), weights)

    def select(self, batch: TeacherBatch) -> TeacherSelection:
        return self.selection

    def check(self, teachers: Sequence[str]) -> list[str]:
        count = len(self.selection.weights)
        if count != len(teachers):
            return [f"{count} teacher weight(s) for {len(teachers)} teacher(s)"]
        return []

    def describe(self) -> dict[str, Any]:
        return {"policy": "fixed_teacher_weights", "weights": list(self.selection.weights)}


class MultiTeacher(Curriculum):
    """Several teachers teach one student at once: the ensemble teacher of Hinton, Vinyals and Dean
    (2015, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531) and the multiple teachers
    of You, Xu, Xu and Tao (KDD 2017, "Learning from Multiple Teacher Networks").

    Stages: each teacher without a checkpoint from labels (in the listed order), then the student
    taught by all the teachers, weighted by ``weights`` (the stage's teacher policy,
    :class:`FixedTeacherWeights`). Response-based terms (e.g.
    ``hinton_kd``) compute their value against each teacher and take the weighted mean
    (:meth:`kdframe.StepOutputs.average_over_teachers`); feature- and relation-based terms learn
    from the first teacher only.
    """

    def __init__(self, params: MultiTeacherParams) -> None:
        self.params = params

    def plan(self, schedule: Schedule) -> list[StagePlan]:
        teachers = tuple(self.params.teachers)
        stages = teacher_stages(schedule, list(teachers), set())
        student = distill_stage(schedule, self.params.student, teachers)
        if self.params.weights is not None:
            student = replace(student, teacher_policy=FixedTeacherWeights(tuple(self.params.weights)))
        return [*stages, student]
