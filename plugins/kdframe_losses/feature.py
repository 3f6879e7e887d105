"""``fitnet``: feature-based distillation with a FitNets hint.

Romero et al. (2015), "FitNets: Hints for Thin Deep Nets", ICLR 2015, arXiv:1412.6550. The output
of a student layer (the *guided* layer) is mapped by a trainable regressor ``r`` to the shape of a
teacher layer's output (the *hint*), and the term is their mean squared error::

    fitnet = mean over all elements of ( pool(r(f_s)) - pool(f_t) )^2
           = (1 / (N * C_t * H * W)) * sum_{n,c,h,w} ( ... )^2        (4-D maps)
           = (1 / (N * D_t)) * sum_{n,d} ( r(f_s)[n,d] - f_t[n,d] )^2  (2-D features)

Note the reduction is the mean over *every* element (``F.mse_loss``), not the sum per sample that the
paper writes with a 1/2 factor; pick the schedule weight accordingly.

Regressors (``regressor`` param), built in :meth:`FitNetLoss.build` from the shapes of the dry run
and trained with the student:

* ``conv1x1`` (default): ``Conv2d(C_s, C_t, 1)`` for feature maps (N, C, H, W).
* ``conv3x3``: ``Conv2d(C_s, C_t, 3, padding=1)``, which keeps the spatial size.
* ``linear``: for feature maps, a linear map of the channels at every position, i.e. the same
  ``Conv2d(C_s, C_t, 1)`` as ``conv1x1``.
* ``none``: no regressor; the student's channels must equal the teacher's.

For vectors (N, D) every regressor other than ``none`` is ``Linear(D_s, D_t)``. The regressors are
plain (with bias, PyTorch's default initialisation, no BatchNorm or ReLU after them).

Spatial sizes: when the student's and teacher's maps differ in height or width, both are brought to
``(min(H_s, H_t), min(W_s, W_t))`` by adaptive average pooling, so the larger map is pooled down to
the smaller one (the regressor runs first, at the student's own resolution). This is done for every
regressor, ``none`` included. Outputs of different ranks (a map and a vector), ranks other than 2
and 4, or different batch sizes are a :class:`kdframe.errors.LayerError` naming both layers and
their shapes. Outputs of other ranks (e.g. token sequences) work with ``regressor: none`` only when
their shapes are equal.

Batch size 1 works like any other. Gradients reach the student and the regressor; the teacher's
features are detached. The term learns from the stage's first teacher.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdframe import ComponentError, LayerError, LossSpec, LossTerm, Params, StepOutputs
from kdframe_losses._common import (
    compute_dtype,
    layer_output,
    layer_shape,
    require_teacher,
    shape_text,
)

Regressor = Literal["conv1x1", "conv3x3", "linear", "none"]


class FitNetParams(Params):
    """Params of ``fitnet``."""

    student_layer: str = Field(
        min_length=1,
        description=(
            "Module path of the student's guided layer (a name from named_modules(), e.g. "
            "'features.3'); its output is regressed onto the hint."
        ),
    )
    teacher_layer: str = Field(
        min_length=1,
        description=(
            "Module path of the hint layer in the stage's first teacher (e.g. 'features.6'); its "
            "output is the target."
        ),
    )
    regressor: Regressor = Field(
        "conv1x1",
        description=(
            "Adapter from student to teacher channels: 'conv1x1' (default), 'conv3x3' (padding 1), "
            "'linear' (same as conv1x1 on feature maps), or 'none' (channels must match). On (N, D) "
            "vectors every choice but 'none' is a Linear layer."
        ),
    )


def _spatial_target(student: tuple[int, ...], teacher: tuple[int, ...]) -> tuple[int, int]:
    return (min(student[-2], teacher[-2]), min(student[-1], teacher[-1]))


def _pool_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.adaptive_avg_pool2d(x, size)


class FitNetLoss(LossTerm):
    """Mean squared error between the regressed student feature and the teacher's hint."""

    needs_teacher = True

    def __init__(self, params: FitNetParams) -> None:
        super().__init__()
        self.student_layer = params.student_layer
        self.teacher_layer = params.teacher_layer
        self.regressor_kind: str = params.regressor
        self.student_layers = (params.student_layer,)
        self.teacher_layers = (params.teacher_layer,)
        # The adapter; created by build() unless regressor is "none".
        self.regressor: nn.Module = nn.Identity()
        self.built = False

    # -- checks ---------------------------------------------------------------------------------

    def _incompatible(self, student: tuple[int, ...], teacher: tuple[int, ...], why: str) -> LayerError:
        return LayerError(
            f"fitnet cannot compare student layer '{self.student_layer}' (output shape "
            f"{shape_text(student)}) with teacher layer '{self.teacher_layer}' (output shape "
            f"{shape_text(teacher)}): {why}"
        )

    def _check(self, student: tuple[int, ...], teacher: tuple[int, ...]) -> None:
        """Raise a LayerError when the two outputs cannot be compared with this regressor."""
        if len(student) != len(teacher):
            raise self._incompatible(
                student,
                teacher,
                f"their ranks differ ({len(student)}-D vs {len(teacher)}-D). Choose two layers whose "
                "outputs are both feature maps (N, C, H, W) or both vectors (N, D).",
            )
        if len(student) < 2:
            raise self._incompatible(
                student, teacher, "outputs need a batch dimension and at least one feature dimension."
            )
        if student[0] != teacher[0]:
            raise self._incompatible(student, teacher, "their batch sizes differ.")
        if self.regressor_kind == "none":
            if len(student) == 4:
                if student[1] != teacher[1]:
                    raise self._incompatible(
                        student,
                        teacher,
                        f"regressor 'none' needs equal channels ({student[1]} vs {teacher[1]}); "
                        "use regressor 'conv1x1'.",
                    )
            elif student[1:] != teacher[1:]:
                raise self._incompatible(
                    student, teacher, "regressor 'none' needs equal shapes; use regressor 'linear'."
                )
        elif len(student) not in (2, 4):
            raise self._incompatible(
                student,
                teacher,
                f"regressor '{self.regressor_kind}' works on feature maps (N, C, H, W) or vectors "
                "(N, D) only; use regressor 'none' for other outputs of equal shape.",
            )

    # -- the LossTerm interface -----------------------------------------------------------------

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """Create the regressor from the guided layer's channels to the hint's channels."""
        student = tuple(layer_shape(student_shapes, self.student_layer, "student", "fitnet"))
        teacher = tuple(layer_shape(teacher_shapes, self.teacher_layer, "teacher", "fitnet"))
        self._check(student, teacher)
        kind = self.regressor_kind
        if kind == "none":
            self.regressor = nn.Identity()
        elif len(student) == 2:
            self.regressor = nn.Linear(student[1], teacher[1])
        elif kind == "conv3x3":
            self.regressor = nn.Conv2d(student[1], teacher[1], kernel_size=3, padding=1)
        else:  # conv1x1 and linear: a linear map of the channels at every position
            self.regressor = nn.Conv2d(student[1], teacher[1], kernel_size=1)
        self.built = True

    def forward(self, outputs: StepOutputs) -> Tensor:
        require_teacher(outputs.teachers, "fitnet")
        student = layer_output(outputs.student, self.student_layer, "student", "fitnet")
        teacher = layer_output(outputs.teacher, self.teacher_layer, "teacher", "fitnet").detach()
        if not self.built and self.regressor_kind != "none":
            raise ComponentError(
                f"fitnet with regressor '{self.regressor_kind}' was called before build(): the core "
                "must call build(student_shapes, teacher_shapes) after the dry run and before training, "
                "so that the regressor exists and is optimised with the student."
            )
        self._check(tuple(student.shape), tuple(teacher.shape))
        regressed = self.regressor(student)
        if regressed.dim() == 4:
            size = _spatial_target(tuple(regressed.shape), tuple(teacher.shape))
            regressed = _pool_to(regressed, size)
            teacher = _pool_to(teacher, size)
        if regressed.shape != teacher.shape:
            raise self._incompatible(
                tuple(student.shape),
                tuple(teacher.shape),
                f"the regressor built for other shapes gives {shape_text(regressed.shape)}.",
            )
        dtype = compute_dtype(regressed, teacher)
        return F.mse_loss(regressed.to(dtype), teacher.to(dtype))

    def extra_repr(self) -> str:
        return (
            f"student_layer={self.student_layer!r}, teacher_layer={self.teacher_layer!r}, "
            f"regressor={self.regressor_kind!r}"
        )


def make_fitnet(params: FitNetParams) -> FitNetLoss:
    """Factory of ``fitnet``."""
    return FitNetLoss(params)


FITNET = LossSpec(
    name="fitnet",
    summary="FitNets hint (Romero et al. 2015): MSE between a regressed student layer and a teacher layer.",
    factory=make_fitnet,
    params=FitNetParams,
    family="feature",
)
