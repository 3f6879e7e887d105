"""The TensorBoard logger: one ``SummaryWriter`` per stage, all state on the logger object."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from pydantic import Field
from tensorboard.plugins.text.summary_v2 import text_pb
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

import kdframe
from kdframe import RunInfo, StageInfo, StageResult, TrainState

#: Sub-folder of the run folder that holds one TensorBoard run per stage.
FOLDER = "tensorboard"
#: Per-epoch curve of the test accuracy at the best epoch so far (selected by validation accuracy when
#: there is a validation split); its last value is the stage's ``best_test_acc``.
BEST_TEST_TAG = "test/best_acc"
#: Per-epoch curve of the highest validation accuracy so far (only with a validation split).
BEST_VAL_TAG = "val/best_acc"

#: Figures of the stage's compression report (when the run measured one), by where they are in it.
#: They are written as HParams columns (``compression/<name>``) beside the hyper-parameters.
COMPRESSION_VALUES = {
    "compression/params": ("params",),
    "compression/macs": ("macs",),
    "compression/size_mb": ("size_mb",),
    "compression/latency_ms": ("latency", "median_ms"),
    "compression/params_x": ("vs_reference", "params_x"),
    "compression/speedup_x": ("vs_reference", "speedup_x"),
    "compression/acc_delta": ("vs_reference", "acc_delta"),
}


def compression_values(compression: dict[str, Any] | None) -> dict[str, float]:
    """The HParams columns of a compression report: size, MACs, latency and ratios to the teacher."""
    values: dict[str, float] = {}
    for tag, path in COMPRESSION_VALUES.items():
        value: Any = compression
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        number = _number(value)
        if number is not None:
            values[tag] = number
    return values


def result_values(result: StageResult) -> dict[str, float]:
    """What a finished stage measured that is not a curve: its wall time and compression figures."""
    return {"result/wall_time_s": float(result.wall_time_s), **compression_values(result.compression)}


class TensorBoardParams(kdframe.Params):
    """Parameters of the ``tensorboard`` logger."""

    batch_every: int = Field(
        50,
        ge=0,
        description="Write the per-batch scalars batch/loss, batch/loss/<term> and batch/lr every this "
        "many optimizer steps (x axis: optimizer step of the stage); 0 writes none.",
    )
    flush_secs: float = Field(
        30.0,
        gt=0.0,
        description="Seconds between background flushes of the event files; they are also flushed "
        "at the end of every epoch and closed at the end of every stage.",
    )


def stage_folder_name(stage: StageInfo) -> str:
    """``<NN>-<stage name>``: the stage's TensorBoard run, sorted in stage order."""
    return f"{stage.index:02d}-{stage.name}"


def schedule_markdown(schedule: dict[str, Any]) -> str:
    """The resolved schedule as pretty JSON in a Markdown code block."""
    return "```json\n" + json.dumps(schedule, indent=2, default=str) + "\n```"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text.replace("|", "\\|").replace("\n", " ")


def stage_markdown(run: RunInfo, stage: StageInfo) -> str:
    """A short Markdown description of a stage: who is trained, by whom, with which losses."""
    teachers = ", ".join(f"`{t}`" for t in stage.teachers) or "none (trained from labels)"
    lines = [
        f"**Stage {stage.index + 1}/{len(run.stages)}: {stage.name}** (run `{run.name}` on `{run.device}`)",
        "",
        "| field | value |",
        "|---|---|",
        f"| student | `{_cell(stage.student)}` |",
        f"| architecture | `{_cell(stage.arch)}` |",
        f"| teachers | {teachers} |",
        f"| epochs | {stage.epochs} |",
        "",
        "| loss | weight | params |",
        "|---|---|---|",
    ]
    for loss in stage.losses:
        name = _cell(loss.get("name", "?"))
        weight = _cell(loss.get("weight", ""))
        params = _cell(loss.get("params") or {})
        lines.append(f"| `{name}` | {weight} | `{params}` |")
    return "\n".join(lines)


def _hparam_value(value: Any) -> float | str | None:
    """A value for TensorBoard's HParams tab: floats as numbers; integers and booleans as text, so
    that a seed reads ``3`` (TensorBoard stores every number as a double and would show ``3.0``) and
    the tab filters them as categories; anything else as JSON text."""
    if value is None or isinstance(value, (float, str)):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def _clean_hparams(hparams: dict[str, Any]) -> dict[str, float | str]:
    cleaned = {str(key): _hparam_value(value) for key, value in hparams.items()}
    return {key: value for key, value in cleaned.items() if value is not None}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


