"""``nst``: neuron selectivity transfer (MMD between the distributions of channel activation maps).

Huang & Wang (2017), "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer",
arXiv:1707.01219.

Each channel ``i`` of a feature map (N, C, H, W) gives, per sample, its spatial map as an
``H*W`` vector, L2-normalised over space::

    s_i = f_s[n, i, :, :] / max(||f_s[n, i, :, :]||_2, 1e-12)      i = 1..C_s
    t_j = f_t[n, j, :, :] / max(||f_t[n, j, :, :]||_2, 1e-12)      j = 1..C_t

The student's and the teacher's channels are two samples of a distribution over R^(H*W), and the
term is the (biased, V-statistic) squared maximum mean discrepancy between them with the
polynomial kernel ``k(x, y) = (x . y + c)^d``::

    mmd2[n] = (1/C_t^2) sum_{j,j'} k(t_j, t_j') + (1/C_s^2) sum_{i,i'} k(s_i, s_i')
              - (2 / (C_s C_t)) sum_{i,j} k(s_i, t_j)

    nst_pair = (1 / N) * sum_n mmd2[n]          nst = mean of nst_pair over the ``layers`` pairs

``d = 2, c = 0`` (params ``degree`` and ``constant``) is the paper's polynomial kernel and
RepDistiller's; ``d = 1, c = 0`` is the paper's linear kernel. The teacher-teacher term carries no
gradient but is kept, so the value is the MMD itself (>= 0, 0 when the maps agree). The paper
trains with ``CE + lambda/2 * mmd2`` for one layer, so weight ``lambda / 2`` gives its scale;
RepDistiller sums its pairs with ``beta = 50``, i.e. weight ``50 * P`` for this mean over ``P``
pairs.

Channel counts may differ (the term has no parameters). Spatial sizes must agree after pooling as in
``at``: the larger feature map is adaptive-average-pooled to ``(min(H_s, H_t), min(W_s, W_t))``.
Both layers must give feature maps (N, C, H, W) with the same batch size; anything else is a
:class:`kdframe.errors.LayerError` naming the layers and shapes. Batch size 1 works. The teacher's
features are detached; the term learns from the stage's first teacher. Computations run in at least
float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdframe import BuildContext, LayerPair, LossSpec, LossTerm, Params, StepOutputs
from kdframe_losses._common import compute_dtype, require_teacher
from kdframe_losses._pairs import (
    EXAMPLE_LAYERS,
    check_maps,
    describe_pairs,
    layer_paths,
    layers_field,
    match_spatial,
    pair_features,
    pair_shapes,
)

EPS = 1e-12


class NSTParams(Params):
    """Params of ``nst``."""

    layers: list[LayerPair] = layers_field(
        "Both layers of a pair give feature maps (N, C, H, W); channels may differ and the larger "
        "spatial size is pooled to the smaller."
    )
    degree: int = Field(
        2, ge=1, description="Degree d of the polynomial kernel k(x, y) = (x.y + c)^d (paper: 2)."
    )
    constant: float = Field(
        0.0, ge=0.0, description="Constant c of the polynomial kernel k(x, y) = (x.y + c)^d (paper: 0)."
    )


def channel_vectors(features: Tensor) -> Tensor:
    """(N, C, H, W) maps to (N, C, H*W) channel vectors, each L2-normalised over space."""
    return F.normalize(features.reshape(features.shape[0], features.shape[1], -1), p=2.0, dim=2, eps=EPS)


class NeuronSelectivityTransferLoss(LossTerm):
    """Squared MMD (polynomial kernel) between student and teacher channel maps, averaged over pairs."""

    needs_teacher = True

    def __init__(self, params: NSTParams) -> None:
        super().__init__()
        self.pairs: list[LayerPair] = list(params.layers)
        self.degree = params.degree
        self.constant = params.constant
        self.student_layers, self.teacher_layers = layer_paths(self.pairs)

    def kernel_mean(self, x: Tensor, y: Tensor) -> Tensor:
        """Per sample, the mean of ``k(x_i, y_j)`` over all channel pairs: (N, A, D), (N, B, D) -> (N,)."""
        return (torch.bmm(x, y.transpose(1, 2)) + self.constant).pow(self.degree).mean(dim=(1, 2))

    def build(self, context: BuildContext) -> None:
        """Check that every pair gives feature maps; nothing is created."""
        for pair in self.pairs:
            check_maps("nst", pair, *pair_shapes(context, pair, "nst"))

    def _pair_loss(self, pair: LayerPair, outputs: StepOutputs) -> Tensor:
        student, teacher = pair_features(outputs, pair, "nst")
        check_maps("nst", pair, tuple(student.shape), tuple(teacher.shape))
        dtype = compute_dtype(student, teacher)
        student, teacher = match_spatial(student.to(dtype), teacher.to(dtype))
        s, t = channel_vectors(student), channel_vectors(teacher)
        mmd2 = self.kernel_mean(t, t) + self.kernel_mean(s, s) - 2.0 * self.kernel_mean(s, t)
        return mmd2.mean()

    def forward(self, outputs: StepOutputs) -> Tensor:
        require_teacher(outputs.teachers, "nst")
        return torch.stack([self._pair_loss(pair, outputs) for pair in self.pairs]).mean()

    def extra_repr(self) -> str:
        return f"layers=[{describe_pairs(self.pairs)}], degree={self.degree}, constant={self.constant}"


def make_nst(params: NSTParams) -> NeuronSelectivityTransferLoss:
    """Factory of ``nst``."""
    return NeuronSelectivityTransferLoss(params)


NST = LossSpec(
    name="nst",
    summary="Neuron selectivity transfer (Huang & Wang 2017): polynomial-kernel MMD of channel maps.",
    factory=make_nst,
    params=NSTParams,
    family="feature",
    reference=(
        'Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", '
        "arXiv:1707.01219"
    ),
    example={"layers": EXAMPLE_LAYERS, "degree": 2, "constant": 0.0},
    layers="feature maps (N, C, H, W); channels and spatial sizes may differ",
    weight=50.0,
    label_weight=1.0,
    weight_source="RepDistiller's NST runs (-b 50 with cross-entropy 1, polynomial kernel of degree 2).",
)
SPECS = [NST]
