"""One dry training step of every stage before anything trains, so a broken loss fails in seconds.

``kdframe run`` and ``kdframe validate`` build every stage and then, for each stage that trains, run
one step on two training samples: the teachers' and the student's forward passes, every loss term
(also those whose weight is 0 at the first epoch) and the backward pass, and builds the optimizer
(its parameter groups must match), without an optimizer step.
An exception from a term's own code is reported as its plugin's bug
(:func:`kdframe.registry.plugin_bug`). The step runs on copies of the student, the teachers and the
terms, and the global random generators are put back afterwards, so training is exactly the same as
without the check (BatchNorm statistics, memory banks, a term's own counters are never touched).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import replace

import torch
from torch import Tensor

from kdframe.data import AnyDataset, InMemoryDataset
from kdframe.errors import ComponentError, TrainingError
from kdframe.losses import ModelOutputs, StepOutputs
from kdframe.optim import trainable_parameters
from kdframe.resume import rng_state, set_rng_state
from kdframe.stage_kinds import PRETRAIN, trains
from kdframe.teacher_policy import TeacherBatch, all_teachers, run_reweigh, run_select
from kdframe.stage_setup import StageSetup
from kdframe.train_step import term_value

#: Training samples of the dry step (two, so that BatchNorm in training mode has a batch).
SAMPLES = 2


def sample_batch(data: AnyDataset, count: int = SAMPLES) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``count`` training samples, untransformed: ``(images, labels, indices)``."""
    count = min(count, data.train_count)
    if isinstance(data, InMemoryDataset):
        return data.train_images[:count], data.train_labels[:count], torch.arange(count)
    samples = [data.train[index] for index in range(count)]
    labels = torch.tensor([int(label) for _, label in samples], dtype=torch.int64)
    return torch.stack([image for image, _ in samples]), labels, torch.arange(count)


@contextlib.contextmanager
def global_generators_kept() -> Iterator[None]:
    """Within the block the global random generators may be used; afterwards they are as before."""
    generators = rng_state()
    try:
        yield
    finally:
        set_rng_state(generators)


def check_logits(setup: StageSetup, key: str, role: str, logits: Tensor, data: AnyDataset) -> None:
    """Refuse a model whose output is not one logit per class of the data: a teacher with another
    head (say a 1000-class pretrained network on 3 classes) would otherwise fail, or silently teach
    nonsense, at the first distillation batch."""
    classes = len(data.classes)
    if isinstance(logits, Tensor) and logits.ndim == 2 and logits.shape[1] == classes:
        return
    shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
    width = f"{logits.shape[1]} logits" if isinstance(logits, Tensor) and logits.ndim == 2 else f"an output of shape {shape}"
    raise ComponentError(
        f"Stage '{setup.info.name}': models.{key} (the stage's {role}) gives {width} per image, but the dataset has "
        f"{classes} classes, so its outputs cannot be compared with the labels or with the other models'. "
        f"Give it a head of {classes} outputs: set models.{key}.params.num_classes to {classes} (or leave it "
        "out to take the dataset's), and start a pretrained model from its weights file with "
        f"models.{key}.weights, which re-initialises a head of another shape."
    )


def check_step(setup: StageSetup, data: AnyDataset) -> None:
    """Run one dry step of ``setup`` (see the module's docs); raise on a term that fails."""
    if not trains(setup.kind) or not setup.terms:
        return
    images, labels, indices = sample_batch(data)
    pretraining = setup.kind == PRETRAIN
    # Copies, taken together so that terms holding student modules keep holding the copied ones: the
    # real models and terms (Python state included) are never touched. The copied modules keep the
    # forward hooks of the stage's feature taps, which record into the taps as in training.
    student, teachers, terms, policy = copy.deepcopy(
        (setup.student, setup.teachers, [w.term for w in setup.terms], setup.teacher_policy)
    )
    weighted = [replace(w, term=term) for w, term in zip(setup.terms, terms)]
    with global_generators_kept():
        trains_student = not pretraining or any(term.pretrain_trains_student for term in terms)
        student.train(trains_student)
        for term in terms:
            term.train()
        selection = all_teachers(len(teachers))
        if policy is not None:
            context = TeacherBatch(0, setup.training.epochs, 0, 0, setup.info.teachers, torch.Generator().manual_seed(0))
            selection = run_select(policy, context, setup.policy_provider)
        teacher_outputs = []
        with torch.no_grad():
            for index in selection.indices:
                teacher = teachers[index]
                teacher.eval()
                logits = teacher(images)
                check_logits(setup, setup.info.teachers[index], "teacher", logits, data)
                tap = setup.teacher_tap if index == 0 else None
                teacher_outputs.append(ModelOutputs(logits, tap.take() if tap else {}))
        logits = student(images)
        check_logits(setup, setup.info.student, "student", logits, data)
        features = setup.student_tap.take() if setup.student_tap else {}
        outputs = StepOutputs(
            ModelOutputs(logits, features), teacher_outputs, labels, 0, setup.training.epochs, indices,
            selection.weights,
        )
        if policy is not None:
            outputs.teacher_weights = run_reweigh(policy, selection, outputs, setup.policy_provider)
        # Weight 1 for every term: one whose weight starts at 0 (a warm-up) is checked too.
        values = [term_value(term, 1.0, outputs, pretraining) for term in weighted]
        total = sum((value for value in values if value.requires_grad), logits.new_zeros(()))
        if total.requires_grad:
            try:
                total.backward()
            except RuntimeError as error:
                first_line = (str(error).strip().splitlines() or [""])[0][:300]
                raise TrainingError(
                    f"Stage '{setup.info.name}': the backward pass of its loss terms "
                    f"({', '.join(w.name for w in setup.terms)}) fails on a first batch: {first_line}. A "
                    "term's forward probably changes a tensor in place that autograd needs; report it to "
                    "the term's plugin."
                ) from error
        if setup.optimizer is not None:  # its factory works on the stage's parameter groups
            setup.optimizer.make(trainable_parameters(student, [(w.name, w.term) for w in weighted], trains_student))
