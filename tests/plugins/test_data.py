"""Tests of the first-party dataset plugin ``kdframe_data``."""

from __future__ import annotations

import gzip
import json
import pickle
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import kdframe_data
from kdframe import DataError, InMemoryDataset
from kdframe.plugins import create_plugins
from kdframe_data import fashion_mnist
from kdframe_data.augment import RandomCropFlip, random_crop_flip
from kdframe_data.cifar import CifarParams, load_cifar10, load_cifar100
from kdframe_data.fashion_mnist import FashionMNISTParams, load_fashion_mnist
from kdframe_data.idx import parse_idx, read_idx, write_idx
from kdframe_data.synthetic import SyntheticParams, make_synthetic

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


# --- helpers ---------------------------------------------------------------------------------


def idx_bytes(type_code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file built by hand (independent of the writer under test)."""
    return struct.pack(">BBBB", 0, 0, type_code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload


def write_fashion_files(
    folder: Path, train: int = 20, test: int = 10, *, gz: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    """Small Fashion-MNIST-shaped IDX files: train files gzipped (when ``gz``), test files plain."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": ((np.arange(test) * 3) % 10).astype(np.uint8),
    }
    for stem, array in arrays.items():
        name = stem + ".gz" if gz and stem.startswith("train") else stem
        write_idx(folder / name, array)
    return arrays


