"""The registry: lookups with suggestions, wildcard listing, wrong spec types."""

from __future__ import annotations

import pytest

from kdframe import LossSpec, ModelSpec
from kdframe.errors import ComponentError, PluginError
from kdframe.registry import Provider, Registry

PROVIDER = Provider("p", "dist", "1.0", "mod")


def test_lookup_suggests_close_names() -> None:
    registry = Registry()
    registry.add(LossSpec(name="hinton_kd", summary="kd", factory=object), PROVIDER)
    registry.add(LossSpec(name="fitnet", summary="hint", factory=object), PROVIDER)
    assert registry.spec("loss", "fitnet").name == "fitnet"
    with pytest.raises(ComponentError) as error:
        registry.get("loss", "hinton")
    assert "Did you mean 'hinton_kd'" in str(error.value)
    assert "fitnet, hinton_kd" in str(error.value)


def test_same_name_in_different_kinds_is_fine_and_iter_filters() -> None:
    registry = Registry()
    registry.add(LossSpec(name="x_one", summary="", factory=object), PROVIDER)
    registry.add(ModelSpec(name="x_one", summary="", factory=object), PROVIDER)
    registry.add(ModelSpec(name="y_two", summary="", factory=object), PROVIDER)
    assert [c.kind for c in registry.iter(pattern="x_*")] == ["loss", "model"]
    assert [c.name for c in registry.iter("model")] == ["x_one", "y_two"]


def test_non_spec_is_rejected() -> None:
    with pytest.raises(PluginError, match="not a kdframe component spec"):
        Registry().add("nope", PROVIDER)  # type: ignore[arg-type]
