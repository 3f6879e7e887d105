"""Teacher-output caching: equal results, refusal with augmentation, reuse across stages and runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from kdframe import DatasetSpec, hookimpl
from kdframe.errors import ScheduleError, TrainingError
from kdframe.features import FeatureTap
from kdframe.plugins import create_plugins
from kdframe.runner import execute, load_schedule, make_run_folder, prepare, run_schedule
from kdframe.teacher_cache import TeacherCache, TeacherCacheWarning, clear_default_store, default_store
from kdframe_data.augment import random_crop_flip
from kdframe_data.synthetic import SyntheticParams, make_synthetic
from tests.conftest import tiny_schedule, write_schedule


@pytest.fixture(autouse=True)
def fresh_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with an empty in-process store and its own disk cache folder."""
    monkeypatch.setenv("KDFRAME_CACHE_DIR", str(tmp_path / "cache"))
    clear_default_store()
    yield
    clear_default_store()


def kd_schedule(cache: str, checkpoint: str | None = None, **changes) -> dict:
    """A student distilled with Hinton KD and a FitNets hint from a teacher (trained first unless
    ``checkpoint`` is given)."""
    teacher = {"arch": "plain_cnn", "params": {"depth": 4}}
    if checkpoint is not None:
        teacher["checkpoint"] = checkpoint
    return tiny_schedule(
        **{
            "curriculum": {"name": "direct", "params": {"teacher": "teacher", "student": "student"}},
            "models": {"teacher": teacher, "student": {"arch": "plain_cnn", "params": {"depth": 2}}},
            "distill.losses": [
                {"name": "cross_entropy", "weight": 0.1},
                {"name": "hinton_kd", "weight": 0.9, "params": {"temperature": 4.0}},
                {"name": "fitnet", "weight": 0.5, "params": {"layers": [{"student": "features.1", "teacher": "features.2"}]}},
            ],
            "training.teacher_cache": cache,
            "logging.loggers": [],
            **changes,
        }
    )


def student_weights(folder: Path, stage: str) -> dict[str, torch.Tensor]:
    return torch.load(folder / "stages" / stage / "student.pt", weights_only=True)["state_dict"]


def run(folder: Path, name: str, schedule: dict, plugins=None) -> tuple[Path, list]:
    path = write_schedule(folder, schedule, f"{name}.json")
    return run_schedule(path, out=folder / name, quiet=True, plugins=plugins)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, list]:
    """A trained teacher's checkpoint, and the uncached KD run from it (folder and results)."""
    folder = tmp_path_factory.mktemp("trained")
    teacher_folder, _ = run(folder, "teacher", tiny_schedule(**{
        "curriculum": {"name": "direct", "params": {"student": "teacher"}}, "logging.loggers": []
    }))
    checkpoint = str(teacher_folder / "stages" / "00-teacher" / "student.pt")
    plain_folder, plain = run(folder, "off", kd_schedule("off", checkpoint))
    return checkpoint, plain_folder, plain


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_run_equals_uncached_run(tmp_path: Path, trained, mode: str) -> None:
    checkpoint, plain_folder, plain = trained
    cached_folder, cached = run(tmp_path, mode, kd_schedule(mode, checkpoint))
    assert default_store().computed == 1  # the teacher ran over the training split once
    if mode == "disk":
        entries = list((tmp_path / "cache" / "teacher-outputs").iterdir())
        assert len(entries) == 1 and (entries[0] / "logits.npy").is_file()
        assert len(list(entries[0].glob("feature-*.npy"))) == 1
    expected = student_weights(plain_folder, "00-student")
    actual = student_weights(cached_folder, "00-student")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
    assert [r.final_test_acc for r in cached] == pytest.approx([r.final_test_acc for r in plain], abs=1.6)


def test_the_teacher_forward_runs_once_for_two_stages(tmp_path: Path, trained) -> None:
    # DGKD: the teacher (from a checkpoint) teaches the assistant, then the student with the assistant.
    schedule = tiny_schedule(**{
        "curriculum": {"name": "dgkd", "params": {"teacher": "teacher", "assistants": ["assistant"], "student": "student"}},
        "models.teacher.checkpoint": trained[0],
        "training.epochs": 1,
        "logging.loggers": [],
        "compression.enabled": False,  # its timing would call the teacher too
    })
    path = write_schedule(tmp_path, schedule, "dgkd.json")
    loaded, plugins, resolved = load_schedule(path)
    experiment = prepare(loaded, plugins, resolved)
    calls = []
    experiment.models["teacher"].register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    execute(experiment, make_run_folder(loaded, tmp_path / "run"), quiet=True)
    assert [setup.info.name for setup in experiment.setups] == ["assistant", "student"]
    train_size, eval_batch = 128, 64
    # One pass over the training split in eval batches, plus the first batch again (the randomness check).
    assert sum(calls) == train_size + eval_batch
    assert default_store().computed == 2  # the teacher once, the assistant once


def test_later_runs_reuse_the_cache_in_memory_and_on_disk(tmp_path: Path, trained) -> None:
    checkpoint = trained[0]
    run(tmp_path, "first", kd_schedule("auto", checkpoint, **{"training.epochs": 1}))
    assert default_store().computed == 1
    run(tmp_path, "second", kd_schedule("auto", checkpoint, **{"training.epochs": 1, "seed": 1}))
    assert default_store().computed == 1
    assert not (tmp_path / "cache").exists()  # 'auto' keeps small outputs in memory only
    # A new process (an empty store) finds the outputs on disk when they were written there.
    clear_default_store()
    run(tmp_path, "third", kd_schedule("disk", checkpoint, **{"training.epochs": 1}))
    assert default_store().computed == 1
    clear_default_store()
    run(tmp_path, "fourth", kd_schedule("memory", checkpoint, **{"training.epochs": 1}))
    assert default_store().computed == 0


