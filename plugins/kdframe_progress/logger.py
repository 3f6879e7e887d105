"""The progress logger: tqdm bars and short status lines on standard error."""

from __future__ import annotations

import sys
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

    def __init__(self, params: ProgressParams | None = None, stream: TextIO | None = None) -> None:
        self.params = params or ProgressParams()
        self._stream = stream
        self._bar: tqdm | None = None
        self._loss_sum = 0.0
        self._loss_samples = 0

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
        """Remove the epoch's bar, if any."""
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()

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
    def kdframe_on_batch_end(self, state: TrainState) -> None:
        bar = self._bar
        if bar is None:
            return
        loss = state.metrics.get("loss")
        if loss is not None:
            samples = state.samples if state.samples > 0 else 1
            self._loss_sum += float(loss) * samples
            self._loss_samples += samples
            bar.set_postfix_str(f"loss {_loss(self._loss_sum / self._loss_samples)}", refresh=False)
        done = state.batch + 1 - bar.n
        bar.update(done if done > 0 else 1)

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
