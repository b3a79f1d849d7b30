"""Runs a recipe, one way: dataset -> trained model -> seed chain -> generation -> filters -> writer.

`Run` is that way as one object, and every caller (the CLI's commands, the studio, the
benchmarks, the docs' figure scripts) goes through it; the functions below are its steps.

Every component is instantiated (and so checked) before the first expensive step, and the
output location is checked before training, so a bad recipe never costs a training run.
TensorFlow is imported only when a model is needed (qdcore.training.train / qdcore.draw).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from . import limits, models, packs, paths, recognizer as recog, sources
from .atomic import check_target
from .sources import Resolution, SharedSource, not_cached as _not_cached, slug as _slug
from .config import ModelConfig
from .errors import InputError, NotTrained, PluginError, RecipeError
from .categories import ALL
from .interfaces import Context, Drawing, ImageSet, ModeCheck, SeedInput
from .recipe import Recipe
from .reporter import QUIET, Reporter


MODEL_RECIPE = models.RECIPE

# Stage numbers keep each step's random stream independent of the others.
_STAGE_DATASET, _STAGE_SEEDS, _STAGE_FILTERS, _STAGE_OUTPUT, _STAGE_RECOGNIZER, _STAGE_MODE = 1, 2, 3, 4, 5, 6
STAGES = {
    "dataset": _STAGE_DATASET,
    "seeds": _STAGE_SEEDS,
    "filters": _STAGE_FILTERS,
    "output": _STAGE_OUTPUT,
    "recognizer": _STAGE_RECOGNIZER,
    "mode": _STAGE_MODE,
}


@dataclass
class Built:
    dataset: object
    seeds: list
    filters: list
    writer: object
    recognizer: object = None  # the recipe's Recognizer, when it has one
    mode: object = None  # the recipe's Generator (`mode:`), when it has one
    source: Optional[Resolution] = None  # where its model comes from (sources.resolve)


@dataclass
class RunResult:
    path: Path
    model_dir: Path
    trained_steps: int
    seconds: float


def prepare(recipe: Recipe) -> Built:
    """Instantiate every step; constructors check their parameters (files exist, ...); where
    the model comes from is resolved, once: a shared model the recipe insists on (`model.from`,
    if_missing: error) is there, and `model.start` is there and fits the recipe's model."""
    source = sources.resolve(recipe)
    built = Built(
        dataset=recipe.dataset.build(),
        seeds=[s.build() for s in recipe.seeds],
        filters=[f.build() for f in recipe.filters],
        writer=recipe.output.build(),
        recognizer=recipe.recognizer.build() if recipe.recognizer is not None else None,
        mode=recipe.mode.build() if recipe.mode is not None else None,
        source=source,
    )
    check = getattr(built.writer, "check", None)  # Writer.check: optional, before any training
    if check is not None:
        try:
            # With a second parameter, it is also told the frames' size after the filters.
            frame = (frame_shape(recipe, built),) if len(inspect.signature(check).parameters) > 1 else ()
            check(recipe.generate.n, *frame)
        except RecipeError as e:
            raise RecipeError(str(e), f"{recipe.output.label}: output") from None
    check = getattr(built.mode, "check", None)  # Generator.check: the same, for `mode:`
    if check is not None:
        try:
            check(_mode_check(recipe, built))
        except (RecipeError, InputError) as e:
            raise type(e)(f"{recipe.mode.label}: mode: {e}") from None
    check_memory(recipe, built)
    return built


def check_memory(recipe: Recipe, built: Built) -> None:
    """One memory budget (limits.check_memory), before any work: the pictures the model draws
    (generate.n, x best_of, x a mode's tries or frames), each a canvas per step at the model's
    size, then the same frames at the size the filters make (float32, input and output)."""
    g = recipe.generate
    pictures = getattr(built.mode, "pictures", None)
    drawn = (pictures(g.n) if pictures is not None else g.n) * g.best_of
    largest = max(h * w for h, w in _shapes(recipe, built))
    h, w = frame_shape(recipe, built)
    frames = drawn * (recipe.model.T + 1)
    what = (
        f"{drawn:,} pictures of {recipe.model.T + 1} frames at {h}x{w} "
        f"(generate.n {g.n:,}"
        + (f" x best_of {g.best_of}" if g.best_of > 1 else "")
        + (f" x mode {recipe.mode.use!r}" if built.mode is not None else "")
        + ")"
    )
    fix = "lower generate.n" + (", generate.best_of" if g.best_of > 1 else "")
    fix += ", the mode's tries or frames" if built.mode is not None else ""
    fix += " or the filters' size" if largest > recipe.model.height * recipe.model.width else ""
    size = frames * (recipe.model.height * recipe.model.width + 2 * largest) * 4
    limits.check_memory(size, what, fix, recipe.dataset.label or str(recipe.path))  # the studio says "studio"


