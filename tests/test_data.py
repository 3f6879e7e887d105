"""Datasets, in memory and streaming: validation, subsets, batching order and counts, sharding."""

from __future__ import annotations

import pytest
import torch

from kdframe import teacher_cache
from kdframe.data import (
    InMemoryDataset,
    StreamingDataset,
    batches_per_epoch,
    eval_batches,
    iterate_batches,
    train_batches,
)
from kdframe.distributed import DistEnv
from kdframe.errors import TrainingError


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


# --- the streaming (DataLoader) path ---------------------------------------------------------


class Pairs(torch.utils.data.Dataset):
    """A map-style split over tensors: item ``i`` is ``(images[i], int(labels[i]))``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def streaming(data: InMemoryDataset, transform=None) -> StreamingDataset:
    """The same data as a :class:`StreamingDataset`."""
    return StreamingDataset(
        name=data.name,
        train=Pairs(data.train_images, data.train_labels),
        test=Pairs(data.test_images, data.test_labels),
        classes=data.classes,
        in_channels=data.info.in_channels,
        image_size=data.info.image_size,
        transform=transform,
    )


def shifted(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A per-sample transform: add a random number."""
    return image + torch.rand((), generator=generator)


def collect(batches) -> list[tuple[list[float], list[int], list[int]]]:
    return [(images[:, 0, 0, 0].tolist(), labels.tolist(), indices.tolist()) for images, labels, indices in batches]


CPU = torch.device("cpu")


def test_streaming_info_counts_and_checks() -> None:
    data = streaming(dataset(10, 4))
    assert data.info == dataset().info
    assert (data.train_count, data.test_count) == (10, 4)
    assert torch.equal(data.sample_images(3), dataset().train_images[:3])
    assert data.to(torch.device("cpu")) is data
    with pytest.raises(ValueError, match="map-style"):
        StreamingDataset("bad", [1, 2], object(), ["a"], 1, (2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be positive"):
        StreamingDataset("bad", [1], [1], ["a"], 0, (2, 2))  # type: ignore[arg-type]


@pytest.mark.parametrize("drop_last", [True, False])
def test_streaming_batches_equal_the_in_memory_ones(drop_last: bool) -> None:
    memory = dataset(10)
    stream = streaming(memory)
    for seed in (0, 5):
        want = collect(train_batches(memory, 4, generator=torch.Generator().manual_seed(seed), drop_last=drop_last, device=CPU))
        got = collect(train_batches(stream, 4, generator=torch.Generator().manual_seed(seed), drop_last=drop_last, device=CPU))
        assert got == want and len(got) == (2 if drop_last else 3)
    assert collect(eval_batches(stream, 3, device=CPU)) == collect(eval_batches(memory, 3, device=CPU))


def test_streaming_subset_picks_the_in_memory_samples() -> None:
    memory = dataset(20, 8)
    picked, stream = memory.subset(6, 3, seed=4), streaming(memory).subset(6, 3, seed=4)
    assert (stream.train_count, stream.test_count) == (6, 3)
    assert torch.equal(torch.stack([stream.train[i][0] for i in range(6)]), picked.train_images)
    assert [stream.train[i][1] for i in range(6)] == picked.train_labels.tolist()
    assert streaming(memory).subset(None, None, seed=4).train_count == 20


def test_streaming_transform_is_seeded_per_sample_and_epoch() -> None:
    stream = streaming(dataset(10), transform=shifted)
    first = collect(train_batches(stream, 4, generator=torch.Generator().manual_seed(1), drop_last=True, device=CPU))
    again = collect(train_batches(stream, 4, generator=torch.Generator().manual_seed(1), drop_last=True, device=CPU))
    other = collect(train_batches(stream, 4, generator=torch.Generator().manual_seed(2), drop_last=True, device=CPU))
    assert first == again and first != other
    for values, _, indices in first:
        shifts = [value - index for value, index in zip(values, indices)]  # sample i's pixels are all i
        assert all(0.0 <= shift < 1.0 for shift in shifts) and len(set(shifts)) == len(shifts)
    # The plain shuffle (without a transform) is unchanged by the transform's seeds.
    plain = collect(train_batches(streaming(dataset(10)), 4, generator=torch.Generator().manual_seed(1), drop_last=True, device=CPU))
    assert [indices for _, _, indices in first] == [indices for _, _, indices in plain]


@pytest.mark.parametrize("world_size", [2, 4])
def test_streaming_shards_like_the_in_memory_path(world_size: int) -> None:
    memory = dataset(16, 6)
    stream = streaming(memory)
    for rank in range(world_size):
        env = DistEnv(rank=rank, world_size=world_size)
        kwargs = {"drop_last": True, "device": CPU, "dist": env}
        want = collect(train_batches(memory, 8, generator=torch.Generator().manual_seed(0), **kwargs))
        got = collect(train_batches(stream, 8, generator=torch.Generator().manual_seed(0), **kwargs))
        assert got == want and all(len(indices) == 8 // world_size for _, _, indices in got)
        assert collect(eval_batches(stream, 4, device=CPU, dist=env)) == collect(eval_batches(memory, 4, device=CPU, dist=env))
    with pytest.raises(TrainingError, match="multiple of 4"):
        list(train_batches(stream, 6, generator=torch.Generator().manual_seed(0), drop_last=True, device=CPU, dist=DistEnv(0, 4)))


def test_teacher_cache_refuses_a_streaming_dataset() -> None:
    assert "streaming (DataLoader)" in (teacher_cache.invalid_reason(streaming(dataset())) or "")
    assert teacher_cache.invalid_reason(dataset()) is None
