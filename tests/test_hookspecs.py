"""Every hook is documented (docstring and docs/hooks.md) and tested, and the plugin API is versioned."""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import re
import sys
import types
from pathlib import Path

import pytest

import kdframe
from kdframe import hookspecs
from tests.conftest import HookRecorder

ROOT = Path(__file__).resolve().parents[1]
HOOKS = {name: fn for name, fn in vars(hookspecs).items() if name.startswith("kdframe_") and callable(fn)}

#: Hooks that no test names yet. This set may only shrink: the coverage test fails when a hook outside
#: it has no test (so a new hook needs one) and when a hook inside it gains one (then remove it here).
KNOWN_UNTESTED: frozenset[str] = frozenset()


#: Every released state of the plugin API: version -> hook name -> the argument names an
#: implementation may take. Change a hook and this test fails until PLUGIN_API_VERSION is bumped
#: (minor for an addition, major for a removal, rename or change of meaning) and the new version pinned.
_EVENT = ("run", "stage", "state", "control")
PINNED_API: dict[str, dict[str, tuple[str, ...]]] = {
    "1.0": {
        "kdframe_register_losses": (),
        "kdframe_register_models": (),
        "kdframe_register_curricula": (),
        "kdframe_register_datasets": (),
        "kdframe_register_loggers": (),
        "kdframe_on_run_start": ("run", "control"),
        "kdframe_on_stage_start": ("run", "stage", "control"),
        "kdframe_on_epoch_start": _EVENT,
        "kdframe_on_batch_start": _EVENT,
        "kdframe_on_batch_end": _EVENT,
        "kdframe_on_eval_end": _EVENT,
        "kdframe_on_epoch_end": _EVENT,
        "kdframe_on_stage_end": ("run", "stage", "result", "control"),
        "kdframe_on_run_end": ("run", "results"),
        "kdframe_on_exception": ("run", "stage", "error"),
        "kdframe_state_dict": ("run", "stage"),
        "kdframe_load_state_dict": ("run", "stage", "state"),
    },

    "2.0": {
        "kdframe_register_losses": (),
        "kdframe_register_models": (),
        "kdframe_register_curricula": (),
        "kdframe_register_datasets": (),
        "kdframe_register_loggers": (),
        "kdframe_register_optimizers": (),
        "kdframe_register_lr_schedules": (),
        "kdframe_on_run_start": ("run", "control"),
        "kdframe_on_stage_start": ("run", "stage", "control"),
        "kdframe_on_epoch_start": _EVENT,
        "kdframe_on_batch_start": _EVENT,
        "kdframe_on_batch_end": _EVENT,
        "kdframe_on_eval_end": _EVENT,
        "kdframe_on_epoch_end": _EVENT,
        "kdframe_on_stage_end": ("run", "stage", "result", "control"),
        "kdframe_on_run_end": ("run", "results"),
        "kdframe_on_exception": ("run", "stage", "error"),
        "kdframe_state_dict": ("run", "stage"),
        "kdframe_load_state_dict": ("run", "stage", "state"),
    },

    "2.1": {
        "kdframe_register_losses": (),
        "kdframe_register_models": (),
        "kdframe_register_curricula": (),
        "kdframe_register_datasets": (),
        "kdframe_register_loggers": (),
        "kdframe_register_optimizers": (),
        "kdframe_register_lr_schedules": (),
        "kdframe_register_exporters": (),
        "kdframe_on_run_start": ("run", "control"),
        "kdframe_on_stage_start": ("run", "stage", "control"),
        "kdframe_on_epoch_start": _EVENT,
        "kdframe_on_batch_start": _EVENT,
        "kdframe_on_batch_end": _EVENT,
        "kdframe_on_eval_end": _EVENT,
        "kdframe_on_epoch_end": _EVENT,
        "kdframe_on_stage_end": ("run", "stage", "result", "control"),
        "kdframe_on_run_end": ("run", "results"),
        "kdframe_on_exception": ("run", "stage", "error"),
        "kdframe_state_dict": ("run", "stage"),
        "kdframe_load_state_dict": ("run", "stage", "state"),
    },

    "2.2": {
        "kdframe_register_losses": (),
        "kdframe_register_models": (),
        "kdframe_register_curricula": (),
        "kdframe_register_datasets": (),
        "kdframe_register_loggers": (),
        "kdframe_register_optimizers": (),
        "kdframe_register_lr_schedules": (),
        "kdframe_register_exporters": (),
        "kdframe_on_run_start": ("run", "control"),
        "kdframe_on_stage_start": ("run", "stage", "control"),
        "kdframe_on_epoch_start": _EVENT,
        "kdframe_on_batch_start": _EVENT,
        "kdframe_on_batch_end": _EVENT,
        "kdframe_on_progress": ("run", "stage", "task", "done", "total"),
        "kdframe_on_eval_end": _EVENT,
        "kdframe_on_epoch_end": _EVENT,
        "kdframe_on_stage_end": ("run", "stage", "result", "control"),
        "kdframe_on_run_end": ("run", "results"),
        "kdframe_on_exception": ("run", "stage", "error"),
        "kdframe_state_dict": ("run", "stage"),
        "kdframe_load_state_dict": ("run", "stage", "state"),
    },
}


