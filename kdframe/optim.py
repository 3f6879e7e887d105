"""Optimizers and learning-rate schedules, as components, and a stage's parameter groups.

A schedule names an optimizer and an LR schedule like any other component
(``training.optimizer``, ``training.lr_schedule``); plugins register them with
``kdframe_register_optimizers`` and ``kdframe_register_lr_schedules``. The core owns what every
optimizer and schedule shares:

* **Parameter groups.** ``training.optimizer.param_groups`` lists groups, each a wildcard over
  parameter names (``student.<module path>.<name>`` and ``loss.<term>.<name>``, e.g. ``loss.*`` for
  every loss term's adapters) with overrides of the optimizer's params (``{"params": "loss.*",
  "lr": 0.5}``). A parameter belongs to the first group whose pattern matches; the others form the
  default group, which comes first.
* **Warm-up.** ``warmup_epochs`` of linear warm-up from ``warmup_start_factor`` times each group's
  peak LR; the schedule's :meth:`LRSchedule.factor` decides the LR after it.
"""

from __future__ import annotations

import abc
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from kdframe.errors import ScheduleError, TrainingError
from kdframe.registry import Registry, is_plugin_bug, plugin_bug
from kdframe.schedule import TrainingConfig, component_params, format_validation_error


class LRSchedule(abc.ABC):
    """The decay of a learning-rate schedule after the warm-up."""

    @abc.abstractmethod
    def factor(self, step: int, steps_per_epoch: int, epochs: int, warmup_steps: int) -> float:
        """Multiplier of each group's peak LR at optimizer step ``step`` (``step >= warmup_steps``;
        the stage has ``epochs * steps_per_epoch`` steps, the first ``warmup_steps`` warm up)."""


@dataclass(frozen=True)
class StageOptimizer:
    """A stage's optimizer and LR schedule, built from the schedule before anything trains.

    Attributes:
        factory: Makes the optimizer from torch parameter groups (the component's bound factory).
        params: The optimizer's validated params.
        groups: ``(pattern, overrides)`` of ``training.optimizer.param_groups``, validated.
        schedule: The LR schedule.
        warmup_epochs: Epochs of linear warm-up (fractions allowed).
        warmup_start_factor: The LR factor at step 0.
        name: The optimizer's name.
        provider: The plugin that provides it, for messages.
    """

    factory: Callable[[BaseModel, list[dict[str, Any]]], torch.optim.Optimizer]
    params: BaseModel
    groups: tuple[tuple[str, dict[str, Any]], ...]
    schedule: LRSchedule
    warmup_epochs: float
    warmup_start_factor: float
    name: str = "optimizer"
    provider: str = "its plugin"

    def factor(self, step: int, steps_per_epoch: int, epochs: int) -> float:
        """Multiplier of the peak LR at optimizer step ``step``: the warm-up, then the schedule's."""
        warmup_steps = int(round(self.warmup_epochs * steps_per_epoch))
        if step < warmup_steps:
            start = self.warmup_start_factor
            return start + (1.0 - start) * step / warmup_steps
        return float(self.schedule.factor(step, steps_per_epoch, epochs, warmup_steps))

    def members(self, named: Sequence[tuple[str, nn.Parameter]]) -> list[list[tuple[str, nn.Parameter]]]:
        """``named`` split into the default group (first) and one list per configured group: each
        parameter joins the first group whose pattern matches its name."""
        members: list[list[tuple[str, nn.Parameter]]] = [[] for _ in range(len(self.groups) + 1)]
        for name, parameter in named:
            index = next((i + 1 for i, (pattern, _) in enumerate(self.groups) if fnmatch.fnmatchcase(name, pattern)), 0)
            members[index].append((name, parameter))
        return members

    def torch_groups(self, named: Sequence[tuple[str, nn.Parameter]]) -> list[dict[str, Any]]:
        """The torch parameter groups of ``named`` parameters: the default group first, then one per
        configured group; empty groups are left out (a group may match nothing in one stage, e.g.
        ``loss.*`` in a stage without adapters)."""
        members = self.members(named)
        groups = [{"params": [p for _, p in members[0]]}] if members[0] else []
        for (_, overrides), group in zip(self.groups, members[1:]):
            if group:
                groups.append({"params": [p for _, p in group], **overrides})
        return groups

    def make(self, named: Sequence[tuple[str, nn.Parameter]]) -> torch.optim.Optimizer:
        """The stage's optimizer over ``named`` parameters; an exception from the optimizer's factory
        is reported as its plugin's bug."""
        groups = self.torch_groups(named)
        try:
            optimizer = self.factory(self.params, groups)
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise TypeError(f"the factory returned {type(optimizer).__name__}, not a torch.optim.Optimizer")
        except Exception as error:
            if not is_plugin_bug(error):
                raise
            raise plugin_bug("optimizer", self.name, self.provider, "its factory", error) from error
        return optimizer


