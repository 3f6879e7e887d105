"""Image files in class folders (torchvision's ``ImageFolder`` layout), streamed through a DataLoader.

The layout is ``ROOT/train/<class>/<image>`` and ``ROOT/test/<class>/<image>`` (any image format
torchvision's ``ImageFolder`` accepts: ``.png``, ``.jpg``, ``.bmp``, ...). Class names are the train
folder's sub-folders, sorted, and label ``i`` is the ``i``-th of them; the test folder may lack a class
but may not add one. Samples are ordered by class, then by file name, so index ``i`` is always the
same file. An optional ``ROOT/val/<class>/<image>`` is the dataset's own validation split (the same
rules as the test folder): kdframe then selects the best epoch on it (``data.validation_samples``
uses only part of it).

Unlike the other first-party datasets this one returns a :class:`kdframe.StreamingDataset`: images
are read, converted (RGB, or greyscale with ``grayscale``), resized (with ``image_size``) and
normalised one at a time when a batch needs them, in ``data.num_workers`` worker processes, so the
data need not fit in memory. With ``augment`` each training sample is randomly cropped (after zero
padding of ``image_size / 8`` pixels) and flipped, in the worker that reads it.

Normalisation is ``(x - mean) / std`` per channel, ``x`` in [0, 1]. Without ``mean`` and ``std`` both
are computed when the dataset is built, from up to :data:`STATS_SAMPLES` training images picked with
a fixed seed (so the same folder always gives the same statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from pydantic import Field, model_validator
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms.functional import pil_to_tensor

from kdframe import BatchAugment, DataError, Params, StreamingDataset
from kdframe_data.augment import random_crop_flip

#: At most this many training images are read to compute ``mean`` and ``std`` when not given.
STATS_SAMPLES = 1000


class ImageFolderParams(Params):
    """Parameters of the ``image_folder`` dataset."""

    root: str = Field(
        description="Folder holding train/<class>/<image> and test/<class>/<image> (torchvision ImageFolder layout)."
    )
    image_size: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Resize every image to this square size (bilinear). Default: keep the images' own size, "
        "which must then be the same for all of them.",
    )
    grayscale: bool = Field(default=False, description="Read images as one greyscale channel instead of three RGB channels.")
    mean: list[float] | None = Field(
        default=None,
        min_length=1,
        description="Per-channel mean of pixel values in [0, 1] (one value, or one per channel); given "
        "together with std. Default: computed from up to 1000 training images.",
    )
    std: list[float] | None = Field(
        default=None,
        min_length=1,
        description="Per-channel standard deviation (one value, or one per channel, each > 0); given together with mean.",
    )
    augment: bool = Field(
        default=False,
        description="Augment training samples: random crop after zero padding of image_size/8 pixels "
        "(at least 1) and horizontal flip, per sample.",
    )

    @model_validator(mode="after")
    def _check_normalisation(self) -> ImageFolderParams:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then both are computed)")
        channels = 1 if self.grayscale else 3
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, channels):
                raise ValueError(f"{name} needs 1 or {channels} values (one per channel), got {len(values)}")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("every std value must be > 0")
        return self


class ImageFiles(Dataset[tuple[Tensor, int]]):
    """One split: ``(path, label)`` samples read as normalised ``(C, H, W)`` float tensors.

    Attributes:
        samples: ``(path, label)`` in index order.
        mode: ``"RGB"`` or ``"L"`` (greyscale).
        size: ``(height, width)`` every image has after the optional resize.
        resize: Whether images are resized to ``size``.
        mean: Per-channel mean, ``(C, 1, 1)``.
        std: Per-channel standard deviation, ``(C, 1, 1)``.
    """

    def __init__(
        self, samples: list[tuple[str, int]], mode: str, size: tuple[int, int], resize: bool, mean: Tensor, std: Tensor
    ) -> None:
        self.samples = samples
        self.mode, self.size, self.resize = mode, size, resize
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> Tensor:
        """Sample ``index`` as a float tensor of values in [0, 1], not normalised."""
        path = self.samples[index][0]
        try:
            with Image.open(path) as opened:
                image = opened.convert(self.mode)
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"image_folder: cannot read '{path}' as an image ({error}).") from None
        if self.resize and image.size != (self.size[1], self.size[0]):
            image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        tensor = pil_to_tensor(image).to(torch.float32).div_(255.0)
        if tuple(tensor.shape[1:]) != self.size:
            raise DataError(
                f"image_folder: '{path}' is {tensor.shape[2]}x{tensor.shape[1]} pixels, but the first "
                f"training image is {self.size[1]}x{self.size[0]}. Set data.params.image_size to resize them all."
            )
        return tensor

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.read(index).sub_(self.mean).div_(self.std), self.samples[index][1]


@dataclass(frozen=True)
class PerSample:
    """A batch augmentation applied to one ``(C, H, W)`` sample (as a batch of one)."""

    augment: BatchAugment

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        return self.augment(image.unsqueeze(0), generator)[0]


def _split_samples(root: Path, split: str, class_to_idx: dict[str, int] | None) -> list[tuple[str, int]]:
    folder = root / split
    if not folder.is_dir():
        raise DataError(
            f"image_folder: '{folder}' is not a folder. The dataset needs {root}/train/<class>/<image> "
            f"and {root}/test/<class>/<image>."
        )
    try:
        samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=split != "train")
    except FileNotFoundError as error:
        raise DataError(
            f"image_folder: {error} (in '{folder}'; image files end in {', '.join(IMG_EXTENSIONS)})."
        ) from None
    # An entry named like an image may be a broken link, a pipe or a device: refuse it now, not at
    # the batch that reads it (a stat per file; the images themselves are read when needed).
    not_files = [path for path, _ in samples if not Path(path).is_file()]
    if not_files:
        shown = ", ".join(f"'{path}'" for path in not_files[:3])
        more = f" and {len(not_files) - 3} more" if len(not_files) > 3 else ""
        raise DataError(
            f"image_folder: {shown}{more} in '{folder}' {'is' if len(not_files) == 1 else 'are'} named like "
            "an image but not a regular file (a folder, a broken link, a pipe or a device). Remove or "
            "rename such entries, or replace them with the image files."
        )
    return samples


def _held_out_samples(root: Path, split: str, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """The samples of the ``test`` or ``val`` folder: only classes the train folder has, not empty."""
    folder = root / split
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir()) if folder.is_dir() else []
    extra = [name for name in classes if name not in class_to_idx]
    if extra:
        raise DataError(
            f"image_folder: '{folder}' has class folder(s) {extra} that '{root / 'train'}' lacks; "
            f"every {split} class needs training images."
        )
    samples = _split_samples(root, split, class_to_idx)
    if not samples:
        raise DataError(f"image_folder: '{folder}' holds no image files (one sub-folder per class is needed).")
    return samples


def _statistics(files: ImageFiles, channels: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation, ``(C, 1, 1)`` each, of up to :data:`STATS_SAMPLES`
    training images (read unnormalised)."""
    picked = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))[:STATS_SAMPLES].sort().values
    sums = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    pixels = 0
    for index in picked.tolist():
        flat = files.read(index).to(torch.float64).flatten(1)
        sums += flat.sum(1)
        squares += (flat * flat).sum(1)
        pixels += flat.shape[1]
    mean = sums / pixels
    std = (squares / pixels - mean * mean).clamp_min(0.0).sqrt()
    # A channel that never changes (e.g. a blank one) is left unscaled instead of divided by zero.
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return mean.to(torch.float32).view(channels, 1, 1), std.to(torch.float32).view(channels, 1, 1)


