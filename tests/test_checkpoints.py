"""Checkpoints: atomic save, safe load, clear errors for missing, corrupt and mismatched files."""

import pickle

import pytest
import torch
from torch import nn

from kdframe.checkpoints import load_into, load_state_dict, save_model
from kdframe.errors import CheckpointError


def test_round_trip_and_plain_state_dict(tmp_path) -> None:
    model = nn.Linear(3, 2)
    save_model(tmp_path / "m.pt", model, key="m", arch="linear", params={})
    other = nn.Linear(3, 2)
    load_into(other, tmp_path / "m.pt", label="m", expected_arch="linear")
    assert torch.equal(other.weight, model.weight)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    assert set(load_state_dict(tmp_path / "plain.pt")) == {"weight", "bias"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_missing_truncated_and_wrong_arch(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "nope.pt")
    save_model(tmp_path / "m.pt", nn.Linear(3, 2), key="m", arch="linear", params={})
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_state_dict(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="holds a 'linear' model"):
        load_state_dict(tmp_path / "m.pt", expected_arch="plain_cnn")


class Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_pickled_code_is_refused(tmp_path) -> None:
    with open(tmp_path / "evil.pt", "wb") as stream:
        pickle.dump({"weight": Evil()}, stream)
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_state_dict(tmp_path / "evil.pt")


def test_mismatched_shapes_are_listed(tmp_path) -> None:
    save_model(tmp_path / "m.pt", nn.Linear(3, 2), key="m", arch="linear", params={})
    with pytest.raises(CheckpointError) as error:
        load_into(nn.Linear(4, 2), tmp_path / "m.pt", label="model 'x'")
    assert "weight (2, 3) vs (2, 4)" in str(error.value)
