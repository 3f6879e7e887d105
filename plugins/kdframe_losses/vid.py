"""``vid``: variational information distillation (a Gaussian likelihood of the teacher's features).

Ahn, Hu, Damianou, Lawrence & Dai (2019), "Variational Information Distillation for Knowledge
Transfer", CVPR 2019, arXiv:1904.05835. VID maximises a variational lower bound of the mutual
information between teacher and student features, which amounts to minimising the negative
log-likelihood of the teacher's feature map under a Gaussian whose mean is predicted from the
student's and whose variance is learned per channel.

Per layer pair, built in :meth:`VIDLoss.build` and trained with the student:

* a regressor ``mu = r(f_s)``: ``Conv1x1(C_s, M) -> ReLU -> Conv1x1(M, M) -> ReLU -> Conv1x1(M, C_t)``
  (convolutions without bias, PyTorch's default initialisation), with ``M = mid_channels`` (default:
  the teacher's channel count ``C_t``, as in RepDistiller's use of the authors' code);
* a per-channel variance ``var_c = softplus(alpha_c) + eps``, ``alpha`` initialised so that
  ``var_c = init_pred_var`` (5.0 by default, as in the authors' code; ``eps = 1e-5``).

The pair's value is the mean negative log-likelihood without its constant ``0.5 * log(2 pi)``::

    vid_pair = (1 / (N * C_t * H * W)) * sum_{n,c,h,w} 0.5 * ( log var_c + (mu[n,c,h,w] - f_t[n,c,h,w])^2 / var_c )

and the term is the mean over the ``layers`` pairs. The value may be negative (when the variances
shrink below 1), which is expected: only its gradient matters.

Deviations, stated plainly: the paper writes ``-sum_k lambda_k log q(t_k | s_k)`` over layers (sum of
per-element log-likelihoods) and RepDistiller sums its pairs' means with weight 1; this term averages
over pairs (use weight ``P`` to reproduce RepDistiller with ``P`` pairs, and separate ``vid`` terms
to give layers different ``lambda_k``).

Spatial sizes: when they differ, the larger feature map is adaptive-average-pooled to
``(min(H_s, H_t), min(W_s, W_t))`` *before* the regressor (as in RepDistiller), i.e. the student's
map when it is the larger one, the teacher's target otherwise. Both layers must give feature maps
(N, C, H, W) with the same batch size; anything else is a :class:`kdframe.errors.LayerError` naming
the layers and shapes. Batch size 1 works. Gradients reach the student, the regressors and the
variances; the teacher's features are detached. The term learns from the stage's first teacher.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from kdframe import BuildContext, ComponentError, LayerPair, LossSpec, LossTerm, Params, StepOutputs
from kdframe_losses._common import compute_dtype, require_teacher, shape_text
from kdframe_losses._pairs import (
    EXAMPLE_LAYERS,
    check_maps,
    describe_pairs,
    layer_paths,
    layers_field,
    match_spatial,
    pair_error,
    pair_features,
    pair_shapes,
)


class VIDParams(Params):
    """Params of ``vid``."""

    layers: list[LayerPair] = layers_field(
        "Both layers of a pair give feature maps (N, C, H, W); channels may differ and the larger "
        "spatial size is pooled to the smaller."
    )
    mid_channels: int | None = Field(
        None,
        ge=1,
        description=(
            "Channels of the regressor's two hidden 1x1 convolutions; null (default) uses the "
            "teacher layer's channel count, as RepDistiller does."
        ),
    )
    init_pred_var: float = Field(
        5.0,
        gt=0.0,
        le=1e4,
        description="Initial value of every learned variance softplus(alpha) + eps (authors' code: 5.0).",
    )
    eps: float = Field(
        1e-5,
        gt=0.0,
        description="Lower bound added to the softplus so that variances stay positive (authors' code: 1e-5).",
    )

    @model_validator(mode="after")
    def _variance_above_eps(self) -> VIDParams:
        if self.init_pred_var <= self.eps:
            raise ValueError(
                f"init_pred_var ({self.init_pred_var}) must be larger than eps ({self.eps}), since the "
                "variance is softplus(alpha) + eps."
            )
        return self


def inverse_softplus(value: float) -> float:
    """``alpha`` with ``softplus(alpha) = value`` (``value > 0``), computed without overflow."""
    return value + math.log(-math.expm1(-value))


class VIDAdapter(nn.Module):
    """One pair's Gaussian: a regressor predicting the teacher's map and per-channel variances."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, init_pred_var: float, eps: float) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, kernel_size=1, bias=False),
        )
        self.alpha = nn.Parameter(torch.full((out_channels,), inverse_softplus(init_pred_var - eps)))
        self.eps = eps

    def variance(self) -> Tensor:
        """``softplus(alpha) + eps``, one per teacher channel."""
        return F.softplus(self.alpha) + self.eps


