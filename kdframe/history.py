"""A stage's per-epoch metrics, ``history.csv`` in its folder: written when the stage ends, read by
``kdframe report`` to draw training curves.

One row per epoch: ``epoch`` (counted from 1) and the epoch-end metrics the loggers get
(``train/loss``, ``train/acc``, ``test/acc``, ``test/loss``, ``val/*`` with a validation split,
``lr``, ``time/epoch_s``...). The file is read as hostile input: only numbers are kept, its size is
bounded, and a damaged file is an error that names it.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from kdframe import folders
from kdframe.errors import RunFolderError

HISTORY_FILE = "history.csv"
#: Metrics first in the file (when present), the rest in name order.
LEADING = ("train/loss", "train/acc", "val/acc", "val/loss", "test/acc", "test/loss", "lr", "time/epoch_s")
#: A history larger than this is not read (a stage of 100,000 epochs stays well below it).
MAX_BYTES = 64 * 2**20


def history_text(rows: list[dict[str, float]]) -> str:
    """The CSV text of per-epoch metric rows (the first row is epoch 1)."""
    names = {key for row in rows for key in row}
    columns = [key for key in LEADING if key in names] + sorted(names - set(LEADING))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", *columns])
    for epoch, row in enumerate(rows, start=1):
        writer.writerow([epoch, *(repr(float(row[key])) if key in row else "" for key in columns)])
    return buffer.getvalue()


def write_history(stage_folder: Path, rows: list[dict[str, float]]) -> Path | None:
    """Write ``history.csv`` atomically into ``stage_folder``; nothing when there are no rows."""
    if not rows:
        return None
    return folders.write_text_atomic(stage_folder / HISTORY_FILE, history_text(rows))


def read_history(stage_folder: Path) -> list[dict[str, float]]:
    """The rows of a stage's ``history.csv`` by epoch (``epoch`` included); ``[]`` when it has none.

    Cells that are empty or not finite numbers are left out of their row.
    """
    path = stage_folder / HISTORY_FILE
    if not path.is_file():
        return []
    try:
        if path.stat().st_size > MAX_BYTES:
            raise RunFolderError(f"'{path}' is larger than {MAX_BYTES // 2**20} MiB: it is not a history kdframe wrote. Remove it.")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RunFolderError(f"Cannot read '{path}': {error}. Remove it to report the run without its curves.") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or header[0] != "epoch":
        raise RunFolderError(f"'{path}' is not a history kdframe wrote (its first column is not 'epoch'). Remove it.")
    rows: list[dict[str, float]] = []
    for cells in reader:
        row: dict[str, float] = {}
        for name, cell in zip(header, cells):
            try:
                value = float(cell)
            except ValueError:
                continue
            if math.isfinite(value):
                row[name] = value
        if "epoch" in row:
            rows.append(row)
    return rows


__all__ = ["HISTORY_FILE", "history_text", "read_history", "write_history"]
