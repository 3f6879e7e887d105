"""Speed benchmark: kdframe's training loop, teacher-output caching, and peak memory.

Not part of the test suite. In one run on one machine it measures, on the same Fashion-MNIST tensors
(no augmentation, batch 128, SGD, channels_last, fp32 unless ``--precision``), the training time
per epoch (evaluation excluded) of:

* ``hand``: a minimal hand-written PyTorch KD loop (teacher forward without gradients, student
  forward, 0.1 * CE + 0.9 * T^2 * KL at T = 4, SGD step) over the same tensors and models;
* ``kd``: kdframe's Hinton KD stage with ``training.teacher_cache: "off"`` (the teacher runs every batch);
* ``kd_cache``: the same stage with ``teacher_cache: "memory"`` (the teacher runs once, before epoch 1);
* ``nokd``: kdframe training the same student from labels only.

The teacher is ``plain_cnn`` depth 10 and the student depth 2 (TAKD's sizes); the teacher's weights
are random (timing does not depend on them). Every measurement runs in its own subprocess, so its
peak resident memory (``ru_maxrss``) is its own; configurations are interleaved over ``--rounds`` so
that a change in machine load hits all of them alike. The epochs after the first of every round are
timed; the ratios use the fastest (the least disturbed by other processes on a shared machine), and
the table also shows the median. Then it prints the ratios:

    (a) kd / hand          target <= 1.05
    (b) kd_cache / nokd    target <= 1.15
    (c) kd / kd_cache      the caching speed-up

Usage (the figures in docs/performance.md came from this command)::

    .venv/bin/python benchmarks/speed.py --train-samples 10000 --epochs 3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS = ("hand", "kd", "kd_cache", "nokd")
TEMPERATURE = 4.0


def schedule(args: argparse.Namespace, config: str, checkpoint: str) -> dict[str, Any]:
    """The kdframe schedule of one configuration."""
    kd = config != "nokd"
    models: dict[str, Any] = {"student": {"arch": "plain_cnn", "params": {"depth": 2}}}
    if kd:
        models["teacher"] = {"arch": "plain_cnn", "params": {"depth": 10}, "checkpoint": checkpoint}
    return {
        "name": f"speed-{config}",
        "seed": 0,
        "device": "cpu",
        "data": {"dataset": "fashion_mnist", "batch_size": 128, "train_samples": args.train_samples, "test_samples": 1000},
        "models": models,
        "training": {
            "epochs": args.epochs,
            "precision": args.precision,
            "compile": args.compile,
            "teacher_cache": "memory" if config == "kd_cache" else "off",
        },
        "distill": {
            "losses": [
                {"name": "cross_entropy", "weight": 0.1},
                {"name": "hinton_kd", "weight": 0.9, "params": {"temperature": TEMPERATURE}},
            ]
        },
        "curriculum": {"name": "direct", "params": {"teacher": "teacher", "student": "student"} if kd else {"student": "student"}},
        "logging": {"loggers": [{"name": "tensorboard"}]},
    }


def peak_mib() -> float:
    """Peak resident memory of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_kdframe(args: argparse.Namespace, config: str, folder: Path, checkpoint: str) -> dict[str, Any]:
    from kdframe import hookimpl
    from kdframe.plugins import create_plugins
    from kdframe.runner import run_schedule

    class EpochTimer:
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.stage_started = 0.0

        @hookimpl
        def kdframe_on_stage_start(self) -> None:
            self.stage_started = time.perf_counter()

        @hookimpl
        def kdframe_on_epoch_end(self, state) -> None:
            self.seconds.append(state.metrics["time/epoch_s"])

    timer = EpochTimer()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{config}.json"
    path.write_text(json.dumps(schedule(args, config, checkpoint)))
    started = time.perf_counter()
    _, results = run_schedule(path, out=folder / config, quiet=True, plugins=create_plugins(plugins=[("timer", timer)]))
    # Stage start fires after the trainer's set-up, which includes building the teacher cache.
    setup_s = timer.stage_started - started
    return {"epochs": timer.seconds, "setup_s": setup_s, "acc": results[-1].final_test_acc}


