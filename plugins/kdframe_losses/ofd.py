"""``ofd``: overhaul of feature distillation (pre-ReLU features, margin ReLU, partial L2).

Heo, Kim, Yun, Park, Kwak & Choi (2019), "A Comprehensive Overhaul of Feature Distillation",
ICCV 2019, arXiv:1904.01866; the formulas follow the authors' code (clovaai/overhaul-distillation).

**Which layers.** The teacher's layer must be a *pre-ReLU* output, and specifically the
``BatchNorm2d`` that feeds the ReLU, because the margin is computed from that BatchNorm's affine
parameters. In kdframe's ``plain_cnn`` every conv block ``features.<i>`` is
``Sequential(conv, bn, relu)``, so the teacher path is ``features.<i>.1`` (e.g. ``features.0.1``),
not ``features.<i>`` (which is after the ReLU). A teacher module that is not a ``BatchNorm2d`` is a
:class:`kdframe.errors.LayerError` that says so. The paper taps the student before its ReLU too
(e.g. ``features.<i>.1`` of the student); any student feature map works.

**Margin** (per teacher channel ``c``, from the BatchNorm's weight ``gamma_c`` and bias ``beta_c``):
the BatchNorm's output is modelled as ``N(beta_c, gamma_c^2)``, and the margin is the expectation of
its negative part, i.e. of the value given that it is negative::

    s = |gamma_c|,  m = beta_c,  P = Phi(-m / s)
    margin_c = m - s * phi(m / s) / P              if P > 0.001
             = -3 s                                otherwise (as in the authors' code)

with ``phi``/``Phi`` the standard normal density/CDF (``Phi(x) = erfc(-x / sqrt 2) / 2``). A channel
with ``gamma_c = 0`` (a constant output ``m``) gets ``m`` when ``m < 0`` and ``0`` otherwise. A
BatchNorm without affine parameters is ``gamma = 1, beta = 0``. Margins are computed once, in
:meth:`OFDLoss.build`, from the teacher as it is when the stage starts, and kept as buffers.

**Connector** (per pair, trained with the student): ``Conv2d(C_s, C_t, 1, bias=False)`` followed by
``BatchNorm2d(C_t)``; the convolution is initialised ``N(0, 2 / C_t)`` and the BatchNorm to
``weight 1, bias 0``, as in the authors' code.

**Loss** (partial L2): with the teacher target ``t' = max(f_t, margin)`` and ``s' = connector(f_s)``::

    ofd_pair = (1 / N) * sum_{n,c,h,w} [ (s' > t') or (t' > 0) ] * (s' - t')^2
    ofd      = mean of ofd_pair over the ``layers`` pairs

i.e. a positive teacher response is matched exactly, while where the teacher is negative (its ReLU
would zero it) the student is only pushed down to the margin, never up.

**Reduction, stated plainly.** The sum over all elements is divided by the batch size ``N``, as in
the authors' code. This term does **not** divide by 1000: the authors' training loop uses
``CE + loss.sum() / N / 1000`` on CIFAR (``/ 10000`` on ImageNet), i.e. the paper's distillation
weight ``alpha = 1/1000``; put ``weight: 0.001`` (CIFAR) or ``0.0001`` (ImageNet) in the schedule.
The values are large (of the order of ``C * H * W`` per sample) before that weight. The authors also
weight their pairs by ``1 / 2^(P - 1 - i)`` (deeper pairs more) and sum; this term takes the plain
mean over pairs, so use separate ``ofd`` terms with their own weights to weight layers differently.

Spatial sizes: when they differ, the larger feature map is adaptive-average-pooled to
``(min(H_s, H_t), min(W_s, W_t))`` (the student's before the connector); the authors only pair
layers of equal size. Both layers must give feature maps (N, C, H, W) with the same batch size.
Batch size 1 works when the maps have more than one position (the connector's BatchNorm needs more
than one value per channel in training mode, like any BatchNorm). Gradients reach the student and the
connectors; the teacher's features are detached. The term learns from the stage's first teacher.
"""

from __future__ import annotations

import math