def _shapes(recipe: Recipe, built: Built) -> list[tuple[int, int]]:
    """The frames' (height, width) at the model, then after each filter (Filter.shape)."""
    out = [(recipe.model.height, recipe.model.width)]
    for f in built.filters:
        shape = getattr(f, "shape", None)
        out.append(tuple(shape(*out[-1])) if shape is not None else out[-1])
    return out


def frame_shape(recipe: Recipe, built: Built) -> tuple[int, int]:
    """What the writer will get: each picture's (height, width) after the recipe's filters."""
    return _shapes(recipe, built)[-1]


def _mode_check(recipe: Recipe, built: Built) -> ModeCheck:
    """What `mode:` may check before training: the categories the recipe's model will know are
    its dataset's when it names several, a shared model's when it draws from one (`model.from`
    found and knowing the category), none for a one-category model of its own."""
    named = recog.categories_of(recipe.dataset.params)
    known = None if any(c == ALL for c in named) or not named else (named if len(named) > 1 else [])
    serving = built.source.serving
    if serving is not None:
        known = list(serving.categories)
    prior = recipe.seeds[0].use == "prior"
    # A file-image source (and what the perturbations after it make of it) needs no data: the
    # seed images are known now, so a mode can look at them (a blank partial drawing).
    seeds = make_seeds(recipe, built, None, None) if recipe.seeds[0].use == "file-image" else None
    return ModeCheck(recipe.generate.n, recipe.model.T, prior, known, seeds)


def context(recipe: Recipe, stage: int, index: int = 0, quiet: bool = False) -> Context:
    return Context(
        image_shape=(recipe.model.height, recipe.model.width),
        rng=np.random.default_rng([recipe.seed, stage, index]),
        recipe_dir=recipe.folder,
        data_dir=paths.data_dir(),
        cache_dir=paths.cache_dir(),
        quiet=quiet,
    )


def output_path(recipe: Recipe, built: Built, out: Optional[Path]) -> Path:
    """--out (relative to the cwd) wins, then the recipe's `output.path` (relative to the
    recipe), then `<name><suffix>` in the cwd. Checked before any work: new or a regular file
    (never a device, FIFO or folder), in a folder where a file can be made (atomic.check_target)."""
    suffix = getattr(built.writer, "suffix", ".gif")
    path = Path(out) if out is not None else recipe.output_path or Path(f"{_slug(recipe.name)}{suffix}")
    path = path.expanduser().absolute()
    return check_target(path, str(path / (recipe.name + suffix)))


def load_data(recipe: Recipe, built: Built, reporter: Reporter = QUIET) -> ImageSet:
    data = built.dataset.load(context(recipe, _STAGE_DATASET, quiet=reporter.quiet))
    who = _who(recipe.dataset)
    if not isinstance(data, ImageSet):
        raise PluginError(f"{who} returned {type(data).__name__}, not a qdcore.ImageSet")
    shape = (recipe.model.height, recipe.model.width)
    if data.images.ndim != 3 or tuple(data.images.shape[1:]) != shape:
        raise PluginError(
            f"{who} returned images shaped {tuple(data.images.shape)}; the model needs (N, {shape[0]}, {shape[1]})"
        )
    if len(data.images) == 0:
        raise InputError(f"{who} found no images: check the dataset's parameters")
    return data


