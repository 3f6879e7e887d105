"""Relation-based distillation: the student learns the *relations between the samples of a batch*
that the teacher's embeddings show, not the embeddings themselves.

Common to every term of this module:

* ``layers`` is a list of one or more ``{"student": path, "teacher": path}`` pairs (module paths from
  ``model.named_modules()``; ``"logits"`` is the model's output; default: one pair of logits). Each
  layer's output is flattened per sample into an embedding ``e_n`` (``N`` samples). Every method
  compares ``N x N`` (or ``N x N x N``) relations, so student and teacher embeddings may have
  different widths and no adapter is needed. Teacher layers are tapped in the stage's first teacher
  and detached: no gradient ever reaches a teacher.
* The term's value is the **mean over the layer pairs** of the per-pair values below. (Papers that
  sum over layers, e.g. SP, correspond to the term times the number of pairs: scale the weight.)
* A batch too small to have a relation (batch size 1; fewer than 3 for ``rkd_angle``) gives
  ``0 * sum(student embeddings)``: a zero that keeps the autograd graph, so a short last batch neither
  fails nor contributes.
* Terms compute in at least float32 (half precision is promoted; float64 stays float64).

``rkd_distance`` — Park, Kim, Lu & Cho (2019), "Relational Knowledge Distillation", CVPR 2019,
arXiv:1904.05068, distance-wise. For each model::

    d(i, j)   = || e_i - e_j ||_2                          for every pair i < j
    mu        = mean of d(i, j) over the N(N-1)/2 pairs     (the off-diagonal mean)
    psi(i, j) = d(i, j) / mu
    rkd_distance = (2 / (N(N-1))) * sum_{i<j} huber(psi_s(i, j) - psi_t(i, j)),
    huber(x) = 0.5 x^2 if |x| < 1 else |x| - 0.5          (smooth L1, beta = 1)

(The reference code averages over all ``N^2`` entries of the distance matrix, diagonal zeros
included, which is ``(N-1)/N`` times this value.) Squared distances are computed as
``|e_i|^2 + |e_j|^2 - 2 e_i.e_j`` and clamped at 1e-12 before the square root, as in the reference
code. With batch size 2 the single normalised distance is 1 for both models, so the term is 0.

``rkd_angle`` — the same paper, angle-wise. For an ordered triplet of distinct samples ``(i, j, k)``
the cosine of the angle at vertex ``i``::

    psi_A(i, j, k) = < (e_j - e_i) / |e_j - e_i| , (e_k - e_i) / |e_k - e_i| >
    rkd_angle = mean over the N(N-1)(N-2) ordered distinct triplets of huber(psi_A_s - psi_A_t)

(The reference code averages over all ``N^3`` entries, degenerate ones included, which is
``(N-1)(N-2)/N^2`` times this value.) The cosines are computed from the Gram matrix of the centred
embeddings, ``<e_j - e_i, e_k - e_i> = G_jk - G_ij - G_ik + G_ii``, so memory is ``O(N^3)`` whatever the
embedding width (the reference materialises ``N x N x D`` differences); norms are clamped at 1e-6 and
cosines at [-1, 1]. Angles at two identical samples are undefined (the reference gives 0; here they
are numerical noise within [-1, 1]). CRD's benchmark (RepDistiller, and mdistiller) weights RKD's
distance term by 25 and its angle term by 50.

``sp`` — Tung & Mori (2019), "Similarity-Preserving Knowledge Distillation", ICCV 2019,
arXiv:1907.09682. With ``A`` the (N, D) flattened activations::

    G = row_normalise(A A^T)        (each row divided by its L2 norm, clamped at 1e-12)
    sp = || G_s - G_t ||_F^2 / N^2

The paper sums this over layer pairs, times its weight gamma; CRD's benchmark (RepDistiller) uses
one pair (the last feature map) with weight 3000.

``cc`` — Peng, Jin, Liu et al. (2019), "Correlation Congruence for Knowledge
Distillation", ICCV 2019, arXiv:1904.01802, as in the common implementation (Knowledge-Distillation-Zoo,
and the defaults gamma 0.4, p_order 2 from it): embeddings are L2-normalised (``f = e / max(|e|, 1e-12)``),
and the Gaussian RBF kernel ``exp(-gamma |f_i - f_j|^2) = exp(-2 gamma) exp(2 gamma f_i.f_j)`` is
approximated by its Taylor series of order ``P``::

    C(i, j) = sum_{p=0}^{P} exp(-2 gamma) (2 gamma)^p / p! * (f_i . f_j)^p
    cc = (1 / N^2) * sum_{i,j} (C_s(i, j) - C_t(i, j))^2          (mean squared difference)

Its suggested weight is Knowledge-Distillation-Zoo's 100 for this formula. RepDistiller's CC (weight
0.02 in CRD's benchmark) is a different correlation (of embeddings through a linear embed layer), so
its weight does not carry over: with 0.02 this term is negligible beside cross-entropy.

``pkt`` — Passalis & Tefas (2018), "Learning Deep Representations with Probabilistic Knowledge
Transfer", ECCV 2018, arXiv:1803.10837, as in the authors' code (eps = 1e-7)::

    f_n = e_n / (|e_n| + eps)
    K(i, j) = (f_i . f_j + 1) / 2                  (cosine similarity mapped to [0, 1], diagonal included)
    P(i, j) = K(i, j) / sum_j K(i, j)             (conditional probabilities, per row)
    pkt = (1 / N^2) * sum_{i,j} P_t(i, j) * log((P_t(i, j) + eps) / (P_s(i, j) + eps))

i.e. KL(teacher || student) averaged over all ``N^2`` entries, as the authors' code does (not summed
per row). Values are small; CRD's benchmark weights the term by 30000.
"""

