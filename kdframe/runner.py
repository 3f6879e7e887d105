"""Runs a whole schedule: validate, plan stages, build and check everything, then train stage by stage.

Everything that can be checked is checked before the first epoch: the schedule's structure, every
component's params, the curriculum's stage plan, the data, every model (with its checkpoint loaded),
and every loss term's layers and adapters (built from a dry run). Only then is the run folder written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError
from torch import nn

from kdframe import checkpoints, distributed, dry_step, folders, history, snapshots, teacher_cache
from kdframe.compression import count_parameters
from kdframe.compression_report import RunCompression
from kdframe.curriculum import StagePlan, make_curriculum, plan_stages
from kdframe.data import AnyDataset, InMemoryDataset, StreamingDataset
from kdframe.errors import ComponentError, DataError, KdframeError, PluginError, ResumeError, RunFolderError, TrainingError
from kdframe.features import FeatureTap
from kdframe.losses import BuildContext
from kdframe.value_schedule import describe_value
from kdframe.optim import check_patterns_match, stage_optimizer
from kdframe.plugins import Plugins, create_plugins
from kdframe.registry import Registry
from kdframe.results import RESULTS_FILE, format_table, write_results
from kdframe.resume import StopSignals, load_stage_state, save_stage_state, schedule_diff, set_rng_state
from kdframe.schedule import (
    DataConfig,
    PluginsConfig,
    format_validation_error,
    Schedule,
    apply_overrides,
    component_params,
    load_json,
    parse_schedule,
    resolved,
    validate_components,
)
from kdframe.seeding import derived_seed, seed_everything
from kdframe.stage_kinds import EVALUATE, PRETRAIN, pretrain_name, trains
from kdframe.state import Control, RunInfo, StageInfo, StageResult
from kdframe.stage_setup import StageSetup, WeightedTerm, trained_parameters
from kdframe.trainer import LoopSettings, StageCallbacks, Trainer

SCHEDULE_FILE = "schedule.json"
#: What each model with a ``weights`` file loaded from it (:class:`kdframe.checkpoints.WeightsReport`).
WEIGHTS_FILE = "weights.json"
#: A stage's weights after its best epoch (``student.pt`` holds those after its last).
BEST_FILE = "best.pt"


@dataclass
class Experiment:
    """A schedule validated in full, with its data, models and stages ready to train."""

    schedule: Schedule
    resolved: dict[str, Any]
    plugins: Plugins
    data: AnyDataset
    models: dict[str, nn.Module]
    stages: list[StagePlan]
    setups: list[StageSetup] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: What each model with ``weights`` loaded from its file, by model key.
    weights: dict[str, checkpoints.WeightsReport] = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    """Resolve ``auto`` to CUDA when available; a CUDA device that is absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KdframeError(
            f"The schedule asks for device '{name}' but PyTorch sees no CUDA device here. Use "
            "\"device\": \"auto\" or \"cpu\"."
        )
    return torch.device(name)


def load_schedule(path: str | Path, overrides: list[str] | None = None, plugins: Plugins | None = None) -> tuple[Schedule, Plugins, dict[str, Any]]:
    """Read, override and validate a schedule file (structure and every component's params)."""
    return validate_raw(load_json(path), overrides, plugins, source=f"Schedule '{path}'")


def validate_raw(
    raw: dict[str, Any], overrides: list[str] | None = None, plugins: Plugins | None = None, *, source: str = "schedule"
) -> tuple[Schedule, Plugins, dict[str, Any]]:
    """Override and validate a schedule given as a dict (as read from JSON); errors name ``source``.
    Returns the schedule, the plugin manager it asks for (``plugins`` when given) and its resolved form."""
    raw = apply_overrides(raw, overrides or [])
    schedule = parse_schedule(raw, source)
    plugins = plugins or plugins_for(schedule.plugins)
    validate_components(schedule, plugins.registry, source)
    return schedule, plugins, resolved(schedule, plugins.registry)


def plugins_for(selection: PluginsConfig) -> Plugins:
    """Build the plugin manager a schedule's ``plugins`` section asks for (environment variables
    add to it; ``skip_broken: false`` leaves ``KDFRAME_SKIP_BROKEN_PLUGINS`` in charge)."""
    return create_plugins(
        allowed=selection.allow,
        blocked=selection.block,
        skip_broken=True if selection.skip_broken else None,
    )


