"""A seeded synthetic image dataset for tests, examples and smoke runs.

Each class has a random "prototype" image: a smooth spatial pattern (a coarse 4x4 random pattern
per channel, upsampled bilinearly and standardised to zero mean and unit variance) plus a per-channel
brightness (each channel spreads the classes evenly over [-1, 1], in a random order), so that both
models that look at positions (a linear model, a CNN with a flattening head) and models that pool over
space (global average pooling) can tell the classes apart. A sample is its class's prototype plus
Gaussian pixel noise of standard deviation ``noise``, scaled so that pixels have roughly zero mean and
unit variance whatever the noise (the data is already "normalised"). With the default noise a linear
model or a small CNN learns the classes within an epoch or two; raise ``noise`` for a harder task.

Labels are balanced (class ``i % num_classes`` for sample ``i``, then shuffled). Everything is drawn
from one ``torch.Generator`` seeded with ``seed`` — prototypes, then the training split, then the test
split — so the same params always give identical tensors, on any machine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from kdframe import DataError, InMemoryDataset, Params

#: Side of the coarse random pattern that is upsampled into a class prototype.
PATTERN_SIZE = 4


class SyntheticParams(Params):
    """Parameters of the ``synthetic`` dataset."""

    num_classes: int = Field(default=10, ge=2, le=1000, description="Number of classes (at least 2).")
    channels: int = Field(default=1, ge=1, le=16, description="Image channels.")
    image_size: int = Field(
        default=16, ge=4, le=256, description="Height and width of the square images, in pixels."
    )
    train_size: int = Field(default=512, ge=1, le=1_000_000, description="Number of training samples.")
    test_size: int = Field(default=256, ge=1, le=1_000_000, description="Number of test samples.")
    noise: float = Field(
        default=1.0,
        ge=0.0,
        le=1e6,
        description="Standard deviation of the pixel noise, relative to the class pattern (higher is harder).",
    )
    seed: int = Field(
        default=0, ge=0, le=2**63 - 1, description="Seed of the generator; the same params give identical data."
    )


def _prototypes(params: SyntheticParams, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(
        params.num_classes, params.channels, PATTERN_SIZE, PATTERN_SIZE, generator=generator
    )
    size = params.image_size
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    flat = smooth.flatten(1)
    flat = (flat - flat.mean(dim=1, keepdim=True)) / flat.std(dim=1, keepdim=True).clamp_min(1e-6)
    patterns = flat.view_as(smooth)
    # A per-class, per-channel brightness too, so that models that average over space (global
    # pooling) also see the class: each channel spreads the classes evenly over [-1, 1].
    levels = torch.linspace(-1.0, 1.0, params.num_classes)
    offsets = torch.stack(
        [levels[torch.randperm(params.num_classes, generator=generator)] for _ in range(params.channels)],
        dim=1,
    )
    return patterns + offsets[:, :, None, None]


def _split(
    prototypes: torch.Tensor, count: int, noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    num_classes = prototypes.shape[0]
    order = torch.randperm(count, generator=generator)
    labels = (torch.arange(count) % num_classes)[order]
    images = prototypes[labels] + noise * torch.randn(
        (count, *prototypes.shape[1:]), generator=generator
    )
    images /= math.sqrt(float(prototypes.pow(2).mean()) + noise**2)
    return images.to(torch.float32), labels.to(torch.int64)


#: The largest synthetic dataset (train and test images together) the factory makes, in bytes.
MAX_BYTES = 4 * 2**30


def make_synthetic(params: SyntheticParams) -> InMemoryDataset:
    """The factory of the ``synthetic`` dataset."""
    size = (params.train_size + params.test_size) * params.channels * params.image_size**2 * 4
    if size > MAX_BYTES:
        raise DataError(
            f"The synthetic dataset asked for would take {size / 2**30:.1f} GiB of memory (train_size + "
            f"test_size = {params.train_size + params.test_size} images of {params.channels}x"
            f"{params.image_size}x{params.image_size}); the limit is {MAX_BYTES // 2**30} GiB. Lower "
            "data.params.train_size, test_size, image_size or channels."
        )
    generator = torch.Generator().manual_seed(params.seed)
    prototypes = _prototypes(params, generator)
    train_images, train_labels = _split(prototypes, params.train_size, params.noise, generator)
    test_images, test_labels = _split(prototypes, params.test_size, params.noise, generator)
    return InMemoryDataset(
        name="synthetic",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=[f"class_{index}" for index in range(params.num_classes)],
    )
