"""``mlp``: the model contract, its layer names and shapes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from torch import nn

from kdframe import DataInfo
from kdframe.testing import check_model_contract
from kdframe_template.model import SPEC, MLPParams

GREY = DataInfo(name="grey", num_classes=10, in_channels=1, image_size=(28, 28))
COLOUR = DataInfo(name="colour", num_classes=4, in_channels=3, image_size=(8, 12))


def test_meets_the_model_contract_with_named_layers() -> None:
    shapes = check_model_contract(
        SPEC, {"hidden": [32, 16]}, GREY, layers=["flatten", "hidden.0", "hidden.0.0", "hidden.1", "head"], batch=3
    )
    assert shapes == {
        "flatten": (3, 28 * 28),
        "hidden.0": (3, 32),
        "hidden.0.0": (3, 32),
        "hidden.1": (3, 16),
        "head": (3, 10),
        "logits": (3, 10),
    }


def test_input_size_and_classes_come_from_the_data() -> None:
    shapes = check_model_contract(SPEC, {"hidden": [7], "activation": "gelu"}, COLOUR, layers=["flatten", "hidden.0"])
    assert shapes == {"flatten": (2, 3 * 8 * 12), "hidden.0": (2, 7), "logits": (2, 4)}
    model = SPEC.factory(MLPParams(hidden=(7,), activation="gelu"), COLOUR)
    assert isinstance(model.get_submodule("hidden.0.1"), nn.GELU)
    assert sum(p.numel() for p in model.parameters()) == (288 * 7 + 7) + (7 * 4 + 4)


def test_no_hidden_layers_is_a_linear_classifier() -> None:
    shapes = check_model_contract(SPEC, {"hidden": []}, GREY, layers=["flatten"])
    assert shapes["logits"] == (2, 10)
    model = SPEC.factory(MLPParams(hidden=()), GREY)
    assert len(model.hidden) == 0
    assert (model.head.in_features, model.head.out_features) == (28 * 28, 10)


@pytest.mark.parametrize("params", [{"hidden": [0]}, {"activation": "tanh"}, {"width": 3}])
def test_bad_params_are_refused(params) -> None:
    with pytest.raises(ValidationError):
        MLPParams.model_validate(params)


def test_an_unknown_layer_fails_the_contract_with_the_names_it_has() -> None:
    with pytest.raises(AssertionError, match="hidden.1"):
        check_model_contract(SPEC, {"hidden": [8, 8]}, GREY, layers=["hiden.1"])