from __future__ import annotations

import abc

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdframe import (
    BuildContext,
    ComponentError,
    LOGITS,
    LayerError,
    LayerPair,
    LossSpec,
    LossTerm,
    ModelOutputs,
    Params,
    StepOutputs,
)
from kdframe_losses._common import compute_dtype, layer_output, layer_shape, require_teacher, shape_text

EPS = 1e-12
#: Clamp of the norms of difference vectors in ``rkd_angle`` (on the squared norm: 1e-12).
ANGLE_EPS = 1e-12
#: The PKT authors' epsilon.
PKT_EPS = 1e-7

_LAYERS_HELP = (
    "Pairs of layers whose outputs are the embeddings, each {\"student\": path, \"teacher\": path} "
    "(module paths from model.named_modules(), or 'logits' for the model's output; teacher paths name "
    "layers of the stage's first teacher). Outputs are flattened per sample; widths may differ. The "
    "term is the mean over the pairs."
)


def _default_layers() -> list[LayerPair]:
    return [LayerPair(student=LOGITS, teacher=LOGITS)]


class RelationParams(Params):
    """Params shared by the relation-based terms: the layer pairs."""

    layers: list[LayerPair] = Field(default=_default_layers(), min_length=1, description=_LAYERS_HELP)


def embedding(model: ModelOutputs, path: str, role: str, term: str) -> Tensor:
    """The output of ``path`` (``"logits"``: the model's logits), or a clear error."""
    if path == LOGITS:
        return model.logits
    return layer_output(model, path, role, term)


