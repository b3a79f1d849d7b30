"""The JSON Schema of a recipe, built from the same signatures recipe validation checks.

One schema serves three readers: `qd schema` (an editor's completion through
yaml-language-server), the studio page (its forms are generated from it) and people reading
docs. Nothing here validates: params.py stays the one judge, and this file only describes
what it accepts (types, ranges, choices, defaults) so the three never disagree.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from . import params
from .config import GenerateConfig, ModelConfig, Seed, TrainConfig
from .params import Range
from .registry import KINDS, Registry

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def type_schema(tp: Any) -> dict:
    """JSON Schema for one annotation understood by params.coerce."""
    origin = get_origin(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return {}
    if origin is typing.Annotated:
        base, *extra = get_args(tp)
        out = type_schema(base)
        for e in extra:
            if isinstance(e, Range):
                if e.lo is not None:
                    out["minimum"] = e.lo
                if e.hi is not None:
                    out["maximum"] = e.hi
        return out
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin is Union:
        options = [type_schema(a) for a in get_args(tp) if a is not type(None)]
        if type(None) in get_args(tp):
            options.append({"type": "null"})
        return options[0] if len(options) == 1 else {"anyOf": options}
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return {"type": "array", **({"items": type_schema(args[0])} if args else {})}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if tp is Path:
        # "format: path" tells the studio page this is a file the page may not name itself.
        return {"type": "string", "format": "path"}
    return {"description": params.describe_type(tp)}


def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def parameters_schema(fn) -> dict:
    """An object schema for the keywords `fn` (a class or function) accepts."""
    props, required = {}, []
    for name, p in params.parameters(fn).items():
        s = type_schema(p.annotation)
        s["x-type"] = params.describe_type(p.annotation)
        if p.default is inspect.Parameter.empty:
            required.append(name)
        else:
            s["default"] = _jsonable(p.default)
        props[name] = s
    out = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def _doc(fn) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def step_schema(kind: str, registry: Registry) -> dict:
    """Any registered component of `kind`: `NAME` (short form) or `{use: NAME, ...params}`."""
    options = []
    for name in registry.names(kind):
        entry = registry.get(kind, name)
        s = parameters_schema(entry.factory)
        s["properties"] = {"use": {"const": name}, **s["properties"]}
        s["required"] = ["use", *s.get("required", [])]
        s["title"] = name
        s["description"] = entry.description or _doc(entry.factory)
        s["x-plugin"] = entry.plugin
        s["x-version"] = entry.version
        doc = _doc(entry.factory)
        if doc and doc != s["description"]:
            s["x-doc"] = doc
        if kind == "seed_strategies":
            s["x-source"] = bool(getattr(entry.factory, "is_source", False))
        options.append(s)
    # The short form `- sharpen` names a component with no parameters given.
    short = {"type": "string", "enum": registry.names(kind)}
    return {"anyOf": [*options, short], "description": f"a registered {KINDS[kind][1]}"}


def config_schema(cls) -> dict:
    s = parameters_schema(cls)
    s["description"] = _doc(cls)
    return s


def _model_schema() -> dict:
    """ModelConfig plus `from` / `if_missing`, which draw from a shared model (docs/categories.md),
    and `start`, the model whose weights this recipe's own training starts from (docs/finetune.md)."""
    s = config_schema(ModelConfig)
    s["properties"]["from"] = {
        "type": "string",
        "description": "a recipe (zoo-26, or a path to its .yaml) whose trained multi-category "
        "model draws this recipe's category, or a model pack (`qd models` lists them)",
    }
    s["properties"]["if_missing"] = {
        "enum": ["error", "train"],
        "default": "error",
        "description": "when neither that model nor a pack of its name is there: stop with an "
        "error, or train this recipe's own",
    }
    s["properties"]["start"] = {
        "type": "string",
        "description": "a model pack (zoo-26) or a recipe whose trained model this recipe's own training "
        "starts from (fine-tuning): the same model settings, its weights as the first step's",
    }
    return s


def recipe_schema(registry: Registry) -> dict:
    """The whole recipe: every installed plugin's components and their parameters."""
    output = step_schema("writers", registry)
    # `output:` also takes `path:`, which the recipe loader reads before the writer sees it.
    output = {
        "anyOf": [
            {**o, "properties": {**o["properties"], "path": {"type": "string", "format": "path"}}}
            if "properties" in o
            else o
            for o in output["anyOf"]
        ],
        "description": output["description"],
    }
    return {
        "$schema": DRAFT,
        "title": "qd recipe",
        "description": "A qd recipe: dataset -> model -> seeds -> filters -> output (docs/recipes.md).",
        "type": "object",
        "additionalProperties": False,
        "required": ["dataset"],
        "properties": {
            "name": {"type": "string", "description": "names the output file and the cached model folder"},
            "seed": {**type_schema(Seed), "default": 0, "description": "random seed of every step"},
            "dataset": {"$ref": "#/$defs/dataset"},
            "model": _model_schema(),
            "train": config_schema(TrainConfig),
            "generate": config_schema(GenerateConfig),
            "seeds": {
                "type": "array",
                "items": {"$ref": "#/$defs/seed_strategy"},
                "minItems": 1,
                "default": [{"use": "prior"}],
                "description": "one source first, then any perturbations, in order",
            },
            "filters": {
                "type": "array",
                "items": {"$ref": "#/$defs/filter"},
                "default": [],
                "description": "applied in order to every canvas of every step",
            },
            "output": {"$ref": "#/$defs/writer"},
            "recognizer": {"$ref": "#/$defs/recognizer"},
            "mode": {"$ref": "#/$defs/generator"},
        },
        "$defs": {
            "dataset": step_schema("datasets", registry),
            "seed_strategy": step_schema("seed_strategies", registry),
            "filter": step_schema("filters", registry),
            "writer": output,
            "recognizer": step_schema("recognizers", registry),
            "generator": step_schema("generators", registry),
        },
    }
