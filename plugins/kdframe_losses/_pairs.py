"""Layer-pair helpers shared by the feature terms of :mod:`kdframe_losses` (not part of its public surface)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdframe import BuildContext, LayerError, LayerPair, StepOutputs
from kdframe_losses._common import layer_output, layer_shape, shape_text

#: Placeholder layer pairs for the specs' ``example`` params.
#: Example pairs for a plain_cnn student of depth 2 and teacher of depth 6 (the docs and benchmarks):
#: conv blocks at 14x14 and at 28x28.
EXAMPLE_LAYERS = [
    {"student": "features.2", "teacher": "features.4"},
    {"student": "features.0", "teacher": "features.1"},
]


def layers_field(what: str) -> Any:
    """The ``layers`` field of a feature term's params: at least one (student, teacher) pair."""
    return Field(
        min_length=1,
        description=(
            "Pairs of layers to distil, each {'student': path, 'teacher': path} with module paths "
            "from named_modules() (the teacher path names a layer of the stage's first teacher). "
            f"{what} The term is the mean over the pairs."
        ),
    )


def layer_paths(pairs: Sequence[LayerPair]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The distinct student and teacher paths of ``pairs``, in order of first appearance."""
    student = tuple(dict.fromkeys(pair.student for pair in pairs))
    teacher = tuple(dict.fromkeys(pair.teacher for pair in pairs))
    return student, teacher


def pair_error(term: str, pair: LayerPair, student: Sequence[int], teacher: Sequence[int], why: str) -> LayerError:
    """A :class:`LayerError` naming both layers of a pair and their output shapes."""
    return LayerError(
        f"{term} cannot compare student layer '{pair.student}' (output shape {shape_text(tuple(student))}) "
        f"with teacher layer '{pair.teacher}' (output shape {shape_text(tuple(teacher))}): {why}"
    )


def pair_shapes(context: BuildContext, pair: LayerPair, term: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The dry-run shapes of a pair's layers (a :class:`LayerError` when one was not reported)."""
    student = tuple(layer_shape(context.student_shapes, pair.student, "student", term))
    teacher = tuple(layer_shape(context.teacher_shapes, pair.teacher, "teacher", term))
    return student, teacher


def check_maps(term: str, pair: LayerPair, student: Sequence[int], teacher: Sequence[int]) -> None:
    """Raise a :class:`LayerError` unless both outputs are feature maps (N, C, H, W) of one batch size."""
    if len(student) != 4 or len(teacher) != 4:
        raise pair_error(
            term,
            pair,
            student,
            teacher,
            f"it needs feature maps (N, C, H, W) from both layers, got {len(student)}-D and "
            f"{len(teacher)}-D outputs. Choose convolutional layers (not 'logits' or a flattened or "
            "linear layer).",
        )
    if student[0] != teacher[0]:
        raise pair_error(term, pair, student, teacher, "their batch sizes differ.")


def common_size(student: Sequence[int], teacher: Sequence[int]) -> tuple[int, int]:
    """The spatial size both maps are brought to: ``(min(H_s, H_t), min(W_s, W_t))``."""
    return (min(student[-2], teacher[-2]), min(student[-1], teacher[-1]))


def pool_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Adaptive average pooling of a map (N, C, H, W) to ``size``; the map itself when it has that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.adaptive_avg_pool2d(x, size)


def match_spatial(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Pool the larger of two maps down to the smaller size (per dimension), the other unchanged."""
    size = common_size(tuple(student.shape), tuple(teacher.shape))
    return pool_to(student, size), pool_to(teacher, size)


def pair_features(outputs: StepOutputs, pair: LayerPair, term: str) -> tuple[Tensor, Tensor]:
    """The student's output (with gradients) and the first teacher's output (detached) of a pair."""
    student = layer_output(outputs.student, pair.student, "student", term)
    teacher = layer_output(outputs.teacher, pair.teacher, "teacher", term).detach()
    return student, teacher


def describe_pairs(pairs: Sequence[LayerPair]) -> str:
    """``s1->t1, s2->t2`` for ``extra_repr``."""
    return ", ".join(f"{pair.student}->{pair.teacher}" for pair in pairs)
