"""The LR schedules ``cosine``, ``step`` and ``constant``: the decay after the core's warm-up."""

from __future__ import annotations

import math

from pydantic import Field

from kdframe import LRSchedule, NoParams, Params


class CosineParams(Params):
    """Params of ``cosine``."""

    min_lr_factor: float = Field(0.0, ge=0.0, le=1.0, description="Final LR factor of 'cosine'.")


class StepParams(Params):
    """Params of ``step``."""

    milestones: list[int] = Field(default_factory=list, description="Epochs at which 'step' multiplies the LR by gamma.")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="Factor of each 'step' decay.")


class Cosine(LRSchedule):
    """Cosine annealing from the peak LR after the warm-up to ``min_lr_factor`` times it at the end."""

    def __init__(self, params: CosineParams) -> None:
        self.min_lr_factor = params.min_lr_factor

    def factor(self, step: int, steps_per_epoch: int, epochs: int, warmup_steps: int) -> float:
        total = max(epochs * steps_per_epoch - warmup_steps, 1)
        progress = min((step - warmup_steps) / total, 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_factor + (1.0 - self.min_lr_factor) * cosine


class Step(LRSchedule):
    """The LR times ``gamma`` for every milestone epoch passed."""

    def __init__(self, params: StepParams) -> None:
        self.milestones = tuple(params.milestones)
        self.gamma = params.gamma

    def factor(self, step: int, steps_per_epoch: int, epochs: int, warmup_steps: int) -> float:
        epoch = step // max(steps_per_epoch, 1)
        return self.gamma ** sum(1 for milestone in self.milestones if epoch >= milestone)


class Constant(LRSchedule):
    """The peak LR throughout (after the warm-up)."""

    def __init__(self, params: NoParams) -> None:
        pass

    def factor(self, step: int, steps_per_epoch: int, epochs: int, warmup_steps: int) -> float:
        return 1.0
