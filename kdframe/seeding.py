"""Seeds: the one derivation of every named seed from a run's seed, and seeding the global generators.

A model's initial weights, a stage's global generators and a stage's per-epoch shuffling each get a
seed that depends only on the schedule's ``seed`` and a name, so a model or stage is the same
whatever else the schedule holds (sweeps share them on this).
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import torch


def derived_seed(seed: int, name: str) -> int:
    """A seed for one named thing (``"model:teacher"``, ``"stage:student"``, a stage's shuffling by
    its bare name) that depends only on the run's seed and the name."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**62


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
