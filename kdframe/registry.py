"""Component specs and the index built from the ``kdframe_register_*`` hooks.

A component is anything a schedule names (a loss strategy, a model architecture, a curriculum, a
dataset, a logger, an optimizer or a learning-rate schedule) or ``kdframe export`` writes with (an
exporter). Plugins describe each one with a spec (name, summary, a Pydantic ``Params`` model
and a factory) returned from a registration hook. The registry is built from those hooks each time a
plugin manager is created; there is no second, global dictionary.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from kdframe.errors import ComponentError, KdframeError, PluginError, suggest
from kdframe.strict_numbers import NoBoolNumbers

if TYPE_CHECKING:
    import pluggy


class Params(NoBoolNumbers):
    """Base class of component parameters: unknown fields are errors, numbers must be finite (and
    never ``true``/``false``), and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NoParams(Params):
    """Parameters of a component that takes none."""


@dataclass(frozen=True)
class ComponentSpec:
    """What every component declares.

    Attributes:
        name: The name a schedule uses (lower case, letters, digits and ``_``).
        summary: One line shown by ``kdframe plugins``.
        factory: Builds the component from validated params (and, for some kinds, context).
        params: The Pydantic model of the component's params; it must forbid unknown fields.
        family: A grouping shown in listings (for losses: ``label``, ``response``, ``feature`` or
            ``relation``).
    """

    kind: ClassVar[str] = "component"

    name: str
    summary: str
    factory: Callable[..., Any]
    params: type[BaseModel] = NoParams
    family: str = ""


@dataclass(frozen=True)
class LossSpec(ComponentSpec):
    """A loss strategy. ``factory(params)`` returns a :class:`kdframe.losses.LossTerm`.

    Attributes:
        reference: The paper (authors, year, title or arXiv id) the term implements.
        example: Params for the docs' JSON snippet and the shared contract test; feature and relation
            terms name their layers here with the placeholder paths ``student.layer`` and
            ``teacher.layer`` (a second pair: ``student.layer2``/``teacher.layer2``).
        layers: One line on the layers the term needs (``"logits"``, ``"feature maps (N, C, H, W)"``...).
        weight: A suggested weight (from the paper or its authors' code, for this implementation's
            reduction), used by the docs and benchmarks: a number, or a
            :class:`~kdframe.value_schedule.ValueSchedule` such as DKD's warm-up.
        label_weight: The weight of ``cross_entropy`` that ``weight`` goes with (0.1 for Hinton-style
            KD, whose weights are ``1 - alpha`` and ``alpha``; 1 for most feature and relation terms).
        weight_source: Where ``weight`` comes from: the paper, or the code and setting it is taken
            from, and how this implementation's reduction changes it (shown in docs/methods.md).
    """

    kind: ClassVar[str] = "loss"
    family: str = "response"
    reference: str = ""
    example: dict[str, Any] = field(default_factory=dict)
    layers: str = "logits"
    weight: Any = 1.0
    label_weight: float = 1.0
    weight_source: str = ""


@dataclass(frozen=True)
class ModelSpec(ComponentSpec):
    """A model architecture. ``factory(params, data_info)`` returns a ``torch.nn.Module`` classifier.

    Attributes:
        label: Optional ``label(params) -> str``: the architecture as results tables show it, for an
            architecture that builds many models (``torchvision`` shows ``torchvision resnet18``);
            ``None`` shows the architecture's name.
    """

    kind: ClassVar[str] = "model"
    label: Callable[[Any], str] | None = None


@dataclass(frozen=True)
class CurriculumSpec(ComponentSpec):
    """A curriculum. ``factory(params)`` returns a :class:`kdframe.curriculum.Curriculum`."""

    kind: ClassVar[str] = "curriculum"


@dataclass(frozen=True)
class DatasetSpec(ComponentSpec):
    """A dataset. ``factory(params)`` returns a :class:`kdframe.data.InMemoryDataset` or a
    :class:`kdframe.data.StreamingDataset`."""

    kind: ClassVar[str] = "dataset"


@dataclass(frozen=True)
class LoggerSpec(ComponentSpec):
    """A logger. ``factory(params, run_dir)`` returns an object implementing trainer-event hooks."""

    kind: ClassVar[str] = "logger"


@dataclass(frozen=True)
class OptimizerSpec(ComponentSpec):
    """An optimizer. ``factory(params, param_groups)`` returns a ``torch.optim.Optimizer``.

    ``param_groups`` is a list of torch parameter groups: dicts with ``"params"`` (the tensors) and,
    for the groups a schedule's ``training.optimizer.param_groups`` defines, that group's overrides
    of the params (validated, by the Params field names). The params must have an ``lr`` field: the
    peak learning rate, which the LR schedule multiplies.
    """

    kind: ClassVar[str] = "optimizer"


