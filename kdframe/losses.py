"""The interface of loss strategies.

A loss strategy is a :class:`LossTerm`, an ``nn.Module`` so that any adapter it owns (a FitNets
regressor, say) is trained with the student. The trainer computes, for every batch::

    total = sum(weight_i * term_i(outputs))

where ``outputs`` is a :class:`StepOutputs`: the student's logits, each teacher's logits, the labels
and the intermediate outputs of the layers the terms asked for.

Feature- and relation-based terms name layers by module path (the names of
``model.named_modules()``, e.g. ``features.3``) in :attr:`LossTerm.student_layers` and
:attr:`LossTerm.teacher_layers`. The core taps those layers with forward hooks, runs one dry batch
through the models, and calls :meth:`LossTerm.build` with the shapes it saw, so that adapters are
created before the optimizer is.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kdframe.errors import ComponentError


@dataclass
class ModelOutputs:
    """One model's outputs for a batch: logits and the tapped layers' outputs by module path."""

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class StepOutputs:
    """Everything a loss term may use for one batch.

    Attributes:
        student: The student's outputs (with gradients).
        teachers: Each teacher's outputs (no gradients), in the stage's order; empty without teachers.
        labels: Int64 class indices.
        epoch: The current epoch (0-based), for terms that change over training.
    """

    student: ModelOutputs
    teachers: list[ModelOutputs]
    labels: Tensor
    epoch: int = 0

    @property
    def teacher(self) -> ModelOutputs:
        """The first teacher; feature- and relation-based terms learn from it."""
        if not self.teachers:
            raise ComponentError("This loss needs a teacher, but the stage has none.")
        return self.teachers[0]


class LossTerm(nn.Module, metaclass=abc.ABCMeta):
    """Base class of loss strategies.

    Subclasses set :attr:`needs_teacher`, fill :attr:`student_layers` / :attr:`teacher_layers` from
    their params when they need intermediate outputs, build adapters in :meth:`build`, and return a
    scalar from :meth:`forward`. Teacher layers are tapped in the stage's first teacher.
    """

    #: Whether the term needs at least one teacher; such a term in a stage without one is an error.
    needs_teacher: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.student_layers: Sequence[str] = ()
        self.teacher_layers: Sequence[str] = ()

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """Create adapters from the shapes of the tapped layers (batch dimension included).

        Called once per stage, after a dry run on the CPU (with empty dicts when the term taps no
        layer), before the optimizer is created; the core then moves the term to the training device,
        so adapters may be created on the CPU in the default dtype. The default does nothing. Raise :class:`kdframe.errors.LayerError` for shapes the term cannot use.
        """

    @abc.abstractmethod
    def forward(self, outputs: StepOutputs) -> Tensor:
        """Return the (unweighted) scalar loss of this term."""

