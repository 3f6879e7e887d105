"""``ab``: distillation of activation boundaries, used to initialise the student.

Heo, Lee, Yun & Choi (2019), "Knowledge Transfer via Distillation of Activation Boundaries Formed
by Hidden Neurons", AAAI 2019, arXiv:1811.03233. The student learns *where* the teacher's hidden
neurons switch on: whether each pre-ReLU value of the teacher is positive, not its magnitude.

For every (student layer, teacher layer) pair — both **pre-ReLU** outputs, e.g. the BatchNorm inside
a conv block (``features.0.1`` in ``plain_cnn``) — a connector maps the student's channels to the
teacher's, as in the authors' code::

    connector = Conv2d(C_s, C_t, 1, bias=False) + BatchNorm2d(C_t)      feature maps (N, C, H, W)
              = Linear(D_s, D_t, bias=False) + BatchNorm1d(D_t)          vectors (N, D)

with the conv/linear weights drawn from N(0, 2 / C_t) (the authors' He init over the output fan)
and BatchNorm's weight 1, bias 0. With ``s = connector(student map)`` and ``t`` the teacher's map
(detached), the alternative (margin) loss of one pair is::

    ab_pair = (1 / (1000 * N)) * sum_{n,c,h,w} [ (s + m)^2 * 1[(s > -m) and (t <= 0)]
                                               + (s - m)^2 * 1[(s <= m) and (t > 0)] ]

i.e. summed over all values, divided by the batch size and by 1000, the normalisation of the
authors' ``distillation_module.py`` for one layer. The authors' own CIFAR training script and
RepDistiller both additionally multiply the loss by 3. The pre-training phase optimises this loss
alone with weight 1, so that factor only scales its gradients: with SGD, a 3x learning rate in the
phase (``training.stages.<stage>-pretrain.optimizer.lr``) matches it apart from weight decay. ``m`` is ``margin``
(default 1.0). Pairs are combined by ``pair_weighting``: ``"mean"`` (default) averages them;
``"authors"`` sums ``2^(i - L + 1) * ab_pair_i`` for pairs ``i = 0..L-1`` listed from shallow to deep
(the deepest weighs 1, the one before 1/2, ...), as the authors' and RepDistiller's code weight
their four ResNet stages. When the maps' heights or widths differ, the larger is brought to
``(min(H_s, H_t), min(W_s, W_t))`` by adaptive average pooling (of the connector's output or of the
teacher's pre-activations) — the paper uses layers of equal size.

How the paper uses it: AB only **initialises** the student. The term declares a pre-training phase
of ``pretrain_epochs`` epochs (default 30, RepDistiller's ``init_epochs``; ``0`` for none) in which
the core trains the student *and* the connectors on this loss alone (``pretrain_trains_student`` is
True; :meth:`~ActivationBoundariesLoss.pretrain_loss` is the same loss as ``forward``). The main stage
then trains the student normally — with ``cross_entropy`` and e.g. ``hinton_kd`` — and the connectors
are no longer needed, so give ``ab`` **weight 0** in the main stage to reproduce the paper (a small
weight keeps the boundaries as a regulariser). The connectors stay trainable after the phase
(:meth:`~ActivationBoundariesLoss.end_pretraining` does nothing).

Batch size 1 works whenever there is more than one value per channel for the connector's BatchNorm
in training mode (``N*H*W > 1``; vectors need ``N > 1``), otherwise a LayerError says so. Gradients
reach the student and the connectors, never the teacher. The indicator functions have no gradient,
as in the authors' code. The term learns from the stage's first teacher.
"""

from __future__ import annotations

import math
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

NAME = "ab"
#: The authors' constant divisor of each layer's summed loss (besides the batch size).
SCALE = 1000.0