class RelationTerm(LossTerm):
    """Base of the relation-based terms: layer pairs, checks, flattening and the mean over pairs.

    Subclasses set :attr:`term_name` and :attr:`min_batch` and implement :meth:`relation` on
    flattened ``(N, D_s)`` and ``(N, D_t)`` embeddings (the teacher's detached).
    """

    needs_teacher = True
    term_name: ClassVar[str] = ""
    #: The smallest batch with a relation; smaller batches give a graph-connected zero.
    min_batch: ClassVar[int] = 2

    def __init__(self, params: RelationParams) -> None:
        super().__init__()
        self.pairs = [(pair.student, pair.teacher) for pair in params.layers]
        self.student_layers = tuple(dict.fromkeys(student for student, _ in self.pairs))
        self.teacher_layers = tuple(dict.fromkeys(teacher for _, teacher in self.pairs))

    def build(self, context: BuildContext) -> None:
        """Check that the named layers were tapped and give per-sample outputs; nothing is created.

        A ``"logits"`` path missing from the shapes is accepted: the logits are always there.
        """
        for student, teacher in self.pairs:
            checks = ((student, context.student_shapes, "student"), (teacher, context.teacher_shapes, "teacher"))
            for layer, shapes, role in checks:
                if layer == LOGITS and layer not in shapes:
                    continue
                shape = layer_shape(shapes, layer, role, self.term_name)
                if len(shape) < 2:
                    raise LayerError(
                        f"{self.term_name}: the {role} layer '{layer}' gives output shape {shape_text(shape)}; "
                        "it needs a batch dimension and at least one feature dimension."
                    )

    def forward(self, outputs: StepOutputs) -> Tensor:
        require_teacher(outputs.teachers, self.term_name)
        values = []
        for student_path, teacher_path in self.pairs:
            student = embedding(outputs.student, student_path, "student", self.term_name)
            teacher = embedding(outputs.teacher, teacher_path, "teacher", self.term_name).detach()
            if student.dim() < 2 or teacher.dim() < 2 or student.shape[0] != teacher.shape[0]:
                raise ComponentError(
                    f"{self.term_name} needs outputs with the same batch size and a feature dimension; the "
                    f"student layer '{student_path}' gives {shape_text(student.shape)} and the teacher layer "
                    f"'{teacher_path}' {shape_text(teacher.shape)}."
                )
            dtype = compute_dtype(student, teacher)
            if student.shape[0] < self.min_batch:
                values.append(student.sum().to(dtype) * 0.0)  # no relation: a zero that keeps the graph
                continue
            n = student.shape[0]
            values.append(self.relation(student.reshape(n, -1).to(dtype), teacher.reshape(n, -1).to(dtype)))
        return values[0] if len(values) == 1 else sum(values) / len(values)

    @abc.abstractmethod
    def relation(self, student: Tensor, teacher: Tensor) -> Tensor:
        """The term for one pair of flattened embeddings with at least :attr:`min_batch` samples."""

    def extra_repr(self) -> str:
        return "layers=[" + ", ".join(f"{s!r}->{t!r}" for s, t in self.pairs) + "]"


# -- rkd_distance ---------------------------------------------------------------------------------


class RKDDistanceParams(RelationParams):
    """Params of ``rkd_distance``."""


