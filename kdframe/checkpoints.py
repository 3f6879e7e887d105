"""Saving and loading model checkpoints, safely.

Checkpoints are written atomically (temporary file, fsync, rename) and read with
``torch.load(weights_only=True)``, so loading a file from elsewhere never executes code. A kdframe
checkpoint is a dict ``{"format": "kdframe-model/1", "model", "arch", "params", "state_dict"}``; a
plain ``state_dict`` is accepted too.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdframe.errors import CheckpointError

FORMAT = "kdframe-model/1"


def save_model(path: Path, model: nn.Module, *, key: str, arch: str, params: dict[str, Any]) -> None:
    """Write ``model``'s weights with what built it, atomically."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    payload = {"format": FORMAT, "model": key, "arch": arch, "params": params, "state_dict": state}
    atomic_torch_save(payload, path)


def atomic_torch_save(payload: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync it, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_state_dict(path: str | Path, *, expected_arch: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint's state dict without executing code; errors say what is wrong."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(
            f"Checkpoint '{file}' does not exist. Fix the path, or remove 'checkpoint' to train "
            "that model from scratch in its own stage."
        )
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"Checkpoint '{file}' cannot be read safely: {first_line[:300]}. It may be truncated, "
            "corrupt, or contain Python objects other than tensors (kdframe loads with "
            "weights_only=True and never runs code from a checkpoint)."
        ) from None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        arch = payload.get("arch")
        if expected_arch is not None and arch != expected_arch:
            raise CheckpointError(
                f"Checkpoint '{file}' holds a '{arch}' model, but the schedule builds a "
                f"'{expected_arch}'. Point the model at a checkpoint of its own architecture."
            )
        state = payload.get("state_dict")
    else:
        state = payload
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(
            f"Checkpoint '{file}' is neither a kdframe checkpoint nor a state_dict of tensors."
        )
    return state


def load_into(model: nn.Module, path: str | Path, *, label: str, expected_arch: str | None = None) -> None:
    """Load a checkpoint into ``model``; any missing, unexpected or mis-shaped weight is an error."""
    state = load_state_dict(path, expected_arch=expected_arch)
    own = model.state_dict()
    missing = [name for name in own if name not in state]
    unexpected = [name for name in state if name not in own]
    mismatched = [
        f"{name} {tuple(state[name].shape)} vs {tuple(own[name].shape)}"
        for name in own
        if name in state and state[name].shape != own[name].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weights (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} of other shapes (checkpoint vs model: {'; '.join(mismatched[:3])})")
        raise CheckpointError(
            f"Checkpoint '{path}' does not fit {label}: {', '.join(parts)}. Check that the model's "
            "arch and params match those the checkpoint was trained with."
        )
    model.load_state_dict(state, strict=True)
