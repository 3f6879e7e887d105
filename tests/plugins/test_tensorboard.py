"""The ``tensorboard`` logger, read back with TensorBoard's own event reader."""

from __future__ import annotations

import dataclasses

import threading
from pathlib import Path

import pytest
from pydantic import ValidationError
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

import kdframe_progress
import kdframe_tensorboard
from kdframe import Control, RunInfo, StageInfo, StageResult, TrainState
from kdframe.plugins import Plugins, create_plugins
from kdframe_tensorboard import TensorBoardLogger, TensorBoardParams

EPOCHS = 2
BATCHES = 4
SAMPLES = 8
EPOCH_KEYS = (
    "train/loss",
    "train/loss/cross_entropy",
    "train/acc",
    "test/acc",
    "test/loss",
    "lr",
    "time/epoch_s",
    "time/samples_per_s",
)
SCHEDULE = {"name": "takd", "seed": 0, "models": {"teacher": {"arch": "plain_cnn"}}, "training": {"epochs": 2}}


# -- fakes ------------------------------------------------------------------------------------------


def make_run(folder: Path) -> RunInfo:
    teacher = StageInfo(
        index=0,
        name="teacher",
        student="teacher",
        arch="plain_cnn",
        teachers=(),
        epochs=EPOCHS,
        losses=({"name": "cross_entropy", "weight": 1.0, "params": {}},),
        hparams={"arch": "plain_cnn", "lr": 0.1, "epochs": EPOCHS, "distilled": False},
        folder=str(folder / "teacher"),
    )
    student = StageInfo(
        index=1,
        name="student",
        student="student",
        arch="plain_cnn_small",
        teachers=("teacher",),
        epochs=EPOCHS,
        losses=(
            {"name": "cross_entropy", "weight": 0.5, "params": {}},
            {"name": "kd", "weight": 0.5, "params": {"temperature": 4.0}},
        ),
        hparams={"arch": "plain_cnn_small", "lr": 0.05, "epochs": EPOCHS, "distilled": True, "temperature": 4.0},
        folder=str(folder / "student"),
    )
    return RunInfo(name="takd", folder=str(folder), schedule=SCHEDULE, stages=(teacher, student), device="cpu")


def batch_loss(stage: StageInfo, step: int) -> float:
    return 2.0 / (stage.index + 1) / step


def epoch_metrics(stage: StageInfo, epoch: int) -> dict[str, float]:
    """Distinct, exactly representable values per stage and epoch."""
    base = 10.0 * stage.index + epoch
    return {
        "train/loss": 1.5 - 0.25 * epoch,
        "train/loss/cross_entropy": 1.25 - 0.25 * epoch,
        "train/acc": 40.0 + base,
        "test/acc": 50.0 + base,
        "test/loss": 1.0 + 0.5 * stage.index,
        "lr": 0.125 / (stage.index + 1),
        "time/epoch_s": 2.5,
        "time/samples_per_s": 512.0,
    }


def make_result(stage: StageInfo) -> StageResult:
    return StageResult(
        stage=stage.name,
        model=stage.student,
        arch=stage.arch,
        teachers=stage.teachers,
        epochs=stage.epochs,
        epochs_run=stage.epochs,
        final_test_acc=50.0 + 10.0 * stage.index + EPOCHS - 1,
        best_test_acc=50.5 + 10.0 * stage.index + EPOCHS - 1,
        best_epoch=EPOCHS - 1,
        params=1000,
        wall_time_s=5.0 + stage.index,
        checkpoint=str(Path(stage.folder) / "student.pt"),
        collapsed=False,
    )


def make_plugins() -> Plugins:
    return create_plugins(
        load_entry_points=False,
        plugins=[("kdframe_tensorboard", kdframe_tensorboard), ("kdframe_progress", kdframe_progress)],
    )


def run_stage_epochs(hook, run: RunInfo, stage: StageInfo, control: Control, epochs: int = EPOCHS) -> None:
    hook.kdframe_on_stage_start(run=run, stage=stage, control=control)
    step = 0
    for epoch in range(epochs):
        state = TrainState(epoch=epoch, step=step, batches_per_epoch=BATCHES, best_test_acc=0.0)
        hook.kdframe_on_epoch_start(run=run, stage=stage, state=state, control=control)
        for batch in range(BATCHES):
            state.batch, state.samples = batch, SAMPLES
            hook.kdframe_on_batch_start(run=run, stage=stage, state=state, control=control)
            step += 1
            state.step = step
            state.metrics = {"loss": batch_loss(stage, step), "loss/cross_entropy": 0.75, "lr": 0.125}
            hook.kdframe_on_batch_end(run=run, stage=stage, state=state, control=control)
        state.metrics = {"test/acc": epoch_metrics(stage, epoch)["test/acc"], "test/loss": 1.0}
        hook.kdframe_on_eval_end(run=run, stage=stage, state=state, control=control)
        state.metrics = epoch_metrics(stage, epoch)
        state.best_test_acc = max(state.best_test_acc, state.metrics["test/acc"])
        hook.kdframe_on_epoch_end(run=run, stage=stage, state=state, control=control)


