"""The core's checks of a curriculum's stage plan."""

import pytest

from kdframe import TeacherBatch, TeacherPolicy, TeacherSelection
from kdframe.curriculum import StagePlan, check_plan
from kdframe.errors import ScheduleError
from kdframe.plugins import create_plugins
from kdframe.schedule import LossConfig, parse_schedule
from tests.conftest import tiny_schedule

CE = (LossConfig(name="cross_entropy"),)
KD = (LossConfig(name="hinton_kd"),)


def check(stages, **changes) -> None:
    schedule = parse_schedule(tiny_schedule(**changes))
    check_plan(schedule, stages, create_plugins().registry, "test")


def test_a_valid_chain_passes() -> None:
    check([StagePlan("teacher", (), CE), StagePlan("assistant", ("teacher",), KD), StagePlan("student", ("assistant",), KD)])


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([], "produced no stages"),
        ([StagePlan("student", ("teacher",), KD)], "teacher 'teacher' has no checkpoint and no earlier stage trains it"),
        ([StagePlan("teacher", (), CE), StagePlan("teacher", (), CE, name="again")], "already trained"),
        ([StagePlan("teacher", (), CE), StagePlan("student", ("teacher",), KD, name="teacher")], "a second stage with this name"),
        ([StagePlan("student", ("student",), KD)], "cannot teach itself"),
        ([StagePlan("nobody", (), CE)], "model 'nobody' is not in models"),
        ([StagePlan("student", (), KD)], "needs a teacher"),
    ],
)
def test_bad_plans_are_explained(stages, message) -> None:
    with pytest.raises(ScheduleError, match=message):
        check(stages)


def test_a_model_with_a_checkpoint_is_not_retrained() -> None:
    with pytest.raises(ScheduleError, match="has a checkpoint and would be trained again"):
        check([StagePlan("teacher", (), CE)], **{"models.teacher.checkpoint": "t.pt"})


class _Everyone(TeacherPolicy):
    def __init__(self, problems: list[str] | None = None) -> None:
        self.problems = problems or []

    def select(self, batch: TeacherBatch) -> TeacherSelection:
        return TeacherSelection(tuple(range(len(batch.teachers))))

    def check(self, teachers):
        return self.problems


def _build(models):
    return models[0]


TEACHER = StagePlan("teacher", (), CE)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        # init_from: exists, trained earlier, same architecture and params, not the student itself
        ([TEACHER, StagePlan("student", ("teacher",), KD, init_from="nobody")], "init_from 'nobody' is not in models"),
        ([TEACHER, StagePlan("student", ("teacher",), KD, init_from="assistant")], "init_from 'assistant' has no checkpoint and no earlier stage trains it"),
        ([TEACHER, StagePlan("student", ("teacher",), KD, init_from="teacher")], "can only start from a model of the same architecture and params"),
        ([TEACHER, StagePlan("student", ("teacher",), KD, init_from="student")], "is the stage's own student"),
        ([TEACHER, StagePlan("student", ("teacher",), KD, init_from="teacher@1")], "'teacher@1' is a snapshot of 'teacher' after epoch 1, but no earlier stage"),
        # teacher policies
        ([TEACHER, StagePlan("student", ("teacher",), KD, teacher_policy=_Everyone(["too few teachers"]))], r"stage 1 \('student'\): too few teachers"),
        ([StagePlan("student", (), CE, teacher_policy=_Everyone())], "a teacher policy without teachers"),
        # evaluate stages
        ([TEACHER, StagePlan("both", ("teacher",), (), kind="evaluate")], "needs 'build'"),
        ([TEACHER, StagePlan("row", (), (), kind="evaluate", build=_build)], "needs the models its model is built from"),
        ([TEACHER, StagePlan("student", ("teacher",), (), kind="evaluate", build=_build)], "result name 'student' is already a model's name"),
        ([StagePlan("row", ("teacher",), (), kind="evaluate", build=_build)], "model 'teacher' has no checkpoint and no earlier stage trains it"),
    ],
)
def test_bad_extension_point_plans_are_explained(stages, message) -> None:
    with pytest.raises(ScheduleError, match=message):
        check(stages)


def test_a_stage_may_start_from_a_model_of_the_same_arch_or_its_snapshot() -> None:
    same = {"models.copy": {"arch": "plain_cnn", "params": {"depth": 2, "width_multiplier": 1.0}}}  # the default
    check([StagePlan("student", (), CE, snapshots=(1,)), StagePlan("copy", (), CE, init_from="student@1")], **same)
    check([StagePlan("student", (), CE), StagePlan("copy", (), CE, init_from="student")], **same)
    check([StagePlan("copy", (), CE, init_from="student")], **same, **{"models.student.checkpoint": "s.pt"})