def ensure_model(
    recipe: Recipe,
    resolved: Resolution,
    data: ImageSet,
    *,
    restart: bool = False,
    reporter: Reporter = QUIET,
    on_step=None,
):
    """The recipe's trained model: its `model.from` shared model held to the recipe's
    category when that is cached, else its own (trained now, or reused from the cache)."""
    from .training import train, warm_start  # TensorFlow lives behind this import
    from .training.locks import hold

    category, source = shared_category(recipe, resolved, data, reporter)
    if category is None:
        # One process trains a model folder at a time; a second run waits, then finds it finished.
        # Not under TF_CONFIG: the workers of one multi-worker run train together in lockstep, and
        # a lock would make them wait for each other forever.
        workdir = resolved.own
        lock = (
            contextlib.nullcontext()
            if os.environ.get("TF_CONFIG")
            else hold(
                workdir.with_name(workdir.name + ".lock"),
                "training this model",
                None if reporter.quiet else reporter.note,
            )
        )
        with lock:
            source = resolved.start
            _describe_model(recipe, resolved)
            start = (
                None
                if source is None
                else warm_start.Start(source.label, source.identity(), source_model(source), legs=source.legs())
            )
            return train.train(
                recipe.model,
                recipe.train,
                data,
                workdir,
                restart=restart,
                reporter=reporter,
                on_step=on_step,
                start=start,
            )
    shared = recipe.shared
    if restart:
        fix = (
            f"to retrain that, run `{shared.build_command()} --restart`"
            if source.pack is None
            else "a pack is not retrained here: train the recipe that made it, or drop `model.from`"
        )
        raise RecipeError(f"this recipe draws {category!r} from {source.label}; {fix}", shared.where)
    return _load_shared(shared, category, source)


def load_model(
    recipe: Recipe,
    resolved: Resolution,
    data: Optional[ImageSet],
    reporter: Reporter = QUIET,
    cache: Optional[dict] = None,
):
    """The recipe's model as ensure_model finds it, trained before: never trains (the studio
    draws only from models that exist). `cache` keeps loaded models by where they live
    (Resolution.loaded_key; sources.forget_loaded drops them)."""
    category, source = shared_category(recipe, resolved, data, reporter)
    if category is None:
        workdir = resolved.own
        if not models.is_finished(workdir):
            raise NotTrained(
                f"the model for recipe {recipe.name!r} is not trained yet: run `qd train` on the recipe first"
            )
    key = resolved.loaded_key(category)
    if cache is not None and key in cache:
        return cache[key]
    if category is None:
        from .training import train

        loaded = train.load(recipe.model, workdir)
    else:
        loaded = _load_shared(recipe.shared, category, source)
    if cache is not None:
        cache[key] = loaded
    return loaded


def source_model(source: SharedSource):
    """A loader of the Draw model a source holds (a pack's, or a model trained into the cache)."""

    def load():
        from .training import train

        if source.pack is not None:
            return packs.load(source.pack).model
        return train.load(ModelConfig(**source.model), source.workdir).model

    return load


def _load_shared(shared, category: str, source: "SharedSource"):
    from .training import train
    from .conditioning import Steered

    if source.pack is not None:
        trained = packs.load(source.pack)
        return replace(trained, model=Steered(trained.model, category)) if source.pack.conditional else trained
    trained = train.load(shared.recipe.model, source.workdir)
    index = int(trained.model.labels(1, category)[0])
    return replace(trained, model=Steered(trained.model, category), last_batch=trained.last_of(index))


def shared_category(
    recipe: Recipe, resolved: Resolution, data: ImageSet, reporter: Reporter = QUIET
) -> tuple[Optional[str], Optional[SharedSource]]:
    """The category this recipe draws from its `model.from` model, and where that model is;
    (None, None) when it trains its own (no `from`, or `if_missing: train` and no shared model
    or pack can serve it)."""
    shared = recipe.shared
    if shared is None:
        return None, None
    if not data.classes or len(data.classes) != 1:
        raise RecipeError(
            f"a shared model draws one category, and the dataset gives "
            f"{len(data.classes) if data.classes else 'no'} category names: name one category",
            shared.where,
        )
    category, source = data.classes[0], resolved.shared
    if source is None:
        problem = _not_cached(shared)
    elif category not in source.categories:
        known = source.categories
        problem = (
            f"{source.label} was not trained on {category!r} "
            f"(its {len(known)} categories: {', '.join(known) or 'none'})"
        )
    else:
        if tuple(source.size) != (recipe.model.height, recipe.model.width):
            raise RecipeError(
                f"{source.label} draws {source.size[0]}x{source.size[1]} images, "
                f"this recipe's model is {recipe.model.height}x{recipe.model.width}: make them agree",
                shared.where,
            )
        reporter.say(f"model: {category!r} from {source.label}")
        return category, source
    if shared.if_missing == "error":
        raise InputError(f"{shared.where}: {problem}")
    reporter.say(f"model: {problem}; {own_model_plan(recipe, resolved, data)}")
    return None, None


