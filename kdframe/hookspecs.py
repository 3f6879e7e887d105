"""Every kdframe hook, documented, and the version of the plugin API they form. Nothing else.

Two groups of hooks:

* **Registration hooks** return lists of component specs (see :mod:`kdframe.registry`). They are
  called once each time a plugin manager is created, in plugin registration order, and what they
  return together forms the component registry.
* **Trainer events**, called in this order for every run::

      kdframe_on_run_start
        kdframe_on_stage_start                 (once per stage)
          kdframe_on_progress                  (while a teacher's outputs are cached, before the first epoch)
          kdframe_on_epoch_start               (once per epoch)
            kdframe_on_batch_start / kdframe_on_batch_end   (once per training batch)
            kdframe_on_progress                (while the epoch's evaluation runs)
          kdframe_on_eval_end                  (after the epoch's evaluation on the test split)
          kdframe_on_epoch_end
        kdframe_on_stage_end
      kdframe_on_run_end                       (unless an error ended the run)

  An ``evaluate`` stage (e.g. an ensemble), which only evaluates, gets ``kdframe_on_stage_start``,
  one ``kdframe_on_eval_end`` and ``kdframe_on_stage_end``. ``kdframe_on_exception`` is called instead
  of the remaining events when an error ends the run. Event hooks get plain, serialisable state
  (:mod:`kdframe.state`) and a :class:`~kdframe.state.Control`; they return nothing and must not
  reach into the trainer.

Every hook name starts with ``kdframe_``; a plugin implementing a name that is not declared here is an
error when the plugin manager is created.

The hooks, their arguments and the :mod:`kdframe.state` objects they receive form the plugin API,
versioned by :data:`PLUGIN_API_VERSION`; ``docs/hooks.md`` is generated from this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from kdframe.registry import (
        CurriculumSpec,
        DatasetSpec,
        ExporterSpec,
        LoggerSpec,
        LossSpec,
        LRScheduleSpec,
        ModelSpec,
        OptimizerSpec,
    )
    from kdframe.state import Control, RunInfo, StageInfo, StageResult, TrainState

#: Version of the plugin API (these hooks and the :mod:`kdframe.state` objects), ``"major.minor"``.
#: The major number changes when a hook is removed or renamed, or an argument or a state field is
#: removed or changes meaning; the minor number changes when a hook, argument or field is added.
PLUGIN_API_VERSION = "2.2"

PROJECT_NAME = "kdframe"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------


@hookspec
def kdframe_register_losses() -> list[LossSpec]:
    """Return the loss strategies this plugin provides.

    Called once each time a plugin manager is created (:func:`kdframe.plugins.create_plugins`); the
    names must be unique across all plugins.

    Returns:
        A list of :class:`~kdframe.registry.LossSpec`. Each spec's factory takes the validated params
        and returns a :class:`~kdframe.losses.LossTerm`.
    """


@hookspec
def kdframe_register_models() -> list[ModelSpec]:
    """Return the model architectures this plugin provides.

    Called once each time a plugin manager is created (:func:`kdframe.plugins.create_plugins`); the
    names must be unique across all plugins.

    Returns:
        A list of :class:`~kdframe.registry.ModelSpec`. Each spec's factory
        ``factory(params, data_info)`` returns a classifier ``nn.Module`` whose forward pass maps a
        batch of images to logits; ``data_info`` is a :class:`~kdframe.data.DataInfo`.
    """


@hookspec
def kdframe_register_curricula() -> list[CurriculumSpec]:
    """Return the curricula this plugin provides.

    Called once each time a plugin manager is created (:func:`kdframe.plugins.create_plugins`); the
    names must be unique across all plugins.

    Returns:
        A list of :class:`~kdframe.registry.CurriculumSpec`. Each spec's factory takes the validated
        params and returns a :class:`~kdframe.curriculum.Curriculum`, which turns a schedule into the
        ordered list of stages.
    """


@hookspec
def kdframe_register_datasets() -> list[DatasetSpec]:
    """Return the datasets this plugin provides.

    Called once each time a plugin manager is created (:func:`kdframe.plugins.create_plugins`); the
    names must be unique across all plugins.

    Returns:
        A list of :class:`~kdframe.registry.DatasetSpec`. Each spec's factory takes the validated
        params and returns an :class:`~kdframe.data.InMemoryDataset` (tensors, for data that fits
        in memory) or a :class:`~kdframe.data.StreamingDataset` (read through a ``DataLoader``).
    """


@hookspec
def kdframe_register_loggers() -> list[LoggerSpec]:
    """Return the loggers this plugin provides.

    Called once each time a plugin manager is created (:func:`kdframe.plugins.create_plugins`); the
    names must be unique across all plugins. A logger named in a schedule's ``logging.loggers`` is
    built when its run starts, registered as a plugin for the length of that run and removed after it.

    Returns:
        A list of :class:`~kdframe.registry.LoggerSpec`. Each spec's factory
        ``factory(params, run_folder)`` returns an object whose methods, marked with
        :data:`hookimpl`, implement trainer-event hooks.
    """


@hookspec
def kdframe_register_optimizers() -> list[OptimizerSpec]:
    """Return the optimizers this plugin provides.

    Called once each time a plugin manager is created; the names must be unique across all plugins.
    A schedule names one in ``training.optimizer`` (``{"name": "sgd", "params": {"lr": 0.1}}``).

    Returns:
        A list of :class:`~kdframe.registry.OptimizerSpec`. Each spec's factory
        ``factory(params, param_groups)`` returns a ``torch.optim.Optimizer`` over the torch
        parameter groups it is given; its params model has an ``lr`` field.
    """


@hookspec
def kdframe_register_lr_schedules() -> list[LRScheduleSpec]:
    """Return the learning-rate schedules this plugin provides.

    Called once each time a plugin manager is created; the names must be unique across all plugins.
    A schedule names one in ``training.lr_schedule`` (``{"name": "cosine", "warmup_epochs": 1}``);
    the core applies the linear warm-up, the schedule the decay after it.

    Returns:
        A list of :class:`~kdframe.registry.LRScheduleSpec`. Each spec's factory ``factory(params)``
        returns a :class:`kdframe.optim.LRSchedule`.
    """


@hookspec
def kdframe_register_exporters() -> list[ExporterSpec]:
    """Return the deployment formats this plugin provides for ``kdframe export``.

    Called once each time a plugin manager is created; the names must be unique across all plugins.
    ``kdframe export RUN_DIR --format NAME`` rebuilds a stage's model, exports it with the named
    exporter, loads the artefact in the exporter's runtime and verifies it against eager PyTorch.

    Returns:
        A list of :class:`~kdframe.registry.ExporterSpec`. Each spec's factory ``factory(params)``
        returns a :class:`kdframe.export.Exporter`; set ``supports_int8`` when its ``quantize``
        writes int8 artefacts.
    """


# ---------------------------------------------------------------------------------------------------
# Trainer events
# ---------------------------------------------------------------------------------------------------


@hookspec
def kdframe_on_run_start(run: RunInfo, control: Control) -> None:
    """A run is about to start its first stage.

    Called once, after the schedule is validated, the run folder is made and the run's loggers are
    registered, before the first stage.

    Args:
        run: The run: name, folder, resolved schedule, every stage and the device.
        control: Setting ``stop_run`` ends the run before its first stage (``kdframe_on_run_end``
            is still called, with no results).
    """


@hookspec
def kdframe_on_stage_start(run: RunInfo, stage: StageInfo, control: Control) -> None:
    """A stage is about to start training.

    Called once per stage, after its models are built, its teachers loaded and its optimizer made,
    before its first epoch.

    Args:
        run: The run.
        stage: The stage about to train.
        control: Setting ``stop_stage`` skips the stage's training (its untrained student is saved);
            setting ``stop_run`` also ends the run after this stage.
    """


@hookspec
def kdframe_on_epoch_start(run: RunInfo, stage: StageInfo, state: TrainState, control: Control) -> None:
    """A training epoch is about to start.

    Called at the start of every epoch of a stage, before its first batch.

    Args:
        run: The run.
        stage: The stage being trained.
        state: ``epoch`` is the epoch about to run (0-based); ``metrics`` is empty.
        control: Setting ``stop_stage`` or ``stop_run`` ends the stage before this epoch trains.
    """


@hookspec
def kdframe_on_batch_start(run: RunInfo, stage: StageInfo, state: TrainState, control: Control) -> None:
    """A training batch is about to run.

    Called before every training batch's forward pass.

    Args:
        run: The run.
        stage: The stage being trained.
        state: ``batch`` and ``samples`` describe the batch about to run; ``step`` counts the
            optimizer steps taken so far.
        control: Setting ``stop_stage`` or ``stop_run`` ends the epoch after this batch; the epoch
            is still evaluated.
    """


@hookspec
def kdframe_on_batch_end(run: RunInfo, stage: StageInfo, state: TrainState, control: Control) -> None:
    """A training batch has been learnt from.

    Called after every training batch's optimizer and learning-rate scheduler step.

    Args:
        run: The run.
        stage: The stage being trained.
        state: ``metrics`` holds the batch's weighted total ``loss``, each unweighted
            ``loss/<term>`` and ``lr``; ``step`` includes this batch's step.
        control: Setting ``stop_stage`` or ``stop_run`` ends the epoch now; the epoch is still
            evaluated.
    """


@hookspec
def kdframe_on_eval_end(run: RunInfo, stage: StageInfo, state: TrainState, control: Control) -> None:
    """The student has been evaluated.

    Called after the student is evaluated on the test split at the end of every epoch (and once for
    an ``evaluate`` stage, which only evaluates).

    Args:
        run: The run.
        stage: The stage being trained.
        state: ``metrics`` holds ``test/acc`` (percent) and ``test/loss``; ``best_test_acc``
            includes this evaluation.
        control: Setting ``save_checkpoint`` saves a snapshot of this epoch; setting ``stop_stage``
            or ``stop_run`` ends the stage after this epoch.
    """


@hookspec
def kdframe_on_progress(run: RunInfo, stage: StageInfo, task: str, done: int, total: int) -> None:
    """A long step that is not a training batch is under way (for progress displays).

    Called for the two such steps of a stage: computing a teacher's outputs over the training split
    for the teacher-output cache (``task`` ``"teacher cache: <teacher>"``, after
    ``kdframe_on_stage_start`` and before the first epoch; not called when the outputs are loaded
    from the cache), and evaluating the student on a split (``task`` ``"evaluate test"`` or
    ``"evaluate val"``, before ``kdframe_on_eval_end``). Called with ``done`` 0 when the step starts,
    after every batch of it, and with ``done == total`` when it has finished.

    Args:
        run: The run.
        stage: The stage the step belongs to.
        task: What is being done, as text for a display.
        done: Images processed so far (by this process, under torchrun).
        total: Images the step processes.
    """


@hookspec
def kdframe_on_epoch_end(run: RunInfo, stage: StageInfo, state: TrainState, control: Control) -> None:
    """A training epoch has ended.

    Called at the end of every epoch, after its evaluation and before its snapshot (if any) is saved.

    Args:
        run: The run.
        stage: The stage being trained.
        state: ``metrics`` holds the epoch's training means (``train/loss``, ``train/loss/<term>``,
            ``train/acc``), the test metrics, ``lr``, ``time/epoch_s``, ``time/samples_per_s`` and
            the epoch's scheduled values (``weight/<term>``, ``param/<term>/<name>``).
        control: Setting ``save_checkpoint`` saves a snapshot of this epoch; setting ``stop_stage``
            or ``stop_run`` ends the stage after this epoch.
    """


@hookspec
def kdframe_on_stage_end(run: RunInfo, stage: StageInfo, result: StageResult, control: Control) -> None:
    """A stage has finished and been saved.

    Called once per stage that ran, after its student checkpoint is saved and ``results.json``
    rewritten with its result.

    Args:
        run: The run.
        stage: The finished stage.
        result: Its accuracies, parameter count, wall time and checkpoint path.
        control: A fresh control whose ``stop_run`` is set when a hook stopped the run during the
            stage; setting ``stop_run`` ends the run after this stage.
    """


@hookspec
def kdframe_on_run_end(run: RunInfo, results: list[StageResult]) -> None:
    """The run has finished without an error.

    Called once after the last stage (or after a hook stopped the run), when ``results.json`` has
    been written as finished. Not called when an error ended the run.

    Args:
        run: The run.
        results: One result per stage that ran, in order.
    """


@hookspec
def kdframe_on_exception(run: RunInfo, stage: StageInfo | None, error: BaseException) -> None:
    """An error (or Ctrl-C) is ending the run.

    Called instead of the remaining events when an exception escapes the run, including one raised
    by another hook or a ``KeyboardInterrupt``; the error is re-raised afterwards.

    Args:
        run: The run.
        stage: The stage that was running, or ``None`` when the error came between stages.
        error: The exception.
    """


# ---------------------------------------------------------------------------------------------------
# Checkpoint state (resume)
# ---------------------------------------------------------------------------------------------------


@hookspec
def kdframe_state_dict(run: RunInfo, stage: StageInfo) -> dict[str, Any] | None:
    """Return the state this plugin needs to continue correctly after ``kdframe resume``.

    Called after every epoch, when the stage's full-state checkpoint (``state.pt``) is written. The
    value is stored under the plugin's name and must hold only tensors, numbers, strings, booleans,
    ``None`` and lists/dicts of them (checkpoints are read with ``weights_only=True``). Return
    ``None`` to keep nothing.

    Args:
        run: The run.
        stage: The stage being checkpointed.

    Returns:
        The plugin's state, or ``None``.
    """


@hookspec
def kdframe_load_state_dict(run: RunInfo, stage: StageInfo, state: dict[str, Any]) -> None:
    """Take back the state :func:`kdframe_state_dict` returned, when a run resumes.

    Called once, before ``kdframe_on_stage_start`` of the stage that continues from a checkpoint,
    and only for a plugin (registered under the same name) that saved a state in it.

    Args:
        run: The run.
        stage: The stage that continues.
        state: What this plugin's ``kdframe_state_dict`` returned at the last completed epoch.
    """
