"""Checks a mapping of parameters against a callable's signature (as confection does).

Annotations understood: int, float, str, bool, pathlib.Path, Literal[...], Optional[X],
list[X], tuple[X, ...], and Annotated[X, Range(lo, hi)] for inclusive bounds.
Errors name the location (for example `filters[2].scale`) and what is allowed.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Union, get_args, get_origin

from .errors import RecipeError
from .limits import shown


@dataclass(frozen=True)
class Range:
    """Inclusive bounds for a number parameter: `Annotated[float, Range(0, 1)]`."""

    lo: float | None = None
    hi: float | None = None

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"between {_bound(self.lo)} and {_bound(self.hi)}"
        if self.lo is not None:
            return f">= {_bound(self.lo)}"
        return f"<= {_bound(self.hi)}"

    def contains(self, value: float) -> bool:
        return (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)


def _bound(v: float) -> str:
    """Short (1e+07) when that is exact; else every digit (a seed's 9,223,372,036,854,775,807)."""
    short = f"{v:g}"
    return short if float(short) == v else f"{v:,}"


_MISSING = object()


def describe_type(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is typing.Annotated:
        base, *extra = get_args(tp)
        ranges = [e.describe() for e in extra if isinstance(e, Range)]
        return describe_type(base) + (f" {ranges[0]}" if ranges else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = " or ".join(describe_type(a) for a in args)
        return inner + (" or null" if len(args) < len(get_args(tp)) else "")
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"a list of {describe_type(args[0])}" if args else "a list"
    if tp is Path:
        return "a path"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str, base_dir: Path | None = None) -> Any:
    """Return `value` converted to `tp`, or raise RecipeError naming `where`."""
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    origin = get_origin(tp)
    if origin in _BY_ORIGIN:
        return _BY_ORIGIN[origin](value, tp, where, base_dir)
    if isinstance(tp, type) and tp in _BY_TYPE:
        return _BY_TYPE[tp](value, tp, where, base_dir)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise RecipeError(f"{shown(value)} is not {describe_type(tp)}", where)


# -- the composite annotations: Annotated[X, Range], Literal, Optional / Union, list and tuple --


def _annotated(value: Any, tp: Any, where: str, base_dir: Path | None) -> Any:
    base, *extra = get_args(tp)
    out = coerce(value, base, where, base_dir)
    for e in extra:
        if isinstance(e, Range) and not e.contains(out):
            raise RecipeError(f"{shown(out)} is out of range: must be {e.describe()}", where)
    return out


def _literal(value: Any, tp: Any, where: str, base_dir: Path | None) -> Any:
    allowed = get_args(tp)
    if value not in allowed:
        raise RecipeError(
            f"{shown(value)} is not allowed: must be one of " + ", ".join(repr(a) for a in allowed), where
        )
    return value


def _union(value: Any, tp: Any, where: str, base_dir: Path | None) -> Any:
    args = get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise RecipeError(f"must not be null: expected {describe_type(tp)}", where)
    for a in args:
        if a is type(None):
            continue
        try:
            return coerce(value, a, where, base_dir)
        except RecipeError:
            pass
    raise RecipeError(f"{shown(value)} is not {describe_type(tp)}", where)


def _sequence(value: Any, tp: Any, where: str, base_dir: Path | None) -> Any:
    if not isinstance(value, (list, tuple)):
        raise RecipeError(f"{shown(value)} is not {describe_type(tp)}", where)
    args = [a for a in get_args(tp) if a is not Ellipsis]
    item = args[0] if args else Any
    out = [coerce(v, item, f"{where}[{i}]", base_dir) for i, v in enumerate(value)]
    return tuple(out) if get_origin(tp) is tuple else out


# -- the plain types: bool, int, float, str, Path ------------------------------------------


def _bool(value: Any, tp: Any, where: str, base_dir: Path | None) -> bool:
    if isinstance(value, bool):
        return value
    raise RecipeError(f"{shown(value)} is not a boolean: use true or false", where)


def _int(value: Any, tp: Any, where: str, base_dir: Path | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise RecipeError(f"{shown(value)} is not an integer", where)
    return value


def _float(value: Any, tp: Any, where: str, base_dir: Path | None) -> float:
    if isinstance(value, bool):
        raise RecipeError(f"{shown(value)} is not a number", where)
    if isinstance(value, (int, float)):
        return float(value)
    # YAML 1.1 reads "1e-3" as a string; accept what a person clearly meant.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise RecipeError(f"{shown(value)} is not a number", where)


def _str(value: Any, tp: Any, where: str, base_dir: Path | None) -> str:
    if isinstance(value, str):
        return value
    raise RecipeError(f"{shown(value)} is not a string", where)


def _path(value: Any, tp: Any, where: str, base_dir: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise RecipeError(f"{shown(value)} is not a path", where)
    p = Path(value).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p


_BY_ORIGIN = {typing.Annotated: _annotated, Literal: _literal, Union: _union, list: _sequence, tuple: _sequence}
_BY_TYPE = {bool: _bool, int: _int, float: _float, str: _str, Path: _path}


def parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    """The keyword parameters a component accepts (for a class, its __init__ minus self)."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    hints = typing.get_type_hints(target, include_extras=True)
    sig = inspect.signature(target)
    out = {}
    for name, p in sig.parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = p.replace(annotation=hints.get(name, p.annotation))
    return out


def check(fn: Callable, given: dict, where: str, base_dir: Path | None = None) -> dict:
    """Validate `given` against `fn`'s signature; return the full, coerced keyword dict
    (defaults filled in), or raise RecipeError at `where.key`."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise RecipeError(f"expected a mapping of parameters, got {type(given).__name__}", where)
    params = parameters(fn)
    for key in given:
        if key not in params:
            allowed = ", ".join(params) or "(no parameters)"
            raise RecipeError(f"unknown key {shown(key)}. Allowed: {allowed}", _join(where, key))
    out = {}
    for name, p in params.items():
        sub = _join(where, name)
        if name in given:
            out[name] = coerce(given[name], p.annotation, sub, base_dir)
        elif p.default is inspect.Parameter.empty:
            raise RecipeError(f"missing required key {name!r} ({describe_type(p.annotation)})", where or None)
        else:
            out[name] = p.default
    return out


def _join(where: str, key: str) -> str:
    # A key with a newline or other control character is shown quoted: an error stays one line.
    key = key if isinstance(key, str) and key.isprintable() else repr(key)
    return f"{where}.{key}" if where else key
