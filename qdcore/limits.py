"""Size and shape limits on the documents qd is given: a recipe file, a `-s` value, a JSON
body the studio page sends. One reader for all of them, so every door refuses the same things
with the same line (docs/recipes.md, "Limits").

YAML shares a node every time an alias names it, so a few hundred bytes can stand for
billions of values (the "billion laughs"); loading is cheap, but whatever walks, copies or
prints the value afterwards is not. A document is therefore walked once, right after it is
read, counting every value as often as aliases repeat it, and refused past MAX_VALUES or
MAX_DEPTH before anything else looks at it. Duplicate keys are refused too: YAML keeps the
last one silently, so a second `filters:` would drop the first.
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError

MAX_RECIPE_BYTES = 1 << 20  # a recipe file or a JSON body's recipe: 1 MiB
MAX_DEPTH = 32  # mappings and lists inside each other; a real recipe uses 4
MAX_VALUES = 100_000  # every value, counted once per alias that repeats it
MAX_JSON_FILE_BYTES = 1 << 20  # the small JSON files qd keeps beside a model (finished.json, eval.json)
# What one run may allocate for what its input sizes (pictures x steps x frame size): half the
# machine's memory, or QD_MEMORY_LIMIT_MB. Checked when a recipe is checked (engine.prepare).
MEMORY_ENV = "QD_MEMORY_LIMIT_MB"

# Values shown in an error line are cut short: an error never prints a whole document.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 4
_short.maxlevel = 2


def shown(value: Any) -> str:
    """repr(value), at most about 60 characters, and one line."""
    return " ".join(_short.repr(value).split())


class _TooDeep(Exception):
    pass


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping, and a document nested
    deeper than check_shape allows as soon as the composer gets there: composing is recursive,
    and 20,000 levels would otherwise run to Python's recursion limit first."""

    _depth = 0

    def compose_node(self, parent, index):
        # A node this deep sits inside more than MAX_DEPTH containers, which check_shape refuses.
        if self._depth > MAX_DEPTH + 1:
            raise _TooDeep
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges on purpose; the keys after it may override
            key = self.construct_object(key_node, deep=True)
            try:
                again = key in seen
            except TypeError:
                continue  # an unhashable key: the safe loader reports it itself
            if again:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {shown(key)} (YAML would keep only the last one): give each key once",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str, label: str) -> Any:
    """A YAML document within the limits, or RecipeError naming `label` (and the line)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise RecipeError(f"is over {MAX_RECIPE_BYTES >> 10} KiB; a recipe is a few lines", label)
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"invalid YAML: {problem}", where) from None
    except (RecursionError, _TooDeep):
        raise too_deep(label) from None
    check_shape(data, label)
    return data


def load_json(body: bytes | str, label: str, limit: int = MAX_RECIPE_BYTES) -> Any:
    """A JSON document of at most `limit` bytes within the limits, or RecipeError naming `label`."""
    if len(body) > limit:
        raise RecipeError(f"is over {limit >> 10} KiB", label)
    try:
        # NaN and Infinity are Python's extension, not JSON: refused like any other non-JSON.
        data = json.loads(body or "{}", object_pairs_hook=unique_keys, parse_constant=_not_json)
    except RecursionError:
        raise too_deep(label) from None
    except DuplicateKey as e:
        raise RecipeError(f"gives the key {shown(e.key)} twice (JSON would keep only the last one)", label) from None
    except ValueError:
        raise RecipeError("is not JSON", label) from None
    check_shape(data, label)
    return data


class DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def unique_keys(pairs: list) -> dict:
    """json.loads' object_pairs_hook that refuses a repeated key (json keeps the last one
    silently): a studio request, a pack's safetensors header."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")


def too_deep(label: str) -> RecipeError:
    return RecipeError(f"is nested more than {MAX_DEPTH} levels deep; a recipe needs 4", label)


def check_shape(data: Any, label: str) -> None:
    """Refuse a document nested deeper than MAX_DEPTH or holding more than MAX_VALUES values
    once aliases are expanded (a recursive alias is both). Stops as soon as one is exceeded,
    so the walk itself is bounded whatever the document claims."""
    stack = [(data, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise RecipeError(
                f"holds more than {MAX_VALUES:,} values once its aliases are expanded: "
                "write the values out, or use fewer aliases",
                label,
            )
        if isinstance(value, dict):
            children = [v for kv in value.items() for v in kv]
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        if depth >= MAX_DEPTH and children:
            raise too_deep(label)
        stack.extend((c, depth + 1) for c in children)


def read_text(path: Path, limit: int, what: str) -> str:
    """A UTF-8 file of at most `limit` bytes; OSError, UnicodeDecodeError or RecipeError.
    Reads at most limit + 1 bytes, whatever the file's size (a device, a growing file)."""
    with open(path, "rb") as f:
        blob = f.read(limit + 1)
    if len(blob) > limit:
        raise RecipeError(f"is over {limit >> 10} KiB; {what}", str(path))
    return blob.decode("utf-8")


def memory_budget() -> int:
    """Bytes one run may allocate for sizes its input decides: QD_MEMORY_LIMIT_MB, else half
    of this machine's memory (Linux /proc/meminfo; 4 GiB where that cannot be read)."""
    import os

    value = os.environ.get(MEMORY_ENV, "").strip()
    if value:
        try:
            mb = float(value)
        except ValueError:
            raise RecipeError(f"{MEMORY_ENV}={shown(value)} is not a number of megabytes") from None
        if not mb > 0:
            raise RecipeError(f"{MEMORY_ENV}={shown(value)} must be a positive number of megabytes")
        return int(mb * (1 << 20))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    return 4 << 30


def check_memory(nbytes: int, what: str, fix: str, where: str) -> None:
    """RecipeError when `what` needs more than memory_budget(): the line says how much, the
    limit, and `fix` (the settings to lower)."""
    budget = memory_budget()
    if nbytes > budget:
        raise RecipeError(
            f"{what} need about {nbytes / 2**30:.3g} GB, above the {budget / 2**30:.3g} GB one run may use "
            f"(half this machine's memory; {MEMORY_ENV} sets another): {fix}",
            where,
        )
