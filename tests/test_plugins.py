"""The plugin-manager factory: entry points (faked distributions), provenance, duplicates, bad hooks."""

from __future__ import annotations

import importlib.metadata
import json
import sys
import textwrap
from pathlib import Path

import pytest

from kdframe import hookimpl
from kdframe.errors import ComponentError, PluginError
from kdframe.plugins import create_plugins
from kdframe.runner import run_schedule
from tests.conftest import tiny_schedule, write_schedule


class FakeDistribution(importlib.metadata.Distribution):
    """A distribution with a name, a version and entry points, and no files."""

    def __init__(self, name: str, version: str, entry_points: dict[str, str]) -> None:
        self._name = name
        self._version = version
        self._entry_points = entry_points

    def read_text(self, filename: str) -> str | None:
        if filename == "METADATA":
            return f"Metadata-Version: 2.1\nName: {self._name}\nVersion: {self._version}\n"
        if filename == "entry_points.txt":
            lines = "\n".join(f"{key} = {value}" for key, value in self._entry_points.items())
            return f"[kdframe]\n{lines}\n"
        return None

    def locate_file(self, path):  # pragma: no cover - unused
        return Path(path)


LOSS_PLUGIN = """
from pydantic import Field
from kdframe import LossSpec, LossTerm, Params, hookimpl

class ZeroParams(Params):
    scale: float = Field(1.0, description="unused")

class Zero(LossTerm):
    needs_teacher = False
    def __init__(self, params):
        super().__init__()
    def forward(self, outputs):
        return outputs.student.logits.sum() * 0

@hookimpl
def kdframe_register_losses():
    return [LossSpec(name="{name}", summary="zero", factory=Zero, params=ZeroParams, family="label")]
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [module for module in sys.modules if module.startswith("fake_kd_")]:
        del sys.modules[name]


def write_module(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


def test_entry_points_are_loaded_with_provenance(plugin_dir) -> None:
    write_module(plugin_dir, "fake_kd_zero", LOSS_PLUGIN.replace("{name}", "zero"))
    dist = FakeDistribution("kd-zero", "1.2.3", {"zero_plugin": "fake_kd_zero"})
    plugins = create_plugins(distributions=[dist])
    component = plugins.registry.get("loss", "zero")
    assert component.provider.distribution == "kd-zero"
    assert component.provider.version == "1.2.3"
    assert component.provider.module == "fake_kd_zero"
    assert component.provider.plugin == "zero_plugin"


def test_duplicate_component_names_name_both_providers(plugin_dir) -> None:
    write_module(plugin_dir, "fake_kd_a", LOSS_PLUGIN.replace("{name}", "same"))
    write_module(plugin_dir, "fake_kd_b", LOSS_PLUGIN.replace("{name}", "same"))
    dists = [
        FakeDistribution("kd-alpha", "1.0", {"alpha": "fake_kd_a"}),
        FakeDistribution("kd-beta", "2.0", {"beta": "fake_kd_b"}),
    ]
    with pytest.raises(ComponentError) as error:
        create_plugins(distributions=dists)
    assert "kd-alpha" in str(error.value) and "kd-beta" in str(error.value)
    assert "loss named 'same'" in str(error.value)


def test_blocking_a_plugin_skips_it(plugin_dir, monkeypatch) -> None:
    write_module(plugin_dir, "fake_kd_a", LOSS_PLUGIN.replace("{name}", "same"))
    write_module(plugin_dir, "fake_kd_b", LOSS_PLUGIN.replace("{name}", "same"))
    dists = [
        FakeDistribution("kd-alpha", "1.0", {"alpha": "fake_kd_a"}),
        FakeDistribution("kd-beta", "2.0", {"beta": "fake_kd_b"}),
    ]
    monkeypatch.setenv("KDFRAME_BLOCK_PLUGINS", "beta")
    plugins = create_plugins(distributions=dists)
    assert plugins.registry.get("loss", "same").provider.distribution == "kd-alpha"


def test_import_error_names_plugin_and_distribution(plugin_dir) -> None:
    write_module(plugin_dir, "fake_kd_broken", "import does_not_exist_anywhere\n")
    dist = FakeDistribution("kd-broken", "0.1", {"broken": "fake_kd_broken"})
    with pytest.raises(PluginError) as error:
        create_plugins(distributions=[dist])
    message = str(error.value)
    assert "broken" in message and "kd-broken" in message and "ModuleNotFoundError" in message


def test_misspelt_hook_is_an_error(plugin_dir) -> None:
    write_module(
        plugin_dir,
        "fake_kd_typo",
        """
        from kdframe import hookimpl

        @hookimpl
        def kdframe_on_epoch_ned(state):
            pass
        """,
    )
    dist = FakeDistribution("kd-typo", "0.1", {"typo": "fake_kd_typo"})
    with pytest.raises(PluginError, match="kdframe_on_epoch_ned"):
        create_plugins(distributions=[dist])


def test_params_model_must_forbid_unknown_fields(plugin_dir) -> None:
    write_module(
        plugin_dir,
        "fake_kd_lax",
        """
        from pydantic import BaseModel
        from kdframe import LossSpec, hookimpl

        class Lax(BaseModel):
            x: int = 1

        @hookimpl
        def kdframe_register_losses():
            return [LossSpec(name="lax", summary="lax", factory=object, params=Lax)]
        """,
    )
    with pytest.raises(PluginError, match="allows unknown fields"):
        create_plugins(distributions=[FakeDistribution("kd-lax", "0.1", {"lax": "fake_kd_lax"})])


def test_autoload_can_be_disabled(monkeypatch) -> None:
    monkeypatch.setenv("KDFRAME_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = create_plugins()
    assert plugins.registry.names("loss") == []


def test_first_party_plugins_come_from_entry_points() -> None:
    plugins = create_plugins()
    for kind, name in [
        ("loss", "hinton_kd"),
        ("model", "plain_cnn"),
        ("curriculum", "ta_chain"),
        ("dataset", "fashion_mnist"),
        ("logger", "tensorboard"),
    ]:
        component = plugins.registry.get(kind, name)
        assert component.provider.distribution == "kdframe"
        assert component.provider.plugin.startswith("kdframe_")


def test_each_call_builds_a_fresh_manager() -> None:
    assert create_plugins().pm is not create_plugins().pm


def two_zero_plugins(plugin_dir: Path) -> list[FakeDistribution]:
    write_module(plugin_dir, "fake_kd_one", LOSS_PLUGIN.replace("{name}", "zero_one"))
    write_module(plugin_dir, "fake_kd_two", LOSS_PLUGIN.replace("{name}", "zero_two"))
    return [
        FakeDistribution("kd-one", "1.0", {"kd_one": "fake_kd_one"}),
        FakeDistribution("kd-two", "1.0", {"kd_two": "fake_kd_two"}),
    ]


def test_allow_list_loads_only_matching_plugins(plugin_dir, monkeypatch) -> None:
    dists = two_zero_plugins(plugin_dir)
    assert create_plugins(distributions=dists, allowed=["kd_one"]).registry.names("loss") == ["zero_one"]
    assert create_plugins(distributions=dists, allowed=["kd_*"]).registry.names("loss") == ["zero_one", "zero_two"]
    monkeypatch.setenv("KDFRAME_ALLOW_PLUGINS", "kd_two")
    assert create_plugins(distributions=dists).registry.names("loss") == ["zero_two"]
    # Both the environment and the argument must allow a plugin.
    assert create_plugins(distributions=dists, allowed=["kd_*"]).registry.names("loss") == ["zero_two"]


def test_allow_list_naming_an_absent_plugin_is_an_error(plugin_dir) -> None:
    with pytest.raises(PluginError) as error:
        create_plugins(distributions=two_zero_plugins(plugin_dir), allowed=["kd_tow"])
    message = str(error.value)
    assert "'kd_tow'" in message and "Did you mean 'kd_two'" in message and "kd_one, kd_two" in message


def test_block_list_takes_wildcards(plugin_dir) -> None:
    plugins = create_plugins(distributions=two_zero_plugins(plugin_dir), blocked=["*_two"])
    assert plugins.registry.names("loss") == ["zero_one"]
    assert plugins.pm.is_blocked("kd_two")


BROKEN_PLUGINS = {
    "import": "import does_not_exist_anywhere\n",
    "unknown hook": """
        from kdframe import hookimpl

        @hookimpl
        def kdframe_on_epoch_ned(state):
            pass
        """,
    "wrong signature": """
        from kdframe import hookimpl

        @hookimpl
        def kdframe_on_epoch_end(run, stage, state, control, trainer):
            pass
        """,
    "failing registration": """
        from kdframe import hookimpl

        @hookimpl
        def kdframe_register_models():
            raise RuntimeError("no GPU driver")
        """,
    "other API": LOSS_PLUGIN.replace("{name}", "zero_api") + "\nKDFRAME_PLUGIN_API = 99\n",
}


@pytest.mark.parametrize("kind", BROKEN_PLUGINS)
def test_a_broken_plugin_is_an_error_naming_it_or_skipped_on_request(plugin_dir, monkeypatch, kind) -> None:
    write_module(plugin_dir, "fake_kd_bad", BROKEN_PLUGINS[kind])
    write_module(plugin_dir, "fake_kd_good", LOSS_PLUGIN.replace("{name}", "zero_good"))
    dists = [
        FakeDistribution("kd-bad", "0.3", {"bad": "fake_kd_bad"}),
        FakeDistribution("kd-good", "1.0", {"good": "fake_kd_good"}),
    ]
    with pytest.raises(PluginError) as error:
        create_plugins(distributions=dists)
    assert "plugin 'bad' (distribution kd-bad 0.3)" in str(error.value)

    with pytest.warns(UserWarning, match=r"Skipping a broken plugin: plugin 'bad' \(distribution kd-bad 0.3\)"):
        plugins = create_plugins(distributions=dists, skip_broken=True)
    assert plugins.registry.names("loss") == ["zero_good"]
    assert "bad" not in plugins.providers and plugins.pm.get_plugin("bad") is None

    monkeypatch.setenv("KDFRAME_SKIP_BROKEN_PLUGINS", "1")
    with pytest.warns(UserWarning, match="Skipping a broken plugin"):
        assert create_plugins(distributions=dists).registry.names("loss") == ["zero_good"]


def test_unknown_hook_error_suggests_the_right_name(plugin_dir) -> None:
    write_module(plugin_dir, "fake_kd_typo2", BROKEN_PLUGINS["unknown hook"])
    with pytest.raises(PluginError) as error:
        create_plugins(distributions=[FakeDistribution("kd-typo", "0.1", {"typo": "fake_kd_typo2"})])
    assert "Did you mean 'kdframe_on_epoch_end'" in str(error.value)


def test_plugin_api_major_version_is_checked(plugin_dir) -> None:
    from kdframe.plugins import api_major

    write_module(plugin_dir, "fake_kd_api", LOSS_PLUGIN.replace("{name}", "zero_api") + f"\nKDFRAME_PLUGIN_API = {api_major()}\n")
    plugins = create_plugins(distributions=[FakeDistribution("kd-api", "1.0", {"api": "fake_kd_api"})])
    assert plugins.registry.names("loss") == ["zero_api"]
    write_module(plugin_dir, "fake_kd_api_old", LOSS_PLUGIN.replace("{name}", "zero_old") + "\nKDFRAME_PLUGIN_API = 0\n")
    with pytest.raises(PluginError, match=r"written for kdframe plugin API 0.*provides API"):
        create_plugins(distributions=[FakeDistribution("kd-old", "1.0", {"old": "fake_kd_api_old"})])


class FailsInSecondStage:
    """Raises at the end of the first epoch of the run's second stage."""

    @hookimpl
    def kdframe_on_epoch_end(self, run, stage, state, control) -> None:
        if stage.index == 1:
            raise ValueError("logger backend went away")


