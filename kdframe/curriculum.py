"""Curricula turn a schedule into an ordered list of stages.

A :class:`Curriculum` (built by a curriculum plugin's factory from its validated params) returns
:class:`StagePlan` objects: which model a stage trains, which models teach it, and with which loss
terms. The core checks every plan with :func:`check_plan` before training starts:

* stage names are unique and every model named exists in ``schedule.models``;
* a model is trained at most once; a later stage reuses it as a teacher;
* every teacher either has a checkpoint or is trained by an earlier stage;
* a model that has a checkpoint is not trained again;
* terms that need a teacher are not used in a stage without one;
* a teacher named ``model@N`` (the snapshot of ``model`` after its N-th epoch) is kept by the
  earlier stage that trains ``model``;
* a stage that starts from another model's weights (``init_from``) names one of the same
  architecture and params that exists by then;
* a stage's teacher policy accepts its teachers (:meth:`TeacherPolicy.check`);
* an ``evaluate`` stage builds its model from models that already exist, and trains nothing.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from kdframe.errors import ScheduleError
from kdframe.registry import Registry
from kdframe.schedule import LossConfig, ModelConfig, Schedule, component_params
from kdframe.stage_kinds import EVALUATE, PlannedKind, planned_name
from kdframe.teacher_policy import TeacherPolicy

SNAPSHOT_SEPARATOR = "@"


def snapshot_key(model: str, epoch: int) -> str:
    """The name of ``model``'s snapshot after its ``epoch``-th epoch (1-based): ``model@epoch``."""
    return f"{model}{SNAPSHOT_SEPARATOR}{epoch}"


def split_snapshot(key: str) -> tuple[str, int | None]:
    """``("teacher", 3)`` for ``"teacher@3"``; ``(key, None)`` for a plain model name."""
    model, sep, epoch = key.rpartition(SNAPSHOT_SEPARATOR)
    if sep and epoch.isdigit() and model:
        return model, int(epoch)
    return key, None


@dataclass(frozen=True)
class StagePlan:
    """One stage: train ``student`` with ``losses``, taught by ``teachers`` (schedule model keys).

    Attributes:
        student: The model the stage trains (for an ``evaluate`` stage: the name of its result row,
            which must not be a model's name).
        teachers: The models that teach it (``model@N`` names a snapshot); for an ``evaluate``
            stage, the models its model is built from.
        losses: The loss terms.
        name: The stage's name; defaults to the student's key. Per-stage training overrides
            (``training.stages``) use it.
        kind: ``train``, or ``evaluate`` to only evaluate the model ``build`` returns.
        snapshots: 1-based epochs after which a copy of the student is kept as ``student@N`` (for
            later stages to learn from or start from) and saved as ``epoch-N.pt``.
        teacher_policy: Decides per batch which teachers teach and with what weights
            (:class:`~kdframe.teacher_policy.TeacherPolicy`); ``None``: all, equally.
        init_from: A model (or ``model@N`` snapshot) of the same architecture and params whose
            weights the student starts from, trained by an earlier stage or loaded from a
            checkpoint; ``None``: the student's own initial weights.
        build: For an ``evaluate`` stage: builds the model to evaluate from the ``teachers``'
            modules, in order (e.g. an ensemble of them).
        arch: For an ``evaluate`` stage: what its model is, shown as the result row's ``arch``.
    """

    student: str
    teachers: tuple[str, ...]
    losses: tuple[LossConfig, ...]
    name: str = ""
    kind: PlannedKind = "train"
    snapshots: tuple[int, ...] = ()
    teacher_policy: TeacherPolicy | None = None
    init_from: str | None = None
    build: Callable[[Sequence[nn.Module]], nn.Module] | None = None
    arch: str = ""

    @property
    def stage_name(self) -> str:
        return self.name or self.student


class Curriculum(abc.ABC):
    """Base class of curricula."""

    @abc.abstractmethod
    def plan(self, schedule: Schedule) -> list[StagePlan]:
        """Return the stages of ``schedule`` in the order they run.

        ``schedule.models`` already includes the models of :meth:`extra_models`.
        """

    def extra_models(self, schedule: Schedule) -> dict[str, ModelConfig]:
        """Models the curriculum adds to the schedule's (e.g. born-again generations). Default: none."""
        return {}


