"""Fashion-MNIST (Xiao et al. 2017), read from its four IDX files.

60 000 training and 10 000 test greyscale images of 28x28 pixels in ten clothing classes. The files
are the ones Zalando publishes, which Debian ships in the ``dataset-fashion-mnist`` package (under
``/usr/share/datasets/fashion-mnist``) and torchvision downloads (under ``ROOT/FashionMNIST/raw``);
each may be plain or gzip-compressed.

Where the files are looked for, in order (each folder ``F`` is tried as ``F``, ``F/fashion-mnist`` and
``F/FashionMNIST/raw``; the first holding all four files wins):

1. ``params.root``, when given — and only there;
2. otherwise ``$KDFRAME_DATA`` when that variable is set, then ``/usr/share/datasets/fashion-mnist``,
   then ``~/.cache/kdframe`` (where ``download`` puts the files when neither is set).

Nothing touches the network unless ``params.download`` is true and the files were not found.

Images are scaled to [0, 1] and normalised with the training set's mean 0.2860 and standard deviation
0.3530 (the usual published values for Fashion-MNIST), so each pixel is ``(x / 255 - 0.2860) / 0.3530``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from kdframe import DataError, InMemoryDataset, Params
from kdframe_data.augment import random_crop_flip
from kdframe_data.idx import find_idx_file, read_idx

#: The environment variable naming a folder of datasets.
DATA_ENV = "KDFRAME_DATA"
#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

MEAN = 0.2860
STD = 0.3530
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
#: The four files: (split, role) -> file name without ``.gz``.
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

HOW_TO_GET = (
    "To get the data: install Debian's package with 'sudo apt-get install dataset-fashion-mnist' "
    f"(it puts the files in {SYSTEM_DIR}); or set the environment variable {DATA_ENV} or "
    "data.params.root to a folder holding the four IDX files (plain or .gz); or, on a machine with "
    "internet access, set data.params.download to true to fetch them with torchvision."
)


class FashionMNISTParams(Params):
    """Parameters of the ``fashion_mnist`` dataset."""

    root: str | None = Field(
        default=None,
        description=(
            "Folder holding the four Fashion-MNIST IDX files (plain or .gz), directly or under "
            "fashion-mnist/ or FashionMNIST/raw/. Default: $KDFRAME_DATA, then "
            "/usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist), then ~/.cache/kdframe."
        ),
    )
    download: bool = Field(
        default=False,
        description=(
            "Download the files with torchvision when they are not found (needs internet); they go "
            "to ROOT/FashionMNIST/raw, ROOT being root, else $KDFRAME_DATA, else ~/.cache/kdframe."
        ),
    )
    augment: bool = Field(
        default=False,
        description="Augment training batches: random crop with 2-pixel zero padding and horizontal flip.",
    )


# --- where data lives (shared with the CIFAR datasets) ------------------------------------------


def env_data_root() -> Path | None:
    """The folder named by ``$KDFRAME_DATA``, if set."""
    value = os.environ.get(DATA_ENV, "").strip()
    return Path(value).expanduser() if value else None


def cache_root() -> Path:
    """``~/.cache/kdframe``: where downloads go when neither a root nor ``$KDFRAME_DATA`` is given."""
    return Path("~/.cache/kdframe").expanduser()


def download_root(root: str | None) -> Path:
    """Where a download goes: ``root``, else ``$KDFRAME_DATA``, else ``~/.cache/kdframe``."""
    if root:
        return Path(root).expanduser()
    return env_data_root() or cache_root()


def torchvision_download(class_name: str, root: Path, title: str) -> None:
    """Download a dataset with ``torchvision.datasets.<class_name>(root, download=True)``.

    Raises:
        DataError: torchvision is missing or the download fails (no network, a bad checksum, ...).
    """
    try:
        from torchvision import datasets
    except ImportError as error:
        raise DataError(
            f"Downloading {title} needs torchvision, which is not installed ('pip install torchvision')."
        ) from error
    try:
        root.mkdir(parents=True, exist_ok=True)
        getattr(datasets, class_name)(root=str(root), train=True, download=True)
    except Exception as error:  # anything torchvision raises becomes one readable message
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DataError(
            f"Downloading {title} into {root} failed ({type(error).__name__}"
            f"{': ' + reason if reason else ''}). Check the internet connection, or put the files "
            "there yourself and set data.params.download to false."
        ) from error


# --- Fashion-MNIST ----------------------------------------------------------------------------


def _candidates(base: Path) -> list[Path]:
    return [base, base / "fashion-mnist", base / "FashionMNIST" / "raw"]


def search_folders(root: str | None) -> list[Path]:
    """The folders looked in, in order (see the module docstring)."""
    if root:
        return _candidates(Path(root).expanduser())
    folders: list[Path] = []
    env = env_data_root()
    if env is not None:
        folders += _candidates(env)
    folders.append(SYSTEM_DIR)
    folders += _candidates(cache_root())
    return folders


def _files_in(folder: Path) -> dict[tuple[str, str], Path | None]:
    return {key: find_idx_file(folder, stem) for key, stem in FILES.items()}


def find_files(root: str | None) -> tuple[dict[tuple[str, str], Path] | None, list[str]]:
    """The four files from the first folder holding all of them, and notes on partial folders."""
    notes: list[str] = []
    for folder in search_folders(root):
        if not folder.is_dir():
            continue
        found = _files_in(folder)
        if all(found.values()):
            return {key: path for key, path in found.items() if path is not None}, notes
        if any(found.values()):
            missing = [FILES[key] for key, path in found.items() if path is None]
            notes.append(f"{folder} lacks {', '.join(missing)}")
    return None, notes


def _not_found(root: str | None, notes: list[str]) -> DataError:
    looked = ", ".join(str(folder) for folder in search_folders(root))
    partial = f" ({'; '.join(notes)})" if notes else ""
    only = (
        " Only data.params.root was searched because it is set; leave it unset to use "
        f"${DATA_ENV} or the system package."
        if root
        else ""
    )
    return DataError(
        "Fashion-MNIST not found: looked for train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each plain or .gz) in {looked}"
        f"{partial}.{only} {HOW_TO_GET}"
    )


def _load_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.dtype != np.uint8:
        raise DataError(f"{images_path} holds {images.dtype} values; Fashion-MNIST images are uint8.")
    if labels.dtype != np.uint8:
        raise DataError(f"{labels_path} holds {labels.dtype} values; Fashion-MNIST labels are uint8.")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; one of them is from another release or damaged."
        )
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise DataError(
            f"{labels_path} holds label {int(labels.max())}; Fashion-MNIST has {len(CLASSES)} classes."
        )
    tensor = torch.from_numpy(images).unsqueeze(1).to(torch.float32)
    tensor.div_(255.0).sub_(MEAN).div_(STD)
    return tensor, torch.from_numpy(labels).to(torch.int64)


def load_fashion_mnist(params: FashionMNISTParams) -> InMemoryDataset:
    """The factory of the ``fashion_mnist`` dataset."""
    files, notes = find_files(params.root)
    if files is None and params.download:
        target = download_root(params.root)
        torchvision_download("FashionMNIST", target, "Fashion-MNIST")
        files, notes = find_files(str(target))
    if files is None:
        raise _not_found(params.root, notes)
    train_images, train_labels = _load_split(files["train", "images"], files["train", "labels"])
    test_images, test_labels = _load_split(files["test", "images"], files["test", "labels"])
    return InMemoryDataset(
        name="fashion_mnist",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=list(CLASSES),
        augment=random_crop_flip(2, flip=True) if params.augment else None,
    )
