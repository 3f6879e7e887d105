"""kdframe tune: the tune file, a study end to end, pruning, resuming after a kill, two workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("optuna", reason="kdframe tune needs the 'tune' extra (Optuna)")

from kdframe.cli import main  # noqa: E402
from kdframe.errors import TuneError  # noqa: E402
from kdframe.testing import tiny_schedule  # noqa: E402
from kdframe.tune import join_tune, load_tune, start_tune, trial_rows, validate_tune  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Stage .* collapsed")


def base_schedule(**changes: Any) -> dict[str, Any]:
    """Teacher -> student on tiny synthetic data with a validation split."""
    return tiny_schedule(
        **{
            "training.epochs": 2,
            "logging.loggers": [],
            "compression.enabled": False,
            "data.params.train_size": 256,
            "data.validation_samples": 64,
            "curriculum": {"name": "direct", "params": {"teacher": "teacher", "student": "student"}},
            "distill": {"losses": [{"name": "cross_entropy", "weight": 0.1}, {"name": "hinton_kd", "weight": 0.9, "params": {"temperature": 4}}]},
            **changes,
        }
    )


def write_tune(folder: Path, base: dict[str, Any] | None = None, **keys: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.json").write_text(json.dumps(base or base_schedule(), indent=2))
    tune = {
        "name": "tiny-tune",
        "base": "base.json",
        "trials": 3,
        "space": {
            "training.optimizer.lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True},
            "distill.losses.1.params.temperature": {"type": "choice", "values": [1, 4, 16]},
        },
        "sampler": {"name": "random", "seed": 7},
        "pruner": {"name": "none"},
        "train_once": ["teacher"],
        **keys,
    }
    path = folder / "tune.json"
    path.write_text(json.dumps(tune, indent=2))
    return path


def trials_of(folder: Path) -> list[tuple[str, Any, dict[str, Any]]]:
    """(state, value, params) of every counted trial, in order."""
    return [(row["state"], row["value"], row["params"]) for row in trial_rows(folder)[1]]


def kdframe(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "kdframe", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ---------------------------------------------------------------------------------------------------
# The tune file
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"space": {"training.optimizer.lr": {"type": "float", "low": 1, "high": 0.1}}}, "low (1.0) must not be above high (0.1)"),
        ({"space": {"training.optimizer.lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, "a log scale needs low > 0"),
        ({"space": {"training.epoks": {"type": "int", "low": 1, "high": 3}}}, "training.epoks: unknown key"),
        ({"space": {"training.epochs": {"type": "choice", "values": [1, 1]}}}, "values must be distinct"),
        ({"space": {"models.teacher.params.depth": {"type": "choice", "values": [2, 4]}}}, "train_once model 'teacher' is searched"),
        ({"objective": {"stage": "assistant"}}, "objective.stage 'assistant' is not a stage"),
        ({"train_once": ["nobody"]}, "train_once names 'nobody', which is not a model"),
        ({"sampler": {"name": "grid"}}, "the grid sampler needs choices or int ranges"),
        ({"pruner": {"name": "median", "params": {"warmup": 1}}}, "MedianPruner does not accept"),
        ({"trails": 3}, "trails: unknown key"),
    ],
)
def test_tune_file_errors_name_the_problem(tmp_path: Path, keys: dict[str, Any], message: str) -> None:
    with pytest.raises(TuneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        start_tune(write_tune(tmp_path, **keys), out=tmp_path / "out", log=None)
    assert not (tmp_path / "out").exists()  # nothing created before the whole file validated


def test_the_objective_needs_a_validation_split(tmp_path: Path) -> None:
    base = base_schedule()
    del base["data"]["validation_samples"]
    with pytest.raises(TuneError, match="has no validation split, and the objective must never be the test split"):
        start_tune(write_tune(tmp_path, base), out=tmp_path / "out", log=None)


def test_cli_errors(tmp_path: Path, capsys) -> None:
    assert main(["tune"]) == 2
    assert "Give either a tune file" in capsys.readouterr().err
    assert main(["tune", "--join", str(tmp_path)]) == 2
    assert "is not a tune folder" in capsys.readouterr().err
    assert main(["tune", str(write_tune(tmp_path)), "--trials", "0"]) == 2
    assert "--trials must be at least 1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Studies
# ---------------------------------------------------------------------------------------------------


def test_a_study_runs_end_to_end_and_is_reproducible(tmp_path: Path, capsys) -> None:
    assert main(["tune", str(write_tune(tmp_path / "a")), "--out", str(tmp_path / "a" / "out"), "--quiet"]) == 0
    out = tmp_path / "a" / "out"
    printed = capsys.readouterr().out
    assert "Training 'teacher' once for every trial" in printed and "Best: trial" in printed
    trials = trials_of(out)
    assert len(trials) == 3 and all(state == "complete" for state, _, _ in trials)
    # Every trial scored its student's selected epoch on the validation split, and loaded the teacher.
    for row in trial_rows(out)[1]:
        results = json.loads((out / row["folder"] / "results.json").read_text())
        assert [stage["stage"] for stage in results["stages"]] == ["student"]
        assert results["stages"][0]["selected_by"] == "val" and results["stages"][0]["best_val_acc"] == row["value"]
        schedule = json.loads((out / row["folder"] / "schedule.json").read_text())
        assert schedule["models"]["teacher"]["checkpoint"].endswith("train_once/teacher/stages/00-teacher/student.pt")
        assert schedule["training"]["optimizer"]["lr"] == row["params"]["training.optimizer.lr"]
    assert len((out / "trials.csv").read_text().splitlines()) == 4
    assert (out / "tune.png").stat().st_size > 0
    best = json.loads((out / "best_schedule.json").read_text())
    top = max(trials, key=lambda trial: trial[1])
    assert best["training"]["optimizer"]["lr"] == top[2]["training.optimizer.lr"]
    assert main(["validate", str(out / "best_schedule.json")]) == 0  # kdframe run accepts it
    # The same tune file gives the same study.
    start_tune(write_tune(tmp_path / "b"), out=tmp_path / "b" / "out", quiet=True, log=None)
    assert trials_of(tmp_path / "b" / "out") == trials
    # kdframe report rebuilds the report of a tune folder.
    assert main(["report", str(out)]) == 0
    assert "# Study `tiny-tune`" in capsys.readouterr().out


def test_the_pruner_stops_trials_after_an_epoch(tmp_path: Path) -> None:
    path = write_tune(tmp_path, base_schedule(**{"training.epochs": 3}), pruner={"name": "threshold", "params": {"lower": 101.0}}, train_once=[])
    out = start_tune(path, out=tmp_path / "out", quiet=True, log=None)
    rows = trial_rows(out)[1]
    assert [row["state"] for row in rows] == ["pruned"] * 3
    for row in rows:
        results = json.loads((out / row["folder"] / "results.json").read_text())
        student = results["stages"][-1]
        assert student["stage"] == "student" and student["epochs_run"] == 1 and student["epochs"] == 3
    assert "(" in (out / "results.md").read_text()  # pruned: the last reported value in brackets


def test_a_killed_worker_s_trial_is_resumed_and_the_study_is_unchanged(tmp_path: Path) -> None:
    base = base_schedule(**{"training.epochs": 6, "data.params.train_size": 1024})
    reference = start_tune(write_tune(tmp_path / "ref", base), out=tmp_path / "ref" / "out", quiet=True, log=None)
    out = tmp_path / "killed" / "out"
    worker = kdframe("tune", str(write_tune(tmp_path / "killed", base)), "--out", str(out), "--quiet")
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and worker.poll() is None:
        for state in sorted(out.glob("trials/trial-*/stages/*/state.pt")):
            if not (state.parent / "student.pt").is_file():  # a trial in the middle of its stage
                killed = state.parents[2].name
                os.kill(worker.pid, signal.SIGKILL)
                break
        time.sleep(0.01)
    worker.communicate(timeout=60)
    assert killed is not None, "the trial finished before it could be killed"
    joined: list[str] = []
    assert join_tune(out, quiet=True, log=joined.append) is True
    assert any(f"its folder trials/{killed} will be resumed" in line for line in joined), joined
    assert any("Resuming" in line for line in joined)
    assert trials_of(out) == trials_of(reference)
    assert len(list((out / "trials").iterdir())) == 3  # the resumed trial kept its folder


def test_two_workers_share_one_study(tmp_path: Path) -> None:
    reference = start_tune(write_tune(tmp_path / "ref", trials=4), out=tmp_path / "ref" / "out", quiet=True, log=None)
    out = tmp_path / "shared" / "out"
    planned = kdframe("tune", str(write_tune(tmp_path / "shared", trials=4)), "--out", str(out), "--plan-only")
    text, _ = planned.communicate(timeout=300)
    assert planned.returncode == 0 and f"kdframe tune --join {out}" in text, text
    workers = [kdframe("tune", "--join", str(out), "--quiet") for _ in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    rows = trial_rows(out)[1]
    assert len(rows) == 4 and len({row["folder"] for row in rows}) == 4
    assert trials_of(out) == trials_of(reference)  # the random sampler of trial n is seeded with seed + n
    assert "Training 'teacher' once" in "".join(outputs)
    assert len(list((out / "train_once").iterdir())) == 1


def test_load_tune_reads_an_inline_base(tmp_path: Path) -> None:
    path = tmp_path / "tune.json"
    path.write_text(json.dumps({"name": "t", "base": base_schedule(), "space": {"training.epochs": {"type": "int", "low": 1, "high": 2}}}))
    config, base = load_tune(path, trials=5)
    assert config.trials == 5 and base["data"]["validation_samples"] == 64


# ---------------------------------------------------------------------------------------------------
# The examples: validated in full, and the teacher-assistant search run on tiny data
# ---------------------------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TUNE_EXAMPLES = ["ta_search_fashion_mnist.tune.json", "ta_chain_length_fashion_mnist.tune.json"]


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("name", TUNE_EXAMPLES)
def test_example_tune_files_validate(name: str) -> None:
    config, base = load_tune(EXAMPLES / name)
    validate_tune(config, base, name)
    assert config.train_once == ["teacher"] and config.objective.stage == "student"


@pytest.mark.parametrize("name", TUNE_EXAMPLES)
def test_example_tune_files_run_on_tiny_data(tmp_path: Path, name: str) -> None:
    """The example's search space, sampler and train_once over the tiny synthetic data, 2 trials."""
    example = json.loads((EXAMPLES / name).read_text())
    base = example["base"]
    tiny = base_schedule(**{"training.epochs": 1, "data.params.train_size": 128})
    base["data"], base["training"], base["logging"] = tiny["data"], tiny["training"], tiny["logging"]
    for model in base["models"].values():  # the synthetic images are 16x16: at most 3 pools
        model["params"]["depth"] = min(model["params"]["depth"], 4)
    for key, space in example["space"].items():
        if key.endswith(".depth"):
            space["values"] = [value for value in space["values"] if value <= 4]
    (tmp_path / "tune.json").write_text(json.dumps({**example, "trials": 2}))
    out = start_tune(tmp_path / "tune.json", out=tmp_path / "out", quiet=True, log=None)
    rows = trial_rows(out)[1]
    assert [row["state"] for row in rows] == ["complete", "complete"]
    assert len({json.dumps(row["params"], sort_keys=True) for row in rows}) == 2  # the grid gives distinct points
    assert (out / "train_once" / "teacher" / "results.json").is_file() and (out / "tune.png").is_file()


