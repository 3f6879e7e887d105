"""The plugin-manager factory: entry points (faked distributions), provenance, duplicates, bad hooks."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
from pathlib import Path

import pytest

from kdframe.errors import ComponentError, PluginError
from kdframe.plugins import create_plugins


class FakeDistribution(importlib.metadata.Distribution):
    """A distribution with a name, a version and entry points, and no files."""

    def __init__(self, name: str, version: str, entry_points: dict[str, str]) -> None:
        self._name = name
        self._version = version
        self._entry_points = entry_points

    def read_text(self, filename: str) -> str | None:
        if filename == "METADATA":
            return f"Metadata-Version: 2.1\nName: {self._name}\nVersion: {self._version}\n"
        if filename == "entry_points.txt":
            lines = "\n".join(f"{key} = {value}" for key, value in self._entry_points.items())
            return f"[kdframe]\n{lines}\n"
        return None

    def locate_file(self, path):  # pragma: no cover - unused
        return Path(path)


LOSS_PLUGIN = """
from pydantic import Field
from kdframe import LossSpec, LossTerm, Params, hookimpl

class ZeroParams(Params):
    scale: float = Field(1.0, description="unused")

class Zero(LossTerm):
    needs_teacher = False
    def __init__(self, params):
        super().__init__()
    def forward(self, outputs):
        return outputs.student.logits.sum() * 0

@hookimpl
def kdframe_register_losses():
    return [LossSpec(name="{name}", summary="zero", factory=Zero, params=ZeroParams, family="label")]
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [module for module in sys.modules if module.startswith("fake_kd_")]:
        del sys.modules[name]


def write_module(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


def test_entry_points_are_loaded_with_provenance(plugin_dir) -> None:
    write_module(plugin_dir, "fake_kd_zero", LOSS_PLUGIN.replace("{name}", "zero"))
    dist = FakeDistribution("kd-zero", "1.2.3", {"zero_plugin": "fake_kd_zero"})
    plugins = create_plugins(distributions=[dist])
    component = plugins.registry.get("loss", "zero")
    assert component.provider.distribution == "kd-zero"
    assert component.provider.version == "1.2.3"
    assert component.provider.module == "fake_kd_zero"
    assert component.provider.plugin == "zero_plugin"


def test_duplicate_component_names_name_both_providers(plugin_dir) -> None:
    write_module(plugin_dir, "fake_kd_a", LOSS_PLUGIN.replace("{name}", "same"))
    write_module(plugin_dir, "fake_kd_b", LOSS_PLUGIN.replace("{name}", "same"))
    dists = [
        FakeDistribution("kd-alpha", "1.0", {"alpha": "fake_kd_a"}),
        FakeDistribution("kd-beta", "2.0", {"beta": "fake_kd_b"}),
    ]
    with pytest.raises(ComponentError) as error:
        create_plugins(distributions=dists)
    assert "kd-alpha" in str(error.value) and "kd-beta" in str(error.value)
    assert "loss named 'same'" in str(error.value)


def test_blocking_a_plugin_skips_it(plugin_dir, monkeypatch) -> None:
    write_module(plugin_dir, "fake_kd_a", LOSS_PLUGIN.replace("{name}", "same"))
    write_module(plugin_dir, "fake_kd_b", LOSS_PLUGIN.replace("{name}", "same"))
    dists = [
        FakeDistribution("kd-alpha", "1.0", {"alpha": "fake_kd_a"}),
        FakeDistribution("kd-beta", "2.0", {"beta": "fake_kd_b"}),
    ]
    monkeypatch.setenv("KDFRAME_BLOCK_PLUGINS", "beta")
    plugins = create_plugins(distributions=dists)
    assert plugins.registry.get("loss", "same").provider.distribution == "kd-alpha"


def test_import_error_names_plugin_and_distribution(plugin_dir) -> None:
    write_module(plugin_dir, "fake_kd_broken", "import does_not_exist_anywhere\n")
    dist = FakeDistribution("kd-broken", "0.1", {"broken": "fake_kd_broken"})
    with pytest.raises(PluginError) as error:
        create_plugins(distributions=[dist])
    message = str(error.value)
    assert "broken" in message and "kd-broken" in message and "ModuleNotFoundError" in message


def test_misspelt_hook_is_an_error(plugin_dir) -> None:
    write_module(
        plugin_dir,
        "fake_kd_typo",
        """
        from kdframe import hookimpl

        @hookimpl
        def kdframe_on_epoch_ned(state):
            pass
        """,
    )
    dist = FakeDistribution("kd-typo", "0.1", {"typo": "fake_kd_typo"})
    with pytest.raises(PluginError, match="kdframe_on_epoch_ned"):
        create_plugins(distributions=[dist])


def test_params_model_must_forbid_unknown_fields(plugin_dir) -> None:
    write_module(
        plugin_dir,
        "fake_kd_lax",
        """
        from pydantic import BaseModel
        from kdframe import LossSpec, hookimpl

        class Lax(BaseModel):
            x: int = 1

        @hookimpl
        def kdframe_register_losses():
            return [LossSpec(name="lax", summary="lax", factory=object, params=Lax)]
        """,
    )
    with pytest.raises(PluginError, match="allows unknown fields"):
        create_plugins(distributions=[FakeDistribution("kd-lax", "0.1", {"lax": "fake_kd_lax"})])


def test_autoload_can_be_disabled(monkeypatch) -> None:
    monkeypatch.setenv("KDFRAME_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = create_plugins()
    assert plugins.registry.names("loss") == []


def test_first_party_plugins_come_from_entry_points() -> None:
    plugins = create_plugins()
    for kind, name in [
        ("loss", "hinton_kd"),
        ("model", "plain_cnn"),
        ("curriculum", "ta_chain"),
        ("dataset", "fashion_mnist"),
        ("logger", "tensorboard"),
    ]:
        component = plugins.registry.get(kind, name)
        assert component.provider.distribution == "kdframe"
        assert component.provider.plugin.startswith("kdframe_")


def test_each_call_builds_a_fresh_manager() -> None:
    assert create_plugins().pm is not create_plugins().pm
