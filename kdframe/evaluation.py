"""Evaluating a model on a split: number correct and summed cross-entropy, accuracy and mean loss."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from kdframe import precision
from kdframe.data import iterate_batches


def evaluate_sums(
    model: nn.Module, images: Tensor, labels: Tensor, batch_size: int, channels_last: bool, precision_name: str = "fp32"
) -> tuple[int, float]:
    """Number of correct predictions and summed cross-entropy of ``model`` on a split (or a shard)."""
    return evaluate_batches(model, iterate_batches(images, labels, batch_size), channels_last, precision_name)


@torch.no_grad()
def evaluate_batches(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    channels_last: bool,
    precision_name: str = "fp32",
    on_batch: Callable[[int], None] | None = None,
) -> tuple[int, float]:
    """Number of correct predictions and summed cross-entropy of ``model`` over ``(images, labels,
    indices)`` batches (e.g. :func:`kdframe.data.eval_batches`); ``on_batch`` gets the number of
    images evaluated so far after every batch."""
    was_training = model.training
    model.eval()
    correct = 0
    loss_sum = 0.0
    done = 0
    for batch_images, batch_labels, _ in batches:
        with precision.autocast(precision_name, batch_images.device):  # type: ignore[arg-type]
            logits = model(precision.layout(batch_images, channels_last))
        logits = precision.to_float32(logits)
        loss_sum += float(nn.functional.cross_entropy(logits, batch_labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == batch_labels).sum())
        done += int(batch_labels.shape[0])
        if on_batch is not None:
            on_batch(done)
    model.train(was_training)
    return correct, loss_sum


def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int, channels_last: bool) -> tuple[float, float]:
    """Accuracy (percent) and mean cross-entropy of ``model`` on a split."""
    correct, loss_sum = evaluate_sums(model, images, labels, batch_size, channels_last)
    count = max(int(labels.shape[0]), 1)
    return 100.0 * correct / count, loss_sum / count
