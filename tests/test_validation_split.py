"""The validation split: carved deterministically, shipped by a dataset, and the only split that selects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdframe import DatasetSpec, hookimpl
from kdframe.errors import DataError, ScheduleError
from kdframe.results import format_table
from kdframe.runner import load_data, load_schedule, run_schedule
from kdframe.testing import make_plugins, tiny_schedule, write_schedule
from kdframe_data.synthetic import SyntheticParams, make_synthetic


def direct(**changes) -> dict:
    schedule = tiny_schedule(**{"logging.loggers": [], "compression.enabled": False, **changes})
    schedule["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    return schedule


def data_of(tmp_path: Path, schedule: dict, *plugins):
    loaded, registry_plugins, _ = load_schedule(write_schedule(tmp_path, schedule), plugins=make_plugins(*plugins) if plugins else None)
    return load_data(loaded, registry_plugins)


def test_a_carved_split_is_seeded_disjoint_and_the_same_for_every_run_seed(tmp_path: Path) -> None:
    first = data_of(tmp_path, direct(**{"data.validation_samples": 32}))
    other_seed = data_of(tmp_path, direct(**{"data.validation_samples": 32, "seed": 7}))
    other_split = data_of(tmp_path, direct(**{"data.validation_samples": 32, "data.validation_seed": 1}))
    assert (first.train_count, first.val_count, first.test_count) == (96, 32, 64)
    assert torch.equal(first.val_images, other_seed.val_images)  # the run's seed does not move it
    assert not torch.equal(first.val_images, other_split.val_images)
    full = make_synthetic(SyntheticParams(num_classes=4, image_size=16, train_size=128, test_size=64))
    rows = {tuple(image.flatten().tolist()) for image in full.train_images}
    held = {tuple(image.flatten().tolist()) for image in first.val_images}
    kept = {tuple(image.flatten().tolist()) for image in first.train_images}
    assert held <= rows and kept <= rows and not held & kept and len(held | kept) == 128


def test_a_fraction_and_train_samples_come_from_the_rest(tmp_path: Path) -> None:
    data = data_of(tmp_path, direct(**{"data.validation_fraction": 0.25, "data.train_samples": 50}))
    assert (data.train_count, data.val_count) == (50, 32)
    held = {tuple(image.flatten().tolist()) for image in data.val_images}
    assert not held & {tuple(image.flatten().tolist()) for image in data.train_images}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data.validation_samples": 128}, r"data.validation_samples: holding out 128 of the 128 training samples .* leaves none to train on"),
        ({"data.validation_fraction": 0.001}, r"data.validation_fraction: 0.001 of the 128 training samples .* is no sample at all"),
    ],
)
def test_a_split_that_leaves_nothing_is_refused(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        data_of(tmp_path, direct(**changes))


def test_samples_and_fraction_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match="validation_samples or validation_fraction, not both"):
        load_schedule(write_schedule(tmp_path, direct(**{"data.validation_samples": 8, "data.validation_fraction": 0.1})))


class ShippedValidation:
    """A test plugin: synthetic data whose test labels can be scrambled, with its own validation split."""

    @hookimpl
    def kdframe_register_datasets(self) -> list[DatasetSpec]:
        class Params(SyntheticParams):
            scramble_test: bool = False
            ship_val: bool = True

        def factory(params: Params):
            data = make_synthetic(SyntheticParams(**params.model_dump(exclude={"scramble_test", "ship_val"})))
            if params.ship_val:
                data.val_images, data.val_labels = data.train_images[:40], data.train_labels[:40]
                data.train_images, data.train_labels = data.train_images[40:], data.train_labels[40:]
            if params.scramble_test:
                data.test_labels = torch.randperm(data.test_count, generator=torch.Generator().manual_seed(3)) % 4
            return data

        return [DatasetSpec(name="shipped_val", summary="Synthetic data with a validation split.", factory=factory, params=Params)]


def run_shipped(tmp_path: Path, name: str, **params) -> tuple[Path, dict]:
    schedule = direct(
        **{
            "data.dataset": "shipped_val",
            "data.params": {"num_classes": 4, "image_size": 16, "train_size": 128, "test_size": 64, "noise": 3.0, **params},
            "training.epochs": 5,
        }
    )
    folder, _ = run_schedule(write_schedule(tmp_path, schedule, f"{name}.json"), out=tmp_path / name, quiet=True, plugins=make_plugins(("shipped", ShippedValidation())))
    return folder, json.loads((folder / "results.json").read_text())["stages"][0]


def test_selection_never_reads_the_test_split(tmp_path: Path) -> None:
    """Scrambling the test labels changes every test accuracy but not the selected epoch, the
    validation accuracies or the trained weights: nothing that selects reads the test split."""
    honest_folder, honest = run_shipped(tmp_path, "honest")
    scrambled_folder, scrambled = run_shipped(tmp_path, "scrambled", scramble_test=True)
    assert honest["selected_by"] == scrambled["selected_by"] == "val"
    for key in ("best_epoch", "best_val_acc", "final_val_acc", "collapsed"):
        assert honest[key] == scrambled[key], key
    assert honest["final_test_acc"] != scrambled["final_test_acc"]
    weights = [torch.load(folder / "stages" / "00-student" / "student.pt", weights_only=True)["state_dict"] for folder in (honest_folder, scrambled_folder)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_the_best_epoch_is_the_best_by_validation_with_the_test_accuracy_there(tmp_path: Path) -> None:
    folder, row = run_shipped(tmp_path, "run")
    state = torch.load(folder / "stages" / "00-student" / "state.pt", weights_only=True)
    history = state["trainer"]["outcome"]["history"]
    val = [epoch["val/acc"] for epoch in history]
    best = max(range(len(val)), key=lambda index: (val[index], -index))
    assert row["best_epoch"] == best + 1
    assert row["best_val_acc"] == pytest.approx(val[best], abs=1e-4)
    assert row["best_test_acc"] == pytest.approx(history[best]["test/acc"], abs=1e-4)
    assert row["final_val_acc"] == pytest.approx(val[-1], abs=1e-4)
    table = format_table([row])
    assert "best val % (epoch)" in table and "test % at best" in table


def test_without_a_validation_split_the_test_split_selects_and_says_so(tmp_path: Path) -> None:
    _, row = run_shipped(tmp_path, "run", ship_val=False)
    assert row["selected_by"] == "test" and row["best_val_acc"] is None and row["final_val_acc"] is None
    assert "best acc % (epoch)" in format_table([row])


def test_a_shipped_split_can_be_subset_but_not_given_a_fraction(tmp_path: Path) -> None:
    plugin = ("shipped", ShippedValidation())
    params = {"num_classes": 4, "image_size": 16, "train_size": 128, "test_size": 64}
    data = data_of(tmp_path, direct(**{"data.dataset": "shipped_val", "data.params": params, "data.validation_samples": 10}), plugin)
    assert (data.train_count, data.val_count) == (88, 10)
    with pytest.raises(DataError, match="ships its own validation split \\(40 samples\\)"):
        data_of(tmp_path, direct(**{"data.dataset": "shipped_val", "data.params": params, "data.validation_fraction": 0.1}), plugin)


def test_the_best_epoch_s_weights_are_kept_beside_the_last_and_load_by_name(tmp_path: Path) -> None:
    from kdframe.evaluation import evaluate
    from kdframe.saved_models import load_stage_model

    folder, row = run_shipped(tmp_path, "run")
    assert row["checkpoint"] == "stages/00-student/student.pt"
    assert row["best_checkpoint"] == "stages/00-student/best.pt"
    plugins = make_plugins(("shipped", ShippedValidation()))
    best = load_stage_model(folder, best=True, plugins=plugins)
    last = load_stage_model(folder, plugins=plugins)
    assert best.checkpoint.name == "best.pt" and last.checkpoint.name == "student.pt"
    data = best.data
    best_acc, _ = evaluate(best.model, data.test_images, data.test_labels, 64, False)
    last_acc, _ = evaluate(last.model, data.test_images, data.test_labels, 64, False)
    assert best_acc == pytest.approx(row["best_test_acc"], abs=1e-3)
    assert last_acc == pytest.approx(row["final_test_acc"], abs=1e-3)
