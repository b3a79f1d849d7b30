"""The hooks a qd plugin may implement. Markers and bodiless specs only."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("qd")
hookimpl = pluggy.HookimplMarker("qd")


@hookspec
def qd_register_datasets(register):
    """Register datasets: call `register(name, factory, description="...")` once per dataset.

    `factory(**params)` must return a `qdcore.Dataset`; its keyword parameters, with their
    annotations and defaults, are what a recipe's `dataset:` section may set.
    """


@hookspec
def qd_register_seed_strategies(register):
    """Register seed strategies: `register(name, factory, description="...")`.

    `factory(**params)` must return a `qdcore.SeedStrategy`; a recipe's `seeds:` list chains
    them in order (a source first, then perturbations).
    """


@hookspec
def qd_register_filters(register):
    """Register post-filters: `register(name, factory, description="...")`.

    `factory(**params)` must return a `qdcore.Filter`; a recipe's `filters:` list applies
    them in order to every frame.
    """


@hookspec
def qd_register_writers(register):
    """Register output writers: `register(name, factory, description="...")`.

    `factory(**params)` must return a `qdcore.Writer`; a recipe's `output:` names one.
    """


@hookspec
def qd_register_recognizers(register):
    """Register recognizers: `register(name, factory, description="...")`.

    `factory(**params)` must return a `qdcore.Recognizer`; a recipe's `recognizer:` names one
    (default `cnn`). `qd eval` and `generate.best_of` use it.
    """


@hookspec
def qd_register_generators(register):
    """Register generation modes: `register(name, factory, description="...")`.

    `factory(**params)` must return a `qdcore.Generator`; a recipe's `mode:` names one
    (for example `complete` or `morph`); without `mode:` the model samples or reconstructs.
    """


@hookspec
def qd_register_models(register):
    """Register trained models: `register(name, pack, description="...")`.

    `pack` is the path (str or os.PathLike) of a model pack file, `NAME.safetensors` (or
    format 1's `NAME.qdpack`) as `qd models export` writes it; `name` must be the name in its
    manifest. A recipe's `model: {from: NAME}` draws from it when no model of that name is in
    the user's cache.
    """
