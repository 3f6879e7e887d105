"""The docs' code matches the code: the plugin example in docs/plugins.md works as written."""

from __future__ import annotations

import re
import types
from pathlib import Path

import torch

from kdframe import ModelOutputs, StepOutputs
from kdframe.json_schema import first_party_registry
from kdframe.plugins import create_plugins

ROOT = Path(__file__).resolve().parents[1]


def test_plugin_example_in_docs_registers_and_computes() -> None:
    text = (ROOT / "docs" / "plugins.md").read_text()
    source = re.search(r"```python\n# my_kd/__init__.py\n(.*?)```", text, re.S).group(1)
    module = types.ModuleType("my_kd")
    exec(compile(source, "docs/plugins.md", "exec"), module.__dict__)  # noqa: S102 - our own docs
    plugins = create_plugins(load_entry_points=False, plugins=[("my_kd", module)])
    spec = plugins.registry.spec("loss", "l2_logits")
    term = spec.factory(spec.params(normalise=False))
    student = torch.zeros(2, 3, requires_grad=True)
    outputs = StepOutputs(ModelOutputs(student), [ModelOutputs(torch.ones(2, 3))], torch.tensor([0, 1]))
    value = term(outputs)
    assert value.item() == 1.0
    value.backward()
    assert student.grad is not None


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)\n```", readme, re.S)
    assert commands[0].strip() == "./scripts/setup.sh && .venv/bin/kdframe run examples/quickstart.json"
    assert commands[1].strip() == "./scripts/setup.sh && .venv/bin/python -m pytest"
    assert commands[1].strip() in (ROOT / ".ci" / "run").read_text()


def test_methods_reference_is_generated_from_the_first_party_losses() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("methods_doc", ROOT / "scripts" / "methods_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (ROOT / "docs" / "methods.md").read_text()
    registry = first_party_registry()
    assert module.updated(text, registry) == text, "run: python scripts/methods_doc.py"
    assert module.main(["--check"]) == 0
    for name in registry.names("loss"):
        assert f"### `{name}`" in text
    third_party = [c.name for c in create_plugins().registry.iter("loss") if c.provider.distribution != "kdframe"]
    for name in third_party:
        assert f"### `{name}`" not in text, f"docs/methods.md lists '{name}', which kdframe does not provide"
