"""Multi-process training: sharding, and a 2-process gloo run under torchrun equal to 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdframe.distributed import DistEnv, init_from_env, launched, sync_batchnorm
from kdframe.errors import TrainingError
from kdframe.runner import run_schedule
from tests.conftest import tiny_schedule, write_schedule

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def test_each_rank_takes_its_contiguous_share_of_the_global_batch() -> None:
    images, labels = torch.arange(8.0).view(8, 1), torch.arange(8)
    shares = [DistEnv(rank, 4).shard_batch(images, labels) for rank in range(4)]
    assert [share[1].tolist() for share in shares] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert DistEnv().shard_batch(images, labels)[1].tolist() == list(range(8))  # one process: all
    with pytest.raises(TrainingError, match="cannot be split evenly over 3 processes"):
        DistEnv(0, 3).shard_batch(images, labels)
    # Evaluation splits a whole split, which need not divide evenly.
    assert [len(DistEnv(rank, 3).shard_split(labels)[0]) for rank in range(3)] == [3, 3, 2]


def test_one_process_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched()
    env = init_from_env(torch.device("cpu"))
    assert (env.rank, env.world_size, env.is_main, env.active) == (0, 1, True, False)
    values = torch.tensor([1.0, 2.0])
    assert env.mean(values) is values and env.sum(values) is values
    model = torch.nn.BatchNorm1d(2)
    restore = sync_batchnorm([model], env)
    assert "forward" not in vars(model)  # nothing patched
    restore()


def kd_schedule() -> dict:
    # A moderate learning rate: at lr 0.05 this tiny problem is chaotic enough that even the number
    # of CPU threads moves the weights by 1e-3 after a few steps.
    return tiny_schedule(
        **{
            "training.optimizer": {"name": "sgd", "lr": 0.02},
            "curriculum": {"name": "direct", "params": {"teacher": "teacher", "student": "student"}},
            "distill.losses": [
                {"name": "cross_entropy", "weight": 0.1},
                {"name": "hinton_kd", "weight": 0.9, "params": {"temperature": 4.0}},
                {"name": "fitnet", "weight": 0.5, "params": {"layers": [{"student": "features.1", "teacher": "features.2"}]}},
            ],
            "logging.loggers": [{"name": "tensorboard"}],
        }
    )


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    schedule = write_schedule(tmp_path, kd_schedule())
    single_folder, single = run_schedule(schedule, out=tmp_path / "one", quiet=True)
    env = {**os.environ, "KDFRAME_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "kdframe", "run", str(schedule), "--out", str(tmp_path / "two"), "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.count("Run folder:") == 1  # rank 0 alone prints

    two = tmp_path / "two"
    rows = json.loads((two / "results.json").read_text())["stages"]
    assert [row["stage"] for row in rows] == [result.stage for result in single]
    for index, (row, result) in enumerate(zip(rows, single)):
        assert row["final_test_acc"] == pytest.approx(result.final_test_acc, abs=1.6)  # one test sample of 64
        stage = f"{index:02d}-{row['stage']}"
        expected = torch.load(single_folder / "stages" / stage / "student.pt", weights_only=True)["state_dict"]
        actual = torch.load(two / "stages" / stage / "student.pt", weights_only=True)["state_dict"]
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5, msg=f"{stage} {key}")
    # Only rank 0 wrote logs: one event file per stage.
    for stage_folder in (two / "tensorboard").iterdir():
        assert len(list(stage_folder.glob("events.out.tfevents.*"))) == 1, stage_folder


#: Runs ``kdframe`` with an extra loss that is NaN on rank 0 only, at its 2nd and 6th call.
NAN_DRIVER = """
import os, sys
from pydantic import Field
from kdframe import LossSpec, LossTerm, Params, hookimpl, runner
from kdframe.cli import main
from kdframe.plugins import create_plugins

class NaNParams(Params):
    at: list[int] = Field(default_factory=list, description="Calls (1-based) that return NaN on rank 0.")

class RankZeroNaN(LossTerm):
    needs_teacher = False
    def __init__(self, params):
        super().__init__()
        self.calls, self.at = 0, params.at
    def forward(self, outputs):
        self.calls += 1
        bad = self.calls in self.at and os.environ.get("RANK", "0") == "0"
        return outputs.student.logits.mean() * 0 + (float("nan") if bad else 0.0)

class Plugin:
    @hookimpl
    def kdframe_register_losses(self):
        return [LossSpec(name="rank_zero_nan", summary="NaN on rank 0", factory=RankZeroNaN, params=NaNParams, family="label")]

real = runner.plugins_for
runner.plugins_for = lambda selection: create_plugins(plugins=[("nan", Plugin())])
sys.exit(main(sys.argv[1:]))
"""


def test_a_non_finite_batch_on_one_rank_is_skipped_by_every_rank(tmp_path: Path) -> None:
    schedule = tiny_schedule(
        **{
            "training.on_nonfinite": "skip",
            "curriculum": {"name": "direct", "params": {"student": "student"}},
            "distill.scratch_losses": [{"name": "cross_entropy"}, {"name": "rank_zero_nan", "params": {"at": [2, 6]}}],
            "logging.loggers": [],
        }
    )
    path = write_schedule(tmp_path, schedule)
    driver = tmp_path / "nan_driver.py"
    driver.write_text(NAN_DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(driver), "run", str(path), "--out", str(tmp_path / "run"), "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["stages"]
    assert rows[0]["skipped_batches"] == 2 and rows[0]["epochs_run"] == 2
