"""Datasets held in memory as tensors, and the batching that feeds the trainer.

Dataset plugins return an :class:`InMemoryDataset`: normalised float images ``(N, C, H, W)`` and
int64 labels for the train and test splits, plus an optional batch augmentation that runs on tensors.
Small datasets (MNIST-like, CIFAR) fit easily and are batched by indexing, which is much faster than a
``DataLoader`` over single samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

#: ``augment(images, generator) -> images``: a random transformation of a whole training batch.
BatchAugment = Callable[[Tensor, torch.Generator], Tensor]


@dataclass(frozen=True)
class DataInfo:
    """What a model factory needs to know about the data."""

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]


@dataclass
class InMemoryDataset:
    """A dataset as tensors.

    Attributes:
        name: The dataset's name.
        train_images: Float tensor ``(N, C, H, W)``, already normalised.
        train_labels: Int64 tensor ``(N,)`` of class indices.
        test_images: Float tensor ``(M, C, H, W)``, normalised the same way.
        test_labels: Int64 tensor ``(M,)``.
        classes: Class names, index-aligned with the labels.
        augment: Optional random augmentation applied to each training batch (never to test data).
    """

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: list[str]
    augment: BatchAugment | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for split, images, labels in (
            ("train", self.train_images, self.train_labels),
            ("test", self.test_images, self.test_labels),
        ):
            if images.ndim != 4:
                raise ValueError(f"{self.name}: {split} images must be (N, C, H, W), got {tuple(images.shape)}")
            if images.shape[0] != labels.shape[0]:
                raise ValueError(f"{self.name}: {split} has {images.shape[0]} images but {labels.shape[0]} labels")

    @property
    def info(self) -> DataInfo:
        """Number of classes, channels and image size."""
        return DataInfo(
            name=self.name,
            num_classes=len(self.classes),
            in_channels=int(self.train_images.shape[1]),
            image_size=(int(self.train_images.shape[2]), int(self.train_images.shape[3])),
        )

    def subset(self, train_samples: int | None, test_samples: int | None, seed: int) -> InMemoryDataset:
        """A seeded random subset of each split (``None`` keeps a split whole)."""
        generator = torch.Generator().manual_seed(seed)

        def pick(images: Tensor, labels: Tensor, count: int | None) -> tuple[Tensor, Tensor]:
            if count is None or count >= images.shape[0]:
                return images, labels
            index = torch.randperm(images.shape[0], generator=generator)[:count]
            return images[index], labels[index]

        train_images, train_labels = pick(self.train_images, self.train_labels, train_samples)
        test_images, test_labels = pick(self.test_images, self.test_labels, test_samples)
        return replace(
            self,
            train_images=train_images,
            train_labels=train_labels,
            test_images=test_images,
            test_labels=test_labels,
        )

    def to(self, device: torch.device) -> InMemoryDataset:
        """The same dataset with its tensors on ``device``."""
        if self.train_images.device == device:
            return self
        return replace(
            self,
            train_images=self.train_images.to(device),
            train_labels=self.train_labels.to(device),
            test_images=self.test_images.to(device),
            test_labels=self.test_labels.to(device),
        )


def iterate_batches(
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(images, labels, indices)`` batches; shuffled when a generator is given.

    ``indices`` are the positions of the batch's samples in ``images``. The permutation is drawn on
    the CPU from ``generator`` so that the order depends only on its seed, whatever the device.
    """
    count = images.shape[0]
    if generator is not None:
        order = torch.randperm(count, generator=generator).to(images.device)
    else:
        order = torch.arange(count, device=images.device)
    stop = count - count % batch_size if drop_last and count >= batch_size else count
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        if generator is None:
            yield images[start : start + batch_size], labels[start : start + batch_size], index
        else:
            yield images.index_select(0, index), labels.index_select(0, index), index


def batches_per_epoch(count: int, batch_size: int, drop_last: bool) -> int:
    """Number of batches :func:`iterate_batches` yields."""
    if drop_last and count >= batch_size:
        return count // batch_size
    return -(-count // batch_size)
