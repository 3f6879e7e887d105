"""``ft``: factor transfer with a paraphraser and a translator.

Kim, Park & Kwak (2018), "Paraphrasing Complex Network: Network Compression via Factor Transfer",
NeurIPS 2018, arXiv:1802.04977. For every (student layer, teacher layer) pair of feature maps:

* a **paraphraser** ``P`` — a convolutional autoencoder on the teacher's map — is trained first, in
  a pre-training phase, to reconstruct that map; its encoder output is the teacher's *factor*;
* a **translator** ``T`` — a convolutional encoder on the student's map — is trained with the
  student to produce the student's factor, of the same size as the teacher's.

Modules (RepDistiller's ``Paraphraser``/``Translator``; ``C_t``, ``C_s`` the teacher's and student's
channels, ``C_f = max(1, int(rate * C_t))`` the factor's channels, every conv 3x3 stride 1 padding 1,
so the spatial size never changes, ``lrelu`` = ``LeakyReLU(0.1)``)::

    paraphraser encoder: conv(C_t->C_t) lrelu  conv(C_t->C_f) lrelu  conv(C_f->C_f) lrelu
    paraphraser decoder: convT(C_f->C_f) lrelu convT(C_f->C_t) lrelu convT(C_t->C_t) lrelu
    translator:          conv(C_s->C_s) BN lrelu  conv(C_s->C_f) BN lrelu  conv(C_f->C_f) BN lrelu

(the paraphraser has no BatchNorm, the translator has, as in RepDistiller's defaults; convs have a
bias and PyTorch's default initialisation).

**Pre-training phase** (``pretrain_epochs``, default 30 = RepDistiller's ``init_epochs``): the core
runs a stage ``<stage>-pretrain`` in which the only loss is :meth:`FactorTransferLoss.pretrain_loss`,
the paraphraser's reconstruction loss of the (detached) teacher map ``x``::

    rec = mean over pairs of  mean_{n,c,h,w} | P(x) - x |          (reconstruction "l1", default)
                          or  mean_{n,c,h,w} ( P(x) - x )^2        (reconstruction "mse")

Only the paraphrasers learn in that phase (``pretrain_trains_student`` is False: the student's
weights are not optimised, and the translators get no gradient). The paper writes the reconstruction
loss as ``||x - P(x)||^2`` and RepDistiller uses ``MSELoss``; "l1" follows the original authors'
release. At the end of the phase :meth:`~FactorTransferLoss.end_pretraining` freezes the paraphrasers
(``requires_grad=False``, eval mode, kept in eval mode even when the trainer calls ``train()``), so
the main stage never changes them.

**Main stage** (:meth:`~FactorTransferLoss.forward`): with ``F_t = P_enc(x_t)`` (computed without
gradients) and ``F_s = T(x_s)``, both of shape (N, C_f, H, W)::

    f(F)  = F.flatten(1) / max(||F.flatten(1)||_2, 1e-12)          per sample, over C_f*H*W values
    ft    = mean over pairs of  mean_{n,d} | f(F_s)[n,d] - f(F_t)[n,d] |     (reduction "mean")
                           or   (1/N) sum_{n,d} | f(F_s)[n,d] - f(F_t)[n,d] | (reduction "batchmean")

"batchmean" is the paper's ``|| F_T/||F_T||_2 - F_S/||F_S||_2 ||_1`` (p = 1) per sample, averaged
over the batch; "mean" (default) additionally divides by ``D = C_f*H*W``, exactly as the FT
authors' code does (``nn.L1Loss`` on ``F.normalize(factor.view(N, -1))``), so the authors' weight
(their ``--beta 500``) carries over with it; it is the suggested weight. RepDistiller normalises
differently: its factor is ``F.normalize(factor.pow(2).mean(1).view(N, -1))``, the channel mean of
the squared factor per spatial position (an attention-map-like vector), so its ``beta = 200`` belongs
to another formula and does not carry over (its value on the same factors is not kdframe's).

Spatial sizes: when the factors' heights or widths differ, both are brought to
``(min(H_s, H_t), min(W_s, W_t))`` by adaptive average pooling (the larger is pooled to the smaller),
before normalisation, like RepDistiller. Only feature maps (N, C, H, W) are supported; other ranks,
or different batch sizes, are a :class:`kdframe.errors.LayerError` naming the layers.

Batch size 1 works whenever the student's map has more than one position (the translator's
BatchNorm needs ``N*H*W > 1`` values per channel in training mode; otherwise a LayerError says so).
Gradients reach the student and the translators, never the teacher (its maps are detached) nor, in
the main stage, the paraphrasers. The term learns from the stage's first teacher.
"""

from __future__ import annotations

from typing import Literal

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
from kdframe_losses._common import compute_dtype, layer_output, layer_shape, require_teacher, shape_text

NAME = "ft"


