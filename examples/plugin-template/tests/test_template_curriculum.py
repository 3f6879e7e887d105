"""``self_distillation``: the curriculum contract, its stage plans, and a real run."""

from __future__ import annotations

import json

import pytest

from kdframe import LossConfig
from kdframe.testing import check_curriculum_contract, tiny_schedule
from kdframe_template.curriculum import SPEC

MLP = {"arch": "mlp", "params": {"hidden": [16]}}


def _schedule(**changes):
    return tiny_schedule(
        **{"models": {"net": MLP}, "curriculum": {"name": "self_distillation", "params": {"model": "net"}}, **changes}
    )


def test_trains_the_model_then_its_copy_from_it() -> None:
    stages = check_curriculum_contract(SPEC, {"model": "net"}, _schedule())
    assert [(s.student, s.teachers, s.snapshots) for s in stages] == [("net", (), ()), ("net-self", ("net",), ())]
    assert stages[0].losses == (LossConfig(name="cross_entropy", weight=1.0),)
    assert [loss.name for loss in stages[1].losses] == ["cross_entropy", "hinton_kd"]


def test_teacher_epoch_teaches_with_a_snapshot() -> None:
    stages = check_curriculum_contract(SPEC, {"model": "net", "teacher_epoch": 1}, _schedule())
    assert [(s.student, s.teachers, s.snapshots) for s in stages] == [("net", (), (1,)), ("net-self", ("net@1",), ())]


def test_a_model_with_a_checkpoint_only_teaches(tmp_path) -> None:
    schedule = _schedule(**{"models.net.checkpoint": str(tmp_path / "net.pt")})
    stages = check_curriculum_contract(SPEC, {"model": "net"}, schedule)
    assert [(s.student, s.teachers) for s in stages] == [("net-self", ("net",))]
    with pytest.raises(AssertionError, match="net@2"):
        check_curriculum_contract(SPEC, {"model": "net", "teacher_epoch": 2}, schedule)


def test_an_unknown_model_or_a_name_clash_is_reported() -> None:
    with pytest.raises(AssertionError, match="'student' is not in models"):
        check_curriculum_contract(SPEC, {"model": "student"}, _schedule())
    with pytest.raises(AssertionError, match="net-self"):
        check_curriculum_contract(SPEC, {"model": "net"}, _schedule(**{"models.net-self": MLP}))


def test_runs_end_to_end_with_the_template_loss(kdframe_run, kdframe_recorder) -> None:
    schedule = _schedule(**{
        "training.epochs": 1,
        "distill.losses": [{"name": "cross_entropy", "weight": 0.5}, {"name": "logit_mimic", "weight": 0.1}],
    })
    folder, results = kdframe_run(schedule, kdframe_recorder)
    assert [(r.stage, r.arch, r.teachers) for r in results] == [("net", "mlp", ()), ("net-self", "mlp", ("net",))]
    assert [d["stage"] for d in kdframe_recorder.details("stage_start")] == ["net", "net-self"]
    batch = next(d["metrics"] for d in kdframe_recorder.details("batch_end") if d["stage"] == "net-self")
    assert batch["loss/logit_mimic"] >= 0
    assert json.loads((folder / "results.json").read_text())["finished"] is True