def own_model_plan(recipe: Recipe, resolved: Resolution, data: ImageSet) -> str:
    """What training a recipe's own model will cost, said before it starts: the steps left,
    the images they are (in batches that fit the data: mixing.fit_batch), and the time at
    this machine's measured speed when it was measured."""
    workdir = resolved.own
    if models.is_finished(workdir):
        return f"using this recipe's own model, trained before ({workdir})"
    from .training.mixing import fit_batch

    cfg = fit_batch(recipe.train, data)
    done = (models.describe(workdir)["steps"] or 0) if workdir.is_dir() else 0
    left = max(cfg.iterations - done, 0)
    images = left * cfg.batch_size
    start = resolved.start
    what = (
        f"training this recipe's own model instead (if_missing: train): {left:,} steps of "
        f"{cfg.batch_size} = {images:,} images"
        + (f", starting from {start.label}" if start is not None and not done else "")
        + (f", resuming at step {done:,}" if done else "")
    )
    from .training.plan import known_speed  # reads the step-plan cache; nothing is measured here
    from .training.stopping import budget_eta

    speed = known_speed(recipe.model, cfg)
    if not speed:
        return what + "; no training speed of this model is measured here yet to say how long"
    return (
        what + f", {budget_eta(left, cfg.batch_size, speed)} at the {speed:,.0f} images/s measured here for this model"
    )


def trained_recipe(recipe: Recipe, resolved: Resolution, trained) -> Recipe:
    """The recipe that trained `trained`: `recipe`, or the one its `model.from` names; for a
    model pack, `recipe` with the pack's model and train settings (its held-out split)."""
    shared = recipe.shared
    if getattr(trained, "pack", None) is not None:
        from .packs import Pack

        pack = Pack(trained.pack["name"], Path(trained.workdir), trained.pack)
        return replace(recipe, model=pack.model_config, train=pack.train_config)
    found = resolved.shared
    drew_shared = found is not None and found.workdir is not None and Path(trained.workdir) == Path(found.workdir)
    return shared.recipe if drew_shared and shared.recipe is not None else recipe


def _describe_model(recipe: Recipe, resolved: Resolution) -> None:
    """recipe.json beside the checkpoints: the sections that made this model, so a list of
    cached models (qd studio) can say what each is and rebuild a recipe that reuses it."""
    import json

    from .atomic import atomic_path

    from .training.distribute import writes_here

    workdir, start = resolved.own, resolved.start
    target = workdir / MODEL_RECIPE
    if target.exists() or not writes_here(recipe.train):
        return  # only a multi-worker run's chief writes the model folder (docs/distributed.md)
    raw = recipe.raw or {}
    workdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "name": recipe.name,
                    "model_key": resolved.key,
                    "dataset": raw.get("dataset"),
                    "model": recipe.model.as_dict(),
                    "train": recipe.train.as_dict(),
                    "start": None if start is None else {"from": start.label, "identity": start.identity()},
                },
                default=str,
            )
        )


def make_seeds(
    recipe: Recipe, built: Built, data: ImageSet, last_batch: Optional[np.ndarray], reporter: Reporter = QUIET
):
    n = recipe.generate.n
    given = SeedInput(n=n, dataset=data, last_batch=last_batch)
    seeds = None
    shape = (n, recipe.model.height, recipe.model.width)
    for i, (step, strategy) in enumerate(zip(recipe.seeds, built.seeds)):
        seeds = strategy.apply(seeds, given, context(recipe, _STAGE_SEEDS, i, reporter.quiet))
        if seeds is None:
            continue
        seeds = np.asarray(seeds, dtype=np.float32)
        if seeds.shape != shape:
            raise PluginError(f"{_who(step)} returned seeds shaped {seeds.shape}; expected {shape}")
        if not np.all(np.isfinite(seeds)):
            raise PluginError(f"{_who(step)} returned non-finite seed values")
        seeds = np.clip(seeds, 0.0, 1.0)
    return seeds


def generate(recipe: Recipe, model, seeds: Optional[np.ndarray], tries: int = 1) -> Drawing:
    """n pictures; with tries=K, K x n candidates (K tries at each seed image, in runs of K)."""
    if seeds is None:
        return model.sample(recipe.generate.n * tries, seed=recipe.seed)
    return model.reconstruct(np.repeat(seeds, tries, axis=0) if tries > 1 else seeds, seed=recipe.seed)


def classifier(recipe: Recipe, built: Built, reporter: Reporter = QUIET):
    """The recipe's recognizer, trained or loaded from the cache."""
    if built.recognizer is None:
        raise InputError("this recipe has no recognizer: add `recognizer: {use: NAME}` naming an installed one")
    loaded = built.recognizer.load(context(recipe, _STAGE_RECOGNIZER, quiet=reporter.quiet))
    if not isinstance(loaded, recog.Classifier):
        raise PluginError(f"{_who(recipe.recognizer)} returned {type(loaded).__name__}, not a qdcore.Classifier")
    return loaded


