"""How models start: a head that does not fit the data is refused before training (kdframe.dry_step), and
a weights file initialises what fits, re-initialising a head of another shape (models.<key>.weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdframe.cli import main
from kdframe.testing import tiny_schedule, write_schedule
from kdframe_models.plain_cnn import PlainCNN, PlainCNNParams
from kdframe import DataInfo


def _teacher_of(tmp_path: Path, classes: int) -> Path:
    model = PlainCNN(PlainCNNParams(depth=2, num_classes=classes), DataInfo("synthetic", 4, 1, (16, 16)))
    path = tmp_path / "teacher.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("from_file", [False, True])
def test_a_teacher_with_more_logits_than_classes_fails_validate_with_the_fix(tmp_path: Path, capsys, from_file: bool) -> None:
    schedule = tiny_schedule(**{"logging.loggers": []})
    schedule["curriculum"] = {"name": "direct", "params": {"teacher": "teacher", "student": "student"}}
    schedule["models"]["teacher"] = {"arch": "plain_cnn", "params": {"depth": 2, "num_classes": 10}}
    if from_file:
        schedule["models"]["teacher"]["checkpoint"] = str(_teacher_of(tmp_path, 10))
    path = write_schedule(tmp_path, schedule)
    assert main(["validate", str(path)]) == 2
    message = capsys.readouterr().err
    assert "models.teacher" in message and "gives 10 logits per image, but the dataset has 4 classes" in message
    assert "num_classes to 4" in message and "Traceback" not in message
    assert not (tmp_path / "runs").exists()


def test_a_pretrained_teacher_with_another_head_starts_from_its_weights_file(tmp_path: Path, capsys) -> None:
    import json

    from kdframe.runner import run_schedule

    weights = _teacher_of(tmp_path, 10)  # a "pretrained" teacher of 10 classes; the data has 4
    schedule = tiny_schedule(**{"logging.loggers": [], "training.epochs": 1})
    schedule["curriculum"] = {"name": "direct", "params": {"teacher": "teacher", "student": "student"}}
    schedule["models"]["teacher"] = {"arch": "plain_cnn", "params": {"depth": 2}, "weights": str(weights)}
    path = write_schedule(tmp_path, schedule)
    assert main(["validate", str(path)]) == 0
    printed = capsys.readouterr().out
    assert f"models.teacher starts from '{weights}'" in printed and "re-initialised (shape differs): classifier" in printed
    folder, results = run_schedule(path, out=tmp_path / "run", quiet=True)
    assert [r.stage for r in results] == ["teacher", "student"]  # fine-tuned in its own stage, then teaching
    report = json.loads((folder / "weights.json").read_text())["teacher"]
    assert report["path"] == str(weights) and report["loaded"] and report["reinitialised"][0]["file_shape"][0] == 10


def test_checkpoint_and_weights_together_are_refused(tmp_path: Path, capsys) -> None:
    schedule = tiny_schedule()
    schedule["models"]["teacher"].update(checkpoint="a.pt", weights="b.pth")
    assert main(["validate", str(write_schedule(tmp_path, schedule))]) == 2
    assert "give checkpoint (use the model as it is) or weights (start training from them), not both" in capsys.readouterr().err
