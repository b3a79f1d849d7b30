"""Builds the pluggy manager: built-ins and third parties alike come in through the `qd`
entry-point group, each loaded in isolation so one broken plugin cannot take down the rest."""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from dataclasses import dataclass, field
from typing import Iterable

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import KINDS, Entry, Registry

GROUP = "qd"
LOAD_ENV = "QD_LOAD_PLUGINS"


@dataclass
class PluginInfo:
    name: str
    version: str | None
    distribution: str | None
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Plugins:
    pm: pluggy.PluginManager
    registry: Registry
    info: dict[str, PluginInfo]


def _allowed() -> set[str] | None:
    """QD_LOAD_PLUGINS=a,b loads only those entry points; set but empty loads none."""
    value = os.environ.get(LOAD_ENV)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    seen = set()
    for ep in importlib.metadata.entry_points(group=GROUP):
        # A package installed twice on sys.path (e.g. editable + site) shows up twice.
        if ep.name in seen:
            continue
        seen.add(ep.name)
        yield ep


def build(extra: Iterable[tuple[str, object]] = ()) -> Plugins:
    """Load every allowed entry point, plus `extra` (name, module-or-object) pairs (for tests
    and embedding), and fill a Registry from their register hooks."""
    pm = pluggy.PluginManager("qd")
    pm.add_hookspecs(hookspecs)
    info: dict[str, PluginInfo] = {}
    registry = Registry()
    _load(pm, registry, info, extra)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginError(f"{e}. Check the hook's spelling against docs/hooks.md") from e
    _register(pm, registry, info)
    for name, pi in info.items():
        plugin = pm.get_plugin(name)
        if plugin is not None:
            pi.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    return Plugins(pm, registry, info)


def _load(
    pm: pluggy.PluginManager, registry: Registry, info: dict[str, PluginInfo], extra: Iterable[tuple[str, object]]
) -> None:
    """Register each allowed entry point's module, then `extra`; one that fails is recorded
    as broken (and an entry point's failure warned about), and the others go on."""
    allowed = _allowed()
    for ep in _entry_points():
        if allowed is not None and ep.name not in allowed:
            continue
        dist = getattr(ep, "dist", None)
        pi = PluginInfo(ep.name, dist.version if dist else None, dist.metadata["Name"] if dist else None)
        info[ep.name] = pi
        try:
            obj = ep.load()
            pm.register(obj, name=ep.name)
        except Exception as e:  # noqa: BLE001 - isolation is the point
            pi.error = f"{type(e).__name__}: {e}"
            registry.broken[ep.name] = pi.error
            warnings.warn(f"qd plugin {ep.name!r} failed to load and is skipped: {pi.error}", stacklevel=3)
    for name, obj in extra:
        info[name] = PluginInfo(name, getattr(obj, "__version__", None), None)
        try:
            pm.register(obj, name=name)
        except Exception as e:  # noqa: BLE001
            info[name].error = f"{type(e).__name__}: {e}"
            registry.broken[name] = info[name].error


def _register(pm: pluggy.PluginManager, registry: Registry, info: dict[str, PluginInfo]) -> None:
    """Call every register hook, each implementation separately so every registration knows
    its plugin; a hook that crashes marks its plugin broken."""
    for kind, (hook_name, _) in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = pm.get_name(impl.plugin)
            pi = info.get(plugin_name)

            def register(name, factory, description: str = "", *, _plugin=plugin_name, _pi=pi, _kind=kind):
                registry.add(_kind, Entry(name, factory, description or "", _plugin, _pi.version if _pi else None))

            try:
                impl.function(register)
            except PluginError:
                raise
            except Exception as e:  # noqa: BLE001 - a hook that crashes is a broken plugin, not a dead CLI
                msg = f"{hook_name} raised {type(e).__name__}: {e}"
                registry.broken[plugin_name] = msg
                if pi:
                    pi.error = msg
                warnings.warn(f"qd plugin {plugin_name!r} failed in {msg}", stacklevel=3)
