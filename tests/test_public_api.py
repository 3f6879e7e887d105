"""The public API is what plugins use, and nothing else: every first-party plugin, the plugin
template and the docs' plugin examples import from kdframe only names in ``kdframe.__all__`` (and the
``kdframe.testing`` kit)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import kdframe

ROOT = Path(__file__).resolve().parents[1]
#: Modules a plugin may import from: the package itself and the testing kit for plugin tests.
PUBLIC_MODULES = {"kdframe", "kdframe.testing"}


def plugin_sources() -> list[Path]:
    return sorted([*ROOT.glob("plugins/**/*.py"), *ROOT.glob("examples/plugin-template/**/*.py")])


def private_imports(tree: ast.AST, where: str) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kdframe":
            if node.module not in PUBLIC_MODULES:
                found.append(f"{where}:{node.lineno} from {node.module} import ...")
            elif node.module == "kdframe":
                found += [f"{where}:{node.lineno} kdframe.{a.name}" for a in node.names if a.name not in kdframe.__all__]
        elif isinstance(node, ast.Import):
            found += [f"{where}:{node.lineno} import {a.name}" for a in node.names if a.name.startswith("kdframe.") and a.name not in PUBLIC_MODULES]
    return found


@pytest.mark.parametrize("path", plugin_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api(path: Path) -> None:
    assert private_imports(ast.parse(path.read_text()), str(path.relative_to(ROOT))) == []


def test_the_docs_plugin_examples_import_only_the_public_api() -> None:
    found = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for index, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S)):
            try:
                tree = ast.parse(block)
            except SyntaxError:  # a fragment, not a program
                continue
            found += private_imports(tree, f"{page.name} block {index + 1}")
    assert found == []


def test_every_public_name_exists() -> None:
    assert len(set(kdframe.__all__)) == len(kdframe.__all__)
    for name in kdframe.__all__:
        assert hasattr(kdframe, name), name


def test_the_checker_sees_a_private_import() -> None:
    tree = ast.parse("from kdframe.trainer import Trainer\nfrom kdframe import Schedule, runner\nimport kdframe.cli\n")
    assert len(private_imports(tree, "x")) == 3


def test_the_plugin_guide_lists_every_public_name() -> None:
    guide = (ROOT / "docs" / "plugins.md").read_text()
    user_api = set(kdframe._EXPORTS[name] == "kdframe.api" and name for name in kdframe.__all__ if name != "__version__")
    assert [name for name in kdframe.__all__ if name != "__version__" and name not in user_api and f"`{name}`" not in guide] == []
