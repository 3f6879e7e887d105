"""Optimizers and LR schedules as components: the first-party ones, the schedule forms they accept,
parameter groups, and an optimizer and LR schedule registered by a plugin defined here."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from pydantic import Field

from kdframe import LRSchedule, LRScheduleSpec, OptimizerSpec, Params, ScheduleError, TrainingError, hookimpl
from kdframe.json_schema import first_party_registry
from kdframe.optim import stage_optimizer
from kdframe.plugins import create_plugins
from kdframe.runner import RESULTS_FILE, execute, load_schedule, prepare
from kdframe.schedule import Training, parse_schedule, validate_components
from tests.conftest import tiny_schedule, write_schedule


@pytest.fixture(scope="module")
def registry():
    return first_party_registry()


def factors(registry, lr_schedule: dict[str, Any], steps: list[int], steps_per_epoch: int, epochs: int) -> list[float]:
    training = Training.model_validate({"epochs": epochs, "lr_schedule": lr_schedule})
    optimizer = stage_optimizer(training, registry, "training")
    return [optimizer.factor(step, steps_per_epoch, epochs) for step in steps]


def test_warmup_then_cosine(registry) -> None:
    values = factors(registry, {"warmup_epochs": 1, "warmup_start_factor": 0.1}, [0, 5, 10, 30, 50], 10, 5)
    assert values == pytest.approx([0.1, 0.55, 1.0, 0.5, 0.0], abs=1e-9)


def test_step_and_constant(registry) -> None:
    step = {"name": "step", "warmup_epochs": 0, "params": {"milestones": [2, 4], "gamma": 0.1}}
    assert factors(registry, step, [19, 20, 45], 10, 6) == pytest.approx([1.0, 0.1, 0.01])
    assert factors(registry, {"name": "constant", "warmup_epochs": 0}, [99], 10, 6) == [1.0]


def test_flat_and_nested_forms_are_the_same_schedule(registry) -> None:
    flat = parse_schedule(tiny_schedule(**{"training.optimizer": {"name": "adam", "lr": 0.01}, "training.lr_schedule": {"name": "step", "milestones": [3]}}))
    nested = parse_schedule(
        tiny_schedule(**{"training.optimizer": {"name": "adam", "params": {"lr": 0.01}}, "training.lr_schedule": {"name": "step", "params": {"milestones": [3]}}})
    )
    assert flat.training == nested.training
    assert nested.training.optimizer.params == {"lr": 0.01} and nested.training.lr_schedule.params == {"milestones": [3]}
    # '--set training.optimizer.lr=0.2' on the default optimizer
    assert parse_schedule(tiny_schedule(**{"training.optimizer": {"lr": 0.2}})).training.optimizer.params == {"lr": 0.2}


def test_a_resolved_schedule_of_the_fixed_configs_still_validates(registry) -> None:
    legacy = {
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005, "nesterov": True},
        "lr_schedule": {"name": "cosine", "warmup_epochs": 1.0, "warmup_start_factor": 0.1, "milestones": [], "gamma": 0.1, "min_lr_factor": 0.0},
    }
    schedule = parse_schedule(tiny_schedule(**{f"training.{key}": value for key, value in legacy.items()}))
    validate_components(schedule, registry)
    assert schedule.training.lr_schedule.params == {}
    # A key the named schedule does not have, set to something other than its old default, is an error.
    bad = parse_schedule(tiny_schedule(**{"training.lr_schedule": {"name": "cosine", "milestones": [5]}}))
    with pytest.raises(ScheduleError, match=r"training\.lr_schedule\.milestones: unknown key"):
        validate_components(bad, registry)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"training.optimizer": {"name": "lamb"}}, r"training\.optimizer\.name: Unknown optimizer 'lamb'.*Available optimizers: adam, adamw, sgd"),
        ({"training.optimizer": {"name": "sgd", "momentun": 0.9}}, r"training\.optimizer\.momentun: unknown key.*momentum"),
        ({"training.lr_schedule": {"name": "cosinus"}}, r"Unknown lr schedule 'cosinus'. Did you mean 'cosine'"),
        ({"training.stages": {"teacher": {"optimizer": {"lr": -1}}}}, r"training\.stages\.teacher\.optimizer\.lr: .*greater than 0"),
        ({"training.optimizer.param_groups": [{"params": "loss.*", "momentun": 0.5}]}, r"param_groups\[0\]: momentun is not a param of optimizer 'sgd'"),
        ({"training.optimizer.param_groups": [{"params": "loss.*", "lr": 0}]}, r"param_groups\[0\]\.lr: .*greater than 0"),
        ({"training.optimizer.param_groups": [{"params": "loss.*"}]}, r"param_groups\[0\]: the group sets nothing"),
    ],
)
def test_bad_optimizer_settings_are_explained(registry, changes, message) -> None:
    with pytest.raises(ScheduleError, match=message):
        validate_components(parse_schedule(tiny_schedule(**changes)), registry)


def test_a_stage_override_naming_another_optimizer_replaces_the_params() -> None:
    training = parse_schedule(
        tiny_schedule(**{"training.optimizer": {"name": "sgd", "momentum": 0.5}, "training.stages": {"teacher": {"optimizer": {"name": "adam"}}}})
    ).training
    assert training.for_stage("teacher").optimizer.params == {}
    assert training.for_stage("student").optimizer.params == {"momentum": 0.5}


def _run(tmp_path, schedule: dict[str, Any], *plugins):
    path = write_schedule(tmp_path, {**schedule, "logging": {"loggers": []}})
    loaded, plugins_, resolved = load_schedule(path, plugins=create_plugins(plugins=list(plugins)))
    experiment = prepare(loaded, plugins_, resolved)
    out = tmp_path / "run"
    out.mkdir()
    execute(experiment, out, quiet=True)
    return experiment, json.loads((out / RESULTS_FILE).read_text())


def test_param_groups_give_the_loss_terms_adapters_their_own_lr(tmp_path) -> None:
    schedule = tiny_schedule(
        **{
            "training.epochs": 1,
            "training.lr_schedule": {"name": "constant", "warmup_epochs": 0},
            "training.optimizer": {"name": "sgd", "lr": 0.01, "param_groups": [{"params": "loss.*", "lr": 0.3, "weight_decay": 0.0}]},
            "curriculum": {"name": "direct", "params": {"teacher": "teacher", "student": "student"}},
            "models.teacher.checkpoint": None,
            "distill.losses": [{"name": "cross_entropy"}, {"name": "fitnet", "params": {"layers": [{"student": "features.0", "teacher": "features.0"}]}}],
        }
    )
    seen: dict[str, list[tuple[float, float, int]]] = {}
    original = torch.optim.SGD.__init__

    def recording(self, params, **kwargs):
        original(self, params, **kwargs)
        seen[str(len(seen))] = [(g["lr"], g["weight_decay"], len(g["params"])) for g in self.param_groups]

    torch.optim.SGD.__init__ = recording
    try:
        experiment, results = _run(tmp_path, schedule)
    finally:
        torch.optim.SGD.__init__ = original
    student_stage = [groups for groups in seen.values() if len(groups) == 2]
    assert student_stage, seen
    (default_lr, default_wd, _), (adapter_lr, adapter_wd, adapter_count) = student_stage[-1]
    assert (default_lr, default_wd, adapter_lr, adapter_wd) == (0.01, 5e-4, 0.3, 0.0)
    assert adapter_count == len(list(experiment.setups[-1].terms[1].term.parameters()))
    assert results["finished"] is True


def test_a_param_group_matching_nothing_fails_in_validate(tmp_path) -> None:
    schedule = tiny_schedule(**{"training.optimizer": {"param_groups": [{"params": "loss.fitnet.*", "lr": 0.3}]}})
    path = write_schedule(tmp_path, {**schedule, "logging": {"loggers": []}})
    loaded, plugins, resolved = load_schedule(path)
    with pytest.raises(TrainingError, match=r"pattern\(s\) 'loss.fitnet.\*' match no parameter that any stage trains.*student\.features"):
        prepare(loaded, plugins, resolved)


# --- an optimizer and an LR schedule from a plugin defined here -----------------------------------


class SignSGDParams(Params):
    lr: float = Field(0.01, gt=0, description="Step size.")


class SignSGD(torch.optim.Optimizer):
    """Steps every parameter by ``lr`` against the sign of its gradient."""

    lrs: list[float] = []

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        SignSGD.lrs.append(self.param_groups[0]["lr"])
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    parameter.add_(parameter.grad.sign(), alpha=-group["lr"])


class HalvingParams(Params):
    every: int = Field(1, ge=1, description="Epochs between halvings.")


class Halving(LRSchedule):
    def __init__(self, params: HalvingParams) -> None:
        self.every = params.every

    def factor(self, step: int, steps_per_epoch: int, epochs: int, warmup_steps: int) -> float:
        return 0.5 ** (step // steps_per_epoch // self.every)


class OptimPlugin:
    @hookimpl
    def kdframe_register_optimizers(self):
        return [
            OptimizerSpec(
                name="sign_sgd",
                summary="signSGD (Bernstein et al., ICML 2018)",
                factory=lambda params, groups: SignSGD(groups, lr=params.lr),
                params=SignSGDParams,
            )
        ]

    @hookimpl
    def kdframe_register_lr_schedules(self):
        return [LRScheduleSpec(name="halving", summary="Halve the LR every N epochs", factory=Halving, params=HalvingParams)]


def test_a_plugin_optimizer_and_lr_schedule_train_a_schedule(tmp_path) -> None:
    plugin = OptimPlugin()
    registry = create_plugins(plugins=[("optim-plugin", plugin)]).registry
    assert {"sign_sgd", "sgd"} <= set(registry.names("optimizer")) and "halving" in registry.names("lr_schedule")
    schedule = tiny_schedule(
        **{
            "training.epochs": 2,
            "training.optimizer": {"name": "sign_sgd", "lr": 0.002},
            "training.lr_schedule": {"name": "halving", "warmup_epochs": 0},
            "curriculum": {"name": "direct", "params": {"student": "student"}},
        }
    )
    SignSGD.lrs = []
    _, results = _run(tmp_path, schedule, ("optim-plugin", plugin))
    assert results["stages"][0]["epochs_run"] == 2
    per_epoch = 128 // 32
    # Every step went through the plugin's optimizer, at the plugin's schedule's LR.
    assert SignSGD.lrs == pytest.approx([0.002] * per_epoch + [0.001] * per_epoch)
    resolved = json.loads((tmp_path / "run" / "schedule.json").read_text())
    assert resolved["training"]["optimizer"] == {"name": "sign_sgd", "lr": 0.002, "param_groups": []}
    assert resolved["training"]["lr_schedule"] == {"name": "halving", "every": 1, "warmup_epochs": 0.0, "warmup_start_factor": 0.1}


def test_kdframe_schema_and_plugins_list_the_optimizers_and_lr_schedules(registry) -> None:
    from kdframe.json_schema import schedule_schema

    schema = schedule_schema(registry)
    optimizer = schema["$defs"]["OptimizerConfig"]
    assert optimizer["properties"]["name"]["enum"] == ["adam", "adamw", "sgd"]
    sgd = next(branch["then"] for branch in optimizer["allOf"] if branch["if"]["properties"]["name"]["const"] == "sgd")
    assert set(sgd["properties"]) == {"lr", "momentum", "weight_decay", "nesterov"}  # beside the name
    lr_schedule = schema["$defs"]["LRScheduleConfig"]
    assert lr_schedule["properties"]["name"]["enum"] == ["constant", "cosine", "step"]
    assert [c.name for c in registry.iter("optimizer")] == ["adam", "adamw", "sgd"]
    assert all(c.provider.plugin == "kdframe_optim" for c in registry.iter("lr_schedule"))
