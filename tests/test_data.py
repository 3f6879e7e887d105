"""In-memory datasets: validation, subsets, batching order and counts."""

from __future__ import annotations

import pytest
import torch

from kdframe.data import InMemoryDataset, batches_per_epoch, iterate_batches


def dataset(train: int = 10, test: int = 4) -> InMemoryDataset:
    return InMemoryDataset(
        name="toy",
        train_images=torch.arange(train, dtype=torch.float32).view(train, 1, 1, 1).expand(train, 1, 2, 2).clone(),
        train_labels=torch.arange(train) % 3,
        test_images=torch.zeros(test, 1, 2, 2),
        test_labels=torch.zeros(test, dtype=torch.long),
        classes=["a", "b", "c"],
    )


def test_info_and_shape_checks() -> None:
    info = dataset().info
    assert (info.num_classes, info.in_channels, info.image_size) == (3, 1, (2, 2))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        InMemoryDataset("bad", torch.zeros(3, 4), torch.zeros(3), torch.zeros(1, 1, 1, 1), torch.zeros(1), ["a"])
    with pytest.raises(ValueError, match="labels"):
        InMemoryDataset("bad", torch.zeros(3, 1, 1, 1), torch.zeros(2), torch.zeros(1, 1, 1, 1), torch.zeros(1), ["a"])


def test_subset_is_seeded_and_keeps_pairs() -> None:
    data = dataset(20)
    first, second = data.subset(5, None, seed=1), data.subset(5, None, seed=1)
    assert torch.equal(first.train_images, second.train_images)
    assert first.train_labels.tolist() == [int(v) % 3 for v in first.train_images[:, 0, 0, 0].tolist()]
    assert first.test_images.shape[0] == 4
    assert not torch.equal(data.subset(5, None, seed=2).train_images, first.train_images)


def test_batches_cover_every_sample_once_and_follow_the_generator() -> None:
    data = dataset(10)
    order = [
        int(v)
        for images, _, _ in iterate_batches(data.train_images, data.train_labels, 4, generator=torch.Generator().manual_seed(0))
        for v in images[:, 0, 0, 0]
    ]
    assert sorted(order) == list(range(10)) and order != list(range(10))
    again = [
        int(v)
        for images, _, _ in iterate_batches(data.train_images, data.train_labels, 4, generator=torch.Generator().manual_seed(0))
        for v in images[:, 0, 0, 0]
    ]
    assert again == order
    sizes = [len(labels) for _, labels, _ in iterate_batches(data.train_images, data.train_labels, 4, drop_last=True)]
    assert sizes == [4, 4] and batches_per_epoch(10, 4, True) == 2 and batches_per_epoch(10, 4, False) == 3


def test_indices_point_at_the_samples() -> None:
    data = dataset(10)
    generator = torch.Generator().manual_seed(3)
    for images, labels, index in iterate_batches(data.train_images, data.train_labels, 4, generator=generator):
        assert torch.equal(images, data.train_images[index]) and torch.equal(labels, data.train_labels[index])
