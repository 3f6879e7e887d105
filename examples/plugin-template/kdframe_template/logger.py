"""``csv_metrics``: a logger that appends one CSV row per epoch to a file in the run folder.

A logger is an object whose methods implement kdframe's trainer-event hooks (marked with
``kdframe.hookimpl``); its factory gets the validated params and the run folder. kdframe registers it
for one run and unregisters it afterwards, so it may keep state on ``self``. Every row is
``stage,epoch,<key>...`` with the metrics kdframe reports at the end of each epoch (``train/loss``,
``test/acc``, ``lr``, ...; a key a stage does not report stays empty).
"""

from __future__ import annotations

import csv
from pathlib import Path

from pydantic import Field

from kdframe import LoggerSpec, Params, RunInfo, StageInfo, TrainState, Control, hookimpl


class CSVMetricsParams(Params):
    """Params of ``csv_metrics``."""

    filename: str = Field(
        "metrics.csv",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*\.csv$",
        max_length=100,
        description="Name of the CSV file in the run folder (a plain file name ending in .csv).",
    )
    keys: list[str] = Field(
        default_factory=lambda: ["train/loss", "train/acc", "test/acc", "lr"],
        min_length=1,
        description="Metrics to write, one column each, in this order.",
    )


class CSVMetricsLogger:
    """Writes ``<run folder>/<filename>``: a header, then one row per epoch of every stage."""

    def __init__(self, params: CSVMetricsParams, run_folder: Path) -> None:
        self.path = Path(run_folder) / params.filename
        self.keys = list(params.keys)

    @hookimpl
    def kdframe_on_run_start(self, run: RunInfo, control: Control) -> None:
        if not self.path.exists():  # a resumed run appends to the file it started
            with self.path.open("w", newline="") as stream:
                csv.writer(stream).writerow(["stage", "epoch", *self.keys])

    @hookimpl
    def kdframe_on_epoch_end(self, run: RunInfo, stage: StageInfo, state: TrainState, control: Control) -> None:
        row = [stage.name, state.epoch + 1, *(state.metrics.get(key, "") for key in self.keys)]
        with self.path.open("a", newline="") as stream:
            csv.writer(stream).writerow(row)


SPEC = LoggerSpec(
    name="csv_metrics",
    summary="One CSV row per epoch (stage, epoch, chosen metrics) in the run folder (template).",
    factory=CSVMetricsLogger,
    params=CSVMetricsParams,
    family="file",
)
