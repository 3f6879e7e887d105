"""Golden stage lists of the first-party curricula."""

from __future__ import annotations

import pytest

import kdframe_curricula
from kdframe.plugins import create_plugins
from kdframe.schedule import parse_schedule
from tests.conftest import tiny_schedule


def plan(curriculum: dict, **changes) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    plugins = create_plugins(load_entry_points=False, plugins=[("kdframe_curricula", kdframe_curricula)])
    schedule = parse_schedule({**tiny_schedule(**changes), "curriculum": curriculum})
    spec = plugins.registry.spec("curriculum", curriculum["name"])
    stages = spec.factory(spec.params.model_validate(curriculum["params"])).plan(schedule)
    return [(s.stage_name, s.teachers, tuple(loss.name for loss in s.losses)) for s in stages]


SCRATCH = ("cross_entropy",)
KD = ("cross_entropy", "hinton_kd")


def test_direct_without_teacher_is_nokd() -> None:
    assert plan({"name": "direct", "params": {"student": "student"}}) == [("student", (), SCRATCH)]


def test_direct_trains_a_teacher_without_checkpoint_first() -> None:
    assert plan({"name": "direct", "params": {"teacher": "teacher", "student": "student"}}) == [
        ("teacher", (), SCRATCH),
        ("student", ("teacher",), KD),
    ]
    assert plan(
        {"name": "direct", "params": {"teacher": "teacher", "student": "student"}},
        **{"models.teacher.checkpoint": "t.pt"},
    ) == [("student", ("teacher",), KD)]


def test_ta_chain_with_one_and_two_assistants() -> None:
    params = {"teacher": "teacher", "assistants": ["assistant"], "student": "student"}
    assert plan({"name": "ta_chain", "params": params}) == [
        ("teacher", (), SCRATCH),
        ("assistant", ("teacher",), KD),
        ("student", ("assistant",), KD),
    ]
    models = {
        "models.ta2": {"arch": "plain_cnn", "params": {"depth": 2, "width_multiplier": 2.0}},
    }
    params2 = {"teacher": "teacher", "assistants": ["assistant", "ta2"], "student": "student"}
    assert [s[:2] for s in plan({"name": "ta_chain", "params": params2}, **models)] == [
        ("teacher", ()),
        ("assistant", ("teacher",)),
        ("ta2", ("assistant",)),
        ("student", ("ta2",)),
    ]


def test_ta_chain_reuses_a_pretrained_assistant_and_without_assistants_is_direct() -> None:
    params = {"teacher": "teacher", "assistants": ["assistant"], "student": "student"}
    assert plan({"name": "ta_chain", "params": params}, **{"models.assistant.checkpoint": "a.pt"}) == [
        ("student", ("assistant",), KD),
    ]
    assert plan({"name": "ta_chain", "params": {"teacher": "teacher", "student": "student"}}) == [
        ("teacher", (), SCRATCH),
        ("student", ("teacher",), KD),
    ]


def test_params_forbid_unknown_fields() -> None:
    with pytest.raises(Exception, match="extra"):
        plan({"name": "direct", "params": {"student": "student", "techer": "teacher"}})
