"""The compression report: MACs against a hand count, size, bounded timing, ratios, and the report of
a run (results.json, the printed table, a sweep's report), which never changes what is trained."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from kdframe.cli import main
from kdframe.compression import LatencySettings, count_macs, measure_model, ratios, serialized_bytes, time_calls
from kdframe.compression_report import reference_model
from kdframe.report import markdown, collect
from kdframe.results import format_compression
from kdframe.runner import load_schedule, prepare, run_schedule
from kdframe.testing import tiny_schedule, write_schedule


class SmallNet(nn.Module):
    """conv 1->4 (3x3, padding 1) on 8x8, ReLU, max-pool to 4x4, linear 64->10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.linear = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.linear(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def test_macs_match_a_hand_count() -> None:
    # conv: every output value (4 channels x 8 x 8) is 1 x 3 x 3 multiply-accumulates; linear: 64 x 10.
    hand = 4 * 8 * 8 * (1 * 3 * 3) + 64 * 10
    assert count_macs(SmallNet(), torch.randn(1, 1, 8, 8)) == hand == 2944
    assert count_macs(SmallNet(), torch.randn(1, 8, 8)) == hand  # an image without its batch dimension
    assert count_macs(SmallNet(), torch.randn(5, 1, 8, 8)) == hand  # per image, whatever the batch


def test_size_is_the_saved_state_dict(tmp_path: Path) -> None:
    model = SmallNet()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    assert serialized_bytes(model) == (tmp_path / "weights.pt").stat().st_size


def test_timing_is_bounded_by_repeats_and_budget() -> None:
    calls = []
    timing = time_calls(lambda: calls.append(1), 1, LatencySettings(warmup=2, repeats=7, budget_s=10.0))
    assert timing.repeats == 7 and len(calls) == 9 and timing.median_ms >= 0.0
    slow_calls = []
    slow = time_calls(lambda: (slow_calls.append(1), time.sleep(0.02)), 4, LatencySettings(warmup=5, repeats=1000, budget_s=0.05))
    assert 3 <= slow.repeats <= 4  # at least 3, however small the budget
    assert len(slow_calls) - slow.repeats <= 2  # the warm-up stops after half the budget
    assert slow.median_ms == pytest.approx(20.0, abs=15.0) and slow.images_per_s == pytest.approx(4 / (slow.median_ms / 1000))


def test_measure_model_leaves_the_model_as_it_was() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    figures = measure_model(model, torch.randn(16, 1, 8, 8), LatencySettings(repeats=3, throughput_batch=8), torch.device("cpu"))
    assert model.training
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())  # BN statistics too
    assert figures.params == sum(p.numel() for p in model.parameters())
    assert figures.throughput.batch == 8 and figures.latency.batch == 1 and figures.threads == torch.get_num_threads()


def test_ratios_compare_with_the_reference() -> None:
    reference = {"params": 1000, "macs": 8000, "size_mb": 4.0, "latency": {"median_ms": 2.0}}
    figures = {"params": 250, "macs": 1000, "size_mb": 1.0, "latency": {"median_ms": 0.5}}
    assert ratios(figures, reference, 90.0, 92.5) == {"params_x": 4.0, "macs_x": 8.0, "size_x": 4.0, "speedup_x": 4.0, "acc_delta": -2.5}
    assert ratios(figures, reference, 90.0, None)["acc_delta"] is None


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("compression")
    path = write_schedule(folder, tiny_schedule(**{"logging.loggers": []}))
    run_folder, _ = run_schedule(path, out=folder / "run", quiet=True)
    return run_folder, json.loads((run_folder / "results.json").read_text())