class ActivationBoundariesParams(Params):
    """Params of ``ab``."""

    layers: list[LayerPair] = Field(
        min_length=1,
        description=(
            "(student, teacher) pairs of pre-ReLU layers (e.g. the BatchNorm of a conv block, "
            "'features.0.1' in plain_cnn), feature maps (N, C, H, W) or vectors (N, D); listed "
            "from shallow to deep. Each pair gets a connector."
        ),
    )
    margin: float = Field(
        1.0,
        ge=0.0,
        le=1000.0,
        description="Margin m of the alternative loss (the paper's and RepDistiller's 1.0).",
    )
    pretrain_epochs: int = Field(
        30,
        ge=0,
        le=100_000,
        description=(
            "Epochs of the initialisation phase that trains the student and connectors on this "
            "loss alone before the stage (RepDistiller's init_epochs: 30); 0 for no such phase."
        ),
    )
    pair_weighting: Literal["mean", "authors"] = Field(
        "mean",
        description=(
            "How pairs combine: 'mean' averages them; 'authors' sums 2^(i-L+1) times pair i "
            "(deepest pair weight 1, halving towards the input), as the authors' code."
        ),
    )


def make_connector(in_features: int, out_features: int, maps: bool) -> nn.Sequential:
    """1x1 conv (or linear) without bias plus BatchNorm, initialised as in the authors' code."""
    if maps:
        layer: nn.Module = nn.Conv2d(in_features, out_features, kernel_size=1, bias=False)
        norm: nn.Module = nn.BatchNorm2d(out_features)
    else:
        layer = nn.Linear(in_features, out_features, bias=False)
        norm = nn.BatchNorm1d(out_features)
    with torch.no_grad():
        layer.weight.normal_(0.0, math.sqrt(2.0 / out_features))
        norm.weight.fill_(1.0)
        norm.bias.zero_()
    return nn.Sequential(layer, norm)


def alternative_loss(source: Tensor, target: Tensor, margin: float) -> Tensor:
    """Sum of the margin loss over every value (no reduction by batch or scale)."""
    positive = target > 0
    loss = (source + margin).pow(2) * ((source > -margin) & ~positive).to(source.dtype)
    loss = loss + (source - margin).pow(2) * ((source <= margin) & positive).to(source.dtype)
    return loss.sum()


