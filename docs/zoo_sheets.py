"""Make docs/categories.md's prior-sample sheets of a many-category model, every sheet written
by qd's own png-sheet writer through the recipe's pen-ink chain.

    QD_DATA_DIR=../shared/data/quickdraw .venv/bin/python docs/zoo_sheets.py \
        recipes/zoo-26.yaml docs/img --iterations 2000 \
        --single cat=recipes/cat-quality.yaml --single apple=recipes/apple-quality.yaml

trains what is not cached yet (as `qd train` would), then writes
PREFIX-prior.png: one row per category of the zoo, `--n` prior samples each (seed = the
recipe's, so every row uses the same noise), and, with --single, PREFIX-vs-single.png: for
each named category the zoo's row above the one-category model's row, same noise.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from qdcore import engine
from qdcore.interfaces import Drawing
from qdcore.params import check
from qdcore.plugin_manager import build
from qdcore.recipe import load

PEN = [("ink", {"size": 56, "width": 2}), ("invert", {})]


def _trained(path: Path, registry, iterations):
    r = load(path, registry).with_overrides(iterations=iterations)
    return r, engine.Run(r).model()


def _rows(drawings: list[Drawing]) -> Drawing:
    """Final canvases of several drawings, one after the other (a sheet row each)."""
    return Drawing(np.concatenate([d.canvases[-1:] for d in drawings], axis=1), None, 0, "prior")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--prefix", default="zoo-26")
    ap.add_argument("--n", type=int, default=8, help="samples per category")
    ap.add_argument("--iterations", type=int, help="override train.iterations (as qd train --iterations did)")
    ap.add_argument(
        "--single",
        action="append",
        default=[],
        metavar="CATEGORY=RECIPE",
        help="a one-category recipe to compare with the zoo's row of CATEGORY",
    )
    args = ap.parse_args()

    registry = build().registry
    r, zoo = _trained(args.recipe, registry, args.iterations)
    ctx = engine.Run(r).context("output")
    filters = [
        registry.get("filters", name).factory(**check(registry.get("filters", name).factory, p, name))
        for name, p in PEN
    ]
    sheet = registry.get("writers", "png-sheet").factory
    args.out.mkdir(parents=True, exist_ok=True)

    def write(drawing: Drawing, name: str) -> None:
        frames = drawing.canvases.reshape((-1,) + drawing.canvases.shape[2:])
        for f in filters:
            frames = f.apply(frames, ctx)
        shown = replace(drawing, canvases=np.clip(frames, 0, 1).reshape(drawing.canvases.shape[:2] + frames.shape[1:]))
        path = args.out / f"{args.prefix}-{name}.png"
        sheet(**check(sheet, {"columns": args.n}, "output")).write(shown, path, ctx)
        print(path)

    classes = zoo.model.classes
    write(_rows([zoo.model.sample(args.n, seed=r.seed, category=c) for c in classes]), "prior")
    if args.single:
        pairs = []
        for spec in args.single:
            category, _, recipe = spec.partition("=")
            _, single = _trained(Path(recipe), registry, args.iterations)
            pairs += [
                zoo.model.sample(args.n, seed=r.seed, category=category),
                single.model.sample(args.n, seed=r.seed),
            ]
            print(f"row {len(pairs) - 1}: zoo {category}; row {len(pairs)}: {recipe}")
        write(_rows(pairs), "vs-single")


if __name__ == "__main__":
    main()