def prepare(schedule: Schedule, plugins: Plugins, resolved_schedule: dict[str, Any]) -> Experiment:
    """Plan the stages and build everything they need; raise before any training on any problem."""
    registry = plugins.registry
    curriculum = make_curriculum(schedule, registry)
    schedule, stages = plan_stages(schedule, curriculum, registry, schedule.curriculum.name)

    seed_everything(schedule.seed)
    data = load_data(schedule, plugins)
    weights: dict[str, checkpoints.WeightsReport] = {}
    models = build_models(schedule, plugins, data, weights)
    snapshots.add_copies(stages, models)
    experiment = Experiment(schedule, resolved_schedule, plugins, data, models, stages, weights=weights)
    setups = [setup for plan in stages for setup in build_stage(experiment, plan)]
    for index, setup in enumerate(setups):
        setup.info = dataclasses.replace(setup.info, index=index)
    experiment.setups = setups
    teacher_cache.check_settings(schedule, setups, data)
    for setup in setups:  # a broken loss fails now, not after the stages before it have trained
        dry_step.check_step(setup, data)
    check_patterns_match([(setup.optimizer, trained_parameters(setup)) for setup in setups if setup.optimizer is not None])
    return experiment


def load_data(schedule: Schedule, plugins: Plugins) -> AnyDataset:
    """Build the schedule's dataset and take the requested subsets."""
    config = schedule.data
    params = component_params(plugins.registry, "dataset", config.dataset, config.params, "data")
    with plugins.registry.component_code("dataset", config.dataset, "its factory"):
        data = plugins.registry.spec("dataset", config.dataset).factory(params)
    if not isinstance(data, (InMemoryDataset, StreamingDataset)):
        raise ComponentError(
            f"Dataset '{config.dataset}' returned {type(data).__name__}, not an InMemoryDataset or a StreamingDataset."
        )
    if data.train_count == 0 or data.test_count == 0:
        raise DataError(f"Dataset '{config.dataset}' has an empty train or test split.")
    data = with_validation(data, config)
    return data.subset(config.train_samples, config.test_samples, schedule.seed)


def with_validation(data: AnyDataset, config: DataConfig) -> AnyDataset:
    """The dataset with the validation split the schedule asks for: the dataset's own (all of it, or
    ``validation_samples`` of it), or carved from the training split with ``validation_seed``
    before ``train_samples`` is taken from the rest."""
    if data.val_count:
        if config.validation_fraction is not None:
            raise DataError(
                f"data.validation_fraction: dataset '{config.dataset}' ships its own validation split "
                f"({data.val_count} samples), which kdframe uses; remove validation_fraction, or give "
                "validation_samples to use only part of it."
            )
        if config.validation_samples is not None:
            return data.subset_validation(config.validation_samples, config.validation_seed)
        return data
    if config.validation_fraction is not None:
        count = int(round(config.validation_fraction * data.train_count))
        field_name = "validation_fraction"
    elif config.validation_samples is not None:
        count, field_name = config.validation_samples, "validation_samples"
    else:
        return data
    if count < 1:
        raise DataError(
            f"data.validation_fraction: {config.validation_fraction:g} of the {data.train_count} training "
            f"samples of '{config.dataset}' is no sample at all; give a larger fraction, or validation_samples."
        )
    if count >= data.train_count:
        raise DataError(
            f"data.{field_name}: holding out {count} of the {data.train_count} training samples of "
            f"'{config.dataset}' as a validation split leaves none to train on; hold out fewer."
        )
    return data.carve_validation(count, config.validation_seed)


def build_models(
    schedule: Schedule, plugins: Plugins, data: AnyDataset, weights: dict[str, checkpoints.WeightsReport] | None = None
) -> dict[str, nn.Module]:
    """Instantiate every model of the schedule and load checkpoints and weights files (what each
    weights file loaded goes into ``weights``, by model key).

    Each model's initial weights depend only on the seed, the model's name and its weights file.
    """
    return {key: build_model(schedule, plugins, data, key, weights=weights) for key in schedule.models}


def build_model(
    schedule: Schedule,
    plugins: Plugins,
    data: AnyDataset,
    key: str,
    *,
    load_checkpoint: bool = True,
    weights: dict[str, checkpoints.WeightsReport] | None = None,
) -> nn.Module:
    """Instantiate the schedule's model ``key`` (seeded by the run's seed and the model's name) and,
    unless ``load_checkpoint`` is false, load its ``checkpoint`` or the fitting tensors of its
    ``weights`` file (the report of which goes into ``weights``)."""
    config = schedule.models[key]
    spec = plugins.registry.spec("model", config.arch)
    params = component_params(plugins.registry, "model", config.arch, config.params, f"models.{key}")
    torch.manual_seed(derived_seed(schedule.seed, f"model:{key}"))
    try:
        with plugins.registry.component_code("model", config.arch, f"its factory (models.{key})"):
            model = spec.factory(params, data.info)
    except PluginError as error:
        cause = error.__cause__
        if not isinstance(cause, (ValueError, TypeError, RuntimeError)):
            raise
        # Usually params that do not fit the data (too deep for the image size, say).
        raise ComponentError(
            f"models.{key}: architecture '{config.arch}' could not be built with these params for "
            f"data of shape {data.info.in_channels}x{data.info.image_size[0]}x{data.info.image_size[1]}: {cause}"
        ) from cause
    if load_checkpoint and config.checkpoint is not None:
        checkpoints.load_into(model, config.checkpoint, label=f"model '{key}' ({config.arch})", expected_arch=config.arch)
    if load_checkpoint and config.weights is not None:
        report = checkpoints.load_matching(model, config.weights, label=f"model '{key}' ({config.arch})")
        if weights is not None:
            weights[key] = report
    return model