class VIDLoss(LossTerm):
    """Gaussian negative log-likelihood of teacher features given the student's, averaged over pairs."""

    needs_teacher = True

    def __init__(self, params: VIDParams) -> None:
        super().__init__()
        self.pairs: list[LayerPair] = list(params.layers)
        self.mid_channels = params.mid_channels
        self.init_pred_var = params.init_pred_var
        self.eps = params.eps
        self.student_layers, self.teacher_layers = layer_paths(self.pairs)
        self.adapters = nn.ModuleList()  # one VIDAdapter per pair, created by build()

    def build(self, context: BuildContext) -> None:
        """Create each pair's regressor and variances from the channel counts of the dry run."""
        adapters = []
        for pair in self.pairs:
            student, teacher = pair_shapes(context, pair, "vid")
            check_maps("vid", pair, student, teacher)
            mid = self.mid_channels if self.mid_channels is not None else teacher[1]
            adapters.append(VIDAdapter(student[1], mid, teacher[1], self.init_pred_var, self.eps))
        self.adapters = nn.ModuleList(adapters)

    def _pair_loss(self, pair: LayerPair, adapter: VIDAdapter, outputs: StepOutputs) -> Tensor:
        student, teacher = pair_features(outputs, pair, "vid")
        check_maps("vid", pair, tuple(student.shape), tuple(teacher.shape))
        in_channels = adapter.regressor[0].in_channels
        out_channels = adapter.alpha.shape[0]
        if (student.shape[1], teacher.shape[1]) != (in_channels, out_channels):
            raise pair_error(
                "vid",
                pair,
                tuple(student.shape),
                tuple(teacher.shape),
                f"the adapter was built for {in_channels} student and {out_channels} teacher channels "
                f"(got {shape_text(student.shape)} and {shape_text(teacher.shape)}).",
            )
        student, teacher = match_spatial(student, teacher)
        mean = adapter.regressor(student)
        dtype = compute_dtype(mean, teacher)
        variance = adapter.variance().to(dtype).view(1, -1, 1, 1)
        squared = (mean.to(dtype) - teacher.to(dtype)).pow(2)
        return (0.5 * (torch.log(variance) + squared / variance)).mean()

    def forward(self, outputs: StepOutputs) -> Tensor:
        require_teacher(outputs.teachers, "vid")
        if len(self.adapters) != len(self.pairs):
            raise ComponentError(
                "vid was called before build(): the core must call build(context) after the dry run "
                "and before training, so that the regressors exist and are optimised with the student."
            )
        losses = [self._pair_loss(pair, adapter, outputs) for pair, adapter in zip(self.pairs, self.adapters)]
        return torch.stack(losses).mean()

    def extra_repr(self) -> str:
        return (
            f"layers=[{describe_pairs(self.pairs)}], mid_channels={self.mid_channels}, "
            f"init_pred_var={self.init_pred_var}, eps={self.eps}"
        )


def make_vid(params: VIDParams) -> VIDLoss:
    """Factory of ``vid``."""
    return VIDLoss(params)


VID = LossSpec(
    name="vid",
    summary="Variational information distillation (Ahn et al. 2019): Gaussian NLL of teacher features.",
    factory=make_vid,
    params=VIDParams,
    family="feature",
    reference=(
        'Ahn, Hu, Damianou, Lawrence & Dai 2019, "Variational Information Distillation for Knowledge '
        'Transfer", CVPR 2019, arXiv:1904.05835'
    ),
    example={"layers": EXAMPLE_LAYERS, "init_pred_var": 5.0},
    layers="feature maps (N, C, H, W); channels and spatial sizes may differ",
    weight=1.0,
    label_weight=1.0,
    weight_source="RepDistiller's VID runs (-b 1 with cross-entropy 1, init_pred_var 5).",
)
SPECS = [VID]
