"""Datasets, and the batching that feeds the trainer.

Dataset plugins return one of two kinds:

* :class:`InMemoryDataset`: normalised float images ``(N, C, H, W)`` and int64 labels for the train
  and test splits (and, optionally, a validation split), plus an optional batch augmentation that
  runs on tensors. Small datasets
  (MNIST-like, CIFAR) fit easily and are batched by indexing on the training device, which is much
  faster than a ``DataLoader`` over single samples.
* :class:`StreamingDataset`: map-style ``torch.utils.data.Dataset`` splits read sample by sample
  through a ``DataLoader`` (optionally in worker processes), for data that does not fit in memory.

:func:`train_batches` and :func:`eval_batches` give the trainer ``(images, labels, indices)``
batches from either kind, in the same order for the same generator.

**Splits.** ``train`` trains; ``val`` (when there is one: shipped by the dataset, or carved from the
training split by :func:`with_validation`) selects (the best epoch, the collapse check); ``test`` is
only reported. :data:`EvalSplit` names the two evaluated splits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torch.utils.data import Dataset as TorchDataset

from kdframe.distributed import DistEnv
from kdframe.errors import KdframeError

#: ``augment(images, generator) -> images``: a random transformation of a whole training batch.
BatchAugment = Callable[[Tensor, torch.Generator], Tensor]
#: ``transform(image, generator) -> image``: a random transformation of one ``(C, H, W)`` training
#: sample of a :class:`StreamingDataset` (run in the DataLoader's worker processes; must pickle).
SampleTransform = Callable[[Tensor, torch.Generator], Tensor]
#: A split that is evaluated: ``val`` selects, ``test`` is only reported.
EvalSplit = Literal["val", "test"]


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
        val_images: Optional validation images, normalised like the others (``None``: no
            validation split, unless the schedule carves one from the training split).
        val_labels: Their labels (given together with ``val_images``).
    """

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: list[str]
    augment: BatchAugment | None = field(default=None, repr=False)
    val_images: Tensor | None = field(default=None, repr=False)
    val_labels: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.val_images is None) != (self.val_labels is None):
            raise ValueError(f"{self.name}: give val_images and val_labels together, or neither")
        splits = [("train", self.train_images, self.train_labels), ("test", self.test_images, self.test_labels)]
        if self.val_images is not None and self.val_labels is not None:
            splits.append(("val", self.val_images, self.val_labels))
        for split, images, labels in splits:
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

    @property
    def train_count(self) -> int:
        """Number of training samples."""
        return int(self.train_labels.shape[0])

    @property
    def test_count(self) -> int:
        """Number of test samples."""
        return int(self.test_labels.shape[0])

    @property
    def val_count(self) -> int:
        """Number of validation samples (0: no validation split)."""
        return 0 if self.val_labels is None else int(self.val_labels.shape[0])

    def split(self, name: EvalSplit) -> tuple[Tensor, Tensor]:
        """Images and labels of the ``val`` or ``test`` split."""
        if name == "val":
            assert self.val_images is not None and self.val_labels is not None, "no validation split"
            return self.val_images, self.val_labels
        return self.test_images, self.test_labels

    def sample_images(self, count: int) -> Tensor:
        """The first ``count`` training images, ``(count, C, H, W)`` (for dry runs)."""
        return self.train_images[:count]

    def carve_validation(self, count: int, seed: int) -> InMemoryDataset:
        """Move a seeded random ``count`` of the training samples into the validation split."""
        order = torch.randperm(self.train_count, generator=torch.Generator().manual_seed(seed))
        held, kept = order[:count].sort().values, order[count:].sort().values
        return replace(
            self,
            train_images=self.train_images[kept],
            train_labels=self.train_labels[kept],
            val_images=self.train_images[held],
            val_labels=self.train_labels[held],
        )

    def subset_validation(self, count: int, seed: int) -> InMemoryDataset:
        """A seeded random ``count`` of the validation split (all of it when it is no larger)."""
        if self.val_images is None or self.val_labels is None or count >= self.val_count:
            return self
        index = torch.randperm(self.val_count, generator=torch.Generator().manual_seed(seed))[:count].sort().values
        return replace(self, val_images=self.val_images[index], val_labels=self.val_labels[index])

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
            val_images=None if self.val_images is None else self.val_images.to(device),
            val_labels=None if self.val_labels is None else self.val_labels.to(device),
        )


