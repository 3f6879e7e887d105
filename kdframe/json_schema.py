"""The JSON Schema of a schedule, including the params of every installed component.

Each component reference (``{"name": ..., "params": ...}``, a model's ``arch``, the data's
``dataset``) gets one ``if``/``then`` branch per registered component, so that an editor that knows
JSON Schema completes and checks the params of the component a schedule names.

Files generated from the registry and kept in the repository (``docs/schedule.schema.json``, the
method reference in ``docs/methods.md``) describe the first-party components only
(:func:`first_party_registry`), so that they are the same whatever other plugins are installed.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

from kdframe.registry import Registry
from kdframe.schedule import FLAT_KINDS, Schedule

SCHEMA_ID = "https://kdframe.dev/schemas/schedule.json"
#: The distribution whose entry points are the first-party plugins.
FIRST_PARTY_DISTRIBUTION = "kdframe"


def first_party_registry() -> Registry:
    """The components of kdframe's own plugins only: the entry points of the ``kdframe`` distribution,
    without those of any other installed distribution (the ``KDFRAME_*_PLUGINS`` variables still apply)."""
    from kdframe.plugins import create_plugins

    distribution = importlib.metadata.distribution(FIRST_PARTY_DISTRIBUTION)
    return create_plugins(load_entry_points=True, distributions=[distribution]).registry

# Schedule definition -> (component kind, field holding the component's name).
_REFERENCES = {
    "LossConfig": ("loss", "name"),
    "CurriculumConfig": ("curriculum", "name"),
    "ModelConfig": ("model", "arch"),
    "DataConfig": ("dataset", "dataset"),
    "ComponentRef": ("logger", "name"),
    "OptimizerConfig": ("optimizer", "name"),
    "LRScheduleConfig": ("lr_schedule", "name"),
}


def _component_branches(registry: Registry, kind: str, key: str, defs: dict[str, Any]) -> list[dict[str, Any]]:
    branches = []
    for component in registry.iter(kind):
        prefix = re.sub(r"[^A-Za-z0-9_]", "_", f"{kind}.{component.name}.")
        params_schema = component.spec.params.model_json_schema(ref_template=f"#/$defs/{prefix}{{model}}")
        for name, definition in params_schema.pop("$defs", {}).items():
            defs[prefix + name] = definition
        # The optimizer's and LR schedule's params sit beside the name, the others' under "params".
        then = {"properties": params_schema.get("properties", {})} if kind in FLAT_KINDS else {"properties": {"params": params_schema}}
        branches.append({"if": {"properties": {key: {"const": component.name}}, "required": [key]}, "then": then})
    return branches


def schedule_schema(registry: Registry) -> dict[str, Any]:
    """The JSON Schema of a schedule for the components in ``registry``."""
    schema = Schedule.model_json_schema(by_alias=True)
    defs = schema.setdefault("$defs", {})
    for definition, (kind, key) in _REFERENCES.items():
        if definition not in defs:
            continue
        names = registry.names(kind)
        target = defs[definition]
        target["properties"][key] = {
            **target["properties"][key],
            "enum": names,
        }
        target["allOf"] = _component_branches(registry, kind, key, defs)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "kdframe schedule"
    return schema
