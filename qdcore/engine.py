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

from . import paths
from .errors import InputError, PluginError
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
    """Instantiate every step; constructors check their parameters (files exist, ...)."""
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


def ensure_model(recipe: Recipe, data: ImageSet, *, restart: bool = False, quiet: bool = False, on_step=None):
    from . import train  # TensorFlow lives behind this import

    workdir = model_dir(recipe)
    _describe_model(recipe, workdir)
    return train.train(recipe.model, recipe.train, data, workdir, restart=restart, quiet=quiet, on_step=on_step)


def _describe_model(recipe: Recipe, workdir: Path) -> None:
    """recipe.json beside the checkpoints: the sections that made this model, so a list of
    cached models (qd studio) can say what each is and rebuild a recipe that reuses it."""
    import json

    from .atomic import atomic_path

    target = workdir / MODEL_RECIPE
    if target.exists():
        return
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
    trained = ensure_model(recipe, data, quiet=quiet)
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