def _term_labels(names: list[str]) -> list[str]:
    counts = Counter(names)
    seen: Counter[str] = Counter()
    labels = []
    for name in names:
        seen[name] += 1
        labels.append(name if counts[name] == 1 else f"{name}.{seen[name]}")
    return labels


def build_stage(experiment: Experiment, plan: StagePlan) -> list[StageSetup]:
    """Build a stage's loss terms, tap their layers and build adapters from a dry run.

    Returns the stage's setup, preceded by a pre-training phase when one of its terms declares one.
    """
    schedule, registry = experiment.schedule, experiment.plugins.registry
    if plan.kind == EVALUATE:
        return [evaluate_stage(experiment, plan)]
    student = experiment.models[plan.student]
    teachers = [experiment.models[key] for key in plan.teachers]
    labels = _term_labels([loss.name for loss in plan.losses])
    terms = []
    for label, loss in zip(labels, plan.losses):
        params = component_params(registry, "loss", loss.name, loss.params, f"stage '{plan.stage_name}' loss '{loss.name}'")
        with registry.component_code("loss", loss.name, "its factory"):
            term = registry.spec("loss", loss.name).factory(params)
        terms.append(WeightedTerm(label, loss.weight, term, registry.get("loss", loss.name).provider.describe()))
    student_paths = [path for weighted in terms for path in weighted.term.student_layers]
    teacher_paths = [path for weighted in terms for path in weighted.term.teacher_layers]
    arch = schedule.models[plan.student].arch
    student_tap = FeatureTap(student, student_paths, f"student '{plan.student}' ({arch})") if student_paths else None
    teacher_tap = None
    if teacher_paths:
        first = plan.teachers[0]
        teacher_tap = FeatureTap(teachers[0], teacher_paths, f"teacher '{first}' ({schedule.models[first].arch})")

    student_shapes: dict[str, torch.Size] = {}
    teacher_shapes: dict[str, torch.Size] = {}
    if student_tap or teacher_tap:
        sample = experiment.data.sample_images(2)
        with torch.no_grad():
            # Eval mode so that no BatchNorm statistics change; the teacher may still be trained by
            # an earlier stage, so it is not frozen here.
            for model in (student, *teachers[:1]):
                was_training = model.training
                model.eval()
                model(sample)
                model.train(was_training)
        student_shapes = {k: v.shape for k, v in (student_tap.take() if student_tap else {}).items()}
        teacher_shapes = {k: v.shape for k, v in (teacher_tap.take() if teacher_tap else {}).items()}
    training = schedule.training.for_stage(plan.stage_name)
    for weighted, loss in zip(terms, plan.losses):
        with registry.component_code("loss", loss.name, f"build() in stage '{plan.stage_name}'"):
            weighted.term.build(
                BuildContext(
                    student_shapes={p: student_shapes[p] for p in weighted.term.student_layers},
                    teacher_shapes={p: teacher_shapes[p] for p in weighted.term.teacher_layers},
                    student_modules={p: student_tap.modules[p] for p in weighted.term.student_layers} if student_tap else {},
                    teacher_modules={p: teacher_tap.modules[p] for p in weighted.term.teacher_layers} if teacher_tap else {},
                    num_train_samples=experiment.data.train_count,
                    num_classes=len(experiment.data.classes),
                    epochs=training.epochs,
                )
            )

    info = StageInfo(
        index=0,
        name=plan.stage_name,
        student=plan.student,
        arch=arch,
        teachers=tuple(plan.teachers),
        epochs=training.epochs,
        losses=tuple(loss.model_dump(mode="json") for loss in plan.losses),
        hparams=stage_hparams(schedule, plan, training, registry),
        folder="",
    )
    setups = []
    provider = f"curriculum '{schedule.curriculum.name}' ({registry.get('curriculum', schedule.curriculum.name).provider.describe()})"
    pretraining = [weighted for weighted in terms if weighted.term.pretrain_epochs > 0]
    if pretraining:
        epochs = max(weighted.term.pretrain_epochs for weighted in pretraining)
        name = pretrain_name(plan.stage_name)
        pre_training = schedule.training.for_stage(name).model_copy(update={"epochs": epochs})
        pre_info = dataclasses.replace(
            info,
            name=name,
            epochs=epochs,
            losses=tuple({"name": w.name, "phase": PRETRAIN} for w in pretraining),
            hparams={**info.hparams, "epochs": epochs, "phase": PRETRAIN},
        )
        setups.append(
            StageSetup(
                pre_info,
                student,
                teachers,
                pretraining,
                student_tap,
                teacher_tap,
                pre_training,
                PRETRAIN,
                init_from=plan.init_from,
                optimizer=stage_optimizer(pre_training, registry, f"training.stages.{name}"),
            )
        )
    setups.append(
        StageSetup(
            info,
            student,
            teachers,
            terms,
            student_tap,
            teacher_tap,
            training,
            snapshots=plan.snapshots,
            teacher_policy=plan.teacher_policy,
            policy_provider=provider,
            init_from=None if pretraining else plan.init_from,  # the pre-training phase starts from it
            optimizer=stage_optimizer(training, registry, "training"),
        )
    )
    return setups


