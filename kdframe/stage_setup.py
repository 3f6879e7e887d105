"""What one stage needs, built and checked before any training starts (:class:`StageSetup`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from kdframe.features import FeatureTap
from kdframe.losses import LossTerm
from kdframe.optim import StageOptimizer, trainable_parameters
from kdframe.schedule import TrainingConfig
from kdframe.stage_kinds import TRAIN, StageKind
from kdframe.state import StageInfo
from kdframe.teacher_policy import TeacherPolicy
from kdframe.value_schedule import ScheduledFloat


@dataclass
class WeightedTerm:
    """A built loss term with its label (its name, numbered when a stage uses it twice), its weight
    and the plugin that provides it (``Provider.describe()``, for error messages)."""

    name: str
    weight: ScheduledFloat
    term: LossTerm
    provider: str = "its plugin"


@dataclass
class StageSetup:
    """Everything one stage needs, built and checked before any training starts.

    Attributes:
        info: The stage as hooks see it.
        student: The model to train.
        teachers: Models that teach it (frozen, eval mode).
        terms: The weighted loss terms, already built from a dry run.
        student_tap: Records the student layers the terms asked for (or ``None``).
        teacher_tap: Records the first teacher's layers the terms asked for (or ``None``).
        training: The stage's training settings.
        kind: The stage's kind (:mod:`kdframe.stage_kinds`): ``train``; ``pretrain``, a term's
            pre-training phase, which optimises the terms' ``pretrain_loss`` (with weight 1) and the
            student only when a term asks for it; or ``evaluate``, which only evaluates ``student``.
        snapshots: 1-based epochs after which the student is saved as a snapshot.
        teacher_policy: Picks the teachers of each batch and their weights; ``None``: all, equally.
        policy_provider: Who provides the policy (for error messages).
        init_from: The model (key) whose weights the student starts from, or ``None``.
        optimizer: The stage's optimizer and LR schedule (``None`` for an ``evaluate`` stage).
    """

    info: StageInfo
    student: nn.Module
    teachers: list[nn.Module]
    terms: list[WeightedTerm]
    student_tap: FeatureTap | None
    teacher_tap: FeatureTap | None
    training: TrainingConfig
    kind: StageKind = TRAIN
    snapshots: tuple[int, ...] = ()
    teacher_policy: TeacherPolicy | None = None
    policy_provider: str = "its curriculum"
    init_from: str | None = None
    optimizer: StageOptimizer | None = None

    @property
    def trains_student(self) -> bool:
        """Whether the stage changes the student: a ``train`` stage, or a pre-training phase whose
        term asks for it."""
        return self.kind == TRAIN or any(w.term.pretrain_trains_student for w in self.terms)


def trained_parameters(setup: StageSetup) -> list[tuple[str, nn.Parameter]]:
    """What a stage's optimizer trains, named for ``param_groups``: the student (unless the stage is
    a pre-training phase that leaves it alone) and the loss terms' own parameters."""
    return trainable_parameters(setup.student, [(w.name, w.term) for w in setup.terms], setup.trains_student)


def trained_modules(setup: StageSetup) -> list[tuple[str, nn.Module]]:
    """What training changes, named for messages: the student and the loss terms (adapters,
    memory banks)."""
    return [("student", setup.student), *((f"loss term '{w.name}'", w.term) for w in setup.terms)]