def _per_channel(values: list[float], channels: int) -> Tensor:
    tensor = torch.tensor(values, dtype=torch.float32)
    return tensor.expand(channels).clone().view(channels, 1, 1) if tensor.numel() == 1 else tensor.view(channels, 1, 1)


def load_image_folder(params: ImageFolderParams) -> StreamingDataset:
    """The factory of the ``image_folder`` dataset."""
    root = Path(params.root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"image_folder: data.params.root '{root}' is not a folder. It must hold train/<class>/<image> "
            "and test/<class>/<image>."
        )
    if not (root / "train").is_dir():
        _split_samples(root, "train", None)  # raises the missing-folder error
    try:
        classes, class_to_idx = find_classes(str(root / "train"))
    except FileNotFoundError as error:
        raise DataError(f"image_folder: {error} (one sub-folder per class is needed).") from None
    train_samples = _split_samples(root, "train", class_to_idx)
    test_samples = _held_out_samples(root, "test", class_to_idx)
    val_samples = _held_out_samples(root, "val", class_to_idx) if (root / "val").is_dir() else None

    mode = "L" if params.grayscale else "RGB"
    channels = 1 if params.grayscale else 3
    if params.image_size is not None:
        size = (params.image_size, params.image_size)
    else:
        path = train_samples[0][0]
        try:
            with Image.open(path) as opened:
                size = (opened.height, opened.width)
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"image_folder: cannot read '{path}' as an image ({error}).") from None
    unit = torch.zeros(channels, 1, 1), torch.ones(channels, 1, 1)
    train = ImageFiles(train_samples, mode, size, params.image_size is not None, *unit)
    if params.mean is not None and params.std is not None:
        mean, std = _per_channel(params.mean, channels), _per_channel(params.std, channels)
    else:
        mean, std = _statistics(train, channels)
    train.mean, train.std = mean, std
    test = ImageFiles(test_samples, mode, size, params.image_size is not None, mean, std)
    val = None if val_samples is None else ImageFiles(val_samples, mode, size, params.image_size is not None, mean, std)
    padding = max(1, min(size) // 8)
    return StreamingDataset(
        name="image_folder",
        train=train,
        test=test,
        classes=list(classes),
        in_channels=channels,
        image_size=size,
        transform=PerSample(random_crop_flip(padding, flip=True)) if params.augment else None,
        val=val,
    )


