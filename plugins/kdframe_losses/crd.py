"""``crd``: contrastive representation distillation with memory banks and NCE.

Tian, Krishnan & Isola (2020), "Contrastive Representation Distillation", ICLR 2020,
arXiv:1910.10699. The student's embedding of a sample should be close to the teacher's embedding of
the *same* sample and far from the teacher's embeddings of other samples (and vice versa).
Implemented as the authors' code (RepDistiller's ``CRDLoss``, ``ContrastMemory``, ``ContrastLoss``):
the NCE objective with a constant normalisation ``Z``.

**Embeddings.** The outputs of the one (student, teacher) layer pair (the penultimate embedding,
e.g. ``flatten`` in ``plain_cnn``) are flattened per sample and each passes through its own head::

    v_s = g_s(x_s) = l2norm(Linear(D_s, feat_dim)(x_s.flatten(1)))
    v_t = g_t(x_t) = l2norm(Linear(D_t, feat_dim)(x_t.flatten(1)))       (x_t detached)

(``l2norm(v) = v / max(||v||_2, 1e-12)``). Both heads are trained with the student.

**Memory banks.** ``M_s`` and ``M_t``, buffers of shape (num_train_samples, feat_dim), initialised
uniformly in ``[-a, a]`` with ``a = 1 / sqrt(feat_dim / 3)`` (rows of norm about 1) from a
``torch.Generator`` seeded with ``seed``. After the scores are computed, at the batch's training-split
positions ``i = outputs.indices`` (only in training mode)::

    M_s[i] <- l2norm(momentum * M_s[i] + (1 - momentum) * v_s)        momentum 0.5 (nce_m)
    M_t[i] <- l2norm(momentum * M_t[i] + (1 - momentum) * v_t)

**Negatives.** For each sample, ``K = min(nce_k, num_train_samples - 1)`` indices drawn uniformly,
with replacement, from the *other* training samples (every index but the sample's own), from a
``torch.Generator`` seeded with ``seed`` (never the global RNG). ``nce_k`` (default 16384, the paper's)
is capped at ``num_train_samples - 1`` with a warning at build time. The authors' CIFAR loader draws
negatives from samples of *other classes* only, in both of its modes ("exact" and "relax" differ
only in the positive: the sample itself, or a random sample of its class). kdframe's terms do not
see the labels of the whole training split, so negatives here are drawn from every other sample and
may share the anchor's class: a deviation from the authors' code (the paper's description does not
restrict them).

**Scores and loss.** With ``j_0 = i`` (the positive) and ``j_1..j_K`` the negatives, and
``T = nce_t`` (0.07)::

    P_s[n, k] = exp(<M_t[j_k], v_s[n]> / T) / Z_s      (student embedding vs. the teacher's bank)
    P_t[n, k] = exp(<M_s[j_k], v_t[n]> / T) / Z_t      (teacher embedding vs. the student's bank)

(the banks before this batch's update). ``Z_s`` and ``Z_t`` are constants set on the first call in
training mode — ``Z = mean(exp(score / T)) * num_train_samples`` over that batch's N*(K+1) scores —
and kept in buffers (``-1`` until set). With the noise probability ``P_n = 1 / num_train_samples`` and
``eps = 1e-7`` (the authors')::

    L(P) = -(1 / N) * sum_n [ log(P[n,0] / (P[n,0] + K*P_n + eps))
                              + sum_{k=1..K} log(K*P_n / (P[n,k] + K*P_n + eps)) ]
    crd  = L(P_s) + L(P_t)

Gradients reach the student and both heads (the teacher's through ``v_t``), never the teacher nor
the banks. The term needs ``outputs.indices`` (the positions of the batch's samples in the training
split); without them it raises a :class:`kdframe.errors.ComponentError`. Batch size 1 works. The term
learns from the stage's first teacher.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdframe import (
    BuildContext,
    ComponentError,
    LayerError,
    LayerPair,
    LossSpec,
    LossTerm,
    Params,
    StepOutputs,
)
from kdframe_losses._common import layer_output, layer_shape, require_teacher, shape_text

NAME = "crd"
#: The authors' epsilon in the NCE probabilities.
EPS = 1e-7


class CRDParams(Params):
    """Params of ``crd``."""

    layers: list[LayerPair] = Field(
        min_length=1,
        max_length=1,
        description=(
            "Exactly one (student, teacher) pair of embedding layers (e.g. the penultimate "
            "'flatten' of plain_cnn); outputs are flattened per sample."
        ),
    )
    feat_dim: int = Field(128, ge=1, le=65_536, description="Size of the contrastive embedding (the paper's 128).")
    nce_k: int = Field(
        16384,
        ge=1,
        description=(
            "Negatives per sample (the paper's 16384), capped at num_train_samples - 1 with a warning."
        ),
    )
    nce_t: float = Field(0.07, gt=0.0, le=100.0, description="Temperature T of the scores (the paper's 0.07).")
    momentum: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="Momentum of the memory-bank update (the authors' nce_m, 0.5).",
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**63 - 1,
        description="Seed of the generator that initialises the banks and draws the negatives.",
    )


class Embed(nn.Module):
    """Linear head to ``feat_dim`` followed by L2 normalisation of each sample."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), p=2.0, dim=1, eps=1e-12)


