"""Output folders of runs and sweeps: a fresh default name, and never writing over earlier results."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from kdframe.errors import RunFolderError


def default_folder(name: str) -> Path:
    """``runs/<name>-<timestamp>``, with a numeric suffix when that already exists."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path("runs") / f"{name}-{stamp}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = Path("runs") / f"{name}-{stamp}-{suffix}"
    return folder


def check_unused(folder: Path, what: str) -> None:
    """Refuse a folder that already holds files: kdframe never writes over an earlier result."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise RunFolderError(
            f"{what.capitalize()} folder '{folder}' already exists and is not empty; kdframe never "
            "writes over an earlier run or sweep. Choose another --out, or move that folder away."
        )


def claim(folder: Path, what: str) -> Path:
    """Create ``folder`` (refusing one that holds files) and check that it is writable."""
    check_unused(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise RunFolderError(f"Cannot write to {what} folder '{folder}': {error.strerror}. Choose another --out.") from None
    return folder


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, fsync it, then rename it over ``path``, so a
    crash leaves either the old file or the new one, never half of one."""
    temporary = path.parent / f".{path.name}.tmp"
    with open(temporary, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    return path
