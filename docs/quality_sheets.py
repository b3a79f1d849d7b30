"""Make docs/quality.md's ink sheets: real drawings beside the model's, through several
display chains, every sheet written by qd's own png-sheet writer.

    QD_DATA_DIR=../shared/data/quickdraw .venv/bin/python docs/quality_sheets.py \
        recipes/cat-quality.yaml docs/img --prefix cat --iterations 2000

trains the recipe's model if it is not cached yet (as `qd train` would), then writes
PREFIX-real-*.png (held-out drawings), PREFIX-prior-*.png (prior samples, seed = the
recipe's) and PREFIX-steps-*.png (drawing steps, before and after the blank-page frames, and
through the pen and the shipped chain).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from qdcore import engine
from qdcore.ink import sigmoid
from qdcore.interfaces import Drawing
from qdcore.params import check
from qdcore.plugin_manager import build
from qdcore.recipe import load
from qdcore.training.train import split

# Display chains, as a recipe's `filters:` would say them.
CHAINS = {
    "soft": [("upscale", {"size": 84}), ("invert", {})],  # the shipped recipes before ink
    "otsu": [("ink", {"size": 84}), ("invert", {})],
    "pen": [("ink", {"size": 84, "width": 3}), ("invert", {})],  # the shipped recipes before issue 15
    "weight": [("ink", {"size": 84, "threshold": 0.55, "softness": 0.5}), ("invert", {})],  # and after
}


def _filters(registry, chain):
    return [
        registry.get("filters", name).factory(**check(registry.get("filters", name).factory, params, name))
        for name, params in chain
    ]


def _apply(filters, drawing: Drawing, ctx) -> Drawing:
    T, n = drawing.canvases.shape[:2]
    frames = drawing.canvases.reshape((T * n,) + drawing.canvases.shape[2:])
    for f in filters:
        frames = f.apply(frames, ctx)
    return replace(drawing, canvases=np.clip(frames, 0, 1).reshape((T, n) + frames.shape[1:]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--n", type=int, default=36)
    ap.add_argument("--iterations", type=int, help="override train.iterations (as qd train --iterations did)")
    ap.add_argument("--chains", default=",".join(CHAINS))
    ap.add_argument("--real", action="store_true", help="also write the held-out real drawings")
    ap.add_argument("--steps", type=int, default=0, help="also write this many samples' drawing steps")
    args = ap.parse_args()

    registry = build().registry
    r = load(args.recipe, registry).with_overrides(iterations=args.iterations)
    pipeline = engine.Run(r)
    data, trained = pipeline.data(), pipeline.model()
    ctx = pipeline.context("output")
    sheet = registry.get("writers", "png-sheet").factory
    args.out.mkdir(parents=True, exist_ok=True)

    def write(drawing: Drawing, name: str, **kw) -> None:
        path = args.out / f"{args.prefix}-{name}.png"
        sheet(**check(sheet, kw, "output")).write(drawing, path, ctx)
        print(path)

    _, held = split(len(data.images), r.train)
    real = Drawing(data.as_float(held[: args.n])[None], None, 0, "reconstruction")
    prior = trained.model.sample(args.n, seed=r.seed)
    sampled = replace(
        prior, canvases=(np.random.default_rng(r.seed).random(prior.canvases.shape) < prior.canvases).astype(np.float32)
    )
    for chain in args.chains.split(","):
        filters = _filters(registry, CHAINS[chain])
        if args.real:
            write(_apply(filters, real, ctx), f"real-{chain}", columns=6)
        write(_apply(filters, prior, ctx), f"prior-{chain}", columns=6)
    write(_apply(_filters(registry, CHAINS["soft"]), sampled, ctx), "prior-bernoulli", columns=6)

    if args.steps:
        import tensorflow as tf

        few = trained.model.sample(args.steps, seed=r.seed)
        eps = tf.constant(trained.model._prior_noise(args.steps, r.seed))
        logits = trained.model._run(None, eps, False, True)[2].numpy()
        grey = replace(few, canvases=sigmoid(logits))  # what the step frames showed before
        for name, drawing in [("steps-grey", grey), ("steps-blank", few)]:
            write(
                _apply(_filters(registry, [("upscale", {"size": 56}), ("invert", {})]), drawing, ctx),
                name,
                frames="steps",
            )
        write(
            _apply(_filters(registry, [("ink", {"size": 56, "width": 2}), ("invert", {})]), few, ctx),
            "steps-pen",
            frames="steps",
        )
        weight = [("ink", {"size": 56, "threshold": 0.55, "softness": 0.5}), ("invert", {})]
        write(_apply(_filters(registry, weight), few, ctx), "steps-weight", frames="steps")


if __name__ == "__main__":
    main()