def normalised_distances(embeddings: Tensor) -> Tensor:
    """Pairwise Euclidean distances (pairs ``i < j``) divided by their mean. ``embeddings``: (N, D)."""
    squared_norms = embeddings.pow(2).sum(dim=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * embeddings @ embeddings.t()
    rows, cols = torch.triu_indices(len(embeddings), len(embeddings), offset=1, device=embeddings.device)
    distances = squared[rows, cols].clamp_min(EPS).sqrt()
    return distances / distances.mean().clamp_min(EPS)


class RKDDistanceLoss(RelationTerm):
    """Huber loss between the student's and teacher's mean-normalised pairwise distances."""

    term_name = "rkd_distance"

    def relation(self, student: Tensor, teacher: Tensor) -> Tensor:
        return F.smooth_l1_loss(normalised_distances(student), normalised_distances(teacher), beta=1.0)


def make_rkd_distance(params: RKDDistanceParams) -> RKDDistanceLoss:
    """Factory of ``rkd_distance``."""
    return RKDDistanceLoss(params)


# -- rkd_angle ------------------------------------------------------------------------------------


class RKDAngleParams(RelationParams):
    """Params of ``rkd_angle``."""


def triplet_cosines(embeddings: Tensor) -> Tensor:
    """``cos[i, j, k]`` = cosine of the angle at ``e_i`` between ``e_j`` and ``e_k``, from a Gram matrix.

    Entries with ``j == i`` or ``k == i`` are meaningless and must be masked by the caller.
    """
    centred = embeddings - embeddings.mean(dim=0, keepdim=True)  # angles are translation invariant
    gram = centred @ centred.t()
    squared_norms = gram.diagonal()
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * gram
    norms = squared.clamp_min(ANGLE_EPS).sqrt()  # norms[i, j] = |e_j - e_i|
    dots = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + squared_norms[:, None, None]
    return (dots / (norms[:, :, None] * norms[:, None, :])).clamp(-1.0, 1.0)


def distinct_triplets(n: int, device: torch.device) -> Tensor:
    """Boolean ``(n, n, n)`` mask of the triplets whose three indices differ."""
    index = torch.arange(n, device=device)
    i, j, k = index[:, None, None], index[None, :, None], index[None, None, :]
    return (i != j) & (i != k) & (j != k)


class RKDAngleLoss(RelationTerm):
    """Huber loss between the student's and teacher's cosines of the angles of all triplets."""

    term_name = "rkd_angle"
    min_batch = 3

    def relation(self, student: Tensor, teacher: Tensor) -> Tensor:
        mask = distinct_triplets(student.shape[0], student.device)
        return F.smooth_l1_loss(triplet_cosines(student)[mask], triplet_cosines(teacher)[mask], beta=1.0)


def make_rkd_angle(params: RKDAngleParams) -> RKDAngleLoss:
    """Factory of ``rkd_angle``."""
    return RKDAngleLoss(params)


# -- sp -------------------------------------------------------------------------------------------


class SPParams(RelationParams):
    """Params of ``sp``."""


def similarity_matrix(embeddings: Tensor) -> Tensor:
    """``A A^T`` with each row L2-normalised (SP's ``G``)."""
    return F.normalize(embeddings @ embeddings.t(), p=2, dim=1, eps=EPS)


class SPLoss(RelationTerm):
    """``|| G_s - G_t ||_F^2 / N^2`` of row-normalised Gram matrices (Tung & Mori 2019)."""

    term_name = "sp"

    def relation(self, student: Tensor, teacher: Tensor) -> Tensor:
        n = student.shape[0]
        return (similarity_matrix(student) - similarity_matrix(teacher)).pow(2).sum() / (n * n)


def make_sp(params: SPParams) -> SPLoss:
    """Factory of ``sp``."""
    return SPLoss(params)


# -- cc -------------------------------------------------------------------------------------------


class CCParams(RelationParams):
    """Params of ``cc``."""

    gamma: float = Field(
        0.4,
        gt=0.0,
        description="gamma of the Gaussian RBF kernel exp(-gamma * |f_i - f_j|^2) on L2-normalised embeddings.",
    )
    p_order: int = Field(2, ge=1, le=20, description="Order P of the kernel's Taylor series (terms p = 0..P).")


class CCLoss(RelationTerm):
    """Mean squared difference of Taylor-approximated RBF correlation matrices (Peng et al. 2019)."""

    term_name = "cc"

    def __init__(self, params: CCParams) -> None:
        super().__init__(params)
        self.gamma = float(params.gamma)
        self.p_order = int(params.p_order)

    def correlation(self, embeddings: Tensor) -> Tensor:
        normalised = F.normalize(embeddings, p=2, dim=1, eps=EPS)
        similarity = normalised @ normalised.t()
        scale = math.exp(-2.0 * self.gamma)
        total = torch.full_like(similarity, scale)  # p = 0
        power = torch.ones_like(similarity)
        for p in range(1, self.p_order + 1):
            power = power * similarity
            total = total + scale * (2.0 * self.gamma) ** p / math.factorial(p) * power
        return total

    def relation(self, student: Tensor, teacher: Tensor) -> Tensor:
        return (self.correlation(student) - self.correlation(teacher)).pow(2).mean()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}, p_order={self.p_order}"


def make_cc(params: CCParams) -> CCLoss:
    """Factory of ``cc``."""
    return CCLoss(params)


# -- pkt ------------------------------------------------------------------------------------------


class PKTParams(RelationParams):
    """Params of ``pkt``."""