class FactorTransferParams(Params):
    """Params of ``ft``."""

    layers: list[LayerPair] = Field(
        min_length=1,
        description=(
            "(student, teacher) pairs of layers whose outputs are feature maps (N, C, H, W); each "
            "pair gets its own paraphraser and translator, and the term is the mean over pairs."
        ),
    )
    rate: float = Field(
        0.5,
        gt=0.0,
        le=4.0,
        description=(
            "Paraphrase rate k: the factor has max(1, int(k * C_t)) channels, C_t the teacher "
            "map's channels (the paper and RepDistiller use 0.5)."
        ),
    )
    pretrain_epochs: int = Field(
        30,
        ge=1,
        le=100_000,
        description=(
            "Epochs of the pre-training phase that trains the paraphrasers to reconstruct the "
            "teacher maps before the stage (RepDistiller's init_epochs: 30)."
        ),
    )
    reconstruction: Literal["l1", "mse"] = Field(
        "l1",
        description=(
            "Paraphraser loss of the pre-training phase: 'l1' = mean |P(x) - x| (authors' code), "
            "'mse' = mean (P(x) - x)^2 (the paper's squared L2, RepDistiller)."
        ),
    )
    reduction: Literal["mean", "batchmean"] = Field(
        "mean",
        description=(
            "Reduction of |f(F_s) - f(F_t)| over the L2-normalised factors: 'mean' over all N*D "
            "values (authors' code, RepDistiller), or 'batchmean' = per-sample L1 norm averaged "
            "over the batch (the paper's ||.||_1)."
        ),
    )


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(0.1)


class Paraphraser(nn.Module):
    """Convolutional autoencoder on a teacher map; ``encoder(x)`` is the teacher's factor."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        c, f = channels, factor_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1), _lrelu(),
            nn.Conv2d(c, f, 3, 1, 1), _lrelu(),
            nn.Conv2d(f, f, 3, 1, 1), _lrelu(),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(f, f, 3, 1, 1), _lrelu(),
            nn.ConvTranspose2d(f, c, 3, 1, 1), _lrelu(),
            nn.ConvTranspose2d(c, c, 3, 1, 1), _lrelu(),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction ``decoder(encoder(x))``."""
        return self.decoder(self.encoder(x))


class Translator(nn.Sequential):
    """Convolutional encoder from a student map to a factor of ``factor_channels`` channels."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        c, f = channels, factor_channels
        super().__init__(
            nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), _lrelu(),
            nn.Conv2d(c, f, 3, 1, 1), nn.BatchNorm2d(f), _lrelu(),
            nn.Conv2d(f, f, 3, 1, 1), nn.BatchNorm2d(f), _lrelu(),
        )  # fmt: skip


def _dtype_of(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _pool_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)


def normalised_factor(factor: Tensor) -> Tensor:
    """Each sample's factor flattened and divided by its L2 norm (at least 1e-12)."""
    return F.normalize(factor.flatten(1), p=2.0, dim=1, eps=1e-12)


