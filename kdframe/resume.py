"""Full-state stage checkpoints, what ``kdframe resume`` needs to continue a run, and signal handling.

After every epoch the trainer's state (student, loss-term modules such as adapters, optimizer, LR
schedule, step, the outcome so far), the random-number generators of torch, NumPy and Python and the
state event-hook plugins hand over are written atomically to ``state.pt`` in the stage's folder. A
resumed run restores finished stages from their folders and continues the unfinished one from its last
completed epoch. Every file is read back with ``torch.load(weights_only=True)``: no code in a
checkpoint ever runs.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdframe.checkpoints import atomic_torch_save, load_payload
from kdframe.errors import CheckpointError

#: Name of a stage's full-state checkpoint inside its folder.
STATE_FILE = "state.pt"
STATE_FORMAT = "kdframe-stage-state/1"


def rng_state() -> dict[str, Any]:
    """The states of torch's (CPU and CUDA), NumPy's and Python's global generators, as plain data
    that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["numpy"]
    keys = saved["keys"].numpy().astype(np.uint32)
    np.random.set_state((saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["gauss"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))


def save_stage_state(folder: Path, stage: str, trainer_state: dict[str, Any], plugin_state: dict[str, Any]) -> Path:
    """Write a stage's full state to ``folder/state.pt`` atomically (the previous one survives any
    failure)."""
    payload = {
        "format": STATE_FORMAT,
        "stage": stage,
        "trainer": trainer_state,
        "rng": rng_state(),
        "plugins": plugin_state,
    }
    return atomic_torch_save(payload, folder / STATE_FILE, what="stage state checkpoint")


def load_stage_state(folder: Path, stage: str) -> dict[str, Any] | None:
    """The full state saved in a stage's folder, or ``None`` when the stage never finished an epoch."""
    path = folder / STATE_FILE
    if not path.exists():
        return None
    advice = "Delete it to restart that stage from its beginning, then run 'kdframe resume' again."
    payload = load_payload(path, what="stage state checkpoint", advice=advice)
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT or payload.get("stage") != stage:
        raise CheckpointError(f"'{path}' is not the state checkpoint of stage '{stage}' written by kdframe. {advice}")
    return payload


def schedule_diff(before: Any, after: Any, path: str = "") -> list[str]:
    """Every difference between two JSON documents, one ``path: old -> new`` line each."""
    if isinstance(before, dict) and isinstance(after, dict):
        lines = []
        for key in sorted(set(before) | set(after), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in before:
                lines.append(f"{where}: added {json.dumps(after[key])}")
            elif key not in after:
                lines.append(f"{where}: removed (was {json.dumps(before[key])})")
            else:
                lines += schedule_diff(before[key], after[key], where)
        return lines
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [line for i, (a, b) in enumerate(zip(before, after)) for line in schedule_diff(a, b, f"{path}[{i}]")]
    if before != after:
        return [f"{path or '(top level)'}: {json.dumps(before)} -> {json.dumps(after)}"]
    return []


class StopSignals:
    """Turns SIGTERM and SIGINT into a request to stop between two batches (first signal) while it
    is active; a second signal interrupts at once. Only the main thread can install handlers; in
    other threads this does nothing."""

    def __init__(self) -> None:
        self.received: str | None = None

    def __call__(self) -> str | None:
        """The name of the signal received, if any."""
        return self.received

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def handle(number: int, frame: Any) -> None:
            if self.received is not None:
                raise KeyboardInterrupt
            self.received = signal.Signals(number).name

        for sig in previous:
            signal.signal(sig, handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
