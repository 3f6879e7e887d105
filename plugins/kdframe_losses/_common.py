"""Small helpers shared by the loss terms of :mod:`kdframe_losses` (not part of its public surface)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdframe import ComponentError, LayerError, ModelOutputs


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a term computes in: the inputs' common floating dtype, at least ``float32``.

    Soft targets and distances lose too much in half precision, so ``float16``/``bfloat16`` inputs
    (mixed precision) are promoted; ``float64`` inputs stay ``float64``.
    """
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``KL(softmax(t/T) || softmax(s/T))``, summed over classes (dim 1) and averaged over the batch.

    This is the divergence of Hinton et al. (2015) *without* the ``T^2`` factor. The teacher's logits
    are detached, so no gradient ever reaches the teacher.
    """
    dtype = compute_dtype(student_logits, teacher_logits)
    log_p_student = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=1)
    # kl_div(input=log q, target=log p, log_target=True) = sum p * (log p - log q); "batchmean"
    # divides the sum over all elements by the batch size.
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def shape_text(shape: torch.Size | tuple[int, ...]) -> str:
    """A shape as ``(8, 16, 4, 4)``."""
    return "(" + ", ".join(str(int(size)) for size in shape) + ")"


def layer_shape(shapes: dict[str, torch.Size], layer: str, role: str, term: str) -> torch.Size:
    """The shape the core reported for ``layer``, or a :class:`LayerError` listing what it reported."""
    if layer not in shapes:
        seen = ", ".join(sorted(shapes)) or "none"
        raise LayerError(
            f"{term}: the {role} layer '{layer}' was not reported by the dry run (layers seen: {seen}). "
            f"Check the module path against the {role} model's named_modules()."
        )
    return torch.Size(shapes[layer])


def layer_output(model: ModelOutputs, layer: str | None, role: str, term: str) -> Tensor:
    """The output of ``layer`` (the logits when ``layer`` is ``None``), or a clear error."""
    if layer is None:
        return model.logits
    if layer not in model.features:
        seen = ", ".join(sorted(model.features)) or "none"
        raise LayerError(
            f"{term}: the {role} layer '{layer}' is missing from the step outputs (tapped layers: "
            f"{seen}). The core must tap every path in the term's {role}_layers."
        )
    return model.features[layer]


def require_teacher(outputs_teachers: list[ModelOutputs], term: str) -> None:
    """Raise a :class:`ComponentError` when a stage gives a teacher-based term no teacher."""
    if not outputs_teachers:
        raise ComponentError(
            f"{term} needs a teacher, but the stage has none. Use it only in distillation stages, or "
            "use cross_entropy for training from labels alone."
        )
