"""Output folders never overwrite earlier results; a folder that cannot be written (read-only,
permission denied, full disk) is refused before training; text files are written atomically."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

from kdframe import folders
from kdframe.cli import main
from kdframe.errors import KdframeError, RunFolderError, StorageError
from kdframe.folders import (
    check_unused,
    check_writable,
    claim,
    default_folder,
    describe_os_error,
    format_bytes,
    fsync_directory,
    write_text_atomic,
)
from tests.conftest import tiny_schedule, write_schedule

DiskUsage = namedtuple("DiskUsage", "total used free")


def leftovers(folder: Path) -> list[str]:
    """Temporary or probe files left in ``folder``."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_claim_creates_and_refuses_a_used_folder(tmp_path: Path) -> None:
    folder = claim(tmp_path / "a" / "b", "run")
    assert folder.is_dir() and not any(folder.iterdir())
    claim(folder, "run")  # empty: fine
    (folder / "results.json").write_text("keep")
    with pytest.raises(RunFolderError, match="Run folder .* not empty"):
        claim(folder, "run")
    with pytest.raises(RunFolderError, match="Sweep folder"):
        check_unused(folder, "sweep")
    assert (folder / "results.json").read_text() == "keep"


def test_default_folder_is_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = default_folder("demo")
    first.mkdir(parents=True)
    second = default_folder("demo")
    assert first.parent.name == "runs" and first.name.startswith("demo-") and second != first


# ---------------------------------------------------------------------------------------------------
# Pre-flight: unwritable folders and full disks are refused before training
# ---------------------------------------------------------------------------------------------------


def test_check_writable_passes_and_leaves_nothing(tmp_path: Path) -> None:
    check_writable(tmp_path, 1024)
    assert not any(tmp_path.iterdir())


