"""A stage's outcome and its full state after an epoch: saved to ``state.pt``, restored on resume."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from kdframe.stage_setup import StageSetup


@dataclass
class StageOutcome:
    """What the trainer reports about a finished stage.

    ``best_epoch`` is the selected epoch: the highest validation accuracy when there is a validation
    split (``best_val_acc``), else the highest test accuracy; ``best_test_acc`` is the test accuracy
    at that epoch. ``final_*`` are the last epoch's.
    """

    epochs_run: int
    final_test_acc: float
    best_test_acc: float
    best_epoch: int
    collapsed: bool
    stop_run: bool
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_batches: int = 0
    final_val_acc: float | None = None
    best_val_acc: float | None = None


def checkpoint(
    setup: StageSetup,
    epochs_done: int,
    step: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    outcome: StageOutcome,
) -> dict[str, Any]:
    """The stage's full state after ``epochs_done`` epochs (``step`` optimizer steps): enough to
    continue bit for bit."""
    return {
        "epochs_done": epochs_done,
        "step": step,
        "student": setup.student.state_dict(),
        "terms": {weighted.name: weighted.term.state_dict() for weighted in setup.terms},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "outcome": {
            "final_test_acc": outcome.final_test_acc,
            "best_test_acc": outcome.best_test_acc,
            "best_epoch": outcome.best_epoch,
            "final_val_acc": outcome.final_val_acc,
            "best_val_acc": outcome.best_val_acc,
            "collapsed": outcome.collapsed,
            "skipped_batches": outcome.skipped_batches,
            "history": outcome.history,
        },
    }


def restore(
    setup: StageSetup,
    saved: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    outcome: StageOutcome,
) -> tuple[int, int]:
    """Load a state written by :func:`checkpoint` into the stage, its optimizer and scheduler and
    ``outcome``; return the epochs done (the epoch to continue from) and the optimizer steps taken."""
    setup.student.load_state_dict(saved["student"])
    for weighted in setup.terms:
        weighted.term.load_state_dict(saved["terms"][weighted.name])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    kept = saved["outcome"]
    outcome.final_test_acc = float(kept["final_test_acc"])
    outcome.best_test_acc = float(kept["best_test_acc"])
    outcome.best_epoch = int(kept["best_epoch"])
    # A state saved before validation splits existed has neither.
    outcome.final_val_acc = None if kept.get("final_val_acc") is None else float(kept["final_val_acc"])
    outcome.best_val_acc = None if kept.get("best_val_acc") is None else float(kept["best_val_acc"])
    outcome.collapsed = bool(kept["collapsed"])
    outcome.skipped_batches = int(kept["skipped_batches"])
    outcome.history = [dict(row) for row in kept["history"]]
    outcome.epochs_run = int(saved["epochs_done"])
    return int(saved["epochs_done"]), int(saved["step"])