def drive_run(plugins: Plugins, run: RunInfo) -> None:
    """The documented event order for a whole run, through the hook relay."""
    hook, control = plugins.hook, Control()
    hook.kdframe_on_run_start(run=run, control=control)
    results = []
    for stage in run.stages:
        run_stage_epochs(hook, run, stage, control)
        result = make_result(stage)
        results.append(result)
        hook.kdframe_on_stage_end(run=run, stage=stage, result=result, control=control)
    hook.kdframe_on_run_end(run=run, results=results)


def make_logger(plugins: Plugins, run_folder: Path, **params) -> TensorBoardLogger:
    spec = plugins.registry.spec("logger", "tensorboard")
    logger = spec.factory(spec.params.model_validate(params), run_folder)
    plugins.register_for_run(logger, "tb-run")
    return logger


def load(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in acc.Scalars(tag)]


def text(acc: EventAccumulator, tag: str) -> str:
    (event,) = acc.Tensors(tag)
    return event.tensor_proto.string_val[0].decode()


def writer_threads() -> set[int]:
    """Ids of live TensorBoard event-writer threads (one per open writer; they hold the file)."""
    return {id(t) for t in threading.enumerate() if type(t).__name__ == "_AsyncWriterThread" and t.is_alive()}


def assert_scalars(acc: EventAccumulator, tag: str, steps: list[int], values: list[float]) -> None:
    points = scalars(acc, tag)
    assert [step for step, _ in points] == steps, tag
    assert [value for _, value in points] == pytest.approx(values, rel=1e-6), tag


# -- tests ------------------------------------------------------------------------------------------


@pytest.fixture
def plugins() -> Plugins:
    return make_plugins()


@pytest.fixture
def finished_run(plugins: Plugins, tmp_path: Path) -> tuple[Path, RunInfo]:
    run = make_run(tmp_path)
    before = writer_threads()
    make_logger(plugins, tmp_path, batch_every=2)
    drive_run(plugins, run)
    plugins.unregister("tb-run")
    assert writer_threads() <= before  # every writer was closed
    return tmp_path / "tensorboard", run


def test_registered_with_documented_params(plugins: Plugins) -> None:
    spec = plugins.registry.spec("logger", "tensorboard")
    assert spec.params is TensorBoardParams
    assert spec.summary
    defaults = TensorBoardParams()
    assert defaults.batch_every == 50
    assert defaults.flush_secs == 30.0
    for name, field in TensorBoardParams.model_fields.items():
        assert field.description, name
    with pytest.raises(ValidationError):
        TensorBoardParams(batch_every=-1)
    with pytest.raises(ValidationError):
        TensorBoardParams(flush_secs=0)
    with pytest.raises(ValidationError):
        TensorBoardParams.model_validate({"batch_evry": 1})


def test_one_folder_per_stage(finished_run: tuple[Path, RunInfo]) -> None:
    root, _ = finished_run
    assert sorted(p.name for p in root.iterdir()) == ["00-teacher", "01-student"]
    for folder in root.iterdir():
        assert [p.name for p in folder.iterdir() if p.is_dir()] == []  # no hparams sub-run
        assert any(p.name.startswith("events.out.tfevents") for p in folder.iterdir())


def test_epoch_scalars(finished_run: tuple[Path, RunInfo]) -> None:
    root, run = finished_run
    for stage in run.stages:
        acc = load(root / f"{stage.index:02d}-{stage.name}")
        steps = [epoch + 1 for epoch in range(EPOCHS)]
        for key in EPOCH_KEYS:
            values = [epoch_metrics(stage, epoch)[key] for epoch in range(EPOCHS)]
            assert_scalars(acc, key, steps, values)
        # The running best: its last value is what the HParams tab shows as the selected accuracy.
        assert_scalars(acc, "test/best_acc", steps, [epoch_metrics(stage, e)["test/acc"] for e in range(EPOCHS)])
        assert "val/best_acc" not in acc.Tags()["scalars"]  # no validation split here
        assert not [tag for tag in acc.Tags()["scalars"] if tag.startswith("hparam/")]  # no one-point charts