@pytest.mark.parametrize("damage", ["object_dtype", "truncated", "wrong_rows", "meta"])
def test_a_damaged_disk_entry_is_recomputed_with_a_warning(tmp_path: Path, trained, damage: str) -> None:
    import numpy as np

    checkpoint = trained[0]
    schedule = kd_schedule("disk", checkpoint, **{"training.epochs": 1})
    _, first = run(tmp_path, "first", schedule)
    (entry,) = list((tmp_path / "cache" / "teacher-outputs").iterdir())
    logits = entry / "logits.npy"
    if damage == "object_dtype":  # "Array can't be memory-mapped"; never unpickled
        np.save(logits, np.array([object()] * 3, dtype=object), allow_pickle=True)
    elif damage == "truncated":
        logits.write_bytes(logits.read_bytes()[:100])
    elif damage == "wrong_rows":
        np.save(logits, np.zeros((3, 10), np.float32))
    else:
        (entry / "meta.json").write_text("{not json")
    clear_default_store()
    with pytest.warns(RuntimeWarning, match=r"damaged .* computed again"):
        _, second = run(tmp_path, "second", schedule)
    assert default_store().computed == 1
    assert [r.final_test_acc for r in second] == [r.final_test_acc for r in first]
    assert np.load(logits, mmap_mode="r").dtype == np.float32  # the entry was written anew


class AugmentedSynthetic:
    """A test plugin: the synthetic dataset with random crop/flip augmentation."""

    @hookimpl
    def kdframe_register_datasets(self) -> list[DatasetSpec]:
        def factory(params: SyntheticParams):
            data = make_synthetic(params)
            data.augment = random_crop_flip(1)
            return data

        return [DatasetSpec(name="augmented_synthetic", summary="Synthetic data, augmented.", factory=factory, params=SyntheticParams)]


def augmented(cache: str, **changes) -> dict:
    return kd_schedule(cache, None, **{"data.dataset": "augmented_synthetic", **changes})


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_explicit_cache_with_augmentation_is_refused_before_training(tmp_path: Path, mode: str) -> None:
    plugins = create_plugins(plugins=[("augmented", AugmentedSynthetic())])
    with pytest.raises(ScheduleError, match=rf"training.teacher_cache is '{mode}', but dataset 'synthetic' augments") as error:
        run(tmp_path, "refused", augmented(mode), plugins)
    assert "data.params.augment=false" in str(error.value)
    assert not (tmp_path / "refused").exists()  # nothing trained, no run folder


def test_a_stage_override_is_named_in_the_refusal(tmp_path: Path) -> None:
    plugins = create_plugins(plugins=[("augmented", AugmentedSynthetic())])
    schedule = augmented("auto", **{"training.stages": {"student": {"teacher_cache": "memory"}}})
    with pytest.raises(ScheduleError, match=r"training.stages.student.teacher_cache is 'memory'"):
        run(tmp_path, "refused", schedule, plugins)


def test_auto_with_augmentation_runs_the_teacher_and_says_so_once(tmp_path: Path) -> None:
    plugins = create_plugins(plugins=[("augmented", AugmentedSynthetic())])
    with pytest.warns(TeacherCacheWarning, match="augments its training batches") as caught:
        run(tmp_path, "auto", augmented("auto", **{"training.epochs": 1}), plugins)
        run(tmp_path, "again", augmented("auto", **{"training.epochs": 1}), plugins)
    assert len([w for w in caught if issubclass(w.category, TeacherCacheWarning)]) == 1
    assert default_store().computed == 0


class NoisyTeacher(nn.Module):
    """A teacher whose eval-mode output is random."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) + torch.randn(x.shape[0], 3)


def cache_outputs(store: TeacherCache, teacher: nn.Module, images: torch.Tensor, mode: str, tap=None):
    return store.outputs(
        teacher.eval(), tap, images, mode=mode, batch_size=3, channels_last=False,
        precision_name="fp32", device=torch.device("cpu"), label="teacher 't'",
    )


def test_a_random_teacher_is_not_cached(tmp_path: Path) -> None:
    images = torch.randn(10, 1, 2, 2)
    store = TeacherCache(directory=tmp_path)
    with pytest.warns(TeacherCacheWarning, match="teacher 't' gives different outputs"):
        assert cache_outputs(store, NoisyTeacher(), images, "auto") is None
    with pytest.raises(TrainingError, match="training.teacher_cache is 'memory', but teacher 't' gives different"):
        cache_outputs(store, NoisyTeacher(), images, "memory")
    assert store.computed == 0


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_gathered_rows_equal_the_teachers_outputs(tmp_path: Path, mode: str) -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    tap = FeatureTap(teacher, ["2"], "teacher")
    images = torch.randn(10, 1, 2, 2)
    store = TeacherCache(directory=tmp_path)
    entry = cache_outputs(store, teacher, images, mode, tap)
    assert entry.on_disk == (mode == "disk")
    indices = torch.tensor([7, 0, 9, 3])
    gathered = entry.gather(indices, torch.device("cpu"))
    with torch.no_grad():
        expected_logits = teacher(images[indices])
    expected_hidden = tap.take()["2"]
    torch.testing.assert_close(gathered.logits, expected_logits)
    torch.testing.assert_close(gathered.features["2"], expected_hidden)
    # Same teacher, same data: the store answers without running it; changed weights: a new key.
    assert cache_outputs(store, teacher, images, mode, tap) is entry
    with torch.no_grad():
        teacher[1].weight.add_(1.0)
    assert cache_outputs(store, teacher, images, mode, tap) is not entry
    assert store.computed == 2
