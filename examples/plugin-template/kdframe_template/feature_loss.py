"""``pooled_hint``: a hint on pooled features through a learned adapter, FitNets-style.

FitNets (Romero, Ballas, Kahou, Chassang, Gatta and Bengio, ICLR 2015, arXiv:1412.6550) regress a
student layer onto a teacher layer through a learned regressor. This template term does that on
*pooled* features, so that it works whatever the layers' spatial sizes: each tapped output is
reduced to one vector per sample (``(N, C, H, W)`` maps are averaged over ``H`` and ``W``, ``(N, D)``
vectors are used as they are), a learned ``Linear`` adapter maps the student's ``C_s`` channels to
the teacher's ``C_t``, and the term is the mean squared error::

    pooled_hint = (1/P) * sum_pairs mean_{n, c} (A(pool(s))[n, c] - pool(t)[n, c])^2

over the ``P`` layer pairs. The adapter is created in :meth:`PooledHint.build` from the shapes of the
dry run and trained with the student; teacher features are detached. It shows what a feature-loss
author needs: ``student_layers`` / ``teacher_layers`` from ``LayerPair`` params, shapes and modules
from the ``BuildContext``, a ``LayerError`` for shapes the term cannot use, and the tapped outputs in
``outputs.student.features`` / ``outputs.teacher.features``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from kdframe import BuildContext, LayerError, LayerPair, LossSpec, LossTerm, Params, StepOutputs


class PooledHintParams(Params):
    """Params of ``pooled_hint``."""

    layers: list[LayerPair] = Field(
        min_length=1,
        description="Pairs of layers, each {'student': path, 'teacher': path} with module paths from "
        "named_modules(); each gives feature maps (N, C, H, W) or vectors (N, D). The teacher path names "
        "a layer of the stage's first teacher.",
    )
    bias: bool = Field(True, description="Give each adapter (a Linear layer) a bias.")


def pool(features: Tensor) -> Tensor:
    """One vector per sample: ``(N, C, H, W)`` averaged over space, ``(N, D)`` as it is."""
    if features.dim() == 4:
        return features.mean(dim=(2, 3))
    if features.dim() == 2:
        return features
    raise LayerError(f"pooled_hint takes feature maps (N, C, H, W) or vectors (N, D), not a tensor of shape {tuple(features.shape)}")


def _channels(shape: torch.Size, side: str, path: str) -> int:
    if len(shape) not in (2, 4):
        raise LayerError(
            f"pooled_hint: the {side} layer '{path}' gives outputs of shape {tuple(shape)}; it takes feature "
            "maps (N, C, H, W) or vectors (N, D). Pick another layer."
        )
    return int(shape[1])


class PooledHint(LossTerm):
    """MSE between adapted pooled student features and pooled teacher features (see the module)."""

    needs_teacher = True

    def __init__(self, params: PooledHintParams) -> None:
        super().__init__()
        self.pairs = [(pair.student, pair.teacher) for pair in params.layers]
        self.bias = params.bias
        self.student_layers = [student for student, _ in self.pairs]
        self.teacher_layers = [teacher for _, teacher in self.pairs]
        self.adapters = nn.ModuleList()

    def build(self, context: BuildContext) -> None:
        """One ``Linear(C_s, C_t)`` adapter per pair, from the dry run's shapes."""
        self.adapters = nn.ModuleList(
            nn.Linear(
                _channels(context.student_shapes[student], "student", student),
                _channels(context.teacher_shapes[teacher], "teacher", teacher),
                bias=self.bias,
            )
            for student, teacher in self.pairs
        )

    def forward(self, outputs: StepOutputs) -> Tensor:
        values = []
        for adapter, (student, teacher) in zip(self.adapters, self.pairs):
            student_vector = adapter(pool(outputs.student.features[student]).float())
            teacher_vector = pool(outputs.teacher.features[teacher]).detach().float()
            values.append(nn.functional.mse_loss(student_vector, teacher_vector))
        return torch.stack(values).mean()


SPEC = LossSpec(
    name="pooled_hint",
    summary="FitNets-style hint on pooled features: MSE through a learned Linear adapter (template).",
    factory=PooledHint,
    params=PooledHintParams,
    family="feature",
    reference="Romero et al. 2015, FitNets: Hints for Thin Deep Nets, ICLR 2015, arXiv:1412.6550 (pooled variant)",
    example={"layers": [{"student": "student.layer", "teacher": "teacher.layer"}]},
    layers="feature maps (N, C, H, W) or vectors (N, D), any sizes",
    weight=1.0,
    label_weight=1.0,
    weight_source="Template default: 1.0 next to cross_entropy at 1.0 (FitNets' own hint weight depends on the layer scale).",
)