def check_recognizer(recipe: Recipe, built: Built, categories: list[str], reporter: Reporter = QUIET) -> None:
    """Fail before training when the recognizer cannot know `categories` (cheap: no training)."""
    if built.recognizer is None:
        raise InputError("this recipe has no recognizer: add `recognizer: {use: NAME}` naming an installed one")
    known = built.recognizer.categories(context(recipe, _STAGE_RECOGNIZER, quiet=reporter.quiet))
    recog.check_known(known, categories, recipe.recognizer.use)


def check_best_of(recipe: Recipe, built: Built, reporter: Reporter = QUIET) -> None:
    """With generate.best_of, the recognizer must know the recipe's category: checked before training."""
    if recipe.generate.best_of > 1:
        check_recognizer(recipe, built, _categories(recipe), reporter)


def _categories(recipe: Recipe) -> list[str]:
    names = recog.categories_of(recipe.dataset.params)
    if not names:
        raise InputError(
            f"best_of keeps the pictures most like the recipe's category, and dataset {recipe.dataset.use!r} names none"
        )
    return names


def _finals(drawing: Drawing) -> Drawing:
    return replace(
        drawing, canvases=drawing.canvases[-1:], windows=None if drawing.windows is None else drawing.windows[-1:]
    )


def draw(
    recipe: Recipe,
    built: Built,
    model,
    seeds: Optional[np.ndarray],
    *,
    reporter: Reporter = QUIET,
    categories: Optional[list[str]] = None,
    final_only: bool = False,
) -> Drawing:
    """Generate and filter the recipe's n pictures. With generate.best_of = K, K x n candidates
    are drawn and the recognizer keeps the n most confident they show `categories` (default:
    the recipe's dataset's): of all prior samples, or the best try at each seed image. The
    recognizer judges the final canvas after the recipe's filters, as a person sees it.
    `final_only` filters just the last step's canvas (one frame per picture instead of T):
    enough for whoever looks only at the finished drawings."""
    k = recipe.generate.best_of
    if built.mode is not None:
        drawn = generate_mode(recipe, built, model, seeds, reporter)
        return apply_filters(recipe, built, _finals(drawn) if final_only else drawn, reporter)
    if k == 1:
        drawn = generate(recipe, model, seeds)
        return apply_filters(recipe, built, _finals(drawn) if final_only else drawn, reporter)
    wanted = categories or _categories(recipe)
    judge = classifier(recipe, built, reporter)
    columns = recog.check_known(judge.classes, wanted, recipe.recognizer.use)
    candidates = generate(recipe, model, seeds, tries=k)
    filtered = apply_filters(recipe, built, _finals(candidates), reporter)
    probabilities, _ = judge.classify(recog.to_bitmaps(filtered.canvases[0]))
    keep = recog.best_of(recog.confidence(probabilities, columns), recipe.generate.n, None if seeds is None else k)
    if final_only:
        return replace(
            filtered,
            canvases=filtered.canvases[:, keep],
            windows=None if filtered.windows is None else filtered.windows[:, keep],
        )
    kept = replace(
        candidates,
        canvases=candidates.canvases[:, keep],
        windows=None if candidates.windows is None else candidates.windows[:, keep],
    )
    return apply_filters(recipe, built, kept, reporter)


def generate_mode(
    recipe: Recipe, built: Built, model, seeds: Optional[np.ndarray], reporter: Reporter = QUIET
) -> Drawing:
    """The recipe's `mode:` generator makes the pictures (docs/generation.md)."""
    drawn = built.mode.generate(
        model, seeds, recipe.generate.n, recipe.seed, context(recipe, _STAGE_MODE, quiet=reporter.quiet)
    )
    who = _who(recipe.mode)
    if not isinstance(drawn, Drawing):
        raise PluginError(f"{who} returned {type(drawn).__name__}, not a qdcore.Drawing")
    c = np.asarray(drawn.canvases)
    if c.ndim != 4 or 0 in c.shape or not np.all(np.isfinite(c)):
        raise PluginError(f"{who} returned canvases shaped {c.shape} (or not finite); expected finite (T, n, H, W)")
    if drawn.given is not None and np.shape(drawn.given) != c.shape[1:]:
        raise PluginError(f"{who} returned `given` shaped {np.shape(drawn.given)}; expected {c.shape[1:]}")
    return drawn


