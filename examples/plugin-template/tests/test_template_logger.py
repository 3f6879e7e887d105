"""``csv_metrics``: a real run writes one row per epoch; a file name that is a path is refused."""

from __future__ import annotations

import csv

import pytest
from pydantic import ValidationError

from kdframe.testing import tiny_schedule
from kdframe_template.logger import CSVMetricsParams


def test_a_run_writes_a_row_per_epoch_of_every_stage(kdframe_run) -> None:
    schedule = tiny_schedule(**{"training.epochs": 2, "logging.loggers": [{"name": "csv_metrics", "params": {"keys": ["train/loss", "test/acc"]}}]})
    folder, results = kdframe_run(schedule)
    with (folder / "metrics.csv").open() as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == ["stage", "epoch", "train/loss", "test/acc"]
    stages = [result.stage for result in results]
    assert [(row[0], row[1]) for row in rows[1:]] == [(stage, str(epoch)) for stage in stages for epoch in (1, 2)]
    final = {row[0]: float(row[3]) for row in rows[1:] if row[1] == "2"}
    assert final == {result.stage: pytest.approx(result.final_test_acc, abs=1e-3) for result in results}


@pytest.mark.parametrize("name", ["../metrics.csv", "/tmp/metrics.csv", "metrics.txt", ""])
def test_the_file_name_must_be_a_plain_csv_name(name: str) -> None:
    with pytest.raises(ValidationError):
        CSVMetricsParams(filename=name)