def with_extra_models(schedule: Schedule, curriculum: Curriculum, name: str) -> Schedule:
    """``schedule`` with the curriculum's extra models added; a name clash is an error."""
    extra = curriculum.extra_models(schedule)
    clash = sorted(set(extra) & set(schedule.models))
    if clash:
        raise ScheduleError(
            f"Curriculum '{name}' adds models named {', '.join(clash)}, which the schedule already "
            "defines; rename those models."
        )
    if not extra:
        return schedule
    return schedule.model_copy(update={"models": {**schedule.models, **extra}})


def scratch_stage(schedule: Schedule, model: str) -> StagePlan:
    """A stage that trains ``model`` from labels alone with ``distill.scratch_losses``."""
    return StagePlan(student=model, teachers=(), losses=tuple(schedule.distill.scratch_losses))


def distill_stage(schedule: Schedule, student: str, teachers: tuple[str, ...]) -> StagePlan:
    """A stage that trains ``student`` from ``teachers`` with ``distill.losses``."""
    return StagePlan(student=student, teachers=teachers, losses=tuple(schedule.distill.losses))


def teacher_stages(schedule: Schedule, teachers: list[str], planned: set[str]) -> list[StagePlan]:
    """Scratch stages for the teachers that have no checkpoint and are not yet planned."""
    stages = []
    for teacher in teachers:
        config = schedule.models.get(teacher)
        if config is not None and config.checkpoint is None and teacher not in planned:
            stages.append(scratch_stage(schedule, teacher))
            planned.add(teacher)
    return stages


def make_curriculum(schedule: Schedule, registry: Registry) -> Curriculum:
    """The curriculum ``schedule.curriculum`` names, built from its validated params."""
    name = schedule.curriculum.name
    params = component_params(registry, "curriculum", name, schedule.curriculum.params, "curriculum")
    with registry.component_code("curriculum", name, "its factory"):
        return registry.spec("curriculum", name).factory(params)


def plan_stages(
    schedule: Schedule, curriculum: Curriculum, registry: Registry, name: str, *, check: bool = True
) -> tuple[Schedule, list[StagePlan]]:
    """The one planning sequence of ``run``, ``resume``, ``sweep`` and :mod:`kdframe.testing`: add the
    models the curriculum defines (:func:`with_extra_models`), plan the stages and, with ``check``,
    check the plan (:func:`check_plan`). Returns the schedule with those models and the stages;
    ``name`` is the curriculum's name for messages."""
    planned = with_extra_models(schedule, curriculum, name)
    with registry.component_code("curriculum", name, "plan()"):
        stages = curriculum.plan(planned)
    if check:
        check_plan(planned, stages, registry, name)
    return planned, stages


def check_plan(schedule: Schedule, stages: list[StagePlan], registry: Registry, curriculum: str) -> None:
    """Check a curriculum's stages against the schedule; raise one error listing every problem."""
    problems: list[str] = []
    if not stages:
        problems.append("the curriculum produced no stages")
    seen_names: set[str] = set()
    trained: dict[str, StagePlan] = {}
    available = ", ".join(sorted(schedule.models))
    for index, stage in enumerate(stages):
        label = f"stage {index} ('{stage.stage_name}')"
        if stage.stage_name in seen_names:
            problems.append(f"{label}: a second stage with this name")
        seen_names.add(stage.stage_name)
        if stage.kind == EVALUATE:
            problems += _check_evaluate(schedule, stage, label, trained)
            continue
        for key in (stage.student, *stage.teachers):
            model, epoch = split_snapshot(key)
            if model not in schedule.models:
                problems.append(f"{label}: model '{model}' is not in models (defined: {available})")
            elif epoch is not None and (model not in trained or epoch not in trained[model].snapshots):
                problems.append(
                    f"{label}: teacher '{key}' is a snapshot of '{model}' after epoch {epoch}, but no "
                    "earlier stage trains that model and keeps that snapshot"
                )
        if split_snapshot(stage.student)[1] is not None:
            problems.append(f"{label}: a snapshot ('{stage.student}') cannot be trained")
        if stage.student in trained:
            problems.append(f"{label}: model '{stage.student}' is already trained by an earlier stage")
        config = schedule.models.get(stage.student)
        if config is not None and config.checkpoint is not None:
            problems.append(
                f"{label}: model '{stage.student}' has a checkpoint and would be trained again; "
                "remove its checkpoint to train it, or drop it from the curriculum's trained models"
            )
        if stage.student in stage.teachers:
            problems.append(f"{label}: model '{stage.student}' cannot teach itself")
        for teacher in stage.teachers:
            teacher_config = schedule.models.get(teacher)
            if teacher_config is not None and teacher_config.checkpoint is None and teacher not in trained:
                problems.append(
                    f"{label}: teacher '{teacher}' has no checkpoint and no earlier stage trains it"
                )
        training = schedule.training.for_stage(stage.stage_name)
        for epoch in stage.snapshots:
            if not 1 <= epoch <= training.epochs:
                problems.append(f"{label}: snapshot epoch {epoch} is outside the stage's 1..{training.epochs} epochs")
        if stage.teacher_policy is not None:
            if not stage.teachers:
                problems.append(f"{label}: a teacher policy without teachers")
            else:
                with registry.component_code("curriculum", curriculum, "its teacher policy's check()"):
                    problems += [f"{label}: {problem}" for problem in stage.teacher_policy.check(stage.teachers)]
        if stage.init_from is not None:
            problems += _check_init_from(schedule, stage, label, trained, registry)
        if not stage.teachers:
            for loss in stage.losses:
                if loss.name in registry.components["loss"] and _needs_teacher(registry, loss):
                    problems.append(
                        f"{label}: loss '{loss.name}' needs a teacher but this stage has none "
                        "(stages without a teacher use distill.scratch_losses)"
                    )
        trained[stage.student] = stage
    for override in schedule.training.stages:
        if planned_name(override) not in seen_names:
            problems.append(
                f"training.stages.{override}: no stage has this name (stages: {', '.join(s.stage_name for s in stages)})"
            )
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise ScheduleError(f"Curriculum '{curriculum}' cannot run this schedule:\n{listing}")