def test_batch_scalars_every_n_steps(finished_run: tuple[Path, RunInfo]) -> None:
    root, run = finished_run
    stage = run.stages[1]
    acc = load(root / "01-student")
    steps = list(range(2, EPOCHS * BATCHES + 1, 2))
    assert_scalars(acc, "batch/loss", steps, [batch_loss(stage, s) for s in steps])
    assert_scalars(acc, "batch/lr", steps, [0.125] * len(steps))
    assert_scalars(acc, "batch/loss/cross_entropy", steps, [0.75] * len(steps))


def test_batch_scalars_off(plugins: Plugins, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    make_logger(plugins, tmp_path, batch_every=0)
    drive_run(plugins, run)
    acc = load(tmp_path / "tensorboard" / "00-teacher")
    tags = acc.Tags()["scalars"]
    assert not [tag for tag in tags if tag.startswith("batch/")]
    assert "train/loss" in tags


def test_schedule_and_stage_text(finished_run: tuple[Path, RunInfo]) -> None:
    root, _ = finished_run
    for name in ("00-teacher", "01-student"):
        acc = load(root / name)
        assert set(acc.PluginTagToContent("text")) == {"schedule", "stage"}
        schedule = text(acc, "schedule")
        assert schedule.startswith("```json\n") and schedule.endswith("\n```")
        assert '"name": "takd"' in schedule and '"epochs": 2' in schedule
    stage = text(load(root / "01-student"), "stage")
    assert "Stage 2/2: student" in stage
    assert "`plain_cnn_small`" in stage and "`teacher`" in stage
    assert "| `kd` | 0.5 |" in stage and "temperature" in stage
    assert "trained from labels" in text(load(root / "00-teacher"), "stage")


def test_hparams_in_stage_folder(finished_run: tuple[Path, RunInfo]) -> None:
    root, run = finished_run
    for stage in run.stages:
        acc = load(root / f"{stage.index:02d}-{stage.name}")
        content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
        # No experiment summary: TensorBoard builds it from every session under the log directory.
        assert set(content) == {hparams_metadata.SESSION_START_INFO_TAG, hparams_metadata.SESSION_END_INFO_TAG}
        start = hparams_metadata.parse_session_start_info_plugin_data(
            content[hparams_metadata.SESSION_START_INFO_TAG]
        )
        values = {key: getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()}
        # Floats stay numbers; integers and booleans become text (TensorBoard would show 2 as 2.0).
        expected = {
            key: ("true" if v else "false") if isinstance(v, bool) else str(v) if isinstance(v, int) else v
            for key, v in stage.hparams.items()
        }
        assert values == {**expected, "result/wall_time_s": make_result(stage).wall_time_s}
        assert values["epochs"] == "2" and values["lr"] == stage.hparams["lr"]


def test_tensorboard_builds_one_table_from_the_sessions(finished_run: tuple[Path, RunInfo]) -> None:
    """TensorBoard's own HParams backend reads the run: every hparam of every stage is a column, the
    metrics are the curves' last values, and no hparam/* metric exists."""
    from tensorboard import context
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    root, run = finished_run
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(root))
    multiplexer.Reload()
    provider = MultiplexerDataProvider(multiplexer, str(root))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(root), multiplexer=multiplexer, data_provider=provider))
    request = context.RequestContext()
    experiment = backend.experiment_from_metadata(
        request, "", True, backend.hparams_metadata(request, ""), backend.hparams_from_data_provider(request, "", limit=None)
    )
    columns = {info.name: info for info in experiment.hparam_infos}
    assert set(columns) == {"arch", "lr", "epochs", "distilled", "temperature", "result/wall_time_s"}
    assert sorted(columns["arch"].domain_discrete) == ["plain_cnn", "plain_cnn_small"]
    assert columns["arch"].differs and not columns["epochs"].differs
    metrics = {info.name.tag for info in experiment.metric_infos}
    assert {"test/acc", "test/best_acc", "train/loss"} <= metrics
    assert not [tag for tag in metrics if tag.startswith("hparam/")]


