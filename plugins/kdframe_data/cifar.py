"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009), read from the official "python version" files.

50 000 training and 10 000 test colour images of 32x32 pixels, in 10 or 100 classes. The files are
read directly (not through torchvision, whose reader checks md5 sums and so rejects anything but the
exact published files):

- CIFAR-10: ``cifar-10-batches-py/`` with ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` and
  ``batches.meta``; labels under ``b"labels"``, class names under ``b"label_names"``.
- CIFAR-100: ``cifar-100-python/`` with ``train``, ``test`` and ``meta``; the fine (100-class) labels
  under ``b"fine_labels"``, class names under ``b"fine_label_names"``.

Each data file is a pickled dict whose ``b"data"`` is a ``uint8`` array ``(N, 3072)``: the red, green
and blue 32x32 planes of each image, row-major.

Where the folder is looked for: under ``params.root`` when given (or ``params.root`` may be the folder
itself); otherwise under ``$KDFRAME_DATA`` when set, then ``~/.cache/kdframe``. With
``params.download`` true and nothing found, torchvision downloads the archive into ``params.root``,
else ``$KDFRAME_DATA``, else ``~/.cache/kdframe``.

Normalisation, per channel (R, G, B), with the mean and standard deviation of each training set's
pixels in [0, 1]:

- CIFAR-10: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616);
- CIFAR-100: mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2762).

(The often-copied CIFAR-10 std (0.2023, 0.1994, 0.2010) is the mean of per-image stds, not the
pixel std; the difference only rescales inputs.)
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from kdframe import DataError, InMemoryDataset, Params
from kdframe_data.augment import random_crop_flip
from kdframe_data.fashion_mnist import (
    DATA_ENV,
    cache_root,
    download_root,
    env_data_root,
    torchvision_download,
)


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps what."""

    name: str
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    torchvision_class: str
    archive: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


CIFAR10 = CifarLayout(
    name="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    torchvision_class="CIFAR10",
    archive="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarLayout(
    name="cifar100",
    title="CIFAR-100",
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
    torchvision_class="CIFAR100",
    archive="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


class CifarParams(Params):
    """Parameters of the ``cifar10`` and ``cifar100`` datasets."""

    root: str | None = Field(
        default=None,
        description=(
            "Folder holding cifar-10-batches-py/ or cifar-100-python/ (or that folder itself). "
            "Default: $KDFRAME_DATA, then ~/.cache/kdframe."
        ),
    )
    download: bool = Field(
        default=False,
        description=(
            "Download and extract the archive with torchvision when the files are not found (needs "
            "internet); it goes to root, else $KDFRAME_DATA, else ~/.cache/kdframe."
        ),
    )
    augment: bool = Field(
        default=True,
        description=(
            "Augment training batches: random 32x32 crop with 4-pixel zero padding and horizontal flip."
        ),
    )


def search_folders(layout: CifarLayout, root: str | None) -> list[Path]:
    """The folders looked in, in order."""
    if root:
        bases = [Path(root).expanduser()]
    else:
        env = env_data_root()
        bases = ([env] if env is not None else []) + [cache_root()]
    folders: list[Path] = []
    for base in bases:
        folders += [base / layout.folder, base]
    return folders


def find_folder(layout: CifarLayout, root: str | None) -> tuple[Path | None, list[str]]:
    """The first folder holding every file of ``layout``, and notes on folders holding only some."""
    notes: list[str] = []
    for folder in search_folders(layout, root):
        if not folder.is_dir():
            continue
        missing = [name for name in layout.files if not (folder / name).is_file()]
        if not missing:
            return folder, notes
        if len(missing) < len(layout.files):
            notes.append(f"{folder} lacks {', '.join(missing)}")
    return None, notes


def _not_found(layout: CifarLayout, root: str | None, notes: list[str]) -> DataError:
    looked = ", ".join(str(folder) for folder in search_folders(layout, root))
    partial = f" ({'; '.join(notes)})" if notes else ""
    return DataError(
        f"{layout.title} not found: looked for {layout.folder}/ ({', '.join(layout.files)}) in "
        f"{looked}{partial}. To get the data: set data.params.download to true on a machine with "
        f"internet access; or download {layout.archive}, extract it and set the environment "
        f"variable {DATA_ENV} or data.params.root to the folder that holds {layout.folder}/."
    )


#: The only globals CIFAR's pickles refer to: NumPy's array reconstruction (NumPy 1 and 2 module
#: names, pickle protocols 2 to 5) and ``_codecs.encode``, which protocol 2 uses for bytes.
SAFE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickles without running code: any global other than :data:`SAFE_GLOBALS`
    (e.g. ``os.system`` in a ``__reduce__``) is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[Any, Any]:
    # The official CIFAR "python version" is a pickle. It is read with CifarUnpickler, which admits
    # only the NumPy and builtin types the format holds, so a hostile file cannot run code.
    try:
        with open(path, "rb") as handle:
            content = CifarUnpickler(handle, encoding="bytes").load()
    except OSError as error:
        raise DataError(f"Cannot read {path}: {error.strerror or error}.") from error
    except pickle.UnpicklingError as error:
        if str(error).startswith("refused global"):
            raise DataError(
                f"{path} is not a CIFAR file kdframe will read: it asks to load "
                f"{str(error)[len('refused global '):][:200]}, which CIFAR's files never hold, so it was refused "
                "without running anything. The file may be malicious; delete the folder and get the data "
                "from its official source again."
            ) from None
        raise DataError(
            f"{path} is not a readable CIFAR file ({error}); it may be truncated or corrupt. Delete the "
            "folder and get the data again."
        ) from None
    except Exception as error:  # truncated or not a pickle at all
        raise DataError(
            f"{path} is not a readable CIFAR file ({type(error).__name__}: {error}); it may be "
            "truncated or corrupt. Delete the folder and get the data again."
        ) from None
    if not isinstance(content, dict):
        raise DataError(f"{path} holds a {type(content).__name__}, not a CIFAR dict; the file is corrupt.")
    return content


def _class_names(layout: CifarLayout, path: Path) -> list[str]:
    meta = _unpickle(path)
    names = meta.get(layout.names_key)
    if not isinstance(names, list) or not names:
        raise DataError(f"{path} has no {layout.names_key!r} list of class names; the file is corrupt.")
    return [name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in names]


def _read_batch(layout: CifarLayout, path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if b"data" not in batch or layout.label_key not in batch:
        raise DataError(
            f"{path} lacks the keys b'data' and {layout.label_key!r}; is it a {layout.title} file?"
        )
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(
            f"{path}: b'data' must be a uint8 array of shape (N, 3072), got "
            f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}."
        )
    raw_labels = batch[layout.label_key]
    try:
        if not isinstance(raw_labels, (list, np.ndarray)):
            raise TypeError(type(raw_labels).__name__)
        labels = np.asarray(raw_labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as error:
        raise DataError(f"{path}: {layout.label_key!r} must be a list of class indices ({error}); the file is corrupt.") from None
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path} holds {data.shape[0]} images but {labels.size} labels.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{path} holds labels outside 0..{num_classes - 1}, the classes listed in {layout.meta_file}."
        )
    return data, labels


def _to_tensors(
    layout: CifarLayout, data: np.ndarray, labels: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(data).view(-1, 3, 32, 32).to(torch.float32).div_(255.0)
    mean = torch.tensor(layout.mean).view(1, 3, 1, 1)
    std = torch.tensor(layout.std).view(1, 3, 1, 1)
    images.sub_(mean).div_(std)
    return images, torch.from_numpy(labels)


def load_cifar(layout: CifarLayout, params: CifarParams) -> InMemoryDataset:
    """Load one CIFAR variant (the factories of ``cifar10`` and ``cifar100``)."""
    folder, notes = find_folder(layout, params.root)
    if folder is None and params.download:
        target = download_root(params.root)
        torchvision_download(layout.torchvision_class, target, layout.title)
        folder, notes = find_folder(layout, str(target))
    if folder is None:
        raise _not_found(layout, params.root, notes)
    classes = _class_names(layout, folder / layout.meta_file)
    parts = [_read_batch(layout, folder / name, len(classes)) for name in layout.train_files]
    train_data = np.concatenate([data for data, _ in parts]) if len(parts) > 1 else parts[0][0]
    train_labels = np.concatenate([labels for _, labels in parts]) if len(parts) > 1 else parts[0][1]
    test_data, test_labels = _read_batch(layout, folder / layout.test_file, len(classes))
    train_x, train_y = _to_tensors(layout, train_data, train_labels)
    test_x, test_y = _to_tensors(layout, test_data, test_labels)
    return InMemoryDataset(
        name=layout.name,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        classes=classes,
        augment=random_crop_flip(4, flip=True) if params.augment else None,
    )


def load_cifar10(params: CifarParams) -> InMemoryDataset:
    """The factory of the ``cifar10`` dataset."""
    return load_cifar(CIFAR10, params)


def load_cifar100(params: CifarParams) -> InMemoryDataset:
    """The factory of the ``cifar100`` dataset."""
    return load_cifar(CIFAR100, params)