def evaluate_stage(experiment: Experiment, plan: StagePlan) -> StageSetup:
    """A stage that only evaluates the model the curriculum builds from existing models."""
    schedule, registry = experiment.schedule, experiment.plugins.registry
    inputs = [experiment.models[key] for key in plan.teachers]
    assert plan.build is not None  # check_plan refuses an evaluate stage without one
    with registry.component_code("curriculum", schedule.curriculum.name, f"build() of stage '{plan.stage_name}'"):
        model = plan.build(inputs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"build() returned {type(model).__name__}, not a torch.nn.Module")
    training = schedule.training.for_stage(plan.stage_name)
    info = StageInfo(
        index=0,
        name=plan.stage_name,
        student=plan.student,
        arch=plan.arch or type(model).__name__,
        teachers=tuple(plan.teachers),
        epochs=0,
        losses=(),
        hparams={"members": ",".join(plan.teachers), "dataset": schedule.data.dataset, "seed": schedule.seed},
        folder="",
    )
    return StageSetup(info, model, inputs, [], None, None, training, kind=EVALUATE)


def stage_hparams(schedule: Schedule, plan: StagePlan, training: Any, registry: Registry) -> dict[str, Any]:
    """Flat hyper-parameters of a stage for loggers."""
    optimizer = component_params(registry, "optimizer", training.optimizer.name, training.optimizer.params, "training.optimizer")
    model = schedule.models[plan.student]
    model_params = component_params(registry, "model", model.arch, model.params, f"models.{plan.student}")
    hparams: dict[str, Any] = {
        "student": plan.student,
        "arch": model.arch,
        "teachers": ",".join(plan.teachers) or "-",
        "epochs": training.epochs,
        "optimizer": training.optimizer.name,
        "lr": getattr(optimizer, "lr", None),
        "weight_decay": getattr(optimizer, "weight_decay", None),
        "batch_size": schedule.data.batch_size,
        "train_samples": "all" if schedule.data.train_samples is None else schedule.data.train_samples,
        "precision": training.precision,
        "seed": schedule.seed,
        "dataset": schedule.data.dataset,
    }
    for key, value in model_params.model_dump(mode="json").items():
        if isinstance(value, (str, int, float, bool)):
            hparams[f"model/{key}"] = value
    for label, loss in zip(_term_labels([loss.name for loss in plan.losses]), plan.losses):
        hparams[f"loss/{label}/weight"] = loss.weight if isinstance(loss.weight, float) else describe_value(loss.weight)
        # The validated params (a temperature written as 4 is the float 4.0), defaults included.
        params = component_params(registry, "loss", loss.name, loss.params, f"stage '{plan.stage_name}' loss").model_dump(mode="json")
        for key, value in params.items():
            if isinstance(value, (str, int, float, bool)):
                hparams[f"loss/{label}/{key}"] = value
    return hparams


def make_run_folder(schedule: Schedule, out: str | Path | None) -> Path:
    """Create the run folder; refuse one that already holds files, so no earlier result is lost."""
    return folders.claim(Path(out) if out is not None else folders.default_folder(schedule.name), "run")