def apply_filters(recipe: Recipe, built: Built, drawing: Drawing, reporter: Reporter = QUIET) -> Drawing:
    """Filters see every canvas of every step as one stack of frames (and a completion's
    partial drawing as n more, so it stays in register with the canvases)."""
    T, n = drawing.canvases.shape[:2]
    frames = drawing.canvases.reshape((T * n,) + drawing.canvases.shape[2:])
    if drawing.given is not None:
        frames = np.concatenate([frames, np.asarray(drawing.given, np.float32)])
    count = len(frames)
    for i, (step, f) in enumerate(zip(recipe.filters, built.filters)):
        frames = np.asarray(f.apply(frames, context(recipe, _STAGE_FILTERS, i, reporter.quiet)), dtype=np.float32)
        if frames.ndim != 3 or frames.shape[0] != count:
            raise PluginError(f"{_who(step)} returned frames shaped {frames.shape}; expected ({count}, H, W)")
    frames = np.clip(frames, 0.0, 1.0)
    given = None if drawing.given is None else frames[T * n :]
    return replace(drawing, canvases=frames[: T * n].reshape((T, n) + frames.shape[1:]), given=given)


class Run:
    """One recipe's way from recipe to picture, the only one: every step is built (and so
    checked) here, and each later step is made once, on first use, from the earlier ones.

        run = Run(recipe, reporter)
        run.data(); run.model(); run.seeds(); run.drawing(); run.write(path)

    It holds where the model comes from (`source`: the recipe's own folder, a `model.from`
    model or pack, a `model.start`, resolved once by qdcore/sources.py), and owns the training
    lock, `generate.best_of` (checked before training; its recognizer) and the `mode:` generators. `data` is a
    dataset already loaded for this recipe (the studio keeps them); `models` a cache of
    loaded models for `model(train=False)`; `trained` a model already loaded for this recipe
    (a figure script's copy of a model folder), which model() then returns."""

    def __init__(
        self,
        recipe: Recipe,
        reporter: Reporter = QUIET,
        *,
        data: Optional[ImageSet] = None,
        models: Optional[dict] = None,
        trained=None,
    ):
        self.recipe, self.reporter = recipe, reporter
        self.built = prepare(recipe)
        self._data, self._models = data, models
        self._trained, self._seeds = trained, None
        self._checked = False

    @property
    def quiet(self) -> bool:
        return self.reporter.quiet

    @property
    def source(self) -> Resolution:
        """Where the model comes from, resolved once when the run was made (qdcore/sources.py):
        its own folder, a `model.from` model or pack, a `model.start`."""
        return self.built.source

    @property
    def stem(self) -> str:
        """The recipe's name as a file name (without suffix)."""
        return _slug(self.recipe.name)

    def context(self, stage: str, index: int = 0) -> Context:
        """The Context a step of `stage` ("dataset", "seeds", "filters", "output",
        "recognizer", "mode") gets: its own random stream, as the run's own steps get theirs."""
        if stage not in STAGES:
            raise ValueError(f"no pipeline stage {stage!r}; the stages: {', '.join(STAGES)}")
        return context(self.recipe, STAGES[stage], index, self.quiet)

    def output_path(self, out: Optional[Path] = None) -> Path:
        return output_path(self.recipe, self.built, out)

    def data(self) -> ImageSet:
        if self._data is None:
            self._data = load_data(self.recipe, self.built, self.reporter)
        return self._data

    def model(self, *, restart: bool = False, on_step=None, train: bool = True):
        """The trained model (models.Trained): trained now when `train` (holding the lock),
        else one trained before (NotTrained when there is none)."""
        if self._trained is None:
            # Only training and `model.from` (which category?) need the dataset.
            data = self.data() if train or self.recipe.shared is not None else None
            self._trained = (
                ensure_model(self.recipe, self.source, data, restart=restart, reporter=self.reporter, on_step=on_step)
                if train
                else load_model(self.recipe, self.source, data, self.reporter, self._models)
            )
        return self._trained

    def check_drawing(self) -> None:
        """What drawing needs and costs no training (generate.best_of's recognizer knows the
        recipe's category): callers that train and then draw check it first."""
        if not self._checked:
            check_best_of(self.recipe, self.built, self.reporter)
            self._checked = True

    def trained_recipe(self) -> Recipe:
        return trained_recipe(self.recipe, self.source, self.model())

    def seeds(self) -> Optional[np.ndarray]:
        """The seed chain's images (None: sample the prior)."""
        if self._seeds is None:
            self._seeds = [make_seeds(self.recipe, self.built, self.data(), self.model().last_batch, self.reporter)]
        return self._seeds[0]

    def drawing(
        self, *, prior: bool = False, final_only: bool = False, categories: Optional[list[str]] = None
    ) -> Drawing:
        """The recipe's n pictures, filtered (see draw): from its seeds, or from the prior
        when `prior` (qd sample, qd eval), whatever seeds the recipe names."""
        if categories is None:
            self.check_drawing()
        seeds = None if prior else self.seeds()
        return draw(
            self.recipe,
            self.built,
            self.model().model,
            seeds,
            reporter=self.reporter,
            categories=categories,
            final_only=final_only,
        )

    def filtered(self, drawing: Drawing) -> Drawing:
        """A drawing made elsewhere (a benchmark's model) through the recipe's filters."""
        return apply_filters(self.recipe, self.built, drawing, self.reporter)

    def write(self, path: Path, drawing: Optional[Drawing] = None, writer=None) -> Path:
        """Write `drawing` (default: self.drawing()) with the recipe's writer, or `writer`
        (the studio's downloads); the path the writer reports it wrote."""
        drawing = self.drawing() if drawing is None else drawing
        written = (writer or self.built.writer).write(drawing, path, self.context("output"))
        return Path(written) if written else path

    def classifier(self):
        """The recipe's recognizer (the one best_of and qd eval use), trained or from the cache."""
        return classifier(self.recipe, self.built, self.reporter)

    def eval_category(self) -> tuple[Optional[str], str]:
        return eval_category(self.recipe, self.built, self.reporter)

    def recognition(self, category: str) -> dict:
        return recognition(self.recipe, self.built, self.model().model, category, self.reporter)

    def reconstruction_recognition(self, category: str, n: int) -> dict:
        return reconstruction_recognition(self.recipe, self.built, self.model(), category, n, self.reporter)

    def real_recognition(self, category: str) -> dict:
        """`qd eval --real`: the recipe's filters judged on real drawings; needs no model."""
        return real_recognition(self.recipe, self.built, category, self.reporter)


