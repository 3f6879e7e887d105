"""The Python API (kdframe.api): docs/python-api.md's notebook runs as written; schedules as dicts,
Schedule objects and files; models back from run folders; in-process registration."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kdframe
from kdframe.errors import RunFolderError, ScheduleError
from kdframe.plugins import create_plugins, in_process_plugins
from kdframe.testing import tiny_schedule

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(autouse=True)
def no_leftover_registrations():
    """Every test leaves the process's registrations as it found them."""
    before = dict(in_process_plugins())
    yield
    from kdframe import plugins

    for name, _ in in_process_plugins():
        if name not in before:
            plugins.unregister_in_process(name)


def notebook_cells() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / "python-api.md").read_text(), re.S)


def test_the_notebook_in_the_docs_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    cells = notebook_cells()
    assert len(cells) >= 5
    for number, cell in enumerate(cells, 1):
        exec(compile(cell, f"docs/python-api.md cell {number}", "exec"), namespace)  # noqa: S102 - our own docs
    printed = capsys.readouterr().out
    run = namespace["run"]
    assert run.folder == Path("runs/notebook-demo") and (tmp_path / "runs/notebook-demo/results.json").is_file()
    assert [stage.stage for stage in run.stages] == ["teacher", "student"]
    assert run.final.stage == "student" and run.final.arch == "tiny_mlp" and run.final.selected_by == "val"
    assert run.final.best_test_acc > 50.0  # three classes: chance is 33 %
    assert namespace["accuracy"] == pytest.approx(run.final.best_test_acc, abs=1e-3)  # best.pt is the best epoch's
    assert "stage" in printed and "student" in printed and "recomputed test accuracy" in printed
    assert "training.epochs" in printed  # the deliberate mistake's message names the key


def test_every_function_of_the_api_is_in_the_docs_and_exported() -> None:
    from kdframe import api

    page = (DOCS / "python-api.md").read_text()
    for name in api.__all__:
        assert f"`kdframe.{name}" in page or f"**`{name}`**" in page or f"`{name}`" in page, name
        assert name in kdframe.__all__ and getattr(kdframe, name) is getattr(api, name)


def test_import_kdframe_does_not_load_torch() -> None:
    code = "import sys, kdframe, kdframe.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def direct_tiny(**changes) -> dict:
    schedule = tiny_schedule(**{"logging.loggers": [], "compression.enabled": False, "training.epochs": 1, **changes})
    schedule["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    return schedule


def test_a_schedule_runs_as_a_dict_a_schedule_object_or_a_file(tmp_path: Path) -> None:
    schedule = direct_tiny()
    from_dict = kdframe.run(schedule, out=tmp_path / "dict")
    from_object = kdframe.run(kdframe.validate(schedule), out=tmp_path / "object")
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(schedule))
    from_file = kdframe.run(path, out=tmp_path / "file", overrides=["name=renamed"])
    accuracies = {run.final.final_test_acc for run in (from_dict, from_object, from_file)}
    assert len(accuracies) == 1  # the same schedule, the same result, however it was given
    assert json.loads((tmp_path / "file" / "schedule.json").read_text())["name"] == "renamed"
    assert str(from_dict).startswith(f"Run folder: {tmp_path / 'dict'}")
    loaded = kdframe.load_run(tmp_path / "dict")
    assert [stage.to_dict() for stage in loaded.stages] == [stage.to_dict() for stage in from_dict.stages]
    model = kdframe.load_model(tmp_path / "dict")
    assert isinstance(model, torch.nn.Module) and not model.training
    # The curves' numbers, by stage: the final student's by default.
    assert loaded.history() == from_dict.history() == from_dict.history(from_dict.final.stage)
    assert [row["epoch"] for row in loaded.history()] == [1.0]  # one epoch
    with pytest.raises(kdframe.KdframeError, match="has no stage 'techer'"):
        loaded.history("techer")


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"name": "x", "training": {"epochs": float("nan")}}, "at .training.epochs. is nan, not a finite number"),
        ({"name": "x", "models": {"s": object()}}, "at .models.s. is a object, which is not a JSON value"),
        (["not", "a", "dict"], "A schedule is a dict"),
    ],
)
def test_what_json_could_not_hold_is_refused(tmp_path: Path, schedule, expected: str) -> None:
    with pytest.raises(ScheduleError, match=expected):
        kdframe.run(schedule, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_run_folder_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="does not exist"):
        kdframe.load_model(tmp_path / "nowhere")
    with pytest.raises(RunFolderError, match="does not exist"):
        kdframe.load_run(tmp_path / "nowhere")


def test_registering_again_replaces_and_unregister_removes() -> None:
    def first(params, data):
        return torch.nn.Linear(1, 1)

    def second(params, data):
        return torch.nn.Linear(2, 2)

    kdframe.register(kdframe.ModelSpec(name="cell_model", summary="one", factory=first))
    kdframe.register(kdframe.ModelSpec(name="cell_model", summary="two", factory=second))  # the cell, run again
    spec = create_plugins().registry.spec("model", "cell_model")
    assert spec.summary == "two" and spec.factory is second
    kdframe.unregister(kdframe.ModelSpec(name="cell_model", summary="", factory=second))
    assert "cell_model" not in [c.name for c in create_plugins().registry.iter("model")]


def test_a_plugin_object_registers_its_hooks_and_anything_else_is_refused() -> None:
    class Plugin:
        @kdframe.hookimpl
        def kdframe_register_models(self):
            return [kdframe.ModelSpec(name="from_object", summary="s", factory=lambda params, data: torch.nn.Identity())]

    plugin = Plugin()
    kdframe.register(plugin)
    assert "from_object" in [c.name for c in create_plugins().registry.iter("model")]
    kdframe.unregister(plugin)
    assert "from_object" not in [c.name for c in create_plugins().registry.iter("model")]
    with pytest.raises(ScheduleError, match="component specs .* or plugin objects"):
        kdframe.register("mlp")
