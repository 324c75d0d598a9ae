"""The plugin manager: the core's own blocks, installed plugins (entry points), and modules named in a space.

Each plugin is loaded and asked for its registrations on its own, so one broken plugin
(import error, hook with a wrong signature, an exception inside ``register_*``) is
reported by name and the others still load.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import PluginError, did_you_mean
from .nn.backbones import BackboneKind
from .strategy import Strategy
from .training.weighting import Weighting

ENTRY_POINT_GROUP = "mtl_search"
DISABLE_ENV = "MTL_SEARCH_DISABLE_PLUGINS"
REGISTER_HOOKS = {
    "register_strategies": "strategies",
    "register_datasets": "datasets",
    "register_weightings": "weightings",
    "register_backbones": "backbones",
}

_SINGULAR = {"strategies": "strategy", "datasets": "dataset", "weightings": "weighting", "backbones": "backbone"}


@dataclass(frozen=True)
class DatasetEntry:
    """A registered data set: ``factory(**options) -> Dataset`` with default ``options``."""

    name: str
    factory: Callable[..., Any]
    options: dict[str, Any]
    description: str = ""


@dataclass
class PluginInfo:
    """What ``mtl-search plugins`` shows about one plugin."""

    name: str
    source: str
    hooks: list[str] = field(default_factory=list)
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    manager: pluggy.PluginManager
    strategies: dict[str, Strategy] = field(default_factory=dict)
    datasets: dict[str, DatasetEntry] = field(default_factory=dict)
    weightings: dict[str, type[Weighting]] = field(default_factory=dict)
    backbones: dict[str, BackboneKind] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)

    def lookup(self, kind: str, name: str, path: str) -> Any:
        """The registered item, or a SpaceError at ``path`` listing the valid names."""
        from .errors import SpaceError

        items = getattr(self, kind)
        singular = _SINGULAR[kind]
        if name not in items:
            broken = [p for p in self.plugins if p.error]
            hint = "; broken plugins: " + "; ".join(f"{p.name}: {p.error.splitlines()[-1]}" for p in broken) if broken else ""
            raise SpaceError(path, f"unknown {singular} {name!r}; {did_you_mean(name, items)}{hint}")
        return items[name]

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call an observer hook; an observer's exception is printed, never fatal."""
        for impl in getattr(self.manager.hook, hook).get_hookimpls():
            try:
                impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
            except Exception:  # an observer must not break a search
                print(f"warning: plugin {impl.plugin_name!r} failed in {hook}:\n{traceback.format_exc()}", file=sys.stderr)


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def _import_space_module(ref: str, base_dir: Path | None) -> ModuleType:
    """Import a module named in a space: a dotted name, or a ``.py`` path relative to the space file."""
    if ref.endswith(".py"):
        path = Path(ref)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        name = f"mtl_search_space_plugin_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(ref)


