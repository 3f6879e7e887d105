"""Schedule parsing, overrides, error paths and component validation."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_schedule, write_schedule
from kdframe.errors import ScheduleError
from kdframe.plugins import create_plugins
from kdframe.schedule import (
    Training,
    apply_overrides,
    load_json,
    parse_schedule,
    resolved,
    validate_components,
)


def test_minimal_schedule_gets_documented_defaults() -> None:
    schedule = parse_schedule(tiny_schedule())
    assert schedule.device == "cpu"
    assert [(loss.name, loss.weight) for loss in schedule.distill.losses] == [("cross_entropy", 0.1), ("hinton_kd", 0.9)]
    assert schedule.distill.losses[1].params == {"temperature": 4.0}
    assert [loss.name for loss in schedule.distill.scratch_losses] == ["cross_entropy"]
    assert schedule.training.lr_schedule.warmup_epochs == 0.5
    assert schedule.training.optimizer.name == "sgd"


def test_unknown_key_is_an_error_with_its_path() -> None:
    data = tiny_schedule()
    data["training"]["epochz"] = 3
    with pytest.raises(ScheduleError) as error:
        parse_schedule(data, "Schedule 'x.json'")
    assert "training.epochz: unknown key" in str(error.value)
    assert "Schedule 'x.json' is invalid" in str(error.value)


def test_several_problems_are_reported_together() -> None:
    data = tiny_schedule(**{"training.epochs": 0, "data.batch_size": -1, "device": "gpu"})
    with pytest.raises(ScheduleError) as error:
        parse_schedule(data)
    message = str(error.value)
    assert "3 problems" in message
    assert "training.epochs" in message and "data.batch_size" in message and "device" in message


def test_nan_and_optimizer_paths() -> None:
    data = tiny_schedule(**{"training.optimizer": {"name": "sgd", "lr": -1}})
    with pytest.raises(ScheduleError, match=r"training\.optimizer\.lr"):
        validate_components(parse_schedule(data), create_plugins().registry)
    data = tiny_schedule()
    data["distill"] = {"losses": [{"name": "hinton_kd", "weight": float("nan")}]}
    with pytest.raises(ScheduleError, match=r"distill\.losses\[0\]\.weight"):
        parse_schedule(data)


def test_stage_overrides_merge_and_validate() -> None:
    training = Training.model_validate({"epochs": 3, "stages": {"teacher": {"epochs": 5, "optimizer": {"lr": 0.01}}}})
    assert training.for_stage("teacher").epochs == 5
    assert training.for_stage("teacher").optimizer.lr == 0.01
    assert training.for_stage("student").epochs == 3
    with pytest.raises(Exception, match=r"stages\.teacher\.epochs"):
        Training.model_validate({"stages": {"teacher": {"epochs": "many"}}})


def test_apply_overrides_parses_json_and_bare_words() -> None:
    data = tiny_schedule()
    result = apply_overrides(
        data,
        ["training.epochs=7", "curriculum.name=direct", "models.student.params.depth=4", "distill.losses=[]"],
    )
    assert result["training"]["epochs"] == 7
    assert result["curriculum"]["name"] == "direct"
    assert result["models"]["student"]["params"]["depth"] == 4
    assert result["distill"]["losses"] == []
    assert data["training"]["epochs"] == 2  # the input is not modified


def test_apply_overrides_list_index_and_errors() -> None:
    data = {"distill": {"losses": [{"name": "a"}, {"name": "b", "weight": 1}]}}
    assert apply_overrides(data, ["distill.losses.1.weight=0.5"])["distill"]["losses"][1]["weight"] == 0.5
    with pytest.raises(ScheduleError, match="index from 0 to 1"):
        apply_overrides(data, ["distill.losses.5.weight=1"])
    with pytest.raises(ScheduleError, match="dotted.key=VALUE"):
        apply_overrides(data, ["training.epochs"])


def test_malformed_json_reports_line_and_column(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "name": "x",\n  "seed": 1,,\n}')
    with pytest.raises(ScheduleError, match="line 3, column"):
        load_json(path)


def test_non_utf8_missing_and_non_object_files(tmp_path) -> None:
    path = tmp_path / "latin.json"
    path.write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(ScheduleError, match="not UTF-8"):
        load_json(path)
    with pytest.raises(ScheduleError, match="does not exist"):
        load_json(tmp_path / "nope.json")
    array = write_schedule(tmp_path, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ScheduleError, match="JSON object"):
        load_json(array)


def test_component_params_are_validated_with_paths() -> None:
    plugins = create_plugins()
    data = tiny_schedule()
    data["distill"] = {"losses": [{"name": "cross_entropy", "weight": 0.1}, {"name": "hinton_kd", "params": {"temperature": -2}}]}
    schedule = parse_schedule(data)
    with pytest.raises(ScheduleError) as error:
        validate_components(schedule, plugins.registry)
    assert "distill.losses[1].params.temperature" in str(error.value)


def test_unknown_component_lists_available_and_suggests() -> None:
    plugins = create_plugins()
    schedule = parse_schedule(tiny_schedule(**{"curriculum.name": "ta_chian"}))
    with pytest.raises(ScheduleError) as error:
        validate_components(schedule, plugins.registry)
    message = str(error.value)
    assert "curriculum.name: Unknown curriculum 'ta_chian'" in message
    assert "Did you mean 'ta_chain'" in message
    assert "direct" in message


def test_resolved_fills_component_defaults() -> None:
    plugins = create_plugins()
    schedule = parse_schedule(tiny_schedule())
    data = resolved(schedule, plugins.registry)
    assert data["distill"]["losses"][1]["params"]["temperature"] == 4.0
    assert "width_multiplier" in data["models"]["student"]["params"]
    json.dumps(data)  # serialisable


# --- validation that was too lax (issue 11) --------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("seed", True, "seed: must be a number, not true or false"),
        ("training.epochs", False, "training.epochs: must be a number"),
        ("data.batch_size", True, "data.batch_size: must be a number"),
        ("training.optimizer", {"name": "adam", "betas": [True, 0.9]}, "training.optimizer.betas: must be a number"),
        ("training.lr_schedule", {"name": "step", "milestones": [True]}, "training.lr_schedule.milestones: must be a number"),
        ("training.optimizer", {"name": "adam", "betas": [1.5, 0.9]}, "training.optimizer.betas[0]: Input should be less than 1"),
        ("training.lr_schedule.warmup_epochs", 1e308, "warmup_epochs: Input should be less than or equal to 100000"),
    ],
)
def test_values_that_validated_but_were_not_meant(key: str, value: object, expected: str) -> None:
    with pytest.raises(ScheduleError) as error:  # the structure, then the components' params
        validate_components(parse_schedule(tiny_schedule(**{key: value})), create_plugins().registry)
    assert expected in str(error.value)


def test_a_bool_where_a_component_param_takes_a_number_is_refused() -> None:
    schedule = parse_schedule(tiny_schedule(**{"data.params.train_size": True}))
    with pytest.raises(ScheduleError, match=r"data.params.train_size: must be a number, not true or false"):
        validate_components(schedule, create_plugins().registry)
    # A bool stays a bool where the field takes one.
    validate_components(parse_schedule(tiny_schedule(**{"training.channels_last": False})), create_plugins().registry)


@pytest.mark.parametrize(
    ("weight", "expected"),
    [
        ({"schedule": "step", "start": 1.0, "milestones": [2], "gamma": -1}, r"must not be negative \(this one reaches -1\)"),
        ({"schedule": "step", "start": 1.0, "milestones": [1, 2], "gamma": 1e300}, "overflow"),
        ({"schedule": "linear", "start": 1.0, "end": -0.5}, "must not be negative"),
        (True, "must be a number"),
    ],
)
def test_a_loss_weight_is_checked_over_every_value_its_schedule_takes(weight: object, expected: str) -> None:
    with pytest.raises(ScheduleError, match=expected):
        parse_schedule(tiny_schedule(**{"distill.losses": [{"name": "cross_entropy", "weight": weight}]}))
    parse_schedule(tiny_schedule(**{"distill.losses": [{"name": "cross_entropy", "weight": {"schedule": "step", "start": 1.0, "milestones": [2], "gamma": 0.5}}]}))


def test_an_optimizer_without_a_name_is_the_default_sgd() -> None:
    schedule = parse_schedule(apply_overrides(tiny_schedule(), ["training.optimizer.lr=0.2"]))
    assert schedule.training.optimizer.name == "sgd" and schedule.training.optimizer.lr == 0.2


def test_unknown_keys_get_a_did_you_mean_in_sections_and_component_params() -> None:
    with pytest.raises(ScheduleError) as error:
        parse_schedule(tiny_schedule(**{"training.epoch": 2, "data.batchsize": 3}))
    message = str(error.value)
    assert "training.epoch: unknown key. Did you mean 'epochs'?" in message
    assert "data.batchsize: unknown key. Did you mean 'batch_size'" in message
    schedule = parse_schedule(tiny_schedule(**{"training.optimizer.momentun": 0.5}))
    with pytest.raises(ScheduleError, match=r"training.optimizer.momentun: unknown key. Did you mean 'momentum'\?"):
        validate_components(schedule, create_plugins().registry)
    schedule = parse_schedule(tiny_schedule(**{"models.student.params.dpeth": 2}))
    with pytest.raises(ScheduleError, match=r"models.student.params.dpeth: unknown key. Did you mean 'depth'\?"):
        validate_components(schedule, create_plugins().registry)
