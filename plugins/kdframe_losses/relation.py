"""``rkd_distance``: relation-based distillation of pairwise distances (RKD, distance-wise).

Park, Kim, Lu & Cho (2019), "Relational Knowledge Distillation", CVPR 2019, arXiv:1904.05068. The
student learns the *structure* of the teacher's embedding space rather than the embeddings, so the
two may have different sizes and no adapter is needed.

Each sample's output (logits by default, or a named layer's output) is flattened to a vector
``e_n``. For each of student and teacher::

    d(i, j)   = || e_i - e_j ||_2                          for every pair i < j
    mu        = mean of d(i, j) over the N(N-1)/2 pairs     (the off-diagonal mean)
    psi(i, j) = d(i, j) / mu

and the term is the Huber (smooth L1, beta = 1) loss between the two normalised distances, averaged
over the pairs::

    rkd_distance = (2 / (N(N-1))) * sum_{i<j} huber(psi_s(i, j) - psi_t(i, j)),
    huber(x) = 0.5 x^2 if |x| < 1 else |x| - 0.5

(The reference code averages over all N^2 entries of the distance matrix, diagonal zeros included,
which is ``(N-1)/N`` times this value.) Squared distances are computed as
``|e_i|^2 + |e_j|^2 - 2 e_i.e_j`` and clamped at 1e-12 before the square root, as in the reference
code, in at least float32.

Batch size 1 has no pairs: the term then returns ``0 * sum(student output)``, a zero that keeps the
autograd graph (so a short last batch neither fails nor contributes). With batch size 2 there is one
pair, whose normalised distance is 1 for both models, so the term is always 0. The teacher's outputs
are detached; the term learns from the stage's first teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdframe import ComponentError, LayerError, LossSpec, LossTerm, Params, StepOutputs
from kdframe_losses._common import compute_dtype, layer_output, layer_shape, require_teacher, shape_text

EPS = 1e-12


class RKDDistanceParams(Params):
    """Params of ``rkd_distance``."""

    student_layer: str | None = Field(
        None,
        min_length=1,
        description=(
            "Module path of the student layer whose output is the embedding (flattened per sample); "
            "null uses the student's logits."
        ),
    )
    teacher_layer: str | None = Field(
        None,
        min_length=1,
        description=(
            "Module path of the layer of the stage's first teacher whose output is the embedding "
            "(flattened per sample); null uses the teacher's logits."
        ),
    )


def normalised_distances(embeddings: Tensor) -> Tensor:
    """Pairwise Euclidean distances (pairs ``i < j``) divided by their mean. ``embeddings``: (N, D)."""
    squared_norms = embeddings.pow(2).sum(dim=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * embeddings @ embeddings.t()
    rows, cols = torch.triu_indices(len(embeddings), len(embeddings), offset=1, device=embeddings.device)
    distances = squared[rows, cols].clamp_min(EPS).sqrt()
    return distances / distances.mean().clamp_min(EPS)


class RKDDistanceLoss(LossTerm):
    """Huber loss between the student's and teacher's mean-normalised pairwise distances."""

    needs_teacher = True

    def __init__(self, params: RKDDistanceParams) -> None:
        super().__init__()
        self.student_layer = params.student_layer
        self.teacher_layer = params.teacher_layer
        self.student_layers = (params.student_layer,) if params.student_layer is not None else ()
        self.teacher_layers = (params.teacher_layer,) if params.teacher_layer is not None else ()

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """Check that the named layers were tapped and give per-sample outputs; nothing is created."""
        for layer, shapes, role in (
            (self.student_layer, student_shapes, "student"),
            (self.teacher_layer, teacher_shapes, "teacher"),
        ):
            if layer is None:
                continue
            shape = layer_shape(shapes, layer, role, "rkd_distance")
            if len(shape) < 2:
                raise LayerError(
                    f"rkd_distance: the {role} layer '{layer}' gives output shape {shape_text(shape)}; "
                    "it needs a batch dimension and at least one feature dimension."
                )

    def forward(self, outputs: StepOutputs) -> Tensor:
        require_teacher(outputs.teachers, "rkd_distance")
        student = layer_output(outputs.student, self.student_layer, "student", "rkd_distance")
        teacher = layer_output(outputs.teacher, self.teacher_layer, "teacher", "rkd_distance").detach()
        if student.dim() < 2 or teacher.dim() < 2 or student.shape[0] != teacher.shape[0]:
            raise ComponentError(
                f"rkd_distance needs outputs with the same batch size and a feature dimension; the "
                f"student gives {shape_text(student.shape)} and the teacher {shape_text(teacher.shape)}."
            )
        if student.shape[0] < 2:
            return student.sum() * 0.0  # no pairs: a zero that keeps the graph
        dtype = compute_dtype(student, teacher)
        psi_student = normalised_distances(student.reshape(student.shape[0], -1).to(dtype))
        psi_teacher = normalised_distances(teacher.reshape(teacher.shape[0], -1).to(dtype))
        return F.smooth_l1_loss(psi_student, psi_teacher, beta=1.0)

    def extra_repr(self) -> str:
        return f"student_layer={self.student_layer!r}, teacher_layer={self.teacher_layer!r}"


def make_rkd_distance(params: RKDDistanceParams) -> RKDDistanceLoss:
    """Factory of ``rkd_distance``."""
    return RKDDistanceLoss(params)


RKD_DISTANCE = LossSpec(
    name="rkd_distance",
    summary="RKD distance-wise (Park et al. 2019): Huber loss between normalised pairwise distances.",
    factory=make_rkd_distance,
    params=RKDDistanceParams,
    family="relation",
)