class ActivationBoundariesLoss(LossTerm):
    """Margin loss that makes the student's connected pre-activations switch on where the teacher's do."""

    needs_teacher = True
    pretrain_trains_student = True

    def __init__(self, params: ActivationBoundariesParams) -> None:
        super().__init__()
        self.pairs = [(pair.student, pair.teacher) for pair in params.layers]
        self.margin = params.margin
        self.pretrain_epochs = params.pretrain_epochs
        self.pair_weighting = params.pair_weighting
        self.student_layers = tuple(dict.fromkeys(student for student, _ in self.pairs))
        self.teacher_layers = tuple(dict.fromkeys(teacher for _, teacher in self.pairs))
        self.connectors = nn.ModuleList()

    def _error(self, pair: tuple[str, str], student: tuple[int, ...], teacher: tuple[int, ...], why: str) -> LayerError:
        return LayerError(
            f"{NAME} cannot use student layer '{pair[0]}' (output shape {shape_text(student)}) with "
            f"teacher layer '{pair[1]}' (output shape {shape_text(teacher)}): {why}"
        )

    def _check(self, pair: tuple[str, str], student: tuple[int, ...], teacher: tuple[int, ...]) -> None:
        if len(student) != len(teacher) or len(student) not in (2, 4):
            raise self._error(
                pair, student, teacher,
                "activation boundaries need two feature maps (N, C, H, W) or two vectors (N, D), "
                "taken before a ReLU.",
            )  # fmt: skip
        if student[0] != teacher[0]:
            raise self._error(pair, student, teacher, "their batch sizes differ.")

    def build(self, context: BuildContext) -> None:
        """Create one connector per pair, from the student's channels to the teacher's."""
        self.connectors = nn.ModuleList()
        for pair in self.pairs:
            student = tuple(layer_shape(context.student_shapes, pair[0], "student", NAME))
            teacher = tuple(layer_shape(context.teacher_shapes, pair[1], "teacher", NAME))
            self._check(pair, student, teacher)
            self.connectors.append(make_connector(student[1], teacher[1], maps=len(student) == 4))

    def _pair_weights(self) -> list[float]:
        count = len(self.pairs)
        if self.pair_weighting == "mean":
            return [1.0 / count] * count
        return [2.0 ** (index - count + 1) for index in range(count)]

    def forward(self, outputs: StepOutputs) -> Tensor:
        require_teacher(outputs.teachers, NAME)
        if len(self.connectors) != len(self.pairs):
            raise ComponentError(
                f"{NAME} was called before build(): the core must call build(context) after the dry "
                "run, so that the connectors exist and are optimised with the student."
            )
        total: Tensor | None = None
        for pair, connector, weight in zip(self.pairs, self.connectors, self._pair_weights()):
            student = layer_output(outputs.student, pair[0], "student", NAME)
            teacher = layer_output(outputs.teacher, pair[1], "teacher", NAME).detach()
            self._check(pair, tuple(student.shape), tuple(teacher.shape))
            values_per_channel = student.shape[0] * (student.shape[2] * student.shape[3] if student.dim() == 4 else 1)
            if connector.training and values_per_channel < 2:
                raise self._error(
                    pair, tuple(student.shape), tuple(teacher.shape),
                    "the connector's BatchNorm needs more than one value per channel in training "
                    "(batch size times height times width); use a larger batch.",
                )  # fmt: skip
            source = connector(student.to(next(connector.parameters()).dtype))
            if source.dim() == 4 and source.shape[2:] != teacher.shape[2:]:
                size = (min(source.shape[2], teacher.shape[2]), min(source.shape[3], teacher.shape[3]))
                source = F.adaptive_avg_pool2d(source, size) if tuple(source.shape[2:]) != size else source
                teacher = F.adaptive_avg_pool2d(teacher, size) if tuple(teacher.shape[2:]) != size else teacher
            if source.shape != teacher.shape:
                raise self._error(
                    pair, tuple(student.shape), tuple(teacher.shape),
                    f"the connector built for other shapes gives {shape_text(source.shape)}.",
                )
            dtype = compute_dtype(source, teacher)
            value = alternative_loss(source.to(dtype), teacher.to(dtype), self.margin) / (SCALE * source.shape[0])
            total = value * weight if total is None else total + value * weight
        assert total is not None
        return total

    def pretrain_loss(self, outputs: StepOutputs) -> Tensor:
        """The initialisation phase's loss: the same AB loss, optimised with the student."""
        return self.forward(outputs)

    def extra_repr(self) -> str:
        return (
            f"pairs={self.pairs!r}, margin={self.margin}, pretrain_epochs={self.pretrain_epochs}, "
            f"pair_weighting={self.pair_weighting!r}"
        )


def make_ab(params: ActivationBoundariesParams) -> ActivationBoundariesLoss:
    """Factory of ``ab``."""
    return ActivationBoundariesLoss(params)


AB = LossSpec(
    name=NAME,
    summary="Activation boundaries (Heo et al. 2019): margin loss on pre-ReLU signs; initialises the student.",
    factory=make_ab,
    params=ActivationBoundariesParams,
    family="feature",
    reference=(
        "Heo, Lee, Yun & Choi (2019), 'Knowledge Transfer via Distillation of Activation Boundaries "
        "Formed by Hidden Neurons', AAAI 2019, arXiv:1811.03233"
    ),
    example={"layers": [{"student": "features.2.1", "teacher": "features.4.1"}], "pretrain_epochs": 1},
    layers="pre-ReLU feature maps (N, C, H, W) or vectors (N, D), e.g. a conv block's BatchNorm output",
    weight=0.0,
    label_weight=1.0,
    weight_source=(
        "The paper: AB only initialises the student (a pre-training phase with the AB loss alone, "
        "normalised as the authors' distillation_module.py), then trains from labels, so its main-stage "
        "weight is 0. The authors' CIFAR script and RepDistiller scale the phase's loss by 3."
    ),
)
SPECS = [AB]
