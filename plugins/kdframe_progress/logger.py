"""The progress logger: tqdm bars and short status lines on standard error."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Literal, TextIO

from pydantic import Field
from tqdm import tqdm

import kdframe
from kdframe import RunInfo, StageInfo, StageResult, TrainState


class ProgressParams(kdframe.Params):
    """Parameters of the ``progress`` logger."""

    bar: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Show a tqdm bar per epoch: 'auto' when standard error is a terminal, "
        "'always', or 'never'.",
    )
    epoch_lines: bool = Field(
        True,
        description="Print one summary line per epoch (losses, accuracies, time); the stage start "
        "and stage end lines are always printed.",
    )
    line_every_s: float = Field(
        30.0,
        ge=0.0,
        description="Without a bar (standard error is not a terminal, e.g. a log file or a batch "
        "job): print a progress line every this many seconds inside a long epoch, evaluation or "
        "teacher-cache build (batches done, running loss, elapsed and estimated time left); 0 "
        "prints none.",
    )


def _loss(value: float) -> str:
    return f"{value:.3f}" if value == 0 or 0.01 <= abs(value) < 1e5 else f"{value:.2e}"


def _pct(value: float) -> str:
    return f"{value:.1f}%"


class ProgressLogger:
    """Reports a run's progress on a text stream (standard error by default).

    Args:
        params: Validated :class:`ProgressParams` (defaults when omitted).
        stream: Where to write; ``None`` means ``sys.stderr`` as it is when each line is written.
    """

    def __init__(
        self, params: ProgressParams | None = None, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.params = params or ProgressParams()
        self._stream = stream
        self._clock = clock
        self._bar: tqdm | None = None
        self._task: str | None = None  # the task the bar or the periodic lines are about
        self._loss_sum = 0.0
        self._loss_samples = 0
        self._started = 0.0  # when the epoch or task began (clock seconds)
        self._last_line = 0.0  # when the last periodic line was printed

    @property
    def stream(self) -> TextIO:
        """The stream lines and bars are written to."""
        return self._stream if self._stream is not None else sys.stderr

    def bars_enabled(self) -> bool:
        """Whether epochs get a tqdm bar (for ``bar='auto'``: the stream is a terminal)."""
        if self.params.bar != "auto":
            return self.params.bar == "always"
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty and isatty())
        except (OSError, ValueError):  # closed or detached stream
            return False

    def write(self, line: str) -> None:
        """Write one line, above the bar when one is shown."""
        if self._bar is not None:
            tqdm.write(line, file=self.stream)
            return
        stream = self.stream
        stream.write(line + "\n")
        stream.flush()

    def close_bar(self) -> None:
        """Remove the epoch's or task's bar, if any."""
        bar, self._bar = self._bar, None
        self._task = None
        if bar is not None:
            bar.close()

    def _line_due(self) -> bool:
        """Whether a periodic line is due (``line_every_s`` since the last one); resets the wait."""
        every = self.params.line_every_s
        if not every:
            return False
        now = self._clock()
        if now - self._last_line < every:
            return False
        self._last_line = now
        return True

    def _periodic(self, text: str, done: int, total: int) -> None:
        """Print ``text`` with the time taken and left (call it when :meth:`_line_due`)."""
        now = self._last_line
        elapsed = now - self._started
        parts = [text, f"{elapsed:.0f} s"]
        if 0 < done < total:
            parts.append(f"~{elapsed * (total - done) / done:.0f} s left")
        self.write("  ".join(parts))

    def _mean_loss(self) -> str:
        return f"loss {_loss(self._loss_sum / self._loss_samples)}"

    def _begin(self) -> None:
        self._started = self._last_line = self._clock()

    # -- trainer events ---------------------------------------------------------------------------

    @kdframe.hookimpl
    def kdframe_on_stage_start(self, run: RunInfo, stage: StageInfo) -> None:
        self.close_bar()
        total = max(len(run.stages), stage.index + 1)
        source = f"taught by {', '.join(stage.teachers)}" if stage.teachers else "trained from labels"
        epochs = f"{stage.epochs} epoch" + ("" if stage.epochs == 1 else "s")
        self.write(f"stage {stage.index + 1}/{total}: {stage.name} ({stage.arch}) {source}, {epochs}")

    @kdframe.hookimpl
    def kdframe_on_epoch_start(self, stage: StageInfo, state: TrainState) -> None:
        self.close_bar()
        self._loss_sum, self._loss_samples = 0.0, 0
        self._begin()
        if not self.bars_enabled():
            return
        self._bar = tqdm(
            total=state.batches_per_epoch or None,
            desc=f"{stage.name} epoch {state.epoch + 1}/{stage.epochs}",
            unit="batch",
            leave=False,
            file=self.stream,
            dynamic_ncols=True,
        )

    @kdframe.hookimpl
    def kdframe_on_batch_end(self, stage: StageInfo, state: TrainState) -> None:
        loss = state.metrics.get("loss")
        if loss is not None:
            samples = state.samples if state.samples > 0 else 1
            self._loss_sum += float(loss) * samples
            self._loss_samples += samples
        bar = self._bar
        if bar is None:
            if self._line_due():
                done, total = state.batch + 1, state.batches_per_epoch
                where = f"batch {done}/{total} ({100 * done / total:.0f}%)" if total else f"batch {done}"
                text = f"[{stage.name}] epoch {state.epoch + 1}/{stage.epochs}  {where}"
                self._periodic(f"{text}  {self._mean_loss()}" if self._loss_samples else text, done, total)
            return
        if self._loss_samples:
            bar.set_postfix_str(self._mean_loss(), refresh=False)
        done = state.batch + 1 - bar.n
        bar.update(done if done > 0 else 1)

    @kdframe.hookimpl
    def kdframe_on_progress(self, stage: StageInfo, task: str, done: int, total: int) -> None:
        if done <= 0 or self._task != task:
            # A new task: it replaces the epoch's bar (the epoch's line follows the evaluation).
            self.close_bar()
            self._task = task
            self._begin()
            if self.bars_enabled():
                self._bar = tqdm(
                    total=total or None,
                    desc=f"{stage.name} {task}",
                    unit="img",
                    leave=False,
                    file=self.stream,
                    dynamic_ncols=True,
                )
        if self._bar is not None:
            self._bar.update(max(done - self._bar.n, 0))
        elif done > 0 and self._line_due():
            share = f" ({100 * done / total:.0f}%)" if total else ""
            self._periodic(f"[{stage.name}] {task}: {done}/{total} images{share}", done, total)
        if total and done >= total:
            self.close_bar()

    @kdframe.hookimpl
    def kdframe_on_epoch_end(self, stage: StageInfo, state: TrainState) -> None:
        self.close_bar()
        if not self.params.epoch_lines:
            return
        metrics = state.metrics
        parts = [f"[{stage.name}] epoch {state.epoch + 1}/{stage.epochs}"]
        if "train/loss" in metrics:
            parts.append(f"train loss {_loss(metrics['train/loss'])}")
        if "train/acc" in metrics:
            parts.append(f"train acc {_pct(metrics['train/acc'])}")
        if "val/acc" in metrics:
            parts.append(f"val acc {_pct(metrics['val/acc'])}")
        if "test/acc" in metrics:
            parts.append(f"test acc {_pct(metrics['test/acc'])}")
        timing = []
        if "time/epoch_s" in metrics:
            timing.append(f"{metrics['time/epoch_s']:.1f} s")
        if "time/samples_per_s" in metrics:
            timing.append(f"{metrics['time/samples_per_s']:.0f} samples/s")
        if timing:
            parts.append(f"({', '.join(timing)})")
        self.write("  ".join(parts))

    @kdframe.hookimpl
    def kdframe_on_stage_end(self, stage: StageInfo, result: StageResult) -> None:
        self.close_bar()
        parts = [
            f"[{stage.name}] done: final test acc {_pct(result.final_test_acc)}",
            (
                f"best val acc {_pct(result.best_val_acc)} at epoch {result.best_epoch} (test acc there "
                f"{_pct(result.best_test_acc)})"
                if result.best_val_acc is not None and result.best_epoch >= 1
                else f"best {_pct(result.best_test_acc)}" + (f" at epoch {result.best_epoch}" if result.best_epoch >= 1 else "")
            ),
            f"({result.wall_time_s:.1f} s)",
        ]
        if result.epochs_run < result.epochs:
            parts.append(f"stopped after {result.epochs_run}/{result.epochs} epochs")
        if result.collapsed:
            split = "validation" if result.best_val_acc is not None else "test"
            parts.append(f"WARNING: collapsed ({split} accuracy at chance level)")
        self.write("  ".join(parts))

    @kdframe.hookimpl
    def kdframe_on_run_end(self) -> None:
        self.close_bar()

    @kdframe.hookimpl
    def kdframe_on_exception(self) -> None:
        self.close_bar()
