"""The ``early_stopped_teacher`` curriculum: the student learns from an early snapshot of its teacher."""

from __future__ import annotations

from dataclasses import replace

from pydantic import Field

from kdframe import (
    Curriculum,
    Params,
    Schedule,
    ScheduleError,
    StagePlan,
    distill_stage,
    scratch_stage,
    snapshot_key,
)


class EarlyStoppedTeacherParams(Params):
    """Params of ``early_stopped_teacher``."""

    teacher: str = Field(
        description="Model trained from labels in this schedule (it must have no checkpoint); a copy of "
        "it is kept after 'teacher_epoch' epochs."
    )
    student: str = Field(description="Model taught by the teacher's early snapshot.")
    teacher_epoch: int = Field(
        ge=1,
        description="1-based epoch of the teacher's stage after which its snapshot is kept; the student "
        "learns from that snapshot ('<teacher>@<teacher_epoch>'). At most the teacher stage's epochs.",
    )


class EarlyStoppedTeacher(Curriculum):
    """Early-stopped teacher (Cho and Hariharan, "On the Efficacy of Knowledge Distillation", ICCV 2019).

    A more accurate teacher is not always a better one: a teacher stopped early, before it fits the
    training data closely, often teaches a small student better. Stages: the teacher from labels, for
    its full epochs, keeping a snapshot after ``teacher_epoch`` (its final checkpoint is saved as
    usual, the snapshot as ``epoch-<teacher_epoch>.pt`` in its stage folder); then the student taught
    by that snapshot, named ``<teacher>@<teacher_epoch>``.

    The teacher must be trained here. To learn from an early checkpoint file you already have, use the
    ``direct`` curriculum with that file as the teacher's ``checkpoint``.
    """

    def __init__(self, params: EarlyStoppedTeacherParams) -> None:
        self.params = params

    def plan(self, schedule: Schedule) -> list[StagePlan]:
        teacher, epoch = self.params.teacher, self.params.teacher_epoch
        config = schedule.models.get(teacher)
        if config is not None and config.checkpoint is not None:
            raise ScheduleError(
                f"Curriculum 'early_stopped_teacher' trains its teacher '{teacher}' in this schedule to keep "
                f"its snapshot after epoch {epoch}, but models.{teacher} has a checkpoint "
                f"('{config.checkpoint}'). Remove that checkpoint to train the teacher here; or, to learn "
                "from an early checkpoint file you already have, use the 'direct' curriculum with that "
                f"file as models.{teacher}.checkpoint."
            )
        teacher_stage = replace(scratch_stage(schedule, teacher), snapshots=(epoch,))
        return [teacher_stage, distill_stage(schedule, self.params.student, (snapshot_key(teacher, epoch),))]
