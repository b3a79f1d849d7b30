"""YAML -> a validated Recipe. Everything is checked before any work starts: every step names
a registered component, and its parameters are checked against the component's signature.
Errors carry the file and the location, for example `windmill.yaml: filters[2].scale`."""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

from . import limits, params, paths
from .config import WARM_START_ROWS, WARM_START_TRAIN, GenerateConfig, ModelConfig, Seed, TrainConfig
from .overrides import apply as apply_overrides
from .errors import QdError, RecipeError, UnknownNameError
from .recognizer import DEFAULT as DEFAULT_RECOGNIZER, categories_of
from .registry import Entry, Registry

TOP_KEYS = ("name", "seed", "dataset", "model", "train", "generate", "mode", "seeds", "filters", "output", "recognizer")
DEFAULT_SEEDS = [{"use": "prior"}]
DEFAULT_OUTPUT = {"use": "gif"}
# Bumped when a change to the model or trainer makes old cached models wrong to reuse.
MODEL_FORMAT = 1


@dataclass
class Step:
    use: str
    params: dict
    entry: Entry
    where: str

    label: str = ""

    def build(self):
        """Instantiate the component. Constructors check what they can (a file exists, a
        combination makes sense) so a recipe fails before any training starts."""
        try:
            return self.entry.factory(**self.params)
        except QdError as e:
            raise type(e)(f"{self.label}: {self.where}: {e}") from e
        except (ValueError, TypeError, OSError) as e:
            raise RecipeError(f"{self.use!r} rejected its parameters: {e}", f"{self.label}: {self.where}") from e


@dataclass
class Shared:
    """`model: {from: NAME}`: draw this recipe's category with another recipe's trained
    multi-category model, or with a model pack of that name (qdcore/packs.py). `if_missing`
    says what happens when neither is there or it does not know the category: "error", or
    "train" this recipe's own model. `model: {start: NAME}` names a model the same way: the
    one whose weights this recipe's own training starts from."""

    recipe: Optional["Recipe"]  # the recipe NAME.yaml beside this one; None when NAME is only a pack
    if_missing: Literal["error", "train"]
    where: str
    name: str = ""
    pack: Optional[Entry] = None  # the installed pack of that name, if a plugin registered one

    def build_command(self) -> str:
        if self.recipe is None:
            return f"qd models import FILE (a pack of {self.name!r} made by `qd models export`)"
        return f"qd train {shlex.quote(_shown(self.recipe.path))}"