import torch
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
from kdframe_losses._common import compute_dtype, require_teacher, shape_text
from kdframe_losses._pairs import (
    check_maps,
    describe_pairs,
    layer_paths,
    layers_field,
    match_spatial,
    pair_error,
    pair_features,
    pair_shapes,
)

#: Below this probability of a negative response, the margin is -3 * |gamma| (authors' code).
MIN_NEGATIVE_PROBABILITY = 0.001


class OFDParams(Params):
    """Params of ``ofd``."""

    layers: list[LayerPair] = layers_field(
        "The teacher layer must be the BatchNorm2d just before a ReLU (pre-ReLU output; in plain_cnn "
        "'features.<i>.1'); the student layer any feature map (N, C, H, W), ideally pre-ReLU too."
    )


def normal_cdf(x: float) -> float:
    """The standard normal CDF ``Phi(x)``."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def channel_margin(gamma: float, beta: float) -> float:
    """The margin of one channel: ``E[x | x < 0]`` for ``x ~ N(beta, gamma^2)`` (see the module docs)."""
    s, m = abs(gamma), beta
    if s == 0.0:
        return m if m < 0.0 else 0.0
    probability = normal_cdf(-m / s)
    if probability > MIN_NEGATIVE_PROBABILITY:
        density = math.exp(-((m / s) ** 2) / 2.0) / math.sqrt(2.0 * math.pi)
        return m - s * density / probability
    return -3.0 * s


def margins_from_batchnorm(bn: nn.BatchNorm2d | nn.SyncBatchNorm) -> Tensor:
    """Per-channel margins (float32, shape (C,)) from a BatchNorm's weight and bias."""
    channels = bn.num_features
    gammas = bn.weight.detach().double().cpu().tolist() if bn.weight is not None else [1.0] * channels
    betas = bn.bias.detach().double().cpu().tolist() if bn.bias is not None else [0.0] * channels
    return torch.tensor([channel_margin(g, b) for g, b in zip(gammas, betas)], dtype=torch.float32)


