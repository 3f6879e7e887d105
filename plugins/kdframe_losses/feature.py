"""``fitnet``: feature-based distillation with FitNets hints, plus helpers shared by the feature terms.

Romero et al. (2015), "FitNets: Hints for Thin Deep Nets", ICLR 2015, arXiv:1412.6550. The output
of a student layer (the *guided* layer) is mapped by a trainable regressor ``r`` to the shape of a
teacher layer's output (the *hint*), and the term is their mean squared error. With several layer
pairs (``layers``, one regressor per pair) the term is the mean over the pairs::

    fitnet   = (1 / P) * sum_{p=1..P} mse_p
    mse_p    = mean over all elements of ( pool(r_p(f_s)) - pool(f_t) )^2
             = (1 / (N * C_t * H * W)) * sum_{n,c,h,w} ( ... )^2        (4-D maps)
             = (1 / (N * D_t)) * sum_{n,d} ( r_p(f_s)[n,d] - f_t[n,d] )^2  (2-D features)

Note the reduction is the mean over *every* element (``F.mse_loss``), not the sum per sample that the
paper writes with a 1/2 factor; pick the schedule weight accordingly. The paper uses one hint (one
pair); with several pairs the mean keeps a weight's meaning when pairs are added.

Regressors (``regressor`` param, the same kind for every pair), built in :meth:`FitNetLoss.build`
from the shapes of the dry run and trained with the student:

* ``conv1x1`` (default): ``Conv2d(C_s, C_t, 1)`` for feature maps (N, C, H, W).
* ``conv3x3``: ``Conv2d(C_s, C_t, 3, padding=1)``, which keeps the spatial size.
* ``linear``: for feature maps, a linear map of the channels at every position, i.e. the same
  ``Conv2d(C_s, C_t, 1)`` as ``conv1x1``.
* ``none``: no regressor; the student's channels must equal the teacher's.

For vectors (N, D) every regressor other than ``none`` is ``Linear(D_s, D_t)``. The regressors are
plain (with bias, PyTorch's default initialisation, no BatchNorm or ReLU after them). This differs
from both reference codes: RepDistiller's and mdistiller's ``ConvReg`` is a conv followed by
BatchNorm and ReLU (a strided conv when the student's map is twice the teacher's size, a transposed
one for the reverse). A plain conv is a legitimate hint regressor (the FitNets paper uses a conv
layer), but results with the same weight can differ from those codes'.

Spatial sizes: when the student's and teacher's maps differ in height or width, both are brought to
``(min(H_s, H_t), min(W_s, W_t))`` by adaptive average pooling, so the larger map is pooled down to
the smaller one (the regressor runs first, at the student's own resolution). This is done for every
regressor, ``none`` included. Outputs of different ranks (a map and a vector), ranks other than 2
and 4, or different batch sizes are a :class:`kdframe.errors.LayerError` naming both layers and
their shapes. Outputs of other ranks (e.g. token sequences) work with ``regressor: none`` only when
their shapes are equal.

Batch size 1 works like any other. Gradients reach the student and the regressors; the teacher's
features are detached. The term learns from the stage's first teacher.

The helpers below (layer pairs, 4-D checks, spatial matching) are shared with the other feature
terms of this plugin (``at``, ``nst``, ``vid``, ``ofd``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdframe import BuildContext, ComponentError, LayerPair, LossSpec, LossTerm, Params, StepOutputs
from kdframe_losses._common import (
    compute_dtype,
    require_teacher,
    shape_text,
)
from kdframe_losses._pairs import (
    EXAMPLE_LAYERS,
    describe_pairs,
    layer_paths,
    layers_field,
    match_spatial,
    pair_error,
    pair_features,
    pair_shapes,
)

# -- fitnet -------------------------------------------------------------------------------------------

Regressor = Literal["conv1x1", "conv3x3", "linear", "none"]


class FitNetParams(Params):
    """Params of ``fitnet``."""

    layers: list[LayerPair] = layers_field(
        "Each student layer (the guided layer) is regressed onto its teacher layer (the hint); "
        "both give feature maps (N, C, H, W) or vectors (N, D)."
    )
    regressor: Regressor = Field(
        "conv1x1",
        description=(
            "Adapter from student to teacher channels, one per pair: 'conv1x1' (default), 'conv3x3' "
            "(padding 1), 'linear' (same as conv1x1 on feature maps), or 'none' (channels must "
            "match). On (N, D) vectors every choice but 'none' is a Linear layer."
        ),
    )


class FitNetLoss(LossTerm):
    """Mean squared error between regressed student features and the teacher's hints, averaged over pairs."""

    needs_teacher = True

    def __init__(self, params: FitNetParams) -> None:
        super().__init__()
        self.pairs: list[LayerPair] = list(params.layers)
        self.regressor_kind: str = params.regressor
        self.student_layers, self.teacher_layers = layer_paths(self.pairs)
        # One adapter per pair, created by build() (identities for regressor "none").
        self.regressors = nn.ModuleList([nn.Identity() for _ in self.pairs])
        self.built = False

    # -- checks ---------------------------------------------------------------------------------

    def _check(self, pair: LayerPair, student: tuple[int, ...], teacher: tuple[int, ...]) -> None:
        """Raise a LayerError when the two outputs cannot be compared with this regressor."""
        if len(student) != len(teacher):
            raise pair_error(
                "fitnet",
                pair,
                student,
                teacher,
                f"their ranks differ ({len(student)}-D vs {len(teacher)}-D). Choose two layers whose "
                "outputs are both feature maps (N, C, H, W) or both vectors (N, D).",
            )
        if len(student) < 2:
            raise pair_error(
                "fitnet", pair, student, teacher, "outputs need a batch dimension and at least one feature dimension."
            )
        if student[0] != teacher[0]:
            raise pair_error("fitnet", pair, student, teacher, "their batch sizes differ.")
        if self.regressor_kind == "none":
            if len(student) == 4:
                if student[1] != teacher[1]:
                    raise pair_error(
                        "fitnet",
                        pair,
                        student,
                        teacher,
                        f"regressor 'none' needs equal channels ({student[1]} vs {teacher[1]}); "
                        "use regressor 'conv1x1'.",
                    )
            elif student[1:] != teacher[1:]:
                raise pair_error(
                    "fitnet", pair, student, teacher, "regressor 'none' needs equal shapes; use regressor 'linear'."
                )
        elif len(student) not in (2, 4):
            raise pair_error(
                "fitnet",
                pair,
                student,
                teacher,
                f"regressor '{self.regressor_kind}' works on feature maps (N, C, H, W) or vectors "
                "(N, D) only; use regressor 'none' for other outputs of equal shape.",
            )

    # -- the LossTerm interface -----------------------------------------------------------------

    def build(self, context: BuildContext) -> None:
        """Create one regressor per pair, from the guided layer's channels to the hint's channels."""
        regressors: list[nn.Module] = []
        for pair in self.pairs:
            student, teacher = pair_shapes(context, pair, "fitnet")
            self._check(pair, student, teacher)
            kind = self.regressor_kind
            if kind == "none":
                regressors.append(nn.Identity())
            elif len(student) == 2:
                regressors.append(nn.Linear(student[1], teacher[1]))
            elif kind == "conv3x3":
                regressors.append(nn.Conv2d(student[1], teacher[1], kernel_size=3, padding=1))
            else:  # conv1x1 and linear: a linear map of the channels at every position
                regressors.append(nn.Conv2d(student[1], teacher[1], kernel_size=1))
        self.regressors = nn.ModuleList(regressors)
        self.built = True

    def _pair_loss(self, pair: LayerPair, regressor: nn.Module, outputs: StepOutputs) -> Tensor:
        student, teacher = pair_features(outputs, pair, "fitnet")
        self._check(pair, tuple(student.shape), tuple(teacher.shape))
        expected = getattr(regressor, "in_channels", getattr(regressor, "in_features", student.shape[1]))
        if student.shape[1] != expected:
            raise pair_error(
                "fitnet",
                pair,
                tuple(student.shape),
                tuple(teacher.shape),
                f"the regressor was built for {expected} student channels, not {student.shape[1]}.",
            )
        regressed = regressor(student)
        if regressed.dim() == 4:
            regressed, teacher = match_spatial(regressed, teacher)
        if regressed.shape != teacher.shape:
            raise pair_error(
                "fitnet",
                pair,
                tuple(student.shape),
                tuple(teacher.shape),
                f"the regressor built for other shapes gives {shape_text(regressed.shape)}.",
            )
        dtype = compute_dtype(regressed, teacher)
        return F.mse_loss(regressed.to(dtype), teacher.to(dtype))

    def forward(self, outputs: StepOutputs) -> Tensor:
        require_teacher(outputs.teachers, "fitnet")
        if not self.built and self.regressor_kind != "none":
            raise ComponentError(
                f"fitnet with regressor '{self.regressor_kind}' was called before build(): the core "
                "must call build(context) after the dry run and before training, so that the "
                "regressors exist and are optimised with the student."
            )
        losses = [self._pair_loss(pair, reg, outputs) for pair, reg in zip(self.pairs, self.regressors)]
        return torch.stack(losses).mean()

    def extra_repr(self) -> str:
        return f"layers=[{describe_pairs(self.pairs)}], regressor={self.regressor_kind!r}"


def make_fitnet(params: FitNetParams) -> FitNetLoss:
    """Factory of ``fitnet``."""
    return FitNetLoss(params)


FITNET = LossSpec(
    name="fitnet",
    summary="FitNets hints (Romero et al. 2015): MSE between regressed student layers and teacher layers.",
    factory=make_fitnet,
    params=FitNetParams,
    family="feature",
    reference='Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", ICLR 2015, arXiv:1412.6550',
    example={"layers": EXAMPLE_LAYERS, "regressor": "conv1x1"},
    layers=(
        "feature maps (N, C, H, W) or vectors (N, D), the same rank in each pair; channels and "
        "spatial sizes may differ"
    ),
    weight=100.0,
    label_weight=1.0,
    weight_source=(
        "RepDistiller's FitNets runs (-b 100, hint on one layer pair, MSE mean). RepDistiller and "
        "mdistiller regress with a ConvReg (conv + BatchNorm + ReLU, strided for a 2x size); kdframe's "
        "conv1x1 regressor is a plain conv, so the same weight is a close, not an exact, match."
    ),
)
SPECS = [FITNET]
