"""Output folders of runs and sweeps, and durable writes into them.

* A fresh default name, and never writing over earlier results (:func:`claim`); kdframe's own
  leftovers of a killed process (write probes, temporary files) do not count as results and are
  removed (:func:`remove_leftovers`).
* One process at a time in a run folder (:func:`exclusive_lock`), and no writing through symbolic
  links inside it (:func:`refuse_links`).
* A pre-flight check that a folder is writable and has room (:func:`check_writable`), so that a run
  on a read-only or full disk is refused before training, not after hours of it.
* Atomic, durable writes (:func:`save_atomic`, :func:`write_text_atomic`): the data goes to a
  temporary file in the same folder, which is flushed, fsynced and renamed over the target, and the
  folder is fsynced where the platform supports it. A crash or a full disk leaves either the old file
  or the new one, never half of one, and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from kdframe.errors import FolderInUseError, KdframeError, RunFolderError, StorageError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

#: Free space a run or sweep folder needs at least, whatever the estimate (results, logs, schedule).
MIN_FREE_BYTES = 16 * 2**20

#: The lock file that :func:`exclusive_lock` holds inside a run folder.
LOCK_FILE = ".kdframe.lock"
#: Names of the write probe of :func:`check_writable` and of :func:`save_atomic`'s temporary files.
_PROBE = re.compile(r"\.kdframe-write-test-[0-9a-f]{8}")
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp", re.DOTALL)

#: ``errno`` values of a full disk or an exceeded quota.
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
#: ``errno`` values of a folder that refuses fsync (some network and FUSE file systems).
_NO_DIRECTORY_FSYNC = {errno.EINVAL, errno.EBADF, errno.EACCES, errno.EPERM, errno.EISDIR,
                       getattr(errno, "ENOTSUP", errno.EINVAL), getattr(errno, "EOPNOTSUPP", errno.EINVAL)}


def default_folder(name: str) -> Path:
    """``runs/<name>-<timestamp>``, with a numeric suffix when that already exists."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path("runs") / f"{name}-{stamp}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = Path("runs") / f"{name}-{stamp}-{suffix}"
    return folder


def is_leftover(name: str) -> bool:
    """Whether a file name is one of kdframe's own leftovers: a write probe or an atomic write's
    temporary file (left by a process killed at that moment), or a run folder's lock file."""
    return name == LOCK_FILE or bool(_PROBE.fullmatch(name) or _TEMPORARY.fullmatch(name))


def remove_leftovers(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Delete kdframe's own temporary files and write probes in ``folder`` (and, with ``recursive``,
    in every folder below it, links not followed); return what was removed. The lock file stays."""
    removed = []
    places = os.walk(folder) if recursive else [(str(folder), [], _names(folder))]
    for root, _, names in places:
        for name in names:
            path = Path(root) / name
            if name != LOCK_FILE and is_leftover(name) and path.is_file() and not path.is_symlink():
                _remove_quietly(path)
                removed.append(path)
    return removed


def check_unused(folder: Path, what: str) -> None:
    """Refuse a folder that already holds files: kdframe never writes over an earlier result. A
    folder holding only kdframe's own leftovers (see :func:`is_leftover`) counts as empty."""
    if folder.exists() and (not folder.is_dir() or not all(is_leftover(name) for name in _names(folder))):
        raise RunFolderError(
            f"{what.capitalize()} folder '{folder}' already exists and is not empty; kdframe never "
            "writes over an earlier run or sweep. Choose another --out, or move that folder away."
        )


def claim(folder: Path, what: str, need_bytes: int = MIN_FREE_BYTES) -> Path:
    """Create ``folder`` (refusing one that holds files other than kdframe's own leftovers, which
    are removed) and check that it is writable and that its disk has at least ``need_bytes`` free;
    raise :class:`RunFolderError` otherwise."""
    check_unused(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason, advice = describe_os_error(error)
        raise RunFolderError(
            f"Cannot create {what} folder '{folder}': {reason}. {advice} Or choose another --out."
        ) from None
    remove_leftovers(folder)
    check_writable(folder, need_bytes, what=f"{what} folder", error=RunFolderError)
    return folder


@contextlib.contextmanager
def exclusive_lock(folder: Path, what: str = "run", *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``flock`` on its :data:`LOCK_FILE`) within the block,
    so that two kdframe processes never write one run folder at once; the second is refused with a
    :class:`RunFolderError`, or with ``wait`` waits for the first to let go. The lock ends with the
    process, however it ends. Where ``fcntl`` does not exist (Windows) no lock is taken."""
    if fcntl is None:
        yield
        return
    path = Path(folder) / LOCK_FILE
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as error:
        reason, advice = describe_os_error(error)
        raise RunFolderError(f"Cannot lock {what} folder '{folder}' ({path}): {reason}. {advice}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                # A file system without locks (some network mounts): go on, but say so.
                warnings.warn(
                    f"Cannot lock {what} folder '{folder}' ({error.strerror or error}); nothing stops "
                    "another kdframe process from writing it at the same time.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                yield
                return
            raise FolderInUseError(
                f"{what.capitalize()} folder '{folder}' is in use by another kdframe process (it holds "
                f"{LOCK_FILE}). Wait for it to finish or stop it, then try again; two processes never "
                "write one run folder at once."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)


@contextlib.contextmanager
def try_lock(folder: Path, what: str = "run") -> Iterator[bool]:
    """:func:`exclusive_lock` for a worker looking for free work: yields ``True`` with the lock held,
    or ``False`` (nothing held) when another process holds it."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(folder, what))
        except FolderInUseError:
            yield False
            return
        yield True


def refuse_links(folder: Path, what: str = "run") -> None:
    """Refuse a folder that holds a symbolic link anywhere below it: writing through one (a stage
    folder linked to another place, a ``student.pt`` linked to another file) would change files
    outside the run. ``folder`` itself may be a link."""
    for root, dirs, names in os.walk(folder):
        for name in (*dirs, *names):
            path = Path(root) / name
            if path.is_symlink():
                raise RunFolderError(
                    f"{what.capitalize()} folder '{folder}' holds a symbolic link, '{path}' -> "
                    f"'{os.readlink(path)}'; kdframe does not write through links inside a run folder, "
                    "which could change files outside it. Replace the link with a copy of what it points "
                    "to, or remove it."
                )


def _names(folder: Path) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(folder)]
    except OSError:
        return []