def group_overrides(params_model: type[BaseModel], params: BaseModel, overrides: dict[str, Any], path: str) -> dict[str, Any]:
    """A parameter group's overrides, validated as the optimizer's params (so ``lr`` must be > 0 as
    it must be for the optimizer); errors carry ``path``."""
    try:
        merged = params_model.model_validate({**params.model_dump(), **overrides})
    except ValidationError as error:
        raise ScheduleError("\n".join(format_validation_error(error, prefix=path, model=params_model))) from None
    return {key: getattr(merged, key) for key in overrides}


def trainable_parameters(
    student: nn.Module, terms: Sequence[tuple[str, nn.Module]], trains_student: bool
) -> list[tuple[str, nn.Parameter]]:
    """What a stage trains, named as ``param_groups`` patterns see it: the student's parameters
    (``student.<name>``, when the stage trains the student) and each loss term's
    (``loss.<label>.<name>``), those that require a gradient."""
    named = [(f"student.{name}", p) for name, p in student.named_parameters() if p.requires_grad] if trains_student else []
    for label, term in terms:
        named += [(f"loss.{label}.{name}", p) for name, p in term.named_parameters() if p.requires_grad]
    return named


def stage_optimizer(training: TrainingConfig, registry: Registry, path: str) -> StageOptimizer:
    """The optimizer and LR schedule of a stage's (already validated) training settings."""
    config, schedule = training.optimizer, training.lr_schedule
    spec = registry.spec("optimizer", config.name)
    params = component_params(registry, "optimizer", config.name, config.params, f"{path}.optimizer")
    groups = tuple(
        (group.params, group_overrides(spec.params, params, group.overrides, f"{path}.optimizer.param_groups[{index}]"))
        for index, group in enumerate(config.param_groups)
    )
    schedule_params = component_params(registry, "lr_schedule", schedule.name, schedule.params, f"{path}.lr_schedule")
    with registry.component_code("lr_schedule", schedule.name, "its factory"):
        decay = registry.spec("lr_schedule", schedule.name).factory(schedule_params)
        if not isinstance(decay, LRSchedule):
            raise TypeError(f"the factory returned {type(decay).__name__}, not a kdframe.LRSchedule")
    provider = registry.get("optimizer", config.name).provider.describe()
    return StageOptimizer(
        spec.factory, params, groups, decay, schedule.warmup_epochs, schedule.warmup_start_factor, config.name, provider
    )


def check_patterns_match(stages: Sequence[tuple[StageOptimizer, Sequence[tuple[str, nn.Parameter]]]]) -> None:
    """A :class:`TrainingError` for a ``param_groups`` pattern that matches no parameter in any stage
    that uses it: it is almost certainly misspelt. ``stages`` pairs each stage's optimizer with what
    the stage trains."""
    matched: dict[str, bool] = {}
    names: list[str] = []
    for optimizer, named in stages:
        names += [name for name, _ in named[:3]]
        for (pattern, _), group in zip(optimizer.groups, optimizer.members(named)[1:]):
            matched[pattern] = matched.get(pattern, False) or bool(group)
    unmatched = [pattern for pattern, hit in matched.items() if not hit]
    if unmatched:
        sample = ", ".join(dict.fromkeys(names[:6]))
        raise TrainingError(
            f"training.optimizer.param_groups pattern(s) {', '.join(repr(p) for p in unmatched)} match no "
            f"parameter that any stage trains. Names look like {sample}, ... ('student.<module path>."
            "<name>', 'loss.<term>.<name>'); fix the pattern."
        )