@dataclass
class StreamingDataset:
    """A dataset read sample by sample through a ``DataLoader``, for data that does not fit in memory.

    Attributes:
        name: The dataset's name.
        train: Map-style training split: ``train[i]`` is ``(image, label)``, ``image`` a normalised
            float tensor ``(C, H, W)`` and ``label`` an int class index; ``len(train)`` its size.
        test: The test split, in the same form.
        classes: Class names, index-aligned with the labels.
        in_channels: Channels of every image.
        image_size: ``(height, width)`` of every image.
        transform: Optional random transformation of one training sample (never of test data),
            ``transform(image, generator) -> image``. It runs where the sample is read (in a worker
            process when ``data.num_workers > 0``), so it must pickle; ``generator`` is seeded per
            sample and epoch, so the result does not depend on the number of workers.
        val: Optional validation split, in the same form as ``test`` (``None``: none, unless the
            schedule carves one from the training split).
    """

    name: str
    train: TorchDataset[Any]
    test: TorchDataset[Any]
    classes: list[str]
    in_channels: int
    image_size: tuple[int, int]
    transform: SampleTransform | None = field(default=None, repr=False)
    val: TorchDataset[Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        splits = [("train", self.train), ("test", self.test)] + ([("val", self.val)] if self.val is not None else [])
        for split, part in splits:
            if not hasattr(part, "__len__") or not hasattr(part, "__getitem__"):
                raise ValueError(f"{self.name}: the {split} split must be a map-style dataset (__len__ and __getitem__)")
        if self.in_channels < 1 or min(self.image_size) < 1:
            raise ValueError(f"{self.name}: channels {self.in_channels} and image size {self.image_size} must be positive")

    @property
    def info(self) -> DataInfo:
        """Number of classes, channels and image size."""
        return DataInfo(self.name, len(self.classes), self.in_channels, (int(self.image_size[0]), int(self.image_size[1])))

    @property
    def train_count(self) -> int:
        """Number of training samples."""
        return len(self.train)  # type: ignore[arg-type]

    @property
    def test_count(self) -> int:
        """Number of test samples."""
        return len(self.test)  # type: ignore[arg-type]

    @property
    def val_count(self) -> int:
        """Number of validation samples (0: no validation split)."""
        return 0 if self.val is None else len(self.val)  # type: ignore[arg-type]

    def split(self, name: EvalSplit) -> TorchDataset[Any]:
        """The ``val`` or ``test`` split."""
        if name == "val":
            assert self.val is not None, "no validation split"
            return self.val
        return self.test

    def sample_images(self, count: int) -> Tensor:
        """The first ``count`` training images, untransformed, ``(count, C, H, W)`` (for dry runs)."""
        return torch.stack([self.train[index][0] for index in range(min(count, self.train_count))])

    def carve_validation(self, count: int, seed: int) -> StreamingDataset:
        """Move a seeded random ``count`` of the training samples into the validation split (the same
        samples :meth:`InMemoryDataset.carve_validation` picks from a split of the same size); they
        are read without the training transform."""
        order = torch.randperm(self.train_count, generator=torch.Generator().manual_seed(seed))
        held, kept = order[:count].sort().values.tolist(), order[count:].sort().values.tolist()
        return replace(self, train=Subset(self.train, kept), val=Subset(self.train, held))

    def subset_validation(self, count: int, seed: int) -> StreamingDataset:
        """A seeded random ``count`` of the validation split (all of it when it is no larger)."""
        if self.val is None or count >= self.val_count:
            return self
        index = torch.randperm(self.val_count, generator=torch.Generator().manual_seed(seed))[:count].sort().values
        return replace(self, val=Subset(self.val, index.tolist()))

    def subset(self, train_samples: int | None, test_samples: int | None, seed: int) -> StreamingDataset:
        """A seeded random subset of each split (``None`` keeps a split whole); the same samples as
        :meth:`InMemoryDataset.subset` picks from splits of the same sizes."""
        generator = torch.Generator().manual_seed(seed)

        def pick(split: TorchDataset[Any], count: int | None) -> TorchDataset[Any]:
            size = len(split)  # type: ignore[arg-type]
            if count is None or count >= size:
                return split
            return Subset(split, torch.randperm(size, generator=generator)[:count].tolist())

        return replace(self, train=pick(self.train, train_samples), test=pick(self.test, test_samples))

    def to(self, device: torch.device) -> StreamingDataset:
        """Itself: a streaming dataset's batches move to the device one at a time."""
        return self


#: Either kind of dataset a dataset plugin may return.
AnyDataset: TypeAlias = InMemoryDataset | StreamingDataset


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


class _Keyed(TorchDataset[tuple[Tensor, int, int]]):
    """A split read by ``(index, seed)`` keys: item ``(image, label, index)``, the image transformed
    with a generator seeded with ``seed`` when there is a transform."""

    def __init__(self, split: TorchDataset[Any], transform: SampleTransform | None) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int, int]:
        index, seed = key
        image, label = self.split[index]
        if self.transform is not None:
            image = self.transform(image, torch.Generator().manual_seed(seed))
        return image, int(label), index