def check_writable(
    folder: Path,
    need_bytes: int = MIN_FREE_BYTES,
    *,
    what: str = "output folder",
    error: type[KdframeError] = StorageError,
) -> None:
    """Pre-flight check of an existing ``folder``: create, fsync and remove a probe file, then check
    that the disk has at least ``need_bytes`` free (use an estimate of what will be written).

    Raises ``error`` (a :class:`StorageError` by default) naming the folder, the reason (read-only,
    permission denied, disk full) and what to do.
    """
    folder = Path(folder)
    probe = folder / f".kdframe-write-test-{secrets.token_hex(4)}"
    try:
        with open(probe, "xb") as stream:
            stream.write(b"kdframe write test\n")
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as problem:
        _remove_quietly(probe)
        reason, advice = describe_os_error(problem)
        raise error(f"Cannot write to {what} '{folder}': {reason}. {advice} Or choose another --out.") from None
    _remove_quietly(probe)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # some file systems cannot say; the probe write succeeded
        return
    if free < need_bytes:
        raise error(
            f"Not enough free space for {what} '{folder}': {format_bytes(free)} free, about "
            f"{format_bytes(need_bytes)} needed. Free space on that disk, or choose another --out."
        )


def save_atomic(path: Path, write: Callable[[BinaryIO], None], *, what: str = "file") -> Path:
    """Write a file atomically and durably: ``write(stream)`` fills a temporary file in the same
    folder, which is flushed, fsynced and renamed over ``path``; the folder is then fsynced.

    On any ``OSError`` (disk full, read-only file system, permission denied...) the temporary file is
    removed, an earlier ``path`` is left exactly as it was, and a :class:`StorageError` says which
    file, why and what to do. Other exceptions from ``write`` also remove the temporary file and
    propagate unchanged. ``what`` names the file in messages (e.g. "checkpoint"). Returns ``path``.

    Example: ``save_atomic(path, lambda stream: torch.save(state, stream), what="checkpoint")``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary, stream = _open_temporary(path)
    except OSError as error:
        raise storage_error(path, error, what) from None
    try:
        with stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        _remove_quietly(temporary)
        cause = _os_error_in(error)
        if cause is not None and not isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise storage_error(path, cause, what) from None
        raise
    fsync_directory(path.parent)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) with :func:`save_atomic`: a crash or a full disk leaves either the old
    file or the new one, never half of one. Returns ``path``."""
    data = text.encode("utf-8")

    def write(stream: BinaryIO) -> None:
        stream.write(data)

    return save_atomic(path, write)


def fsync_directory(folder: Path) -> None:
    """fsync ``folder`` so that a rename inside it survives a power cut; a no-op where directories
    cannot be opened or fsynced (Windows, some network file systems)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        handle = os.open(folder, flags)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError as error:
        if error.errno not in _NO_DIRECTORY_FSYNC:
            reason, advice = describe_os_error(error)
            raise StorageError(
                f"Cannot write folder '{folder}' durably: fsync failed ({reason}), so a file just "
                f"renamed into it may not survive a power cut. {advice}"
            ) from None
    finally:
        os.close(handle)


def storage_error(path: Path, error: OSError, what: str = "file") -> StorageError:
    """A :class:`StorageError` for an ``OSError`` met while writing ``path``."""
    reason, advice = describe_os_error(error)
    return StorageError(
        f"Cannot write {what} '{path}': {reason}. {advice} Any earlier version of the file was left "
        "as it was."
    )


def describe_os_error(error: OSError) -> tuple[str, str]:
    """The reason of an ``OSError`` in words, and what the user can do about it."""
    code = error.errno
    if code in _NO_SPACE:
        return "the disk is full (or a quota is exceeded)", "Free space on that disk."
    if code == errno.EROFS:
        return "the file system is read-only", "Write to a writable disk."
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied", "Fix the folder's permissions."
    if code == errno.ENAMETOOLONG:
        return "the file name is too long", "Use a shorter path."
    if code in (errno.ENOTDIR, errno.EEXIST):
        return "a file is in the way of a folder", "Remove or rename that file."
    reason = error.strerror or str(error) or type(error).__name__
    return reason[:1].lower() + reason[1:], "Check the disk and the path."


def format_bytes(count: int) -> str:
    """``count`` bytes in a short human unit, e.g. ``1.5 GiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # unreachable; keeps type checkers content


def _open_temporary(path: Path) -> tuple[Path, BinaryIO]:
    """Create a fresh temporary file beside ``path`` (mode from the umask, like a plain open)."""
    for _ in range(100):
        temporary = path.parent / f".{path.name[:120]}.{secrets.token_hex(4)}.tmp"
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        return temporary, os.fdopen(handle, "wb")
    raise FileExistsError(errno.EEXIST, "could not create a unique temporary file", str(path.parent))


def _os_error_in(error: BaseException) -> OSError | None:
    """The ``OSError`` behind ``error``: itself, or one in its cause or context chain (``torch.save``
    turns a failed write into a ``RuntimeError`` raised while handling the ``OSError``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
