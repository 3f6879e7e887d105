"""The ``direct`` curriculum: one teacher teaches the student; without a teacher, the NOKD baseline."""

from __future__ import annotations

from pydantic import Field

from kdframe import Curriculum, Params, Schedule, StagePlan, distill_stage, scratch_stage, teacher_stages


class DirectParams(Params):
    """Params of ``direct``."""

    student: str = Field(description="Model (key of 'models') to train.")
    teacher: str | None = Field(
        None,
        description="Model that teaches the student. Without a checkpoint it is first trained from "
        "labels in its own stage. None trains the student from labels alone (NOKD).",
    )


class Direct(Curriculum):
    """Teacher -> student (baseline KD, 'BLKD' in the TAKD paper), or the student alone (NOKD).

    Stages: ``[teacher from labels (if it has no checkpoint)], student from the teacher`` — or just
    ``student from labels`` when no teacher is named.
    """

    def __init__(self, params: DirectParams) -> None:
        self.params = params

    def plan(self, schedule: Schedule) -> list[StagePlan]:
        if self.params.teacher is None:
            return [scratch_stage(schedule, self.params.student)]
        stages = teacher_stages(schedule, [self.params.teacher], set())
        stages.append(distill_stage(schedule, self.params.student, (self.params.teacher,)))
        return stages
