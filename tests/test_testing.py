"""kdframe.testing, the pytest plugin for plugin authors: fixtures, helpers and contract checks."""

from __future__ import annotations

import importlib.metadata
import inspect
import json

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import kdframe.testing
import tests.conftest
from kdframe import (
    Curriculum,
    CurriculumSpec,
    DataInfo,
    LossSpec,
    LossTerm,
    ModelSpec,
    Params,
    StagePlan,
    hookimpl,
    hookspecs,
)
from kdframe.plugins import create_plugins
from kdframe.schedule import parse_schedule, validate_components
from kdframe.testing import (
    HookRecorder,
    check_curriculum_contract,
    check_loss_contract,
    check_model_contract,
    make_plugins,
    tiny_schedule,
    write_schedule,
)

pytest_plugins = ["pytester"]

DATA = DataInfo(name="test", num_classes=4, in_channels=1, image_size=(16, 16))


# --- the plugin and the shared helpers ---------------------------------------------------------------


def test_pytest_loads_the_module_through_its_entry_point(request) -> None:
    entry_points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert entry_points["kdframe"] == "kdframe.testing"
    assert request.config.pluginmanager.get_plugin("kdframe") is kdframe.testing


def test_tests_conftest_re_exports_instead_of_duplicating() -> None:
    for name in ("HookRecorder", "tiny_schedule", "write_schedule"):
        assert getattr(tests.conftest, name) is getattr(kdframe.testing, name)


def test_fixtures_work_in_a_fresh_test_file(pytester) -> None:
    pytester.makepyfile(
        """
        def test_plugins(kdframe_plugins, kdframe_recorder):
            plugins = kdframe_plugins(kdframe_recorder)
            assert "synthetic" in plugins.registry.names("dataset")
            assert plugins.pm.get_plugin("HookRecorder-0") is kdframe_recorder

        def test_isolated(kdframe_plugins):
            assert kdframe_plugins().pm.get_plugin("HookRecorder-0") is None
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_tiny_schedule_is_valid_and_takes_dotted_overrides() -> None:
    schedule = tiny_schedule(**{"training.epochs": 1, "models.student.params": {"depth": 4}, "seed": 7})
    assert schedule["training"] == {"epochs": 1, "lr_schedule": {"warmup_epochs": 0.5}}
    assert schedule["models"]["student"]["params"] == {"depth": 4} and schedule["seed"] == 7
    parsed = parse_schedule(schedule)
    validate_components(parsed, create_plugins().registry)
    assert tiny_schedule() == tiny_schedule()  # a fresh dict each time, never shared
    assert tiny_schedule() is not tiny_schedule()


def test_write_schedule_round_trips(tmp_path) -> None:
    path = write_schedule(tmp_path, tiny_schedule(), name="s.json")
    assert path == tmp_path / "s.json"
    assert json.loads(path.read_text()) == tiny_schedule()


def test_hook_recorder_implements_every_trainer_event_with_the_hooks_signatures() -> None:
    events = {name for name in vars(hookspecs) if name.startswith("kdframe_on_")}
    recorded = {name for name in vars(HookRecorder) if name.startswith("kdframe_on_")}
    assert events == recorded
    for name in events:
        spec_args = list(inspect.signature(getattr(hookspecs, name)).parameters)
        impl_args = list(inspect.signature(getattr(HookRecorder, name)).parameters)[1:]
        assert impl_args == spec_args, name


# --- fixtures ------------------------------------------------------------------------------------


class _ScaledLogits(Params):
    scale: float = Field(1.0, description="Multiplier.")


class _MeanLogits(LossTerm):
    """The mean of the student's logits, times a scale."""

    needs_teacher = False

    def __init__(self, params: _ScaledLogits) -> None:
        super().__init__()
        self.scale = params.scale

    def forward(self, outputs):
        return self.scale * outputs.student.logits.mean()


class _LossPlugin:
    @hookimpl
    def kdframe_register_losses(self):
        return [
            LossSpec(name="mean_logits", summary="Mean logit.", factory=_MeanLogits, params=_ScaledLogits, reference="-")
        ]


def test_kdframe_plugins_registers_for_one_call_only(kdframe_plugins) -> None:
    with_plugin = kdframe_plugins(_LossPlugin())
    assert with_plugin.registry.get("loss", "mean_logits").provider.plugin == "_LossPlugin-0"
    assert "hinton_kd" in with_plugin.registry.names("loss")  # the installed plugins too
    assert "mean_logits" not in kdframe_plugins().registry.names("loss")
    alone = kdframe_plugins(("mine", _LossPlugin()), load_entry_points=False)
    assert alone.registry.names("loss") == ["mean_logits"]
    assert alone.registry.get("loss", "mean_logits").provider.plugin == "mine"
    blocked = kdframe_plugins(blocked=["kdframe_losses"])
    assert "hinton_kd" not in blocked.registry.names("loss")


def test_kdframe_run_runs_in_tmp_path_with_the_given_plugins(kdframe_run, kdframe_recorder, tmp_path) -> None:
    schedule = tiny_schedule(**{"training.epochs": 1, "logging.loggers": [], "curriculum.name": "direct",
                                "curriculum.params": {"teacher": "assistant", "student": "student"}})
    folder, results = kdframe_run(schedule, kdframe_recorder)
    assert folder == tmp_path / "run-1" / "run" and (folder / "results.json").is_file()
    assert [result.stage for result in results] == ["assistant", "student"]
    assert kdframe_recorder.events(batches=False) == [
        "run_start",
        "stage_start", "epoch_start", "eval_end", "epoch_end", "stage_end",
        "stage_start", "epoch_start", "eval_end", "epoch_end", "stage_end",
        "run_end",
    ]
    assert kdframe_recorder.events().count("batch_end") == 2 * (128 // 32)
    assert [d["stage"] for d in kdframe_recorder.details("stage_end")] == ["assistant", "student"]
    second, _ = kdframe_run(tiny_schedule(**{"training.epochs": 1, "curriculum.name": "direct",
                                             "curriculum.params": {"student": "student"}}))
    assert second == tmp_path / "run-2" / "run"


# --- the loss contract ---------------------------------------------------------------------------


def test_loss_contract_passes_for_a_first_party_loss() -> None:
    check_loss_contract(create_plugins().registry.spec("loss", "hinton_kd"))


def _loss_spec(term: type[LossTerm], params: type[BaseModel] = _ScaledLogits, **changes) -> LossSpec:
    fields = {"name": "probe", "summary": "A probe.", "factory": term, "params": params, "reference": "none", **changes}
    return LossSpec(**fields)


class _NaNLoss(_MeanLogits):
    """Not a number."""

    def forward(self, outputs):
        return outputs.student.logits.sum() * float("nan")


class _DetachedLoss(_MeanLogits):
    """No gradient reaches the student."""

    def forward(self, outputs):
        return outputs.student.logits.detach().mean() + torch.zeros((), requires_grad=True)


class _Undescribed(Params):
    scale: float = 1.0


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")
    scale: float = Field(1.0, description="Multiplier.")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (_loss_spec(_MeanLogits), None),
        (_loss_spec(_NaNLoss), "not a finite scalar"),
        (_loss_spec(_DetachedLoss), "no gradient reaches the student"),
        (_loss_spec(_MeanLogits, _Undescribed), "param 'scale' has no description"),
        (_loss_spec(_MeanLogits, _Lenient), "must forbid unknown fields"),
        (_loss_spec(_MeanLogits, reference=""), "names no reference"),
        (_loss_spec(_MeanLogits, example={"scale": "big"}), "do not validate"),
        (_loss_spec(_MeanLogits, summary="x" * 200), "over 160 characters"),
    ],
    ids=["good", "nan", "detached", "undescribed", "lenient", "no reference", "bad example", "long summary"],
)
def test_loss_contract_names_what_is_wrong(spec, message) -> None:
    if message is None:
        check_loss_contract(spec)
    else:
        with pytest.raises(AssertionError, match=message):
            check_loss_contract(spec)


