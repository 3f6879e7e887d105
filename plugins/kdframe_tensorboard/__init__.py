"""TensorBoard logger for kdframe (first-party plugin).

Registers the ``tensorboard`` logger. For every stage of a run it writes one TensorBoard run,
``<run folder>/tensorboard/<NN>-<stage name>`` (``NN`` is the 0-based stage index, two digits), so
``tensorboard --logdir <run folder>/tensorboard`` shows each stage as a run:

* scalars every epoch, one per key of the epoch-end metrics (``train/loss``, ``train/loss/<term>``,
  ``train/acc``, ``test/acc``, ``test/loss``, ``lr``, ``time/epoch_s``, ``time/samples_per_s``;
  ``val/acc`` and ``val/loss`` when the data has a validation split), and ``test/best_acc``: the
  test accuracy at the best epoch so far (chosen by validation accuracy when there is a validation
  split, then also ``val/best_acc``); step = epoch number counted from 1;
* optionally per-batch scalars ``batch/loss``, ``batch/loss/<term>`` and ``batch/lr`` every
  ``batch_every`` optimizer steps, step = optimizer step in the stage;
* text ``schedule`` (the resolved schedule as JSON) and ``stage`` (student, architecture, teachers,
  losses) at stage start;
* at stage end, an HParams session: the stage's hyper-parameters (architecture and ``model/<param>``,
  optimizer, ``lr``, ``weight_decay``, ``epochs``, ``batch_size``, ``train_samples``, ``precision``,
  ``seed``, loss weights and params; integers and booleans as text, so they read ``3``, not
  ``3.0``), its wall time ``result/wall_time_s`` and, when the run measures its compression report,
  ``compression/params``, ``compression/macs``, ``compression/size_mb``, ``compression/latency_ms``
  (batch 1) and the ratios to the teacher ``compression/params_x``, ``compression/speedup_x`` and
  ``compression/acc_delta``. No experiment summary and no one-point charts are written:
  TensorBoard builds the HParams table from every session under its log directory (so a sweep's
  runs share one table with every hyper-parameter as a column) and reads the metrics from the last
  value of each curve (``test/acc`` is the final accuracy, ``test/best_acc`` the selected one).

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
