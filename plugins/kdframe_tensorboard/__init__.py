"""TensorBoard logger for kdframe (first-party plugin).

Registers the ``tensorboard`` logger. For every stage of a run it writes one TensorBoard run,
``<run folder>/tensorboard/<NN>-<stage name>`` (``NN`` is the 0-based stage index, two digits), so
``tensorboard --logdir <run folder>/tensorboard`` shows each stage as a run:

* scalars every epoch, one per key of the epoch-end metrics (``train/loss``, ``train/loss/<term>``,
  ``train/acc``, ``test/acc``, ``test/loss``, ``lr``, ``time/epoch_s``, ``time/samples_per_s``;
  ``val/acc`` and ``val/loss`` when the data has a validation split), step = epoch number counted
  from 1;
* optionally per-batch scalars ``batch/loss``, ``batch/loss/<term>`` and ``batch/lr`` every
  ``batch_every`` optimizer steps, step = optimizer step in the stage;
* text ``schedule`` (the resolved schedule as JSON) and ``stage`` (student, architecture, teachers,
  losses) at stage start;
* at stage end, the stage's hyper-parameters with the metrics ``hparam/final_test_acc``,
  ``hparam/best_test_acc`` (test accuracy at the selected epoch) and ``hparam/wall_time_s`` for
  TensorBoard's HParams tab (with a validation split, also ``hparam/best_val_acc`` and
  ``hparam/final_val_acc``), and, when the
  run measures its compression report, ``hparam/params``, ``hparam/macs``, ``hparam/size_mb``,
  ``hparam/latency_ms`` (batch 1) and the ratios to the teacher ``hparam/params_x``,
  ``hparam/speedup_x`` and ``hparam/acc_delta``.

Schedule example::

    "logging": {"loggers": [{"name": "tensorboard", "params": {"batch_every": 0}}]}
"""

from __future__ import annotations

from pathlib import Path

import kdframe
from kdframe_tensorboard.logger import TensorBoardLogger, TensorBoardParams

__all__ = ["TensorBoardLogger", "TensorBoardParams", "kdframe_register_loggers"]


def _make_logger(params: TensorBoardParams, run_folder: Path) -> TensorBoardLogger:
    return TensorBoardLogger(run_folder, params)


@kdframe.hookimpl
def kdframe_register_loggers() -> list[kdframe.LoggerSpec]:
    return [
        kdframe.LoggerSpec(
            name="tensorboard",
            summary="TensorBoard event files: per-epoch scalars, schedule text and hparams, one run per stage.",
            factory=_make_logger,
            params=TensorBoardParams,
        )
    ]