def test_closed_on_exception(plugins: Plugins, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    before = writer_threads()
    logger = make_logger(plugins, tmp_path)
    stage = run.stages[0]
    run_stage_epochs(plugins.hook, run, stage, Control(), epochs=1)
    assert logger.is_open
    assert len(writer_threads() - before) == 1  # the stage's writer
    plugins.hook.kdframe_on_exception(run=run, stage=stage, error=RuntimeError("boom"))
    assert not logger.is_open
    assert writer_threads() <= before
    logger.close()  # a second close is harmless
    plugins.hook.kdframe_on_exception(run=run, stage=None, error=KeyboardInterrupt())
    acc = load(tmp_path / "tensorboard" / "00-teacher")
    assert "RuntimeError: boom" in text(acc, "error")
    assert scalars(acc, "test/acc") == [(1, 50.0)]  # what was logged before the error is kept


def test_exception_between_stages_is_quiet(plugins: Plugins, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    logger = make_logger(plugins, tmp_path)
    plugins.hook.kdframe_on_run_start(run=run, control=Control())
    plugins.hook.kdframe_on_exception(run=run, stage=None, error=ValueError("bad"))
    assert not logger.is_open
    assert not (tmp_path / "tensorboard").exists()


def test_epoch_end_flushes(plugins: Plugins, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    logger = make_logger(plugins, tmp_path, flush_secs=3600)
    run_stage_epochs(plugins.hook, run, run.stages[0], Control(), epochs=1)
    assert logger.is_open
    acc = load(tmp_path / "tensorboard" / "00-teacher")  # readable while the writer is still open
    assert scalars(acc, "train/acc") == [(1, 40.0)]
    logger.close()


def test_unregister_after_run(plugins: Plugins, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    make_logger(plugins, tmp_path)
    drive_run(plugins, run)
    plugins.unregister("tb-run")
    assert plugins.pm.get_plugin("tb-run") is None
    # A second run gets a fresh logger object; nothing is shared between runs.
    second = tmp_path / "second"
    make_logger(plugins, second)
    drive_run(plugins, make_run(second))
    assert sorted(p.name for p in (second / "tensorboard").iterdir()) == ["00-teacher", "01-student"]


def test_the_compression_report_is_in_the_hparams(plugins: Plugins, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    make_logger(plugins, tmp_path)
    stage = run.stages[1]
    compression = {
        "params": 250, "macs": 4000, "size_mb": 0.5, "latency": {"median_ms": 0.25},
        "vs_reference": {"params_x": 4.0, "macs_x": 8.0, "size_x": 4.0, "speedup_x": 2.5, "acc_delta": None},
    }
    result = dataclasses.replace(make_result(stage), compression=compression)
    plugins.hook.kdframe_on_stage_start(run=run, stage=stage, control=Control())
    plugins.hook.kdframe_on_stage_end(run=run, stage=stage, result=result, control=Control())
    acc = load(tmp_path / "tensorboard" / "01-student")
    start = hparams_metadata.parse_session_start_info_plugin_data(
        acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)[hparams_metadata.SESSION_START_INFO_TAG]
    )
    values = {key: value.number_value for key, value in start.hparams.items() if key.startswith("compression/")}
    # acc_delta is unknown here, so it is left out; the figures are columns, not one-point charts.
    assert values == {
        "compression/params": 250.0, "compression/macs": 4000.0, "compression/size_mb": 0.5,
        "compression/latency_ms": 0.25, "compression/params_x": 4.0, "compression/speedup_x": 2.5,
    }
    assert acc.Tags()["scalars"] == []


def test_an_evaluate_stage_gets_its_one_evaluation_as_a_point(plugins: Plugins, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    make_logger(plugins, tmp_path)
    stage = run.stages[1]
    evaluated = dataclasses.replace(make_result(stage), epochs_run=0, best_epoch=0, final_test_acc=61.0, best_test_acc=61.0)
    plugins.hook.kdframe_on_stage_start(run=run, stage=stage, control=Control())
    plugins.hook.kdframe_on_stage_end(run=run, stage=stage, result=evaluated, control=Control())
    acc = load(tmp_path / "tensorboard" / "01-student")
    assert scalars(acc, "test/acc") == [(0, 61.0)] and scalars(acc, "test/best_acc") == [(0, 61.0)]
    # A stage that a hook stopped before its first epoch was never evaluated: no point.
    stopped = dataclasses.replace(make_result(run.stages[0]), epochs_run=0, best_epoch=-1)
    plugins.hook.kdframe_on_stage_start(run=run, stage=run.stages[0], control=Control())
    plugins.hook.kdframe_on_stage_end(run=run, stage=run.stages[0], result=stopped, control=Control())
    assert load(tmp_path / "tensorboard" / "00-teacher").Tags()["scalars"] == []