def execute(
    experiment: Experiment,
    folder: Path,
    *,
    quiet: bool = False,
    finished: dict[str, dict[str, Any]] | None = None,
) -> list[StageResult]:
    """Train every stage of a prepared experiment, writing into ``folder``; return the results.

    ``finished`` (when resuming) maps the names of stages that already finished to their rows of
    ``results.json``: those stages are restored from their folders instead of trained, and the first
    other stage continues from its last saved epoch.
    """
    schedule, plugins = experiment.schedule, experiment.plugins
    device = distributed.local_device(pick_device(schedule.device))
    distributed.init_from_env(device)  # under torchrun (a no-op when run_schedule joined already)
    experiment.device = device
    resuming = finished is not None
    main = distributed.is_main()  # with several processes only rank 0 writes files and logs
    if not resuming and main:
        folders.write_text_atomic(folder / SCHEDULE_FILE, json.dumps(experiment.resolved, indent=2) + "\n")
        if experiment.weights:
            reports = {key: report.to_dict() for key, report in experiment.weights.items()}
            folders.write_text_atomic(folder / WEIGHTS_FILE, json.dumps(reports, indent=2) + "\n")
    if main and not quiet:
        for key, report in experiment.weights.items():
            print(report.summary(f"models.{key}"))
    data = experiment.data.to(device)
    for model in experiment.models.values():
        model.to(device)
    for setup in experiment.setups:
        for weighted in setup.terms:
            weighted.term.to(device)
        if setup.training.channels_last:
            setup.student.to(memory_format=torch.channels_last)
            for teacher in setup.teachers:
                teacher.to(memory_format=torch.channels_last)
    restore_batchnorm = distributed.sync_batchnorm(experiment.models.values(), distributed.current())

    stage_infos = []
    for setup in experiment.setups:
        stage_folder = folder / "stages" / f"{setup.info.index:02d}-{setup.info.name}"
        setup.info = dataclasses.replace(setup.info, folder=str(stage_folder))
        stage_infos.append(setup.info)
    run = RunInfo(schedule.name, str(folder), experiment.resolved, tuple(stage_infos), str(device))

    logger_names = []
    for index, ref in enumerate(schedule.logging.loggers if main else []):
        if quiet and ref.name == "progress":
            continue
        spec = plugins.registry.spec("logger", ref.name)
        logger_params = component_params(plugins.registry, "logger", ref.name, ref.params, f"logging.loggers[{index}]")
        with plugins.registry.component_code("logger", ref.name, "its factory"):
            logger = spec.factory(logger_params, folder)
        name = f"run-logger-{index}-{ref.name}"
        plugins.register_for_run(logger, name)
        logger_names.append(name)

    results: list[StageResult] = []
    current: StageInfo | None = None
    stop_signals = StopSignals()
    compression = RunCompression(
        schedule.compression, experiment.models, experiment.setups, data, device, schedule.data.eval_batch_size
    )
    try:
        control = Control()
        plugins.hook.kdframe_on_run_start(run=run, control=control)
        for setup in experiment.setups:
            if control.stop_run:
                break
            if resuming and setup.info.name in finished:
                restore_finished_stage(experiment, setup)
                results.append(stage_result_from_row(finished[setup.info.name]))
                compression.record(results[-1])
                continue
            current = setup.info
            with stop_signals.installed(), deterministic_algorithms(schedule.deterministic):
                result, stop_run = run_stage(
                    experiment, setup, run, folder, data, device, resume=resuming, stop_requested=stop_signals
                )
            resuming = False  # only the first unfinished stage continues from a saved state
            if main:  # one process times the model, so that others do not skew its timings
                result = dataclasses.replace(result, compression=compression.stage_report(result, setup.student))
            results.append(result)
            if main:
                write_results(folder, schedule.name, results, finished=False)
            stage_control = Control(stop_run=stop_run)
            plugins.hook.kdframe_on_stage_end(run=run, stage=setup.info, result=result, control=stage_control)
            control.stop_run = stage_control.stop_run
            current = None
        if main:
            write_results(folder, schedule.name, results, finished=True)
        plugins.hook.kdframe_on_run_end(run=run, results=results)
    except BaseException as error:
        plugins.hook.kdframe_on_exception(run=run, stage=current, error=error)
        raise
    finally:
        restore_batchnorm()
        for setup in experiment.setups:
            for tap in (setup.student_tap, setup.teacher_tap):
                if tap is not None:
                    tap.remove()
        for name in logger_names:
            plugins.unregister(name)
    return results