def build_connector(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """``Conv2d(C_s, C_t, 1, bias=False) -> BatchNorm2d(C_t)``, initialised as in the authors' code."""
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
    bn = nn.BatchNorm2d(teacher_channels)
    with torch.no_grad():
        conv.weight.normal_(0.0, math.sqrt(2.0 / teacher_channels))  # n = k * k * out_channels
        bn.weight.fill_(1.0)
        bn.bias.zero_()
    return nn.Sequential(conv, bn)


class OFDAdapter(nn.Module):
    """One pair's connector and the teacher channels' margins (a buffer)."""

    margin: Tensor

    def __init__(self, student_channels: int, teacher_channels: int, margin: Tensor) -> None:
        super().__init__()
        self.connector = build_connector(student_channels, teacher_channels)
        self.register_buffer("margin", margin.reshape(1, -1, 1, 1))


def partial_l2(source: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    """``sum [(s > t') | (t' > 0)] * (s - t')^2`` with ``t' = max(teacher, margin)`` (not yet / N)."""
    target = torch.max(teacher, margin)
    mask = (source > target) | (target > 0)
    return ((source - target).pow(2) * mask).sum()


class OFDLoss(LossTerm):
    """Partial L2 between connected student features and margin-ReLU'd pre-ReLU teacher features."""

    needs_teacher = True

    def __init__(self, params: OFDParams) -> None:
        super().__init__()
        self.pairs: list[LayerPair] = list(params.layers)
        self.student_layers, self.teacher_layers = layer_paths(self.pairs)
        self.adapters = nn.ModuleList()  # one OFDAdapter per pair, created by build()

    def _teacher_batchnorm(
        self, context: BuildContext, pair: LayerPair, teacher: tuple[int, ...]
    ) -> nn.BatchNorm2d | nn.SyncBatchNorm:
        module = context.teacher_modules.get(pair.teacher)
        if module is None:
            raise LayerError(
                f"ofd needs the teacher module at '{pair.teacher}' to read its BatchNorm parameters, "
                "but the build context has none (modules given: "
                f"{', '.join(sorted(context.teacher_modules)) or 'none'}). The core must pass "
                "context.teacher_modules."
            )
        if not isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            raise LayerError(
                f"ofd needs the teacher layer '{pair.teacher}' to be the BatchNorm2d right before a ReLU "
                f"(a pre-ReLU output, whose weight and bias give the margin), but it is "
                f"{type(module).__name__} with output shape {shape_text(teacher)}. Tap the BatchNorm "
                "inside the block instead: in plain_cnn use 'features.<i>.1' rather than 'features.<i>' "
                "(which is after the ReLU); in other models the 'bn' module that precedes the ReLU."
            )
        if module.num_features != teacher[1]:
            raise LayerError(
                f"ofd: the teacher BatchNorm '{pair.teacher}' has {module.num_features} channels but its "
                f"output shape is {shape_text(teacher)}."
            )
        return module

    def build(self, context: BuildContext) -> None:
        """Create each pair's connector and compute the margins from the teacher's BatchNorm."""
        adapters = []
        for pair in self.pairs:
            student, teacher = pair_shapes(context, pair, "ofd")
            check_maps("ofd", pair, student, teacher)
            bn = self._teacher_batchnorm(context, pair, teacher)
            adapters.append(OFDAdapter(student[1], teacher[1], margins_from_batchnorm(bn)))
        self.adapters = nn.ModuleList(adapters)

    def _pair_loss(self, pair: LayerPair, adapter: OFDAdapter, outputs: StepOutputs) -> Tensor:
        student, teacher = pair_features(outputs, pair, "ofd")
        check_maps("ofd", pair, tuple(student.shape), tuple(teacher.shape))
        conv = adapter.connector[0]
        if (student.shape[1], teacher.shape[1]) != (conv.in_channels, conv.out_channels):
            raise pair_error(
                "ofd",
                pair,
                tuple(student.shape),
                tuple(teacher.shape),
                f"the connector was built for {conv.in_channels} student and {conv.out_channels} "
                "teacher channels.",
            )
        student, teacher = match_spatial(student, teacher)
        source = adapter.connector(student)
        dtype = compute_dtype(source, teacher)
        total = partial_l2(source.to(dtype), teacher.to(dtype), adapter.margin.to(dtype))
        return total / student.shape[0]

    def forward(self, outputs: StepOutputs) -> Tensor:
        require_teacher(outputs.teachers, "ofd")
        if len(self.adapters) != len(self.pairs):
            raise ComponentError(
                "ofd was called before build(): the core must call build(context) after the dry run "
                "and before training, so that the connectors and margins exist."
            )
        losses = [self._pair_loss(pair, adapter, outputs) for pair, adapter in zip(self.pairs, self.adapters)]
        return torch.stack(losses).mean()

    def extra_repr(self) -> str:
        return f"layers=[{describe_pairs(self.pairs)}]"


def make_ofd(params: OFDParams) -> OFDLoss:
    """Factory of ``ofd``."""
    return OFDLoss(params)


OFD = LossSpec(
    name="ofd",
    summary="Overhaul of feature distillation (Heo et al. 2019): margin ReLU and partial L2 on pre-ReLU maps.",
    factory=make_ofd,
    params=OFDParams,
    family="feature",
    reference=(
        'Heo, Kim, Yun, Park, Kwak & Choi 2019, "A Comprehensive Overhaul of Feature Distillation", '
        "ICCV 2019, arXiv:1904.01866"
    ),
    example={"layers": [{"student": "features.2.1", "teacher": "features.4.1"}, {"student": "features.0.1", "teacher": "features.1.1"}]},
    layers=(
        "feature maps (N, C, H, W); the teacher layer must be a BatchNorm2d before a ReLU (plain_cnn: "
        "'features.<i>.1'); channels and spatial sizes may differ"
    ),
    weight=0.001,
    label_weight=1.0,
    weight_source=(
        "The OFD authors' CIFAR code: the distillation loss summed over the pairs and divided by the "
        "batch size and by 1000 (this term is that sum per sample, so the 1/1000 is the weight)."
    ),
)
SPECS = [OFD]
