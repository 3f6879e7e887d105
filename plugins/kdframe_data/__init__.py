"""kdframe's first-party datasets, registered like any third-party plugin's.

Datasets (all of family ``image``; each factory but ``image_folder``'s returns a
:class:`kdframe.InMemoryDataset` of normalised float32 ``(N, C, H, W)`` images and int64 labels):

- ``fashion_mnist``: Fashion-MNIST from its IDX files (Debian's ``dataset-fashion-mnist``,
  torchvision's ``FashionMNIST/raw`` or any folder), see :mod:`kdframe_data.fashion_mnist`;
- ``cifar10`` and ``cifar100``: CIFAR from its python-pickle files, see :mod:`kdframe_data.cifar`;
- ``synthetic``: seeded, learnable random images for tests and smoke runs, see
  :mod:`kdframe_data.synthetic`;
- ``image_folder``: image files in ``train/<class>/`` and ``test/<class>/`` folders, read through a
  DataLoader (a :class:`kdframe.StreamingDataset`, for data that does not fit in memory), see
  :mod:`kdframe_data.image_folder`.

Data folders: ``data.params.root``, else the environment variable ``KDFRAME_DATA``, else the system
and cache locations each dataset documents. Nothing is downloaded unless ``data.params.download`` is
true. Training-batch augmentations run on tensors (:mod:`kdframe_data.augment`); ``image_folder``
applies them per sample.
"""

from __future__ import annotations

from kdframe import DatasetSpec, hookimpl
from kdframe_data.cifar import CifarParams, load_cifar10, load_cifar100
from kdframe_data.fashion_mnist import FashionMNISTParams, load_fashion_mnist
from kdframe_data.image_folder import ImageFolderParams, load_image_folder
from kdframe_data.synthetic import SyntheticParams, make_synthetic


@hookimpl
def kdframe_register_datasets() -> list[DatasetSpec]:
    """The datasets of this plugin."""
    return [
        DatasetSpec(
            name="fashion_mnist",
            summary="Fashion-MNIST: 60k/10k 28x28 greyscale clothing images, 10 classes (IDX files).",
            factory=load_fashion_mnist,
            params=FashionMNISTParams,
            family="image",
        ),
        DatasetSpec(
            name="cifar10",
            summary="CIFAR-10: 50k/10k 32x32 colour images, 10 classes (python-pickle files).",
            factory=load_cifar10,
            params=CifarParams,
            family="image",
        ),
        DatasetSpec(
            name="cifar100",
            summary="CIFAR-100: 50k/10k 32x32 colour images, 100 fine classes (python-pickle files).",
            factory=load_cifar100,
            params=CifarParams,
            family="image",
        ),
        DatasetSpec(
            name="synthetic",
            summary="Seeded random images with class-dependent patterns, for tests and smoke runs.",
            factory=make_synthetic,
            params=SyntheticParams,
            family="image",
        ),
        DatasetSpec(
            name="image_folder",
            summary="Image files in ROOT/train/<class>/ and ROOT/test/<class>/, streamed through a DataLoader.",
            factory=load_image_folder,
            params=ImageFolderParams,
            family="image",
        ),
    ]