def run_stage(
    experiment: Experiment,
    setup: StageSetup,
    run: RunInfo,
    folder: Path,
    data: AnyDataset,
    device: torch.device,
    *,
    resume: bool = False,
    stop_requested: Callable[[], str | None] = lambda: None,
) -> tuple[StageResult, bool]:
    """Train (or, for an evaluate stage, evaluate) one stage, save its student and snapshots; return its
    result and whether a hook asked to stop the run.

    The global random generators are seeded from the run's seed and the stage's name, so a stage
    trains the same whatever ran before it. After every epoch the stage's full state is saved to
    ``state.pt`` in its folder; with ``resume`` the stage continues from that state when it exists.
    """
    schedule, plugins = experiment.schedule, experiment.plugins
    started = time.perf_counter()
    stage_folder = Path(setup.info.folder)
    stage_folder.mkdir(parents=True, exist_ok=True)
    seed_everything(derived_seed(schedule.seed, f"stage:{setup.info.name}"))
    saved = load_stage_state(stage_folder, setup.info.name) if resume and trains(setup.kind) else None
    if saved is not None:
        set_rng_state(saved["rng"])
        restore_plugin_state(plugins, run, setup.info, saved["plugins"])
    elif setup.init_from is not None:  # start from another model's weights (a saved state has its own)
        setup.student.load_state_dict(experiment.models[setup.init_from].state_dict())
    key = setup.info.student
    save: Any = None
    arch_label = ""
    if key in schedule.models:
        arch_label = model_label(plugins.registry, schedule.models[key].arch, schedule.models[key].params)
    if trains(setup.kind):
        model_config = schedule.models[key]
        params = component_params(plugins.registry, "model", model_config.arch, model_config.params, "")

        def save(path: Path, model: nn.Module) -> None:
            if not distributed.is_main():
                return
            checkpoints.save_model(path, model, key=key, arch=model_config.arch, params=params.model_dump(mode="json"))

    taken: set[int] = set()

    def snapshot(model: nn.Module, epoch: int) -> Path:
        path = snapshots.snapshot_file(stage_folder, epoch)
        save(path, model)
        snapshots.keep(experiment.models, key, epoch, model)
        taken.add(epoch)
        return path

    if saved is not None:
        # Snapshots taken before the interruption: reload the copies later stages use.
        done = saved["trainer"]["epochs_done"]
        present = [e for e in setup.snapshots if e <= done and snapshots.snapshot_file(stage_folder, e).is_file()]
        snapshots.reload(experiment.models, stage_folder, key, present)
        taken.update(present)

    def save_state(trainer_state: dict[str, Any]) -> None:
        if not distributed.is_main():
            return
        save_stage_state(stage_folder, setup.info.name, trainer_state, collect_plugin_state(plugins, run, setup.info))

    best_file = stage_folder / BEST_FILE

    def save_best(model: nn.Module, epoch: int) -> None:
        save(best_file, model)

    settings = LoopSettings(
        device, schedule.data.batch_size, schedule.data.eval_batch_size, schedule.seed, schedule.data.num_workers
    )
    callbacks = StageCallbacks(
        save_snapshot=snapshot,
        save_best=save_best if save is not None else None,
        save_state=save_state if trains(setup.kind) else None,
        resume_state=saved["trainer"] if saved is not None else None,
        stop_requested=stop_requested,
    )
    trainer = Trainer(setup, data, run, plugins.hook, settings, callbacks)
    outcome = trainer.train()
    missing = sorted(set(setup.snapshots) - taken)
    if missing:
        raise TrainingError(
            f"Stage '{setup.info.name}' ended after {outcome.epochs_run} epoch(s), before the snapshot "
            f"of epoch(s) {missing} that a later stage learns from."
        )
    checkpoint = stage_folder / "student.pt"
    if save is not None:
        save(checkpoint, setup.student)
    if distributed.is_main():
        history.write_history(stage_folder, outcome.history)
    result = StageResult(
        stage=setup.info.name,
        model=key,
        arch=setup.info.arch,
        teachers=setup.info.teachers,
        epochs=setup.info.epochs,
        epochs_run=outcome.epochs_run,
        final_test_acc=round(outcome.final_test_acc, 4),
        best_test_acc=round(outcome.best_test_acc, 4),
        best_epoch=outcome.best_epoch,
        params=count_parameters(setup.student),
        wall_time_s=round(time.perf_counter() - started, 3),
        checkpoint=os.path.relpath(checkpoint, folder) if save is not None else "",
        collapsed=outcome.collapsed,
        skipped_batches=outcome.skipped_batches,
        selected_by="val" if outcome.best_val_acc is not None else "test",
        final_val_acc=None if outcome.final_val_acc is None else round(outcome.final_val_acc, 4),
        best_val_acc=None if outcome.best_val_acc is None else round(outcome.best_val_acc, 4),
        best_checkpoint=os.path.relpath(best_file, folder) if save is not None and best_file.is_file() else "",
        arch_label=arch_label,
    )
    return result, outcome.stop_run


def model_label(registry: Registry, arch: str, params: dict[str, Any]) -> str:
    """The architecture as results tables show it (its spec's ``label``), or "" for its name."""
    spec = registry.spec("model", arch)
    label = getattr(spec, "label", None)
    if label is None:
        return ""
    try:
        with registry.component_code("model", arch, "its label"):
            return str(label(component_params(registry, "model", arch, params, "")))
    except PluginError:
        return ""


