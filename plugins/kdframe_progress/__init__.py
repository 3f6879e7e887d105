"""Console progress logger for kdframe (first-party plugin).

Registers the ``progress`` logger. It writes to standard error:

* one line when a stage starts: ``stage 2/3: assistant (plain_cnn) taught by teacher, 3 epochs``
  (``trained from labels`` when the stage has no teacher);
* a tqdm bar per epoch over the training batches with the stage name, ``epoch i/n`` and the running
  mean loss, when standard error is a terminal (param ``bar``); the bar is cleared at epoch end;
  likewise a bar over the images while the student is evaluated (``student evaluate test``) and while
  a teacher's outputs are computed for the teacher-output cache (``student teacher cache: teacher``);
* without a terminal (a log file, a batch job), a line every ``line_every_s`` seconds (default 30)
  inside a long epoch, evaluation or cache build, e.g.
  ``[student] epoch 1/5  batch 120/469 (26%)  loss 0.412  31 s  ~90 s left``;
* one line per epoch (param ``epoch_lines``):
  ``[assistant] epoch 2/3  train loss 0.412  train acc 85.1%  test acc 86.0%  (12.3 s, 4870 samples/s)``;
* one line when a stage ends: ``[assistant] done: final test acc 86.0%  best 86.4% at epoch 2  (36.9 s)``, with
  ``stopped after i/n epochs`` when it ended early and a warning when it collapsed.

Schedule example::

    "logging": {"loggers": [{"name": "progress", "params": {"bar": "never"}}]}
"""

from __future__ import annotations

from pathlib import Path

import kdframe
from kdframe_progress.logger import ProgressLogger, ProgressParams

__all__ = ["ProgressLogger", "ProgressParams", "kdframe_register_loggers"]


def _make_logger(params: ProgressParams, run_folder: Path) -> ProgressLogger:
    # The run folder is not used: this logger only writes to standard error.
    return ProgressLogger(params)


@kdframe.hookimpl
def kdframe_register_loggers() -> list[kdframe.LoggerSpec]:
    return [
        kdframe.LoggerSpec(
            name="progress",
            summary="Progress on standard error: a tqdm bar per epoch and one line per epoch and stage.",
            factory=_make_logger,
            params=ProgressParams,
        )
    ]
