"""Runs a whole schedule: validate, plan stages, build and check everything, then train stage by stage.

Everything that can be checked is checked before the first epoch: the schedule's structure, every
component's params, the curriculum's stage plan, the data, every model (with its checkpoint loaded),
and every loss term's layers and adapters (built from a dry run). Only then is the run folder written.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdframe import checkpoints, folders
from kdframe.curriculum import StagePlan, check_plan, snapshot_key, split_snapshot, with_extra_models
from kdframe.ensemble import SoftmaxEnsemble
from kdframe.data import InMemoryDataset
from kdframe.errors import ComponentError, DataError, KdframeError, TrainingError
from kdframe.features import FeatureTap
from kdframe.losses import BuildContext
from kdframe.value_schedule import describe_value
from kdframe.plugins import Plugins, create_plugins
from kdframe.results import RESULTS_FILE, format_table, write_results
from kdframe.schedule import (
    Schedule,
    apply_overrides,
    component_params,
    load_json,
    parse_schedule,
    resolved,
    validate_components,
)
from kdframe.state import Control, RunInfo, StageInfo, StageResult
from kdframe.trainer import StageSetup, Trainer, WeightedTerm

SCHEDULE_FILE = "schedule.json"


@dataclass
class Experiment:
    """A schedule validated in full, with its data, models and stages ready to train."""

    schedule: Schedule
    resolved: dict[str, Any]
    plugins: Plugins
    data: InMemoryDataset
    models: dict[str, nn.Module]
    stages: list[StagePlan]
    setups: list[StageSetup] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def derived_seed(seed: int, name: str) -> int:
    """A seed for one named thing (a model, a stage) that depends only on the run's seed and the name,
    so that a model or stage is the same whatever else the schedule holds (sweeps share them)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    source = f"Schedule '{path}'"
    raw = apply_overrides(load_json(path), overrides or [])
    schedule = parse_schedule(raw, source)
    plugins = plugins or create_plugins()
    validate_components(schedule, plugins.registry, source)
    return schedule, plugins, resolved(schedule, plugins.registry)


def prepare(schedule: Schedule, plugins: Plugins, resolved_schedule: dict[str, Any]) -> Experiment:
    """Plan the stages and build everything they need; raise before any training on any problem."""
    registry = plugins.registry
    curriculum_spec = registry.spec("curriculum", schedule.curriculum.name)
    curriculum = curriculum_spec.factory(
        component_params(registry, "curriculum", schedule.curriculum.name, schedule.curriculum.params, "curriculum")
    )
    schedule = with_extra_models(schedule, curriculum, schedule.curriculum.name)
    stages = curriculum.plan(schedule)
    check_plan(schedule, stages, registry, schedule.curriculum.name)

    seed_everything(schedule.seed)
    data = load_data(schedule, plugins)
    models = build_models(schedule, plugins, data)
    # A snapshot teacher ('model@N') is a copy of its model, loaded with the snapshot when it is taken.
    for plan in stages:
        for key in plan.teachers:
            model, epoch = split_snapshot(key)
            if epoch is not None and key not in models:
                models[key] = copy.deepcopy(models[model])
    experiment = Experiment(schedule, resolved_schedule, plugins, data, models, stages)
    setups = [setup for plan in stages for setup in build_stage(experiment, plan)]
    for index, setup in enumerate(setups):
        setup.info = dataclasses.replace(setup.info, index=index)
    experiment.setups = setups
    return experiment


def load_data(schedule: Schedule, plugins: Plugins) -> InMemoryDataset:
    """Build the schedule's dataset and take the requested subsets."""
    config = schedule.data
    params = component_params(plugins.registry, "dataset", config.dataset, config.params, "data")
    data = plugins.registry.spec("dataset", config.dataset).factory(params)
    if not isinstance(data, InMemoryDataset):
        raise ComponentError(f"Dataset '{config.dataset}' returned {type(data).__name__}, not an InMemoryDataset.")
    if data.train_labels.numel() == 0 or data.test_labels.numel() == 0:
        raise DataError(f"Dataset '{config.dataset}' has an empty train or test split.")
    return data.subset(config.train_samples, config.test_samples, schedule.seed)


