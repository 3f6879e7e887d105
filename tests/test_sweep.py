"""Sweeps: the sweep file's validation, every variant validated before training, shared training, layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HookRecorder, tiny_schedule, write_schedule
from kdframe import Curriculum, CurriculumSpec, NoParams, distill_stage, hookimpl, scratch_stage
from kdframe.cli import main
from kdframe.errors import RunFolderError, SweepError, TrainingError
from kdframe.plugins import create_plugins
from kdframe.sweep import describe_plan, load_sweep, merge_variant, run_sweep

# Tiny one-epoch stages on 64 samples may end at chance level; that is not what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore:Stage .* collapsed")

VARIANTS = {
    "NOKD": {"curriculum": {"name": "direct", "params": {"student": "student"}}},
    "BLKD": {"curriculum": {"name": "direct", "params": {"teacher": "teacher", "student": "student"}}},
    "TAKD": {
        "curriculum": {"name": "ta_chain", "params": {"teacher": "teacher", "assistants": ["assistant"], "student": "student"}}
    },
}


def base_schedule(**changes: Any) -> dict[str, Any]:
    """The TA-chain tiny schedule, made as fast as possible: 1 epoch, 64 samples, no loggers."""
    fast = {
        "training.epochs": 1,
        "training.channels_last": False,
        "logging.loggers": [],
        "data.params.train_size": 64,
        "data.params.test_size": 32,
        # A per-stage override of a stage that NOKD does not have: dropped there, kept elsewhere.
        "training.stages": {"teacher": {"epochs": 1}},
    }
    return tiny_schedule(**{**fast, **changes})


def write_sweep(folder: Path, base: dict[str, Any] | str | None = None, **keys: Any) -> Path:
    """Write ``base.json`` (unless ``base`` is inline) and ``sweep.json``; return the sweep's path."""
    if base is None:
        write_schedule(folder, base_schedule(), "base.json")
        base = "base.json"
    sweep = {"name": "tiny-sweep", "base": base, "seeds": [0, 1], "variants": VARIANTS, "report_model": "student", **keys}
    path = folder / "sweep.json"
    path.write_text(json.dumps(sweep, indent=2))
    return path


def stage_rows(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(run folder relative to the sweep, row)`` for every stage row of every run's results.json."""
    rows = []
    for results in sorted(folder.glob("*/seed-*/results.json")):
        for row in json.loads(results.read_text())["stages"]:
            rows.append((str(results.parent.relative_to(folder)), row))
    return rows


# ---------------------------------------------------------------------------------------------------
# Merging and validation (nothing trains)
# ---------------------------------------------------------------------------------------------------


def test_merge_objects_replace_lists_and_restated_components() -> None:
    base = {
        "training": {"epochs": 5, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "stages": {"teacher": {"epochs": 9}}},
        "distill": {"losses": [{"name": "cross_entropy"}, {"name": "hinton_kd"}]},
        "models": {"student": {"arch": "plain_cnn", "params": {"depth": 2, "width_multiplier": 0.5}, "checkpoint": None}},
        "curriculum": {"name": "ta_chain", "params": {"teacher": "t", "assistants": ["a"], "student": "s"}},
    }
    merged = merge_variant(
        base,
        {
            "training": {"epochs": 1, "optimizer": {"lr": 0.1}, "stages": {"student": {"epochs": 2}}},
            "distill": {"losses": [{"name": "dkd"}]},
            "models": {"student": {"params": {"depth": 4}}},
            "curriculum": {"name": "direct", "params": {"student": "s"}},
        },
    )
    assert merged["training"]["epochs"] == 1
    assert merged["training"]["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9}  # objects merge
    assert merged["training"]["stages"] == {"teacher": {"epochs": 9}, "student": {"epochs": 2}}
    assert merged["distill"]["losses"] == [{"name": "dkd"}]  # lists replace
    assert merged["models"]["student"]["params"] == {"depth": 4, "width_multiplier": 0.5}  # params merge...
    assert merged["curriculum"] == {"name": "direct", "params": {"student": "s"}}  # ...unless the component is named
    restated = merge_variant(base, {"models": {"student": {"arch": "plain_cnn", "params": {"depth": 4}}}})
    assert restated["models"]["student"] == {"arch": "plain_cnn", "params": {"depth": 4}, "checkpoint": None}
    adam = merge_variant(base, {"training": {"optimizer": {"name": "adam"}}})
    assert adam["training"]["optimizer"] == {"name": "adam"}  # another kind of optimizer: replaced whole
    assert base["curriculum"]["name"] == "ta_chain"  # the base is not changed


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"variant": {}}, "variant: unknown key"),
        ({"seeds": [0, 0]}, "seeds: Value error, seed(s) [0] appear more than once"),
        ({"seeds": []}, "seeds: List should have at least 1 item"),
        ({"variants": {"a/b": {}}}, "variant name 'a/b'"),
        ({"variants": {"X": {"seed": 3}}}, "variant 'X' sets 'seed'"),
        ({"variants": {"X": 3}}, "variants.X: Input should be a valid dictionary"),
        ({"name": None}, "name: Input should be a valid string"),
    ],
)
def test_sweep_file_errors_carry_their_path(tmp_path, change, expected) -> None:
    path = write_sweep(tmp_path, **change)
    with pytest.raises(SweepError) as error:
        load_sweep(path)
    assert f"Sweep file '{path}' is invalid" in str(error.value)
    assert expected in str(error.value)


