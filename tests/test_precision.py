"""Mixed precision, torch.compile and the new training keys: validation and real runs on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdframe import precision
from kdframe.errors import ScheduleError, TrainingError
from kdframe.runner import execute, load_schedule, make_run_folder, prepare, run_schedule
from kdframe.schedule import TrainingConfig, parse_schedule
from tests.conftest import tiny_schedule, write_schedule


def test_defaults_and_validation() -> None:
    config = TrainingConfig()
    assert (config.precision, config.compile, config.teacher_cache, config.channels_last) == ("fp32", False, "auto", True)
    with pytest.raises(ScheduleError, match=r"training.precision: Input should be 'fp32', 'bf16' or 'fp16'"):
        parse_schedule(tiny_schedule(**{"training.precision": "fp8"}))
    with pytest.raises(ScheduleError, match=r"stages.student.teacher_cache: Input should be 'auto', 'memory', 'disk' or 'off'"):
        parse_schedule(tiny_schedule(**{"training.stages": {"student": {"teacher_cache": "sometimes"}}}))
    schedule = parse_schedule(tiny_schedule(**{"training.precision": "bf16", "training.stages": {"student": {"precision": "fp16"}}}))
    assert schedule.training.for_stage("teacher").precision == "bf16"
    assert schedule.training.for_stage("student").precision == "fp16"


def test_autocast_scaler_and_float32_outputs() -> None:
    cpu = torch.device("cpu")
    layer = torch.nn.Linear(4, 3)
    with precision.autocast("bf16", cpu):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with precision.autocast("fp32", cpu):
        assert layer(torch.randn(2, 4)).dtype == torch.float32
    assert precision.make_scaler("fp32", cpu) is None and precision.make_scaler("bf16", cpu) is None
    assert isinstance(precision.make_scaler("fp16", cpu), torch.amp.GradScaler)
    assert precision.to_float32(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert precision.to_float32(torch.ones(2, dtype=torch.int64)).dtype == torch.int64


def test_a_device_without_autocast_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(TrainingError, match="training.precision is 'bf16', but PyTorch cannot autocast"):
        precision.check_precision("bf16", torch.device("cpu"))
    precision.check_precision("fp32", torch.device("cpu"))  # fp32 needs nothing


def distil(**changes) -> dict:
    return tiny_schedule(**{
        "curriculum": {"name": "direct", "params": {"teacher": "teacher", "student": "student"}},
        "training.epochs": 1,
        "logging.loggers": [],
        **changes,
    })


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")  # fp16's skipped first step
@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_low_precision_trains_on_the_cpu(tmp_path: Path, name: str) -> None:
    path = write_schedule(tmp_path, distil(**{"training.precision": name}))
    schedule, plugins, resolved = load_schedule(path)
    experiment = prepare(schedule, plugins, resolved)
    seen: list[tuple[torch.dtype, bool]] = []
    conv = experiment.models["student"].features[0][0]
    conv.register_forward_hook(lambda module, args, output: seen.append((output.dtype, module.training)))
    results = execute(experiment, make_run_folder(schedule, tmp_path / "run"), quiet=True)
    low = precision.DTYPES[name]
    assert seen and all(dtype == low for dtype, training in seen if training)  # training forwards autocast
    assert any(not training for _, training in seen)  # evaluation ran too
    assert all(0.0 <= result.final_test_acc <= 100.0 for result in results)
    weights = experiment.models["student"].state_dict()
    assert all(torch.isfinite(value).all() and value.dtype in (torch.float32, torch.int64) for value in weights.values())


def test_bf16_stays_close_to_fp32(tmp_path: Path) -> None:
    runs = {}
    for name in ("fp32", "bf16"):
        schedule = distil(**{
            "curriculum": {"name": "direct", "params": {"student": "student"}},
            "training.precision": name,
            "training.epochs": 2,
        })
        path = write_schedule(tmp_path, schedule, f"{name}.json")
        runs[name] = run_schedule(path, out=tmp_path / name, quiet=True)[1]
    # The synthetic task is easy: both precisions learn it to (near) the same accuracy.
    for fp32, bf16 in zip(runs["fp32"], runs["bf16"]):
        assert bf16.final_test_acc == pytest.approx(fp32.final_test_acc, abs=10.0)


@pytest.mark.slow
def test_compile_trains_like_eager(tmp_path: Path) -> None:
    runs = {}
    for compiled in (False, True):
        schedule = tiny_schedule(**{
            "curriculum": {"name": "direct", "params": {"student": "student"}},
            "training.compile": compiled, "training.epochs": 1, "logging.loggers": [],
        })
        path = write_schedule(tmp_path, schedule, f"{compiled}.json")
        folder, _ = run_schedule(path, out=tmp_path / str(compiled), quiet=True)
        runs[compiled] = torch.load(folder / "stages" / "00-student" / "student.pt", weights_only=True)["state_dict"]
    for key, value in runs[False].items():
        torch.testing.assert_close(runs[True][key], value, rtol=1e-3, atol=1e-4, msg=key)