def run(recipe: Recipe, *, out: Optional[Path] = None, reporter: Reporter = QUIET) -> RunResult:
    """`qd run`: the output path is checked, then data, model, seeds, drawing, written."""
    start = time.perf_counter()
    pipeline = Run(recipe, reporter)
    path = pipeline.output_path(out)
    data = pipeline.data()
    reporter.say(f"dataset: {pipeline.built.dataset.describe()} ({len(data.images)} images)")
    pipeline.check_drawing()
    trained = pipeline.model()
    reporter.say(f"model: step {trained.step} in {trained.workdir}")
    written = pipeline.write(path)
    return RunResult(written, trained.workdir, trained.step, time.perf_counter() - start)


def eval_category(recipe: Recipe, built: Built, reporter: Reporter = QUIET) -> tuple[Optional[str], str]:
    """The category `qd eval` judges, or None and why not (checked before any training)."""
    if built.recognizer is None:
        return (
            None,
            f"no recognizer is installed (the default is {recog.DEFAULT!r}, from qd's built-in `recognizers` plugin)",
        )
    names = recog.categories_of(recipe.dataset.params)
    if len(names) != 1:
        return None, (
            f"dataset {recipe.dataset.use!r} names {len(names)} categories; the recognizer figures "
            "are for a recipe of one category"
        )
    try:
        check_recognizer(recipe, built, names, reporter)
    except InputError as e:
        return None, str(e)
    return names[0], ""


def recognition(recipe: Recipe, built: Built, model, category: str, reporter: Reporter = QUIET) -> dict:
    """qd eval's recognizer figures: generate.n prior samples (best_of applied, through the
    recipe's filters, scaled back to 28x28) against as many real drawings of `category`."""
    judge = classifier(recipe, built, reporter)
    shown = recog.to_bitmaps(
        draw(recipe, built, model, None, reporter=reporter, categories=[category], final_only=True).final
    )
    rng = np.random.default_rng([recipe.seed, _STAGE_RECOGNIZER, 1])
    figures = recog.figures(judge, shown, category, rng, who=recipe.recognizer.use)
    return {
        "recognizer": recipe.recognizer.use,
        "recognizer_accuracy": getattr(judge, "held_out_accuracy", None),
        "best_of": recipe.generate.best_of,
        **figures,
    }


