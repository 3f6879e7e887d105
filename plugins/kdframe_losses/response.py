"""Response-based distillation: terms that compare the student's logits with the teachers'.

Every term here reads only the models' outputs (logits of shape ``(N, K)``: ``N`` samples, ``K``
classes), needs at least one teacher, and with several teachers (an ensemble) is the **(weighted) mean of the
per-teacher values**. Teacher logits are detached, so no gradient ever reaches a teacher. Terms
compute in at least float32 (half-precision logits are promoted; float64 stays float64). Weights
live in the schedule, not in the terms; a temperature may itself follow a schedule over the stage's
epochs (a number, or e.g. ``{"schedule": "linear", "start": 8, "end": 2}``), evaluated at
``outputs.epoch`` and reported by ``current_values`` for the loggers.

``hinton_kd`` — Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network",
arXiv:1503.02531. For student logits ``s``, teacher logits ``t`` and temperature ``T``::

    hinton_kd = T^2 * (1/N) * sum_n KL( softmax(t_n / T) || softmax(s_n / T) )
              = T^2 * (1/N) * sum_n sum_k p_t[n,k] * (log p_t[n,k] - log p_s[n,k])

i.e. the KL divergence summed over classes and averaged over the batch ("batchmean"), scaled by
``T^2`` so that its gradients keep the same magnitude as the temperature changes. The classic loss
``(1 - a) * CE(s, y) + a * T^2 * KL(...)`` is two terms of a schedule::

    "losses": [
        {"name": "cross_entropy", "weight": 0.1},
        {"name": "hinton_kd", "weight": 0.9, "params": {"temperature": 4.0}}
    ]

``dkd`` — Zhao, Cui, Song, Qiu & Liang (2022), "Decoupled Knowledge Distillation", CVPR 2022,
arXiv:2203.08679, following the authors' code (mdistiller). With ``y`` the label, ``p = softmax(z/T)``
and the binary distribution ``b = [p_y, 1 - p_y]`` (target vs all non-target classes)::

    TCKD = T^2 * (1/N) * sum_n KL( b_t[n] || b_s[n] )
    NCKD = T^2 * (1/N) * sum_n KL( softmax(t_n/T - 1000 * onehot(y_n)) || softmax(s_n/T - 1000 * onehot(y_n)) )
    dkd  = alpha * TCKD + beta * NCKD

NCKD is the KL between the distributions over the non-target classes: as in the authors' code the
target class is masked by subtracting 1000 from its *scaled* logit, which gives it a probability of
``exp(-1000) = 0`` (in float32 and float64). The binary log-probabilities are computed as
``log p_y = log_softmax(z/T)_y`` and ``log(1 - p_y) = logsumexp`` of the non-target log-probabilities,
which is the authors' ``log(cat_mask(softmax))`` without its ``log(0)`` when a probability underflows.
Defaults are the authors' CIFAR-100 settings (alpha 1, beta 8, T 4; their ImageNet setting is
beta 0.5, T 1, warm-up 1 epoch); their CE weight is 1. The authors warm the DKD loss up linearly over 20 epochs
(``min(epoch / 20, 1)``); that is not built into the term but written as the term's weight::

    {"name": "dkd", "weight": {"schedule": "linear", "start": 0, "end": 1, "epochs": 20},
     "params": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}}

(mdistiller counts epochs from 1, so its factor at kdframe's 0-based epoch ``e`` is ``(e + 1) / 20``;
``{"schedule": "linear", "start": 0.05, "end": 1, "epochs": 19}`` reproduces it exactly.) The labels
must be class indices in ``[0, K)``.

``dist`` — Huang, You, Wang, Qian & Xu (2022), "Knowledge Distillation from A Stronger Teacher",
NeurIPS 2022, arXiv:2205.10536, following the authors' code. With ``Y = softmax(z / tau)`` (N, K) and
the Pearson correlation ``rho(a, b) = <a - mean(a), b - mean(b)> / (|a - mean(a)| * |b - mean(b)| + 1e-8)``::

    inter = 1 - (1/N) * sum_n rho(Y_s[n, :], Y_t[n, :])     (over classes, per sample)
    intra = 1 - (1/K) * sum_k rho(Y_s[:, k], Y_t[:, k])     (over samples, per class)
    dist  = tau^2 * (beta * inter + gamma * intra)

The ``1e-8`` is the authors' (added to the product of norms). With batch size 1 the intra-class
correlation is undefined (a single sample has no spread); the authors' code then gives the constant
``intra = 1`` (a gradient-free offset), which this term replaces by 0 — the one deviation. Defaults are
those of the authors' loss class (beta = gamma = tau = 1); ``tau`` may follow a schedule like a
temperature. Because of the 1e-8, identical logits give ``1 - |a|^2 / (|a|^2 + 1e-8)``: zero up to ~1e-6.

``logit_standard_kd`` — Sun, Ren, Li, Wang & Cao (2024), "Logit Standardization in Knowledge
Distillation", CVPR 2024, arXiv:2403.01427, following the authors' code: each sample's logits are
z-scored over the classes before Hinton KD, for student and teacher alike::

    Z(z) = (z - mean_k z) / (std_k z + 1e-7)      (std with Bessel's correction, torch.std's default)
    logit_standard_kd = T^2 * (1/N) * sum_n KL( softmax(Z(t_n) / T) || softmax(Z(s_n) / T) )

``T`` is the authors' "base temperature", default 2 as in their CIFAR-100 commands (where the term's
weight is 9 and the CE weight 0.1). Standardisation makes the effective temperature of each sample
``T * std(z_n)``, so the student matches the teacher's logit *relations* rather than their magnitude.
Logits need at least two classes.
"""