def test_malformed_and_missing_files(tmp_path) -> None:
    path = tmp_path / "sweep.json"
    path.write_text('{"name": "x",\n "seeds": [0,]}')
    with pytest.raises(SweepError, match="line 2, column"):
        load_sweep(path)
    with pytest.raises(SweepError, match="does not exist"):
        load_sweep(tmp_path / "nope.json")
    with pytest.raises(SweepError, match=r"base: Schedule file .*missing.json' does not exist"):
        load_sweep(write_sweep(tmp_path, base="missing.json"))


def test_errors_inside_a_variant_name_the_variant_and_the_path(tmp_path) -> None:
    variants = {
        **VARIANTS,
        "BLKD": {**VARIANTS["BLKD"], "training": {"epoks": 2}},
        "TAKD": {**VARIANTS["TAKD"], "models": {"student": {"params": {"depth": 3}}}},
    }
    path = write_sweep(tmp_path, variants=variants)
    with pytest.raises(SweepError) as error:
        load_sweep(path)
    message = str(error.value)
    assert f"Sweep '{path}', variant 'BLKD': the merged schedule is invalid" in message
    assert "training.epoks: unknown key" in message
    assert f"Sweep '{path}', variant 'TAKD'" in message and "models.student.params.depth" in message
    assert "variant 'NOKD'" not in message


def test_plan_problems_and_typos_in_stage_overrides_name_the_variant(tmp_path) -> None:
    variants = {"NOKD": VARIANTS["NOKD"], "BAD": {"curriculum": {"name": "direct", "params": {"teacher": "ghost", "student": "student"}}}}
    with pytest.raises(SweepError) as error:
        load_sweep(write_sweep(tmp_path, variants=variants))
    assert "variant 'BAD'" in str(error.value) and "model 'ghost' is not in models" in str(error.value)

    base = base_schedule(**{"training.stages": {"teachr": {"epochs": 1}}})
    with pytest.raises(SweepError) as error:
        load_sweep(write_sweep(tmp_path, base=base))
    assert "training.stages.teachr: no stage has this name" in str(error.value)


