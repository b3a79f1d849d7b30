"""Where a recipe's model comes from: its own folder in the cache, a shared model or a model
pack it draws from (`model.from`), and the model its own training starts from (`model.start`).

Nothing here imports TensorFlow: a recipe's cache folder and its sources are found by reading
manifests and records, so `qd validate` and the studio's lists stay fast. The weights of a
start are copied in by qdcore/training/warm_start.py, when training begins.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from . import models, packs, paths
from .errors import InputError, RecipeError


def slug(name: str) -> str:
    """A recipe's name as a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name.strip()) or "recipe"


def model_key(recipe) -> str:
    """The key of what decides the recipe's own weights, the model it starts from included
    (a new pack retrains, the same pack does not)."""
    return recipe.model_key(start_identity(recipe))


def model_dir(recipe) -> Path:
    """The recipe's own model folder: its name and its model_key."""
    return paths.cache_dir() / "models" / f"{slug(recipe.name)}-{model_key(recipe)}"


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
    if shared.recipe is not None and models.is_finished(model_dir(shared.recipe)):
        cfg = shared.recipe.model
        return SharedSource(
            f"the shared model {shared.recipe.name!r}",
            models.classes(model_dir(shared.recipe)) or [],
            (cfg.height, cfg.width),
            workdir=model_dir(shared.recipe),
            model=cfg.as_dict(),
        )
    pack = packs.find(paths.cache_dir(), shared.name, shared.pack)
    if pack is None:
        return None
    return SharedSource(pack.label, pack.categories, pack.size, pack=pack, model=pack.model_config.as_dict())


def serving(recipe) -> Optional[SharedSource]:
    """The shared model or pack the recipe draws from when it serves the recipe's one
    category (what `qd run` will use, nothing trained); None when it trains its own, or when
    drawing would fail (several categories, an unknown one: the run says why)."""
    if recipe.shared is None:
        return None
    from .recognizer import categories_of

    source = shared_source(recipe.shared)
    named = categories_of(recipe.dataset.params)
    return source if source is not None and len(named) == 1 and named[0] in source.categories else None


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


def check_found(recipe) -> None:
    """InputError when the recipe's `model.from` (with `if_missing: error`) or `model.start`
    names a model that is nowhere: what `qd validate` adds to reading the recipe, which opens
    nothing under the cache."""
    shared = recipe.shared
    if shared is not None and shared.if_missing == "error" and shared_source(shared) is None:
        raise InputError(f"{shared.where}: {not_cached(shared)}")
    start_source(recipe)


def start_identity(recipe) -> Optional[dict]:
    source = start_source(recipe)
    return None if source is None else source.identity()