class FactorTransferLoss(LossTerm):
    """L1 distance between the student's translated factor and the teacher's paraphrased factor."""

    needs_teacher = True
    pretrain_trains_student = False

    def __init__(self, params: FactorTransferParams) -> None:
        super().__init__()
        self.pairs = [(pair.student, pair.teacher) for pair in params.layers]
        self.rate = params.rate
        self.pretrain_epochs = params.pretrain_epochs
        self.reconstruction = params.reconstruction
        self.reduction = params.reduction
        self.student_layers = tuple(dict.fromkeys(student for student, _ in self.pairs))
        self.teacher_layers = tuple(dict.fromkeys(teacher for _, teacher in self.pairs))
        self.paraphrasers = nn.ModuleList()
        self.translators = nn.ModuleList()
        self.frozen = False

    # -- building and checks --------------------------------------------------------------------

    def _error(self, pair: tuple[str, str], student: tuple[int, ...], teacher: tuple[int, ...], why: str) -> LayerError:
        return LayerError(
            f"{NAME} cannot use student layer '{pair[0]}' (output shape {shape_text(student)}) with "
            f"teacher layer '{pair[1]}' (output shape {shape_text(teacher)}): {why}"
        )

    def _check(self, pair: tuple[str, str], student: tuple[int, ...], teacher: tuple[int, ...]) -> None:
        if len(student) != 4 or len(teacher) != 4:
            raise self._error(
                pair, student, teacher,
                "factor transfer needs feature maps (N, C, H, W) on both sides (its paraphraser and "
                "translator are convolutional); choose convolutional layers.",
            )  # fmt: skip
        if student[0] != teacher[0]:
            raise self._error(pair, student, teacher, "their batch sizes differ.")

    def build(self, context: BuildContext) -> None:
        """Create one paraphraser (teacher side) and one translator (student side) per pair."""
        self.paraphrasers = nn.ModuleList()
        self.translators = nn.ModuleList()
        for pair in self.pairs:
            student = tuple(layer_shape(context.student_shapes, pair[0], "student", NAME))
            teacher = tuple(layer_shape(context.teacher_shapes, pair[1], "teacher", NAME))
            self._check(pair, student, teacher)
            factor_channels = max(1, int(teacher[1] * self.rate))
            self.paraphrasers.append(Paraphraser(teacher[1], factor_channels))
            self.translators.append(Translator(student[1], factor_channels))
        self.frozen = False

    def _require_built(self) -> None:
        if len(self.paraphrasers) != len(self.pairs):
            raise ComponentError(
                f"{NAME} was called before build(): the core must call build(context) after the dry "
                "run, so that the paraphrasers and translators exist and are optimised."
            )

    def _teacher_map(self, outputs: StepOutputs, index: int) -> Tensor:
        pair = self.pairs[index]
        teacher = layer_output(outputs.teacher, pair[1], "teacher", NAME).detach()
        self._check(pair, tuple(teacher.shape), tuple(teacher.shape))
        return teacher

    def _student_map(self, outputs: StepOutputs, index: int, teacher: Tensor) -> Tensor:
        pair = self.pairs[index]
        student = layer_output(outputs.student, pair[0], "student", NAME)
        self._check(pair, tuple(student.shape), tuple(teacher.shape))
        return student

    # -- the LossTerm interface -----------------------------------------------------------------

    def pretrain_loss(self, outputs: StepOutputs) -> Tensor:
        """Mean over pairs of the paraphrasers' reconstruction loss of the teacher maps."""
        require_teacher(outputs.teachers, NAME)
        self._require_built()
        losses = []
        for index, paraphraser in enumerate(self.paraphrasers):
            teacher = self._teacher_map(outputs, index)
            teacher = teacher.to(_dtype_of(paraphraser))
            reconstructed = paraphraser(teacher)
            dtype = compute_dtype(reconstructed, teacher)
            if self.reconstruction == "l1":
                losses.append(F.l1_loss(reconstructed.to(dtype), teacher.to(dtype)))
            else:
                losses.append(F.mse_loss(reconstructed.to(dtype), teacher.to(dtype)))
        return torch.stack(losses).mean()

    def end_pretraining(self) -> None:
        """Freeze the paraphrasers: no gradients and eval mode from now on."""
        for parameter in self.paraphrasers.parameters():
            parameter.requires_grad_(False)
        self.paraphrasers.eval()
        self.frozen = True

    def train(self, mode: bool = True) -> FactorTransferLoss:
        """Set training mode, but keep frozen paraphrasers in eval mode."""
        super().train(mode)
        if self.frozen:
            self.paraphrasers.eval()
        return self

    def forward(self, outputs: StepOutputs) -> Tensor:
        require_teacher(outputs.teachers, NAME)
        self._require_built()
        losses = []
        for index, (paraphraser, translator) in enumerate(zip(self.paraphrasers, self.translators)):
            teacher = self._teacher_map(outputs, index)
            student = self._student_map(outputs, index, teacher)
            if translator.training and student.shape[0] * student.shape[2] * student.shape[3] < 2:
                raise self._error(
                    self.pairs[index], tuple(student.shape), tuple(teacher.shape),
                    "the translator's BatchNorm needs more than one value per channel in training "
                    "(batch size times height times width); use a larger batch or a larger map.",
                )  # fmt: skip
            with torch.no_grad():
                factor_teacher = paraphraser.encoder(teacher.to(_dtype_of(paraphraser)))
            factor_student = translator(student.to(_dtype_of(translator)))
            size = (
                min(factor_student.shape[2], factor_teacher.shape[2]),
                min(factor_student.shape[3], factor_teacher.shape[3]),
            )
            factor_student = _pool_to(factor_student, size)
            factor_teacher = _pool_to(factor_teacher, size)
            dtype = compute_dtype(factor_student, factor_teacher)
            difference = (normalised_factor(factor_student.to(dtype)) - normalised_factor(factor_teacher.to(dtype))).abs()
            if self.reduction == "mean":
                losses.append(difference.mean())
            else:
                losses.append(difference.sum() / difference.shape[0])
        return torch.stack(losses).mean()

    def extra_repr(self) -> str:
        return (
            f"pairs={self.pairs!r}, rate={self.rate}, pretrain_epochs={self.pretrain_epochs}, "
            f"reconstruction={self.reconstruction!r}, reduction={self.reduction!r}, frozen={self.frozen}"
        )


def make_ft(params: FactorTransferParams) -> FactorTransferLoss:
    """Factory of ``ft``."""
    return FactorTransferLoss(params)


FT = LossSpec(
    name=NAME,
    summary="Factor transfer (Kim et al. 2018): L1 between normalised translator and paraphraser factors.",
    factory=make_ft,
    params=FactorTransferParams,
    family="feature",
    reference=(
        "Kim, Park & Kwak (2018), 'Paraphrasing Complex Network: Network Compression via Factor "
        "Transfer', NeurIPS 2018, arXiv:1802.04977"
    ),
    example={"layers": [{"student": "features.2", "teacher": "features.4"}], "pretrain_epochs": 1},
    layers="feature maps (N, C, H, W); a pre-training phase first trains a paraphraser on the teacher's",
    weight=500.0,
    weight_source=(
        "The FT authors' code: --beta 500 with nn.L1Loss on F.normalize(factor.view(N, -1)), which "
        "reduction 'mean' reproduces. RepDistiller's beta 200 goes with its own per-position "
        "normalisation of factor.pow(2).mean(1) and does not carry over."
    ),
    label_weight=1.0,
)
SPECS = [FT]