from __future__ import annotations

import abc

from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field
from torch import Tensor

from kdframe import (
    ComponentError,
    LossSpec,
    LossTerm,
    Params,
    StepOutputs,
    ValueSchedule,
    describe_value,
    value_at,
    value_range,
)
from kdframe_losses._common import compute_dtype, require_teacher, shape_text, soft_kl


def _positive_schedule(value: float | ValueSchedule) -> float | ValueSchedule:
    """Reject schedules that can reach a value <= 0 (numbers are checked by ``gt=0``)."""
    if isinstance(value, ValueSchedule) and value_range(value)[0] <= 0:
        raise ValueError("a temperature schedule must stay > 0 (start, end and gamma must be > 0)")
    return value


#: A temperature: a number > 0 or a value schedule whose values stay > 0.
PositiveScheduledFloat = Annotated[
    Annotated[float, Field(gt=0.0)] | ValueSchedule, AfterValidator(_positive_schedule)
]

_TEMPERATURE_HELP = (
    " A number, or a schedule over the stage's epochs such as "
    '{"schedule": "linear", "start": 8, "end": 2}; it must stay > 0.'
)


class _ResponseTerm(LossTerm):
    """Checks the logits, computes one value per teacher and averages them."""

    needs_teacher = True
    term_name: ClassVar[str] = ""
    #: Fewest classes the term can use.
    min_classes: ClassVar[int] = 1

    def forward(self, outputs: StepOutputs) -> Tensor:
        require_teacher(outputs.teachers, self.term_name)
        student = outputs.student.logits
        if student.dim() != 2 or student.shape[1] < self.min_classes:
            raise ComponentError(
                f"{self.term_name} expects logits of shape (batch, classes) with at least "
                f"{self.min_classes} class(es); the student gives {shape_text(student.shape)}."
            )
        values = []
        for index, teacher in enumerate(outputs.teachers):
            if teacher.logits.shape != student.shape:
                raise ComponentError(
                    f"{self.term_name}: teacher {index} gives logits of shape "
                    f"{shape_text(teacher.logits.shape)} but the student gives {shape_text(student.shape)}; "
                    "teacher and student must predict the same classes."
                )
            values.append(self.per_teacher(student, teacher.logits.detach(), outputs))
        return outputs.average_over_teachers(values)

    @abc.abstractmethod
    def per_teacher(self, student: Tensor, teacher: Tensor, outputs: StepOutputs) -> Tensor:
        """The term for one teacher (``teacher`` is already detached)."""