class TensorBoardLogger:
    """Writes each stage of a run to ``<run folder>/tensorboard/<NN>-<stage name>``.

    Registered for one run by the runner. At most one event-file writer is open at a time (the
    current stage's); it is closed at stage end, run end and on an exception.

    Args:
        run_folder: The run folder; event files go to its ``tensorboard`` sub-folder.
        params: Validated :class:`TensorBoardParams` (defaults when omitted).
    """

    def __init__(self, run_folder: str | Path, params: TensorBoardParams | None = None) -> None:
        self.root = Path(run_folder) / FOLDER
        self.params = params or TensorBoardParams()
        self._writer: SummaryWriter | None = None
        self._stage_index: int | None = None

    # -- writers ----------------------------------------------------------------------------------

    def stage_folder(self, stage: StageInfo) -> Path:
        """The folder of a stage's event files."""
        return self.root / stage_folder_name(stage)

    @property
    def is_open(self) -> bool:
        """Whether an event-file writer is open."""
        return self._writer is not None

    def _open(self, stage: StageInfo) -> SummaryWriter:
        if self._writer is not None and self._stage_index == stage.index:
            return self._writer
        self.close()
        self._writer = SummaryWriter(
            log_dir=str(self.stage_folder(stage)), flush_secs=self.params.flush_secs
        )
        self._stage_index = stage.index
        return self._writer

    def close(self) -> None:
        """Flush and close the open writer, if any; calling it again does nothing."""
        writer, self._writer, self._stage_index = self._writer, None, None
        if writer is not None:
            writer.close()

    def _text(self, writer: SummaryWriter, tag: str, markdown: str, step: int = 0) -> None:
        writer.file_writer.add_summary(text_pb(tag, markdown), step)

    # -- trainer events ---------------------------------------------------------------------------

    @kdframe.hookimpl
    def kdframe_on_stage_start(self, run: RunInfo, stage: StageInfo) -> None:
        writer = self._open(stage)
        self._text(writer, "schedule", schedule_markdown(run.schedule))
        self._text(writer, "stage", stage_markdown(run, stage))

    @kdframe.hookimpl
    def kdframe_on_batch_end(self, stage: StageInfo, state: TrainState) -> None:
        every = self.params.batch_every
        if not every or state.step <= 0 or state.step % every:
            return
        writer = self._open(stage)
        for key, value in state.metrics.items():
            number = _number(value)
            if number is not None:
                writer.add_scalar(f"batch/{key}", number, state.step)

    @kdframe.hookimpl
    def kdframe_on_epoch_end(self, stage: StageInfo, state: TrainState) -> None:
        writer = self._open(stage)
        step = state.epoch + 1
        for key, value in state.metrics.items():
            number = _number(value)
            if number is not None:
                writer.add_scalar(key, number, step)
        if "test/acc" in state.metrics:
            writer.add_scalar(BEST_TEST_TAG, float(state.best_test_acc), step)
        if state.best_val_acc is not None:
            writer.add_scalar(BEST_VAL_TAG, float(state.best_val_acc), step)
        writer.flush()

    @kdframe.hookimpl
    def kdframe_on_stage_end(self, stage: StageInfo, result: StageResult) -> None:
        writer = self._open(stage)
        try:
            if result.epochs_run == 0 and result.best_epoch >= 0:
                # An evaluate stage (an ensemble, say) evaluates once and has no epochs: its one
                # evaluation is its curve, at step 0.
                self._write_evaluation(writer, result)
            self._write_hparams(writer, stage, result)
        finally:
            self.close()

    @kdframe.hookimpl
    def kdframe_on_run_end(self) -> None:
        self.close()

    @kdframe.hookimpl
    def kdframe_on_exception(self, stage: StageInfo | None, error: BaseException) -> None:
        try:
            if self._writer is not None and stage is not None and stage.index == self._stage_index:
                # Never let logging hide the error that ended the run.
                with contextlib.suppress(Exception):
                    message = f"{type(error).__name__}: {error}".replace("`", "'")
                    self._text(self._writer, "error", f"The run ended with an error:\n\n`{message}`")
        finally:
            self.close()

    # -- hparams ----------------------------------------------------------------------------------

    def _write_evaluation(self, writer: SummaryWriter, result: StageResult) -> None:
        writer.add_scalar("test/acc", float(result.final_test_acc), 0)
        writer.add_scalar(BEST_TEST_TAG, float(result.best_test_acc), 0)
        if result.final_val_acc is not None:
            writer.add_scalar("val/acc", float(result.final_val_acc), 0)

    def _write_hparams(self, writer: SummaryWriter, stage: StageInfo, result: StageResult) -> None:
        """Write the stage's HParams session (hyper-parameters and result values) into its own folder.

        ``SummaryWriter.add_hparams`` would make a sub-folder (a second run) and one-point
        ``hparam/*`` charts per call. Only the session's start and end summaries are written here, no
        experiment summary: TensorBoard then builds the experiment from every session under its
        log directory (all stages of all runs of a sweep, so every hparam gets a column) and takes
        the metrics from the last value of each stage's curves (``test/acc``: the final accuracy,
        ``test/best_acc``: the accuracy at the best epoch, ``val/*``, ``train/*``).
        """
        values = {**_clean_hparams(stage.hparams), **result_values(result)}
        _, session_start, session_end = hparams_summaries(values, {})
        step = max(int(result.epochs_run), 0)
        for summary in (session_start, session_end):
            writer.file_writer.add_summary(summary, step)
