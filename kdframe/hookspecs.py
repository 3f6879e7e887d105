"""Every kdframe hook, documented. Nothing else lives here.

Two groups of hooks:

* **Registration hooks** return lists of component specs (see :mod:`kdframe.registry`). They are
  called once when the plugin manager is created.
* **Trainer events**, called in this order for every run::

      kdframe_on_run_start
        kdframe_on_stage_start                 (once per stage)
          kdframe_on_epoch_start               (once per epoch)
            kdframe_on_batch_start / kdframe_on_batch_end   (once per training batch)
          kdframe_on_eval_end                  (after the epoch's evaluation on the test split)
          kdframe_on_epoch_end
        kdframe_on_stage_end
      kdframe_on_run_end                       (only when every stage finished)

  ``kdframe_on_exception`` is called instead of the remaining events when an error ends the run.
  Event hooks get plain, serialisable state (:mod:`kdframe.state`) and a :class:`~kdframe.state.Control`;
  they return nothing and must not reach into the trainer.

Every hook name starts with ``kdframe_``; a plugin implementing a name that is not declared here is an
error when the plugin manager is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from kdframe.registry import CurriculumSpec, DatasetSpec, LoggerSpec, LossSpec, ModelSpec
    from kdframe.state import Control, RunInfo, StageInfo, StageResult, TrainState

PROJECT_NAME = "kdframe"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------


@hookspec
def kdframe_register_losses() -> list[LossSpec]:
    """Return the loss strategies this plugin provides.

    Called once when the plugin manager is built. Each :class:`~kdframe.registry.LossSpec` names a
    factory that takes the validated params and returns a :class:`~kdframe.losses.LossTerm`.
    """


@hookspec
def kdframe_register_models() -> list[ModelSpec]:
    """Return the model architectures this plugin provides.

    Called once when the plugin manager is built. Each :class:`~kdframe.registry.ModelSpec` names a
    factory ``factory(params, data_info)`` returning a classifier ``nn.Module`` whose forward pass maps
    a batch of images to logits; ``data_info`` is a :class:`~kdframe.data.DataInfo`.
    """


@hookspec
def kdframe_register_curricula() -> list[CurriculumSpec]:
    """Return the curricula this plugin provides.

    Called once when the plugin manager is built. Each :class:`~kdframe.registry.CurriculumSpec`
    names a factory taking validated params and returning a :class:`~kdframe.curriculum.Curriculum`,
    which turns a schedule into the ordered list of stages.
    """


@hookspec
def kdframe_register_datasets() -> list[DatasetSpec]:
    """Return the datasets this plugin provides.

    Called once when the plugin manager is built. Each :class:`~kdframe.registry.DatasetSpec` names a
    factory taking validated params and returning a :class:`~kdframe.data.InMemoryDataset`.
    """


@hookspec
def kdframe_register_loggers() -> list[LoggerSpec]:
    """Return the loggers this plugin provides.

    Called once when the plugin manager is built. Each :class:`~kdframe.registry.LoggerSpec` names a
    factory ``factory(params, run_folder)`` returning an object whose methods implement trainer-event
    hooks; the runner registers that object for the length of one run.
    """


# ---------------------------------------------------------------------------------------------------
# Trainer events
# ---------------------------------------------------------------------------------------------------


@hookspec
def kdframe_on_run_start(run: RunInfo, control: Control) -> None:
    """Called once, after the schedule is validated and the run folder is made, before any stage.

    Args:
        run: The run: name, folder, resolved schedule, every stage and the device.
        control: Setting ``stop_run`` ends the run before its first stage.
    """


@hookspec
def kdframe_on_stage_start(run: RunInfo, stage: StageInfo, control: Control) -> None:
    """Called when a stage begins, after its models are built and its teachers loaded.

    Args:
        run: The run.
        stage: The stage about to train.
        control: Setting ``stop_stage`` skips the stage's training (its untrained student is saved).
    """


@hookspec
def kdframe_on_epoch_start(run: RunInfo, stage: StageInfo, state: TrainState, control: Control) -> None:
    """Called at the start of every training epoch.

    Args:
        run: The run.
        stage: The stage being trained.
        state: ``epoch`` is the epoch about to run (0-based).
        control: Flags to stop the stage or the run.
    """


@hookspec
def kdframe_on_batch_start(run: RunInfo, stage: StageInfo, state: TrainState, control: Control) -> None:
    """Called before every training batch's forward pass.

    Args:
        run: The run.
        stage: The stage being trained.
        state: ``batch`` and ``samples`` describe the batch about to run.
        control: Flags to stop the stage or the run.
    """


@hookspec
def kdframe_on_batch_end(run: RunInfo, stage: StageInfo, state: TrainState, control: Control) -> None:
    """Called after every training batch's optimizer step.

    Args:
        run: The run.
        stage: The stage being trained.
        state: ``metrics`` holds the batch's ``loss``, each ``loss/<term>`` (unweighted) and ``lr``.
        control: Flags to stop the stage or the run.
    """


@hookspec
def kdframe_on_eval_end(run: RunInfo, stage: StageInfo, state: TrainState, control: Control) -> None:
    """Called after the student is evaluated on the test split at the end of every epoch.

    Args:
        run: The run.
        stage: The stage being trained.
        state: ``metrics`` holds ``test/acc`` (percent) and ``test/loss``.
        control: Flags to stop the stage or the run, or to save a snapshot of this epoch.
    """


@hookspec
def kdframe_on_epoch_end(run: RunInfo, stage: StageInfo, state: TrainState, control: Control) -> None:
    """Called at the end of every epoch, after evaluation.

    Args:
        run: The run.
        stage: The stage being trained.
        state: ``metrics`` holds the epoch's training means, the test metrics, ``lr``,
            ``time/epoch_s`` and ``time/samples_per_s``.
        control: Flags to stop the stage or the run, or to save a snapshot of this epoch.
    """


@hookspec
def kdframe_on_stage_end(run: RunInfo, stage: StageInfo, result: StageResult, control: Control) -> None:
    """Called when a stage has finished and its student checkpoint is saved.

    Args:
        run: The run.
        stage: The finished stage.
        result: Its accuracies, parameter count, wall time and checkpoint path.
        control: Setting ``stop_run`` ends the run after this stage.
    """


@hookspec
def kdframe_on_run_end(run: RunInfo, results: list[StageResult]) -> None:
    """Called once after the last stage, when ``results.json`` has been written.

    Args:
        run: The run.
        results: One result per stage that ran, in order.
    """


@hookspec
def kdframe_on_exception(run: RunInfo, stage: StageInfo | None, error: BaseException) -> None:
    """Called when an error (or Ctrl-C) ends the run; the error is re-raised afterwards.

    Args:
        run: The run.
        stage: The stage that was running, or ``None`` when the error came between stages.
        error: The exception.
    """
