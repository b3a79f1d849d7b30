"""Runs a recipe, one way: dataset -> trained model -> seed chain -> generation -> filters -> writer.

Every component is instantiated (and so checked) before the first expensive step, and the
output location is checked before training, so a bad recipe never costs a training run.
TensorFlow is imported only when a model is needed (qdcore.train / qdcore.draw).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import models, paths
from .errors import InputError, PluginError, RecipeError
from .interfaces import Context, Drawing, ImageSet, SeedInput
from .recipe import Recipe

Log = Callable[[str], None]

MODEL_RECIPE = "recipe.json"

# Stage numbers keep each step's random stream independent of the others.
_STAGE_DATASET, _STAGE_SEEDS, _STAGE_FILTERS, _STAGE_OUTPUT = 1, 2, 3, 4


def _quiet_log(_: str) -> None:
    pass


@dataclass
class Built:
    dataset: object
    seeds: list
    filters: list
    writer: object


@dataclass
class RunResult:
    path: Path
    model_dir: Path
    trained_steps: int
    seconds: float


def prepare(recipe: Recipe) -> Built:
    """Instantiate every step; constructors check their parameters (files exist, ...), and a
    shared model the recipe insists on (`model.from`, if_missing: error) is in the cache."""
    shared = recipe.shared
    if shared is not None and shared.if_missing == "error" and not models.is_finished(model_dir(shared.recipe)):
        raise InputError(f"{shared.where}: {_not_cached(shared)}")
    return Built(
        dataset=recipe.dataset.build(),
        seeds=[s.build() for s in recipe.seeds],
        filters=[f.build() for f in recipe.filters],
        writer=recipe.output.build(),
    )


def context(recipe: Recipe, stage: int, index: int = 0, quiet: bool = False) -> Context:
    return Context(
        image_shape=(recipe.model.height, recipe.model.width),
        rng=np.random.default_rng([recipe.seed, stage, index]),
        recipe_dir=recipe.folder,
        data_dir=paths.data_dir(),
        cache_dir=paths.cache_dir(),
        quiet=quiet,
    )


def model_dir(recipe: Recipe) -> Path:
    return paths.cache_dir() / "models" / f"{_slug(recipe.name)}-{recipe.model_key()}"


def output_path(recipe: Recipe, built: Built, out: Optional[Path]) -> Path:
    """--out (relative to the cwd) wins, then the recipe's `output.path` (relative to the
    recipe), then `<name><suffix>` in the cwd. Checked for writability before any work."""
    suffix = getattr(built.writer, "suffix", ".gif")
    path = Path(out) if out is not None else recipe.output_path or Path(f"{_slug(recipe.name)}{suffix}")
    path = path.expanduser().absolute()
    if path.is_dir():
        raise InputError(f"output {path} is a folder: give a file name, for example {path / (recipe.name + suffix)}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write {path}: no permission to write in {parent}")
    return path


def load_data(recipe: Recipe, built: Built, quiet: bool = False) -> ImageSet:
    data = built.dataset.load(context(recipe, _STAGE_DATASET, quiet=quiet))
    who = _who(recipe.dataset)
    if not isinstance(data, ImageSet):
        raise PluginError(f"{who} returned {type(data).__name__}, not a qdcore.ImageSet")
    shape = (recipe.model.height, recipe.model.width)
    if data.images.ndim != 3 or tuple(data.images.shape[1:]) != shape:
        raise PluginError(f"{who} returned images shaped {tuple(data.images.shape)}; the model needs (N, {shape[0]}, {shape[1]})")
    if len(data.images) == 0:
        raise InputError(f"{who} found no images: check the dataset's parameters")
    return data


def ensure_model(recipe: Recipe, data: ImageSet, *, restart: bool = False, quiet: bool = False, on_step=None,
                 log: Log = _quiet_log):
    """The recipe's trained model: its `model.from` shared model held to the recipe's
    category when that is cached, else its own (trained now, or reused from the cache)."""
    from . import train  # TensorFlow lives behind this import

    category = shared_category(recipe, data, log)
    if category is None:
        workdir = model_dir(recipe)
        _describe_model(recipe, workdir)
        return train.train(recipe.model, recipe.train, data, workdir, restart=restart, quiet=quiet, on_step=on_step)
    shared = recipe.shared
    if restart:
        raise RecipeError(f"this recipe draws {category!r} from the shared model {shared.recipe.name!r}; "
                          f"to retrain that, run `{shared.build_command()} --restart`", shared.where)
    from .conditioning import Steered

    trained = train.load(shared.recipe.model, model_dir(shared.recipe))
    index = int(trained.model.labels(1, category)[0])
    return replace(trained, model=Steered(trained.model, category), last_batch=trained.last_of(index))


def shared_category(recipe: Recipe, data: ImageSet, log: Log = _quiet_log) -> Optional[str]:
    """The category this recipe draws from its `model.from` model, or None when it trains
    its own (no `from`, or `if_missing: train` and the shared model cannot serve it)."""
    shared = recipe.shared
    if shared is None:
        return None
    if not data.classes or len(data.classes) != 1:
        raise RecipeError(f"a shared model draws one category, and the dataset gives "
                          f"{len(data.classes) if data.classes else 'no'} category names: name one category", shared.where)
    category, workdir, name = data.classes[0], model_dir(shared.recipe), shared.recipe.name
    if not models.is_finished(workdir):
        problem = _not_cached(shared)
    elif category not in (models.classes(workdir) or []):
        known = models.classes(workdir) or []
        problem = f"the shared model {name!r} was not trained on {category!r} (its {len(known)} categories: {', '.join(known) or 'none'})"
    else:
        if (shared.recipe.model.height, shared.recipe.model.width) != (recipe.model.height, recipe.model.width):
            raise RecipeError(f"the shared model {name!r} draws {shared.recipe.model.height}x{shared.recipe.model.width} images, "
                              f"this recipe's model is {recipe.model.height}x{recipe.model.width}: make them agree", shared.where)
        log(f"model: {category!r} from the shared model {name!r}")
        return category
    if shared.if_missing == "error":
        raise InputError(f"{shared.where}: {problem}")
    log(f"model: {problem}; training this recipe's own model instead (if_missing: train)")
    return None


def trained_recipe(recipe: Recipe, trained) -> Recipe:
    """The recipe that trained `trained`: `recipe`, or the one its `model.from` names."""
    shared = recipe.shared
    return shared.recipe if shared is not None and Path(trained.workdir) == model_dir(shared.recipe) else recipe


def _not_cached(shared) -> str:
    return (f"the shared model {shared.recipe.name!r} is not in the cache ({model_dir(shared.recipe)}); "
            f"build it once with `{shared.build_command()}`")


def _describe_model(recipe: Recipe, workdir: Path) -> None:
    """recipe.json beside the checkpoints: the sections that made this model, so a list of
    cached models (qd studio) can say what each is and rebuild a recipe that reuses it."""
    import json

    from .atomic import atomic_path

    from .distribute import writes_here

    target = workdir / MODEL_RECIPE
    if target.exists() or not writes_here(recipe.train):
        return  # only a multi-worker run's chief writes the model folder (docs/distributed.md)
    raw = recipe.raw or {}
    workdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps({"name": recipe.name, "model_key": recipe.model_key(), "dataset": raw.get("dataset"),
                                   "model": recipe.model.as_dict(), "train": recipe.train.as_dict()}, default=str))


def make_seeds(recipe: Recipe, built: Built, data: ImageSet, last_batch: Optional[np.ndarray], quiet: bool = False):
    n = recipe.generate.n
    given = SeedInput(n=n, dataset=data, last_batch=last_batch)
    seeds = None
    shape = (n, recipe.model.height, recipe.model.width)
    for i, (step, strategy) in enumerate(zip(recipe.seeds, built.seeds)):
        seeds = strategy.apply(seeds, given, context(recipe, _STAGE_SEEDS, i, quiet))
        if seeds is None:
            continue
        seeds = np.asarray(seeds, dtype=np.float32)
        if seeds.shape != shape:
            raise PluginError(f"{_who(step)} returned seeds shaped {seeds.shape}; expected {shape}")
        if not np.all(np.isfinite(seeds)):
            raise PluginError(f"{_who(step)} returned non-finite seed values")
        seeds = np.clip(seeds, 0.0, 1.0)
    return seeds


def generate(recipe: Recipe, model, seeds: Optional[np.ndarray]) -> Drawing:
    if seeds is None:
        return model.sample(recipe.generate.n, seed=recipe.seed)
    return model.reconstruct(seeds, seed=recipe.seed)


def apply_filters(recipe: Recipe, built: Built, drawing: Drawing, quiet: bool = False) -> Drawing:
    """Filters see every canvas of every step as one stack of frames."""
    T, n = drawing.canvases.shape[:2]
    frames = drawing.canvases.reshape((T * n,) + drawing.canvases.shape[2:])
    for i, (step, f) in enumerate(zip(recipe.filters, built.filters)):
        frames = np.asarray(f.apply(frames, context(recipe, _STAGE_FILTERS, i, quiet)), dtype=np.float32)
        if frames.ndim != 3 or frames.shape[0] != T * n:
            raise PluginError(f"{_who(step)} returned frames shaped {frames.shape}; expected ({T * n}, H, W)")
    frames = np.clip(frames, 0.0, 1.0)
    return replace(drawing, canvases=frames.reshape((T, n) + frames.shape[1:]))


def write(recipe: Recipe, built: Built, drawing: Drawing, path: Path, quiet: bool = False) -> Path:
    written = built.writer.write(drawing, path, context(recipe, _STAGE_OUTPUT, quiet=quiet))
    return Path(written) if written else path


def run(recipe: Recipe, *, out: Optional[Path] = None, quiet: bool = False, log: Log = _quiet_log) -> RunResult:
    start = time.perf_counter()
    built = prepare(recipe)
    path = output_path(recipe, built, out)
    data = load_data(recipe, built, quiet)
    log(f"dataset: {built.dataset.describe()} ({len(data.images)} images)")
    trained = ensure_model(recipe, data, quiet=quiet, log=log)
    log(f"model: step {trained.step} in {trained.workdir}")
    seeds = make_seeds(recipe, built, data, trained.last_batch, quiet)
    drawing = generate(recipe, trained.model, seeds)
    drawing = apply_filters(recipe, built, drawing, quiet)
    written = write(recipe, built, drawing, path, quiet)
    return RunResult(written, trained.workdir, trained.step, time.perf_counter() - start)


def _who(step) -> str:
    return f"{step.where} ({step.use!r} from plugin {step.entry.plugin!r})"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name.strip()) or "recipe"
