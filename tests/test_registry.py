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


def test_one_table_of_component_kinds_drives_hooks_listings_and_messages() -> None:
    from kdframe import hookspecs
    from kdframe.cli import _parser
    from kdframe.errors import ComponentError
    from kdframe.plugins import create_plugins
    from kdframe.registry import COMPONENT_KINDS, KINDS, PLURALS, REGISTRATION_HOOKS

    assert [kind.name for kind in COMPONENT_KINDS] == list(KINDS) == list(REGISTRATION_HOOKS) == list(PLURALS)
    for kind in COMPONENT_KINDS:
        assert hasattr(hookspecs, kind.hook), kind.hook
    plugins_command = _parser()._subparsers._group_actions[0].choices["plugins"]  # type: ignore[union-attr]
    kind_option = next(action for action in plugins_command._actions if action.dest == "kind")
    assert list(kind_option.choices) == list(KINDS)
    with pytest.raises(ComponentError, match="Available curricula: "):
        create_plugins().registry.spec("curriculum", "nope")
