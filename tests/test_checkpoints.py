"""Checkpoints: atomic durable saves, safe loads, and a clear CheckpointError or StorageError for every
bad file or full disk: missing, empty, truncated, random bytes, pickled code, another architecture."""

from __future__ import annotations

import errno
import io
import os
import pickle
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from kdframe import checkpoints, folders
from kdframe.checkpoints import atomic_torch_save, load_into, load_payload, load_state_dict, save_atomic, save_model
from kdframe.errors import CheckpointError, StorageError

#: Every message about an unreadable model checkpoint ends with how to make a good one.
FIX = "torch.save(model.state_dict(), path)"


def temporary_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def test_round_trip_and_plain_state_dict(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    save_model(tmp_path / "m.pt", model, key="m", arch="linear", params={})
    other = nn.Linear(3, 2)
    load_into(other, tmp_path / "m.pt", label="m", expected_arch="linear")
    assert torch.equal(other.weight, model.weight)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    assert set(load_state_dict(tmp_path / "plain.pt")) == {"weight", "bias"}
    assert not temporary_files(tmp_path)


def test_saved_files_get_the_usual_permissions(tmp_path: Path) -> None:
    """The temporary file is created like a plain open() would (mode 0o666 less the umask), not 0o600."""
    umask = os.umask(0o022)
    try:
        save_model(tmp_path / "m.pt", nn.Linear(2, 2), key="m", arch="linear", params={})
    finally:
        os.umask(umask)
    assert (tmp_path / "m.pt").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------------------------------
# Bad files: each a CheckpointError that names the file and the fix
# ---------------------------------------------------------------------------------------------------


def good_checkpoint_bytes(tmp_path: Path) -> bytes:
    save_model(tmp_path / "good.pt", nn.Linear(3, 2), key="m", arch="linear", params={})
    return (tmp_path / "good.pt").read_bytes()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda good: b"", "is empty"),
        (lambda good: good[: len(good) // 2], "truncated or corrupt"),
        (lambda good: good[:10], "truncated or corrupt"),
        (lambda good: good[:-30], "truncated or corrupt"),
        (lambda good: bytes(range(256)) * 4, "not a PyTorch checkpoint"),
        (lambda good: b'{"weight": [1, 2, 3]}', "not a PyTorch checkpoint"),
        (lambda good: pickle.dumps(12345, protocol=2), "not a PyTorch checkpoint"),
    ],
    ids=["empty", "half", "ten-bytes", "cut-tail", "random", "json", "plain-pickle"],
)
def test_unreadable_files_name_the_file_and_the_fix(tmp_path: Path, make: Any, expected: str) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(make(good_checkpoint_bytes(tmp_path)))
    with pytest.raises(CheckpointError, match=expected) as error:
        load_state_dict(path)
    message = str(error.value)
    assert f"'{path}'" in message and FIX in message and "\n" not in message
    with pytest.raises(CheckpointError, match=expected):
        load_into(nn.Linear(3, 2), path, label="model 'm'")