@dataclass
class Recipe:
    path: Path
    name: str
    seed: int
    dataset: Step
    model: ModelConfig
    train: TrainConfig
    generate: GenerateConfig
    seeds: list[Step]
    filters: list[Step]
    output: Step
    output_path: Path | None = None
    raw: dict = field(default_factory=dict, repr=False)
    shared: Optional[Shared] = None
    # The `recognizer:` step; without that section, the default one when it is installed.
    recognizer: Step | None = None
    # The `mode:` step (a registered generator: complete, morph, ...); None samples or reconstructs.
    mode: Step | None = None
    # `model.start`: the model (pack, or another recipe's) whose weights this recipe's own
    # training starts from (qdcore/sources.py finds it, qdcore/training/warm_start.py copies it).
    start: Optional[Shared] = None

    @property
    def folder(self) -> Path:
        return self.path.parent

    def with_overrides(
        self,
        *,
        iterations: int | None = None,
        seed: int | None = None,
        n: int | None = None,
        best_of: int | None = None,
    ) -> "Recipe":
        r = self
        if iterations is not None:
            r = replace(
                r, train=replace(r.train, iterations=_checked(TrainConfig, "iterations", iterations, "--iterations"))
            )
        if seed is not None:
            r = replace(r, seed=params.coerce(seed, Seed, "--seed"))
        if n is not None:
            r = replace(r, generate=replace(r.generate, n=_checked(GenerateConfig, "n", n, "--n")))
        if best_of is not None:
            r = replace(
                r, generate=replace(r.generate, best_of=_checked(GenerateConfig, "best_of", best_of, "--best-of"))
            )
        return r

    def model_key(self, start: Optional[dict] = None) -> str:
        """Hash of what decides the trained weights: the dataset step, the model and training
        sections, and `start`, the identity of the weights training starts from
        (sources.SharedSource.identity). Two recipes that agree on these share one cached model."""
        # A parameter a component added later (listed in its `key_omits_default`) stays out
        # of the key while at its default, so models cached before it existed are still found.
        omitted = getattr(self.dataset.entry.factory, "key_omits_default", ())
        defaults = params.parameters(self.dataset.entry.factory)
        dataset = {
            k: _jsonable(v) for k, v in self.dataset.params.items() if not (k in omitted and v == defaults[k].default)
        }
        material = {
            "format": MODEL_FORMAT,
            "dataset": {"use": self.dataset.use, **dataset},
            "model": self.model.as_dict(),
            "train": self.train.key_dict(),
        }
        if start is not None:  # absent otherwise: every key made before warm starts still holds
            material["start"] = {**start, "rows": WARM_START_ROWS}
        blob = json.dumps(material, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _checked(cls, key: str, value: Any, where: str) -> Any:
    p = params.parameters(cls)[key]
    return params.coerce(value, p.annotation, where)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def load(
    path: Path | str, registry: Registry, overrides: Iterable[str] = (), *, shared_by: str | None = None
) -> Recipe:
    """Read, apply `-s key=value` overrides (qdcore/overrides.py), then validate.
    `shared_by`: the `model.from` (a location) that names this recipe, which may not use
    `model.from` itself: refused before it loads another recipe, so a cycle never recurses."""
    path = Path(path)
    label = str(path)
    if not path.exists():
        raise RecipeError(f"recipe file not found. Check the path (cwd: {Path.cwd()})", label)
    if path.is_dir():
        raise RecipeError("is a folder, not a recipe file: name a .yaml file", label)
    try:
        text = limits.read_text(path, limits.MAX_RECIPE_BYTES, "a recipe is a few lines")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read the recipe: {e}", label) from e
    data = apply_overrides(limits.load_yaml(text, label), overrides)
    return parse(data, path.resolve(), registry, label=label, shared_by=shared_by)


def parse(
    data: Any, path: Path, registry: Registry, *, label: str | None = None, shared_by: str | None = None
) -> Recipe:
    label = label or str(path)
    if data is None:
        raise RecipeError("the recipe is empty: it needs at least `dataset:` (see docs/recipes.md)", label)
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe is a mapping of sections, got {type(data).__name__}", label)
    for key in data:
        if key not in TOP_KEYS:
            raise RecipeError(f"unknown section {key!r}. Allowed: {', '.join(TOP_KEYS)}", f"{label}: {key}")

    def at(where: str) -> str:
        return f"{label}: {where}"

    folder = path.parent
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise RecipeError("must be a non-empty string", at("name"))
    seed = params.coerce(data.get("seed", 0), Seed, at("seed"))

    if "dataset" not in data:
        raise RecipeError("missing section `dataset:` (for example `dataset: {use: quickdraw, category: cat}`)", label)
    dataset = _step(data["dataset"], "datasets", "dataset", registry, label, folder)
    model_raw, shared, start = _shared(data.get("model"), folder, registry, label, path, shared_by)
    model = _config(ModelConfig, model_raw, "model", label)
    train = _train(data.get("train"), start is not None, label)
    generate = _config(GenerateConfig, data.get("generate"), "generate", label)

    seeds = _seeds(data.get("seeds", DEFAULT_SEEDS), registry, label, folder)
    filters = [
        _step(f, "filters", f"filters[{i}]", registry, label, folder)
        for i, f in enumerate(_list(data.get("filters", []), "filters", label))
    ]
    output, output_path = _output(data.get("output", DEFAULT_OUTPUT), registry, label, folder)
    recognizer = _recognizer(data, dataset, generate, registry, label, folder)
    mode = _mode(data.get("mode"), generate, registry, label, folder)
    return Recipe(
        path,
        name,
        seed,
        dataset,
        model,
        train,
        generate,
        seeds,
        filters,
        output,
        output_path,
        data,
        shared=shared,
        recognizer=recognizer,
        mode=mode,
        start=start,
    )


def _train(value: Any, warm: bool, label: str) -> TrainConfig:
    """The `train:` section; a model that starts from another's weights (`model.start`) takes
    the fine-tuning defaults (config.WARM_START_TRAIN) for the keys the recipe leaves out."""
    cfg = _config(TrainConfig, value, "train", label)
    if not warm:
        return cfg
    given = value if isinstance(value, dict) else {}
    return replace(cfg, **{k: v for k, v in WARM_START_TRAIN.items() if k not in given})


def _seeds(raw: Any, registry: Registry, label: str, folder: Path) -> list[Step]:
    """The seed chain: one source first (prior, training-batch, file-image...), then changers."""
    seeds = [
        _step(s, "seed_strategies", f"seeds[{i}]", registry, label, folder)
        for i, s in enumerate(_list(raw, "seeds", label))
    ]
    if not seeds:
        raise RecipeError("is empty: give a source, for example `- use: prior`", f"{label}: seeds")
    for i, s in enumerate(seeds):
        is_source = bool(getattr(s.entry.factory, "is_source", False))
        if i == 0 and not is_source:
            raise RecipeError(
                f"{s.use!r} changes seed images and needs a source before it: start the chain with "
                "a source such as `prior`, `training-batch` or `file-image`",
                f"{label}: seeds[0]",
            )
        if i > 0 and is_source:
            raise RecipeError(
                f"{s.use!r} is a source; only the first seed step may be a source", f"{label}: seeds[{i}]"
            )
    return seeds


def _output(raw: Any, registry: Registry, label: str, folder: Path) -> tuple[Step, Optional[Path]]:
    """The writer, and `output.path` split off it (a recipe's key, not the writer's)."""
    output_path = None
    if isinstance(raw, dict) and "path" in raw:
        raw = dict(raw)
        output_path = params.coerce(raw.pop("path"), Path, f"{label}: output.path", folder)
    return _step(raw, "writers", "output", registry, label, folder), output_path


def _mode(raw: Any, generate: GenerateConfig, registry: Registry, label: str, folder: Path) -> Optional[Step]:
    if raw is None:
        return None
    mode = _step(raw, "generators", "mode", registry, label, folder)
    if generate.best_of > 1:
        raise RecipeError(
            f"best_of picks among samples or reconstructions; mode {mode.use!r} makes its own "
            "pictures: use best_of: 1, or leave `mode:` out",
            f"{label}: generate.best_of",
        )
    return mode


SHARED_KEYS = ("from", "if_missing")
START_KEY = "start"


def _shared(
    model: Any, folder: Path, registry: Registry, label: str, here: Path, shared_by: str | None = None
) -> tuple[Any, Optional[Shared], Optional[Shared]]:
    """Split `model.from` / `model.if_missing` and `model.start` off the model section; load
    the recipes they name.

    `from: zoo-26` names the recipe zoo-26.yaml beside this one; a value ending in .yaml (or
    .yml) is a path, relative to this recipe's folder. The rest of the section configures
    this recipe's own model, trained only when `if_missing: train` falls back to it, and
    then started from the weights `start:` names (the same kinds of name), if any.
    """
    if not isinstance(model, dict) or not any(k in model for k in (*SHARED_KEYS, START_KEY)):
        return model, None, None
    rest = {k: v for k, v in model.items() if k not in (*SHARED_KEYS, START_KEY)}
    start = None
    if START_KEY in model:
        # A recipe named by another's `from` or `start` may start from a pack, never from a
        # recipe: so no chain of recipes (or cycle) is ever followed.
        start = _named(model[START_KEY], f"{label}: model.start", folder, registry, here, shared_by, packs_only=True)
    if not any(k in model for k in SHARED_KEYS):
        return rest, None, start
    where = f"{label}: model.from"
    if shared_by is not None:
        raise RecipeError(
            f"{_shown(Path(label))} itself uses `model.from`; name the recipe that trains the model", shared_by
        )
    if "from" not in model:
        raise RecipeError(
            "`if_missing` needs `from:` naming a shared model's recipe, for example `from: zoo-26`",
            f"{label}: model.if_missing",
        )
    if_missing = params.coerce(
        model.get("if_missing", "error"), Literal["error", "train"], f"{label}: model.if_missing"
    )
    return rest, _named(model["from"], where, folder, registry, here, None, if_missing), start


def _named(
    source: Any,
    where: str,
    folder: Path,
    registry: Registry,
    here: Path,
    shared_by: str | None,
    if_missing: str = "error",
    packs_only: bool = False,
) -> Shared:
    """The model a `from:` or `start:` value names: the recipe NAME.yaml (or the path) beside
    this one, else a model pack of that name, installed or to be found among the imported
    ones when the recipe runs (qdcore/sources.py): reading a recipe opens nothing under the
    user's cache, so what `qd validate` says does not depend on what is cached.
    `packs_only` with `shared_by`: this recipe was itself named by another, so a recipe is refused."""
    if not isinstance(source, str) or not source.strip():
        raise RecipeError(
            f"{limits.shown(source)} is not a recipe name: give one such as zoo-26, or a path to its .yaml", where
        )
    is_path = source.endswith((".yaml", ".yml"))
    path = folder / source if is_path else folder / f"{source}.yaml"
    installed = registry.entries["models"]
    if not path.is_file():
        if is_path:
            raise RecipeError(f"no recipe {limits.shown(source)}: {path} does not exist", where)
        if not paths.PACK_NAME.fullmatch(source):
            raise RecipeError(
                f"{limits.shown(source)} is neither a recipe beside this one ({path} does not exist) nor a "
                "model pack name (letters, digits, '.', '_', '-')",
                where,
            )
        # Not a recipe: a model pack of that name, installed, or imported (looked up when it runs).
        return Shared(None, if_missing, where, source, installed.get(source))
    if path.resolve() == here.resolve():
        raise RecipeError(f"{limits.shown(source)} is this recipe itself; name the recipe that trains the model", where)
    if packs_only and shared_by is not None:
        raise RecipeError(
            f"this recipe is named by {shared_by}, so its own start must be a model pack, not the recipe "
            f"{limits.shown(source)}: export that model (`qd models export`) and start from the pack",
            where,
        )
    # load() refuses a named recipe that itself uses `model.from` (shared_by), so no chain or cycle is followed.
    shared = load(path, registry, shared_by=where)
    # The recipe's model exported and imported elsewhere is a pack under the recipe's name.
    return Shared(shared, if_missing, where, shared.name, installed.get(shared.name))


def _shown(path: Path) -> str:
    """A path as a person would type it: relative to the cwd when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _recognizer(
    data: dict, dataset: Step, generate: GenerateConfig, registry: Registry, label: str, folder: Path
) -> Step | None:
    """The `recognizer:` step. Without one, the default when it is installed; a recipe that
    needs a recognizer (best_of) and cannot have one fails here, before any training."""
    if generate.best_of > 1 and not categories_of(dataset.params):
        raise RecipeError(
            f"best_of keeps the pictures most like the recipe's category, and dataset "
            f"{dataset.use!r} names none: use a Quick, Draw! dataset, or best_of: 1",
            f"{label}: generate.best_of",
        )
    if "recognizer" in data:
        return _step(data["recognizer"], "recognizers", "recognizer", registry, label, folder)
    if generate.best_of > 1 or DEFAULT_RECOGNIZER in registry.names("recognizers"):
        return _step({"use": DEFAULT_RECOGNIZER}, "recognizers", "recognizer", registry, label, folder)
    return None


def _list(value: Any, where: str, label: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecipeError(f"must be a list of steps (`- use: NAME`), got {type(value).__name__}", f"{label}: {where}")
    return value


def _config(cls, value: Any, where: str, label: str):
    return cls(**params.check(cls, value or {}, f"{label}: {where}"))


def _step(value: Any, kind: str, where: str, registry: Registry, label: str, folder: Path) -> Step:
    full = f"{label}: {where}"
    if isinstance(value, str):  # `- sharpen` is short for `- use: sharpen`
        value = {"use": value}
    if not isinstance(value, dict):
        raise RecipeError(f"a step is `use: NAME` plus its parameters, got {type(value).__name__}", full)
    if "use" not in value:
        raise RecipeError("missing `use:` naming the plugin component, for example `use: " + _example(kind) + "`", full)
    use = value["use"]
    if not isinstance(use, str):
        raise RecipeError(f"`use:` must be a name, got {limits.shown(use)}", f"{full}.use")
    try:
        entry = registry.get(kind, use)
    except UnknownNameError as e:
        raise UnknownNameError(f"{full}.use: {e}") from None
    given = {k: v for k, v in value.items() if k != "use"}
    checked = params.check(entry.factory, given, full, folder)
    return Step(use, checked, entry, where, label)


def _example(kind: str) -> str:
    return {
        "datasets": "quickdraw",
        "seed_strategies": "prior",
        "filters": "sharpen",
        "writers": "gif",
        "recognizers": DEFAULT_RECOGNIZER,
        "generators": "complete",
    }[kind]