@dataclass(frozen=True)
class LRScheduleSpec(ComponentSpec):
    """A learning-rate schedule. ``factory(params)`` returns a :class:`kdframe.optim.LRSchedule`,
    whose ``factor`` multiplies every parameter group's peak LR after the warm-up."""

    kind: ClassVar[str] = "lr_schedule"


@dataclass(frozen=True)
class ExporterSpec(ComponentSpec):
    """A deployment format for ``kdframe export``. ``factory(params)`` returns a
    :class:`kdframe.export.Exporter` (``export``, ``load`` and, for int8, ``quantize``).

    Attributes:
        supports_int8: Whether the exporter's ``quantize`` writes int8 artefacts (``--int8``).
    """

    kind: ClassVar[str] = "exporter"
    supports_int8: bool = False


@dataclass(frozen=True)
class ComponentKind:
    """One kind of component: its spec class, the hook that registers it and its plural for
    listings. :data:`COMPONENT_KINDS` is the one table the registry, the CLI (``kdframe plugins
    --kind``) and the docs read, so a new kind is added there alone."""

    spec: type[ComponentSpec]
    hook: str
    plural: str

    @property
    def name(self) -> str:
        """The kind's name, e.g. ``"loss"`` (the spec class's ``kind``)."""
        return self.spec.kind


#: Every kind of component, in listing order.
COMPONENT_KINDS: tuple[ComponentKind, ...] = (
    ComponentKind(LossSpec, "kdframe_register_losses", "losses"),
    ComponentKind(ModelSpec, "kdframe_register_models", "models"),
    ComponentKind(CurriculumSpec, "kdframe_register_curricula", "curricula"),
    ComponentKind(DatasetSpec, "kdframe_register_datasets", "datasets"),
    ComponentKind(LoggerSpec, "kdframe_register_loggers", "loggers"),
    ComponentKind(OptimizerSpec, "kdframe_register_optimizers", "optimizers"),
    ComponentKind(LRScheduleSpec, "kdframe_register_lr_schedules", "LR schedules"),
    ComponentKind(ExporterSpec, "kdframe_register_exporters", "exporters"),
)
#: Spec class by kind name.
KINDS: dict[str, type[ComponentSpec]] = {kind.name: kind.spec for kind in COMPONENT_KINDS}
#: Registration hook by kind name.
REGISTRATION_HOOKS: dict[str, str] = {kind.name: kind.hook for kind in COMPONENT_KINDS}
#: Plural by kind name ("curricula", not "curriculums").
PLURALS: dict[str, str] = {kind.name: kind.plural for kind in COMPONENT_KINDS}


@dataclass(frozen=True)
class Provider:
    """Where a component came from."""

    plugin: str
    distribution: str
    version: str
    module: str

    def describe(self) -> str:
        """A short human-readable form: ``plugin (distribution version)``."""
        if self.distribution:
            return f"plugin '{self.plugin}' (distribution {self.distribution} {self.version})"
        return f"plugin '{self.plugin}' (module {self.module})"


@dataclass(frozen=True)
class Component:
    """A registered spec with its provider."""

    spec: ComponentSpec
    provider: Provider

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind


@dataclass
class Registry:
    """Every registered component, by kind and name."""

    components: dict[str, dict[str, Component]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )

    def add(self, spec: ComponentSpec, provider: Provider) -> None:
        """Add one spec; a second component of the same kind and name is an error naming both."""
        if not isinstance(spec, ComponentSpec) or spec.kind not in KINDS:
            raise PluginError(
                f"{provider.describe()} registered {spec!r}, which is not a kdframe component spec. "
                f"Return {', '.join(kind.spec.__name__ for kind in COMPONENT_KINDS)} objects."
            )
        extra = spec.params.model_config.get("extra")
        if extra != "forbid":
            raise PluginError(
                f"{provider.describe()} registered {spec.kind} '{spec.name}' whose params model "
                f"{spec.params.__name__} allows unknown fields. Subclass kdframe.Params (or set "
                "model_config = ConfigDict(extra='forbid')) so that misspelt params are errors."
            )
        existing = self.components[spec.kind].get(spec.name)
        if existing is not None:
            raise ComponentError(
                f"Two plugins register a {spec.kind} named '{spec.name}': "
                f"{existing.provider.describe()} and {provider.describe()}. Uninstall or block one "
                "of them (KDFRAME_BLOCK_PLUGINS), or ask an author to rename the component."
            )
        self.components[spec.kind][spec.name] = Component(spec, provider)

    def get(self, kind: str, name: str) -> Component:
        """Return the component, or raise an error listing what is available and close matches."""
        available = self.components[kind]
        if name in available:
            return available[name]
        names = sorted(available)
        listing = ", ".join(names) if names else "none"
        raise ComponentError(
            f"Unknown {kind.replace('_', ' ')} {name!r}.{suggest(name, names)} Available {PLURALS.get(kind, kind + 's')}: {listing}. "
            "Run 'kdframe plugins' to see every component and the plugin that provides it."
        )

    def spec(self, kind: str, name: str) -> ComponentSpec:
        """Shorthand for ``get(kind, name).spec``."""
        return self.get(kind, name).spec

    @contextlib.contextmanager
    def component_code(self, kind: str, name: str, action: str) -> Iterator[None]:
        """Run a component's own code (its factory, a loss term's ``build``, a curriculum's ``plan``):
        an exception from it that is not a :class:`~kdframe.errors.KdframeError` becomes a
        :class:`~kdframe.errors.PluginError` naming the component, its plugin and distribution,
        so that a plugin's bug is reported as the plugin's, not as kdframe's. Running out of memory
        is not a bug and passes through."""
        try:
            yield
        except Exception as error:
            if not is_plugin_bug(error):
                raise
            raise plugin_bug(kind, name, self.get(kind, name).provider.describe(), action, error) from error

    def remove_plugin(self, plugin: str) -> None:
        """Drop every component the named plugin registered (a broken plugin that is skipped)."""
        for components in self.components.values():
            for name in [name for name, c in components.items() if c.provider.plugin == plugin]:
                del components[name]

    def names(self, kind: str) -> list[str]:
        """Sorted names of the components of one kind."""
        return sorted(self.components[kind])

    def iter(self, kind: str | None = None, pattern: str = "*") -> Iterator[Component]:
        """Components ordered by kind then name, optionally of one kind and matching a wildcard."""
        kinds = [kind] if kind else list(KINDS)
        for each in kinds:
            for name in sorted(self.components[each]):
                if fnmatch.fnmatchcase(name, pattern):
                    yield self.components[each][name]


def is_plugin_bug(error: BaseException) -> bool:
    """Whether an exception from a component's own code is that component's bug: anything but a
    :class:`~kdframe.errors.KdframeError` (the component's own message about the input) and running
    out of memory (``MemoryError``, ``torch.OutOfMemoryError``)."""
    return not isinstance(error, (KdframeError, MemoryError)) and type(error).__name__ != "OutOfMemoryError"


def plugin_bug(kind: str, name: str, provider: str, action: str, error: BaseException) -> PluginError:
    """The error for an exception raised in a component's own code: it names the component, the
    plugin that provides it, what it was doing and the exception, and says whose bug it is."""
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return PluginError(
        f"{kind.capitalize()} '{name}' from {provider} failed in {action}: {type(error).__name__}: "
        f"{first_line}. This is a bug in that plugin, not in kdframe: report it to the plugin's "
        "authors (rerun with --debug for the traceback), or use another component."
    )


def build_registry(
    pm: pluggy.PluginManager,
    providers: dict[str, Provider],
    on_broken: Callable[[Provider, str], None] | None = None,
) -> Registry:
    """Call every registration hook implementation and index what it returns.

    Args:
        pm: A plugin manager with the kdframe hookspecs and the plugins loaded.
        providers: Provenance by plugin name, as recorded by :func:`kdframe.plugins.create_plugins`.
        on_broken: Called with the provider and the error message when a plugin's registration hook
            fails or returns something that is not a valid spec; its components are then left out
            of the registry. ``None`` raises the error instead.
    """
    registry = Registry()
    broken: set[str] = set()
    for kind, hook_name in REGISTRATION_HOOKS.items():
        hook = getattr(pm.hook, hook_name)
        # Reversed so that the order is registration order (pluggy calls last-registered first).
        for impl in reversed(hook.get_hookimpls()):
            if impl.plugin_name in broken:
                continue
            provider = providers.get(impl.plugin_name) or Provider(
                impl.plugin_name, "", "", getattr(impl.plugin, "__name__", type(impl.plugin).__name__)
            )
            try:
                _register_from(registry, impl, provider, kind, hook_name)
            except PluginError as error:
                if on_broken is None:
                    raise
                broken.add(impl.plugin_name)
                registry.remove_plugin(impl.plugin_name)
                on_broken(provider, str(error))
    return registry


def _register_from(registry: Registry, impl: Any, provider: Provider, kind: str, hook_name: str) -> None:
    """Add what one registration hook implementation returns."""
    try:
        specs = impl.function()
    except Exception as error:  # a broken plugin must be named, not swallowed
        raise PluginError(
            f"{provider.describe()} failed in {hook_name}: {type(error).__name__}: {error}"
        ) from error
    for spec in specs or []:
        if getattr(spec, "kind", None) != kind:
            raise PluginError(
                f"{provider.describe()} returned {spec!r} from {hook_name}; that hook takes "
                f"{KINDS[kind].__name__} objects only."
            )
        registry.add(spec, provider)