def nce_loss(probabilities: Tensor, num_samples: int) -> Tensor:
    """The authors' ``ContrastLoss``: NCE with noise ``1 / num_samples``; column 0 is the positive."""
    batch, k = probabilities.shape[0], probabilities.shape[1] - 1
    noise = k / float(num_samples)
    positive = probabilities[:, 0]
    negative = probabilities[:, 1:]
    log_d1 = torch.log(positive / (positive + noise + EPS))
    log_d0 = torch.log(noise / (negative + noise + EPS))
    return -(log_d1.sum() + log_d0.sum()) / batch


class CRDLoss(LossTerm):
    """NCE between each model's embedding and the other model's memory bank."""

    needs_teacher = True

    def __init__(self, params: CRDParams) -> None:
        super().__init__()
        pair = params.layers[0]
        self.student_layer, self.teacher_layer = pair.student, pair.teacher
        self.student_layers = (pair.student,)
        self.teacher_layers = (pair.teacher,)
        self.feat_dim = params.feat_dim
        self.nce_k = params.nce_k
        self.nce_t = params.nce_t
        self.momentum = params.momentum
        self.seed = params.seed
        self.num_samples = 0
        self.k = 0
        self.embed_student: nn.Module | None = None
        self.embed_teacher: nn.Module | None = None
        self.generator = torch.Generator().manual_seed(params.seed)
        self.register_buffer("memory_student", torch.empty(0))
        self.register_buffer("memory_teacher", torch.empty(0))
        # Normalisation constants Z_s, Z_t; negative until set by the first training call.
        self.register_buffer("z", torch.full((2,), -1.0))

    def build(self, context: BuildContext) -> None:
        """Create the heads and the memory banks (one row per training sample)."""
        student = layer_shape(context.student_shapes, self.student_layer, "student", NAME)
        teacher = layer_shape(context.teacher_shapes, self.teacher_layer, "teacher", NAME)
        for role, layer, shape in (("student", self.student_layer, student), ("teacher", self.teacher_layer, teacher)):
            if len(shape) < 2:
                raise LayerError(
                    f"{NAME}: the {role} layer '{layer}' gives output shape {shape_text(shape)}; it needs "
                    "a batch dimension and at least one feature dimension."
                )
        count = int(context.num_train_samples)
        if count < 2:
            raise ComponentError(
                f"{NAME} needs the size of the training split (at least 2 samples) for its memory banks, "
                f"but the build context gives num_train_samples={count}."
            )
        self.num_samples = count
        self.k = min(self.nce_k, count - 1)
        if self.k < self.nce_k:
            warnings.warn(
                f"{NAME}: nce_k={self.nce_k} negatives per sample is more than the training split allows "
                f"({count} samples); using {self.k} = num_train_samples - 1 (drawn with replacement).",
                UserWarning,
                stacklevel=2,
            )
        self.embed_student = Embed(math.prod(student[1:]), self.feat_dim)
        self.embed_teacher = Embed(math.prod(teacher[1:]), self.feat_dim)
        self.generator = torch.Generator().manual_seed(self.seed)
        bound = 1.0 / math.sqrt(self.feat_dim / 3.0)
        dtype = torch.get_default_dtype()
        for name in ("memory_student", "memory_teacher"):
            bank = torch.rand(count, self.feat_dim, generator=self.generator, dtype=dtype) * (2 * bound) - bound
            setattr(self, name, bank)
        self.z = torch.full((2,), -1.0, dtype=dtype)

    def get_extra_state(self) -> dict[str, Tensor]:
        """The negatives generator's state, so that a resumed run draws the same negatives."""
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def sample_negatives(self, indices: Tensor) -> Tensor:
        """(N, K) int64 CPU indices drawn uniformly from the training samples other than each anchor."""
        anchors = indices.detach().to("cpu", torch.int64)[:, None]
        draws = torch.randint(0, self.num_samples - 1, (anchors.shape[0], self.k), generator=self.generator)
        return draws + (draws >= anchors).to(torch.int64)

    def forward(self, outputs: StepOutputs) -> Tensor:
        require_teacher(outputs.teachers, NAME)
        if self.embed_student is None or self.embed_teacher is None:
            raise ComponentError(
                f"{NAME} was called before build(): the core must call build(context) after the dry run, "
                "so that the heads and memory banks exist."
            )
        if outputs.indices is None:
            raise ComponentError(
                f"{NAME} needs the positions of the batch's samples in the training split "
                "(StepOutputs.indices) to read and update its memory banks, but the step gives none. "
                "CRD works only on batches drawn from the training split."
            )
        indices = outputs.indices.to(self.memory_student.device, torch.int64).reshape(-1)
        student = layer_output(outputs.student, self.student_layer, "student", NAME)
        teacher = layer_output(outputs.teacher, self.teacher_layer, "teacher", NAME).detach()
        batch = student.shape[0]
        if teacher.shape[0] != batch or indices.shape[0] != batch:
            raise ComponentError(
                f"{NAME}: the student's batch {shape_text(student.shape)}, the teacher's "
                f"{shape_text(teacher.shape)} and the {indices.shape[0]} indices must have the same size."
            )
        if batch and (int(indices.min()) < 0 or int(indices.max()) >= self.num_samples):
            raise ComponentError(
                f"{NAME}: sample indices must lie in [0, {self.num_samples}) (the training split the banks "
                f"were built for); got {int(indices.min())}..{int(indices.max())}."
            )
        dtype = self.memory_student.dtype
        v_student = self.embed_student(student.to(next(self.embed_student.parameters()).dtype)).to(dtype)
        v_teacher = self.embed_teacher(teacher.to(next(self.embed_teacher.parameters()).dtype)).to(dtype)

        negatives = self.sample_negatives(indices).to(indices.device)
        contrast = torch.cat([indices[:, None], negatives], dim=1)  # (N, K+1), positive first
        flat = contrast.reshape(-1)
        bank_teacher = self.memory_teacher.index_select(0, flat).view(batch, -1, self.feat_dim)
        bank_student = self.memory_student.index_select(0, flat).view(batch, -1, self.feat_dim)
        exp_student = torch.exp(torch.bmm(bank_teacher, v_student[:, :, None]).squeeze(2) / self.nce_t)
        exp_teacher = torch.exp(torch.bmm(bank_student, v_teacher[:, :, None]).squeeze(2) / self.nce_t)
        if self.training and bool((self.z < 0).any()):
            with torch.no_grad():
                self.z[0] = exp_student.mean() * self.num_samples
                self.z[1] = exp_teacher.mean() * self.num_samples
        if bool((self.z < 0).any()):
            raise ComponentError(
                f"{NAME}: the normalisation constants Z are set by the first call in training mode; "
                "call the term in training mode first."
            )
        p_student = exp_student / self.z[0].to(dtype)
        p_teacher = exp_teacher / self.z[1].to(dtype)
        loss = nce_loss(p_student, self.num_samples) + nce_loss(p_teacher, self.num_samples)

        if self.training:
            with torch.no_grad():
                for bank, embedding in ((self.memory_student, v_student), (self.memory_teacher, v_teacher)):
                    mixed = bank.index_select(0, indices) * self.momentum + embedding.detach() * (1.0 - self.momentum)
                    bank.index_copy_(0, indices, F.normalize(mixed, p=2.0, dim=1, eps=1e-12))
        return loss

    def extra_repr(self) -> str:
        return (
            f"student_layer={self.student_layer!r}, teacher_layer={self.teacher_layer!r}, "
            f"feat_dim={self.feat_dim}, nce_k={self.nce_k} (using {self.k}), nce_t={self.nce_t}, "
            f"momentum={self.momentum}, num_samples={self.num_samples}"
        )


def make_crd(params: CRDParams) -> CRDLoss:
    """Factory of ``crd``."""
    return CRDLoss(params)


CRD = LossSpec(
    name=NAME,
    summary="Contrastive representation distillation (Tian et al. 2020): NCE against memory banks.",
    factory=make_crd,
    params=CRDParams,
    family="relation",
    reference=(
        "Tian, Krishnan & Isola (2020), 'Contrastive Representation Distillation', ICLR 2020, "
        "arXiv:1910.10699"
    ),
    example={"layers": [{"student": "flatten", "teacher": "flatten"}], "nce_k": 4096},
    layers="one embedding pair (N, ...) flattened per sample, e.g. the penultimate layer; needs sample indices",
    weight=0.8,
    label_weight=1.0,
    weight_source="RepDistiller's CRD runs (-b 0.8 with cross-entropy 1; nce_t 0.07, nce_m 0.5, feat_dim 128).",
)
SPECS = [CRD]
