"""`-s key=value` on the command line: change any recipe key before validation.

`-s train.iterations=200 -s filters[0].passes=2 -s 'seeds=[prior]'`. The value is read as
YAML (so 200 is an int, true a boolean, [a, b] a list) and written into the recipe's data
before it is checked, so an override is validated exactly like the same key in the file.
Missing mappings on the way are created; a list index may be at most the list's length
(equal to it appends a step). A malformed or impossible path is a RecipeError naming it.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from .errors import RecipeError
from .limits import load_yaml

_NAME = r"[A-Za-z_][A-Za-z0-9_\-]*"
_PATH = re.compile(rf"{_NAME}(?:\.{_NAME}|\[\d+\])*")
_PART = re.compile(rf"({_NAME})|\[(\d+)\]")


def parse_path(path: str) -> list[str | int]:
    """`filters[0].passes` -> ['filters', 0, 'passes']."""
    if not _PATH.fullmatch(path):
        raise RecipeError(
            f"cannot read the key path {path!r}: write it like train.iterations or filters[0].passes", f"-s {path}"
        )
    return [m.group(1) if m.group(1) else int(m.group(2)) for m in _PART.finditer(path)]


def split(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, YAML-typed value)."""
    if "=" not in item:
        raise RecipeError(f"{item!r} is not KEY=VALUE: write it like -s train.iterations=200", "-s")
    key, text = item.split("=", 1)
    key = key.strip()
    return key, (load_yaml(text, f"-s {key}") if text.strip() else "")


def apply(data: Any, items: Iterable[str]) -> Any:
    """Return a copy of the recipe data with every `key=value` in `items` set."""
    import copy

    items = list(items)
    if not items:
        return data
    data = copy.deepcopy(data) if data is not None else {}
    if not isinstance(data, dict):
        return data  # the loader reports a non-mapping recipe itself
    for item in items:
        key, value = split(item)
        set_path(data, parse_path(key), value, key)
    return data


def _show(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def set_path(data: dict, parts: list[str | int], value: Any, label: str) -> None:
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = _show(parts[:i]) or "the recipe"
        if isinstance(part, int):
            if not isinstance(node, list):
                raise RecipeError(f"{here} is not a list, so [{part}] cannot index it", f"-s {label}")
            if part > len(node):
                raise RecipeError(
                    f"{here} has {len(node)} step{'s' if len(node) != 1 else ''}: the index may be 0 to {len(node)} "
                    f"({len(node)} appends one)",
                    f"-s {label}",
                )
            if last:
                node[part : part + 1] = [value]
                return
            if part == len(node):
                node.append({})
            if isinstance(node[part], str):  # `- sharpen` is short for `- use: sharpen`
                node[part] = {"use": node[part]}
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise RecipeError(f"{here} is not a mapping, so .{part} cannot be set in it", f"-s {label}")
            if last:
                node[part] = value
                return
            nxt = parts[i + 1]
            if part not in node or node[part] is None:
                node[part] = [] if isinstance(nxt, int) else {}
            elif i == 0 and part in ("dataset", "output") and isinstance(node[part], str):
                node[part] = {"use": node[part]}  # the short form of a step
            node = node[part]