def restore_finished_stage(experiment: Experiment, setup: StageSetup) -> None:
    """Load what a stage that finished before an interruption left: its student (``student.pt``),
    its loss terms' modules (``state.pt``) and its snapshots, for the stages that follow."""
    stage_folder = Path(setup.info.folder)
    if not trains(setup.kind):
        return
    key = setup.info.student
    label = f"model '{key}' (stage '{setup.info.name}')"
    checkpoints.load_into(setup.student, stage_folder / "student.pt", label=label, expected_arch=setup.info.arch)
    saved = load_stage_state(stage_folder, setup.info.name)
    if saved is not None:
        for weighted in setup.terms:
            weighted.term.load_state_dict(saved["trainer"]["terms"][weighted.name])
    if setup.kind == PRETRAIN:
        for weighted in setup.terms:
            weighted.term.end_pretraining()
    snapshots.reload(experiment.models, stage_folder, key, setup.snapshots)


def stage_result_from_row(row: dict[str, Any], source: str = RESULTS_FILE) -> StageResult:
    """A :class:`StageResult` read back from a row of ``results.json``; a row that lacks a field or
    holds a value of the wrong type is a :class:`RunFolderError` naming ``source`` and the fields."""
    names = {f.name for f in dataclasses.fields(StageResult)}
    values = {name: value for name, value in row.items() if name in names}
    try:
        return _STAGE_RESULT.validate_python(values)
    except ValidationError as error:
        stage = row.get("stage") if isinstance(row.get("stage"), str) else "?"
        problems = "; ".join(format_validation_error(error))
        raise RunFolderError(
            f"'{source}' has a damaged row for stage '{stage}' ({problems}). kdframe only ever replaces "
            "that file atomically, so it was changed by hand: restore it, or remove that stage's row "
            "(and the rows after it) to train those stages again."
        ) from None


_STAGE_RESULT = TypeAdapter(StageResult)


def collect_plugin_state(plugins: Plugins, run: RunInfo, stage: StageInfo) -> dict[str, Any]:
    """What each event-hook plugin wants kept in a stage checkpoint, by plugin name."""
    return plugins.call_each("kdframe_state_dict", run=run, stage=stage)


def restore_plugin_state(plugins: Plugins, run: RunInfo, stage: StageInfo, states: dict[str, Any]) -> None:
    """Hand each plugin back the state it gave :func:`collect_plugin_state`."""
    for name, state in states.items():
        plugins.call_each("kdframe_load_state_dict", only=[name], run=run, stage=stage, state=state)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Within the block, only deterministic algorithms (``deterministic: true``)."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[1], previous[2]


def run_schedule(
    path: str | Path,
    *,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    quiet: bool = False,
    plugins: Plugins | None = None,
) -> tuple[Path, list[StageResult]]:
    """Validate, prepare and run a schedule file; return the run folder and the stage results."""
    return run_raw(load_json(path), overrides=overrides, out=out, quiet=quiet, plugins=plugins, source=f"Schedule '{path}'")


def run_raw(
    raw: dict[str, Any],
    *,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    quiet: bool = False,
    plugins: Plugins | None = None,
    source: str = "schedule",
) -> tuple[Path, list[StageResult]]:
    """:func:`run_schedule` for a schedule given as a dict (errors name ``source``)."""
    schedule, plugins, resolved_schedule = validate_raw(raw, overrides, plugins, source=source)
    experiment = prepare(schedule, plugins, resolved_schedule)
    # Under torchrun: join the process group; rank 0 claims the run folder and tells the others.
    env = distributed.init_from_env(pick_device(schedule.device))
    folder = distributed.broadcast_object(make_run_folder(schedule, out) if env.is_main else None)
    with folders.exclusive_lock(folder) if env.is_main else contextlib.nullcontext():
        results = execute(experiment, folder, quiet=quiet)
    return folder, results


def resume_run(
    folder: str | Path,
    *,
    schedule_path: str | Path | None = None,
    overrides: list[str] | None = None,
    force: bool = False,
    quiet: bool = False,
    plugins: Plugins | None = None,
) -> tuple[Path, list[StageResult]]:
    """Continue an interrupted run in its own folder: finished stages are restored, not re-run, and
    the unfinished stage continues from its last completed epoch.

    The run continues with the schedule it started with (``schedule.json`` in the folder). A schedule
    file or overrides that change it are refused, with the list of changes, unless ``force``.
    """
    folder = Path(folder)
    stored_path = folder / SCHEDULE_FILE
    if not stored_path.is_file() and (folder / "sweep.json").is_file():
        raise RunFolderError(
            f"'{folder}' is a sweep folder, not a run folder. Continue the sweep with: kdframe sweep --join {folder}"
        )
    if not stored_path.is_file():
        raise RunFolderError(
            f"'{folder}' is not a kdframe run folder (it has no {SCHEDULE_FILE}). Give the folder that "
            "'kdframe run' printed as 'Run folder:'."
        )
    folders.refuse_links(folder)
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 alone locks and writes
    with folders.exclusive_lock(folder) if main else contextlib.nullcontext():
        if main:
            folders.remove_leftovers(folder, recursive=True)  # temporary files of a killed process
        return _resume_locked(folder, stored_path, schedule_path, overrides, force, quiet, plugins, main)


