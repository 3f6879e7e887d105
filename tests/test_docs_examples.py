"""The complete examples of docs/curricula.md, docs/plugins.md and docs/hooks.md run as written: each
is extracted from its page, registered as a plugin and run on a tiny synthetic schedule."""

from __future__ import annotations

import json
import re
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from kdframe.curriculum import make_curriculum, plan_stages
from kdframe.plugins import Plugins, create_plugins
from kdframe.runner import RESULTS_FILE, execute, load_schedule, prepare
from kdframe.schedule import parse_schedule
from tests.conftest import tiny_schedule, write_schedule

DOCS = Path(__file__).resolve().parents[1] / "docs"


def docs_module(page: str, first_line: str) -> types.ModuleType:
    """The Python block of ``docs/<page>`` that starts with ``first_line``, executed as a module."""
    pattern = rf"```python\n{re.escape(first_line)}\n(.*?)```"
    match = re.search(pattern, (DOCS / page).read_text(), re.S)
    assert match, f"docs/{page} has no python block starting with {first_line!r}"
    name = first_line.removeprefix("# ").split("/")[0].removesuffix(".py")
    module = types.ModuleType(name)
    exec(compile(match.group(1), f"docs/{page}", "exec"), module.__dict__)  # noqa: S102 - our own docs
    return module


def plugins_with(module: types.ModuleType) -> Plugins:
    return create_plugins(plugins=[(module.__name__, module)])


def planned(plugins: Plugins, schedule: dict[str, Any]) -> list[tuple[str, tuple[str, ...], str | None, tuple[int, ...]]]:
    parsed = parse_schedule(schedule)
    curriculum = make_curriculum(parsed, plugins.registry)
    _, stages = plan_stages(parsed, curriculum, plugins.registry, parsed.curriculum.name)
    return [(s.stage_name, s.teachers, s.init_from, s.snapshots) for s in stages]


def run(tmp_path: Path, schedule: dict[str, Any], plugins: Plugins):
    path = write_schedule(tmp_path, {**schedule, "logging": {"loggers": []}})
    loaded, plugins, resolved = load_schedule(path, plugins=plugins)
    experiment = prepare(loaded, plugins, resolved)
    out = tmp_path / "run"
    out.mkdir()
    execute(experiment, out, quiet=True)
    return experiment, json.loads((out / RESULTS_FILE).read_text())


# --- docs/curricula.md -----------------------------------------------------------------------------


