"""Batch augmentations that run on tensors, on whatever device the batch is on.

Each augmentation is a :data:`kdframe.data.BatchAugment`: ``augment(images, generator) -> images``
where ``images`` is a normalised ``(N, C, H, W)`` training batch and ``generator`` a CPU
``torch.Generator``. All randomness is drawn from that generator on the CPU and only then moved to the
batch's device, so a run's augmentations depend only on its seed, not on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdframe import BatchAugment


@dataclass(frozen=True)
class RandomCropFlip:
    """Random crop after zero padding, and random horizontal flip, per sample.

    Each image is padded by ``padding`` pixels of zeros on every side (zero is the dataset mean after
    normalisation) and cropped back to its size at an offset drawn uniformly from
    ``[0, 2 * padding]`` in each direction; with ``flip`` it is then mirrored left-right with
    probability 0.5. The whole batch is done by two ``gather`` calls: the flip is folded into the
    column index, so it costs nothing extra.
    """

    padding: int
    flip: bool = True

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected a (N, C, H, W) batch, got shape {tuple(images.shape)}")
        if self.padding == 0 and not self.flip:
            return images
        count, channels, height, width = images.shape
        pad = self.padding
        # Randomness first, on the CPU, in a fixed order: row offsets, column offsets, flips.
        rows = torch.arange(height).unsqueeze(0)  # (1, H)
        cols = torch.arange(width).unsqueeze(0)  # (1, W)
        if pad:
            dy = torch.randint(0, 2 * pad + 1, (count, 1), generator=generator)
            dx = torch.randint(0, 2 * pad + 1, (count, 1), generator=generator)
        else:
            dy = dx = torch.zeros(count, 1, dtype=torch.long)
        if self.flip:
            flipped = torch.rand(count, 1, generator=generator) < 0.5
            cols = torch.where(flipped, width - 1 - cols, cols)  # (N, W)
        row_index = (dy + rows).to(images.device)  # (N, H), indices into the padded image
        col_index = (dx + cols).to(images.device)  # (N, W)

        padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
        padded_width = width + 2 * pad
        # Pick the rows: (N, C, H, W + 2p), then the columns: (N, C, H, W).
        picked_rows = padded.gather(
            2, row_index[:, None, :, None].expand(count, channels, height, padded_width)
        )
        return picked_rows.gather(3, col_index[:, None, None, :].expand(count, channels, height, width))


def random_crop_flip(padding: int, flip: bool = True) -> BatchAugment:
    """A :class:`RandomCropFlip`: pad by ``padding``, crop back at a random offset, maybe flip."""
    return RandomCropFlip(padding=padding, flip=flip)