def test_an_error_in_an_event_hook_names_the_plugin_and_keeps_finished_stages(tmp_path) -> None:
    plugins = create_plugins(plugins=[("flaky_logger", FailsInSecondStage())])
    path = write_schedule(tmp_path, tiny_schedule(**{"training.epochs": 1, "logging.loggers": []}))
    out = tmp_path / "run"
    with pytest.raises(PluginError) as error:
        run_schedule(path, out=out, quiet=True, plugins=plugins)
    message = str(error.value)
    assert "plugin 'flaky_logger'" in message and "kdframe_on_epoch_end" in message
    assert "ValueError: logger backend went away" in message and "KDFRAME_BLOCK_PLUGINS=flaky_logger" in message
    results = json.loads((out / "results.json").read_text())
    assert [row["stage"] for row in results["stages"]] == ["teacher"] and results["finished"] is False
    assert (out / results["stages"][0]["checkpoint"]).is_file()


class FailsAtStageStart:
    @hookimpl
    def kdframe_on_stage_start(self, run, stage, control) -> None:
        raise KeyError("boom")


def test_cli_reports_a_failing_plugin_in_one_paragraph(tmp_path, capsys, monkeypatch) -> None:
    from kdframe import cli, runner

    path = write_schedule(tmp_path, tiny_schedule(**{"training.epochs": 1, "logging.loggers": []}))
    monkeypatch.setattr(runner, "plugins_for", lambda selection: create_plugins(plugins=[("flaky", FailsAtStageStart())]))
    code = cli.main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "plugin 'flaky'" in err and "kdframe_on_stage_start" in err and "KeyError" in err


