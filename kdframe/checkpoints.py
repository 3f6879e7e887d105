"""Saving and loading model checkpoints, safely.

Checkpoints are written atomically and durably with :func:`kdframe.folders.save_atomic` (temporary
file in the same folder, fsync, rename, fsync of the folder; a full or read-only disk is a
:class:`~kdframe.errors.StorageError` that leaves an earlier file intact) and read with
``torch.load(weights_only=True)``, so loading a file from elsewhere never executes code. A kdframe
checkpoint is a dict ``{"format": "kdframe-model/1", "model", "arch", "params", "state_dict",
"sha256"}``; ``sha256`` is the checksum of the rest (:func:`payload_digest`), verified on every load,
so a flipped bit is refused instead of training on silently different weights. A plain
``state_dict`` (or an older kdframe file without the checksum) is accepted too.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from kdframe.errors import CheckpointError
from kdframe.folders import save_atomic

FORMAT = "kdframe-model/1"
#: Key of the SHA-256 of the rest of a payload (see :func:`payload_digest`) in the files kdframe writes.
CHECKSUM_KEY = "sha256"

#: How to make a checkpoint kdframe can read, appended to messages about unreadable files.
_REMAKE = (
    "Point 'checkpoint' at a file written by kdframe (a stage's student.pt) or by "
    "torch.save(model.state_dict(), path), or remove 'checkpoint' to train that model in its own stage."
)

__all__ = [
    "CHECKSUM_KEY",
    "WeightsReport",
    "load_matching",
    "FORMAT",
    "atomic_torch_save",
    "checkpoint_bytes",
    "load_into",
    "load_payload",
    "load_state_dict",
    "payload_digest",
    "save_atomic",
    "save_model",
]


def save_model(path: Path, model: nn.Module, *, key: str, arch: str, params: dict[str, Any]) -> None:
    """Write ``model``'s weights with what built it, atomically and durably.

    Raises :class:`~kdframe.errors.StorageError` when the file cannot be written (an earlier file at
    ``path`` is then left as it was).
    """
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    payload = {"format": FORMAT, "model": key, "arch": arch, "params": params, "state_dict": state}
    atomic_torch_save(payload, path, what="checkpoint")


def atomic_torch_save(payload: Any, path: Path, *, what: str = "checkpoint") -> Path:
    """``torch.save(payload)`` to ``path`` with :func:`~kdframe.folders.save_atomic`'s guarantees
    (e.g. a full-state checkpoint dict of model, optimizer and epoch); returns ``path``. A dict
    payload gets its :func:`payload_digest` under :data:`CHECKSUM_KEY`, which :func:`load_payload`
    verifies, so a changed bit anywhere in its tensors or values is detected."""
    if isinstance(payload, dict):
        payload = {**payload, CHECKSUM_KEY: payload_digest(payload)}

    def write(stream: BinaryIO) -> None:
        torch.save(payload, stream)

    return save_atomic(Path(path), write, what=what)


def payload_digest(payload: Any) -> str:
    """SHA-256 of a checkpoint payload's content: every tensor's dtype, shape and bytes and every
    other value, in order, so it is the same before ``torch.save`` and after ``torch.load``."""
    digest = hashlib.sha256()
    pending: list[Any] = [payload]
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            tensor = item.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # no copy
        elif isinstance(item, dict):
            digest.update(f"D{len(item)}".encode())
            for key, value in reversed(list(item.items())):
                pending += [value, key]
        elif isinstance(item, (list, tuple)):
            digest.update(f"L{len(item)}".encode())
            pending += reversed(item)
        else:
            digest.update(f"V{type(item).__name__}:{item!r};".encode())
    return digest.hexdigest()


def checkpoint_bytes(model: nn.Module) -> int:
    """An estimate of the size of ``model``'s checkpoint on disk (its state dict plus some overhead),
    for :func:`kdframe.folders.check_writable`."""
    tensors = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    return tensors + 64 * len(model.state_dict()) + 4096


def load_payload(path: str | Path, *, what: str = "checkpoint", advice: str | None = None) -> Any:
    """Read any file written with ``torch.save`` (e.g. a full-state checkpoint) without executing
    code: ``torch.load(weights_only=True)`` on the CPU.

    A missing, empty, truncated or corrupt file, or one that holds Python objects other than tensors
    and plain data, is a :class:`CheckpointError` naming ``what`` and the file, saying what is wrong
    and ending with ``advice`` (by default: how to make a model checkpoint kdframe reads, for
    ``what="checkpoint"``; restore or delete the file, otherwise).
    """
    file = Path(path)
    label = f"{what[:1].upper()}{what[1:]} '{file}'"
    fix = advice or (_REMAKE if what == "checkpoint" else "Restore a good copy of it, or delete it and run again.")
    if not file.exists():
        raise CheckpointError(
            f"{label} does not exist. Fix the path, or remove 'checkpoint' to train that model from "
            "scratch in its own stage."
            if what == "checkpoint"
            else f"{label} does not exist. {fix}"
        )
    if not file.is_file():
        raise CheckpointError(f"{label} is not a file (it is a folder or a device). {fix}")
    try:
        size = file.stat().st_size
    except OSError as error:
        raise CheckpointError(f"{label} cannot be read: {error.strerror or error}. {fix}") from None
    if size == 0:
        raise CheckpointError(f"{label} is empty (0 bytes); it was probably cut off while being written. {fix}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's own advice would be to load unsafely
            payload = torch.load(file, map_location="cpu", weights_only=True)
    except OSError as error:
        raise CheckpointError(f"{label} cannot be read: {error.strerror or error}. {fix}") from None
    except Exception as error:  # torch.load raises many types on hostile bytes; none is a kdframe bug
        raise CheckpointError(f"{label} {_unreadable(error)} {fix}") from None
    if isinstance(payload, dict) and CHECKSUM_KEY in payload:
        stored = payload.pop(CHECKSUM_KEY)
        if stored != payload_digest(payload):
            raise CheckpointError(
                f"{label} is corrupt: its content does not match the checksum kdframe stored when it "
                f"wrote the file (a bit changed on disk, in memory or in a copy). {fix}"
            )
    return payload


#: How to make a weights file kdframe reads, appended to messages about unreadable ``weights`` files.
_REMAKE_WEIGHTS = (
    "Point 'weights' at a file written by torch.save(model.state_dict(), path) (such as torchvision's "
    ".pth files) or a kdframe student.pt, or remove 'weights' to start from a random initialisation."
)


def load_state_dict(path: str | Path, *, expected_arch: str | None = None, weights_file: bool = False) -> dict[str, torch.Tensor]:
    """Read a model checkpoint's state dict without executing code (see :func:`load_payload`).

    A missing, empty, truncated or corrupt file, a file that holds Python objects other than tensors,
    or a kdframe checkpoint of another architecture is a :class:`CheckpointError` that names the
    file, the problem and the fix.
    """
    file = Path(path)
    what, remake = ("weights file", _REMAKE_WEIGHTS) if weights_file else ("checkpoint", _REMAKE)
    payload = load_payload(file, what=what, advice=remake if weights_file else None)
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
    if (
        not isinstance(state, dict)
        or not all(isinstance(name, str) for name in state)
        or not all(isinstance(value, torch.Tensor) for value in state.values())
    ):
        raise CheckpointError(
            f"{what[:1].upper()}{what[1:]} '{file}' is neither a kdframe checkpoint nor a state_dict of tensors "
            f"(it holds a {type(payload).__name__}). {remake}"
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
            "arch and params match those the checkpoint was trained with; to fine-tune pretrained "
            "weights with a new head (another number of classes), give the file as 'weights' "
            "instead of 'checkpoint'."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # e.g. a tensor type that cannot be copied into a parameter
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(
            f"Checkpoint '{path}' does not fit {label}: {first_line[:300]}. Check that the model's "
            "arch and params match those the checkpoint was trained with."
        ) from None


@dataclass
class WeightsReport:
    """What :func:`load_matching` did with a weights file.

    Attributes:
        path: The file.
        loaded: Names of the model's tensors that were loaded from it.
        reinitialised: ``(name, shape in the file, shape in the model)`` of tensors whose shapes
            differ (e.g. a classifier head for another number of classes): they keep their fresh
            initialisation.
        not_in_file: Names of the model's tensors the file lacks (they keep their initialisation).
        not_in_model: Names of the file's tensors the model has no place for (ignored).
        stripped_prefix: A prefix removed from every name in the file (``module.`` of a model saved
            from ``DataParallel``), or "".
    """

    path: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    not_in_file: list[str] = field(default_factory=list)
    not_in_model: list[str] = field(default_factory=list)
    stripped_prefix: str = ""

    def summary(self, label: str) -> str:
        """One paragraph for the console: how many tensors were loaded and which were not."""
        total = len(self.loaded) + len(self.reinitialised) + len(self.not_in_file)
        parts = [f"{label} starts from '{self.path}': {len(self.loaded)} of {total} weight tensors loaded"]
        if self.reinitialised:
            shown = "; ".join(f"{name} (file {_shape(a)}, model {_shape(b)})" for name, a, b in self.reinitialised[:4])
            more = f"; and {len(self.reinitialised) - 4} more" if len(self.reinitialised) > 4 else ""
            parts.append(f"re-initialised (shape differs): {shown}{more}")
        if self.not_in_file:
            parts.append(f"not in the file, initialised: {_names(self.not_in_file)}")
        if self.not_in_model:
            parts.append(f"ignored (not in the model): {_names(self.not_in_model)}")
        if self.stripped_prefix:
            parts.append(f"the prefix '{self.stripped_prefix}' was removed from the file's names")
        return "; ".join(parts) + "."

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "loaded": self.loaded,
            "reinitialised": [{"name": name, "file_shape": list(a), "model_shape": list(b)} for name, a, b in self.reinitialised],
            "not_in_file": self.not_in_file,
            "not_in_model": self.not_in_model,
            "stripped_prefix": self.stripped_prefix,
        }


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _names(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


#: Prefixes that wrappers add to every name of a saved state dict (DataParallel, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def load_matching(model: nn.Module, path: str | Path, *, label: str) -> WeightsReport:
    """Load into ``model`` every tensor of a weights file whose name and shape fit; return what was
    loaded, re-initialised and ignored (:class:`WeightsReport`).

    The file is read like a checkpoint (``weights_only=True``; a kdframe checkpoint of any
    architecture or a plain state dict). A file of which nothing fits the model is a
    :class:`CheckpointError`: it is a weights file of another network.
    """
    state = load_state_dict(path, weights_file=True)
    own = model.state_dict()
    report = WeightsReport(str(path))
    for prefix in _WRAPPER_PREFIXES:
        if state and not any(name in own for name in state) and all(name.startswith(prefix) for name in state):
            state = {name[len(prefix):]: tensor for name, tensor in state.items()}
            report.stripped_prefix = prefix
    fitting: dict[str, torch.Tensor] = {}
    for name, tensor in own.items():
        if name not in state:
            report.not_in_file.append(name)
        elif state[name].shape != tensor.shape:
            report.reinitialised.append((name, tuple(state[name].shape), tuple(tensor.shape)))
        else:
            fitting[name] = state[name]
            report.loaded.append(name)
    report.not_in_model = [name for name in state if name not in own]
    if not fitting:
        examples = ", ".join(list(state)[:3]) or "none"
        raise CheckpointError(
            f"Weights file '{path}' has nothing that fits {label}: none of its {len(state)} tensors "
            f"(e.g. {examples}) has the name and shape of one of the model's (e.g. "
            f"{', '.join(list(own)[:3])}). It holds the weights of another network; check the file "
            "and the model's arch and params."
        )
    try:
        model.load_state_dict(fitting, strict=False)
    except RuntimeError as error:  # e.g. a tensor type that cannot be copied into a parameter
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"Weights file '{path}' does not fit {label}: {first_line[:300]}.") from None
    return report


def _unreadable(error: Exception) -> str:
    """Why ``torch.load`` could not read a file, in words (the rest of a sentence after the name)."""
    text = str(error)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return (
            f"holds Python objects other than tensors ({refused.group(1)}), which kdframe refuses to "
            "load: checkpoints are read with weights_only=True so that no code in them ever runs. If "
            "you trust the file, load it yourself and save only the weights with "
            "torch.save(model.state_dict(), path)."
        )
    if "Weights only load failed" in text or "magic number" in text:
        return "is not a PyTorch checkpoint (it is corrupt, or a file of another format)."
    if isinstance(error, EOFError) or "central directory" in text or "zip archive" in text:
        return "is truncated or corrupt (it was probably cut off while being written)."
    first_line = (text.strip().splitlines() or [type(error).__name__])[0]
    return f"cannot be read safely ({type(error).__name__}: {first_line[:200]}); it may be truncated or corrupt."
