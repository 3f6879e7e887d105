"""The core's checks of a curriculum's stage plan."""

import pytest

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