def test_route_curriculum_plans_and_carries_the_students_weights_forward(tmp_path) -> None:
    plugins = plugins_with(docs_module("curricula.md", "# my_curricula/__init__.py"))
    schedule = tiny_schedule(**{"training.epochs": 2})
    schedule["curriculum"] = {"name": "route", "params": {"teacher": "teacher", "student": "student", "anchors": [1, 2]}}
    assert planned(plugins, schedule) == [
        ("teacher", (), None, (1, 2)),
        ("student-route1", ("teacher@1",), None, ()),
        ("student-route2", ("teacher@2",), "student-route1", ()),
        ("student", ("teacher",), "student-route2", ()),
    ]
    # With a vanishing learning rate no parameter moves measurably, so each stage ends with the
    # parameters it started from: the later stages end with the first waypoint's, which they
    # inherited (every model key has its own random initialisation, far from any other's).
    schedule["training"]["optimizer"] = {"name": "sgd", "lr": 1e-30, "momentum": 0.0, "weight_decay": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # at chance level, as nothing trains
        experiment, results = run(tmp_path, schedule, plugins)
    assert [row["stage"] for row in results["stages"]] == ["teacher", "student-route1", "student-route2", "student"]
    first = dict(experiment.models["student-route1"].named_parameters())
    for key in ("student-route2", "student"):
        state = dict(experiment.models[key].named_parameters())
        assert all(torch.allclose(state[name], first[name], rtol=0, atol=1e-20) for name in first), key


def test_route_curriculum_learns(tmp_path) -> None:
    plugins = plugins_with(docs_module("curricula.md", "# my_curricula/__init__.py"))
    schedule = tiny_schedule(**{"training.epochs": 2})
    schedule["curriculum"] = {"name": "route", "params": {"teacher": "teacher", "student": "student", "anchors": [1]}}
    experiment, results = run(tmp_path, schedule, plugins)
    assert results["finished"] is True
    route, student = experiment.models["student-route1"].state_dict(), experiment.models["student"].state_dict()
    assert any(not torch.equal(route[name], student[name]) for name in route)  # the last stage trained on


def test_confident_teachers_weigh_each_batch_and_evaluate_the_ensemble(tmp_path) -> None:
    module = docs_module("curricula.md", "# confident_teachers/__init__.py")
    seen: list[tuple[float, ...]] = []
    original = module.ByConfidence.reweigh

    def recording(self, selection, outputs):
        weights = original(self, selection, outputs)
        seen.append(weights)
        return weights

    module.ByConfidence.reweigh = recording
    schedule = tiny_schedule(**{"training.epochs": 1})
    schedule["curriculum"] = {"name": "confident_teachers", "params": {"teachers": ["teacher", "assistant"], "student": "student"}}
    experiment, results = run(tmp_path, schedule, plugins_with(module))
    rows = [(r["stage"], r["arch"], r["teachers"]) for r in results["stages"]]
    assert rows == [
        ("teacher", "plain_cnn", []),
        ("assistant", "plain_cnn", []),
        ("student", "plain_cnn", ["teacher", "assistant"]),
        ("teachers-ensemble", "ensemble", ["teacher", "assistant"]),
    ]
    batches = results["stages"][2]["epochs_run"] * (128 // 32)
    assert len(seen) == batches + 1  # every batch, and the dry step of 'kdframe validate'
    assert all(len(w) == 2 and min(w) > 0 for w in seen)
    assert len(set(seen)) > 1  # the weights change from batch to batch
    assert results["stages"][-1]["epochs"] == 0 and results["stages"][-1]["checkpoint"] == ""


# --- docs/plugins.md -------------------------------------------------------------------------------


def test_the_exporter_example_writes_and_verifies_an_optimized_onnx_model(tmp_path) -> None:
    from kdframe.export import export_stage

    module = docs_module("plugins.md", "# my_exporters/__init__.py")
    plugins = plugins_with(module)
    schedule = tiny_schedule(**{"curriculum": {"name": "direct", "params": {"student": "student"}}})
    run(tmp_path, schedule, plugins)
    report, target = export_stage(tmp_path / "run", format="ort_optimized", params={"level": "basic"}, plugins=plugins)
    (artefact,) = report.artefacts
    assert artefact.file == "student.ort-optimized.onnx" and (target / artefact.file).is_file()
    assert not (target / "plain.onnx").exists()
    assert artefact.max_abs_diff < 1e-3 and artefact.agreement == 100.0
    assert report.exporter_params == {"level": "basic"} and report.runtime.startswith("ONNX Runtime")


def test_the_optimizer_example_trains_with_lion_and_a_linear_decay(tmp_path) -> None:
    module = docs_module("plugins.md", "# my_optim/__init__.py")
    lrs: list[list[float]] = []
    original = module.Lion.step

    def recording(self, closure=None):
        lrs.append([group["lr"] for group in self.param_groups])
        return original(self, closure)

    module.Lion.step = recording
    schedule = tiny_schedule(
        **{
            "training.epochs": 2,
            "training.optimizer": {"name": "lion", "lr": 3e-4, "weight_decay": 0.1, "param_groups": [{"params": "loss.*", "lr": 1e-3}]},
            "training.lr_schedule": {"name": "linear", "warmup_epochs": 0},
            "curriculum": {"name": "direct", "params": {"teacher": "teacher", "student": "student"}},
            "distill.losses": [{"name": "cross_entropy"}, {"name": "fitnet", "params": {"layers": [{"student": "features.0", "teacher": "features.0"}]}}],
        }
    )
    experiment, results = run(tmp_path, schedule, plugins_with(module))
    assert results["finished"] is True and [r["stage"] for r in results["stages"]] == ["teacher", "student"]
    steps = 2 * (128 // 32)
    teacher_lrs, student_lrs = lrs[:steps], lrs[steps:]
    assert [group[0] for group in teacher_lrs] == pytest.approx([3e-4 * (1 - k / steps) for k in range(steps)])
    # The student's stage has two groups: the student (the optimizer's lr), the adapters (their own).
    assert all(len(group) == 2 for group in student_lrs)
    assert [group[1] for group in student_lrs] == pytest.approx([1e-3 * (1 - k / steps) for k in range(steps)])