def load_registry(space_plugins: list[str] = (), base_dir: Path | None = None, extra: list[tuple[str, Any]] = ()) -> Registry:
    """Load the core blocks, every installed plugin, the modules a space names, and ``extra`` (name, object) pairs.

    Raises PluginError when two plugins register the same name under one kind.
    """
    from .nn import backbones
    from .training import weighting

    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry(manager)
    disabled = _disabled()

    # the core's own backbones and default weighting, registered through the same hooks as any plugin's
    candidates: list[tuple[str, str, Callable[[], Any]]] = [
        ("mtl_search.nn.backbones", "core", lambda: backbones),
        ("mtl_search.training.weighting", "core", lambda: weighting),
    ]
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        source = f"entry point of {dist.name} {dist.version}" if dist else "entry point"
        candidates.append((ep.name, source, ep.load))
    for ref in space_plugins:
        candidates.append((ref, "space", lambda ref=ref: _import_space_module(ref, base_dir)))
    for name, obj in extra:
        candidates.append((name, "registered in code", lambda obj=obj: obj))

    owners: dict[tuple[str, str], str] = {}
    for name, source, load in candidates:
        if name in disabled:
            continue
        info = PluginInfo(name, source)
        registry.plugins.append(info)
        try:
            plugin = load()
            manager.register(plugin, name=name)
        except Exception as exc:
            info.error = _describe(exc)
            continue
        try:
            manager.check_pending()
        except pluggy.PluginValidationError as exc:
            manager.unregister(name=name)
            info.error = _describe(exc)
            continue
        if source == "space" and isinstance(plugin, ModuleType):
            # Ray workers may not be able to import a module named only in a space. Ray serialises with its
            # own vendored cloudpickle (registering with the standalone package has no effect there); imported
            # here, so commands loading no space plugin (plugins, validate of most spaces) do not import Ray.
            import ray.cloudpickle as cloudpickle

            cloudpickle.register_pickle_by_value(plugin)
        info.hooks = sorted(impl.name for impl in _impls_of(manager, name))
        staged = _collect(manager, name, info)
        if staged is None:
            manager.unregister(name=name)
            continue
        for kind, items in staged.items():
            for item_name, item in items.items():
                other = owners.get((kind, item_name))
                if other is not None:
                    raise PluginError(
                        f"{_SINGULAR[kind]} {item_name!r} is registered by two plugins: {other!r} and {name!r}; "
                        f"uninstall one or disable it with {DISABLE_ENV}={name}"
                    )
                owners[(kind, item_name)] = name
                getattr(registry, kind)[item_name] = item
            if items:
                info.provides[kind] = sorted(items)
    return registry


class _Impl:
    def __init__(self, name: str, function: Callable, argnames: tuple[str, ...]):
        self.name, self.function, self.argnames = name, function, argnames


def _impls_of(manager: pluggy.PluginManager, plugin_name: str) -> list[_Impl]:
    found = []
    for hook_name in dir(manager.hook):
        caller = getattr(manager.hook, hook_name)
        if not isinstance(caller, pluggy.HookCaller):
            continue
        for impl in caller.get_hookimpls():
            if impl.plugin_name == plugin_name:
                found.append(_Impl(hook_name, impl.function, tuple(impl.argnames)))
    return found


def _collect(manager: pluggy.PluginManager, plugin_name: str, info: PluginInfo) -> dict[str, dict[str, Any]] | None:
    """Call the plugin's ``register_*`` hooks; None (and ``info.error`` set) if one raises or registers garbage."""
    staged: dict[str, dict[str, Any]] = {kind: {} for kind in REGISTER_HOOKS.values()}
    for impl in _impls_of(manager, plugin_name):
        kind = REGISTER_HOOKS.get(impl.name)
        if kind is None:
            continue
        try:
            impl.function(**({"register": _registrar(kind, staged[kind])} if "register" in impl.argnames else {}))
        except Exception as exc:
            info.error = f"{impl.name} raised: {_describe(exc)}"
            return None
    return staged


def _registrar(kind: str, target: dict[str, Any]) -> Callable[..., None]:
    def register(item: Any, *args: Any, **kwargs: Any) -> None:
        if kind == "datasets":
            entry = _dataset_entry(item, *args, **kwargs)
            name = entry.name
            item = entry
        elif kind == "strategies":
            if not isinstance(item, Strategy) or not item.name:
                raise TypeError(f"register_strategies expects Strategy instances with a name, got {item!r}")
            name = item.name
        elif kind == "weightings":
            if not (isinstance(item, type) and issubclass(item, Weighting) and item.name):
                raise TypeError(f"register_weightings expects Weighting subclasses with a name, got {item!r}")
            name = item.name
        else:
            if not isinstance(item, BackboneKind):
                raise TypeError(f"register_backbones expects BackboneKind objects, got {item!r}")
            name = item.name
        if name in target:
            raise ValueError(f"{_SINGULAR[kind]} {name!r} registered twice by the same plugin")
        target[name] = item

    return register


def _dataset_entry(name: str, factory: Callable[..., Any], options: dict[str, Any] | None = None, description: str = "") -> DatasetEntry:
    if not isinstance(name, str) or not callable(factory):
        raise TypeError("register_datasets expects register(name, factory, options=None, description='')")
    return DatasetEntry(name, factory, dict(options or {}), description)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
