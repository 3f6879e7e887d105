"""Sweep reports from hand-made run folders: mean ± std, missing runs, the files, ``kdframe report``."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from kdframe.cli import main
from kdframe.errors import SweepError
from kdframe.report import collect, report_text, sweep_figure, write_report


def row(stage: str, final: float, best: float, *, params: int = 1000, wall: float = 10.0, teachers=(), collapsed: bool = False) -> dict[str, Any]:
    return {
        "stage": stage,
        "model": stage,
        "arch": "plain_cnn",
        "teachers": list(teachers),
        "epochs": 3,
        "epochs_run": 3,
        "final_test_acc": final,
        "best_test_acc": best,
        "best_epoch": 2,
        "params": params,
        "wall_time_s": wall,
        "checkpoint": f"stages/00-{stage}/student.pt",
        "collapsed": collapsed,
    }


def write_run(folder: Path, rows: list[dict[str, Any]], *, finished: bool = True, name: str = "run") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "schedule.json").write_text("{}")
    payload = {"name": name, "finished": finished, "stages": rows, "total_wall_time_s": sum(r["wall_time_s"] for r in rows)}
    (folder / "results.json").write_text(json.dumps(payload))
    return folder


def write_plan(folder: Path, variants: list[str], seeds: list[int], reuses: dict[tuple[str, int], list[dict[str, Any]]] | None = None) -> None:
    runs = [
        {
            "variant": variant,
            "seed": seed,
            "folder": f"{variant}/seed-{seed}",
            "report_stage": "student",
            "report_model": "student",
            "reuses": (reuses or {}).get((variant, seed), []),
        }
        for seed in seeds
        for variant in variants
    ]
    plan = {"format": "kdframe-sweep/1", "name": "hand-made", "description": "Written by hand.", "variants": {v: {} for v in variants}, "seeds": seeds, "runs": runs}
    (folder / "sweep.json").write_text(json.dumps(plan))


@pytest.fixture
def sweep_folder(tmp_path) -> Path:
    """NOKD complete (3 seeds), TAKD with one seed, one missing and one unfinished."""
    folder = tmp_path / "sweep"
    folder.mkdir()
    reuse = [{"model": "teacher", "stage": "teacher", "from": "BLKD/seed-0", "from_stage": "teacher"}]
    write_plan(folder, ["NOKD", "TAKD"], [0, 1, 2], {("TAKD", 0): reuse})
    for seed, (final, best, wall) in enumerate([(70.0, 71.0, 10.0), (72.0, 74.0, 12.0), (74.0, 74.0, 14.0)]):
        write_run(folder / "NOKD" / f"seed-{seed}", [row("student", final, best, params=10400, wall=wall)])
    write_run(
        folder / "TAKD" / "seed-0",
        [row("assistant", 90.0, 91.0, params=32200, wall=30.0), row("student", 80.0, 81.5, params=10400, wall=6.0, teachers=["assistant"])],
    )
    write_run(folder / "TAKD" / "seed-2", [row("assistant", 90.0, 91.0, wall=30.0)], finished=False)
    return folder


def test_mean_and_sample_std_over_seeds(sweep_folder) -> None:
    report = collect(sweep_folder)
    nokd, takd = report.rows
    assert nokd.seeds == [0, 1, 2] and nokd.final == [70.0, 72.0, 74.0]
    assert nokd.final_mean == pytest.approx(72.0) and nokd.final_std == pytest.approx(2.0)  # n - 1
    assert nokd.best_mean == pytest.approx(73.0) and nokd.best_std == pytest.approx(statistics.stdev([71, 74, 74]))
    assert nokd.wall_time_mean == pytest.approx(12.0) and nokd.params == 10400
    assert takd.seeds == [0] and takd.final_std is None
    assert takd.wall_time_mean == pytest.approx(36.0)  # the run's own stages: assistant + student
    assert report.missing == [("TAKD", 1, "not run"), ("TAKD", 2, "stage 'student' not finished")]


def test_csv_md_and_png(sweep_folder) -> None:
    write_report(sweep_folder)
    with open(sweep_folder / "results.csv") as stream:
        lines = list(csv.DictReader(stream))
    nokd, takd = lines
    assert nokd["variant"] == "NOKD" and nokd["model"] == "student" and nokd["seeds"] == "3"
    assert float(nokd["final_acc_mean"]) == pytest.approx(72.0) and float(nokd["final_acc_std"]) == pytest.approx(2.0)
    assert float(nokd["best_acc_mean"]) == pytest.approx(73.0)
    assert float(nokd["best_acc_std"]) == pytest.approx(statistics.stdev([71, 74, 74]), abs=1e-4)
    assert nokd["params"] == "10400" and float(nokd["wall_time_s_mean"]) == pytest.approx(12.0)
    assert takd["seeds"] == "1" and takd["seeds_expected"] == "3" and takd["final_acc_std"] == "n/a"
    assert float(takd["final_acc_mean"]) == pytest.approx(80.0) and takd["missing_seeds"] == "1 2"

    text = (sweep_folder / "results.md").read_text()
    assert "| NOKD | student | 3 | 72.00 ± 2.00 [67.03, 76.97] | 73.00 ± 1.73 [68.70, 77.30] | test | 10.4k | - | - | - | - | 12 s |" in text
    assert "| TAKD | student | 1/3 | 80.00 ± n/a | 81.50 ± n/a | test | 10.4k | - | - | - | - | 36 s |" in text
    assert "sample standard deviation (n - 1)" in text and "each run trained itself" in text
    assert "Sharing: `teacher` trained once in BLKD/seed-0, reused by TAKD/seed-0." in text
    assert "Missing: TAKD seed 1 (not run), TAKD seed 2 (stage 'student' not finished)." in text

    png = (sweep_folder / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    import matplotlib.image

    image = matplotlib.image.imread(sweep_folder / "results.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    report = collect(sweep_folder)
    figure = sweep_figure(report)
    assert len(figure.axes) == 2 and "differences, 95% CI" in figure.axes[1].get_title()  # the comparisons' panel
    axes = figure.axes[0]
    assert axes.get_ylim() == (0.0, 100.0)  # bars start at 0 %, so their lengths compare honestly
    assert len(axes.patches) == 2 * len([row for row in report.rows if row.n])  # final and best differ: two bars each


def test_the_plot_draws_one_bar_when_final_and_best_are_the_same(tmp_path) -> None:
    folder = tmp_path / "sweep"
    folder.mkdir()
    write_plan(folder, ["A", "B"], [0, 1])
    for variant, accuracy in (("A", 80.0), ("B", 82.0)):
        for seed in (0, 1):
            write_run(folder / variant / f"seed-{seed}", [row("student", accuracy + seed, accuracy + seed)])
    axes = sweep_figure(collect(folder)).axes[0]
    assert len(axes.patches) == 2 and [text.get_text() for text in axes.get_legend().get_texts()] == ["final = best epoch"]


def test_collapsed_seeds_are_flagged(tmp_path) -> None:
    folder = tmp_path / "sweep"
    folder.mkdir()
    write_plan(folder, ["A"], [0, 1])
    write_run(folder / "A" / "seed-0", [row("student", 10.0, 12.0, collapsed=True)])
    write_run(folder / "A" / "seed-1", [row("student", 60.0, 62.0)])
    write_report(folder)
    assert "35.00 ± 35.36 [-282.66, 352.66] (collapsed: seed 0)" in (folder / "results.md").read_text()
    with open(folder / "results.csv") as stream:
        assert next(csv.DictReader(stream))["collapsed_seeds"] == "0"


def test_folder_without_sweep_json_is_discovered(tmp_path) -> None:
    folder = tmp_path / "sweep"
    write_run(folder / "B" / "seed-3", [row("teacher", 90.0, 90.0), row("student", 60.0, 61.0)])
    write_run(folder / "B" / "seed-4", [row("teacher", 90.0, 90.0), row("student", 64.0, 65.0)])
    write_run(folder / "A" / "seed-3", [row("teacher", 90.0, 90.0)], finished=False)
    report = write_report(folder)
    assert [r.variant for r in report.rows] == ["A", "B"]
    b = report.rows[1]
    assert b.stage == "student" and b.final_mean == pytest.approx(62.0) and b.final_std == pytest.approx(2.8284, abs=1e-4)
    assert report.missing == [("A", 3, "run not finished")]
    assert "Sharing: unknown (no sweep.json in this folder)." in (folder / "results.md").read_text()


def test_kdframe_report_on_a_sweep_folder(sweep_folder, capsys) -> None:
    (sweep_folder / "results.md").unlink(missing_ok=True)
    assert main(["report", str(sweep_folder)]) == 0
    printed = capsys.readouterr().out
    assert "| variant | model | seeds | final acc % | best acc % | selected by | params | MACs | latency b1 | × fewer params | × faster | time / seed |" in printed
    assert "| NOKD | student | 3 | 72.00 ± 2.00 [67.03, 76.97] |" in printed
    assert "Missing: TAKD seed 1 (not run)" in printed
    for name in ("results.md", "results.csv", "comparisons.csv", "results.png"):
        assert (sweep_folder / name).is_file()


def test_kdframe_report_on_a_run_folder(sweep_folder, capsys) -> None:
    assert main(["report", str(sweep_folder / "TAKD" / "seed-0")]) == 0
    printed = capsys.readouterr().out
    assert "finished" in printed
    assert "stage" in printed and "best acc % (epoch)" in printed
    assert "assistant" in printed and "80.00" in printed and "81.50 (2)" in printed


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda folder: folder.mkdir(), "is neither a sweep folder"),
        (lambda folder: None, "does not exist"),
        (lambda folder: folder.write_text("x"), "is a file, not a folder"),
        (lambda folder: (folder.mkdir(), (folder / "schedule.json").write_text("{}")), "has no results.json yet"),
        (lambda folder: (folder.mkdir(), (folder / "sweep.json").write_text("[")), "Cannot read sweep file"),
    ],
)
def test_kdframe_report_errors_exit_2(tmp_path, capsys, make, expected) -> None:
    folder = tmp_path / "thing"
    make(folder)
    with pytest.raises(SweepError, match=expected):
        report_text(folder)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err


def paired_sweep(tmp_path: Path, comparisons: list[dict[str, str]] | None = None, *, selected_by: str = "test") -> Path:
    """Three variants, four seeds each, with fixed accuracies."""
    folder = tmp_path / "sweep"
    folder.mkdir()
    write_plan(folder, ["NOKD", "BLKD", "TAKD"], [0, 1, 2, 3])
    if comparisons is not None:
        plan = json.loads((folder / "sweep.json").read_text())
        (folder / "sweep.json").write_text(json.dumps({**plan, "comparisons": comparisons}))
    accuracies = {"NOKD": [1.0, 2.0, 3.0, 4.0], "BLKD": [2.0, 4.0, 6.0, 8.0], "TAKD": [2.5, 4.0, 6.5, 8.0]}
    for variant, values in accuracies.items():
        for seed, value in enumerate(values):
            entry = {**row("student", value, value + 10.0), "selected_by": selected_by}
            write_run(folder / variant / f"seed-{seed}", [entry])
    return folder


def test_ci_and_p_values_match_scipy_on_fixed_data(tmp_path: Path, capsys) -> None:
    from scipy import stats

    folder = paired_sweep(tmp_path)
    assert main(["report", str(folder)]) == 0
    printed = capsys.readouterr().out
    nokd, blkd = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0]
    # Known values: mean 2.5, std 1.291, t(0.975, 3) = 3.182446
    assert "| NOKD | student | 4 | 2.50 ± 1.29 [0.45, 4.55] |" in printed
    welch = stats.ttest_ind(blkd, nokd, equal_var=False)
    paired = stats.ttest_rel(blkd, nokd)
    interval = welch.confidence_interval(0.95)
    assert welch.pvalue == pytest.approx(0.15158, abs=1e-5)  # t = 1.7321, Welch df = 4.4118: I_{df/(df+t²)}(df/2, 1/2)
    assert paired.pvalue == pytest.approx(0.03047, abs=1e-5)  # t = 3.873, df = 3
    line = f"| BLKD | NOKD | final | +2.50 | [{interval.low:+.2f}, {interval.high:+.2f}] | {welch.pvalue:.3f} | 4 | {paired.pvalue:.3f} |"
    assert line in printed
    with open(folder / "comparisons.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["variant"], r["baseline"]) for r in rows] == [("BLKD", "NOKD"), ("TAKD", "NOKD")]  # default: against the first
    assert float(rows[0]["welch_p"]) == pytest.approx(welch.pvalue, rel=1e-5)
    assert float(rows[0]["paired_p"]) == pytest.approx(paired.pvalue, rel=1e-5)
    assert float(rows[0]["welch_t"]) == pytest.approx(1.7320508, rel=1e-5)
    assert float(rows[0]["paired_t"]) == pytest.approx(3.8729833, rel=1e-5)


def test_declared_comparisons_and_the_metric_follow_the_selection(tmp_path: Path) -> None:
    folder = paired_sweep(tmp_path, [{"variant": "TAKD", "baseline": "BLKD"}], selected_by="val")
    report = write_report(folder)
    ((comparison, metric),) = report.comparisons
    assert (comparison.variant, comparison.baseline, metric) == ("TAKD", "BLKD", "best")
    assert comparison.difference == pytest.approx(0.25)
    # Differences 0.5, 0, 0.5, 0 by seed.
    from scipy import stats

    assert comparison.paired_p == pytest.approx(stats.ttest_rel([12.5, 14.0, 16.5, 18.0], [12.0, 14.0, 16.0, 18.0]).pvalue)
    assert "| TAKD | BLKD | best | +0.25 |" in (folder / "results.md").read_text()
