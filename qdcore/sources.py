"""Where a recipe's model comes from: its own folder in the cache, a shared model or a model
pack it draws from (`model.from`), and the model its own training starts from (`model.start`).

This module is the one owner of that question. `resolve(recipe)` answers it once (engine.Run
keeps the answer as `run.source`; the CLI and the studio read it from there), and the models
a name may point at (trained into the cache, imported or installed packs) are listed here too,
so the studio's menus offer what a recipe's `model.from` would find. The cache key of a
recipe's own weights is made here and nowhere else.

Nothing here imports TensorFlow: a recipe's cache folder and its sources are found by reading
manifests and records, so `qd validate` and the studio's lists stay fast. The weights of a
start are copied in by qdcore/training/warm_start.py, when training begins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from . import limits, models, packs, paths
from .errors import InputError, QdError, RecipeError


def slug(name: str) -> str:
    """A recipe's name as a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name.strip()) or "recipe"


def _own_dir(recipe, key: str) -> Path:
    return paths.cache_dir() / "models" / f"{slug(recipe.name)}-{key}"


def model_dir(recipe) -> Path:
    """The recipe's own model folder: its name and the key of what decides its weights, the
    model it starts from included (a new pack retrains, the same pack does not)."""
    start = start_source(recipe)
    return _own_dir(recipe, recipe.model_key(None if start is None else start.identity()))


@dataclass
class SharedSource:
    """Where a recipe's `model.from` (or `model.start`) name was found: a model trained into
    this cache from the recipe of that name (`workdir`), or a model pack imported into the
    cache or installed."""

    label: str
    categories: list
    size: tuple
    workdir: Optional[Path] = None
    pack: Optional[packs.Pack] = None
    model: Optional[dict] = None  # its ModelConfig as a dict

    @property
    def name(self) -> str:
        return self.pack.name if self.pack is not None else Path(self.workdir).name

    def identity(self) -> dict:
        """What names these weights exactly, for a cache key: a pack's weights checksum, or a
        cached model's folder (itself a key) and the step it finished at."""
        if self.pack is not None:
            return {"pack": self.pack.name, "sha256": self.pack.sha256}
        finished = models._json(Path(self.workdir) / models.FINISHED) or {}
        return {"model": Path(self.workdir).name, "step": finished.get("step")}

    def legs(self) -> list[dict]:
        """The training legs that made these weights (packs.legs): a run that starts from them
        records them, so its export lists every leg of the relay."""
        if self.pack is not None:
            return packs.legs(self.pack.manifest)
        return packs.cached_legs(self.workdir, models._json(Path(self.workdir) / models.FINISHED) or {})


def shared_source(shared) -> Optional[SharedSource]:
    """The user's cache first (a model trained from the named recipe, then an imported pack),
    then the packs installed plugins provide; None when the name is in none of them."""
    folder = model_dir(shared.recipe) if shared.recipe is not None else None
    if folder is not None and models.is_finished(folder):
        cfg = shared.recipe.model
        return SharedSource(
            f"the shared model {shared.recipe.name!r}",
            models.classes(folder) or [],
            (cfg.height, cfg.width),
            workdir=folder,
            model=cfg.as_dict(),
        )
    pack = packs.find(paths.cache_dir(), shared.name, shared.pack)
    if pack is None:
        return None
    return SharedSource(pack.label, pack.categories, pack.size, pack=pack, model=pack.model_config.as_dict())


def not_cached(shared) -> str:
    if shared.recipe is None:
        return (
            f"no recipe {shared.name}.yaml is beside the recipe and no model named {shared.name!r} is in the "
            f"cache or the installed packs: name a recipe beside it (zoo-26 for zoo-26.yaml), give the path to "
            f"its .yaml, name a model `qd models` lists, or import one with `{shared.build_command()}`"
        )
    return (
        f"the shared model {shared.recipe.name!r} is not in the cache ({model_dir(shared.recipe)}) and no model "
        f"pack of that name is imported or installed; build it once with `{shared.build_command()}`"
    )


# -- the warm start: `model.start` ----------------------------------------------------------


def start_source(recipe) -> Optional[SharedSource]:
    """The model the recipe's own training starts from (`model.start`), checked to fit the
    recipe's model; None without `start`. InputError when it is in neither the cache nor the
    packs; RecipeError when its model settings differ from the recipe's."""
    start = getattr(recipe, "start", None)
    if start is None:
        return None
    source = shared_source(start)
    if source is None:
        raise InputError(f"{start.where}: {not_cached(start)}")
    mine = recipe.model.as_dict()
    differ = [f.name for f in fields(recipe.model) if source.model.get(f.name) != mine[f.name]]
    if differ:
        theirs = ", ".join(f"{k}: {source.model.get(k)}" for k in differ)
        ours = ", ".join(f"{k}: {mine[k]}" for k in differ)
        raise RecipeError(
            f"{source.label} is a model with {theirs}; this recipe's model has {ours}. A start's weights "
            f"fit only the same model: set {', '.join(f'model.{k}: {source.model.get(k)}' for k in differ)} "
            "in the recipe, or drop `start`",
            start.where,
        )
    return source


