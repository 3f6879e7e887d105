"""``at``: attention transfer (activation-based spatial attention maps).

Zagoruyko & Komodakis (2017), "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer", ICLR 2017, arXiv:1612.03928.

For a feature map ``f`` (N, C, H, W) the attention map of sample ``n`` is the channel mean of
``|f|^p``, flattened over space and L2-normalised::

    Q(f)[n]  = (1 / C) * sum_c |f[n, c, :, :]|^p                 (an H*W vector)
    a(f)[n]  = Q(f)[n] / max(||Q(f)[n]||_2, 1e-12)

(the channel mean, not the paper's sum: the scale cancels in the normalisation, so they agree). For
one layer pair the loss is, as in the authors' code (and RepDistiller's), the mean of the squared
differences over the batch and the spatial positions::

    at_pair = (1 / (N * H * W)) * sum_{n,k} ( a(f_s)[n, k] - a(f_t)[n, k] )^2

and the term is the **mean** over the ``layers`` pairs::

    at = (1 / P) * sum_{p=1..P} at_pair_p

Choice and deviations, stated plainly:

* The paper sums over the pairs (``beta/2 * sum_j ||a_s - a_t||_2``) and writes the (unsquared) L2
  norm of the difference; the authors' code (``cifar.py``) instead uses the squared difference
  averaged over batch and positions, and adds ``beta * sum(loss_groups)`` with ``beta = 1000`` (the
  paper's ``beta / 2`` does not appear in the code). This term keeps the code's per-pair value but
  takes the mean over the pairs, like every other feature term of kdframe, so that a weight keeps
  its meaning when pairs are added. To reproduce the authors' setting (and RepDistiller's, also
  ``beta = 1000`` over the summed pairs) with ``P`` pairs use weight ``1000 * P``.
* ``|f|^p`` uses the absolute value as the paper defines; the code's ``f.pow(2)`` is the same for
  the default ``p = 2`` (the paper's choice).

Channel counts may differ (no adapter is needed, the term has no parameters). When the spatial sizes
differ, the larger *feature map* is adaptive-average-pooled to ``(min(H_s, H_t), min(W_s, W_t))``
before the attention maps are taken (as RepDistiller does, there for square maps only). Both layers
must give feature maps (N, C, H, W) with the same batch size; anything else is a
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


class AttentionParams(Params):
    """Params of ``at``."""

    layers: list[LayerPair] = layers_field(
        "Both layers of a pair give feature maps (N, C, H, W); channels may differ and the larger "
        "spatial size is pooled to the smaller."
    )
    p: float = Field(
        2.0,
        ge=1.0,
        description=(
            "Exponent of the attention map, mean_c |f|^p (the paper's choice and default is 2; at "
            "least 1 so that the gradient stays finite at zero activations)."
        ),
    )


def attention_map(features: Tensor, p: float) -> Tensor:
    """``a(f)``: the L2-normalised channel mean of ``|f|^p``, flattened to (N, H*W)."""
    pooled = features.abs().pow(p).mean(dim=1).reshape(features.shape[0], -1)
    return F.normalize(pooled, p=2.0, dim=1, eps=EPS)


class AttentionTransferLoss(LossTerm):
    """Squared distance between normalised spatial attention maps, averaged over layer pairs."""

    needs_teacher = True

    def __init__(self, params: AttentionParams) -> None:
        super().__init__()
        self.pairs: list[LayerPair] = list(params.layers)
        self.p = params.p
        self.student_layers, self.teacher_layers = layer_paths(self.pairs)

    def build(self, context: BuildContext) -> None:
        """Check that every pair gives feature maps; nothing is created."""
        for pair in self.pairs:
            check_maps("at", pair, *pair_shapes(context, pair, "at"))

    def _pair_loss(self, pair: LayerPair, outputs: StepOutputs) -> Tensor:
        student, teacher = pair_features(outputs, pair, "at")
        check_maps("at", pair, tuple(student.shape), tuple(teacher.shape))
        dtype = compute_dtype(student, teacher)
        student, teacher = match_spatial(student.to(dtype), teacher.to(dtype))
        difference = attention_map(student, self.p) - attention_map(teacher, self.p)
        return difference.pow(2).mean()

    def forward(self, outputs: StepOutputs) -> Tensor:
        require_teacher(outputs.teachers, "at")
        return torch.stack([self._pair_loss(pair, outputs) for pair in self.pairs]).mean()

    def extra_repr(self) -> str:
        return f"layers=[{describe_pairs(self.pairs)}], p={self.p}"


def make_attention(params: AttentionParams) -> AttentionTransferLoss:
    """Factory of ``at``."""
    return AttentionTransferLoss(params)


AT = LossSpec(
    name="at",
    summary="Attention transfer (Zagoruyko & Komodakis 2017): squared distance of normalised attention maps.",
    factory=make_attention,
    params=AttentionParams,
    family="feature",
    reference=(
        'Zagoruyko & Komodakis 2017, "Paying More Attention to Attention: Improving the Performance '
        'of Convolutional Neural Networks via Attention Transfer", ICLR 2017, arXiv:1612.03928'
    ),
    example={"layers": EXAMPLE_LAYERS, "p": 2.0},
    layers="feature maps (N, C, H, W); channels and spatial sizes may differ",
    weight=1000.0,
    weight_source=(
        "The authors' cifar.py and RepDistiller: beta 1000 times the sum over pairs; this term averages "
        "the pairs, so 1000 is their setting for one pair and 1000 * P reproduces it for P pairs."
    ),
    label_weight=1.0,
)
SPECS = [AT]
