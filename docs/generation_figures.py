"""Make docs/generation.md's completion figures and pictures.

    QD_DATA_DIR=../shared/data/quickdraw .venv/bin/python docs/generation_figures.py \
        zoo-26-short.yaml --iterations 2000 --categories cat,dog,apple --out docs/img

ZOO is a recipe whose model is trained and in the cache: a class-conditional one (a copy of
recipes/zoo-26.yaml; each category's completions are conditioned on it), or a one-category
one (recipes/cat-quality.yaml with --categories cat --morph ''). For each category: real
drawings neither DRAW (its held-out split) nor the recognizer (its unseen rows) trained on;
the same drawings with the lower half of their ink erased (the `remove-ink` seed step, keep:
top); those halves completed by the model's `complete` (what the built-in mode calls) at
several k, judged as the model drew them and with the person's strokes kept on top (what the
GIF shows); and as many prior samples, drawn from scratch. Prints one JSON line per category
with the recognizer's recognized fraction of each set, and writes a sheet of completions
(partial drawing, then the steps, the model's ink in blue) per category, and a morph sheet.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from qdcore import Drawing, engine, paths, recognizer as recog
from qdcore.training.mixing import split
from qdcore.params import check
from qdcore.plugin_manager import build
from qdcore.recipe import load


def held_out_real(category: str, r, judge, n: int) -> np.ndarray:
    """Up to n drawings of `category` in DRAW's held-out split that the recognizer never saw."""
    rows = np.load(paths.data_dir() / "numpy_bitmap" / f"{category}.npy", mmap_mode="r")
    _, held = split(len(rows), r.train)  # a category's split is the same alone or in a zoo
    unseen, _ = judge.drawings(category)
    fresh = {bytes(np.asarray(u, np.uint8).ravel()) for u in unseen}
    keep = [i for i in held if bytes(np.asarray(rows[i], np.uint8)) in fresh][:n]
    return np.asarray(rows[keep], np.float32).reshape(-1, 28, 28) / 255.0


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("zoo", type=Path)
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--categories", default="cat,dog,apple")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--ks", default="2,5,8,10")
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    ap.add_argument("--morph", default="cat,dog", help="START,END categories of the morph sheet ('' for none)")
    ap.add_argument("--prefix", default="", help="put before the completion sheets' names")
    return ap.parse_args()


def main() -> None:
    args = arguments()
    registry = build().registry
    r = load(args.zoo, registry).with_overrides(iterations=args.iterations)
    pipeline = engine.Run(r)
    model = pipeline.model(train=False).model
    judge = pipeline.classifier()
    ctx = pipeline.context("output")
    remove = registry.get("seed_strategies", "remove-ink").factory(keep="top")
    sheet = registry.get("writers", "png-sheet").factory
    upscale = [registry.get("filters", "upscale").factory(size=56), registry.get("filters", "invert").factory()]

    def write_sheet(drawing: Drawing, name: str) -> None:
        T, n, h, w = drawing.canvases.shape
        frames = drawing.canvases.reshape(T * n, h, w)
        if drawing.given is not None:
            frames = np.concatenate([frames, drawing.given])
        for f in upscale:
            frames = f.apply(frames, ctx)
        given = None if drawing.given is None else frames[T * n :]
        shown = Drawing(frames[: T * n].reshape((T, n) + frames.shape[1:]), None, 0, drawing.source, given=given)
        path = args.out / name
        sheet(**check(sheet, {"frames": "steps"}, "output")).write(shown, path, ctx)
        print(path, flush=True)

    if args.morph:
        start, end = args.morph.split(",")
        morph = registry.get("generators", "morph").factory(frames=8, start=start, end=end, forth_and_back=False)
        write_sheet(morph.generate(model, None, 4, r.seed, ctx), f"morph-{start}-{end}.png")

    def rate(images: np.ndarray, category: str) -> float:
        p, _ = judge.classify(recog.to_bitmaps(images))
        return float(recog.recognized(p, recog.check_known(judge.classes, [category], "cnn")).mean())

    for name in args.categories.split(","):
        category = name if model.classes else None  # a one-category model is asked for none
        real = held_out_real(name, r, judge, args.n)
        partial = remove.apply(real, None, ctx)
        row = {
            "category": name,
            "n": len(real),
            "real": rate(real, name),
            "partial": rate(partial, name),
            "prior": rate(model.sample(len(real), seed=r.seed, category=category).final, name),
        }
        for k in (int(k) for k in args.ks.split(",")):
            done = model.complete(partial, k, seed=r.seed, category=category)
            row[f"completed_k{k}"] = rate(done.final, name)
            # What the GIF shows: the person's strokes kept, the model's ink added to them.
            row[f"kept_k{k}"] = rate(np.maximum(partial, done.final), name)
        print(json.dumps(row), flush=True)

        # The sheet: 4 half-drawings, each completed at the `complete` mode's default k (T/5).
        done = model.complete(partial[:4], max(1, model.cfg.T // 5), seed=r.seed, category=category)
        write_sheet(
            Drawing(done.canvases, None, 0, "completion", given=partial[:4]),
            f"complete-{args.prefix}{name.replace(' ', '-')}.png",
        )


if __name__ == "__main__":
    main()
