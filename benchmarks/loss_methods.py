"""Distil one plain-CNN teacher into a 2-layer student with every registered loss, same budget each.

Not part of the test suite. Prints a Markdown table: method, family, final and best test accuracy,
seconds per epoch. Usage (the figures in docs/methods.md came from the defaults):

    .venv/bin/python benchmarks/loss_methods.py [--train-samples 20000] [--epochs 3] [--methods 'rkd*,at']

The teacher (plain_cnn depth 6 by default) is trained once from labels; the NOKD row is the student
trained from labels alone. Every method's stage is ``method (the spec's
suggested weight)`` with ``cross_entropy`` at the spec's ``label_weight``, and the method's example
params (its ``example``: layer paths of a plain_cnn 6 teacher and plain_cnn 2 student).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from kdframe import hookimpl
from kdframe.plugins import create_plugins
from kdframe.runner import run_schedule
from kdframe.value_schedule import as_json


class EpochTimer:
    """Collects each epoch's training time."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    @hookimpl
    def kdframe_on_epoch_end(self, state) -> None:
        self.seconds.append(state.metrics["time/epoch_s"])


def base_schedule(args: argparse.Namespace, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "seed": args.seed,
        "device": args.device,
        "data": {"dataset": "fashion_mnist", "batch_size": 128, "train_samples": args.train_samples},
        "models": {
            "teacher": {"arch": "plain_cnn", "params": {"depth": args.teacher_depth}},
            "student": {"arch": "plain_cnn", "params": {"depth": 2}},
        },
        "training": {"epochs": args.epochs},
        "logging": {"loggers": []},
    }


def run(schedule: dict[str, Any], folder: Path) -> tuple[dict[str, Any], float]:
    path = folder / f"{schedule['name']}.json"
    path.write_text(json.dumps(schedule, indent=2))
    timer = EpochTimer()
    plugins = create_plugins(plugins=[("epoch-timer", timer)])
    _, results = run_schedule(path, out=folder / schedule["name"], quiet=True, plugins=plugins)
    last = results[-1]
    epochs_of_last = timer.seconds[-last.epochs_run :]
    return last.to_dict(), statistics.mean(epochs_of_last)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-samples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3, help="student epochs per method")
    parser.add_argument("--teacher-depth", type=int, default=6)
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default="*", help="comma-separated wildcards of loss names")
    parser.add_argument("--out", help="folder for the runs (default: a temporary folder)")
    args = parser.parse_args(argv)

    folder = Path(args.out or tempfile.mkdtemp(prefix="kdframe-methods-"))
    folder.mkdir(parents=True, exist_ok=True)
    registry = create_plugins().registry
    patterns = [p.strip() for p in args.methods.split(",")]
    specs = [
        c.spec for c in registry.iter("loss")
        if c.name != "cross_entropy" and any(fnmatch.fnmatchcase(c.name, p) for p in patterns)
    ]

    teacher = base_schedule(args, "teacher")
    teacher["training"]["epochs"] = args.teacher_epochs
    teacher["curriculum"] = {"name": "direct", "params": {"student": "teacher"}}
    teacher_row, _ = run(teacher, folder)
    checkpoint = str(folder / "teacher" / teacher_row["checkpoint"])
    print(f"teacher plain_cnn-{args.teacher_depth}: {teacher_row['final_test_acc']:.2f} % after {args.teacher_epochs} epochs", file=sys.stderr)

    rows = []
    nokd = base_schedule(args, "nokd")
    nokd["curriculum"] = {"name": "direct", "params": {"student": "student"}}
    row, seconds = run(nokd, folder)
    rows.append(("NOKD (labels only)", "-", row, seconds))
    for spec in specs:
        schedule = base_schedule(args, spec.name)
        schedule["models"]["teacher"]["checkpoint"] = checkpoint
        schedule["curriculum"] = {"name": "direct", "params": {"teacher": "teacher", "student": "student"}}
        schedule["distill"] = {
            "losses": [
                {"name": "cross_entropy", "weight": spec.label_weight},
                {"name": spec.name, "weight": as_json(spec.weight), "params": spec.example},
            ]
        }
        try:
            row, seconds = run(schedule, folder)
        except Exception as error:  # report and go on: the table shows which method failed
            print(f"{spec.name} failed: {type(error).__name__}: {error}", file=sys.stderr)
            rows.append((spec.name, spec.family, None, 0.0))
            continue
        rows.append((spec.name, spec.family, row, seconds))
        print(f"{spec.name}: {row['final_test_acc']:.2f} %", file=sys.stderr)

    print("| method | family | final test acc % | best test acc % | s/epoch |")
    print("|---|---|---|---|---|")
    for name, family, row, seconds in rows:
        if row is None:
            print(f"| {name} | {family} | failed | failed | - |")
        else:
            print(f"| {name} | {family} | {row['final_test_acc']:.2f} | {row['best_test_acc']:.2f} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