@pytest.fixture
def no_data_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No $KDFRAME_DATA, no system folder, an empty home: nothing can be found."""
    monkeypatch.delenv("KDFRAME_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-dir")
    return tmp_path


def write_cifar10(folder: Path, per_batch: int = 4, test: int = 6) -> dict[str, object]:
    """A tiny cifar-10-batches-py/ in CIFAR's own format (pickled dicts with bytes keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"] + [b"dog", b"frog", b"horse", b"ship", b"truck"]
    batches = []
    for index in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batches.append((data, labels))
        with open(folder / f"data_batch_{index}", "wb") as handle:
            pickle.dump(
                {b"batch_label": f"training batch {index} of 5".encode(), b"labels": labels, b"data": data,
                 b"filenames": [b"x.png"] * per_batch},
                handle,
                protocol=2,
            )
    test_data = rng.integers(0, 256, (test, 3072), dtype=np.uint8)
    test_labels = [int(v) for v in rng.integers(0, 10, test)]
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"labels": test_labels, b"data": test_data}, handle, protocol=2)
    with open(folder / "batches.meta", "wb") as handle:
        meta = {b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
        pickle.dump(meta, handle, protocol=2)
    return {"batches": batches, "test": (test_data, test_labels), "names": names}


def write_cifar100(folder: Path, train: int = 12, test: int = 5) -> dict[str, object]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    fine = [f"fine{i}".encode() for i in range(100)]
    coarse = [f"coarse{i}".encode() for i in range(20)]
    out: dict[str, object] = {"names": fine}
    for split, count in (("train", train), ("test", test)):
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 100, count)]
        out[split] = (data, labels)
        with open(folder / split, "wb") as handle:
            pickle.dump(
                {b"data": data, b"fine_labels": labels, b"coarse_labels": [v // 5 for v in labels]},
                handle,
                protocol=2,
            )
    with open(folder / "meta", "wb") as handle:
        pickle.dump({b"fine_label_names": fine, b"coarse_label_names": coarse}, handle, protocol=2)
    return out


# --- IDX -------------------------------------------------------------------------------------


def test_idx_reads_hand_built_plain_and_gzipped_files(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(0x08, (2, 3, 4), images.tobytes())
    (tmp_path / "plain").write_bytes(raw)
    (tmp_path / "packed.gz").write_bytes(gzip.compress(raw))
    for name in ("plain", "packed.gz"):
        array = read_idx(tmp_path / name, ndim=3)
        assert array.dtype == np.uint8 and array.shape == (2, 3, 4)
        np.testing.assert_array_equal(array, images)
        assert array.flags.writeable

    # Multi-byte types are big-endian in the file and native-endian once read.
    values = [1, -2, 70000]
    (tmp_path / "ints").write_bytes(idx_bytes(0x0C, (3,), struct.pack(">3i", *values)))
    ints = read_idx(tmp_path / "ints")
    assert ints.tolist() == values and ints.dtype.isnative
    (tmp_path / "floats").write_bytes(idx_bytes(0x0D, (2,), struct.pack(">2f", 0.5, -1.25)))
    assert read_idx(tmp_path / "floats").tolist() == [0.5, -1.25]


def test_idx_writer_round_trips(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(-30000, 30000, (5, 7), dtype=np.int16)
    for name in ("a", "a.gz"):
        np.testing.assert_array_equal(read_idx(write_idx(tmp_path / name, array)), array)
    assert (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc", "magic number"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 3) + b"abc", "magic number"),  # unknown type code
        (b"\x00\x00", "truncated"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 10), "truncated inside its header"),
        (idx_bytes(0x08, (4, 28, 28), bytes(4 * 28 * 28 - 1)), "truncated"),
        (idx_bytes(0x08, (2,), b"abc"), "bytes after"),
    ],
)
def test_idx_corrupt_or_truncated_names_the_file(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=words) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_dimensions_whose_product_overflows_int64(tmp_path: Path) -> None:
    # 65536**4 is 2**64: numpy's int64 product wraps around to 0, which matched an empty payload.
    header = b"\x00\x00\x08\x04" + struct.pack(">IIII", 65536, 65536, 65536, 65536)
    with pytest.raises(DataError, match="truncated"):
        parse_idx(header, "huge")


def test_idx_truncated_gzip_and_wrong_dims_and_missing_file(tmp_path: Path) -> None:
    packed = gzip.compress(idx_bytes(0x08, (100, 28, 28), bytes(100 * 28 * 28)))
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)

    labels = write_idx(tmp_path / "labels", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match="1 dimension"):
        read_idx(labels, ndim=3)
    with pytest.raises(DataError, match="nowhere"):
        read_idx(tmp_path / "nowhere")
    with pytest.raises(DataError, match="<memory>"):
        parse_idx(b"junk", "<memory>")


# --- Fashion-MNIST ---------------------------------------------------------------------------


def test_fashion_mnist_from_root(tmp_path: Path) -> None:
    arrays = write_fashion_files(tmp_path)
    ds = load_fashion_mnist(FashionMNISTParams(root=str(tmp_path)))
    assert isinstance(ds, InMemoryDataset)
    assert ds.name == "fashion_mnist"
    assert ds.train_images.shape == (20, 1, 28, 28) and ds.test_images.shape == (10, 1, 28, 28)
    assert ds.train_images.dtype == torch.float32 and ds.train_labels.dtype == torch.int64
    expected = (torch.from_numpy(arrays["train-images-idx3-ubyte"]).float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(ds.train_images[:, 0], expected)
    assert ds.train_labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and len(ds.classes) == 10
    assert ds.info.in_channels == 1 and ds.info.image_size == (28, 28) and ds.info.num_classes == 10
    assert ds.augment is None


def test_fashion_mnist_torchvision_layout_and_augment(tmp_path: Path) -> None:
    write_fashion_files(tmp_path / "FashionMNIST" / "raw", gz=False)
    ds = load_fashion_mnist(FashionMNISTParams(root=str(tmp_path), augment=True))
    assert ds.train_images.shape[0] == 20
    assert isinstance(ds.augment, RandomCropFlip) and ds.augment.padding == 2 and ds.augment.flip


def test_fashion_mnist_env_var_lookup(no_data_anywhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = no_data_anywhere / "data"
    write_fashion_files(data / "fashion-mnist", train=30)
    monkeypatch.setenv("KDFRAME_DATA", str(data))
    ds = load_fashion_mnist(FashionMNISTParams())
    assert ds.train_images.shape[0] == 30


def test_fashion_mnist_missing_data_message(no_data_anywhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = no_data_anywhere / "empty"
    empty.mkdir()
    monkeypatch.setenv("KDFRAME_DATA", str(empty))
    with pytest.raises(DataError) as info:
        load_fashion_mnist(FashionMNISTParams())
    message = str(info.value)
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "KDFRAME_DATA" in message and "data.params.root" in message and "download" in message
    assert str(empty) in message and str(no_data_anywhere / "no-system-dir") in message


def test_fashion_mnist_partial_and_corrupt_folders(tmp_path: Path) -> None:
    write_fashion_files(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        load_fashion_mnist(FashionMNISTParams(root=str(tmp_path)))

    # Labels from another file: counts differ.
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8))
    with pytest.raises(DataError, match="10 images but .* 7 labels"):
        load_fashion_mnist(FashionMNISTParams(root=str(tmp_path)))

    # A truncated image file is named.
    images = tmp_path / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(10, dtype=np.uint8))
    with pytest.raises(DataError, match="truncated") as info:
        load_fashion_mnist(FashionMNISTParams(root=str(tmp_path)))
    assert str(images) in str(info.value)


def test_fashion_mnist_download_false_never_touches_network(
    no_data_anywhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", forbidden)
    with pytest.raises(DataError, match="Only data.params.root was searched"):
        load_fashion_mnist(FashionMNISTParams(root=str(no_data_anywhere / "nothing")))
    with pytest.raises(DataError, match="not found"):
        load_fashion_mnist(FashionMNISTParams())


def test_fashion_mnist_download_uses_torchvision_and_reports_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    calls: list[tuple[str, bool]] = []

    class FakeFashionMNIST:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append((root, download))
            write_fashion_files(Path(root) / "FashionMNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    ds = load_fashion_mnist(FashionMNISTParams(root=str(tmp_path / "dl"), download=True))
    assert calls == [(str(tmp_path / "dl"), True)] and ds.train_images.shape[0] == 20
    # Found now: no second download.
    load_fashion_mnist(FashionMNISTParams(root=str(tmp_path / "dl"), download=True))
    assert len(calls) == 1

    class OfflineFashionMNIST:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirrors")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", OfflineFashionMNIST)
    with pytest.raises(DataError, match="Downloading Fashion-MNIST into .* failed") as info:
        load_fashion_mnist(FashionMNISTParams(root=str(tmp_path / "offline"), download=True))
    assert "\n" not in str(info.value)


@pytest.mark.skipif(
    not (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (sudo apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDFRAME_DATA", raising=False)
    ds = load_fashion_mnist(FashionMNISTParams(root=str(REAL_FASHION_MNIST)))
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert ds.info.num_classes == 10
    assert torch.bincount(ds.train_labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(ds.test_labels, minlength=10).tolist() == [1000] * 10
    # Normalised with the training set's statistics.
    assert abs(ds.train_images.mean().item()) < 0.01 and abs(ds.train_images.std().item() - 1) < 0.01


# --- CIFAR -----------------------------------------------------------------------------------


def test_cifar10_from_pickles(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path / "cifar-10-batches-py")
    ds = load_cifar10(CifarParams(root=str(tmp_path)))
    assert ds.name == "cifar10"
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.test_images.shape == (6, 3, 32, 32)
    assert ds.train_images.dtype == torch.float32 and ds.train_labels.dtype == torch.int64
    batches = written["batches"]
    expected_labels = [label for _, labels in batches for label in labels]  # type: ignore[union-attr]
    assert ds.train_labels.tolist() == expected_labels
    assert ds.test_labels.tolist() == written["test"][1]  # type: ignore[index]
    assert ds.classes[:3] == ["airplane", "automobile", "bird"] and len(ds.classes) == 10

    # Layout: R, G, B planes of 32x32, row-major; normalised per channel.
    first = written["batches"][0][0][0]  # type: ignore[index]
    mean = torch.tensor([0.4914, 0.4822, 0.4465])
    std = torch.tensor([0.2470, 0.2435, 0.2616])
    for channel in range(3):
        for row, col in ((0, 0), (1, 2), (31, 30)):
            raw = int(first[channel * 1024 + row * 32 + col])
            value = (raw / 255 - mean[channel]) / std[channel]
            assert ds.train_images[0, channel, row, col].item() == pytest.approx(value.item(), abs=1e-5)
    assert isinstance(ds.augment, RandomCropFlip) and ds.augment.padding == 4 and ds.augment.flip
    assert load_cifar10(CifarParams(root=str(tmp_path), augment=False)).augment is None


def test_cifar10_root_may_be_the_folder_and_env_lookup(
    no_data_anywhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = no_data_anywhere / "data" / "cifar-10-batches-py"
    write_cifar10(folder, per_batch=2, test=3)
    assert load_cifar10(CifarParams(root=str(folder))).train_images.shape[0] == 10
    monkeypatch.setenv("KDFRAME_DATA", str(no_data_anywhere / "data"))
    assert load_cifar10(CifarParams()).test_images.shape[0] == 3


def test_cifar100_from_pickles(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path / "cifar-100-python")
    ds = load_cifar100(CifarParams(root=str(tmp_path), augment=False))
    assert ds.name == "cifar100"
    assert ds.train_images.shape == (12, 3, 32, 32) and ds.test_images.shape == (5, 3, 32, 32)
    assert ds.train_labels.tolist() == written["train"][1]  # type: ignore[index]
    assert ds.test_labels.tolist() == written["test"][1]  # type: ignore[index]
    assert len(ds.classes) == 100 and ds.classes[7] == "fine7"
    assert ds.info.num_classes == 100 and ds.info.in_channels == 3


def test_cifar_missing_and_corrupt(
    no_data_anywhere: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    monkeypatch.setattr(socket.socket, "connect", lambda *a: (_ for _ in ()).throw(AssertionError("network")))
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", None)
    with pytest.raises(DataError) as info:
        load_cifar10(CifarParams())
    message = str(info.value)
    assert "CIFAR-10 not found" in message and "KDFRAME_DATA" in message and "download" in message
    assert "cifar-10-python.tar.gz" in message

    folder = tmp_path / "c100" / "cifar-100-python"
    write_cifar100(folder)
    (folder / "test").write_bytes(b"\x80\x02}q\x00(")  # a truncated pickle
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        load_cifar100(CifarParams(root=str(tmp_path / "c100")))
    assert str(folder / "test") in str(info.value)

    (folder / "meta").unlink()
    with pytest.raises(DataError, match="lacks meta"):
        load_cifar100(CifarParams(root=str(tmp_path / "c100")))


def test_cifar_bad_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    write_cifar100(folder)
    with open(folder / "test", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}, handle)
    with pytest.raises(DataError, match="labels outside 0..99"):
        load_cifar100(CifarParams(root=str(tmp_path)))


class _WritesMarker:
    """An object whose unpickling runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


@pytest.mark.parametrize("damaged", ["batches.meta", "data_batch_1", "test_batch"])
def test_cifar_pickle_with_code_never_runs_even_in_validate(tmp_path: Path, damaged: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    marker = tmp_path / "marker"
    with open(folder / damaged, "wb") as handle:
        pickle.dump({b"label_names": [b"a"], b"data": _WritesMarker(marker), b"labels": [0]}, handle, protocol=2)
    with pytest.raises(DataError, match=r"refused without running anything") as info:
        load_cifar10(CifarParams(root=str(tmp_path)))
    assert str(folder / damaged) in str(info.value) and "getattr, which CIFAR" in str(info.value)
    assert not marker.exists()
    if damaged != "batches.meta":
        return
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps({
        "name": "c", "data": {"dataset": "cifar10", "params": {"root": str(tmp_path)}},
        "models": {"student": {"arch": "plain_cnn", "params": {"depth": 2}}},
        "curriculum": {"name": "direct", "params": {"student": "student"}},
    }))
    completed = subprocess.run(
        [sys.executable, "-m", "kdframe", "validate", str(schedule)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 2, completed.stderr
    assert "refused without running anything" in completed.stderr and "Traceback" not in completed.stderr
    assert not marker.exists()


def test_cifar_labels_that_are_not_indices(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    write_cifar100(folder)
    with open(folder / "test", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": "ab"}, handle)
    with pytest.raises(DataError, match="must be a list of class indices"):
        load_cifar100(CifarParams(root=str(tmp_path)))


# --- synthetic -------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_shaped() -> None:
    params = SyntheticParams(num_classes=4, channels=3, image_size=8, train_size=40, test_size=20, seed=3)
    first, second = make_synthetic(params), make_synthetic(params)
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)
    other = make_synthetic(params.model_copy(update={"seed": 4}))
    assert not torch.equal(first.train_images, other.train_images)
    assert first.train_images.shape == (40, 3, 8, 8) and first.test_images.shape == (20, 3, 8, 8)
    assert first.train_images.dtype == torch.float32 and first.train_labels.dtype == torch.int64
    assert torch.bincount(first.train_labels).tolist() == [10, 10, 10, 10]
    assert first.classes == ["class_0", "class_1", "class_2", "class_3"]
    big = make_synthetic(SyntheticParams(train_size=2000))
    assert abs(big.train_images.mean().item()) < 0.1 and abs(big.train_images.std().item() - 1) < 0.1
    with pytest.raises(ValidationError):
        SyntheticParams(num_classes=1)


def test_synthetic_is_learnable() -> None:
    ds = make_synthetic(SyntheticParams())
    torch.manual_seed(0)
    model = torch.nn.Linear(16 * 16, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = ds.train_images.flatten(1), ds.train_labels
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    accuracy = (model(ds.test_images.flatten(1)).argmax(1) == ds.test_labels).float().mean().item()
    assert accuracy > 0.6  # chance is 0.1


# --- augmentation ----------------------------------------------------------------------------


def test_augment_shape_and_determinism() -> None:
    images = torch.randn(128, 3, 32, 32)
    augment = random_crop_flip(4, flip=True)
    out1 = augment(images, torch.Generator().manual_seed(7))
    out2 = augment(images, torch.Generator().manual_seed(7))
    out3 = augment(images, torch.Generator().manual_seed(8))
    assert out1.shape == images.shape and out1.dtype == images.dtype
    assert torch.equal(out1, out2) and not torch.equal(out1, out3)
    assert random_crop_flip(0, flip=False)(images, torch.Generator()) is images


def test_augment_flip_only() -> None:
    images = torch.randn(64, 2, 5, 7)
    out = random_crop_flip(0, flip=True)(images, torch.Generator().manual_seed(0))
    same = (out == images).flatten(1).all(1)
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 10 < int(flipped.sum()) < 54  # about half flipped


@pytest.mark.parametrize("flip", [False, True])
def test_augment_crops_are_shifted_windows(flip: bool) -> None:
    images = torch.randn(256, 3, 6, 5)
    pad = 1
    out = random_crop_flip(pad, flip=flip)(images, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    seen: set[tuple[int, int, bool]] = set()

    def window(n: int, dy: int, dx: int) -> torch.Tensor:
        return padded[n, :, dy : dy + 6, dx : dx + 5]

    for n in range(images.shape[0]):
        matches = [
            (dy, dx, mirrored)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for mirrored in ((False, True) if flip else (False,))
            if torch.equal(out[n], window(n, dy, dx).flip(-1) if mirrored else window(n, dy, dx))
        ]
        assert len(matches) == 1, f"sample {n} is not a single window of the padded image"
        seen.add(matches[0])
    # Every offset (and, with flip, both orientations) occurs in a batch this size.
    assert len(seen) == 9 * (2 if flip else 1)


# --- registration ----------------------------------------------------------------------------


def test_registered_through_a_plugin_manager() -> None:
    plugins = create_plugins(load_entry_points=False, plugins=[("kdframe_data", kdframe_data)])
    registry = plugins.registry
    assert registry.names("dataset") == ["cifar10", "cifar100", "fashion_mnist", "image_folder", "synthetic"]
    spec = registry.spec("dataset", "synthetic")
    ds = spec.factory(spec.params(train_size=20, test_size=10))
    assert isinstance(ds, InMemoryDataset) and ds.train_images.shape[0] == 20
    assert registry.get("dataset", "synthetic").provider.plugin == "kdframe_data"


#: Params without a default, by dataset.
REQUIRED_PARAMS = {"image_folder": {"root": "/data/images"}}


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "fashion_mnist", "image_folder", "synthetic"])
def test_every_spec_follows_the_contract(name: str) -> None:
    plugins = create_plugins(load_entry_points=False, plugins=[("kdframe_data", kdframe_data)])
    spec = plugins.registry.spec("dataset", name)
    assert spec.family == "image" and spec.summary and "\n" not in spec.summary
    assert spec.params.model_config.get("extra") == "forbid"
    for field_name, field in spec.params.model_fields.items():
        assert field.description, f"{name}.{field_name} has no description"
    spec.params(**REQUIRED_PARAMS.get(name, {}))  # every other field has a default
    with pytest.raises(ValidationError):
        spec.params(no_such_field=1)