# -- hinton_kd ------------------------------------------------------------------------------------


class HintonKDParams(Params):
    """Params of ``hinton_kd``."""

    temperature: PositiveScheduledFloat = Field(
        4.0,
        description=(
            "Softmax temperature T > 0 applied to both student and teacher logits; the term is "
            "scaled by T^2. Higher T gives softer targets." + _TEMPERATURE_HELP
        ),
    )


class HintonKDLoss(_ResponseTerm):
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch-mean, averaged over the teachers."""

    term_name = "hinton_kd"

    def __init__(self, params: HintonKDParams) -> None:
        super().__init__()
        self.temperature = params.temperature

    def current_values(self, epoch: int, epochs: int) -> dict[str, float]:
        return {"temperature": value_at(self.temperature, epoch, epochs)}

    def per_teacher(self, student: Tensor, teacher: Tensor, outputs: StepOutputs) -> Tensor:
        temperature = value_at(self.temperature, outputs.epoch, outputs.epochs)
        return (temperature**2) * soft_kl(student, teacher, temperature)

    def extra_repr(self) -> str:
        return f"temperature={describe_value(self.temperature)}"


def make_hinton_kd(params: HintonKDParams) -> HintonKDLoss:
    """Factory of ``hinton_kd``."""
    return HintonKDLoss(params)


# -- dkd ------------------------------------------------------------------------------------------


class DKDParams(Params):
    """Params of ``dkd`` (defaults: the authors' CIFAR-100 settings)."""

    alpha: float = Field(1.0, ge=0.0, description="Weight of TCKD, the binary target-vs-non-target KL.")
    beta: float = Field(
        8.0,
        ge=0.0,
        description="Weight of NCKD, the KL among the non-target classes (8 on CIFAR-100, 0.5 on ImageNet).",
    )
    temperature: PositiveScheduledFloat = Field(
        4.0,
        description="Softmax temperature T > 0 of both parts; each is scaled by T^2." + _TEMPERATURE_HELP,
    )


class DKDLoss(_ResponseTerm):
    """``alpha * TCKD + beta * NCKD`` (Zhao et al. 2022), batch-mean, averaged over the teachers."""

    term_name = "dkd"
    min_classes = 2

    def __init__(self, params: DKDParams) -> None:
        super().__init__()
        self.alpha = float(params.alpha)
        self.beta = float(params.beta)
        self.temperature = params.temperature

    def current_values(self, epoch: int, epochs: int) -> dict[str, float]:
        return {"temperature": value_at(self.temperature, epoch, epochs)}

    def per_teacher(self, student: Tensor, teacher: Tensor, outputs: StepOutputs) -> Tensor:
        if tuple(outputs.labels.shape) != (student.shape[0],):
            raise ComponentError(
                f"dkd needs one class index per sample; the labels have shape "
                f"{shape_text(outputs.labels.shape)} and the student's logits {shape_text(student.shape)}."
            )
        temperature = value_at(self.temperature, outputs.epoch, outputs.epochs)
        dtype = compute_dtype(student, teacher)
        scaled_s = student.to(dtype) / temperature
        scaled_t = teacher.to(dtype) / temperature
        target = outputs.labels.to(device=student.device, dtype=torch.long).view(-1, 1)
        gt_mask = torch.zeros_like(scaled_s, dtype=torch.bool).scatter_(1, target, True)
        n = student.shape[0]

        def binary_log_probs(scaled: Tensor) -> Tensor:
            log_p = F.log_softmax(scaled, dim=1)
            log_target = log_p.gather(1, target)
            log_other = torch.logsumexp(log_p.masked_fill(gt_mask, float("-inf")), dim=1, keepdim=True)
            return torch.cat([log_target, log_other], dim=1)

        tckd = F.kl_div(binary_log_probs(scaled_s), binary_log_probs(scaled_t), reduction="sum", log_target=True) / n
        masked = gt_mask.to(dtype) * 1000.0
        nckd = (
            F.kl_div(
                F.log_softmax(scaled_s - masked, dim=1),
                F.log_softmax(scaled_t - masked, dim=1),
                reduction="sum",
                log_target=True,
            )
            / n
        )
        return (temperature**2) * (self.alpha * tckd + self.beta * nckd)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, temperature={describe_value(self.temperature)}"


def make_dkd(params: DKDParams) -> DKDLoss:
    """Factory of ``dkd``."""
    return DKDLoss(params)


# -- dist -----------------------------------------------------------------------------------------

#: The authors' epsilon in the Pearson correlation's denominator.
DIST_EPS = 1e-8


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (the authors' form)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + DIST_EPS)


class DISTParams(Params):
    """Params of ``dist`` (defaults: those of the authors' loss class)."""

    beta: float = Field(1.0, ge=0.0, description="Weight of the inter-class relation (per sample, over classes).")
    gamma: float = Field(1.0, ge=0.0, description="Weight of the intra-class relation (per class, over samples).")
    tau: PositiveScheduledFloat = Field(
        1.0,
        description="Softmax temperature tau > 0 of both models; the term is scaled by tau^2." + _TEMPERATURE_HELP,
    )


class DISTLoss(_ResponseTerm):
    """``tau^2 * (beta * inter + gamma * intra)`` of Pearson correlations (Huang et al. 2022)."""

    term_name = "dist"

    def __init__(self, params: DISTParams) -> None:
        super().__init__()
        self.beta = float(params.beta)
        self.gamma = float(params.gamma)
        self.tau = params.tau

    def current_values(self, epoch: int, epochs: int) -> dict[str, float]:
        return {"tau": value_at(self.tau, epoch, epochs)}

    def per_teacher(self, student: Tensor, teacher: Tensor, outputs: StepOutputs) -> Tensor:
        tau = value_at(self.tau, outputs.epoch, outputs.epochs)
        dtype = compute_dtype(student, teacher)
        y_s = F.softmax(student.to(dtype) / tau, dim=1)
        y_t = F.softmax(teacher.to(dtype) / tau, dim=1)
        inter = 1.0 - pearson_rows(y_s, y_t).mean()
        if student.shape[0] > 1:
            intra = 1.0 - pearson_rows(y_s.t(), y_t.t()).mean()
        else:  # one sample has no spread over the batch: no intra-class relation to match
            intra = y_s.sum() * 0.0
        return (tau**2) * (self.beta * inter + self.gamma * intra)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}, tau={describe_value(self.tau)}"


def make_dist(params: DISTParams) -> DISTLoss:
    """Factory of ``dist``."""
    return DISTLoss(params)


# -- logit_standard_kd ----------------------------------------------------------------------------

#: The authors' epsilon added to the standard deviation.
STANDARDIZE_EPS = 1e-7


def standardize(logits: Tensor) -> Tensor:
    """Z-score each row: ``(z - mean) / (std + 1e-7)``, std with Bessel's correction (the authors' form)."""
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (std + STANDARDIZE_EPS)


class LogitStandardKDParams(Params):
    """Params of ``logit_standard_kd``."""

    temperature: PositiveScheduledFloat = Field(
        2.0,
        description=(
            "Base temperature T > 0 applied to the z-scored logits of both models; the term is scaled "
            "by T^2. Default 2 as in the authors' code." + _TEMPERATURE_HELP
        ),
    )


class LogitStandardKDLoss(_ResponseTerm):
    """Hinton KD on per-sample z-scored logits (Sun et al. 2024), averaged over the teachers."""

    term_name = "logit_standard_kd"
    min_classes = 2

    def __init__(self, params: LogitStandardKDParams) -> None:
        super().__init__()
        self.temperature = params.temperature

    def current_values(self, epoch: int, epochs: int) -> dict[str, float]:
        return {"temperature": value_at(self.temperature, epoch, epochs)}

    def per_teacher(self, student: Tensor, teacher: Tensor, outputs: StepOutputs) -> Tensor:
        dtype = compute_dtype(student, teacher)
        z_s = standardize(student.to(dtype))
        z_t = standardize(teacher.to(dtype))
        temperature = value_at(self.temperature, outputs.epoch, outputs.epochs)
        return (temperature**2) * soft_kl(z_s, z_t, temperature)

    def extra_repr(self) -> str:
        return f"temperature={describe_value(self.temperature)}"


def make_logit_standard_kd(params: LogitStandardKDParams) -> LogitStandardKDLoss:
    """Factory of ``logit_standard_kd``."""
    return LogitStandardKDLoss(params)


# -- specs ----------------------------------------------------------------------------------------

HINTON_KD = LossSpec(
    name="hinton_kd",
    summary="Hinton et al. 2015: T^2 * KL(softmax(t/T) || softmax(s/T)), mean over teachers.",
    factory=make_hinton_kd,
    params=HintonKDParams,
    family="response",
    reference="Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network, arXiv:1503.02531",
    example={"temperature": 4.0},
    layers="logits",
    weight=0.9,
    label_weight=0.1,
    weight_source=(
        "alpha = 0.9 with cross-entropy 0.1 and T = 4: RepDistiller's KD runs (-r 0.1 -a 0.9) and "
        "mdistiller's KD config (CE_WEIGHT 0.1, KD_WEIGHT 0.9, T 4); the term already includes T^2 as "
        "Hinton et al. do."
    ),
)
DKD = LossSpec(
    name="dkd",
    summary="Decoupled KD (Zhao et al. 2022): alpha * target-class KL + beta * non-target-class KL, times T^2.",
    factory=make_dkd,
    params=DKDParams,
    family="response",
    reference="Zhao, Cui, Song, Qiu & Liang 2022, Decoupled Knowledge Distillation, CVPR 2022, arXiv:2203.08679",
    example={"alpha": 1.0, "beta": 8.0, "temperature": 4.0},
    layers="logits (and the labels)",
    weight=ValueSchedule(schedule="linear", start=0.0, end=1.0, epochs=20),
    label_weight=1.0,
    weight_source=(
        "mdistiller's DKD (the authors' code): CE_WEIGHT 1.0 and the DKD loss warmed up by "
        "min(epoch / 20, 1) (WARMUP 20); alpha 1, beta 8, T 4 are the term's own params."
    ),
)
DIST = LossSpec(
    name="dist",
    summary="DIST (Huang et al. 2022): 1 - Pearson correlation of softmax outputs between and within classes.",
    factory=make_dist,
    params=DISTParams,
    family="response",
    reference=(
        "Huang, You, Wang, Qian & Xu 2022, Knowledge Distillation from A Stronger Teacher, NeurIPS 2022, "
        "arXiv:2205.10536"
    ),
    example={"beta": 1.0, "gamma": 1.0, "tau": 1.0},
    layers="logits",
    weight=2.0,
    label_weight=1.0,
    weight_source=(
        "The DIST authors' configs (ImageNet and CIFAR): kd_loss_weight 2 with ori_loss_weight 1 "
        "(cross-entropy), beta = gamma = 1, tau 1."
    ),
)
LOGIT_STANDARD_KD = LossSpec(
    name="logit_standard_kd",
    summary="Logit standardization (Sun et al. 2024): Hinton KD on per-sample z-scored logits.",
    factory=make_logit_standard_kd,
    params=LogitStandardKDParams,
    family="response",
    reference=(
        "Sun, Ren, Li, Wang & Cao 2024, Logit Standardization in Knowledge Distillation, CVPR 2024, "
        "arXiv:2403.01427"
    ),
    example={"temperature": 2.0},
    layers="logits",
    weight=9.0,
    label_weight=0.1,
    weight_source=(
        "The logit-standardization authors' configs for KD + their z-score (CE_WEIGHT 0.1, KD_WEIGHT "
        "9, T 2, on mdistiller)."
    ),
)
SPECS = [HINTON_KD, DKD, DIST, LOGIT_STANDARD_KD]
