"""Values that change over a stage's epochs: loss weights and loss params such as a temperature.

Anywhere a schedule or a component's params accept a :data:`ScheduledFloat`, a plain number means a
constant and an object describes a schedule::

    {"schedule": "linear", "start": 0.0, "end": 1.0, "epochs": 20}   # DKD's warm-up
    {"schedule": "step", "start": 4.0, "milestones": [10, 20], "gamma": 0.5}
    {"schedule": "cosine", "start": 8.0, "end": 2.0}

Values are evaluated once per epoch, at the epoch's 0-based index, and logged to the loggers.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from kdframe.strict_numbers import NoBoolNumbers


class ValueSchedule(NoBoolNumbers):
    """A value that follows a schedule over the epochs of a stage."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    schedule: Literal["constant", "linear", "step", "cosine"] = Field(
        description="constant: start. linear: start to end over 'epochs', then end. step: start times "
        "gamma per milestone passed. cosine: start to end along a half cosine over 'epochs'."
    )
    start: float = Field(description="Value at epoch 0.")
    end: float | None = Field(None, description="Final value of linear and cosine (required for them).")
    epochs: float | None = Field(
        None, gt=0, description="Epochs over which linear and cosine move from start to end (default: the whole stage)."
    )
    milestones: list[int] = Field(
        default_factory=list, max_length=100_000, description="Epochs (0-based) at which 'step' multiplies by gamma."
    )
    gamma: float = Field(0.1, description="Factor of each 'step'.")

    @model_validator(mode="after")
    def _needs_end(self) -> ValueSchedule:
        if self.schedule in ("linear", "cosine") and self.end is None:
            raise ValueError(f"a '{self.schedule}' schedule needs 'end'")
        if not all(math.isfinite(value) for value in self.values()):
            raise ValueError(
                f"the values of this '{self.schedule}' schedule overflow (start {self.start:g}, gamma "
                f"{self.gamma:g} over {len(self.milestones)} milestone(s)); choose a smaller gamma or start"
            )
        return self

    def values(self) -> list[float]:
        """Every value the schedule can take, in order: enough to check a bound over the whole range
        (linear and cosine move monotonically between start and end; step multiplies by gamma at each
        milestone). A value too large for a float is ``inf``."""
        if self.schedule == "constant":
            return [self.start]
        if self.schedule == "step":
            return [_times_power(self.start, self.gamma, passed) for passed in range(len(self.milestones) + 1)]
        return [self.start, self.end if self.end is not None else self.start]


#: A number, or a :class:`ValueSchedule` over epochs.
ScheduledFloat = float | ValueSchedule


def _times_power(start: float, gamma: float, count: int) -> float:
    """``start * gamma ** count``, ``inf`` (with the sign) where it is too large for a float."""
    try:
        return start * gamma**count
    except OverflowError:
        return math.copysign(math.inf, start) * (1.0 if gamma > 0 or count % 2 == 0 else -1.0)


def value_range(value: ScheduledFloat) -> tuple[float, float]:
    """The lowest and highest value ``value`` takes over any stage (for bounds such as "a weight is
    never negative" or "a temperature stays > 0")."""
    values = value.values() if isinstance(value, ValueSchedule) else [float(value)]
    return min(values), max(values)


def value_at(value: ScheduledFloat, epoch: int, epochs: int) -> float:
    """The value of ``value`` at 0-based ``epoch`` of a stage of ``epochs`` epochs."""
    if not isinstance(value, ValueSchedule):
        return float(value)
    if value.schedule == "constant":
        return value.start
    if value.schedule == "step":
        return _times_power(value.start, value.gamma, sum(1 for milestone in value.milestones if epoch >= milestone))
    span = value.epochs if value.epochs is not None else max(epochs - 1, 1)
    progress = min(epoch / span, 1.0)
    end = value.end if value.end is not None else value.start
    if value.schedule == "linear":
        return value.start + (end - value.start) * progress
    return end + (value.start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def describe_value(value: ScheduledFloat) -> str:
    """A short text form: ``0.9``, or ``linear(0->1 over 20 epochs)``."""
    if not isinstance(value, ValueSchedule):
        return f"{value:g}"
    if value.schedule == "constant":
        return f"{value.start:g}"
    if value.schedule == "step":
        return f"step({value.start:g}, x{value.gamma:g} at {value.milestones})"
    span = f" over {value.epochs:g} epochs" if value.epochs is not None else ""
    return f"{value.schedule}({value.start:g}->{value.end:g}{span})"


def as_json(value: ScheduledFloat) -> float | dict[str, object]:
    """The schedule-file form of a value: the number, or the schedule's object without unset keys."""
    if isinstance(value, ValueSchedule):
        return value.model_dump(mode="json", exclude_defaults=True, exclude_none=True) | {"schedule": value.schedule}
    return float(value)
