"""Curricula turn a schedule into an ordered list of stages.

A :class:`Curriculum` (built by a curriculum plugin's factory from its validated params) returns
:class:`StagePlan` objects: which model a stage trains, which models teach it, and with which loss
terms. The core checks every plan with :func:`check_plan` before training starts:

* stage names are unique and every model named exists in ``schedule.models``;
* a model is trained at most once; a later stage reuses it as a teacher;
* every teacher either has a checkpoint or is trained by an earlier stage;
* a model that has a checkpoint is not trained again;
* terms that need a teacher are not used in a stage without one.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from kdframe.errors import ScheduleError
from kdframe.registry import Registry
from kdframe.schedule import LossConfig, Schedule


@dataclass(frozen=True)
class StagePlan:
    """One stage: train ``student`` with ``losses``, taught by ``teachers`` (schedule model keys).

    ``name`` defaults to the student's key; per-stage training overrides (``training.stages``) use it.
    """

    student: str
    teachers: tuple[str, ...]
    losses: tuple[LossConfig, ...]
    name: str = ""

    @property
    def stage_name(self) -> str:
        return self.name or self.student


class Curriculum(abc.ABC):
    """Base class of curricula."""

    @abc.abstractmethod
    def plan(self, schedule: Schedule) -> list[StagePlan]:
        """Return the stages of ``schedule`` in the order they run."""


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


def check_plan(schedule: Schedule, stages: list[StagePlan], registry: Registry, curriculum: str) -> None:
    """Check a curriculum's stages against the schedule; raise one error listing every problem."""
    problems: list[str] = []
    if not stages:
        problems.append("the curriculum produced no stages")
    seen_names: set[str] = set()
    trained: set[str] = set()
    for index, stage in enumerate(stages):
        label = f"stage {index} ('{stage.stage_name}')"
        if stage.stage_name in seen_names:
            problems.append(f"{label}: a second stage with this name")
        seen_names.add(stage.stage_name)
        for key in (stage.student, *stage.teachers):
            if key not in schedule.models:
                available = ", ".join(sorted(schedule.models))
                problems.append(f"{label}: model '{key}' is not in models (defined: {available})")
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
        if not stage.teachers:
            for loss in stage.losses:
                if loss.name in registry.components["loss"]:
                    term_needs_teacher = _needs_teacher(registry, loss)
                    if term_needs_teacher:
                        problems.append(
                            f"{label}: loss '{loss.name}' needs a teacher but this stage has none "
                            "(stages without a teacher use distill.scratch_losses)"
                        )
        trained.add(stage.student)
    for override in schedule.training.stages:
        # '<stage>-pretrain' names the pre-training phase a loss term may add before a stage.
        if override not in seen_names and override.removesuffix("-pretrain") not in seen_names:
            problems.append(
                f"training.stages.{override}: no stage has this name (stages: {', '.join(s.stage_name for s in stages)})"
            )
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise ScheduleError(f"Curriculum '{curriculum}' cannot run this schedule:\n{listing}")


def _needs_teacher(registry: Registry, loss: LossConfig) -> bool:
    spec = registry.spec("loss", loss.name)
    term = spec.factory(spec.params.model_validate(loss.params))
    return bool(getattr(term, "needs_teacher", True))