def build_models(schedule: Schedule, plugins: Plugins, data: InMemoryDataset) -> dict[str, nn.Module]:
    """Instantiate every model of the schedule and load checkpoints.

    Each model's initial weights depend only on the seed and the model's name.
    """
    models: dict[str, nn.Module] = {}
    for key, config in schedule.models.items():
        spec = plugins.registry.spec("model", config.arch)
        params = component_params(plugins.registry, "model", config.arch, config.params, f"models.{key}")
        torch.manual_seed(derived_seed(schedule.seed, f"model:{key}"))
        try:
            model = spec.factory(params, data.info)
        except KdframeError:
            raise
        except (ValueError, TypeError, RuntimeError) as error:
            raise ComponentError(
                f"models.{key}: architecture '{config.arch}' could not be built with these params for "
                f"data of shape {data.info.in_channels}x{data.info.image_size[0]}x{data.info.image_size[1]}: {error}"
            ) from error
        if config.checkpoint is not None:
            checkpoints.load_into(model, config.checkpoint, label=f"model '{key}' ({config.arch})", expected_arch=config.arch)
        models[key] = model
    return models


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
    if plan.kind == "ensemble":
        return [ensemble_stage(experiment, plan)]
    student = experiment.models[plan.student]
    teachers = [experiment.models[key] for key in plan.teachers]
    labels = _term_labels([loss.name for loss in plan.losses])
    terms = []
    for label, loss in zip(labels, plan.losses):
        params = component_params(registry, "loss", loss.name, loss.params, f"stage '{plan.stage_name}' loss '{loss.name}'")
        terms.append(WeightedTerm(label, loss.weight, registry.spec("loss", loss.name).factory(params)))
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
        sample = experiment.data.train_images[:2]
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
    for weighted in terms:
        weighted.term.build(
            BuildContext(
                student_shapes={p: student_shapes[p] for p in weighted.term.student_layers},
                teacher_shapes={p: teacher_shapes[p] for p in weighted.term.teacher_layers},
                student_modules={p: student_tap.modules[p] for p in weighted.term.student_layers} if student_tap else {},
                teacher_modules={p: teacher_tap.modules[p] for p in weighted.term.teacher_layers} if teacher_tap else {},
                num_train_samples=int(experiment.data.train_labels.shape[0]),
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
        hparams=stage_hparams(schedule, plan, training),
        folder="",
    )
    setups = []
    pretraining = [weighted for weighted in terms if weighted.term.pretrain_epochs > 0]
    if pretraining:
        epochs = max(weighted.term.pretrain_epochs for weighted in pretraining)
        name = f"{plan.stage_name}-pretrain"
        pre_training = schedule.training.for_stage(name).model_copy(update={"epochs": epochs})
        pre_info = dataclasses.replace(
            info,
            name=name,
            epochs=epochs,
            losses=tuple({"name": w.name, "phase": "pretrain"} for w in pretraining),
            hparams={**info.hparams, "epochs": epochs, "phase": "pretrain"},
        )
        setups.append(StageSetup(pre_info, student, teachers, pretraining, student_tap, teacher_tap, pre_training, "pretrain"))
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
            teacher_dropout=plan.teacher_dropout,
            teacher_weights=plan.teacher_weights,
        )
    )
    return setups


def ensemble_stage(experiment: Experiment, plan: StagePlan) -> StageSetup:
    """A stage that evaluates the mean softmax of already trained models."""
    schedule = experiment.schedule
    members = [experiment.models[key] for key in plan.teachers]
    training = schedule.training.for_stage(plan.stage_name)
    info = StageInfo(
        index=0,
        name=plan.stage_name,
        student=plan.student,
        arch="ensemble",
        teachers=tuple(plan.teachers),
        epochs=0,
        losses=(),
        hparams={"members": ",".join(plan.teachers), "dataset": schedule.data.dataset, "seed": schedule.seed},
        folder="",
    )
    return StageSetup(info, SoftmaxEnsemble(members), members, [], None, None, training, phase="ensemble")


def stage_hparams(schedule: Schedule, plan: StagePlan, training: Any) -> dict[str, Any]:
    """Flat hyper-parameters of a stage for loggers."""
    hparams: dict[str, Any] = {
        "student": plan.student,
        "arch": schedule.models[plan.student].arch,
        "teachers": ",".join(plan.teachers) or "-",
        "epochs": training.epochs,
        "optimizer": training.optimizer.name,
        "lr": training.optimizer.lr,
        "batch_size": schedule.data.batch_size,
        "seed": schedule.seed,
        "dataset": schedule.data.dataset,
    }
    for label, loss in zip(_term_labels([loss.name for loss in plan.losses]), plan.losses):
        hparams[f"loss/{label}/weight"] = loss.weight if isinstance(loss.weight, float) else describe_value(loss.weight)
        for key, value in loss.params.items():
            if isinstance(value, (str, int, float, bool)):
                hparams[f"loss/{label}/{key}"] = value
    return hparams