def test_every_stage_is_measured_and_compared_with_the_teacher(run) -> None:
    _, results = run
    rows = {row["stage"]: row for row in results["stages"]}
    for row in rows.values():
        figures = row["compression"]
        assert figures["params"] == row["params"] and figures["macs"] > 0 and figures["size_mb"] > 0
        assert figures["latency"]["batch"] == 1 and figures["throughput"]["batch"] == 8  # tiny_schedule's settings
        assert figures["reference"] == "teacher" and figures["device"] == "cpu"
    teacher, student = rows["teacher"]["compression"], rows["student"]["compression"]
    assert teacher["vs_reference"] == {"params_x": 1.0, "macs_x": 1.0, "size_x": 1.0, "speedup_x": 1.0, "acc_delta": 0.0}
    versus = student["vs_reference"]
    assert versus["params_x"] == pytest.approx(teacher["params"] / student["params"], abs=1e-3) and versus["params_x"] > 1
    assert versus["macs_x"] == pytest.approx(teacher["macs"] / student["macs"], abs=1e-3)
    assert versus["acc_delta"] == pytest.approx(rows["student"]["final_test_acc"] - rows["teacher"]["final_test_acc"], abs=1e-3)


def test_the_run_prints_the_compact_table(tmp_path: Path, capsys) -> None:
    path = write_schedule(tmp_path, tiny_schedule(**{"logging.loggers": [], "training.epochs": 1}))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Compression vs the teacher 'teacher'" in printed
    for column in ("params", "MACs", "latency b1", "throughput", "speed-up", "acc Δ"):
        assert column in printed
    assert main(["report", str(tmp_path / "run")]) == 0
    assert "Compression vs the teacher 'teacher'" in capsys.readouterr().out


def test_the_report_never_changes_what_is_trained(tmp_path: Path, run) -> None:
    run_folder, _ = run
    path = write_schedule(tmp_path, tiny_schedule(**{"logging.loggers": [], "compression.enabled": False}))
    off, results = run_schedule(path, out=tmp_path / "off", quiet=True)
    assert all(result.compression is None for result in results)
    assert format_compression([result.to_dict() for result in results]) == ""
    for stage in ("00-teacher", "01-assistant", "02-student"):
        with_report = torch.load(run_folder / "stages" / stage / "student.pt", weights_only=True)["state_dict"]
        without = torch.load(off / "stages" / stage / "student.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(with_report[key], without[key]) for key in without), stage


def test_a_teacher_from_a_checkpoint_is_the_reference_and_evaluated_once(tmp_path: Path, run) -> None:
    run_folder, results = run
    schedule = tiny_schedule(**{
        "logging.loggers": [],
        "training.epochs": 1,
        "models.teacher.checkpoint": str(run_folder / "stages" / "00-teacher" / "student.pt"),
        "curriculum": {"name": "direct", "params": {"teacher": "teacher", "student": "student"}},
    })
    path = write_schedule(tmp_path, schedule)
    loaded, plugins, resolved = load_schedule(path)
    experiment = prepare(loaded, plugins, resolved)
    assert reference_model(experiment.models, experiment.setups) == "teacher"
    _, stage_results = run_schedule(path, out=tmp_path / "run", quiet=True)
    (student,) = stage_results
    teacher_acc = results["stages"][0]["final_test_acc"]
    assert student.compression["reference"] == "teacher"
    assert student.compression["vs_reference"]["acc_delta"] == pytest.approx(student.final_test_acc - teacher_acc, abs=1e-3)
    assert student.compression["reference_figures"]["test_acc"] == pytest.approx(teacher_acc, abs=1e-3)
    assert student.compression["reference_figures"]["params"] == results["stages"][0]["params"]
    table = format_compression([student.to_dict()])
    assert "teacher (checkpoint)" in table.splitlines()[3] and f"{teacher_acc:.2f}" in table  # its row comes first


def test_a_sweep_report_shows_the_figures(tmp_path: Path, run) -> None:
    _, results = run
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        folder = sweep / "TAKD" / f"seed-{seed}"
        folder.mkdir(parents=True)
        (folder / "schedule.json").write_text("{}")
        (folder / "results.json").write_text(json.dumps({**results, "finished": True}))
    report = collect(sweep)
    (row,) = report.rows
    student = results["stages"][-1]["compression"]
    assert row.macs == student["macs"] and row.latency_mean == pytest.approx(student["latency"]["median_ms"])
    text = markdown(report)
    assert "| MACs | latency b1 | × fewer params | × faster |" in text
    assert f"{student['vs_reference']['params_x']:.1f}×" in text
