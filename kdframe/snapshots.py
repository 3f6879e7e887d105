"""Snapshots: copies of a model after chosen epochs of the stage that trains it.

A stage asks for snapshots with ``StagePlan.snapshots`` (1-based epochs). After each of those epochs
the student is saved as ``epoch-N.pt`` in the stage's folder and, when a later stage names
``model@N`` (as a teacher, a model an evaluate stage builds on, or ``init_from``), loaded into that
stage's copy of the model. Any plugin may request them: early-stopped teachers learn from one,
a route of stages may follow several.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path

from torch import nn

from kdframe import checkpoints
from kdframe.curriculum import StagePlan, snapshot_key, split_snapshot


def snapshot_file(stage_folder: Path, epoch: int) -> Path:
    """Where a stage keeps its snapshot after ``epoch``."""
    return stage_folder / f"epoch-{epoch}.pt"


def referenced(stages: Sequence[StagePlan]) -> set[str]:
    """The snapshot names (``model@N``) that the stages learn from, build on or start from."""
    keys = {key for stage in stages for key in (*stage.teachers, stage.init_from or "")}
    return {key for key in keys if split_snapshot(key)[1] is not None}


def add_copies(stages: Sequence[StagePlan], models: dict[str, nn.Module]) -> None:
    """Add a copy of the model for every snapshot the stages refer to; it is loaded when the snapshot
    is taken (or, on resume, from its file)."""
    for key in sorted(referenced(stages)):
        if key not in models:
            models[key] = copy.deepcopy(models[split_snapshot(key)[0]])


def keep(models: dict[str, nn.Module], student: str, epoch: int, model: nn.Module) -> None:
    """Load ``model`` (``student`` after ``epoch``) into the copy a later stage uses, if there is one."""
    copy_key = snapshot_key(student, epoch)
    if copy_key in models:
        models[copy_key].load_state_dict(model.state_dict())


def reload(models: dict[str, nn.Module], stage_folder: Path, student: str, epochs: Iterable[int]) -> None:
    """Load a stage's saved snapshots into the copies later stages use (after an interruption)."""
    for epoch in epochs:
        copy_key = snapshot_key(student, epoch)
        if copy_key in models:
            checkpoints.load_into(models[copy_key], snapshot_file(stage_folder, epoch), label=f"snapshot '{copy_key}'")
