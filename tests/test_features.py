"""Feature taps by module path."""

import pytest
import torch
from torch import nn

from kdframe.errors import LayerError
from kdframe.features import FeatureTap


def model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_tap_records_named_outputs_and_removes_hooks() -> None:
    net = model()
    tap = FeatureTap(net, ["0", "2", "0"], "net")
    net(torch.randn(2, 1, 8, 8))
    outputs = tap.take()
    assert outputs["0"].shape == (2, 4, 6, 6) and outputs["2"].shape == (2, 144)
    assert tap.take() == {}
    tap.remove()
    net(torch.randn(2, 1, 8, 8))
    assert tap.take() == {}


def test_unknown_path_lists_close_names() -> None:
    with pytest.raises(LayerError) as error:
        FeatureTap(model(), ["4"], "student 'x'")
    message = str(error.value)
    assert "Layer '4' does not exist in student 'x'" in message
    assert "0, 1, 2, 3" in message
