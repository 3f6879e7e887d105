"""How much a training step pays for batch augmentation: random_crop_flip on a CIFAR-sized batch.

Not part of the test suite (a timed assertion there fails on a busy machine). Prints the median time
of ``random_crop_flip(4)`` on a 128 x 3 x 32 x 32 batch, the median time of one training step
(forward, backward, SGD) of a ``plain_cnn`` of depth 2 (the smallest model kdframe ships, so the
ratio is the worst case) on the same batch, and their ratio. Usage:

    .venv/bin/python benchmarks/augment.py [--batch 128] [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdframe.data import DataInfo
from kdframe.plugins import create_plugins
from kdframe_data.augment import random_crop_flip


def median_seconds(work, repeats: int) -> float:
    work()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    images = torch.randn(args.batch, 3, 32, 32)
    labels = torch.randint(0, 10, (args.batch,))
    augment = random_crop_flip(4)
    generator = torch.Generator().manual_seed(0)
    spec = create_plugins().registry.spec("model", "plain_cnn")
    model = spec.factory(spec.params.model_validate({"depth": 2}), DataInfo("cifar10", 10, 3, (32, 32)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    augment_s = median_seconds(lambda: augment(images, generator), args.repeats)
    step_s = median_seconds(step, args.repeats)
    print(f"threads: {torch.get_num_threads()}, batch {args.batch}x3x32x32")
    print(f"random_crop_flip(4):             {augment_s * 1000:.2f} ms")
    print(f"plain_cnn depth 2 training step: {step_s * 1000:.2f} ms")
    print(f"ratio augment / step:            {augment_s / step_s:.3f}")


if __name__ == "__main__":
    main()
