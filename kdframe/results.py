"""``results.json`` and the results table printed at the end of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdframe.folders import write_text_atomic
from kdframe.state import StageResult

RESULTS_FILE = "results.json"


def write_results(folder: Path, name: str, results: list[StageResult], *, finished: bool) -> Path:
    """Write ``results.json`` atomically: the run's name, whether it finished, and one row per stage."""
    payload: dict[str, Any] = {
        "name": name,
        "finished": finished,
        "stages": [result.to_dict() for result in results],
        "total_wall_time_s": round(sum(result.wall_time_s for result in results), 3),
    }
    return write_text_atomic(folder / RESULTS_FILE, json.dumps(payload, indent=2) + "\n")


def final_student_index(checkpoints: list[str]) -> int | None:
    """Which stage holds a run's final student, given each stage's ``checkpoint``: the last stage
    that saved a model (an evaluate stage saves none); ``None`` when none did."""
    saved = [index for index, checkpoint in enumerate(checkpoints) if checkpoint]
    return saved[-1] if saved else None


def _count(value: int) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.2f}M"
    if value >= 1_000:
        return f"{value / 1_000:.1f}k"
    return str(value)


def _times(value: Any) -> str:
    return f"{value:.1f}x" if isinstance(value, (int, float)) else "-"


def format_grid(lines: list[list[str]]) -> str:
    """Rows of cells as a plain-text table; the first row is the header."""
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    text = []
    for number, line in enumerate(lines):
        text.append("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())
        if number == 0:
            text.append("  ".join("-" * width for width in widths))
    return "\n".join(text)


def format_compression(rows: list[dict[str, Any]], *, against: str | None = None) -> str:
    """The compact compression table of a run's stage rows (as in ``results.json``): each model's
    size and speed and how many times smaller and faster than the run's teacher it is; "" when no
    row has a ``compression`` entry. ``against`` replaces "the teacher '<name>'" in the title (rows
    of several runs, each measured against its own teacher)."""
    measured = [row for row in rows if isinstance(row.get("compression"), dict)]
    if not measured:
        return ""
    first = measured[0]["compression"]
    header = ["model", "params", "MACs", "size", "latency b1", "throughput", "acc %", "params /", "MACs /", "speed-up", "acc Δ"]
    lines = [header]
    reference = first.get("reference")
    teacher = first.get("reference_figures")
    if isinstance(teacher, dict) and reference not in {row["model"] for row in measured}:
        # A teacher loaded from a checkpoint has no stage: its figures come with every stage's.
        accuracy = teacher.get("test_acc")
        measured = [
            {"model": f"{reference} (checkpoint)", "final_test_acc": accuracy, "compression": {**teacher, "vs_reference": {
                "params_x": 1.0, "macs_x": 1.0, "speedup_x": 1.0, "acc_delta": 0.0 if accuracy is not None else None}}},
            *measured,
        ]
    for row in measured:
        figures = row["compression"]
        vs = figures.get("vs_reference", {})
        delta = vs.get("acc_delta")
        lines.append(
            [
                row["model"],
                _count(int(figures["params"])),
                _count(int(figures["macs"])),
                f"{figures['size_mb']:.2f} MB",
                f"{figures['latency']['median_ms']:.2f} ms",
                f"{_count(int(figures['throughput']['images_per_s']))} img/s",
                "-" if row["final_test_acc"] is None else f"{row['final_test_acc']:.2f}",
                _times(vs.get("params_x")),
                _times(vs.get("macs_x")),
                _times(vs.get("speedup_x")),
                "-" if delta is None else f"{delta:+.2f}",
            ]
        )
    reference_text = against if against is not None else f"the teacher '{first.get('reference', '?')}'"
    title = (
        f"Compression vs {reference_text} (fp32, eager PyTorch on "
        f"{first.get('device', '?')}, {first.get('threads', '?')} threads; latency: median of batch 1, "
        f"throughput: batch {first['throughput']['batch']}):"
    )
    return title + "\n" + format_grid(lines)


def format_table(rows: list[dict[str, Any]], *, first_column: str = "stage") -> str:
    """A plain-text table of stage results (rows as in ``results.json``). With a validation split,
    the best epoch is the validation split's and the test accuracy is shown at it. The first column
    (headed ``first_column``) shows each row's ``stage``."""
    validated = any(row.get("best_val_acc") is not None for row in rows)
    if validated:
        header = [first_column, "arch", "teachers", "epochs", "final test %", "best val % (epoch)", "test % at best", "params", "time"]
    else:
        header = [first_column, "arch", "teachers", "epochs", "final acc %", "best acc % (epoch)", "params", "time"]
    lines = [header]
    for row in rows:
        flag = "  collapsed" if row.get("collapsed") else ""
        if validated:
            val = row.get("best_val_acc")
            picked = ["-" if val is None else f"{val:.2f} ({row['best_epoch']})", f"{row['best_test_acc']:.2f}"]
        else:
            picked = [f"{row['best_test_acc']:.2f} ({row['best_epoch']})"]
        lines.append(
            [
                row["stage"],
                row.get("arch_label") or row["arch"],
                ",".join(row["teachers"]) or "- (labels)",
                f"{row['epochs_run']}/{row['epochs']}",
                f"{row['final_test_acc']:.2f}{flag}",
                *picked,
                _count(row["params"]),
                f"{row['wall_time_s']:.0f} s",
            ]
        )
    return format_grid(lines)
