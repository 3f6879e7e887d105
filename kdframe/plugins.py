"""The plugin-manager factory: entry points, selection, provenance and hook errors that name a plugin.

There is no module-level plugin manager: every run (and every test) builds its own with
:func:`create_plugins`, which loads the ``kdframe`` entry points of the installed distributions in a
deterministic order (allow- and block-lists applied), records which distribution provided each plugin,
checks that every hook a plugin implements exists and that the plugin was written for this plugin-API
major version, and builds the component :class:`~kdframe.registry.Registry` from them.

Plugins registered in the process itself (:func:`register_in_process`: a notebook's own model or
loss, through :func:`kdframe.register`) are added to every plugin manager built afterwards, after the
entry points, until :func:`unregister_in_process` removes them.

A broken plugin (import error, unknown hook, hookimpl with a wrong signature, failing registration
hook, other API version) is an error naming the plugin and its distribution, or, when
``skip_broken`` is on, a warning, and the plugin is left out.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import types
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from kdframe import hookspecs
from kdframe.errors import KdframeError, PluginError, suggest
from kdframe.registry import Provider, Registry, build_registry

ENTRY_POINT_GROUP = "kdframe"
DISABLE_AUTOLOAD_ENV = "KDFRAME_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "KDFRAME_ALLOW_PLUGINS"
BLOCK_ENV = "KDFRAME_BLOCK_PLUGINS"
SKIP_BROKEN_ENV = "KDFRAME_SKIP_BROKEN_PLUGINS"
#: Module attribute a plugin may set to the plugin-API major version it was written for.
API_ATTRIBUTE = "KDFRAME_PLUGIN_API"
EVENT_HOOK_PREFIX = "kdframe_on_"

#: Plugins registered in this process (name -> plugin), added to every manager create_plugins builds.
_IN_PROCESS: dict[str, object] = {}


def register_in_process(name: str, plugin: object) -> None:
    """Add ``plugin`` to every plugin manager :func:`create_plugins` builds from now on in this
    process; a plugin of the same name registered earlier is replaced (a notebook cell run again)."""
    _IN_PROCESS[name] = plugin


def unregister_in_process(name: str) -> None:
    """Remove a plugin registered with :func:`register_in_process` (no error when there is none)."""
    _IN_PROCESS.pop(name, None)


def in_process_plugins() -> list[tuple[str, object]]:
    """The plugins registered with :func:`register_in_process`, in registration order."""
    return list(_IN_PROCESS.items())


class BrokenPluginWarning(UserWarning):
    """A broken plugin was skipped because skipping broken plugins is switched on."""


def api_major() -> int:
    """The major version of kdframe's plugin API (:data:`kdframe.hookspecs.PLUGIN_API_VERSION`)."""
    return int(str(hookspecs.PLUGIN_API_VERSION).split(".")[0])


class NamingHookRelay:
    """The plugin manager's hook relay, except that an exception raised inside an event hook
    implementation becomes a :class:`PluginError` that names the plugin and its distribution."""

    def __init__(self, pm: pluggy.PluginManager, providers: dict[str, Provider]) -> None:
        self._pm = pm
        self._providers = providers

    def __getattr__(self, name: str) -> Any:
        caller = getattr(self._pm.hook, name)
        if not name.startswith(EVENT_HOOK_PREFIX):
            return caller

        def call(**kwargs: Any) -> Any:
            try:
                return caller(**kwargs)
            except Exception as error:
                raise _named_error(caller, name, error, self._providers) from error

        return call


def _named_error(caller: Any, hook_name: str, error: Exception, providers: dict[str, Provider]) -> Exception:
    """Find the hook implementation the exception came from by walking its traceback."""
    owners = {impl.function.__code__: impl.plugin_name for impl in caller.get_hookimpls()}
    culprit = None
    traceback = error.__traceback__
    while traceback is not None:
        culprit = owners.get(traceback.tb_frame.f_code, culprit)
        traceback = traceback.tb_next
    if culprit is None:
        return error
    provider = providers.get(culprit) or Provider(culprit, "", "", "")
    detail = f"{type(error).__name__}: {error}" if not isinstance(error, KdframeError) else str(error)
    return PluginError(
        f"{provider.describe()} raised an error in {hook_name}: {detail}. The stages that finished "
        "before it are saved in the run folder. Fix or update the plugin, or leave it out with "
        f"{BLOCK_ENV}={culprit} or the schedule's \"plugins\": {{\"block\": [\"{culprit}\"]}}."
    )