# -- one recipe, resolved once ---------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    """Where one recipe's model comes from, found once (engine.Run keeps it as `run.source`).

    `own` is the recipe's own model folder (trained now or before); `shared` what its
    `model.from` names, when that is anywhere; `start` what its own training starts from
    (`model.start`, checked to fit); `category` the one category its dataset names, if it
    names exactly one. A later change in the cache (a model finishing) shows in `trained` and
    `can_draw`, which look again; the sources themselves are what they were when resolved."""

    key: str
    own: Path
    shared: Optional[SharedSource]
    start: Optional[SharedSource]
    category: Optional[str]

    @property
    def serving(self) -> Optional[SharedSource]:
        """The shared model or pack that draws the recipe's one category (what `qd run` uses,
        nothing trained); None when it trains its own, or when drawing would fail (several
        categories, an unknown one: the run says why)."""
        shared = self.shared
        return shared if shared is not None and self.category in shared.categories else None

    @property
    def trained(self) -> bool:
        """Whether the recipe's own model is finished."""
        return models.is_finished(self.own)

    @property
    def can_draw(self) -> bool:
        """Whether the recipe can draw without training: its `model.from` names a model that
        knows its category (or it names several categories: drawing refuses them, with the
        reason), or its own model is finished."""
        if self.shared is not None and (self.category is None or self.category in self.shared.categories):
            return True
        return self.trained

    def loaded_key(self, category: Optional[str]) -> tuple[str, Optional[str]]:
        """What a loaded model is kept under (engine.load_model's `cache`): where its weights
        live, and the category a shared model is held to (None: the recipe's own)."""
        if category is None:
            return str(self.own), None
        return str(self.shared.workdir or self.shared.pack.path), category


def resolve(recipe) -> Resolution:
    """The recipe's sources, each looked up once: InputError when `model.from` (with
    `if_missing: error`) or `model.start` names a model that is nowhere; RecipeError when a
    start's model differs from the recipe's."""
    from .recognizer import categories_of

    shared = recipe.shared
    found = shared_source(shared) if shared is not None else None
    if shared is not None and shared.if_missing == "error" and found is None:
        raise InputError(f"{shared.where}: {not_cached(shared)}")
    start = start_source(recipe)
    key = recipe.model_key(None if start is None else start.identity())
    named = categories_of(recipe.dataset.params)
    return Resolution(key, _own_dir(recipe, key), found, start, named[0] if len(named) == 1 else None)


def forget_loaded(loaded: dict, folder: Path) -> None:
    """Drop from `loaded` (engine.load_model's cache) every model whose weights live in
    `folder`: the model trained there, and the categories recipes drew from it."""
    for key in [k for k in loaded if k[0] == str(folder)]:
        loaded.pop(key, None)


# -- the models a name can point at -----------------------------------------------------------


def cached_models() -> list[dict]:
    """One row per folder under paths.cache_dir()/models: name, whether training finished,
    its step, and the recipe sections that made it (recipe.json, when qd wrote one)."""
    root = paths.cache_dir() / "models"
    rows = []
    if not root.is_dir():
        return rows
    # A symlink in the cache is not a model qd made (the same rule as `qd models`).
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        row = {"folder": folder.name, "finished": False, "step": None, "recipe": None}
        for name, key in ((models.FINISHED, "finished"), (models.RECIPE, "recipe")):
            try:
                data = json.loads(
                    limits.read_text(folder / name, limits.MAX_JSON_FILE_BYTES, "not one of qd's records")
                )
            except (OSError, ValueError, RecursionError, QdError):
                continue
            if not isinstance(data, dict):
                continue  # damaged: the row shows what is known
            if key == "finished":
                row["finished"], row["step"] = True, data.get("step")
            else:
                row["recipe"] = data
        rows.append(row)
    return rows


def cached_recipe(name: str) -> Optional[tuple[dict, dict]]:
    """(row, recipe.json) of the finished cached model `name` names (its folder or its
    recipe's name), or None."""
    for row in cached_models():
        made = row["recipe"]
        if row["finished"] and isinstance(made, dict) and name in (row["folder"], made.get("name")):
            return row, made
    return None


def available_packs(registry) -> list[dict]:
    """The model packs, as `qd models` lists them (packs.listing: imported ones, then
    installed ones; manifests only): name, categories, steps, source, plugin, path, status."""
    return packs.listing(paths.cache_dir(), registry.entries["models"])


def pack_names(registry) -> set[str]:
    """The packs a `model.from` can name: the finished ones available_packs lists."""
    return {r["name"] for r in available_packs(registry) if r["status"] == "finished"}


def pack_for(registry, category: str, size: tuple[int, int], prefer: str) -> Optional[str]:
    """The name of a model pack that draws `category` at `size` (`prefer` first, then by
    name), as `model.from` would find it; None when no pack does."""
    installed = registry.entries["models"]
    for name in sorted(pack_names(registry), key=lambda n: (n != prefer, n)):
        try:
            pack = packs.find(paths.cache_dir(), name, installed.get(name))
        except QdError:
            continue  # a damaged pack: `qd models` says why
        if pack is not None and category in pack.categories and tuple(pack.size) == tuple(size):
            return name
    return None
