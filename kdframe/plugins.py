"""The plugin-manager factory: entry points, blocking, provenance and ``check_pending()``.

There is no module-level plugin manager: every run (and every test) builds its own with
:func:`create_plugins`, which loads the ``kdframe`` entry points of the installed distributions in a
deterministic order, records which distribution provided each plugin, checks that every hook a plugin
implements exists, and builds the component :class:`~kdframe.registry.Registry` from them.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from kdframe import hookspecs
from kdframe.errors import PluginError
from kdframe.registry import Provider, Registry, build_registry

ENTRY_POINT_GROUP = "kdframe"
DISABLE_AUTOLOAD_ENV = "KDFRAME_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "KDFRAME_BLOCK_PLUGINS"


@dataclass
class Plugins:
    """A plugin manager with its plugins loaded, their provenance and the component registry."""

    pm: pluggy.PluginManager
    providers: dict[str, Provider]
    registry: Registry

    @property
    def hook(self) -> Any:
        """The hook relay (``plugins.hook.kdframe_on_run_start(...)``)."""
        return self.pm.hook

    def register_for_run(self, plugin: object, name: str) -> None:
        """Register a per-run plugin object (a logger) and check its hook names."""
        self.pm.register(plugin, name=name)
        _check_pending(self.pm, {name: Provider(name, "", "", type(plugin).__module__)})

    def unregister(self, name: str) -> None:
        """Remove a per-run plugin object registered with :meth:`register_for_run`."""
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)


def _env_list(name: str) -> set[str]:
    return {item.strip() for item in os.environ.get(name, "").split(",") if item.strip()}


def _entry_points(
    distributions: Iterable[importlib.metadata.Distribution],
) -> list[tuple[importlib.metadata.EntryPoint, Provider]]:
    """Entry points of group ``kdframe``, one per (distribution, name), sorted for a stable order."""
    found: dict[tuple[str, str], tuple[importlib.metadata.EntryPoint, Provider]] = {}
    for dist in distributions:
        dist_name = dist.metadata["Name"] or ""
        for entry_point in dist.entry_points:
            if entry_point.group != ENTRY_POINT_GROUP:
                continue
            provider = Provider(entry_point.name, dist_name, dist.version or "", entry_point.value)
            # A distribution visible on two sys.path entries is listed twice: keep the first.
            found.setdefault((dist_name.lower(), entry_point.name), (entry_point, provider))
    return [found[key] for key in sorted(found)]


def _check_pending(pm: pluggy.PluginManager, providers: dict[str, Provider]) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        plugin_name = pm.get_name(error.plugin) or "?"
        provider = providers.get(plugin_name)
        where = provider.describe() if provider else f"plugin '{plugin_name}'"
        raise PluginError(
            f"{where} implements a hook that kdframe does not define: {error}. Hook names start "
            "with 'kdframe_' and are listed in docs/hooks.md; check the spelling."
        ) from error


def create_plugins(
    *,
    load_entry_points: bool | None = None,
    plugins: Sequence[tuple[str, object]] = (),
    blocked: Iterable[str] = (),
    distributions: Iterable[importlib.metadata.Distribution] | None = None,
) -> Plugins:
    """Build a plugin manager, load plugins and index their components.

    Args:
        load_entry_points: Load the ``kdframe`` entry points of installed distributions. ``None``
            means yes unless the environment variable ``KDFRAME_DISABLE_PLUGIN_AUTOLOAD`` is set.
        plugins: Extra ``(name, plugin)`` pairs to register (modules or objects), after entry points.
        blocked: Plugin (entry-point) names not to load, added to ``KDFRAME_BLOCK_PLUGINS``.
        distributions: The distributions to scan (default: all installed); tests pass fakes.

    Raises:
        PluginError: A plugin fails to import or register, or implements an unknown hook.
        ComponentError: Two plugins register a component of the same kind and name.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    providers: dict[str, Provider] = {}
    blocked_names = set(blocked) | _env_list(BLOCK_ENV)
    for name in blocked_names:
        pm.set_blocked(name)

    if load_entry_points is None:
        load_entry_points = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    if load_entry_points:
        dists = importlib.metadata.distributions() if distributions is None else distributions
        for entry_point, provider in _entry_points(dists):
            if pm.is_blocked(entry_point.name):
                continue
            if pm.get_plugin(entry_point.name) is not None:
                other = providers[entry_point.name]
                raise PluginError(
                    f"Two distributions declare a kdframe plugin named '{entry_point.name}': "
                    f"{other.distribution} and {provider.distribution}. Uninstall one of them."
                )
            try:
                plugin = entry_point.load()
                pm.register(plugin, name=entry_point.name)
            except Exception as error:  # name the broken plugin instead of a bare ImportError
                raise PluginError(
                    f"{provider.describe()} could not be loaded from '{entry_point.value}': "
                    f"{type(error).__name__}: {error}. Reinstall or uninstall that distribution, "
                    f"or block it with {BLOCK_ENV}={entry_point.name}."
                ) from error
            providers[entry_point.name] = provider

    for name, plugin in plugins:
        if pm.is_blocked(name):
            continue
        try:
            pm.register(plugin, name=name)
        except ValueError as error:
            raise PluginError(f"Cannot register plugin '{name}': {error}") from error
        providers[name] = Provider(name, "", "", getattr(plugin, "__name__", type(plugin).__module__))

    _check_pending(pm, providers)
    return Plugins(pm=pm, providers=providers, registry=build_registry(pm, providers))