@dataclass
class Plugins:
    """A plugin manager with its plugins loaded, their provenance and the component registry."""

    pm: pluggy.PluginManager
    providers: dict[str, Provider]
    registry: Registry

    @property
    def hook(self) -> Any:
        """The hook relay (``plugins.hook.kdframe_on_run_start(...)``); errors in event hooks name
        the plugin that raised them."""
        return NamingHookRelay(self.pm, self.providers)

    def call_each(self, hook_name: str, only: Iterable[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Call each implementation of a hook on its own and return the results by plugin name
        (``None`` results left out); ``only`` limits the call to the named plugins. An exception
        raised by an implementation becomes a :class:`PluginError` naming its plugin."""
        wanted = set(only) if only is not None else None
        results: dict[str, Any] = {}
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            if wanted is not None and impl.plugin_name not in wanted:
                continue
            arguments = {name: value for name, value in kwargs.items() if name in impl.argnames}
            try:
                value = impl.function(**arguments)
            except Exception as error:
                provider = self.providers.get(impl.plugin_name) or Provider(impl.plugin_name, "", "", "")
                raise PluginError(
                    f"{provider.describe()} raised an error in {hook_name}: {type(error).__name__}: "
                    f"{error}. Fix or update the plugin, or leave it out with {BLOCK_ENV}={impl.plugin_name}."
                ) from error
            if value is not None:
                results[impl.plugin_name] = value
        return results

    def register_for_run(self, plugin: object, name: str) -> None:
        """Register a per-run plugin object (a logger) and check its hook names."""
        self.pm.register(plugin, name=name)
        self.providers[name] = Provider(name, "", "", type(plugin).__module__)
        _check_pending(self.pm, self.providers, skip_broken=False)

    def unregister(self, name: str) -> None:
        """Remove a per-run plugin object registered with :meth:`register_for_run`."""
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.providers.pop(name, None)


def env_list(name: str) -> list[str]:
    """A comma-separated environment variable as a list of its non-empty items."""
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def env_flag(name: str) -> bool:
    """An environment variable that is set to anything but '', '0', 'false' or 'no'."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


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


def _check_pending(pm: pluggy.PluginManager, providers: dict[str, Provider], *, skip_broken: bool) -> None:
    """Every hook a plugin implements must be declared; a plugin that implements others is broken."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as error:
            plugin_name = pm.get_name(error.plugin) or "?"
            provider = providers.get(plugin_name)
            where = provider.describe() if provider else f"plugin '{plugin_name}'"
            declared = [name for name in dir(hookspecs) if name.startswith("kdframe_")]
            unknown = [
                name for name in dir(error.plugin)
                if name.startswith("kdframe_") and name not in declared and callable(getattr(error.plugin, name))
            ]
            hint = "".join(suggest(name, declared) for name in unknown)
            message = (
                f"{where} implements a hook that kdframe does not define: {', '.join(unknown) or error}."
                f"{hint} Hook names start with 'kdframe_' and are listed in docs/hooks.md; check the "
                "spelling, or update the plugin."
            )
            if not skip_broken:
                raise PluginError(message) from error
            _skip(pm, providers, plugin_name, message)


def _skip(pm: pluggy.PluginManager, providers: dict[str, Provider], name: str, message: str) -> None:
    warnings.warn(f"Skipping a broken plugin: {message}", BrokenPluginWarning, stacklevel=3)
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin)
    providers.pop(name, None)
    pm.set_blocked(name)


def _check_api(plugin: object, provider: Provider) -> None:
    """A plugin that declares another plugin-API major version is refused."""
    declared = getattr(plugin, API_ATTRIBUTE, None)
    if declared is None:
        return
    if isinstance(declared, bool) or not isinstance(declared, int):
        raise PluginError(
            f"{provider.describe()} sets {API_ATTRIBUTE} = {declared!r}; it must be an int, the "
            "plugin-API major version the plugin was written for."
        )
    if declared != api_major():
        raise PluginError(
            f"{provider.describe()} was written for kdframe plugin API {declared}, but this kdframe "
            f"({hookspecs.PLUGIN_API_VERSION}) provides API {api_major()}. Install a version of the "
            "plugin made for this kdframe, or a kdframe that matches the plugin."
        )


def create_plugins(
    *,
    load_entry_points: bool | None = None,
    plugins: Sequence[tuple[str, object]] = (),
    allowed: Iterable[str] | None = None,
    blocked: Iterable[str] = (),
    skip_broken: bool | None = None,
    distributions: Iterable[importlib.metadata.Distribution] | None = None,
) -> Plugins:
    """Build a plugin manager, load plugins and index their components.

    Args:
        load_entry_points: Load the ``kdframe`` entry points of installed distributions. ``None``
            means yes unless the environment variable ``KDFRAME_DISABLE_PLUGIN_AUTOLOAD`` is set.
        plugins: Extra ``(name, plugin)`` pairs to register (modules or objects), after entry points
            and the in-process plugins (:func:`register_in_process`; one of the same name is replaced).
        allowed: Entry-point plugin names (wildcards allowed) to load; the others are not loaded.
            ``None`` (and an empty ``KDFRAME_ALLOW_PLUGINS``) means all. Combined with
            ``KDFRAME_ALLOW_PLUGINS``: a plugin is loaded only when both allow it. A name given here
            that matches no installed plugin is an error.
        blocked: Plugin names (wildcards allowed) not to load, added to ``KDFRAME_BLOCK_PLUGINS``.
        skip_broken: Leave out a plugin that fails to load, implements an unknown hook, declares
            another plugin-API version or fails in a registration hook, with a warning, instead of
            raising. ``None`` means the environment variable ``KDFRAME_SKIP_BROKEN_PLUGINS``.
        distributions: The distributions to scan (default: all installed); tests pass fakes.

    Raises:
        PluginError: A plugin is broken (and ``skip_broken`` is off), or ``allowed`` names a plugin
            that is not installed.
        ComponentError: Two plugins register a component of the same kind and name.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    providers: dict[str, Provider] = {}
    block_patterns = [*blocked, *env_list(BLOCK_ENV)]
    allow_lists = [list(allowed)] if allowed is not None else []
    if env_list(ALLOW_ENV):
        allow_lists.append(env_list(ALLOW_ENV))
    if skip_broken is None:
        skip_broken = env_flag(SKIP_BROKEN_ENV)
    given = {name for name, _ in plugins}
    plugins = [*((name, plugin) for name, plugin in in_process_plugins() if name not in given), *plugins]

    def refuse(provider: Provider, message: str, error: BaseException | None = None) -> None:
        if not skip_broken:
            raise PluginError(message) from error
        _skip(pm, providers, provider.plugin, message)

    if load_entry_points is None:
        load_entry_points = not env_flag(DISABLE_AUTOLOAD_ENV)
    found = _entry_points(importlib.metadata.distributions() if distributions is None else distributions) if load_entry_points else []
    if allowed is not None:
        names = sorted({provider.plugin for _, provider in found} | {name for name, _ in plugins})
        missing = [pattern for pattern in allowed if not any(fnmatch.fnmatchcase(name, pattern) for name in names)]
        if missing:
            hints = "".join(suggest(pattern, names) for pattern in missing)
            raise PluginError(
                f"The plugin allow-list names {', '.join(repr(m) for m in missing)}, which no installed "
                f"distribution provides.{hints} Installed plugins: {', '.join(names) or 'none'}. "
                "Install the plugin's distribution or correct the name."
            )
    for entry_point, provider in found:
        if _matches(entry_point.name, block_patterns) or not all(_matches(entry_point.name, allow) for allow in allow_lists):
            pm.set_blocked(entry_point.name)
            continue
        if pm.get_plugin(entry_point.name) is not None:
            other = providers[entry_point.name]
            raise PluginError(
                f"Two distributions declare a kdframe plugin named '{entry_point.name}': "
                f"{other.distribution} and {provider.distribution}. Uninstall one of them."
            )
        try:
            plugin = entry_point.load()
        except Exception as error:  # name the broken plugin instead of a bare ImportError
            refuse(
                provider,
                f"{provider.describe()} could not be loaded from '{entry_point.value}': "
                f"{type(error).__name__}: {error}. Reinstall or uninstall that distribution, or block "
                f"it with {BLOCK_ENV}={entry_point.name}.",
                error,
            )
            continue
        try:
            _check_api(plugin, provider)
            pm.register(plugin, name=entry_point.name)
        except PluginError as error:
            refuse(provider, str(error), error)
            continue
        except (pluggy.PluginValidationError, ValueError) as error:
            refuse(
                provider,
                f"{provider.describe()} has a hook implementation that does not match kdframe's "
                f"hooks: {error}. Compare its signature with docs/hooks.md (an implementation may "
                f"take fewer arguments than the hook, never others), or block it with "
                f"{BLOCK_ENV}={entry_point.name}.",
                error,
            )
            continue
        providers[entry_point.name] = provider

    for name, plugin in plugins:
        if _matches(name, block_patterns):
            continue
        module = getattr(plugin, "__name__", None) if isinstance(plugin, types.ModuleType) else None
        provider = Provider(name, "", "", module or type(plugin).__module__)
        try:
            _check_api(plugin, provider)
            pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as error:
            raise PluginError(f"Cannot register plugin '{name}': {error}") from error
        providers[name] = provider

    _check_pending(pm, providers, skip_broken=skip_broken)
    on_broken: Callable[[Provider, str], None] | None = None
    if skip_broken:
        def on_broken(provider: Provider, message: str) -> None:
            _skip(pm, providers, provider.plugin, message)
    return Plugins(pm=pm, providers=providers, registry=build_registry(pm, providers, on_broken=on_broken))