# --- the model contract --------------------------------------------------------------------------


def test_model_contract_returns_the_shapes_of_named_layers() -> None:
    spec = create_plugins().registry.spec("model", "plain_cnn")
    shapes = check_model_contract(spec, {"depth": 2}, DATA, layers=["features.0", "flatten"], batch=3)
    assert shapes == {"features.0": (3, 16, 16, 16), "flatten": (3, 16 * 4 * 4), "logits": (3, 4)}


class _WrongHead(nn.Module):
    """Ten logits whatever the data says."""

    def __init__(self, params, data_info) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.head = nn.Linear(data_info.in_channels * 16 * 16, 10)

    def forward(self, images):
        return self.head(self.flatten(images))


def test_model_contract_catches_a_wrong_output_and_unknown_layers() -> None:
    spec = ModelSpec(name="wrong", summary="A wrong head.", factory=_WrongHead)
    with pytest.raises(AssertionError, match=r"shape \(2, 10\), expected \(2, 4\)"):
        check_model_contract(spec, {}, DATA)
    plain = create_plugins().registry.spec("model", "plain_cnn")
    with pytest.raises(AssertionError, match="features.0"):
        check_model_contract(plain, {"depth": 2}, DATA, layers=["feature.0"])


# --- the curriculum contract ---------------------------------------------------------------------


def test_curriculum_contract_returns_the_checked_plan() -> None:
    spec = create_plugins().registry.spec("curriculum", "ta_chain")
    schedule = tiny_schedule()
    stages = check_curriculum_contract(spec, schedule["curriculum"]["params"], schedule)
    assert [(s.student, s.teachers) for s in stages] == [
        ("teacher", ()), ("assistant", ("teacher",)), ("student", ("assistant",))
    ]


class _TwiceParams(Params):
    rotate: bool = Field(False, description="Plan the models in an order that changes with every call.")


class _Twice(Curriculum):
    """Trains the student twice, or every model in a rotating order."""

    def __init__(self, params: _TwiceParams) -> None:
        self.rotate = params.rotate
        self.calls = 0

    def plan(self, schedule):
        losses = tuple(schedule.distill.scratch_losses)
        if self.rotate:
            self.calls += 1
            names = list(schedule.models)
            names = names[self.calls % len(names):] + names[: self.calls % len(names)]
            return [StagePlan(student=name, teachers=(), losses=losses) for name in names]
        stage = StagePlan(student="student", teachers=(), losses=losses)
        return [stage, stage]


def test_curriculum_contract_catches_bad_and_unstable_plans() -> None:
    spec = CurriculumSpec(name="twice", summary="Twice.", factory=_Twice, params=_TwiceParams)
    with pytest.raises(AssertionError, match="already trained by an earlier stage"):
        check_curriculum_contract(spec, {}, tiny_schedule())
    with pytest.raises(AssertionError, match="different stages on a second call"):
        check_curriculum_contract(spec, {"rotate": True}, tiny_schedule())


def test_make_plugins_is_what_the_fixture_returns(kdframe_plugins) -> None:
    assert kdframe_plugins is make_plugins