def test_report_model_and_share_across_seeds_are_checked(tmp_path) -> None:
    with pytest.raises(SweepError) as error:
        load_sweep(write_sweep(tmp_path, report_model="assistant"))
    assert "report_model: variant 'NOKD' does not train 'assistant'" in str(error.value)

    with pytest.raises(SweepError, match=r"share_across_seeds\[0\]: no variant has a model 'techer'"):
        load_sweep(write_sweep(tmp_path, share_across_seeds=["techer"]))
    with pytest.raises(SweepError, match="'assistant' learns from 'teacher' in variant 'TAKD'.*add 'teacher'"):
        load_sweep(write_sweep(tmp_path, share_across_seeds=["assistant"]))
    with pytest.raises(SweepError, match="'student' is variant 'NOKD''s report model"):
        load_sweep(write_sweep(tmp_path, share_across_seeds=["student"]))


def test_every_run_is_validated_in_full_before_anything_trains(tmp_path) -> None:
    bad_layer = {"distill": {"losses": [{"name": "fitnet", "params": {"layers": [{"student": "features.99", "teacher": "features.0"}]}}]}}
    variants = {**VARIANTS, "TAKD": {**VARIANTS["TAKD"], **bad_layer}}
    path = write_sweep(tmp_path, variants=variants)
    with pytest.raises(SweepError) as error:
        run_sweep(path, out=tmp_path / "out", quiet=True, log=None)
    assert f"Sweep '{path}', variant 'TAKD' (seed 0)" in str(error.value)
    assert "features.99" in str(error.value)
    assert not (tmp_path / "out").exists()


class AlwaysTrainsTheTeacher(Curriculum):
    """A curriculum that ignores checkpoints: it cannot use a shared teacher."""

    def __init__(self, params: NoParams) -> None:
        self.params = params

    def plan(self, schedule):
        return [scratch_stage(schedule, "teacher"), distill_stage(schedule, "student", ("teacher",))]


class RetrainPlugin:
    @hookimpl
    def kdframe_register_curricula(self) -> list[CurriculumSpec]:
        return [CurriculumSpec(name="always_train", summary="Retrains the teacher.", factory=AlwaysTrainsTheTeacher, params=NoParams)]


def test_a_curriculum_that_would_retrain_a_shared_model_is_reported(tmp_path) -> None:
    plugins = create_plugins(plugins=[("retrain", RetrainPlugin())])
    variants = {"BLKD": VARIANTS["BLKD"], "RETRAIN": {"curriculum": {"name": "always_train"}}}
    path = write_sweep(tmp_path, variants=variants, seeds=[0])
    with pytest.raises(SweepError) as error:
        load_sweep(path, plugins=plugins)
    message = str(error.value)
    assert "variant 'RETRAIN' (seed 0): the sweep shares 'teacher' (from BLKD/seed-0)" in message
    assert "curriculum 'always_train' cannot run the schedule that way" in message
    assert "model 'teacher' has a checkpoint and would be trained again" in message
    assert '"share": false' in message

    path = write_sweep(tmp_path, variants=variants, seeds=[0], share=False)
    plan = load_sweep(path, plugins=plugins)
    assert [run.reuses for run in plan.runs] == [[], []]


def test_fingerprints_separate_what_differs(tmp_path) -> None:
    variants = {
        "BLKD": VARIANTS["BLKD"],
        "BLKD-T8": {**VARIANTS["BLKD"], "distill": {"losses": [{"name": "hinton_kd", "params": {"temperature": 8}}]}},
        "BLKD-teacher6": {**VARIANTS["BLKD"], "models": {"teacher": {"params": {"depth": 6}}}},
        "BLKD-teacher-epochs": {**VARIANTS["BLKD"], "training": {"stages": {"teacher": {"epochs": 2}}}},
    }
    plan = load_sweep(write_sweep(tmp_path, variants=variants, seeds=[0]))
    reuses = {run.variant: [entry["model"] for entry in run.reuses] for run in plan.runs}
    # A different KD loss changes only the student; a different teacher, or teacher training, is a new teacher.
    assert reuses == {"BLKD": [], "BLKD-T8": ["teacher"], "BLKD-teacher6": [], "BLKD-teacher-epochs": []}


