"""Which teachers teach a batch, and with what weights: the per-batch teacher policy of a stage.

A curriculum attaches a :class:`TeacherPolicy` to a stage (``StagePlan.teacher_policy``). For every
training batch the trainer asks it, before any teacher runs, which teachers teach (:meth:`select`),
runs (or reads from the cache) only those, and then lets it adjust the weights from their outputs
(:meth:`reweigh`). Loss terms that combine teachers take the weighted mean with
:meth:`kdframe.StepOutputs.average_over_teachers`. Without a policy every teacher teaches every batch
with equal weight.

Methods such as densely guided KD's teacher dropout, fixed multi-teacher weights or a
confidence-weighted ensemble are policies written in plugins. The first teacher (index 0) is the one
feature- and relation-based terms tap, so a policy must keep it in every selection.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from kdframe.registry import is_plugin_bug, plugin_bug

if TYPE_CHECKING:
    from kdframe.losses import StepOutputs


@dataclass(frozen=True)
class TeacherBatch:
    """What a policy knows about the batch it selects teachers for.

    Attributes:
        epoch: The current epoch (0-based).
        epochs: The stage's number of epochs.
        batch: The batch's index within the epoch.
        step: Optimizer steps taken so far in the stage.
        teachers: The stage's teachers (schedule model keys, ``model@N`` for snapshots), in order.
        generator: The stage's shuffling generator; draw from it (never from the global generators)
            so that a resumed run draws exactly as an uninterrupted one.
    """

    epoch: int
    epochs: int
    batch: int
    step: int
    teachers: tuple[str, ...]
    generator: torch.Generator


@dataclass(frozen=True)
class TeacherSelection:
    """The teachers of one batch: their indices into the stage's teachers (ascending, index 0
    included) and their relative weights (one per index, not all zero; empty: equal)."""

    indices: tuple[int, ...]
    weights: tuple[float, ...] = ()


class TeacherPolicy(abc.ABC):
    """Decides, per batch, which of a stage's teachers teach and with what weights."""

    @abc.abstractmethod
    def select(self, batch: TeacherBatch) -> TeacherSelection:
        """The teachers of this batch. Called before the teachers run; must keep index 0."""

    def reweigh(self, selection: TeacherSelection, outputs: StepOutputs) -> tuple[float, ...]:
        """The selected teachers' weights once their outputs are known (``outputs.teachers`` are
        the selected ones, in order). Default: the selection's weights."""
        return selection.weights

    def check(self, teachers: Sequence[str]) -> list[str]:
        """Problems of using this policy with these teachers (checked with the plan). Default: none."""
        return []

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description of the policy and its settings: a sweep shares a stage
        between variants only when their descriptions are equal. Default: the class name."""
        return {"policy": type(self).__name__}


def all_teachers(count: int) -> TeacherSelection:
    """The selection of a stage without a policy: every teacher, equal weights."""
    return TeacherSelection(tuple(range(count)))


def checked_selection(selection: object, count: int) -> TeacherSelection:
    """``selection`` when it is a valid :class:`TeacherSelection` for ``count`` teachers; otherwise a
    ``ValueError`` that says what is wrong (the trainer reports it as the policy's plugin's bug)."""
    if not isinstance(selection, TeacherSelection):
        raise ValueError(f"select() returned {type(selection).__name__}, not a TeacherSelection")
    indices, weights = selection.indices, selection.weights
    if not indices or indices[0] != 0 or list(indices) != sorted(set(indices)) or indices[-1] >= count:
        raise ValueError(
            f"select() chose teachers {list(indices)}: the indices must be ascending, unique, below "
            f"{count} and include 0 (the teacher that feature terms tap)"
        )
    check_weights(weights, len(indices), "select()")
    return selection


def check_weights(weights: Sequence[float], count: int, source: str) -> None:
    """A ``ValueError`` unless ``weights`` is empty or ``count`` finite, non-negative, not-all-zero numbers."""
    if not weights:
        return
    if len(weights) != count or any(not (w >= 0 and w < float("inf")) for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"{source} gave teacher weights {list(weights)}: give one finite, non-negative weight per "
            f"selected teacher ({count}), not all zero"
        )


def run_select(policy: TeacherPolicy, batch: TeacherBatch, provider: str) -> TeacherSelection:
    """``policy.select(batch)``, checked; an exception from it is reported as its plugin's bug."""
    with _policy_code(policy, provider, "select()"):
        return checked_selection(policy.select(batch), len(batch.teachers))


def run_reweigh(policy: TeacherPolicy, selection: TeacherSelection, outputs: StepOutputs, provider: str) -> tuple[float, ...]:
    """``policy.reweigh(selection, outputs)``, checked; an exception from it is its plugin's bug."""
    with _policy_code(policy, provider, "reweigh()"):
        weights = tuple(policy.reweigh(selection, outputs))
        check_weights(weights, len(selection.indices), "reweigh()")
    return weights


@contextlib.contextmanager
def _policy_code(policy: TeacherPolicy, provider: str, action: str) -> Iterator[None]:
    try:
        yield
    except Exception as error:
        if not is_plugin_bug(error):
            raise
        raise plugin_bug("teacher policy", type(policy).__name__, provider, action, error) from error
