"""results.json and the printed table."""

import json

from kdframe.results import format_table, write_results
from kdframe.state import StageResult


def result(stage: str, teachers: tuple[str, ...], acc: float, collapsed: bool = False) -> StageResult:
    return StageResult(stage, stage, "plain_cnn", teachers, 3, 3, acc, acc + 1, 2, 12345, 10.5, f"stages/{stage}/student.pt", collapsed)


def test_results_file_and_table(tmp_path) -> None:
    rows = [result("teacher", (), 90.0), result("student", ("teacher",), 25.0, collapsed=True)]
    path = write_results(tmp_path, "demo", rows, finished=True)
    data = json.loads(path.read_text())
    assert data["finished"] is True and data["total_wall_time_s"] == 21.0
    assert data["stages"][1]["teachers"] == ["teacher"]
    table = format_table(data["stages"]).splitlines()
    assert table[0].split()[:2] == ["stage", "arch"]
    assert "- (labels)" in table[2] and "91.00 (2)" in table[2] and "12.3k" in table[2]
    assert "collapsed" in table[3]
    assert not list(tmp_path.glob(".*tmp"))
