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
from pydantic import Field
from torch import Tensor, nn

from kdframe.errors import ComponentError
from kdframe.registry import Params

class LayerPair(Params):
    """One (student layer, teacher layer) pair of a feature- or relation-based term.

    Paths are names from ``model.named_modules()``; ``"logits"`` names the model's output.
    """

    student: str = Field(min_length=1, description="Module path in the student, or 'logits'.")
    teacher: str = Field(min_length=1, description="Module path in the teacher, or 'logits'.")


@dataclass
class BuildContext:
    """What :meth:`LossTerm.build` learns from the dry run and the stage.

    Attributes:
        student_shapes: Output shape of each requested student layer (batch dimension included).
        teacher_shapes: Output shape of each requested teacher layer.
        student_modules: The student's requested modules (read-only use, e.g. a BatchNorm's statistics).
        teacher_modules: The first teacher's requested modules.
        num_train_samples: Size of the training split (for memory banks).
        num_classes: Number of classes.
        epochs: Number of epochs of the stage.
    """

    student_shapes: dict[str, torch.Size]
    teacher_shapes: dict[str, torch.Size]
    student_modules: dict[str, nn.Module] = field(default_factory=dict)
    teacher_modules: dict[str, nn.Module] = field(default_factory=dict)
    num_train_samples: int = 0
    num_classes: int = 0
    epochs: int = 1


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
        epochs: The number of epochs of the stage (for schedules such as a temperature's).
        indices: Int64 positions of the batch's samples in the training split (for memory banks
            such as CRD's); ``None`` when the samples do not come from the training split.
        teacher_weights: Relative weights of ``teachers`` (a multi-teacher stage's); empty means
            equal. Terms that combine teachers use :meth:`average_over_teachers`.
    """

    student: ModelOutputs
    teachers: list[ModelOutputs]
    labels: Tensor
    epoch: int = 0
    epochs: int = 1
    indices: Tensor | None = None
    teacher_weights: tuple[float, ...] = ()

    def average_over_teachers(self, values: Sequence[Tensor]) -> Tensor:
        """Combine per-teacher values: the weighted mean with ``teacher_weights``, else the mean."""
        if len(values) == 1:
            return values[0]
        if self.teacher_weights:
            total = sum(self.teacher_weights)
            return sum((w / total) * v for w, v in zip(self.teacher_weights, values))  # type: ignore[return-value]
        return torch.stack(list(values)).mean()

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

    #: Epochs of a pre-training phase the term needs before the stage (FT's paraphraser, AB's
    #: initialisation); 0 for none. Set from params in ``__init__``.
    pretrain_epochs: int = 0
    #: Whether that phase trains the student too (AB) or only the term's own modules (FT).
    pretrain_trains_student: bool = False

    def build(self, context: BuildContext) -> None:
        """Create adapters from the shapes of the tapped layers (batch dimension included).

        Called once per stage, after a dry run on the CPU, before the optimizer is created; the core
        then moves the term to the training device, so adapters may be created on the CPU in the
        default dtype. Raise :class:`kdframe.errors.LayerError` for shapes the term cannot use. The
        default does nothing.
        """

    @abc.abstractmethod
    def forward(self, outputs: StepOutputs) -> Tensor:
        """Return the (unweighted) scalar loss of this term."""

    def pretrain_loss(self, outputs: StepOutputs) -> Tensor:
        """The loss of the pre-training phase (only for terms with ``pretrain_epochs > 0``).

        The core runs that phase as its own stage, named ``<stage>-pretrain``, before the stage
        that uses the term; the same term object (with what it learnt) then serves the stage.
        """
        raise ComponentError(f"{type(self).__name__} declares no pre-training phase.")

    def end_pretraining(self) -> None:
        """Called when the pre-training phase is over (e.g. to freeze a paraphraser). Default: nothing."""

    def current_values(self, epoch: int, epochs: int) -> dict[str, float]:
        """Scheduled params to log at an epoch, e.g. ``{"temperature": 4.0}``. Default: none."""
        return {}