def resume_in_folder(folder: Path, *, quiet: bool = False, plugins: Plugins | None = None) -> list[StageResult]:
    """Continue the unfinished run in ``folder``, which the caller has locked
    (:func:`kdframe.folders.exclusive_lock`), with the schedule it started with; return its results."""
    folders.remove_leftovers(folder, recursive=True)  # temporary files of a killed process
    return _resume_locked(folder, folder / SCHEDULE_FILE, None, None, False, quiet, plugins, True)[1]


def start_in_folder(folder: Path, raw: dict[str, Any], plugins: Plugins, *, quiet: bool = False, source: str = "schedule") -> list[StageResult]:
    """Validate the raw schedule ``raw`` (errors name ``source``) and run it in ``folder``, which the
    caller has locked (a sweep's or a study's worker); return its results."""
    schedule = parse_schedule(raw, source)
    validate_components(schedule, plugins.registry, source)
    experiment = prepare(schedule, plugins, resolved(schedule, plugins.registry))
    return execute(experiment, make_run_folder(schedule, folder), quiet=quiet)


def _resume_locked(
    folder: Path,
    stored_path: Path,
    schedule_path: str | Path | None,
    overrides: list[str] | None,
    force: bool,
    quiet: bool,
    plugins: Plugins | None,
    main: bool,
) -> tuple[Path, list[StageResult]]:
    """:func:`resume_run` once the run folder is checked and locked."""
    stored = load_json(stored_path)
    previous = read_results(folder)
    if previous.get("finished"):
        raise RunFolderError(
            f"The run in '{folder}' already finished; there is nothing to resume. Start a new run with "
            "'kdframe run' (with --out to choose its folder)."
        )
    source = Path(schedule_path) if schedule_path is not None else stored_path
    schedule, plugins, resolved_schedule = load_schedule(source, overrides, plugins)
    changes = schedule_diff(_current_form(stored, plugins), resolved_schedule)
    if changes and not force:
        listing = "\n".join(f"  - {line}" for line in changes[:20])
        more = f"\n  ... and {len(changes) - 20} more" if len(changes) > 20 else ""
        raise ResumeError(
            f"The schedule differs from the one the run in '{folder}' started with ({len(changes)} "
            f"change(s)):\n{listing}{more}\nResume without --schedule/--set to continue as it started, "
            "or add --force to continue with the changed schedule (earlier stages keep their results)."
        )
    experiment = prepare(schedule, plugins, resolved_schedule)
    names = {setup.info.name for setup in experiment.setups}
    rows = [row for row in previous.get("stages", []) if isinstance(row, dict)]
    finished = {stage_result_from_row(row, str(folder / RESULTS_FILE)).stage: row for row in rows}
    unknown = sorted(set(finished) - names)
    if unknown:
        raise ResumeError(
            f"results.json in '{folder}' lists finished stage(s) {unknown} that the schedule no longer "
            "has. Resume with the schedule the run started with."
        )
    folders.check_writable(folder, folders.MIN_FREE_BYTES)
    if changes and main:
        number = len(list(folder.glob("schedule.before-resume-*.json"))) + 1
        folders.write_text_atomic(folder / f"schedule.before-resume-{number}.json", stored_path.read_text())
        folders.write_text_atomic(stored_path, json.dumps(resolved_schedule, indent=2) + "\n")
    return folder, execute(experiment, folder, quiet=quiet, finished=finished)


def _current_form(stored: dict[str, Any], plugins: Plugins) -> dict[str, Any]:
    """A run's stored schedule resolved again, so that one written by an earlier kdframe (whose
    resolved form listed other keys, e.g. every LR schedule's params) differs from the current one
    only where its meaning does; as stored when it no longer validates."""
    try:
        schedule = parse_schedule(stored)
        validate_components(schedule, plugins.registry)
        return resolved(schedule, plugins.registry)
    except KdframeError:
        return stored


def read_results(folder: Path) -> dict[str, Any]:
    """``results.json`` of a run folder (an empty, unfinished one when it was never written)."""
    path = folder / RESULTS_FILE
    if not path.exists():
        return {"finished": False, "stages": []}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(
            f"'{path}' cannot be read ({error}). It is only ever replaced atomically, so the file was "
            "changed by hand; restore it, or delete it to re-run every stage."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("stages", []), list):
        raise RunFolderError(f"'{path}' is not a kdframe results file. Restore it, or delete it to re-run every stage.")
    return data


__all__ = ["RESULTS_FILE", "format_table", "load_schedule", "prepare", "run_schedule", "resume_run", "execute"]