def _exists_by_then(schedule: Schedule, key: str, trained: dict[str, StagePlan]) -> str | None:
    """Why ``key`` (a model or ``model@N``) does not exist before the current stage, or ``None``."""
    model, epoch = split_snapshot(key)
    config = schedule.models.get(model)
    if config is None:
        return f"'{model}' is not in models"
    if epoch is not None:
        if model not in trained or epoch not in trained[model].snapshots:
            return f"'{key}' is a snapshot of '{model}' after epoch {epoch}, but no earlier stage trains that model and keeps that snapshot"
        return None
    if config.checkpoint is None and model not in trained:
        return f"'{model}' has no checkpoint and no earlier stage trains it"
    return None


def _check_evaluate(schedule: Schedule, stage: StagePlan, label: str, trained: dict[str, StagePlan]) -> list[str]:
    problems = []
    if stage.build is None:
        problems.append(f"{label}: an evaluate stage needs 'build', the function that builds its model")
    if not stage.teachers:
        problems.append(f"{label}: an evaluate stage needs the models its model is built from (teachers)")
    if stage.student in schedule.models:
        problems.append(f"{label}: the stage's result name '{stage.student}' is already a model's name")
    for member in stage.teachers:
        reason = _exists_by_then(schedule, member, trained)
        if reason is not None:
            problems.append(f"{label}: model {reason}")
    return problems


def _check_init_from(
    schedule: Schedule, stage: StagePlan, label: str, trained: dict[str, StagePlan], registry: Registry
) -> list[str]:
    source = stage.init_from or ""
    model = split_snapshot(source)[0]
    if model == stage.student:
        return [f"{label}: init_from '{source}' is the stage's own student"]
    reason = _exists_by_then(schedule, source, trained)
    if reason is not None:
        return [f"{label}: init_from {reason}"]
    student, origin = schedule.models.get(stage.student), schedule.models[model]
    if student is not None and _resolved(registry, student) != _resolved(registry, origin):
        return [
            f"{label}: init_from '{source}' is a '{origin.arch}' with params {origin.params}, but the "
            f"student '{stage.student}' is a '{student.arch}' with params {student.params}; a stage can "
            "only start from a model of the same architecture and params"
        ]
    return []


def _resolved(registry: Registry, config: ModelConfig) -> tuple[str, dict[str, object]]:
    """A model's architecture and params with defaults filled in (so ``{}`` equals the defaults)."""
    if config.arch not in registry.components["model"]:
        return config.arch, dict(config.params)
    params = component_params(registry, "model", config.arch, config.params, "")
    return config.arch, params.model_dump(mode="json")


def _needs_teacher(registry: Registry, loss: LossConfig) -> bool:
    spec = registry.spec("loss", loss.name)
    with registry.component_code("loss", loss.name, "its factory"):
        term = spec.factory(spec.params.model_validate(loss.params))
    return bool(getattr(term, "needs_teacher", True))
