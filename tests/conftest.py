"""Shared fixtures: schedules on synthetic data and a hook recorder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdframe import hookimpl
from kdframe.schedule import apply_overrides


def tiny_schedule(**changes: Any) -> dict[str, Any]:
    """A fast TA-chain schedule on synthetic data; ``changes`` are dotted ``--set`` style overrides."""
    schedule: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "device": "cpu",
        "data": {
            "dataset": "synthetic",
            "params": {"num_classes": 4, "image_size": 16, "train_size": 128, "test_size": 64},
            "batch_size": 32,
            "eval_batch_size": 64,
        },
        "models": {
            "teacher": {"arch": "plain_cnn", "params": {"depth": 4}},
            "assistant": {"arch": "plain_cnn", "params": {"depth": 4, "width_multiplier": 0.5}},
            "student": {"arch": "plain_cnn", "params": {"depth": 2}},
        },
        "training": {"epochs": 2, "lr_schedule": {"warmup_epochs": 0.5}},
        "curriculum": {
            "name": "ta_chain",
            "params": {"teacher": "teacher", "assistants": ["assistant"], "student": "student"},
        },
        "logging": {"loggers": [{"name": "tensorboard"}]},
    }
    return apply_overrides(schedule, [f"{key}={json.dumps(value)}" for key, value in changes.items()])


def write_schedule(folder: Path, schedule: dict[str, Any], name: str = "schedule.json") -> Path:
    """Write a schedule dict as a JSON file and return its path."""
    path = folder / name
    path.write_text(json.dumps(schedule, indent=2))
    return path


class HookRecorder:
    """A plugin that records every trainer event it receives, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **details: Any) -> None:
        self.calls.append((event, details))

    @hookimpl
    def kdframe_on_run_start(self, run, control) -> None:
        self._record("run_start", stages=len(run.stages))

    @hookimpl
    def kdframe_on_stage_start(self, run, stage, control) -> None:
        self._record("stage_start", stage=stage.name)

    @hookimpl
    def kdframe_on_epoch_start(self, run, stage, state, control) -> None:
        self._record("epoch_start", stage=stage.name, epoch=state.epoch)

    @hookimpl
    def kdframe_on_batch_start(self, run, stage, state, control) -> None:
        self._record("batch_start", stage=stage.name, epoch=state.epoch, batch=state.batch)

    @hookimpl
    def kdframe_on_batch_end(self, run, stage, state, control) -> None:
        self._record("batch_end", stage=stage.name, epoch=state.epoch, batch=state.batch, metrics=dict(state.metrics))

    @hookimpl
    def kdframe_on_eval_end(self, run, stage, state, control) -> None:
        self._record("eval_end", stage=stage.name, epoch=state.epoch, metrics=dict(state.metrics))

    @hookimpl
    def kdframe_on_epoch_end(self, run, stage, state, control) -> None:
        self._record("epoch_end", stage=stage.name, epoch=state.epoch, metrics=dict(state.metrics))

    @hookimpl
    def kdframe_on_stage_end(self, run, stage, result, control) -> None:
        self._record("stage_end", stage=stage.name, acc=result.final_test_acc)

    @hookimpl
    def kdframe_on_run_end(self, run, results) -> None:
        self._record("run_end", stages=len(results))

    @hookimpl
    def kdframe_on_exception(self, run, stage, error) -> None:
        self._record("exception", stage=stage.name if stage else None, error=type(error).__name__)

    def events(self, *, batches: bool = True) -> list[str]:
        """The event names, optionally without batch events."""
        return [name for name, _ in self.calls if batches or not name.startswith("batch")]


@pytest.fixture
def recorder() -> HookRecorder:
    return HookRecorder()