# ---------------------------------------------------------------------------------------------------
# Running: sharing and layout
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, HookRecorder, list[str]]:
    """NOKD/BLKD/TAKD x seeds 0, 1, run once for the tests below."""
    folder = tmp_path_factory.mktemp("sweep")
    recorder = HookRecorder()
    lines: list[str] = []
    plugins = create_plugins(plugins=[("recorder", recorder)])
    out, _ = run_sweep(write_sweep(folder), out=folder / "out", quiet=True, plugins=plugins, log=lines.append)
    return out, recorder, lines


def test_shared_models_are_trained_once_per_seed(swept) -> None:
    out, recorder, _ = swept
    rows = stage_rows(out)
    trained = [(run, row["stage"]) for run, row in rows]
    assert [run for run, stage in trained if stage == "teacher"] == ["BLKD/seed-0", "BLKD/seed-1"]
    assert [run for run, stage in trained if stage == "assistant"] == ["TAKD/seed-0", "TAKD/seed-1"]
    assert sorted(run for run, stage in trained if stage == "student") == sorted(f"{v}/seed-{s}" for v in VARIANTS for s in (0, 1))
    started = [details["stage"] for name, details in recorder.calls if name == "stage_start"]
    assert started.count("teacher") == 2 and started.count("assistant") == 2 and started.count("student") == 6

    # TAKD learnt from the teacher BLKD trained with the same seed.
    for seed in (0, 1):
        schedule = json.loads((out / "TAKD" / f"seed-{seed}" / "schedule.json").read_text())
        checkpoint = Path(schedule["models"]["teacher"]["checkpoint"])
        assert checkpoint == (out / "BLKD" / f"seed-{seed}" / "stages" / "00-teacher" / "student.pt").resolve()
        assert "teacher" not in schedule["training"]["stages"]
        assert schedule["seed"] == seed and schedule["name"] == "tiny-sweep-TAKD"
    # NOKD trains no teacher, so the base's teacher override is dropped there.
    nokd = json.loads((out / "NOKD" / "seed-0" / "schedule.json").read_text())
    assert nokd["training"]["stages"] == {}


def test_sweep_json_records_the_plan_and_the_sharing(swept) -> None:
    out, _, lines = swept
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["seeds"] == [0, 1] and list(sweep["variants"]) == ["NOKD", "BLKD", "TAKD"]
    assert sweep["order"] == "seed-major" and sweep["finished"] is True
    assert sweep["base"]["curriculum"]["name"] == "ta_chain"
    assert [(run["variant"], run["seed"]) for run in sweep["runs"]] == [(v, s) for s in (0, 1) for v in VARIANTS]
    takd = next(run for run in sweep["runs"] if run["folder"] == "TAKD/seed-1")
    assert [entry["stage"] for entry in takd["trains"]] == ["assistant", "student"]
    (reuse,) = takd["reuses"]
    assert reuse["model"] == "teacher" and reuse["from"] == "BLKD/seed-1"
    assert reuse["checkpoint"] == "BLKD/seed-1/stages/00-teacher/student.pt"
    blkd = next(run for run in sweep["runs"] if run["folder"] == "BLKD/seed-1")
    assert blkd["trains"][0]["fingerprint"] == reuse["fingerprint"]
    nokd = next(run for run in sweep["runs"] if run["folder"] == "NOKD/seed-0")
    assert nokd["unused_base_overrides"] == ["teacher"]
    # The plan is printed before training.
    assert any("TAKD  trains assistant, student; reuses teacher from BLKD/seed-0" in line for line in lines)
    assert "Sharing: 10 stage trainings instead of 12 (2 reused)." in lines


