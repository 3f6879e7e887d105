"""The ``progress`` logger: status lines and tqdm bars on an injected stream."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydantic import ValidationError

import kdframe_progress
import kdframe_tensorboard
from kdframe import Control, RunInfo, StageInfo, StageResult, TrainState
from kdframe.plugins import Plugins, create_plugins
from kdframe_progress import ProgressLogger, ProgressParams

EPOCHS = 2
BATCHES = 3
SAMPLES = 10


class TTY(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def make_run(folder: Path) -> RunInfo:
    def stage(index: int, name: str, arch: str, teachers: tuple[str, ...]) -> StageInfo:
        return StageInfo(
            index=index,
            name=name,
            student=name,
            arch=arch,
            teachers=teachers,
            epochs=EPOCHS,
            losses=({"name": "cross_entropy", "weight": 1.0, "params": {}},),
            hparams={"lr": 0.1},
            folder=str(folder / name),
        )

    stages = (
        stage(0, "teacher", "plain_cnn_10", ()),
        stage(1, "assistant", "plain_cnn_4", ("teacher",)),
        stage(2, "student", "plain_cnn_2", ("assistant", "teacher")),
    )
    return RunInfo(name="takd", folder=str(folder), schedule={"name": "takd"}, stages=stages, device="cpu")


def epoch_metrics(stage: StageInfo, epoch: int) -> dict[str, float]:
    return {
        "train/loss": 0.412 + stage.index + epoch,
        "train/loss/cross_entropy": 0.4,
        "train/acc": 85.1 + epoch,
        "test/acc": 86.0 + stage.index + epoch,
        "test/loss": 0.5,
        "lr": 0.1,
        "time/epoch_s": 12.34,
        "time/samples_per_s": 4870.4,
    }


def make_result(stage: StageInfo, epochs_run: int = EPOCHS, collapsed: bool = False) -> StageResult:
    return StageResult(
        stage=stage.name,
        model=stage.student,
        arch=stage.arch,
        teachers=stage.teachers,
        epochs=stage.epochs,
        epochs_run=epochs_run,
        final_test_acc=87.0 + stage.index,
        best_test_acc=87.25 + stage.index,
        best_epoch=1,
        params=1234,
        wall_time_s=24.68,
        checkpoint="",
        collapsed=collapsed,
    )


def drive(hook, run: RunInfo, stages: tuple[StageInfo, ...] | None = None, **result_kwargs) -> None:
    control = Control()
    hook.kdframe_on_run_start(run=run, control=control)
    results = []
    for stage in stages or run.stages:
        hook.kdframe_on_stage_start(run=run, stage=stage, control=control)
        step = 0
        for epoch in range(EPOCHS):
            state = TrainState(epoch=epoch, step=step, batches_per_epoch=BATCHES)
            hook.kdframe_on_epoch_start(run=run, stage=stage, state=state, control=control)
            for batch in range(BATCHES):
                state.batch, state.samples = batch, SAMPLES
                hook.kdframe_on_batch_start(run=run, stage=stage, state=state, control=control)
                step += 1
                state.step = step
                state.metrics = {"loss": 1.0 / step, "loss/cross_entropy": 1.0 / step, "lr": 0.1}
                hook.kdframe_on_batch_end(run=run, stage=stage, state=state, control=control)
            state.metrics = {"test/acc": 86.0, "test/loss": 0.5}
            hook.kdframe_on_eval_end(run=run, stage=stage, state=state, control=control)
            state.metrics = epoch_metrics(stage, epoch)
            hook.kdframe_on_epoch_end(run=run, stage=stage, state=state, control=control)
        result = make_result(stage, **result_kwargs)
        results.append(result)
        hook.kdframe_on_stage_end(run=run, stage=stage, result=result, control=control)
    hook.kdframe_on_run_end(run=run, results=results)


def make_plugins() -> Plugins:
    return create_plugins(
        load_entry_points=False,
        plugins=[("kdframe_tensorboard", kdframe_tensorboard), ("kdframe_progress", kdframe_progress)],
    )


def registered(stream: io.StringIO, **params) -> Plugins:
    plugins = make_plugins()
    plugins.register_for_run(ProgressLogger(ProgressParams(**params), stream=stream), "progress-run")
    return plugins


EXPECTED_LINES = [
    "stage 1/3: teacher (plain_cnn_10) trained from labels, 2 epochs",
    "[teacher] epoch 1/2  train loss 0.412  train acc 85.1%  test acc 86.0%  (12.3 s, 4870 samples/s)",
    "[teacher] epoch 2/2  train loss 1.412  train acc 86.1%  test acc 87.0%  (12.3 s, 4870 samples/s)",
    "[teacher] done: final test acc 87.0%  best 87.2% at epoch 1  (24.7 s)",
    "stage 2/3: assistant (plain_cnn_4) taught by teacher, 2 epochs",
    "[assistant] epoch 1/2  train loss 1.412  train acc 85.1%  test acc 87.0%  (12.3 s, 4870 samples/s)",
    "[assistant] epoch 2/2  train loss 2.412  train acc 86.1%  test acc 88.0%  (12.3 s, 4870 samples/s)",
    "[assistant] done: final test acc 88.0%  best 88.2% at epoch 1  (24.7 s)",
    "stage 3/3: student (plain_cnn_2) taught by assistant, teacher, 2 epochs",
    "[student] epoch 1/2  train loss 2.412  train acc 85.1%  test acc 88.0%  (12.3 s, 4870 samples/s)",
    "[student] epoch 2/2  train loss 3.412  train acc 86.1%  test acc 89.0%  (12.3 s, 4870 samples/s)",
    "[student] done: final test acc 89.0%  best 89.2% at epoch 1  (24.7 s)",
]


def test_registered_with_documented_params() -> None:
    plugins = make_plugins()
    spec = plugins.registry.spec("logger", "progress")
    assert spec.params is ProgressParams and spec.summary
    defaults = ProgressParams()
    assert (defaults.bar, defaults.epoch_lines, defaults.line_every_s) == ("auto", True, 30.0)
    for name, field in ProgressParams.model_fields.items():
        assert field.description, name
    with pytest.raises(ValidationError):
        ProgressParams(bar="sometimes")
    with pytest.raises(ValidationError):
        ProgressParams.model_validate({"bars": "never"})


def test_factory_builds_a_logger_for_a_run(tmp_path: Path) -> None:
    plugins = make_plugins()
    spec = plugins.registry.spec("logger", "progress")
    logger = spec.factory(spec.params.model_validate({"bar": "never"}), tmp_path)
    assert isinstance(logger, ProgressLogger)
    plugins.register_for_run(logger, "progress-run")
    plugins.unregister("progress-run")
    assert list(tmp_path.iterdir()) == []  # it writes no files


def test_lines_without_bar_exactly(tmp_path: Path) -> None:
    stream = io.StringIO()
    plugins = registered(stream, bar="never")
    drive(plugins.hook, make_run(tmp_path))
    assert stream.getvalue() == "\n".join(EXPECTED_LINES) + "\n"


def test_auto_has_no_bar_when_not_a_terminal(tmp_path: Path) -> None:
    stream = io.StringIO()
    drive(registered(stream).hook, make_run(tmp_path))
    assert stream.getvalue() == "\n".join(EXPECTED_LINES) + "\n"


def test_no_epoch_lines(tmp_path: Path) -> None:
    stream = io.StringIO()
    drive(registered(stream, bar="never", epoch_lines=False).hook, make_run(tmp_path))
    assert stream.getvalue().splitlines() == [line for line in EXPECTED_LINES if "] epoch " not in line]


@pytest.mark.parametrize("bar, stream_type", [("always", io.StringIO), ("auto", TTY)])
def test_bar(tmp_path: Path, bar: str, stream_type: type[io.StringIO]) -> None:
    stream = stream_type()
    logger = ProgressLogger(ProgressParams(bar=bar), stream=stream)
    assert logger.bars_enabled()
    plugins = make_plugins()
    plugins.register_for_run(logger, "progress-run")
    drive(plugins.hook, make_run(tmp_path))
    output = stream.getvalue()
    assert "\r" in output  # tqdm redraws in place
    assert "teacher epoch 1/2" in output and "student epoch 2/2" in output
    assert f"{BATCHES}/{BATCHES}" in output
    assert "loss " in output  # running loss in the postfix
    for line in EXPECTED_LINES:  # the lines are still written, whole
        assert line + "\n" in output
    assert stream.getvalue().endswith(EXPECTED_LINES[-1] + "\n")  # the last bar was cleared before


def test_running_loss_is_the_sample_mean(tmp_path: Path) -> None:
    stream = io.StringIO()
    logger = ProgressLogger(ProgressParams(bar="always"), stream=stream)
    run = make_run(tmp_path)
    stage = run.stages[0]
    state = TrainState(epoch=0, batches_per_epoch=2)
    logger.kdframe_on_epoch_start(stage=stage, state=state)
    for batch, (loss, samples) in enumerate([(1.0, 30), (2.0, 10)]):
        state.batch, state.samples, state.step = batch, samples, batch + 1
        state.metrics = {"loss": loss}
        logger.kdframe_on_batch_end(stage=stage, state=state)
    bar = logger._bar
    assert bar is not None and bar.n == 2
    assert bar.postfix == "loss 1.250"
    logger.kdframe_on_exception()
    assert logger._bar is None


def test_stopped_and_collapsed(tmp_path: Path) -> None:
    stream = io.StringIO()
    run = make_run(tmp_path)
    plugins = registered(stream, bar="never", epoch_lines=False)
    drive(plugins.hook, run, stages=run.stages[:1], epochs_run=1, collapsed=True)
    assert stream.getvalue().splitlines()[-1] == (
        "[teacher] done: final test acc 87.0%  best 87.2% at epoch 1  (24.7 s)  stopped after 1/2 epochs  "
        "WARNING: collapsed (test accuracy at chance level)"
    )


def test_exception_closes_the_bar_quietly(tmp_path: Path) -> None:
    stream = io.StringIO()
    logger = ProgressLogger(ProgressParams(bar="always"), stream=stream)
    plugins = make_plugins()
    plugins.register_for_run(logger, "progress-run")
    run = make_run(tmp_path)
    stage = run.stages[0]
    control = Control()
    plugins.hook.kdframe_on_stage_start(run=run, stage=stage, control=control)
    state = TrainState(epoch=0, batches_per_epoch=BATCHES)
    plugins.hook.kdframe_on_epoch_start(run=run, stage=stage, state=state, control=control)
    before = stream.getvalue()
    plugins.hook.kdframe_on_exception(run=run, stage=stage, error=RuntimeError("boom"))
    assert logger._bar is None
    assert "boom" not in stream.getvalue()  # the runner re-raises the error; no line of ours
    assert stream.getvalue().startswith(before)


def test_default_stream_is_stderr_at_write_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logger = ProgressLogger(ProgressParams(bar="never"))
    run = make_run(tmp_path)
    logger.kdframe_on_stage_start(run=run, stage=run.stages[1])
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == EXPECTED_LINES[4] + "\n"


class Clock:
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_periodic_lines_inside_a_long_epoch_without_a_terminal(tmp_path: Path) -> None:
    stream = io.StringIO()
    logger = ProgressLogger(ProgressParams(line_every_s=30.0), stream=stream, clock=Clock(20.0))
    run = make_run(tmp_path)
    stage = run.stages[2]
    state = TrainState(epoch=0, batches_per_epoch=4)
    logger.kdframe_on_epoch_start(stage=stage, state=state)  # t = 20
    for batch in range(4):  # t = 40, 60, 80, 100: lines at 60 (40 s after the start) and 100
        state.batch, state.samples, state.metrics = batch, 10, {"loss": 0.5}
        logger.kdframe_on_batch_end(stage=stage, state=state)
    assert stream.getvalue().splitlines() == [
        "[student] epoch 1/2  batch 2/4 (50%)  loss 0.500  40 s  ~40 s left",
        "[student] epoch 1/2  batch 4/4 (100%)  loss 0.500  80 s",
    ]


def test_periodic_lines_of_evaluation_and_teacher_cache(tmp_path: Path) -> None:
    stream = io.StringIO()
    logger = ProgressLogger(ProgressParams(), stream=stream, clock=Clock(20.0))
    stage = make_run(tmp_path).stages[2]
    for done in (0, 1000, 2000, 3000):  # t = 20 (start), 40, 60, 80
        logger.kdframe_on_progress(stage=stage, task="teacher cache: assistant", done=done, total=3000)
    assert stream.getvalue().splitlines() == [
        "[student] teacher cache: assistant: 2000/3000 images (67%)  40 s  ~20 s left",
    ]
    quiet = io.StringIO()
    silent = ProgressLogger(ProgressParams(line_every_s=0), stream=quiet, clock=Clock(100.0))
    for done in (0, 5, 10):
        silent.kdframe_on_progress(stage=stage, task="evaluate test", done=done, total=10)
    assert quiet.getvalue() == ""


def test_bars_for_evaluation_and_teacher_cache_on_a_terminal(tmp_path: Path) -> None:
    stream = TTY()
    logger = ProgressLogger(ProgressParams(), stream=stream)
    plugins = make_plugins()
    plugins.register_for_run(logger, "progress-run")
    run = make_run(tmp_path)
    stage = run.stages[1]
    hook = plugins.hook
    hook.kdframe_on_progress(run=run, stage=stage, task="teacher cache: teacher", done=0, total=300)
    assert logger._bar is not None and logger._bar.desc == "assistant teacher cache: teacher"
    hook.kdframe_on_progress(run=run, stage=stage, task="teacher cache: teacher", done=200, total=300)
    assert logger._bar.n == 200
    hook.kdframe_on_progress(run=run, stage=stage, task="teacher cache: teacher", done=300, total=300)
    assert logger._bar is None  # cleared when the task is done
    # An evaluation replaces the epoch's bar.
    state = TrainState(epoch=0, batches_per_epoch=BATCHES)
    hook.kdframe_on_epoch_start(run=run, stage=stage, state=state, control=Control())
    epoch_bar = logger._bar
    hook.kdframe_on_progress(run=run, stage=stage, task="evaluate test", done=0, total=64)
    assert epoch_bar is not None and logger._bar is not epoch_bar and epoch_bar.disable  # closed
    assert logger._bar is not None and logger._bar.total == 64
    hook.kdframe_on_progress(run=run, stage=stage, task="evaluate test", done=64, total=64)
    assert logger._bar is None
    assert "assistant teacher cache: teacher" in stream.getvalue() and "assistant evaluate test" in stream.getvalue()
