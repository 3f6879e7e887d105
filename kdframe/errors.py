"""Errors that kdframe reports to users.

Every error a user can cause (a bad schedule, an unknown component, missing data, a checkpoint that
does not fit) is a :class:`KdframeError`. The CLI prints its message as one paragraph and exits with
status 2, without a traceback unless ``--debug`` is given. Anything else escaping is a bug.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KdframeError(Exception):
    """Base class of every error caused by input: its message says what is wrong and how to fix it."""


class ScheduleError(KdframeError):
    """The schedule is malformed JSON or does not validate."""


class ComponentError(KdframeError):
    """A component (loss, model, curriculum, dataset, logger) is unknown, duplicated or misconfigured."""


class PluginError(KdframeError):
    """A plugin failed to load or implements a hook that does not exist."""


class DataError(KdframeError):
    """A dataset's files are missing or unreadable."""


class CheckpointError(KdframeError):
    """A checkpoint is missing, unreadable or does not fit its model."""


class LayerError(KdframeError):
    """A layer path named by a loss does not exist in the model or has an unusable output."""


class RunFolderError(KdframeError):
    """The run folder cannot be used (it already holds a run, or it is not writable)."""


class FolderInUseError(RunFolderError):
    """Another kdframe process holds the folder's lock."""


class StorageError(KdframeError):
    """A file cannot be written: the disk is full, the file system is read-only, or permission is
    denied. The message names the file, the reason and what to do; an earlier file is left intact."""


class TrainingError(KdframeError):
    """Training cannot continue (a non-finite loss, a collapse with ``on_collapse: stop``)."""


class ResumeError(KdframeError):
    """A run cannot be resumed as asked (e.g. the schedule changed and --force was not given)."""


class ExportError(KdframeError):
    """A model cannot be exported, or its exported artefact does not compute what the model does."""


class SweepError(KdframeError):
    """A sweep file is malformed, one of its variants does not validate, or its runs cannot share."""


class TuneError(KdframeError):
    """A tune file is malformed, its search space gives invalid schedules, or its study cannot be read."""


def printable(text: str, *, limit: int | None = None, keep_newlines: bool = False) -> str:
    """``text`` safe to print on a terminal: every non-printable character (ANSI escape sequences,
    other control characters, right-to-left overrides and other format characters) is shown as a
    Python-style escape such as ``\\x1b`` or ``\\u202e``; with ``limit``, text longer than that is cut
    and marked with ``...``. Newlines are kept when ``keep_newlines`` (a multi-line message)."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    if text.isprintable():
        return text
    parts = []
    for char in text:
        if char.isprintable() or (keep_newlines and char == "\n"):
            parts.append(char)
        else:
            code = ord(char)
            parts.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(parts)


def suggest(name: str, choices: Iterable[str], limit: int = 3) -> str:
    """Return a sentence suggesting the closest of ``choices`` to ``name``, or an empty string."""
    matches = difflib.get_close_matches(name, list(choices), n=limit, cutoff=0.5)
    if not matches:
        return ""
    quoted = ", ".join(f"'{match}'" for match in matches)
    return f" Did you mean {quoted}?"
