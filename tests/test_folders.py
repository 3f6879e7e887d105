"""Output folders never overwrite earlier results."""

import pytest

from kdframe.errors import RunFolderError
from kdframe.folders import check_unused, claim, default_folder


def test_claim_creates_and_refuses_a_used_folder(tmp_path) -> None:
    folder = claim(tmp_path / "a" / "b", "run")
    assert folder.is_dir() and not any(folder.iterdir())
    claim(folder, "run")  # empty: fine
    (folder / "results.json").write_text("keep")
    with pytest.raises(RunFolderError, match="Run folder .* not empty"):
        claim(folder, "run")
    with pytest.raises(RunFolderError, match="Sweep folder"):
        check_unused(folder, "sweep")
    assert (folder / "results.json").read_text() == "keep"


def test_default_folder_is_fresh(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = default_folder("demo")
    first.mkdir(parents=True)
    second = default_folder("demo")
    assert first.parent.name == "runs" and first.name.startswith("demo-") and second != first


def test_write_text_atomic_replaces_whole_files(tmp_path) -> None:
    from kdframe.folders import write_text_atomic

    path = tmp_path / "results.json"
    write_text_atomic(path, "old")
    assert write_text_atomic(path, "new") == path
    assert path.read_text() == "new" and not list(tmp_path.glob(".*.tmp"))