def make_run_folder(schedule: Schedule, out: str | Path | None) -> Path:
    """Create the run folder; refuse one that already holds files, so no earlier result is lost."""
    return folders.claim(Path(out) if out is not None else folders.default_folder(schedule.name), "run")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of a model."""
    return sum(parameter.numel() for parameter in model.parameters())


def execute(experiment: Experiment, folder: Path, *, quiet: bool = False) -> list[StageResult]:
    """Train every stage of a prepared experiment, writing into ``folder``; return the results."""
    schedule, plugins = experiment.schedule, experiment.plugins
    device = pick_device(schedule.device)
    experiment.device = device
    (folder / SCHEDULE_FILE).write_text(json.dumps(experiment.resolved, indent=2) + "\n")
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

    stage_infos = []
    for setup in experiment.setups:
        stage_folder = folder / "stages" / f"{setup.info.index:02d}-{setup.info.name}"
        setup.info = dataclasses.replace(setup.info, folder=str(stage_folder))
        stage_infos.append(setup.info)
    run = RunInfo(schedule.name, str(folder), experiment.resolved, tuple(stage_infos), str(device))

    logger_names = []
    for index, ref in enumerate(schedule.logging.loggers):
        if quiet and ref.name == "progress":
            continue
        spec = plugins.registry.spec("logger", ref.name)
        logger = spec.factory(component_params(plugins.registry, "logger", ref.name, ref.params, f"logging.loggers[{index}]"), folder)
        name = f"run-logger-{index}-{ref.name}"
        plugins.register_for_run(logger, name)
        logger_names.append(name)

    results: list[StageResult] = []
    current: StageInfo | None = None
    try:
        control = Control()
        plugins.hook.kdframe_on_run_start(run=run, control=control)
        for setup in experiment.setups:
            if control.stop_run:
                break
            current = setup.info
            result, stop_run = run_stage(experiment, setup, run, folder, data, device)
            results.append(result)
            write_results(folder, schedule.name, results, finished=False)
            stage_control = Control(stop_run=stop_run)
            plugins.hook.kdframe_on_stage_end(run=run, stage=setup.info, result=result, control=stage_control)
            control.stop_run = stage_control.stop_run
            current = None
        write_results(folder, schedule.name, results, finished=True)
        plugins.hook.kdframe_on_run_end(run=run, results=results)
    except BaseException as error:
        plugins.hook.kdframe_on_exception(run=run, stage=current, error=error)
        raise
    finally:
        for setup in experiment.setups:
            for tap in (setup.student_tap, setup.teacher_tap):
                if tap is not None:
                    tap.remove()
        for name in logger_names:
            plugins.unregister(name)
    return results


def run_stage(
    experiment: Experiment, setup: StageSetup, run: RunInfo, folder: Path, data: InMemoryDataset, device: torch.device
) -> tuple[StageResult, bool]:
    """Train (or, for an ensemble, evaluate) one stage, save its student and snapshots; return its
    result and whether a hook asked to stop the run."""
    schedule, plugins = experiment.schedule, experiment.plugins
    started = time.perf_counter()
    stage_folder = Path(setup.info.folder)
    stage_folder.mkdir(parents=True, exist_ok=True)
    key = setup.info.student
    save: Any = None
    if setup.phase != "ensemble":
        model_config = schedule.models[key]
        params = component_params(plugins.registry, "model", model_config.arch, model_config.params, "")

        def save(path: Path, model: nn.Module) -> None:
            checkpoints.save_model(path, model, key=key, arch=model_config.arch, params=params.model_dump(mode="json"))

    taken: set[int] = set()

    def snapshot(model: nn.Module, epoch: int) -> Path:
        path = stage_folder / f"epoch-{epoch}.pt"
        save(path, model)
        copy_key = snapshot_key(key, epoch)
        if copy_key in experiment.models:  # a later stage learns from this snapshot
            experiment.models[copy_key].load_state_dict(model.state_dict())
        taken.add(epoch)
        return path

    trainer = Trainer(
        setup,
        data,
        run=run,
        hook=plugins.hook,
        device=device,
        batch_size=schedule.data.batch_size,
        eval_batch_size=schedule.data.eval_batch_size,
        seed=schedule.seed,
        save_snapshot=snapshot,
    )
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
    )
    return result, outcome.stop_run


def run_schedule(
    path: str | Path,
    *,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    quiet: bool = False,
    plugins: Plugins | None = None,
) -> tuple[Path, list[StageResult]]:
    """Validate, prepare and run a schedule file; return the run folder and the stage results."""
    schedule, plugins, resolved_schedule = load_schedule(path, overrides, plugins)
    experiment = prepare(schedule, plugins, resolved_schedule)
    folder = make_run_folder(schedule, out)
    results = execute(experiment, folder, quiet=quiet)
    return folder, results


__all__ = ["RESULTS_FILE", "format_table", "load_schedule", "prepare", "run_schedule", "execute"]