def test_a_full_disk_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    with pytest.raises(StorageError, match=r"Not enough free space for output folder .*: 1\.0 MiB free, about 16\.0 MiB needed"):
        check_writable(tmp_path)
    with pytest.raises(RunFolderError, match="Not enough free space for run folder") as error:
        claim(tmp_path / "run", "run")
    assert "choose another --out" in str(error.value)
    check_writable(tmp_path, need_bytes=1024)  # a small enough estimate fits
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "run") == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.EACCES, "permission denied. Fix the folder's permissions."),
        (errno.EROFS, "the file system is read-only. Write to a writable disk."),
        (errno.ENOSPC, "the disk is full"),
    ],
)
def test_an_unwritable_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, expected: str) -> None:
    """The probe write fails as it would on a read-only, forbidden or full file system."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(folders, "open", refuse, raising=False)
    with pytest.raises(StorageError, match=expected) as error:
        check_writable(tmp_path, what="sweep folder")
    assert f"Cannot write to sweep folder '{tmp_path}'" in str(error.value)
    with pytest.raises(RunFolderError, match=expected):
        claim(tmp_path / "run", "run")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_for_real(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(RunFolderError, match="permission denied"):
            claim(folder, "run")
    finally:
        folder.chmod(0o700)


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="Cannot create run folder .*a file is in the way"):
        claim(tmp_path / "file" / "run", "run")


def test_kdframe_run_on_a_full_disk_exits_2_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_schedule(tmp_path, tiny_schedule(**{"training.epochs": 1}))
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: DiskUsage(2**40, 2**40 - 4096, 4096))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: Not enough free space for run folder") and "Traceback" not in error
    assert not (out / "stages").exists() and not (out / "results.json").exists()


# ---------------------------------------------------------------------------------------------------
# Atomic text writes
# ---------------------------------------------------------------------------------------------------


def test_write_text_atomic_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_text_atomic(path, "old")
    assert write_text_atomic(path, "new ✓") == path
    assert path.read_text(encoding="utf-8") == "new ✓" and leftovers(tmp_path) == []


class HalfWrite:
    """A temporary file on a disk that fills up: half of the first write lands, then OSError(code)."""

    def __init__(self, stream: Any, code: int) -> None:
        self.stream, self.code = stream, code

    @classmethod
    def wrap(cls, opened: tuple[Path, Any], code: int) -> tuple[Path, HalfWrite]:
        temporary, stream = opened
        return temporary, cls(stream, code)

    def write(self, data: bytes) -> int:
        self.stream.write(data[: len(data) // 2])
        self.stream.flush()
        raise OSError(self.code, os.strerror(self.code))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def __enter__(self) -> HalfWrite:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stream.close()


@pytest.mark.parametrize(
    ("where", "code", "expected"),
    [
        ("write", errno.ENOSPC, "the disk is full"),
        ("replace", errno.ENOSPC, "the disk is full"),
        ("replace", errno.EACCES, "permission denied"),
        ("open", errno.EROFS, "the file system is read-only"),
        ("open", errno.EDQUOT, "quota"),
    ],
)
def test_write_text_atomic_keeps_the_earlier_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, code: int, expected: str
) -> None:
    path = tmp_path / "results.json"
    write_text_atomic(path, json.dumps({"stages": [1, 2]}))
    before = path.read_bytes()

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    if where == "write":
        real = folders._open_temporary
        monkeypatch.setattr(folders, "_open_temporary", lambda target: HalfWrite.wrap(real(target), code))
    elif where == "replace":
        monkeypatch.setattr(os, "replace", fail)
    else:
        monkeypatch.setattr(os, "open", fail)
    with pytest.raises(StorageError, match=expected) as error:
        write_text_atomic(path, json.dumps({"stages": [1, 2, 3]}))
    monkeypatch.undo()
    assert f"'{path}'" in str(error.value) and "left as it was" in str(error.value)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_storage_errors_are_input_errors() -> None:
    assert issubclass(StorageError, KdframeError)
    from kdframe import StorageError as exported

    assert exported is StorageError


def test_fsync_directory_tolerates_file_systems_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fsync_directory(tmp_path)  # supported here: no error
    fsync_directory(tmp_path / "missing")  # cannot be opened: skipped

    def unsupported(handle: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", unsupported)
    fsync_directory(tmp_path)

    def broken(handle: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(StorageError, match="Cannot write folder .*input/output error"):
        fsync_directory(tmp_path)


def test_describe_os_error_and_format_bytes() -> None:
    assert describe_os_error(OSError(errno.ENAMETOOLONG, "File name too long"))[0] == "the file name is too long"
    assert describe_os_error(OSError(errno.EIO, "Input/output error")) == ("input/output error", "Check the disk and the path.")
    assert describe_os_error(OSError("odd"))[0] == "odd"
    assert [format_bytes(n) for n in (512, 1536, 3 * 2**30, 2**50)] == ["512 B", "1.5 KiB", "3.0 GiB", "1024.0 TiB"]


def test_kdframe_leftovers_do_not_make_a_folder_used(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    for name in (".kdframe-write-test-0a1b2c3d", ".schedule.json.12345678.tmp", folders.LOCK_FILE):
        (folder / name).write_bytes(b"")
    assert folders.claim(folder, "run") == folder
    assert sorted(path.name for path in folder.iterdir()) == [folders.LOCK_FILE]
    (folder / "notes.txt").write_text("a user's file")
    with pytest.raises(RunFolderError, match="not empty"):
        folders.claim(folder, "run")


def test_an_exclusive_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    with folders.exclusive_lock(tmp_path):
        with pytest.raises(RunFolderError, match="in use by another kdframe process"):
            with folders.exclusive_lock(tmp_path):
                pass
    with folders.exclusive_lock(tmp_path):  # free again
        pass


def test_links_inside_a_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "run" / "stages").mkdir(parents=True)
    folders.refuse_links(tmp_path / "run")
    (tmp_path / "run" / "stages" / "student.pt").symlink_to(tmp_path / "elsewhere.pt")
    with pytest.raises(RunFolderError, match="symbolic link"):
        folders.refuse_links(tmp_path / "run")


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_locks(handle: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(folders.fcntl, "flock", no_locks)
    with pytest.warns(RuntimeWarning, match="Cannot lock run folder"):
        with folders.exclusive_lock(tmp_path):
            pass


def test_try_lock_says_whether_it_got_the_lock_and_lets_errors_through(tmp_path: Path) -> None:
    with folders.try_lock(tmp_path) as free:
        assert free
        with folders.try_lock(tmp_path) as second:  # another open file description: flock says no
            assert not second
    with pytest.raises(ValueError, match="inside"):
        with folders.try_lock(tmp_path) as free:
            raise ValueError("inside")
    with folders.try_lock(tmp_path) as free:  # released after the error
        assert free