class EpochLogger:
    """A third-party logger: records each epoch's test accuracy into a list it was given."""

    def __init__(self, sink: list[float]) -> None:
        self.sink = sink

    @hookimpl
    def kdframe_on_epoch_end(self, state) -> None:
        self.sink.append(state.metrics["test/acc"])


class LoggerPlugin:
    def __init__(self) -> None:
        self.accuracies: list[float] = []

    @hookimpl
    def kdframe_register_loggers(self):
        from kdframe import LoggerSpec, NoParams

        return [LoggerSpec(name="epoch_list", summary="test", factory=lambda params, run_dir: EpochLogger(self.accuracies), params=NoParams)]


def test_a_registered_logger_is_built_for_the_run_and_receives_events(tmp_path) -> None:
    plugin = LoggerPlugin()
    plugins = create_plugins(plugins=[("epoch_list_plugin", plugin)])
    assert plugins.registry.get("logger", "epoch_list").provider.plugin == "epoch_list_plugin"
    path = write_schedule(tmp_path, tiny_schedule(**{"training.epochs": 1, "logging.loggers": [{"name": "epoch_list"}]}))
    _, results = run_schedule(path, out=tmp_path / "run", quiet=True, plugins=plugins)
    assert plugin.accuracies == [result.final_test_acc for result in results]
    # The per-run logger is unregistered after the run.
    assert all(not name.startswith("run-logger") for name, _ in plugins.pm.list_name_plugin())


