"""Teacher policies: the checks of a selection, and a broken policy reported as its plugin's bug."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kdframe import (
    Curriculum,
    CurriculumSpec,
    NoParams,
    PluginError,
    TeacherBatch,
    TeacherPolicy,
    TeacherSelection,
    distill_stage,
    hookimpl,
    teacher_stages,
)
from kdframe.plugins import create_plugins
from kdframe.runner import load_schedule, prepare
from kdframe.teacher_policy import checked_selection
from tests.conftest import tiny_schedule, write_schedule


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ((0, 1), "not a TeacherSelection"),
        (TeacherSelection(()), "must be ascending, unique, below 2 and include 0"),
        (TeacherSelection((1,)), "include 0"),
        (TeacherSelection((0, 0)), "unique"),
        (TeacherSelection((0, 2)), "below 2"),
        (TeacherSelection((1, 0)), "ascending"),
        (TeacherSelection((0, 1), (1.0,)), "one finite, non-negative weight per selected teacher"),
        (TeacherSelection((0, 1), (0.0, 0.0)), "not all zero"),
        (TeacherSelection((0, 1), (-1.0, 2.0)), "non-negative"),
        (TeacherSelection((0, 1), (float("nan"), 1.0)), "finite"),
    ],
)
def test_bad_selections_are_refused(selection, message) -> None:
    with pytest.raises(ValueError, match=message):
        checked_selection(selection, 2)


def test_good_selections_pass() -> None:
    for selection in (TeacherSelection((0,)), TeacherSelection((0, 1), (2.0, 0.0))):
        assert checked_selection(selection, 2) is selection


class _DropsTheFirst(TeacherPolicy):
    def select(self, batch: TeacherBatch) -> TeacherSelection:
        return TeacherSelection((1,))


class _BadWeights(TeacherPolicy):
    def select(self, batch: TeacherBatch) -> TeacherSelection:
        return TeacherSelection((0, 1))

    def reweigh(self, selection, outputs):
        raise ZeroDivisionError("division by zero")


class _PolicyCurriculum(Curriculum):
    def __init__(self, policy: TeacherPolicy) -> None:
        self.policy = policy

    def plan(self, schedule):
        stages = teacher_stages(schedule, ["teacher", "assistant"], set())
        student = distill_stage(schedule, "student", ("teacher", "assistant"))
        return [*stages, replace(student, teacher_policy=self.policy)]


class _Plugin:
    def __init__(self, policy: TeacherPolicy) -> None:
        self.policy = policy

    @hookimpl
    def kdframe_register_curricula(self):
        return [
            CurriculumSpec(
                name="with_policy",
                summary="two teachers with a policy",
                factory=lambda params: _PolicyCurriculum(self.policy),
                params=NoParams,
            )
        ]


@pytest.mark.parametrize(
    ("policy", "action", "detail"),
    [(_DropsTheFirst(), "select()", "include 0"), (_BadWeights(), "reweigh()", "ZeroDivisionError")],
)
def test_a_broken_policy_fails_in_validate_as_its_plugins_bug(tmp_path, policy, action, detail) -> None:
    schedule = {**tiny_schedule(), "curriculum": {"name": "with_policy"}, "logging": {"loggers": []}}
    path = write_schedule(tmp_path, schedule)
    loaded, plugins, resolved = load_schedule(path, plugins=create_plugins(plugins=[("policy-plugin", _Plugin(policy))]))
    with pytest.raises(PluginError) as error:
        prepare(loaded, plugins, resolved)
    message = str(error.value)
    assert f"Teacher policy '{type(policy).__name__}' from curriculum 'with_policy'" in message
    assert f"failed in {action}" in message and detail in message
    assert "bug in that plugin, not in kdframe" in message

