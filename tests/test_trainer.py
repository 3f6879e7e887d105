"""The trainer: the golden order of events, frozen teachers, faults and controls."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import Field

from tests.conftest import HookRecorder, tiny_schedule, write_schedule
from kdframe import DataInfo, LossSpec, LossTerm, Params, hookimpl
from kdframe.checkpoints import save_model
from kdframe.errors import TrainingError
from kdframe.plugins import create_plugins
from kdframe.runner import execute, load_schedule, prepare


def _run(tmp_path, schedule, *extra_plugins):
    path = write_schedule(tmp_path, schedule)
    plugins = create_plugins(plugins=list(extra_plugins))
    loaded, plugins, resolved_schedule = load_schedule(path, plugins=plugins)
    experiment = prepare(loaded, plugins, resolved_schedule)
    out = tmp_path / "run"
    out.mkdir()
    return experiment, execute(experiment, out)


def test_golden_event_order(tmp_path) -> None:
    recorder = HookRecorder()
    schedule = tiny_schedule(**{"training.epochs": 1})
    schedule["curriculum"] = {"name": "direct", "params": {"teacher": "teacher", "student": "student"}}
    _run(tmp_path, schedule, ("recorder", recorder))
    batch_pair = ["batch_start", "batch_end"] * 4  # 128 samples / batch 32
    epoch = ["epoch_start", *batch_pair, "eval_end", "epoch_end"]
    expected = ["run_start", "stage_start", *epoch, "stage_end", "stage_start", *epoch, "stage_end", "run_end"]
    assert recorder.events() == expected
    stages = [details["stage"] for name, details in recorder.calls if name == "stage_start"]
    assert stages == ["teacher", "student"]
    batch_metrics = next(details["metrics"] for name, details in recorder.calls if name == "batch_end" and details["stage"] == "student")
    assert set(batch_metrics) == {"loss", "lr", "loss/cross_entropy", "loss/hinton_kd"}
    assert batch_metrics["loss"] == pytest.approx(0.1 * batch_metrics["loss/cross_entropy"] + 0.9 * batch_metrics["loss/hinton_kd"])
    epoch_metrics = [details["metrics"] for name, details in recorder.calls if name == "epoch_end"][-1]
    for key in ("train/loss", "train/acc", "train/loss/hinton_kd", "test/acc", "test/loss", "lr", "time/epoch_s", "time/samples_per_s"):
        assert key in epoch_metrics


def test_progress_events_of_the_teacher_cache_and_the_evaluations(tmp_path) -> None:
    recorder = HookRecorder()
    # An unusual seed, so that no other test has put this teacher's outputs in the process's cache.
    schedule = tiny_schedule(**{"training.epochs": 2, "seed": 917, "data.validation_samples": 32})
    schedule["curriculum"] = {"name": "direct", "params": {"teacher": "teacher", "student": "student"}}
    _run(tmp_path, schedule, ("recorder", recorder))
    events = recorder.events(batches=False, progress=True)
    student = events[events.index("stage_start", events.index("stage_end")):]
    # The cache is built after stage_start and before the first epoch; each epoch's evaluations
    # report before eval_end.
    assert student[:3] == ["stage_start", "progress", "progress"]
    progress = [d for d in recorder.details("progress") if d["stage"] == "student"]
    cache = [d for d in progress if d["task"] == "teacher cache: teacher"]
    # 128 images - 32 held out, in chunks of the eval batch size (64).
    assert [d["done"] for d in cache] == [0, 64, 96] and {d["total"] for d in cache} == {96}
    tests = [d["done"] for d in progress if d["task"] == "evaluate test"]
    vals = [d["done"] for d in progress if d["task"] == "evaluate val"]
    assert tests == [0, 64] * 2 and vals == [0, 32] * 2  # eval batch 64: one batch per split
    assert {d["task"] for d in recorder.details("progress") if d["stage"] == "teacher"} == {"evaluate test", "evaluate val"}
    assert recorder.events(batches=False) == [e for e in events if e != "progress"]  # hidden unless asked for


def test_teacher_weights_and_batchnorm_statistics_never_change(tmp_path) -> None:
    schedule = tiny_schedule(**{"training.epochs": 1})
    schedule["curriculum"] = {"name": "direct", "params": {"teacher": "teacher", "student": "student"}}
    # Give the teacher a checkpoint with non-trivial BatchNorm statistics.
    spec = create_plugins().registry.spec("model", "plain_cnn")
    teacher = spec.factory(spec.params(depth=4), DataInfo("synthetic", 4, 1, (16, 16)))
    teacher.train()
    with torch.no_grad():
        for _ in range(3):
            teacher(torch.randn(8, 1, 16, 16) * 3 + 1)
    checkpoint = tmp_path / "teacher.pt"
    save_model(checkpoint, teacher, key="teacher", arch="plain_cnn", params={"depth": 4})
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    schedule["models"]["teacher"]["checkpoint"] = str(checkpoint)

    experiment, results = _run(tmp_path, schedule)
    assert [r.stage for r in results] == ["student"]
    after = experiment.models["teacher"].state_dict()
    for name, value in before.items():
        assert torch.equal(after[name].cpu(), value), name
    assert not experiment.models["teacher"].training


class NaNParams(Params):
    after: int = Field(2, description="Steps of finite values before NaN.")
    only: list[int] = Field(default_factory=list, description="If given, NaN only at these calls (1-based).")


class NaNLoss(LossTerm):
    needs_teacher = False

    def __init__(self, params: NaNParams) -> None:
        super().__init__()
        self.calls = 0
        self.after = params.after
        self.only = params.only

    def forward(self, outputs):
        self.calls += 1
        value = outputs.student.logits.mean() * 0
        bad = self.calls in self.only if self.only else self.calls > self.after
        return value + (math.nan if bad else 0.0)


class NaNPlugin:
    @hookimpl
    def kdframe_register_losses(self):
        return [LossSpec(name="nan_after", summary="NaN after N steps", factory=NaNLoss, params=NaNParams, family="label")]


def test_non_finite_loss_names_term_and_step(tmp_path) -> None:
    schedule = tiny_schedule()
    schedule["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    schedule["distill"] = {"scratch_losses": [{"name": "cross_entropy"}, {"name": "nan_after", "params": {"after": 2}}]}
    recorder = HookRecorder()
    with pytest.raises(TrainingError) as error:
        _run(tmp_path, schedule, ("nan", NaNPlugin()), ("recorder", recorder))
    assert "nan_after" in str(error.value) and "step 3" in str(error.value)
    assert recorder.events()[-1] == "exception"


def test_non_finite_batches_can_be_skipped_and_counted(tmp_path) -> None:
    schedule = tiny_schedule(**{"training.on_nonfinite": "skip", "training.max_skipped_batches": 1})
    schedule["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    schedule["distill"] = {"scratch_losses": [{"name": "cross_entropy"}, {"name": "nan_after", "params": {"only": [2, 6]}}]}
    recorder = HookRecorder()
    _, results = _run(tmp_path, schedule, ("nan", NaNPlugin()), ("recorder", recorder))
    # 4 batches an epoch: calls 2 and 6 are one batch in each of the 2 epochs.
    assert results[0].skipped_batches == 2 and results[0].epochs_run == 2
    assert recorder.events().count("batch_end") == 8  # a skipped batch still ends with batch_end
    assert all(math.isfinite(v) for v in results[0].to_dict().values() if isinstance(v, float))


def test_too_many_skipped_batches_stop_the_stage_and_keep_the_last_checkpoint(tmp_path) -> None:
    schedule = tiny_schedule(**{"training.on_nonfinite": "skip", "training.max_skipped_batches": 1})
    schedule["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    schedule["distill"] = {"scratch_losses": [{"name": "cross_entropy"}, {"name": "nan_after", "params": {"only": [6, 7]}}]}
    with pytest.raises(TrainingError) as error:
        _run(tmp_path, schedule, ("nan", NaNPlugin()))
    message = str(error.value)
    assert "max_skipped_batches=1" in message and "epoch 2, batch 3" in message and "checkpoint is kept" in message
    state = torch.load(tmp_path / "run" / "stages" / "00-student" / "state.pt", weights_only=True)
    assert state["trainer"]["epochs_done"] == 1


def test_weights_that_become_non_finite_are_never_saved_as_a_result(tmp_path) -> None:
    # lr 100 with momentum 0.9: the loss stays finite for a while, the weights do not.
    schedule = tiny_schedule(**{"training.optimizer": {"name": "sgd", "lr": 100.0, "momentum": 0.9}, "training.epochs": 4})
    schedule["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    for policy in ("stop", "skip"):
        folder = tmp_path / policy
        folder.mkdir()
        with pytest.raises(TrainingError) as error:
            _run(folder, {**schedule, "training": {**schedule["training"], "on_nonfinite": policy}})
        message = str(error.value)
        assert "Stage 'student'" in message and "weights became non-finite" in message and "in epoch" in message
        stage = folder / "run" / "stages" / "00-student"
        assert not (stage / "student.pt").exists()
        assert not (folder / "run" / "results.json").exists()
        if (stage / "state.pt").exists():  # the last good epoch's state, finite throughout
            state = torch.load(stage / "state.pt", weights_only=True)["trainer"]["student"]
            assert all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point())


def test_a_skipped_batch_leaves_the_model_exactly_as_before_it(tmp_path) -> None:
    schedule = tiny_schedule(**{"training.on_nonfinite": "skip", "training.epochs": 1, "logging.loggers": []})
    schedule["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    schedule["distill"] = {"scratch_losses": [{"name": "cross_entropy"}, {"name": "nan_after", "params": {"only": [2]}}]}
    path = write_schedule(tmp_path, schedule)
    loaded, plugins, resolved_schedule = load_schedule(path, plugins=create_plugins(plugins=[("nan", NaNPlugin())]))
    experiment = prepare(loaded, plugins, resolved_schedule)
    student = experiment.models["student"]
    seen: list[dict[str, torch.Tensor]] = []

    def record(module, args) -> None:
        if module.training:  # the state each training batch starts from
            seen.append({name: buffer.clone() for name, buffer in module.named_buffers()})

    student.register_forward_pre_hook(record)
    out = tmp_path / "run"
    out.mkdir()
    (result,) = execute(experiment, out)
    assert result.skipped_batches == 1 and len(seen) == 4
    # Batch 2 was skipped: batch 3 starts from exactly the state batch 2 started from.
    for name, value in seen[1].items():
        assert torch.equal(seen[2][name], value), name
    assert not torch.equal(seen[1]["features.0.1.running_mean"], seen[0]["features.0.1.running_mean"])


class InfinitePixel:
    """A test plugin: synthetic data with one infinite pixel (1e200 in float64, inf in float32)."""

    @hookimpl
    def kdframe_register_datasets(self):
        from kdframe import DatasetSpec
        from kdframe_data.synthetic import SyntheticParams, make_synthetic

        def factory(params: SyntheticParams):
            data = make_synthetic(params)
            images = data.train_images.double()
            images[5, 0, 3, 3] = 1e200
            data.train_images = images.float()
            return data

        return [DatasetSpec(name="inf_pixel", summary="One infinite pixel.", factory=factory, params=SyntheticParams)]


def test_an_infinite_pixel_is_skipped_without_poisoning_batchnorm(tmp_path) -> None:
    schedule = tiny_schedule(**{"training.on_nonfinite": "skip", "data.dataset": "inf_pixel", "logging.loggers": []})
    schedule["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    _, (result,) = _run(tmp_path, schedule, ("inf", InfinitePixel()))
    assert result.skipped_batches == 2  # the batch holding it, once an epoch
    state = torch.load(tmp_path / "run" / "stages" / "00-student" / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point())


def test_an_infinite_pixel_under_stop_is_the_non_finite_error(tmp_path) -> None:
    schedule = tiny_schedule(**{"data.dataset": "inf_pixel", "logging.loggers": []})
    schedule["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    with pytest.raises(TrainingError, match=r"became non-finite at epoch 1"):
        _run(tmp_path, schedule, ("inf", InfinitePixel()))


class StopAfterFirstBatch:
    @hookimpl
    def kdframe_on_batch_end(self, state, control):
        control.stop_stage = True


def test_control_stop_stage_ends_the_stage_early(tmp_path) -> None:
    schedule = tiny_schedule()
    schedule["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    recorder = HookRecorder()
    _, results = _run(tmp_path, schedule, ("stopper", StopAfterFirstBatch()), ("recorder", recorder))
    assert recorder.events().count("batch_end") == 1
    assert results[0].epochs_run == 1


def test_collapse_to_chance_is_detected(tmp_path) -> None:
    schedule = tiny_schedule(**{"data.params.noise": 1000.0, "data.params.test_size": 512, "training.on_collapse": "stop"})
    schedule["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    with pytest.raises(TrainingError, match="collapsed"):
        _run(tmp_path, schedule)


class ProbeParams(Params):
    pretrain_epochs: int = Field(0, description="Epochs of the pre-training phase.")


class ProbeLoss(LossTerm):
    """Records what the trainer hands a term; its pre-training phase trains only its own scale."""

    needs_teacher = False
    seen: list[dict] = []

    def __init__(self, params: ProbeParams) -> None:
        super().__init__()
        self.pretrain_epochs = params.pretrain_epochs
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.student_layers = ["logits"]
        self.ended = False

    def build(self, context) -> None:
        ProbeLoss.seen.append({"build": context.student_shapes["logits"], "samples": context.num_train_samples})

    def forward(self, outputs):
        ProbeLoss.seen.append({"epoch": outputs.epoch, "epochs": outputs.epochs, "indices": outputs.indices})
        return (outputs.student.features["logits"] - outputs.student.logits).abs().sum() + 0 * self.scale

    def pretrain_loss(self, outputs):
        return (self.scale - 3.0) ** 2 + 0 * outputs.student.logits.sum()

    def end_pretraining(self) -> None:
        self.ended = True

    def current_values(self, epoch, epochs):
        return {"probe": float(epoch)}


class ProbePlugin:
    @hookimpl
    def kdframe_register_losses(self):
        return [LossSpec(name="probe", summary="test probe", factory=ProbeLoss, params=ProbeParams, family="label")]


def test_terms_get_epochs_indices_logits_tap_and_scheduled_weights(tmp_path) -> None:
    ProbeLoss.seen = []
    schedule = tiny_schedule(**{"training.epochs": 3})
    schedule["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    schedule["distill"] = {
        "scratch_losses": [
            {"name": "cross_entropy", "weight": {"schedule": "linear", "start": 0.0, "end": 1.0, "epochs": 2}},
            {"name": "probe", "weight": 0.5},
        ]
    }
    recorder = HookRecorder()
    _run(tmp_path, schedule, ("probe", ProbePlugin()), ("recorder", recorder))
    assert ProbeLoss.seen[0] == {"build": torch.Size([2, 4]), "samples": 128}
    # Before training, one dry step (on copies) checks the term on the first two samples.
    dry_step, steps = ProbeLoss.seen[1], ProbeLoss.seen[2:]
    assert dry_step["epoch"] == 0 and dry_step["indices"].tolist() == [0, 1]
    assert {s["epoch"] for s in steps} == {0, 1, 2} and {s["epochs"] for s in steps} == {3}
    first_epoch = torch.cat([s["indices"] for s in steps if s["epoch"] == 0])
    assert sorted(first_epoch.tolist()) == list(range(128))
    epoch_metrics = [details["metrics"] for name, details in recorder.calls if name == "epoch_end"]
    assert [m["weight/cross_entropy"] for m in epoch_metrics] == [0.0, 0.5, 1.0]
    assert [m["param/probe/probe"] for m in epoch_metrics] == [0.0, 1.0, 2.0]
    batch = next(details["metrics"] for name, details in recorder.calls if name == "batch_end")
    assert batch["loss"] == pytest.approx(0.5 * batch["loss/probe"])  # CE has weight 0 in epoch 0


def test_a_declared_pretraining_phase_runs_as_its_own_stage(tmp_path) -> None:
    schedule = tiny_schedule(**{"training.epochs": 1})
    schedule["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    schedule["distill"] = {"scratch_losses": [{"name": "cross_entropy"}, {"name": "probe", "params": {"pretrain_epochs": 2}}]}
    experiment, results = _run(tmp_path, schedule, ("probe", ProbePlugin()))
    assert [(r.stage, r.model, r.epochs_run) for r in results] == [("student-pretrain", "student", 2), ("student", "student", 1)]
    pretrain, main = experiment.setups
    assert pretrain.kind == "pretrain" and [w.name for w in pretrain.terms] == ["probe"]
    probe = pretrain.terms[0].term
    assert probe is main.terms[1].term and probe.ended
    assert probe.scale.item() != 1.0  # the phase trained the term's own parameter
    assert (tmp_path / "run" / "stages" / "00-student-pretrain" / "student.pt").is_file()