def conditional_probabilities(embeddings: Tensor) -> Tensor:
    """PKT's ``P``: cosine similarities mapped to [0, 1] and normalised per row."""
    normalised = embeddings / (embeddings.norm(dim=1, keepdim=True) + PKT_EPS)
    similarity = (normalised @ normalised.t() + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


class PKTLoss(RelationTerm):
    """KL(teacher || student) of cosine-similarity conditional probabilities (Passalis & Tefas 2018)."""

    term_name = "pkt"

    def relation(self, student: Tensor, teacher: Tensor) -> Tensor:
        p_student = conditional_probabilities(student)
        p_teacher = conditional_probabilities(teacher)
        return (p_teacher * torch.log((p_teacher + PKT_EPS) / (p_student + PKT_EPS))).mean()


def make_pkt(params: PKTParams) -> PKTLoss:
    """Factory of ``pkt``."""
    return PKTLoss(params)


# -- specs ----------------------------------------------------------------------------------------

#: The embeddings of plain_cnn models, for the docs and benchmarks.
_EXAMPLE_LAYERS = [{"student": "flatten", "teacher": "flatten"}]
_LAYERS_LINE = "embeddings: any layers, flattened per sample (default logits); one or more pairs, averaged"
_PARK = "Park, Kim, Lu & Cho 2019, Relational Knowledge Distillation, CVPR 2019, arXiv:1904.05068"

RKD_DISTANCE = LossSpec(
    name="rkd_distance",
    summary="RKD distance-wise (Park et al. 2019): Huber loss between normalised pairwise distances.",
    factory=make_rkd_distance,
    params=RKDDistanceParams,
    family="relation",
    reference=_PARK,
    example={"layers": _EXAMPLE_LAYERS},
    layers=_LAYERS_LINE,
    weight=25.0,
    label_weight=1.0,
    weight_source="The paper's lambda_D = 25 (also RepDistiller's RKDLoss w_d = 25).",
)
RKD_ANGLE = LossSpec(
    name="rkd_angle",
    summary="RKD angle-wise (Park et al. 2019): Huber loss between the cosines of the angles of all triplets.",
    factory=make_rkd_angle,
    params=RKDAngleParams,
    family="relation",
    reference=_PARK,
    example={"layers": _EXAMPLE_LAYERS},
    layers=_LAYERS_LINE,
    weight=50.0,
    label_weight=1.0,
    weight_source="The paper's lambda_A = 50 (also RepDistiller's RKDLoss w_a = 50).",
)
SP = LossSpec(
    name="sp",
    summary="Similarity-preserving KD (Tung & Mori 2019): |G_s - G_t|_F^2 / N^2 of row-normalised Gram matrices.",
    factory=make_sp,
    params=SPParams,
    family="relation",
    reference="Tung & Mori 2019, Similarity-Preserving Knowledge Distillation, ICCV 2019, arXiv:1907.09682",
    example={
        "layers": [
            {"student": "features.2", "teacher": "features.4"},
            {"student": "features.0", "teacher": "features.1"},
        ]
    },
    layers=_LAYERS_LINE,
    weight=3000.0,
    label_weight=1.0,
    weight_source="RepDistiller's SP runs (-b 3000 with cross-entropy 1), the paper's gamma = 3000.",
)
CC = LossSpec(
    name="cc",
    summary="Correlation congruence (Peng et al. 2019): MSE of Taylor-approximated RBF kernel matrices.",
    factory=make_cc,
    params=CCParams,
    family="relation",
    reference=(
        "Peng, Jin, Liu et al. 2019, Correlation Congruence for Knowledge Distillation, ICCV 2019, "
        "arXiv:1904.01802"
    ),
    example={"layers": _EXAMPLE_LAYERS, "gamma": 0.4, "p_order": 2},
    layers=_LAYERS_LINE,
    weight=100.0,
    label_weight=1.0,
    weight_source=(
        "Knowledge-Distillation-Zoo's CC (the formula implemented here: Gaussian RBF kernel by its "
        "Taylor expansion, gamma 0.4, P 2), which its examples weight 100. RepDistiller's weight 0.02 "
        "belongs to its different correlation formula and is far too small for this one."
    ),
)
PKT = LossSpec(
    name="pkt",
    summary="Probabilistic KT (Passalis & Tefas 2018): KL between cosine-similarity conditional probabilities.",
    factory=make_pkt,
    params=PKTParams,
    family="relation",
    reference=(
        "Passalis & Tefas 2018, Learning Deep Representations with Probabilistic Knowledge Transfer, "
        "ECCV 2018, arXiv:1803.10837"
    ),
    example={"layers": _EXAMPLE_LAYERS},
    layers=_LAYERS_LINE,
    weight=30000.0,
    label_weight=1.0,
    weight_source="RepDistiller's PKT runs (-b 30000 with cross-entropy 1).",
)
SPECS = [RKD_DISTANCE, RKD_ANGLE, SP, CC, PKT]
