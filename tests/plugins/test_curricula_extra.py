"""The curricula dgkd, early_stopped_teacher, born_again and multi_teacher: golden stage lists, the
errors of bad plans, and one end-to-end run each on synthetic data through the real runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

from kdframe import LossSpec, LossTerm, NoParams, ScheduleError, hookimpl
from kdframe.checkpoints import load_state_dict
from kdframe.curriculum import check_plan, with_extra_models
from kdframe.json_schema import first_party_registry
from kdframe.plugins import create_plugins
from kdframe.runner import RESULTS_FILE, execute, load_schedule, prepare
from kdframe.schedule import parse_schedule
from tests.conftest import tiny_schedule, write_schedule

SCRATCH = ("cross_entropy",)
KD = ("cross_entropy", "hinton_kd")
NEW = ("dgkd", "early_stopped_teacher", "born_again", "multi_teacher")


@pytest.fixture(scope="module")
def registry():
    return first_party_registry()


class Row(NamedTuple):
    """A stage as the golden lists spell it."""

    name: str
    student: str
    teachers: tuple[str, ...] = ()
    losses: tuple[str, ...] = SCRATCH
    kind: str = "train"
    snapshots: tuple[int, ...] = ()
    policy: Any = None  # the teacher policy's describe()


def row(name: str, teachers: tuple[str, ...] = (), **fields: Any) -> Row:
    """A stage named after its student, with KD losses when it has teachers."""
    fields.setdefault("student", name)
    fields.setdefault("losses", KD if teachers else SCRATCH)
    return Row(name=name, teachers=teachers, **fields)


def plan(registry, name: str, params: dict[str, Any], **changes: Any) -> list[Row]:
    """The checked stage list of curriculum ``name`` for ``tiny_schedule(**changes)``."""
    schedule = parse_schedule({**tiny_schedule(**changes), "curriculum": {"name": name, "params": params}})
    spec = registry.spec("curriculum", name)
    curriculum = spec.factory(spec.params.model_validate(params))
    schedule = with_extra_models(schedule, curriculum, name)
    stages = curriculum.plan(schedule)
    check_plan(schedule, stages, registry, name)
    return [
        Row(
            s.stage_name,
            s.student,
            s.teachers,
            tuple(loss.name for loss in s.losses),
            s.kind,
            s.snapshots,
            s.teacher_policy.describe() if s.teacher_policy is not None else None,
        )
        for s in stages
    ]


DROPOUT_25 = {"policy": "teacher_dropout", "dropout": 0.25}
TA2 = {"models.ta2": {"arch": "plain_cnn", "params": {"depth": 2, "width_multiplier": 2.0}}}


# --- contract --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["direct", "ta_chain", *NEW])
def test_every_curriculum_is_registered_and_documented(registry, name) -> None:
    component = registry.get("curriculum", name)
    spec = component.spec
    assert spec.summary and "\n" not in spec.summary
    assert spec.family in {"chain", "ensemble", "self"}
    assert component.provider.plugin.startswith("kdframe_curricula")
    assert spec.factory.__doc__ and len(spec.factory.__doc__) > 100
    assert spec.params.model_config.get("extra") == "forbid"
    for field_name, field in spec.params.model_fields.items():
        assert field.description and len(field.description) > 15, f"{name}.{field_name}"
    if name in NEW:
        assert any(word in spec.factory.__doc__ for word in ("arXiv", "ICCV", "ICML", "KDD")), name


# --- dgkd ------------------------------------------------------------------------------------------


def test_dgkd_one_assistant(registry) -> None:
    params = {"teacher": "teacher", "assistants": ["assistant"], "student": "student"}
    assert plan(registry, "dgkd", params) == [
        row("teacher"),
        row("assistant", ("teacher",)),
        row("student", ("assistant", "teacher")),
    ]


def test_dgkd_two_assistants_nearest_teacher_first_with_dropout(registry) -> None:
    params = {"teacher": "teacher", "assistants": ["assistant", "ta2"], "student": "student", "teacher_dropout": 0.25}
    assert plan(registry, "dgkd", params, **TA2) == [
        row("teacher"),
        row("assistant", ("teacher",)),  # one teacher: nothing to drop
        row("ta2", ("assistant", "teacher"), policy=DROPOUT_25),
        row("student", ("ta2", "assistant", "teacher"), policy=DROPOUT_25),
    ]


def test_dgkd_pretrained_teacher_and_assistant_are_used_as_they_are(registry) -> None:
    params = {"teacher": "teacher", "assistants": ["assistant", "ta2"], "student": "student"}
    assert plan(registry, "dgkd", params, **TA2, **{"models.assistant.checkpoint": "a.pt"}) == [
        row("teacher"),
        row("ta2", ("assistant", "teacher")),
        row("student", ("ta2", "assistant", "teacher")),
    ]
    changes = {**TA2, "models.teacher.checkpoint": "t.pt", "models.ta2.checkpoint": "b.pt"}
    assert plan(registry, "dgkd", params, **changes) == [
        row("assistant", ("teacher",)),
        row("student", ("ta2", "assistant", "teacher")),
    ]


def test_dgkd_without_assistants_is_direct_kd(registry) -> None:
    assert plan(registry, "dgkd", {"teacher": "teacher", "student": "student", "teacher_dropout": 0.5}) == [
        row("teacher"),
        row("student", ("teacher",)),
    ]


@pytest.mark.parametrize("dropout", [1.0, -0.1])
def test_dgkd_teacher_dropout_must_be_in_0_1(registry, dropout) -> None:
    with pytest.raises(ValueError, match="teacher_dropout"):
        plan(registry, "dgkd", {"teacher": "teacher", "student": "student", "teacher_dropout": dropout})


# --- early_stopped_teacher -------------------------------------------------------------------------


def test_early_stopped_teacher_keeps_a_snapshot_and_teaches_from_it(registry) -> None:
    params = {"teacher": "teacher", "student": "student", "teacher_epoch": 2}
    assert plan(registry, "early_stopped_teacher", params, **{"training.epochs": 5}) == [
        row("teacher", snapshots=(2,)),
        row("student", ("teacher@2",)),
    ]


def test_early_stopped_teacher_epoch_may_equal_the_teachers_stage_epochs(registry) -> None:
    params = {"teacher": "teacher", "student": "student", "teacher_epoch": 3}
    changes = {"training.stages": {"teacher": {"epochs": 3}}}
    assert plan(registry, "early_stopped_teacher", params, **changes) == [
        row("teacher", snapshots=(3,)),
        row("student", ("teacher@3",)),
    ]


def test_early_stopped_teacher_epoch_beyond_the_teachers_epochs_is_caught(registry) -> None:
    params = {"teacher": "teacher", "student": "student", "teacher_epoch": 3}
    with pytest.raises(ScheduleError, match=r"snapshot epoch 3 is outside the stage's 1\.\.2 epochs"):
        plan(registry, "early_stopped_teacher", params)
    # The teacher stage's own epochs count, not the default's.
    with pytest.raises(ScheduleError, match=r"snapshot epoch 3 is outside the stage's 1\.\.1 epochs"):
        plan(registry, "early_stopped_teacher", params, **{"training.epochs": 9, "training.stages": {"teacher": {"epochs": 1}}})


def test_early_stopped_teacher_with_a_checkpoint_is_refused(registry) -> None:
    params = {"teacher": "teacher", "student": "student", "teacher_epoch": 1}
    with pytest.raises(ScheduleError) as error:
        plan(registry, "early_stopped_teacher", params, **{"models.teacher.checkpoint": "t.pt"})
    message = str(error.value)
    assert "trains its teacher 'teacher' in this schedule" in message and "'t.pt'" in message
    assert "Remove that checkpoint" in message and "'direct' curriculum" in message


def test_early_stopped_teacher_epoch_is_at_least_one(registry) -> None:
    with pytest.raises(ValueError, match="teacher_epoch"):
        plan(registry, "early_stopped_teacher", {"teacher": "teacher", "student": "student", "teacher_epoch": 0})


# --- born_again ------------------------------------------------------------------------------------


def test_born_again_generations(registry) -> None:
    assert plan(registry, "born_again", {"model": "student", "generations": 3}) == [
        row("student"),
        row("student-gen1", ("student",)),
        row("student-gen2", ("student-gen1",)),
        row("student-gen3", ("student-gen2",)),
    ]


def test_born_again_with_pretrained_generation_0_and_ensemble(registry) -> None:
    params = {"model": "student", "generations": 2, "ensemble": True}
    assert plan(registry, "born_again", params, **{"models.student.checkpoint": "s.pt"}) == [
        row("student-gen1", ("student",)),
        row("student-gen2", ("student-gen1",)),
        row(
            "student-ensemble",
            ("student", "student-gen1", "student-gen2"),
            losses=(),
            kind="evaluate",
        ),
    ]


def test_born_again_generations_copy_the_models_arch_and_params_without_checkpoint(registry) -> None:
    schedule = parse_schedule(tiny_schedule(**{"models.assistant.checkpoint": "a.pt"}))
    spec = registry.spec("curriculum", "born_again")
    curriculum = spec.factory(spec.params(model="assistant", generations=2))
    extra = curriculum.extra_models(schedule)
    assert list(extra) == ["assistant-gen1", "assistant-gen2"]
    for config in extra.values():
        assert config.arch == "plain_cnn"
        assert config.params == {"depth": 4, "width_multiplier": 0.5}
        assert config.checkpoint is None


def test_born_again_names_clashing_with_models_are_errors(registry) -> None:
    clash = {"models.student-gen2": {"arch": "plain_cnn", "params": {"depth": 2}}}
    with pytest.raises(ScheduleError, match="adds models named student-gen2, which the schedule already defines"):
        plan(registry, "born_again", {"model": "student", "generations": 2}, **clash)
    clash = {"models.student-ensemble": {"arch": "plain_cnn", "params": {"depth": 2}}}
    with pytest.raises(ScheduleError, match="the stage's result name 'student-ensemble' is already a model's name"):
        plan(registry, "born_again", {"model": "student", "generations": 1, "ensemble": True}, **clash)
    # Without the ensemble stage, that name is free.
    assert len(plan(registry, "born_again", {"model": "student", "generations": 1}, **clash)) == 2


def test_born_again_unknown_model_and_zero_generations(registry) -> None:
    with pytest.raises(ScheduleError, match="model 'pupil' is not in models"):
        plan(registry, "born_again", {"model": "pupil", "generations": 1})
    with pytest.raises(ValueError, match="generations"):
        plan(registry, "born_again", {"model": "student", "generations": 0})


# --- multi_teacher ---------------------------------------------------------------------------------


def test_multi_teacher_trains_teachers_then_the_student_with_weights(registry) -> None:
    params = {"teachers": ["teacher", "assistant"], "student": "student", "weights": [3, 1]}
    assert plan(registry, "multi_teacher", params) == [
        row("teacher"),
        row("assistant"),
        row("student", ("teacher", "assistant"), policy={"policy": "fixed_teacher_weights", "weights": [3.0, 1.0]}),
    ]


def test_multi_teacher_equal_weights_and_pretrained_teachers(registry) -> None:
    params = {"teachers": ["assistant", "teacher"], "student": "student"}
    assert plan(registry, "multi_teacher", params, **{"models.teacher.checkpoint": "t.pt"}) == [
        row("assistant"),
        row("student", ("assistant", "teacher")),
    ]
    assert plan(registry, "multi_teacher", {"teachers": ["teacher"], "student": "student"}) == [
        row("teacher"),
        row("student", ("teacher",)),
    ]


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0], "weights has 1 value\\(s\\) but there are 2 teacher\\(s\\)"),
        ([1.0, 2.0, 3.0], "weights has 3 value\\(s\\) but there are 2 teacher\\(s\\)"),
        ([0.0, 0.0], "all zero"),
        ([1.0, -1.0], "greater than or equal to 0"),
    ],
)
def test_multi_teacher_bad_weights_are_schedule_errors_with_their_path(tmp_path, weights, message) -> None:
    schedule = tiny_schedule()
    schedule["curriculum"] = {
        "name": "multi_teacher",
        "params": {"teachers": ["teacher", "assistant"], "student": "student", "weights": weights},
    }
    with pytest.raises(ScheduleError, match=message) as error:
        load_schedule(write_schedule(tmp_path, schedule))
    assert "curriculum.params" in str(error.value)


def test_multi_teacher_needs_distinct_teachers_other_than_the_student(registry) -> None:
    with pytest.raises(ValueError, match="teachers names teacher more than once"):
        plan(registry, "multi_teacher", {"teachers": ["teacher", "teacher"], "student": "student"})
    with pytest.raises(ValueError, match="at least 1"):
        plan(registry, "multi_teacher", {"teachers": [], "student": "student"})
    with pytest.raises(ScheduleError, match="cannot teach itself"):
        plan(registry, "multi_teacher", {"teachers": ["teacher", "student"], "student": "student"})


# --- end-to-end runs -------------------------------------------------------------------------------


class TeacherProbe(LossTerm):
    """A zero-valued term that records what each batch gives the loss terms."""

    def __init__(self, log: list[dict[str, Any]]) -> None:
        super().__init__()
        self.log = log

    def forward(self, outputs):
        self.log.append(
            {
                "teachers": len(outputs.teachers),
                "weights": outputs.teacher_weights,
                "first_logits": outputs.teachers[0].logits.detach().clone(),
                "indices": None if outputs.indices is None else outputs.indices.clone(),
                "mean_1_0": float(outputs.average_over_teachers([torch.tensor(1.0), torch.tensor(0.0)]))
                if len(outputs.teachers) == 2
                else None,
            }
        )
        return outputs.student.logits.sum() * 0.0


class ProbePlugin:
    def __init__(self) -> None:
        self.log: list[dict[str, Any]] = []

    @hookimpl
    def kdframe_register_losses(self):
        return [
            LossSpec(
                name="teacher_probe",
                summary="records the teachers a batch sees",
                factory=lambda params: TeacherProbe(self.log),
                params=NoParams,
                family="response",
            )
        ]


def _run(tmp_path, schedule, *extra_plugins):
    """Load, prepare and execute a schedule with ``extra_plugins``; return the experiment and
    results.json."""
    schedule = {**schedule, "logging": {"loggers": []}}
    path = write_schedule(tmp_path, schedule)
    plugins = create_plugins(plugins=list(extra_plugins))
    loaded, plugins, resolved_schedule = load_schedule(path, plugins=plugins)
    experiment = prepare(loaded, plugins, resolved_schedule)
    out = tmp_path / "run"
    out.mkdir()
    execute(experiment, out, quiet=True)
    return experiment, out, json.loads((out / RESULTS_FILE).read_text())


PROBED_LOSSES = [
    {"name": "cross_entropy", "weight": 0.1},
    {"name": "hinton_kd", "weight": 0.9},
    {"name": "teacher_probe"},
]


def test_dgkd_end_to_end_with_teacher_dropout(tmp_path) -> None:
    probe = ProbePlugin()
    schedule = tiny_schedule(**{"training.epochs": 1, "data.batch_size": 8, "data.params.train_size": 96})
    schedule["curriculum"] = {
        "name": "dgkd",
        "params": {"teacher": "teacher", "assistants": ["assistant"], "student": "student", "teacher_dropout": 0.5},
    }
    schedule["distill"] = {"losses": PROBED_LOSSES}
    experiment, _, results = _run(tmp_path, schedule, ("probe", probe))
    assert results["finished"] is True
    rows = [(r["stage"], r["teachers"], r["epochs_run"]) for r in results["stages"]]
    assert rows == [("teacher", [], 1), ("assistant", ["teacher"], 1), ("student", ["assistant", "teacher"], 1)]
    per_stage = 96 // 8  # batches per stage that has teachers
    assert len(probe.log) == 2 * per_stage
    assistant_counts = [entry["teachers"] for entry in probe.log[:per_stage]]
    student_counts = [entry["teachers"] for entry in probe.log[per_stage:]]
    assert set(assistant_counts) == {1}
    # Some batches of the student's stage dropped the teacher, some kept both; the nearest stays.
    assert set(student_counts) == {1, 2}
    assistant = experiment.models["assistant"].eval()
    with torch.no_grad():
        for entry in probe.log[per_stage:]:
            images = experiment.data.train_images[entry["indices"]]
            assert torch.allclose(entry["first_logits"], assistant(images), atol=1e-3)  # logits of magnitude ~100: float rounding differs by CPU
    for row_ in results["stages"]:
        assert 0.0 <= row_["final_test_acc"] <= 100.0


def test_early_stopped_teacher_end_to_end_teaches_from_the_snapshot(tmp_path) -> None:
    probe = ProbePlugin()
    schedule = tiny_schedule(**{"training.epochs": 2, "training.stages": {"student": {"epochs": 1}}})
    schedule["curriculum"] = {
        "name": "early_stopped_teacher",
        "params": {"teacher": "teacher", "student": "student", "teacher_epoch": 1},
    }
    schedule["distill"] = {"losses": PROBED_LOSSES}
    experiment, out, results = _run(tmp_path, schedule, ("probe", probe))
    rows = [(r["stage"], r["model"], r["teachers"], r["epochs_run"]) for r in results["stages"]]
    assert rows == [("teacher", "teacher", [], 2), ("student", "student", ["teacher@1"], 1)]

    teacher_folder = out / "stages" / "00-teacher"
    snapshot = load_state_dict(teacher_folder / "epoch-1.pt")
    final = load_state_dict(teacher_folder / "student.pt")
    assert snapshot.keys() == final.keys()
    assert any(not torch.equal(snapshot[k], final[k]) for k in final), "the snapshot equals the final teacher"
    copy = experiment.models["teacher@1"].state_dict()
    assert all(torch.equal(copy[k].cpu(), snapshot[k]) for k in snapshot)
    assert all(torch.equal(experiment.models["teacher"].state_dict()[k].cpu(), final[k]) for k in final)

    # The student's stage really saw the snapshot's logits, not the final teacher's.
    entry = probe.log[0]
    images = experiment.data.train_images[entry["indices"]]
    with torch.no_grad():
        early = experiment.models["teacher@1"].eval()(images)
        late = experiment.models["teacher"].eval()(images)
    assert torch.allclose(entry["first_logits"], early, atol=1e-5)
    assert not torch.allclose(entry["first_logits"], late, atol=1e-5)


def test_born_again_end_to_end_with_ensemble(tmp_path) -> None:
    schedule = tiny_schedule(**{"training.epochs": 1})
    schedule["curriculum"] = {"name": "born_again", "params": {"model": "student", "generations": 2, "ensemble": True}}
    experiment, out, results = _run(tmp_path, schedule)
    rows = [(r["stage"], r["model"], r["arch"], r["teachers"]) for r in results["stages"]]
    assert rows == [
        ("student", "student", "plain_cnn", []),
        ("student-gen1", "student-gen1", "plain_cnn", ["student"]),
        ("student-gen2", "student-gen2", "plain_cnn", ["student-gen1"]),
        ("student-ensemble", "student-ensemble", "ensemble", ["student", "student-gen1", "student-gen2"]),
    ]
    ensemble = results["stages"][-1]
    assert 0.0 <= ensemble["final_test_acc"] <= 100.0
    assert ensemble["epochs"] == 0 and ensemble["checkpoint"] == ""
    assert ensemble["params"] == sum(r["params"] for r in results["stages"][:3])
    for generation in ("student-gen1", "student-gen2"):
        assert len(list((out / "stages").glob(f"*-{generation}/student.pt"))) == 1
        assert experiment.schedule.models[generation].arch == "plain_cnn"
    # The generations are distinct models that were trained separately.
    first = experiment.models["student-gen1"].state_dict()
    second = experiment.models["student-gen2"].state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_multi_teacher_end_to_end_weights_reach_the_loss(tmp_path) -> None:
    probe = ProbePlugin()
    schedule = tiny_schedule(**{"training.epochs": 1})
    schedule["curriculum"] = {
        "name": "multi_teacher",
        "params": {"teachers": ["teacher", "assistant"], "student": "student", "weights": [3, 1]},
    }
    schedule["distill"] = {"losses": PROBED_LOSSES}
    _, _, results = _run(tmp_path, schedule, ("probe", probe))
    rows = [(r["stage"], r["teachers"]) for r in results["stages"]]
    assert rows == [("teacher", []), ("assistant", []), ("student", ["teacher", "assistant"])]
    assert len(probe.log) == 128 // 32
    for entry in probe.log:
        assert entry["teachers"] == 2
        assert entry["weights"] == (3.0, 1.0)
        assert entry["mean_1_0"] == pytest.approx(0.75)


# --- docs ------------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "curricula.md"


def test_docs_describe_every_curriculum_and_param(registry) -> None:
    text = DOCS.read_text()
    for name in registry.names("curriculum"):
        section = text.split(f"## `{name}`\n", 1)
        assert len(section) == 2, f"docs/curricula.md has no section for {name}"
        body = section[1].split("\n## ", 1)[0]
        for field_name in registry.spec("curriculum", name).params.model_fields:
            assert f"| `{field_name}` |" in body, f"{name}.{field_name} is not in docs/curricula.md"
