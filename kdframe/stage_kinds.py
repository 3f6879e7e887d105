"""The kinds of stage, in one place.

A curriculum plans stages of two kinds (``StagePlan.kind``):

* ``train``: train the student with the stage's loss terms;
* ``evaluate``: only evaluate a model that the curriculum builds from models that already exist
  (``StagePlan.build``, e.g. a born-again ensemble); nothing is trained or saved.

The core adds a third kind before a ``train`` stage whose loss terms declare a pre-training phase
(``LossTerm.pretrain_epochs``, e.g. a paraphraser or an initialisation):

* ``pretrain``: optimise those terms' ``pretrain_loss`` (weight 1) for their epochs; the student is
  trained only when a term asks for it. Its name is the stage's with :data:`PRETRAIN_SUFFIX`, which
  is also the name its ``training.stages`` overrides use.
"""

from __future__ import annotations

from typing import Literal

StageKind = Literal["train", "pretrain", "evaluate"]
PlannedKind = Literal["train", "evaluate"]

TRAIN: StageKind = "train"
PRETRAIN: StageKind = "pretrain"
EVALUATE: StageKind = "evaluate"

#: Appended to a stage's name to name its pre-training phase.
PRETRAIN_SUFFIX = "-pretrain"


def pretrain_name(stage: str) -> str:
    """The name of ``stage``'s pre-training phase."""
    return f"{stage}{PRETRAIN_SUFFIX}"


def planned_name(name: str) -> str:
    """The planned stage a stage name belongs to: itself, or the stage a pre-training phase precedes."""
    return name.removesuffix(PRETRAIN_SUFFIX)


def trains(kind: StageKind) -> bool:
    """Whether a stage of this kind has a training loop (an optimizer, epochs, checkpoints)."""
    return kind != EVALUATE