def test_missing_folder_and_non_tensor_payloads(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist. Fix the path"):
        load_state_dict(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is not a file") as error:
        load_state_dict(tmp_path)
    assert FIX in str(error.value)
    torch.save({"weight": "not a tensor", "bias": 3}, tmp_path / "strings.pt")
    with pytest.raises(CheckpointError, match="neither a kdframe checkpoint nor a state_dict of tensors"):
        load_state_dict(tmp_path / "strings.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"\(it holds a list\)"):
        load_state_dict(tmp_path / "list.pt")
    torch.save({0: torch.zeros(2)}, tmp_path / "int-keys.pt")
    with pytest.raises(CheckpointError, match="neither"):
        load_state_dict(tmp_path / "int-keys.pt")


def test_another_architecture_is_refused(tmp_path: Path) -> None:
    save_model(tmp_path / "m.pt", nn.Linear(3, 2), key="m", arch="linear", params={})
    with pytest.raises(CheckpointError, match="holds a 'linear' model, but the schedule builds a 'plain_cnn'") as error:
        load_state_dict(tmp_path / "m.pt", expected_arch="plain_cnn")
    assert "Point the model at a checkpoint of its own architecture" in str(error.value)
    # A plain state_dict of another architecture: the weights that differ are listed.
    torch.save(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 2)).state_dict(), tmp_path / "conv.pt")
    with pytest.raises(CheckpointError) as error:
        load_into(nn.Linear(3, 2), tmp_path / "conv.pt", label="model 'x'")
    message = str(error.value)
    assert str(tmp_path / "conv.pt") in message and "model 'x'" in message
    assert "missing 2 weights" in message and "4 unexpected weights" in message
    assert "Check that the model's arch and params match" in message


def test_mismatched_shapes_are_listed(tmp_path: Path) -> None:
    save_model(tmp_path / "m.pt", nn.Linear(3, 2), key="m", arch="linear", params={})
    with pytest.raises(CheckpointError) as error:
        load_into(nn.Linear(4, 2), tmp_path / "m.pt", label="model 'x'")
    assert "weight (2, 3) vs (2, 4)" in str(error.value)


# ---------------------------------------------------------------------------------------------------
# Pickled code never runs
# ---------------------------------------------------------------------------------------------------


class ShellPayload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class OpenPayload:
    """Unpickling this creates ``marker`` with the builtin open()."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


class Plain:
    """An ordinary class instance (no code in its pickle, but not a tensor either)."""


def malicious_files(tmp_path: Path, marker: Path) -> dict[str, bytes]:
    zipped = io.BytesIO()
    torch.save({"weight": ShellPayload(marker)}, zipped)
    zipped_open = io.BytesIO()
    torch.save({"format": checkpoints.FORMAT, "state_dict": OpenPayload(marker)}, zipped_open)
    return {
        "pickle-protocol-2": pickle.dumps({"weight": ShellPayload(marker)}, protocol=2),
        "pickle-protocol-4": pickle.dumps(ShellPayload(marker), protocol=4),
        "pickle-open": pickle.dumps(OpenPayload(marker), protocol=2),
        "torch-zip": zipped.getvalue(),
        "torch-zip-open": zipped_open.getvalue(),
    }


def test_malicious_pickles_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    files = malicious_files(tmp_path, marker)
    # The payloads are live: unpickling one the unsafe way does create the marker.
    pickle.loads(files["pickle-protocol-2"])
    assert marker.exists()
    marker.unlink()
    torch.load(io.BytesIO(files["torch-zip"]), weights_only=False)
    assert marker.exists()
    marker.unlink()

    for name, content in files.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as error:
            load_state_dict(path)
        message = str(error.value)
        assert str(path) in message and FIX in message, message
        with pytest.raises(CheckpointError):
            load_into(nn.Linear(3, 2), path, label="model 'm'")
        with pytest.raises(CheckpointError):
            load_payload(path, what="stage state checkpoint")
        assert not marker.exists(), f"{name}: the pickle's code ran"
    refused = load_payload_message(tmp_path / "torch-zip.pt")
    assert "system" in refused and "refuses to load" in refused and "weights_only=True" in refused


def load_payload_message(path: Path) -> str:
    with pytest.raises(CheckpointError) as error:
        load_payload(path)
    return str(error.value)


def test_class_instances_are_refused_by_name(tmp_path: Path) -> None:
    torch.save({"weight": Plain()}, tmp_path / "instance.pt")
    message = load_payload_message(tmp_path / "instance.pt")
    assert "Plain" in message and "Python objects other than tensors" in message


def test_load_payload_names_what_it_reads(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="^Stage state checkpoint '.*state.pt' is empty") as error:
        load_payload(path, what="stage state checkpoint", advice="Delete it to restart the stage.")
    assert str(error.value).endswith("Delete it to restart the stage.")
    atomic_torch_save({"epoch": 3, "tensor": torch.ones(2)}, path, what="stage state checkpoint")
    payload = load_payload(path, what="stage state checkpoint")
    assert payload["epoch"] == 3 and torch.equal(payload["tensor"], torch.ones(2))


@settings(max_examples=60, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.sampled_from(["truncate", "flip", "insert"]), position=st.floats(0.0, 1.0), chunk=st.binary(min_size=1, max_size=16))
def test_damaged_checkpoints_load_or_raise_checkpoint_error(tmp_path: Path, damage: str, position: float, chunk: bytes) -> None:
    """Any byte damage to a checkpoint gives either a state dict or a CheckpointError, nothing else."""
    good = good_checkpoint_bytes(tmp_path)
    at = int(position * len(good))
    if damage == "truncate":
        bad = good[:at]
    elif damage == "flip":
        bad = good[:at] + bytes(byte ^ 0xFF for byte in chunk) + good[at + len(chunk) :]
    else:
        bad = good[:at] + chunk + good[at:]
    path = tmp_path / "damaged.pt"
    path.write_bytes(bad)
    try:
        state = load_state_dict(path)
    except CheckpointError as error:
        assert str(path) in str(error)
    else:
        assert all(isinstance(value, torch.Tensor) for value in state.values())


# ---------------------------------------------------------------------------------------------------
# Atomic, durable saves on a failing disk
# ---------------------------------------------------------------------------------------------------


class FullDisk(io.RawIOBase):
    """Wraps a real file; every write after ``limit`` bytes fails with ENOSPC, like a full disk."""

    def __init__(self, stream: Any, limit: int) -> None:
        self.stream, self.limit, self.written = stream, limit, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.written + len(data) > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(data)
        return self.stream.write(data)

    def fileno(self) -> int:
        return self.stream.fileno()

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()
        super().close()


def fill_disk_after(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    real = folders._open_temporary

    def open_on_full_disk(path: Path) -> tuple[Path, Any]:
        temporary, stream = real(path)
        return temporary, FullDisk(stream, limit)

    monkeypatch.setattr(folders, "_open_temporary", open_on_full_disk)


@pytest.mark.parametrize("limit", [0, 100, 700])
def test_a_full_disk_keeps_the_earlier_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """ENOSPC at any point of torch.save (which then raises a RuntimeError of its own): a StorageError,
    the earlier file byte-identical, no temporary file left."""
    path = tmp_path / "student.pt"
    save_model(path, nn.Linear(3, 2), key="m", arch="linear", params={})
    before = path.read_bytes()
    fill_disk_after(monkeypatch, limit)
    with pytest.raises(StorageError, match="the disk is full") as error:
        save_model(path, nn.Linear(30, 20), key="m", arch="linear", params={})
    message = str(error.value)
    assert f"checkpoint '{path}'" in message and "Free space on that disk" in message
    assert path.read_bytes() == before
    assert not temporary_files(tmp_path)


@pytest.mark.parametrize(
    ("code", "expected"),
    [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "permission denied"), (errno.EROFS, "read-only")],
)
def test_a_failed_rename_keeps_the_earlier_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, expected: str
) -> None:
    path = tmp_path / "student.pt"
    save_model(path, nn.Linear(3, 2), key="m", arch="linear", params={})
    before = path.read_bytes()

    def refuse(source: Any, target: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StorageError, match=expected):
        save_model(path, nn.Linear(3, 2), key="m", arch="linear", params={})
    assert path.read_bytes() == before
    assert not temporary_files(tmp_path)


def test_a_failed_fsync_or_unwritable_folder_is_a_storage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.pt"
    atomic_torch_save({"epoch": 1}, path)
    before = path.read_bytes()
    real_fsync = os.fsync

    def failing_fsync(handle: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{handle}"):
            real_fsync(handle)
            return
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageError, match="input/output error"):
        atomic_torch_save({"epoch": 2}, path, what="stage state checkpoint")
    assert path.read_bytes() == before and not temporary_files(tmp_path)
    monkeypatch.undo()

    def read_only(*args: Any, **kwargs: Any) -> int:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(StorageError, match="Cannot write stage state checkpoint .* the file system is read-only"):
        atomic_torch_save({"epoch": 2}, path, what="stage state checkpoint")
    monkeypatch.undo()
    assert path.read_bytes() == before and not temporary_files(tmp_path)


def test_interrupts_and_bugs_propagate_and_clean_up(tmp_path: Path) -> None:
    """Only OSErrors become StorageErrors; the temporary file goes away whatever happens."""
    path = tmp_path / "state.pt"
    path.write_bytes(b"earlier")

    def interrupted(stream: Any) -> None:
        stream.write(b"half")
        raise KeyboardInterrupt

    def buggy(stream: Any) -> None:
        stream.write(b"half")
        raise ValueError("a bug in the caller")

    with pytest.raises(KeyboardInterrupt):
        save_atomic(path, interrupted)
    with pytest.raises(ValueError, match="a bug in the caller"):
        save_atomic(path, buggy)
    assert path.read_bytes() == b"earlier" and not temporary_files(tmp_path)


def test_save_atomic_fsyncs_the_file_and_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(handle: int) -> None:
        synced.append("folder" if os.path.isdir(f"/proc/self/fd/{handle}") else "file")
        real_fsync(handle)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = tmp_path / "deep" / "er" / "state.pt"
    assert save_atomic(path, lambda stream: torch.save({"step": 7}, stream)) == path
    assert torch.load(path, weights_only=True) == {"step": 7}
    if Path("/proc/self/fd").is_dir():
        assert synced == ["file", "folder"]
    assert not temporary_files(path.parent)


def test_checkpoint_bytes_estimates_the_file_size(tmp_path: Path) -> None:
    model = nn.Linear(100, 50)
    save_model(tmp_path / "m.pt", model, key="m", arch="linear", params={})
    size = (tmp_path / "m.pt").stat().st_size
    estimate = checkpoints.checkpoint_bytes(model)
    assert (100 * 50 + 50) * 4 <= estimate and 0.5 * size <= estimate <= 2 * size


def test_every_saved_checkpoint_carries_a_checksum_that_is_verified(tmp_path: Path) -> None:
    model = nn.Linear(8, 4)
    path = tmp_path / "student.pt"
    save_model(path, model, key="student", arch="linear", params={})
    raw = torch.load(path, weights_only=True)
    assert raw[checkpoints.CHECKSUM_KEY] == checkpoints.payload_digest({k: v for k, v in raw.items() if k != checkpoints.CHECKSUM_KEY})
    assert checkpoints.CHECKSUM_KEY not in load_payload(path)  # handed back without it
    weight = model.weight.detach().numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = bytes(data).find(weight)
    data[at + 5] ^= 0x01  # one mantissa bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the checksum") as error:
        load_state_dict(path)
    assert str(path) in str(error.value)
    # Files without a checksum (a plain state_dict, an older kdframe file) still load.
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    assert set(load_state_dict(tmp_path / "plain.pt")) == {"weight", "bias"}


def _net(classes: int, hidden: int = 8) -> nn.Module:
    """A small network of 4x4 inputs (conv 3x3 to 2x2) with a head of `classes` outputs."""
    return nn.Sequential(nn.Conv2d(1, hidden, 3), nn.BatchNorm2d(hidden), nn.Flatten(), nn.Linear(hidden * 4, classes))


def test_load_matching_loads_what_fits_and_reports_a_new_head(tmp_path: Path) -> None:
    source = _net(1000)
    path = tmp_path / "pretrained.pth"
    torch.save(source.state_dict(), path)
    target = _net(3)
    fresh_head = target[3].weight.detach().clone()
    report = checkpoints.load_matching(target, path, label="model 'teacher'")
    assert torch.equal(target[0].weight, source[0].weight) and torch.equal(target[1].running_mean, source[1].running_mean)
    assert torch.equal(target[3].weight, fresh_head)  # the head of another shape keeps its initialisation
    assert report.reinitialised == [("3.weight", (1000, 32), (3, 32)), ("3.bias", (1000,), (3,))]
    assert "0.weight" in report.loaded and not report.not_in_model and not report.not_in_file
    summary = report.summary("models.teacher")
    assert summary.startswith(f"models.teacher starts from '{path}': 7 of 9 weight tensors loaded")
    assert "3.weight (file 1000x32, model 3x32)" in summary


def test_load_matching_strips_a_data_parallel_prefix_and_lists_extra_names(tmp_path: Path) -> None:
    source = _net(3)
    state = {f"module.{name}": tensor for name, tensor in source.state_dict().items()}
    state["module.aux.weight"] = torch.zeros(2)
    path = tmp_path / "parallel.pth"
    torch.save(state, path)
    target = _net(3)
    report = checkpoints.load_matching(target, path, label="model 'm'")
    assert report.stripped_prefix == "module." and report.not_in_model == ["aux.weight"]
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))


def test_load_matching_refuses_a_file_of_another_network_and_hostile_files(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save(nn.Linear(7, 5).state_dict(), path)
    with pytest.raises(CheckpointError, match="has nothing that fits model 'm'"):
        checkpoints.load_matching(_net(3), path, label="model 'm'")
    marker = tmp_path / "pwned"
    for name, content in malicious_files(tmp_path, marker).items():
        hostile = tmp_path / f"{name}.pth"
        hostile.write_bytes(content)
        with pytest.raises(CheckpointError) as error:
            checkpoints.load_matching(_net(3), hostile, label="model 'm'")
        assert str(error.value).startswith(f"Weights file '{hostile}'") and "'weights'" in str(error.value)
        assert not marker.exists(), f"{name}: the pickle's code ran"
    with pytest.raises(CheckpointError, match="does not exist.*remove 'weights'"):
        checkpoints.load_matching(_net(3), tmp_path / "missing.pth", label="model 'm'")