def held_out_drawings(recipe: Recipe, built: Built, trained, category: str, n: int, reporter: Reporter = QUIET):
    """Up to n drawings of `category` that `trained` never trained on: the held-out split of
    the run that trained it (a pack's or a shared model's own dataset, loaded again here:
    a split of the recipe's one category would hand back drawings the model trained on)."""
    from .training.mixing import split, stream_labels

    owner = trained_recipe(recipe, built.source, trained)
    pack = getattr(trained, "pack", None)
    if pack is not None:
        params = dict((pack.get("data") or {}).get("dataset") or {})
        use = params.pop("use", recipe.dataset.use)
        if use != recipe.dataset.use:
            raise InputError(
                f"{pack['name']} was trained on dataset {use!r} and this recipe reads {recipe.dataset.use!r}: "
                "its held-out drawings are not among this recipe's; use a recipe of that dataset"
            )
        owner = replace(owner, dataset=replace(recipe.dataset, params=params))
    step = owner.dataset
    data = step.build().load(context(owner, _STAGE_DATASET, quiet=reporter.quiet)) if owner is not recipe else None
    data = data if data is not None else load_data(recipe, built, reporter)
    expected = (pack.get("data") or {}).get("images") if pack is not None else None
    if expected is not None and expected != len(data.images):
        raise InputError(
            f"{pack['name']} was trained on {expected} drawings and {_who(step)} finds {len(data.images)} "
            f"here: which of them it held out cannot be told; point QD_DATA_DIR at the data it was trained on"
        )
    _, held = split(len(data.images), owner.train, stream_labels(data))
    if data.classes and len(data.classes) > 1:
        if category not in data.classes:
            raise InputError(f"the model's training data has no {category!r} drawings to hold out")
        held = held[data.labels[held] == data.classes.index(category)]
    if len(held) == 0:
        raise InputError("the model was trained with no drawings held out (train.holdout: 0): nothing to reconstruct")
    return data.as_float(held[:n])


def reconstruction_recognition(
    recipe: Recipe, built: Built, trained, category: str, n: int, reporter: Reporter = QUIET
) -> dict:
    """`qd eval --reconstruct`: the recognizer figures (as `recognition`'s) for the model's
    reconstructions of up to n held-out real drawings, through the recipe's filters. Beside
    the prior samples' figures they tell whether the decoder or the prior falls short: given
    a real drawing's own latent, a good decoder draws something near that drawing. The real
    sets it is compared with leave out the reconstructed drawings themselves."""
    judge = classifier(recipe, built, reporter)
    originals = held_out_drawings(recipe, built, trained, category, n, reporter)
    drawn = trained.model.reconstruct(originals, seed=recipe.seed)
    shown = recog.to_bitmaps(apply_filters(recipe, built, _finals(drawn), reporter).final)
    rng = np.random.default_rng([recipe.seed, _STAGE_RECOGNIZER, 2])
    figures = recog.figures(judge, shown, category, rng, who=recipe.recognizer.use, exclude=originals)
    return {"recognizer": recipe.recognizer.use, "held_out_reconstructed": len(originals), **figures}


def real_recognition(recipe: Recipe, built: Built, category: str, reporter: Reporter = QUIET) -> dict:
    """`qd eval --real`: the recipe's filters judged on generate.n real drawings of `category`
    the recognizer never trained on, beside the same drawings raw (no model is needed). The
    real sets are those `recognition` compares samples with."""
    judge = classifier(recipe, built, reporter)
    rng = np.random.default_rng([recipe.seed, _STAGE_RECOGNIZER, 1])
    figures = recog.real_figures(
        judge,
        category,
        recipe.generate.n,
        rng,
        lambda images: filtered_bitmaps(recipe, built, images, reporter),
        who=recipe.recognizer.use,
    )
    return {
        "recognizer": recipe.recognizer.use,
        "recognizer_accuracy": getattr(judge, "held_out_accuracy", None),
        **figures,
    }


def filtered_bitmaps(recipe: Recipe, built: Built, images: np.ndarray, reporter: Reporter = QUIET) -> np.ndarray:
    """(n, H, W) ink-bright drawings through the recipe's filters, as one frame each, and
    scaled back to what a recognizer reads: how the display chain changes a drawing."""
    images = np.asarray(images, np.float32)
    drawing = Drawing(images[None], None, 0, "reconstruction", images.shape[1:])
    return recog.to_bitmaps(apply_filters(recipe, built, drawing, reporter).final)


def _who(step) -> str:
    return f"{step.where} ({step.use!r} from plugin {step.entry.plugin!r})"