class BrokenState:
    @hookimpl
    def kdframe_state_dict(self, stage):
        raise RuntimeError(f"cannot serialise {stage}")


def test_call_each_passes_only_declared_arguments_and_names_a_failing_plugin() -> None:
    class Saves:
        @hookimpl
        def kdframe_state_dict(self, stage):
            return {"stage": stage}

    plugins = create_plugins(load_entry_points=False, plugins=[("saves", Saves()), ("silent", FailsAtStageStart())])
    assert plugins.call_each("kdframe_state_dict", run="r", stage="s") == {"saves": {"stage": "s"}}
    broken = create_plugins(load_entry_points=False, plugins=[("broken_state", BrokenState())])
    with pytest.raises(PluginError, match=r"plugin 'broken_state'.*kdframe_state_dict: RuntimeError: cannot serialise s"):
        broken.call_each("kdframe_state_dict", run="r", stage="s")


# --- a plugin's bug is reported as the plugin's (issue 12, item 8) --------------------------------


class BuggyComponents:
    """A test plugin whose components fail in their own code, each in one place."""

    def __init__(self, fail_in: str) -> None:
        self.fail_in = fail_in

    @hookimpl
    def kdframe_register_losses(self):
        from kdframe import LossSpec, LossTerm, NoParams

        fail_in = self.fail_in

        class Buggy(LossTerm):
            needs_teacher = False

            def build(self, context) -> None:
                if fail_in == "build":
                    raise KeyError("adapter")

            def forward(self, outputs):
                if fail_in == "forward":
                    return outputs.student.logits.sum() / [][0]
                return outputs.student.logits.mean() * 0

        def factory(params):
            if fail_in == "factory":
                raise ZeroDivisionError("division by zero in the factory")
            return Buggy()

        return [LossSpec(name="buggy", summary="Fails on purpose.", factory=factory, params=NoParams, family="label")]

    @hookimpl
    def kdframe_register_curricula(self):
        from kdframe import Curriculum, CurriculumSpec, NoParams

        class Broken(Curriculum):
            def plan(self, schedule):
                raise AttributeError("'NoneType' object has no attribute 'stages'")

        return [CurriculumSpec(name="broken_plan", summary="Fails on purpose.", factory=lambda params: Broken(), params=NoParams)]


