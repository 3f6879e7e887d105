"""The plugin is found through its entry point and registers its five components."""

from __future__ import annotations

import kdframe_template


def test_registered_through_the_installed_entry_point(kdframe_plugins) -> None:
    registry = kdframe_plugins().registry
    components = (
        ("loss", "logit_mimic"),
        ("loss", "pooled_hint"),
        ("model", "mlp"),
        ("curriculum", "self_distillation"),
        ("logger", "csv_metrics"),
    )
    for kind, name in components:
        component = registry.get(kind, name)
        assert component.provider.plugin == "kdframe_template"
        assert component.provider.distribution == "kdframe-plugin-template"


def test_the_module_alone_registers_exactly_its_components(kdframe_plugins) -> None:
    registry = kdframe_plugins(kdframe_template, load_entry_points=False).registry
    assert registry.names("loss") == ["logit_mimic", "pooled_hint"]
    assert registry.names("model") == ["mlp"]
    assert registry.names("curriculum") == ["self_distillation"]
    assert registry.names("logger") == ["csv_metrics"]
    assert registry.names("dataset") == [] and registry.names("optimizer") == []