def test_layout_and_report_files(swept) -> None:
    out, _, _ = swept
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == ["BLKD", "NOKD", "TAKD", "comparisons.csv", "results.csv", "results.md", "results.png", "sweep.json"]
    for variant in VARIANTS:
        assert sorted(path.name for path in (out / variant).iterdir()) == ["seed-0", "seed-1"]
        for seed in (0, 1):
            assert json.loads((out / variant / f"seed-{seed}" / "results.json").read_text())["finished"] is True
    text = (out / "results.md").read_text()
    for variant in VARIANTS:
        assert f"| {variant} | student | 2 |" in text
    assert "`teacher` trained once in BLKD/seed-0, reused by TAKD/seed-0" in text
    assert (out / "results.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_cli_sweep_shares_a_teacher_across_seeds_and_refuses_a_used_folder(tmp_path, capsys) -> None:
    variants = {"BLKD": VARIANTS["BLKD"], "TAKD": VARIANTS["TAKD"]}
    path = write_sweep(tmp_path, variants=variants, seeds=[5], share_across_seeds=["teacher"])
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--seeds", "0,1"]) == 0
    printed = capsys.readouterr().out
    assert "| BLKD | student | 2 |" in printed and f"Sweep folder: {out}" in printed
    teachers = [run for run, row in stage_rows(out) if row["stage"] == "teacher"]
    assert teachers == ["BLKD/seed-0"]  # once in total, with the first seed
    for run in ("BLKD/seed-1", "TAKD/seed-0", "TAKD/seed-1"):
        schedule = json.loads((out / run / "schedule.json").read_text())
        assert schedule["models"]["teacher"]["checkpoint"].endswith("BLKD/seed-0/stages/00-teacher/student.pt")
    assert json.loads((out / "sweep.json").read_text())["seeds"] == [0, 1]

    # The folder now holds a sweep: a second sweep into it is refused, and nothing is changed.
    before = (out / "sweep.json").read_text()
    with pytest.raises(RunFolderError, match="already exists and is not empty"):
        run_sweep(path, out=out, quiet=True, log=None)
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (out / "sweep.json").read_text() == before


class FailingTeacher:
    """Ends any run at the start of its teacher stage, as a training error would."""

    @hookimpl
    def kdframe_on_stage_start(self, run, stage, control) -> None:
        if stage.name == "teacher":
            raise TrainingError("the teacher diverged (simulated)")


def test_a_failed_run_stops_the_sweep_and_the_report_shows_what_finished(tmp_path) -> None:
    plugins = create_plugins(plugins=[("failing", FailingTeacher())])
    path = write_sweep(tmp_path, variants={"NOKD": VARIANTS["NOKD"], "BLKD": VARIANTS["BLKD"]}, seeds=[0])
    out = tmp_path / "out"
    with pytest.raises(SweepError) as error:
        run_sweep(path, out=out, quiet=True, plugins=plugins, log=None)
    assert f"Sweep '{path}', variant 'BLKD' (seed 0): plugin 'failing'" in str(error.value)
    assert "raised an error in kdframe_on_stage_start: the teacher diverged (simulated)" in str(error.value)
    assert f"'kdframe report {out}'" in str(error.value)
    sweep = json.loads((out / "sweep.json").read_text())
    assert [run["status"] for run in sweep["runs"]] == ["finished", "failed"] and sweep["finished"] is False
    assert main(["report", str(out)]) == 0
    text = (out / "results.md").read_text()
    assert "| NOKD | student | 1 |" in text and "| BLKD | student | 0/1 | - |" in text
    assert "Missing: BLKD seed 0 (no results.json)." in text


def test_set_changes_every_run_after_its_variant(tmp_path, capsys) -> None:
    variants = {
        "NOKD": {**VARIANTS["NOKD"], "training": {"epochs": 3}},
        "BLKD": VARIANTS["BLKD"],
    }
    path = write_sweep(tmp_path, variants=variants, seeds=[0])
    lines: list[str] = []
    plan = load_sweep(path, overrides=["training.epochs=2", "data.batch_size=16"], log=lines.append)
    for run in plan.runs:
        assert run.raw["training"]["epochs"] == 2 and run.raw["data"]["batch_size"] == 16
    assert "Note: --set training.epochs replaces what variant 'NOKD' sets itself." in lines
    assert plan.to_dict()["overrides"] == ["training.epochs=2", "data.batch_size=16"]

    # validate shows the plan with the change; nothing is created.
    assert main(["validate", str(path), "--set", "training.epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert f"Sweep file '{path}' is valid" in printed and "replaces what variant 'NOKD' sets" in printed
    # A bad value is an error about the --set, with the sweep file named; the keys the sweep owns are refused.
    assert main(["validate", str(path), "--set", "training.epochs=-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("the base schedule with --set training.epochs=-1 is invalid") == 1 and "variant" not in err
    for assignment, reason in (("seed=3", "--seeds"), ("name=x", "<sweep name>-<variant>"), ("plugins.allow=[]", "plugins section")):
        assert main(["sweep", str(path), "--set", assignment, "--out", str(tmp_path / "never")]) == 2
        assert reason in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    assert main(["sweep", "--join", str(tmp_path), "--set", "training.epochs=1"]) == 2
    assert "--set belong to a new sweep" in capsys.readouterr().err


def test_cli_sweep_set_runs_with_the_change(tmp_path, capsys) -> None:
    path = write_sweep(tmp_path, base_schedule(**{"training.stages": {}}), variants={"NOKD": VARIANTS["NOKD"]}, seeds=[0])
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--set", "training.epochs=2"]) == 0
    schedule = json.loads((out / "NOKD" / "seed-0" / "schedule.json").read_text())
    assert schedule["training"]["epochs"] == 2
    (row,) = [row for _, row in stage_rows(out)]
    assert row["epochs_run"] == 2
    assert json.loads((out / "sweep.json").read_text())["overrides"] == ["training.epochs=2"]


def test_cli_sweep_errors_exit_2(tmp_path, capsys) -> None:
    path = write_sweep(tmp_path)
    assert main(["sweep", str(path), "--seeds", "0,x"]) == 2
    assert "--seeds '0,x' must be a comma-separated list" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
@pytest.mark.parametrize(
    "name",
    [
        "takd_fashion_mnist.json",
        "teacher_size_fashion_mnist.json",
        "parallel_sweep_fashion_mnist.json",
        "regimes/regime_1k.json",
        "regimes/regime_5k.json",
        "regimes/regime_20k.json",
    ],
)
def test_example_sweeps_validate_and_share_teachers(name) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / name
    plan = load_sweep(example, seeds=[0])
    lines = "\n".join(describe_plan(plan))
    assert "seed 0" in lines
    if not name.startswith("teacher_size"):
        assert "reuses teacher" in lines


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_the_early_stopped_sweep_validates_with_its_teachers(tmp_path: Path, monkeypatch) -> None:
    """examples/regimes/early_stopped_5k.json loads the teachers that early_stopped_teacher_5k.json
    saves (runs/regimes/es-teacher/, relative to the current folder); untrained stand-ins here."""
    from kdframe.checkpoints import save_model
    from kdframe.data import DataInfo
    from kdframe.plugins import create_plugins

    examples = Path(__file__).resolve().parents[1] / "examples" / "regimes"
    teacher_run = json.loads((examples / "early_stopped_teacher_5k.json").read_text())
    spec = create_plugins().registry.spec("model", "plain_cnn")
    params = teacher_run["models"]["teacher"]["params"]
    model = spec.factory(spec.params.model_validate(params), DataInfo("fashion_mnist", 10, 1, (28, 28)))
    stage = tmp_path / "runs" / "regimes" / "es-teacher" / "stages" / "00-teacher"
    for name in ("student.pt", f"epoch-{teacher_run['curriculum']['params']['teacher_epoch']}.pt"):
        save_model(stage / name, model, key="teacher", arch="plain_cnn", params=params)
    monkeypatch.chdir(tmp_path)
    plan = load_sweep(examples / "early_stopped_5k.json", seeds=[0])
    lines = "\n".join(describe_plan(plan))
    assert lines.count("trains student") == 3 and "3 stage trainings" in lines  # the teachers are loaded, not trained