@pytest.mark.parametrize(
    ("fail_in", "curriculum", "expected"),
    [
        ("factory", "direct", r"Loss 'buggy' from plugin 'buggy_plugin' .* failed in its factory: ZeroDivisionError"),
        ("build", "direct", r"Loss 'buggy' from plugin 'buggy_plugin' .* failed in build\(\) in stage 'student': KeyError"),
        ("forward", "direct", r"Loss term 'buggy' from plugin 'buggy_plugin' .* failed in forward\(\): IndexError"),
        ("none", "broken_plan", r"Curriculum 'broken_plan' from plugin 'buggy_plugin' .* failed in plan\(\): AttributeError"),
    ],
)
def test_an_exception_in_a_components_own_code_names_its_plugin(tmp_path, fail_in, curriculum, expected) -> None:
    schedule = tiny_schedule(**{"logging.loggers": [], "training.epochs": 1})
    schedule["curriculum"] = {"name": curriculum, "params": {"student": "student"} if curriculum == "direct" else {}}
    schedule["distill"] = {"scratch_losses": [{"name": "cross_entropy"}, {"name": "buggy"}]}
    plugins = create_plugins(plugins=[("buggy_plugin", BuggyComponents(fail_in))])
    with pytest.raises(PluginError, match=expected) as error:
        run_schedule(write_schedule(tmp_path, schedule), out=tmp_path / "run", quiet=True, plugins=plugins)
    assert "bug in that plugin, not in kdframe" in str(error.value)


def test_validate_runs_a_dry_step_so_a_late_stages_broken_loss_fails_before_training(tmp_path) -> None:
    from kdframe.runner import load_schedule, prepare

    schedule = tiny_schedule(**{"logging.loggers": []})  # teacher -> assistant -> student
    schedule["distill"] = {"losses": [{"name": "hinton_kd"}, {"name": "buggy"}]}
    path = write_schedule(tmp_path, schedule)
    plugins = create_plugins(plugins=[("buggy_plugin", BuggyComponents("forward"))])
    loaded, plugins, resolved = load_schedule(path, plugins=plugins)
    with pytest.raises(PluginError, match=r"Loss term 'buggy' .* failed in forward\(\)"):
        prepare(loaded, plugins, resolved)  # what 'kdframe validate' and 'kdframe run' do first
    assert not (tmp_path / "run").exists()


def test_the_dry_step_changes_nothing_it_checks(tmp_path) -> None:
    import torch

    from kdframe import dry_step
    from kdframe.checkpoints import payload_digest
    from kdframe.runner import load_schedule, prepare

    schedule = tiny_schedule(**{"logging.loggers": []})
    schedule["distill"] = {
        "losses": [
            {"name": "hinton_kd"},
            {"name": "fitnet", "weight": 0.5, "params": {"layers": [{"student": "features.0", "teacher": "features.0"}]}},
            {"name": "crd", "weight": 0.8, "params": {"nce_k": 16, "layers": [{"student": "features.1", "teacher": "features.2"}]}},
        ]
    }
    loaded, plugins, resolved = load_schedule(write_schedule(tmp_path, schedule))
    experiment = prepare(loaded, plugins, resolved)
    setup = experiment.setups[-1]
    modules = [setup.student, *setup.teachers, *(w.term for w in setup.terms)]
    before = [payload_digest(module.state_dict()) for module in modules]  # every tensor and value
    modes = [module.training for module in modules]
    generator = torch.get_rng_state()
    dry_step.check_step(setup, experiment.data)
    assert [payload_digest(module.state_dict()) for module in modules] == before
    for module in modules:
        assert all(parameter.grad is None for parameter in module.parameters())
    assert [module.training for module in modules] == modes
    assert torch.equal(torch.get_rng_state(), generator)
