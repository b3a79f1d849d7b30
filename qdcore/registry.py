"""Name -> component, remembering which plugin (and version) provided each name."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import PluginError, UnknownNameError

# kind -> (hook that fills it, singular noun used in messages)
KINDS: dict[str, tuple[str, str]] = {
    "datasets": ("qd_register_datasets", "dataset"),
    "seed_strategies": ("qd_register_seed_strategies", "seed strategy"),
    "filters": ("qd_register_filters", "filter"),
    "writers": ("qd_register_writers", "writer"),
    "recognizers": ("qd_register_recognizers", "recognizer"),
    "generators": ("qd_register_generators", "generation mode"),
    "models": ("qd_register_models", "model pack"),
}
# Kinds whose registered object is a file (a model pack), not a factory to call.
FILE_KINDS = ("models",)


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str
    version: str | None


@dataclass
class Registry:
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    # plugin name -> error text, for plugins that failed to load
    broken: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, entry: Entry) -> None:
        table = self.entries[kind]
        if not isinstance(entry.name, str) or not entry.name:
            raise PluginError(f"plugin {entry.plugin!r} registered a {KINDS[kind][1]} with an empty or non-string name")
        if kind in FILE_KINDS:
            if not isinstance(entry.factory, (str, os.PathLike)):
                raise PluginError(
                    f"plugin {entry.plugin!r} registered {KINDS[kind][1]} {entry.name!r} with a "
                    f"{type(entry.factory).__name__}: register the path of its pack file (.safetensors or .qdpack)"
                )
        elif not callable(entry.factory):
            raise PluginError(
                f"plugin {entry.plugin!r} registered {KINDS[kind][1]} {entry.name!r} "
                f"with a {type(entry.factory).__name__}, "
                "which is not callable: register a class or function that builds it"
            )
        if entry.name in table:
            other = table[entry.name].plugin
            raise PluginError(
                f"{KINDS[kind][1]} {entry.name!r} is registered twice: by plugin {other!r} and by plugin "
                f"{entry.plugin!r}. Uninstall one, or restrict loading with QD_LOAD_PLUGINS"
            )
        table[entry.name] = entry

    def get(self, kind: str, name: str) -> Entry:
        table = self.entries[kind]
        if name in table:
            return table[name]
        noun = KINDS[kind][1]
        available = sorted(table)
        close = difflib.get_close_matches(str(name), available, n=3, cutoff=0.6)
        msg = f"Can't find {noun} {name!r}."
        if close:
            msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
        msg += " Available: " + (", ".join(available) if available else "(none)")
        if self.broken:
            msg += ". Plugins that failed to load: " + ", ".join(sorted(self.broken))
        raise UnknownNameError(msg)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def provided_by(self, plugin: str) -> dict[str, list[str]]:
        return {kind: sorted(n for n, e in table.items() if e.plugin == plugin) for kind, table in self.entries.items()}
