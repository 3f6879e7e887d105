"""The ``image_folder`` dataset: a folder of PNGs read through the DataLoader (streaming) path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from kdframe_data.image_folder import ImageFolderParams, load_image_folder
from PIL import Image
from pydantic import ValidationError

from kdframe import DataError, ScheduleError, StreamingDataset, hookimpl, teacher_cache
from kdframe.checkpoints import load_state_dict
from kdframe.data import eval_batches, train_batches
from kdframe.errors import PluginError
from kdframe.plugins import create_plugins
from kdframe.runner import resume_run, run_schedule
from kdframe.teacher_cache import TeacherCacheWarning
from kdframe.testing import tiny_schedule, write_schedule

CLASSES = ["cat", "dog", "frog"]
#: A colour per class, so that even a tiny model learns the classes in an epoch or two.
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 210)]


def write_folder(
    root: Path, train_per_class: int = 8, test_per_class: int = 4, size: int = 8, seed: int = 0
) -> Path:
    """``root/train/<class>/NN.png`` and ``root/test/<class>/NN.png``: the class's colour plus noise."""
    generator = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                noise = generator.integers(-30, 31, size=(size, size, 3))
                pixels = np.clip(np.array(COLOURS[label]) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels, "RGB").save(folder / f"{index:02d}.png")
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "images")


@pytest.fixture(autouse=True)
def fresh_teacher_store() -> None:
    """The process's teacher-output store warns once per message: start each test with a new one."""
    teacher_cache.clear_default_store()


def test_loads_classes_labels_and_normalised_images(folder: Path) -> None:
    data = load_image_folder(ImageFolderParams(root=str(folder)))
    assert isinstance(data, StreamingDataset)
    assert data.classes == CLASSES
    assert (data.train_count, data.test_count) == (24, 12)
    info = data.info
    assert (info.name, info.num_classes, info.in_channels, info.image_size) == ("image_folder", 3, 3, (8, 8))
    # Ordered by class, then file name.
    labels = [data.train[index][1] for index in range(data.train_count)]
    assert labels == [0] * 8 + [1] * 8 + [2] * 8
    image, label = data.test[5]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and label == 1
    # Computed normalisation: the training pixels have mean 0 and standard deviation 1 per channel.
    stacked = torch.stack([data.train[index][0] for index in range(data.train_count)])
    assert torch.allclose(stacked.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(stacked.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    assert data.sample_images(2).shape == (2, 3, 8, 8)


def test_greyscale_resize_and_given_normalisation(folder: Path) -> None:
    data = load_image_folder(ImageFolderParams(root=str(folder), grayscale=True, image_size=12, mean=[0.5], std=[0.25]))
    assert (data.info.in_channels, data.info.image_size) == (1, (12, 12))
    image, _ = data.train[0]
    assert image.shape == (1, 12, 12)
    source = Image.open(folder / "train" / "cat" / "00.png").convert("L").resize((12, 12), Image.Resampling.BILINEAR)
    expected = (torch.from_numpy(np.asarray(source, dtype=np.float32)) / 255.0 - 0.5) / 0.25
    assert torch.allclose(image[0], expected, atol=1e-6)


def test_params_are_checked() -> None:
    with pytest.raises(ValidationError, match="both mean and std"):
        ImageFolderParams(root="x", mean=[0.5])
    with pytest.raises(ValidationError, match="1 or 3 values"):
        ImageFolderParams(root="x", mean=[0.5, 0.5], std=[0.2, 0.2])
    with pytest.raises(ValidationError, match="> 0"):
        ImageFolderParams(root="x", grayscale=True, mean=[0.5], std=[0.0])
    with pytest.raises(ValidationError):
        ImageFolderParams()  # root is required


def test_missing_or_empty_folders_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a folder"):
        load_image_folder(ImageFolderParams(root=str(tmp_path / "nowhere")))
    (tmp_path / "a" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"Found no valid file for the classes cat"):
        load_image_folder(ImageFolderParams(root=str(tmp_path / "a")))
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=r"train' is not a folder"):
        load_image_folder(ImageFolderParams(root=str(tmp_path / "b")))
    good = write_folder(tmp_path / "c", train_per_class=1, test_per_class=1)
    (good / "test" / "owl").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) \['owl'\]"):
        load_image_folder(ImageFolderParams(root=str(good)))
    no_test = write_folder(tmp_path / "d", train_per_class=1, test_per_class=1)
    for path in (no_test / "test").rglob("*.png"):
        path.unlink()
    with pytest.raises(DataError, match="holds no image files"):
        load_image_folder(ImageFolderParams(root=str(no_test)))


