"""End-to-end runs on synthetic data: the run folder, results.json, TensorBoard files, preflight errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import tiny_schedule, write_schedule
from kdframe.errors import CheckpointError, LayerError, PluginError, RunFolderError, ScheduleError
from kdframe.runner import load_schedule, run_schedule


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _session_hparams(folder: Path) -> dict[str, object]:
    from tensorboard.plugins.hparams import metadata

    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    start = metadata.parse_session_start_info_plugin_data(content)
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()}


def test_ta_chain_end_to_end(tmp_path) -> None:
    path = write_schedule(tmp_path, tiny_schedule())
    folder, results = run_schedule(path, out=tmp_path / "run", quiet=True)

    assert [(r.stage, r.teachers) for r in results] == [
        ("teacher", ()),
        ("assistant", ("teacher",)),
        ("student", ("assistant",)),
    ]
    for index, name in enumerate(["teacher", "assistant", "student"]):
        assert (folder / "stages" / f"{index:02d}-{name}" / "student.pt").is_file()
        assert (folder / "tensorboard" / f"{index:02d}-{name}").is_dir()
    saved = json.loads((folder / "schedule.json").read_text())
    assert saved["distill"]["losses"][1]["params"] == {"temperature": 4.0}

    data = json.loads((folder / "results.json").read_text())
    assert data["finished"] is True
    rows = {row["stage"]: row for row in data["stages"]}
    assert rows["student"]["teachers"] == ["assistant"]
    assert rows["student"]["epochs"] == 2 and rows["student"]["epochs_run"] == 2
    assert rows["teacher"]["params"] > rows["student"]["params"]
    for row in rows.values():
        assert 0.0 <= row["final_test_acc"] <= row["best_test_acc"] <= 100.0
        assert row["wall_time_s"] > 0
    # Synthetic data is learnable: the final student is clearly above chance (25 % for 4 classes).
    assert rows["student"]["best_test_acc"] > 50.0

    student_scalars = _scalars(folder / "tensorboard" / "02-student")
    for tag in ("train/loss", "train/loss/cross_entropy", "train/loss/hinton_kd", "train/acc", "test/acc", "lr", "time/epoch_s", "time/samples_per_s"):
        assert tag in student_scalars, tag
    assert [step for step, _ in student_scalars["test/acc"]] == [1, 2]
    assert student_scalars["test/acc"][-1][1] == pytest.approx(rows["student"]["final_test_acc"], abs=1e-3)
    assert "train/loss/hinton_kd" not in _scalars(folder / "tensorboard" / "00-teacher")
    assert student_scalars["test/best_acc"][-1][1] == pytest.approx(rows["student"]["best_test_acc"], abs=1e-3)
    # The HParams session names the student's architecture params, weight decay, data size and
    # precision; integers read as integers.
    hparams = _session_hparams(folder / "tensorboard" / "02-student")
    assert hparams["model/depth"] == "2" and hparams["seed"] == "0" and hparams["epochs"] == "2"
    assert hparams["weight_decay"] == pytest.approx(5e-4) and hparams["precision"] == "fp32"
    assert hparams["train_samples"] == "all" and hparams["model/width_multiplier"] == 1.0
    assert hparams["result/wall_time_s"] == pytest.approx(rows["student"]["wall_time_s"])


def test_feature_and_relation_losses_train_their_adapters(tmp_path) -> None:
    schedule = tiny_schedule(**{"training.epochs": 1})
    schedule["curriculum"] = {"name": "direct", "params": {"teacher": "teacher", "student": "student"}}
    schedule["distill"] = {
        "losses": [
            {"name": "cross_entropy", "weight": 1.0},
            {"name": "fitnet", "weight": 0.5, "params": {"layers": [{"student": "features.0", "teacher": "features.3"}]}},
            {"name": "rkd_distance", "weight": 1.0, "params": {"layers": [{"student": "flatten", "teacher": "flatten"}]}},
        ]
    }
    path = write_schedule(tmp_path, schedule)
    folder, results = run_schedule(path, out=tmp_path / "run", quiet=True)
    scalars = _scalars(folder / "tensorboard" / "01-student")
    assert "train/loss/fitnet" in scalars and "train/loss/rkd_distance" in scalars
    assert all(torch.isfinite(torch.tensor(v)) for _, v in scalars["train/loss/fitnet"])


def test_wrong_layer_path_fails_before_training(tmp_path) -> None:
    schedule = tiny_schedule()
    schedule["distill"] = {"losses": [{"name": "fitnet", "params": {"layers": [{"student": "features.99", "teacher": "features.0"}]}}]}
    path = write_schedule(tmp_path, schedule)
    with pytest.raises(LayerError) as error:
        run_schedule(path, out=tmp_path / "run", quiet=True)
    assert "features.99" in str(error.value) and "features.0" in str(error.value)
    assert not (tmp_path / "run").exists()


def test_missing_and_unfitting_checkpoints_fail_before_training(tmp_path) -> None:
    schedule = tiny_schedule()
    schedule["models"]["teacher"]["checkpoint"] = str(tmp_path / "missing.pt")
    path = write_schedule(tmp_path, schedule)
    with pytest.raises(CheckpointError, match="does not exist"):
        run_schedule(path, out=tmp_path / "run", quiet=True)

    first = write_schedule(tmp_path, tiny_schedule(**{"training.epochs": 1}), "first.json")
    folder, _ = run_schedule(first, out=tmp_path / "first", quiet=True)
    schedule["models"]["teacher"]["checkpoint"] = str(folder / "stages" / "02-student" / "student.pt")
    path = write_schedule(tmp_path, schedule)
    with pytest.raises(CheckpointError, match="does not fit"):
        run_schedule(path, out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_teacher_with_checkpoint_is_not_retrained(tmp_path) -> None:
    first = write_schedule(tmp_path, tiny_schedule(**{"training.epochs": 1}), "first.json")
    folder, _ = run_schedule(first, out=tmp_path / "first", quiet=True)
    schedule = tiny_schedule(**{"training.epochs": 1})
    schedule["models"]["teacher"]["checkpoint"] = str(folder / "stages" / "00-teacher" / "student.pt")
    path = write_schedule(tmp_path, schedule)
    _, results = run_schedule(path, out=tmp_path / "second", quiet=True)
    assert [r.stage for r in results] == ["assistant", "student"]


def test_existing_run_folder_is_never_overwritten(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("precious")
    path = write_schedule(tmp_path, tiny_schedule())
    with pytest.raises(RunFolderError, match="already exists"):
        run_schedule(path, out=out, quiet=True)
    assert (out / "results.json").read_text() == "precious"


def test_plan_problems_are_reported(tmp_path) -> None:
    schedule = tiny_schedule(**{"curriculum.params.assistants": ["ghost"], "training.stages": {"nobody": {"epochs": 1}}})
    path = write_schedule(tmp_path, schedule)
    with pytest.raises(ScheduleError) as error:
        run_schedule(path, out=tmp_path / "run", quiet=True)
    assert "model 'ghost' is not in models" in str(error.value)
    assert "training.stages.nobody" in str(error.value)


def test_teacher_loss_in_a_scratch_stage_is_refused(tmp_path) -> None:
    schedule = tiny_schedule()
    schedule["distill"] = {"scratch_losses": [{"name": "hinton_kd"}]}
    path = write_schedule(tmp_path, schedule)
    with pytest.raises(ScheduleError, match="needs a teacher"):
        run_schedule(path, out=tmp_path / "run", quiet=True)


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_short_real_fashion_mnist_run(tmp_path) -> None:
    schedule = {
        "name": "fmnist-short",
        "device": "cpu",
        "data": {"dataset": "fashion_mnist", "train_samples": 4000, "test_samples": 1000},
        "models": {"teacher": {"arch": "plain_cnn", "params": {"depth": 4}}, "student": {"arch": "plain_cnn", "params": {"depth": 2}}},
        "training": {"epochs": 2, "lr_schedule": {"warmup_epochs": 0.5}},
        "curriculum": {"name": "direct", "params": {"teacher": "teacher", "student": "student"}},
        "logging": {"loggers": []},
    }
    path = write_schedule(tmp_path, schedule)
    _, results = run_schedule(path, out=tmp_path / "run", quiet=True)
    assert results[-1].final_test_acc > 60.0  # chance is 10 %


def test_schedule_plugins_section_selects_plugins(tmp_path) -> None:
    # Blocking the progress plugin removes its logger, so a schedule that lists it is refused.
    path = write_schedule(
        tmp_path, tiny_schedule(**{"plugins.block": ["kdframe_progress"], "logging.loggers": [{"name": "progress"}]})
    )
    with pytest.raises(ScheduleError, match="Unknown logger .progress."):
        load_schedule(path)
    schedule, plugins, _ = load_schedule(path, ["logging.loggers=[]"])
    assert "kdframe_progress" not in plugins.providers and "kdframe_losses" in plugins.providers
    assert schedule.plugins.block == ["kdframe_progress"]

    allowed = write_schedule(tmp_path, tiny_schedule(**{"plugins.allow": ["kdframe_*"]}), "allowed.json")
    _, plugins, resolved = load_schedule(allowed)
    assert all(name.startswith("kdframe_") for name in plugins.providers)
    assert resolved["plugins"] == {"allow": ["kdframe_*"], "block": [], "skip_broken": False}


def test_schedule_allow_list_naming_an_absent_plugin_is_refused(tmp_path) -> None:
    path = write_schedule(tmp_path, tiny_schedule(**{"plugins.allow": ["kdframe_losess"]}))
    with pytest.raises(PluginError, match=r"'kdframe_losess'.*Did you mean 'kdframe_losses'"):
        load_schedule(path)
    bad = write_schedule(tmp_path, tiny_schedule(**{"plugins.skip_broken": "sometimes"}), "bad.json")
    with pytest.raises(ScheduleError, match=r"plugins\.skip_broken"):
        load_schedule(bad)


def test_stage_hparams_hold_validated_params(tmp_path) -> None:
    from kdframe.runner import prepare

    schedule = tiny_schedule(**{"data.train_samples": 96, "training.precision": "fp32"})
    schedule["distill"] = {
        "losses": [{"name": "cross_entropy", "weight": 0.1}, {"name": "hinton_kd", "weight": 0.9, "params": {"temperature": 4}}]
    }
    loaded, plugins, resolved_schedule = load_schedule(write_schedule(tmp_path, schedule))
    hparams = prepare(loaded, plugins, resolved_schedule).setups[-1].info.hparams
    temperature = hparams["loss/hinton_kd/temperature"]
    assert temperature == 4.0 and isinstance(temperature, float)  # written as 4, validated as a float
    assert hparams["train_samples"] == 96 and hparams["model/depth"] == 2 and hparams["precision"] == "fp32"
    assert hparams["weight_decay"] == pytest.approx(5e-4) and hparams["optimizer"] == "sgd"