def test_a_database_storage_url_holds_the_study(tmp_path: Path) -> None:
    """``storage``: Optuna's database storage (SQLite here; PostgreSQL or MySQL on a cluster)."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    out = start_tune(write_tune(tmp_path, trials=2, storage=url), out=tmp_path / "out", quiet=True, log=None)
    assert not (out / "study.journal").exists() and (tmp_path / "studies.db").is_file()
    assert [state for state, _, _ in trials_of(out)] == ["complete", "complete"]
    assert join_tune(out, quiet=True, log=None) is True  # nothing left: the study has its 2 trials
    assert len(trials_of(out)) == 2


def test_kdframe_validate_knows_tune_and_sweep_files(tmp_path: Path, capsys) -> None:
    assert main(["validate", str(write_tune(tmp_path))]) == 0
    assert "is valid (the schedule at both corners of the space); nothing was created" in capsys.readouterr().out
    assert not list(tmp_path.glob("runs"))
    from tests.test_sweep import write_sweep

    (tmp_path / "sweep").mkdir()
    assert main(["validate", str(write_sweep(tmp_path / "sweep"))]) == 0
    printed = capsys.readouterr().out
    assert "Sweep file" in printed and "is valid; nothing was created or trained" in printed and "seed 0" in printed
    assert main(["validate", str(write_tune(tmp_path)), "--set", "trials=2"]) == 2
    assert "is a tune file: --set applies to schedules and sweep files only" in capsys.readouterr().err