def test_entries_named_like_images_that_are_not_files_are_refused_before_training(folder: Path) -> None:
    (folder / "train" / "cat" / "broken.png").symlink_to(folder / "nowhere.png")
    os.mkfifo(folder / "train" / "dog" / "pipe.png")
    with pytest.raises(DataError, match=r"broken.png.*pipe.png.* not a regular file"):
        load_image_folder(ImageFolderParams(root=str(folder), mean=[0.5], std=[0.5]))


def test_a_corrupt_image_read_by_a_worker_is_one_clear_error(folder: Path, tmp_path: Path) -> None:
    (folder / "train" / "dog" / "03.png").write_bytes(b"not a png at all")
    path = write_schedule(tmp_path, kd_schedule(folder, **{"data.num_workers": 2, "data.params.mean": [0.5], "data.params.std": [0.5]}))
    completed = subprocess.run(
        [sys.executable, "-m", "kdframe", "run", str(path), "--out", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 2, completed.stderr
    assert "cannot read" in completed.stderr and "03.png" in completed.stderr
    assert "Traceback" not in completed.stderr and "worker" not in completed.stderr


def test_images_of_another_size_need_image_size(folder: Path) -> None:
    Image.new("RGB", (10, 10)).save(folder / "train" / "dog" / "99.png")
    data = load_image_folder(ImageFolderParams(root=str(folder), mean=[0.5], std=[0.5]))
    odd = next(index for index, (path, _) in enumerate(data.train.samples) if path.endswith("99.png"))
    with pytest.raises(DataError, match="data.params.image_size"):
        data.train[odd]
    resized = load_image_folder(ImageFolderParams(root=str(folder), image_size=8, mean=[0.5], std=[0.5]))
    assert resized.train[odd][0].shape == (3, 8, 8)


def epoch(data: StreamingDataset, seed: int, workers: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return list(
        train_batches(data, 5, generator=generator, drop_last=True, device=torch.device("cpu"), num_workers=workers)
    )


def test_order_is_fixed_by_the_seed_and_batches_hold_their_samples(folder: Path) -> None:
    data = load_image_folder(ImageFolderParams(root=str(folder)))
    first, again, other = epoch(data, 1), epoch(data, 1), epoch(data, 2)
    assert len(first) == 24 // 5  # the last incomplete batch is dropped
    order = torch.cat([indices for _, _, indices in first])
    assert order.tolist() == torch.randperm(24, generator=torch.Generator().manual_seed(1))[:20].tolist()
    assert order.tolist() == torch.cat([indices for _, _, indices in again]).tolist()
    assert order.tolist() != torch.cat([indices for _, _, indices in other]).tolist()
    for images, labels, indices in first:
        for image, label, index in zip(images, labels, indices.tolist()):
            assert torch.equal(image, data.train[index][0]) and int(label) == data.train[index][1]
    evaluated = list(eval_batches(data, 5, device=torch.device("cpu")))
    assert torch.cat([indices for _, _, indices in evaluated]).tolist() == list(range(12))


def test_augmentation_depends_on_the_seed_not_on_the_workers(folder: Path) -> None:
    data = load_image_folder(ImageFolderParams(root=str(folder), augment=True))
    plain = load_image_folder(ImageFolderParams(root=str(folder)))
    in_process, in_workers = epoch(data, 3), epoch(data, 3, workers=2)
    for (a, la, ia), (b, lb, ib) in zip(in_process, in_workers):
        assert torch.equal(a, b) and torch.equal(la, lb) and torch.equal(ia, ib)
    augmented = torch.cat([images for images, _, _ in in_process])
    indices = torch.cat([index for _, _, index in in_process]).tolist()
    original = torch.stack([plain.train[index][0] for index in indices])
    assert augmented.shape == original.shape and not torch.equal(augmented, original)
    assert not torch.equal(augmented, torch.cat([images for images, _, _ in epoch(data, 4)]))


def kd_schedule(root: Path, **changes: object) -> dict:
    """Teacher -> student KD on the folder: 2 epochs, 4 batches of 6 an epoch."""
    schedule = tiny_schedule(
        **{
            "data": {"dataset": "image_folder", "params": {"root": str(root)}, "batch_size": 6, "eval_batch_size": 8},
            "models": {
                "teacher": {"arch": "plain_cnn", "params": {"depth": 2}},
                "student": {"arch": "plain_cnn", "params": {"depth": 2, "width_multiplier": 0.5}},
            },
            "curriculum": {"name": "direct", "params": {"teacher": "teacher", "student": "student"}},
            "distill": {"losses": [{"name": "hinton_kd", "weight": 1.0}]},
            "logging.loggers": [],
            "training.lr_schedule.warmup_epochs": 0.0,
            "training.optimizer": {"name": "adam", "lr": 0.01},
            **changes,
        }
    )
    return schedule


def student_weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {stage.name: load_state_dict(stage / "student.pt") for stage in sorted((run / "stages").iterdir())}


def test_kd_runs_end_to_end_on_a_folder(tmp_path: Path, folder: Path) -> None:
    path = write_schedule(tmp_path, kd_schedule(folder, **{"data.params.augment": True, "data.num_workers": 2}))
    with pytest.warns(TeacherCacheWarning, match="streaming"):
        run, results = run_schedule(path, out=tmp_path / "run", quiet=True)
    assert [result.stage for result in results] == ["teacher", "student"]
    assert all(result.epochs_run == 2 for result in results)
    assert results[0].final_test_acc > 100 / 3  # the colours are easy: better than chance
    assert json.loads((run / "results.json").read_text())["finished"] is True


def test_subset_and_explicit_teacher_cache(tmp_path: Path, folder: Path) -> None:
    path = write_schedule(tmp_path, kd_schedule(folder, **{"training.teacher_cache": "memory"}))
    with pytest.raises(ScheduleError, match=r"training.teacher_cache is 'memory', but dataset 'image_folder' is a streaming"):
        run_schedule(path, out=tmp_path / "refused", quiet=True)
    subset = write_schedule(tmp_path, kd_schedule(folder, **{"data.train_samples": 12, "data.test_samples": 6, "training.epochs": 1}), "subset.json")
    with pytest.warns(TeacherCacheWarning):
        _, results = run_schedule(subset, out=tmp_path / "subset", quiet=True)
    assert [result.epochs_run for result in results] == [1, 1]


class FailOnce:
    """Raises once at (stage index, epoch, batch)."""

    def __init__(self, at: tuple[int, int, int]) -> None:
        self.at = at

    @hookimpl
    def kdframe_on_batch_start(self, stage, state) -> None:
        if (stage.index, state.epoch, state.batch) == self.at:
            raise OSError("interrupted")


@pytest.mark.filterwarnings("ignore::kdframe.teacher_cache.TeacherCacheWarning")
def test_resume_of_a_streaming_run_matches_an_uninterrupted_one(tmp_path: Path, folder: Path) -> None:
    path = write_schedule(tmp_path, kd_schedule(folder, **{"data.params.augment": True}))
    reference, _ = run_schedule(path, out=tmp_path / "reference", quiet=True)
    failing = create_plugins(plugins=[("fail", FailOnce((1, 1, 2)))])  # stage 'student', epoch 2, batch 3
    with pytest.raises(PluginError):
        run_schedule(path, out=tmp_path / "run", quiet=True, plugins=failing)
    resume_run(tmp_path / "run", quiet=True)
    got, want = student_weights(tmp_path / "run"), student_weights(reference)
    assert got.keys() == want.keys() == {"00-teacher", "01-student"}
    for stage in want:
        for name, value in want[stage].items():
            assert torch.equal(got[stage][name], value), f"{stage}: {name} differs"


def test_a_val_folder_is_the_validation_split_and_selects(tmp_path: Path, folder: Path) -> None:
    val = write_folder(tmp_path / "val-source", train_per_class=2, test_per_class=1, seed=5) / "train"
    val.rename(folder / "val")
    data = load_image_folder(ImageFolderParams(root=str(folder)))
    assert (data.train_count, data.val_count, data.test_count) == (24, 6, 12)
    batches = list(eval_batches(data, 4, device=torch.device("cpu"), split="val"))
    assert sum(int(images.shape[0]) for images, _, _ in batches) == 6
    assert torch.cat([labels for _, labels, _ in batches]).tolist() == [0, 0, 1, 1, 2, 2]
    schedule = tiny_schedule(**{"data.dataset": "image_folder", "data.params": {"root": str(folder)}, "logging.loggers": []})
    schedule["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    run_folder, (result,) = run_schedule(write_schedule(tmp_path, schedule), out=tmp_path / "run", quiet=True)
    assert result.selected_by == "val" and result.best_val_acc is not None


def test_a_val_folder_with_an_unknown_class_is_refused(folder: Path) -> None:
    (folder / "val" / "horse").mkdir(parents=True)
    with pytest.raises(DataError, match="val' has class folder\\(s\\) \\['horse'\\]"):
        load_image_folder(ImageFolderParams(root=str(folder)))