def _load_batches(
    split: TorchDataset[Any],
    transform: SampleTransform | None,
    batches: Sequence[list[tuple[int, int]]],
    device: torch.device,
    num_workers: int,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Read the given batches of ``(index, seed)`` keys through a DataLoader; move each to ``device``."""
    pin = device.type == "cuda"
    loader = DataLoader(
        _Keyed(split, transform),
        batch_sampler=batches,
        num_workers=num_workers,
        pin_memory=pin,
        # Its own generator, so that starting the workers does not draw from torch's global one.
        generator=torch.Generator().manual_seed(0),
    )
    try:
        for images, labels, indices in loader:
            yield (
                images.to(device, non_blocking=pin),
                labels.to(device, non_blocking=pin),
                indices.to(device, non_blocking=pin),
            )
    except KdframeError as error:
        # A DataLoader worker's exception is re-raised here with the worker's whole traceback as its
        # message; the user needs only the original message (--debug still shows where).
        original = original_message(error)
        if original is None:
            raise
        raise type(error)(original) from error


def original_message(error: BaseException) -> str | None:
    """The message of the exception a DataLoader worker raised, from the error the DataLoader
    re-raised in this process (whose message is "Caught X in DataLoader worker process N. Original
    Traceback ... X: message"); ``None`` when ``error`` did not come from a worker."""
    text = str(error)
    if not text.startswith(f"Caught {type(error).__name__} in DataLoader worker"):
        return None
    marker = f"{type(error).__module__}.{type(error).__qualname__}: "
    position = text.rfind(marker)
    return text[position + len(marker):].strip() if position >= 0 else None


def _in_memory_train(
    data: InMemoryDataset, batch_size: int, generator: torch.Generator, drop_last: bool, dist: DistEnv
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    for images, labels, indices in iterate_batches(
        data.train_images, data.train_labels, batch_size, generator=generator, drop_last=drop_last
    ):
        if data.augment is not None:
            images = data.augment(images, generator)
        # Each process takes its share after the augmentation, so every sample is augmented as in a
        # single-process run.
        yield dist.shard_batch(images, labels, indices)  # type: ignore[misc]


def _streaming_train(
    data: StreamingDataset,
    batch_size: int,
    generator: torch.Generator,
    drop_last: bool,
    device: torch.device,
    dist: DistEnv,
    num_workers: int,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    count = data.train_count
    # The whole epoch's order (and per-sample transform seeds) is drawn up front: the workers read
    # ahead, and later draws from ``generator`` (teacher dropout) must not depend on how far.
    order = torch.randperm(count, generator=generator)
    if data.transform is not None:
        seeds = torch.randint(0, 2**62, (count,), generator=generator)
    else:
        seeds = torch.zeros(count, dtype=torch.int64)
    stop = count - count % batch_size if drop_last and count >= batch_size else count
    batches = []
    for start in range(0, stop, batch_size):
        # The same share of the global batch that DistEnv.shard_batch takes from an in-memory batch.
        index, seed = dist.shard_batch(order[start : start + batch_size], seeds[start : start + batch_size])
        batches.append(list(zip(index.tolist(), seed.tolist())))
    yield from _load_batches(data.train, data.transform, batches, device, num_workers)


def train_batches(
    data: AnyDataset,
    batch_size: int,
    *,
    generator: torch.Generator,
    drop_last: bool,
    device: torch.device,
    dist: DistEnv | None = None,
    num_workers: int = 0,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """This process's share of every shuffled training batch of an epoch, ``(images, labels, indices)``.

    Both kinds of dataset visit the samples in the order ``torch.randperm(count, generator=generator)``,
    batch for batch, with the last incomplete batch dropped when ``drop_last``; ``indices`` are the
    samples' positions in the training split. An :class:`InMemoryDataset`'s batches are taken on the
    device its tensors are on and augmented as a batch; a :class:`StreamingDataset`'s are read through a
    ``DataLoader`` with ``num_workers`` worker processes (pinned memory on CUDA) and moved to
    ``device``. With several processes (``dist``, default one) each gets its contiguous share of every global batch.
    """
    dist = dist or DistEnv()
    if isinstance(data, InMemoryDataset):
        return _in_memory_train(data, batch_size, generator, drop_last, dist)
    return _streaming_train(data, batch_size, generator, drop_last, device, dist, num_workers)


def eval_batches(
    data: AnyDataset,
    batch_size: int,
    *,
    device: torch.device,
    dist: DistEnv | None = None,
    num_workers: int = 0,
    split: EvalSplit = "test",
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """The ``split`` (test, or val) in order, ``(images, labels, indices)`` batches (``indices``:
    positions in the split); with several processes (``dist``) this process's near-equal contiguous
    part of it."""
    dist = dist or DistEnv()
    if isinstance(data, InMemoryDataset):
        split_images, split_labels = data.split(split)
        everything = torch.arange(split_labels.shape[0], device=split_labels.device)
        images, labels, positions = dist.shard_split(split_images, split_labels, everything)
        return (
            (batch_images, batch_labels, positions.index_select(0, index))
            for batch_images, batch_labels, index in iterate_batches(images, labels, batch_size)
        )
    part = data.split(split)
    (positions,) = dist.shard_split(torch.arange(len(part)))  # type: ignore[arg-type]
    keys = [(index, 0) for index in positions.tolist()]
    batches = [keys[start : start + batch_size] for start in range(0, len(keys), batch_size)]
    return _load_batches(part, None, batches, device, num_workers)