def load_script(name: str) -> types.ModuleType:
    """Import ``scripts/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def section_entries(doc: str, title: str) -> list[str]:
    """The ``name`` of each ``name: text`` entry of a Google-style docstring section."""
    lines = doc.splitlines()
    if f"{title}:" not in lines:
        return []
    names = []
    for line in lines[lines.index(f"{title}:") + 1 :]:
        if line.strip() and not line.startswith(" "):
            break
        match = re.match(r"^ {4}(\w+): \S", line)
        if match:
            names.append(match.group(1))
    return names


def test_every_hook_is_prefixed_and_documented() -> None:
    assert HOOKS
    for name, function in HOOKS.items():
        doc = inspect.getdoc(function) or ""
        assert len(doc.splitlines()[0]) > 20, f"{name} lacks a summary line"
        parameters = [p for p in inspect.signature(function).parameters]
        for parameter in parameters:
            assert f"{parameter}:" in doc, f"{name} does not document its argument '{parameter}'"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_docstring_has_summary_when_args_and_returns(name: str) -> None:
    doc = inspect.getdoc(HOOKS[name]) or ""
    paragraphs = doc.split("\n\n")
    assert len(paragraphs) >= 2 and paragraphs[0].strip().endswith("."), f"{name}: summary paragraph first"
    assert "Called " in paragraphs[1], f"{name}: the second paragraph says when the hook is called"
    parameters = list(inspect.signature(HOOKS[name]).parameters)
    assert section_entries(doc, "Args") == parameters, f"{name}: Args must list {parameters} in order"
    if name.startswith("kdframe_register_"):
        assert "Returns:" in doc.splitlines(), f"{name}: a registration hook documents what it returns"
        body = doc.split("Returns:\n", 1)[1]
        assert body.startswith("    A list of :class:`~kdframe.registry."), f"{name}: Returns names the spec type"


def test_section_entries_reads_google_style_args() -> None:
    doc = "Summary line here.\n\nArgs:\n    run: The run.\n    control: Flags,\n        continued.\n\nReturns:\n    x: no"
    assert section_entries(doc, "Args") == ["run", "control"]
    assert section_entries(doc, "Raises") == []


def test_every_event_hook_is_recorded_by_the_test_recorder() -> None:
    events = {name for name in HOOKS if name.startswith("kdframe_on_")}
    recorded = {name for name in vars(HookRecorder) if name.startswith("kdframe_on_")}
    assert events == recorded


def test_module_docstring_lists_every_event_in_order() -> None:
    doc = hookspecs.__doc__ or ""
    positions = [doc.index(name) for name in (
        "kdframe_on_run_start", "kdframe_on_stage_start", "kdframe_on_epoch_start", "kdframe_on_batch_start",
        "kdframe_on_eval_end", "kdframe_on_epoch_end", "kdframe_on_stage_end", "kdframe_on_run_end",
    )]
    assert positions == sorted(positions)
    assert "kdframe_on_exception" in doc


def test_every_hook_is_named_by_a_test() -> None:
    tests = ROOT / "tests"
    sources = {
        path: path.read_text()
        for path in sorted(tests.rglob("*.py"))
        if path.name != "test_hookspecs.py" and not path.name.startswith("test_docs_")
    }
    untested = {
        name for name in HOOKS if not any(re.search(rf"\b{name}\b", text) for text in sources.values())
    }
    assert untested - KNOWN_UNTESTED == set(), f"hooks without a test: {sorted(untested - KNOWN_UNTESTED)}"
    assert KNOWN_UNTESTED - untested == set(), (
        f"now tested, remove from KNOWN_UNTESTED: {sorted(KNOWN_UNTESTED - untested)}"
    )


def test_hooks_are_the_pinned_api_of_this_version() -> None:
    version = hookspecs.PLUGIN_API_VERSION
    assert version in PINNED_API, f"pin the hooks of plugin API {version} in PINNED_API"
    current = {name: tuple(inspect.signature(function).parameters) for name, function in HOOKS.items()}
    assert current == PINNED_API[version], (
        "the hooks differ from plugin API " + version + ": bump PLUGIN_API_VERSION (minor for an "
        "addition, major for a removal or rename) and pin the new version in PINNED_API"
    )


def test_each_pinned_minor_version_only_adds_to_the_one_before() -> None:
    versions = sorted(PINNED_API, key=lambda text: tuple(int(part) for part in text.split(".")))
    assert all(re.fullmatch(r"\d+\.\d+", version) for version in versions)
    for older, newer in itertools.pairwise(versions):
        if older.split(".")[0] != newer.split(".")[0]:
            continue
        for name, arguments in PINNED_API[older].items():
            assert name in PINNED_API[newer], f"{newer} removes {name}: that needs a new major version"
            assert set(arguments) <= set(PINNED_API[newer][name]), f"{newer} removes an argument of {name}"
    assert versions[-1].split(".")[0] == hookspecs.PLUGIN_API_VERSION.split(".")[0]


def test_plugin_api_version_is_major_minor_and_exported() -> None:
    assert re.fullmatch(r"\d+\.\d+", hookspecs.PLUGIN_API_VERSION)
    assert kdframe.PLUGIN_API_VERSION == hookspecs.PLUGIN_API_VERSION
    assert "PLUGIN_API_VERSION" in kdframe.__all__


def test_hooks_reference_is_current() -> None:
    module = load_script("hooks_doc")
    text = (ROOT / "docs" / "hooks.md").read_text()
    assert module.updated(text) == text, "docs/hooks.md is stale: run .venv/bin/python scripts/hooks_doc.py"
    major = hookspecs.PLUGIN_API_VERSION.split(".")[0]
    assert f'`kdframe.PLUGIN_API_VERSION` is `"{hookspecs.PLUGIN_API_VERSION}"`' in text
    assert f"declares `KDFRAME_PLUGIN_API = {major}`" in text
    for name, function in HOOKS.items():
        assert f"### `{name}`" in text
        assert module.signature(name, function) in text


def test_hooks_reference_is_plain_markdown() -> None:
    text = (ROOT / "docs" / "hooks.md").read_text()
    generated = text[text.index("<!-- hooks:begin") : text.index("<!-- hooks:end -->")]
    assert "``" not in generated.replace("```", ""), "reST double backquotes left in docs/hooks.md"
    assert not re.search(r":(class|mod|func|data|meth):`", generated), "reST roles left in docs/hooks.md"
    assert "Args:\n" not in generated and "**Args:**" in generated
    for field in ("stop_stage", "best_test_acc", "stages", "hparams"):
        assert f"| `{field}` |" in generated, f"state field {field} missing from docs/hooks.md"


def test_docstring_markdown_renders_literal_blocks_sections_and_roles() -> None:
    module = load_script("hooks_doc")
    doc = (
        "Summary.\n\n* a bullet, in order::\n\n      one\n        two\n\n  still the bullet.\n\n"
        "See :class:`~kdframe.state.Control` and ``x``.\n\nArgs:\n    run: The run,\n        continued.\n"
    )
    rendered = module.docstring_markdown(doc)
    assert "- a bullet, in order:\n\n  ```text\n  one\n    two\n  ```\n\n  still the bullet." in rendered
    assert "See `Control` and `x`." in rendered
    assert "**Args:**\n\n- `run`: The run, continued." in rendered


def test_hooks_doc_check_fails_on_a_stale_file_and_regenerates_it(tmp_path: Path) -> None:
    module = load_script("hooks_doc")
    stale = tmp_path / "hooks.md"
    stale.write_text(f"# Intro\n\n{module.BEGIN}\nold text\n{module.END}\n")
    module.DOC = stale
    assert module.main(["--check"]) == 1
    assert "old text" in stale.read_text()
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0
    assert stale.read_text().startswith("# Intro\n\n") and "old text" not in stale.read_text()
