"""The plugin is found through its entry point and registers its three components."""

from __future__ import annotations

import kdframe_template


def test_registered_through_the_installed_entry_point(kdframe_plugins) -> None:
    registry = kdframe_plugins().registry
    for kind, name in (("loss", "logit_mimic"), ("model", "mlp"), ("curriculum", "self_distillation")):
        component = registry.get(kind, name)
        assert component.provider.plugin == "kdframe_template"
        assert component.provider.distribution == "kdframe-plugin-template"


def test_the_module_alone_registers_exactly_its_components(kdframe_plugins) -> None:
    registry = kdframe_plugins(kdframe_template, load_entry_points=False).registry
    assert registry.names("loss") == ["logit_mimic"]
    assert registry.names("model") == ["mlp"]
    assert registry.names("curriculum") == ["self_distillation"]
    assert registry.names("dataset") == [] and registry.names("logger") == []