def measure_hand(args: argparse.Namespace, checkpoint: str) -> dict[str, Any]:
    """The minimal hand-written KD loop over the same tensors and models."""
    import torch
    import torch.nn.functional as F

    from kdframe import checkpoints
    from kdframe.plugins import create_plugins
    from kdframe.runner import load_data, load_schedule

    plugins = create_plugins()
    folder = Path(tempfile.mkdtemp())
    path = folder / "hand.json"
    path.write_text(json.dumps(schedule(args, "kd", checkpoint)))
    loaded, plugins, _ = load_schedule(path, plugins=plugins)
    data = load_data(loaded, plugins)
    spec = plugins.registry.spec("model", "plain_cnn")
    torch.manual_seed(0)
    teacher = spec.factory(spec.params(depth=10), data.info)
    checkpoints.load_into(teacher, checkpoint, label="teacher")
    student = spec.factory(spec.params(depth=2), data.info)
    teacher.eval().to(memory_format=torch.channels_last)
    student.train().to(memory_format=torch.channels_last)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    images, labels = data.train_images, data.train_labels
    count, batch = images.shape[0], 128
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for _ in range(args.epochs):
        started = time.perf_counter()
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - count % batch, batch):
            index = order[start : start + batch]
            x = images.index_select(0, index).contiguous(memory_format=torch.channels_last)
            y = labels.index_select(0, index)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                with torch.no_grad():
                    t = teacher(x)
                s = student(x)
            s, t = s.float(), t.float()
            kl = F.kl_div(F.log_softmax(s / TEMPERATURE, 1), F.log_softmax(t / TEMPERATURE, 1), reduction="batchmean", log_target=True)
            loss = 0.1 * F.cross_entropy(s, y) + 0.9 * TEMPERATURE**2 * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    return {"epochs": seconds, "setup_s": 0.0, "acc": float("nan")}


def worker(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if args.worker == "hand":
        result = measure_hand(args, args.checkpoint)
    else:
        result = measure_kdframe(args, args.worker, folder / f"round-{args.round}", args.checkpoint)
    result["peak_mib"] = peak_mib()
    print("RESULT " + json.dumps(result))
    return 0


def make_teacher(folder: Path) -> str:
    """A depth-10 plain CNN with random weights, saved as a kdframe checkpoint."""
    import torch

    from kdframe import checkpoints
    from kdframe.data import DataInfo
    from kdframe.plugins import create_plugins

    spec = create_plugins().registry.spec("model", "plain_cnn")
    params = spec.params(depth=10)
    torch.manual_seed(0)
    teacher = spec.factory(params, DataInfo("fashion_mnist", 10, 1, (28, 28)))
    path = folder / "teacher.pt"
    checkpoints.save_model(path, teacher, key="teacher", arch="plain_cnn", params=params.model_dump(mode="json"))
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement (the first is left out)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every configuration")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--compile", action="store_true", help="training.compile: true for the kdframe configurations")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    folder = Path(tempfile.mkdtemp(prefix="kdframe-speed-"))
    checkpoint = make_teacher(folder)
    configs = [c.strip() for c in args.configs.split(",")]
    measured: dict[str, list[dict[str, Any]]] = {config: [] for config in configs}
    for round_index in range(args.rounds):
        for config in configs:
            command = [
                sys.executable, __file__, "--worker", config, "--folder", str(folder), "--checkpoint", checkpoint,
                "--round", str(round_index), "--train-samples", str(args.train_samples),
                "--epochs", str(args.epochs), "--precision", args.precision,
            ] + (["--compile"] if args.compile else [])
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ).stdout
            result = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])
            measured[config].append(result)
            steady = result["epochs"][1:] or result["epochs"]
            print(f"round {round_index + 1} {config:<9} s/epoch {statistics.median(steady):7.3f}  set-up {result['setup_s']:6.2f} s  peak {result['peak_mib']:7.0f} MiB", file=sys.stderr)

    def epochs(config: str) -> list[float]:
        return [s for result in measured[config] for s in (result["epochs"][1:] or result["epochs"])]

    def epoch_s(config: str) -> float:
        return min(epochs(config))

    print(f"\nFashion-MNIST, {args.train_samples} training samples, batch 128, {args.epochs} epochs x {args.rounds} rounds, "
          f"teacher plain_cnn-10, student plain_cnn-2, precision {args.precision}, compile {args.compile}, {os.cpu_count()} CPUs, torch threads default")
    print("| configuration | s/epoch (fastest) | s/epoch (median) | set-up s (fastest) | peak RSS MiB (max) |")
    print("|---|---|---|---|---|")
    for config in configs:
        setup = min(result["setup_s"] for result in measured[config])
        peak = max(result["peak_mib"] for result in measured[config])
        print(f"| {config} | {epoch_s(config):.3f} | {statistics.median(epochs(config)):.3f} | {setup:.2f} | {peak:.0f} |")
    if {"hand", "kd"} <= set(configs):
        print(f"(a) kdframe KD / hand-written KD loop, per epoch: {epoch_s('kd') / epoch_s('hand'):.3f}  (target <= 1.05)")
    if {"kd_cache", "nokd"} <= set(configs):
        print(f"(b) KD with cached teacher / NOKD, per epoch:      {epoch_s('kd_cache') / epoch_s('nokd'):.3f}  (target <= 1.15)")
    if {"kd", "kd_cache"} <= set(configs):
        print(f"(c) KD without / with teacher cache, per epoch:     {epoch_s('kd') / epoch_s('kd_cache'):.2f}x speed-up")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
