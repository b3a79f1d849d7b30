"""docs/finetune.md's figures: fine-tuning from a pack (`model.start`) against training from
random weights, at equal steps of the same model (so equal compute: the wall time is printed).

    QD_DATA_DIR=../shared/data/quickdraw .venv/bin/python docs/finetune_figures.py strokes
    QD_DATA_DIR=../shared/data/quickdraw .venv/bin/python docs/finetune_figures.py bitmap
    QD_DATA_DIR=../shared/data/quickdraw .venv/bin/python docs/finetune_figures.py rows

`strokes`: 8 categories the shipped zoo-26 pack never saw, 25 drawings each (20 trained, 5 held
out: `train.holdout: 0.2`), from the pack (the warm-start defaults) and from random weights (qd's
defaults), each at 250 and 1,000 steps, both to the whole budget (`stop: budget`); the pack with
no training too. `bitmap`: a start that never saw bicycle (zoo-26's recipe less bicycle, trained
here for --start-steps), then bicycle's 3,000 drawings (2,700 trained, 300 held out) from it and
from random weights, with the recognizer's figures of prior samples. `rows`: how a new category's
class row is chosen (the closest row, the mean of rows), as the held-out bound at step 0 and
after 250 steps. `sheets`: prior samples of `strokes`' 1,000-step models, fine-tuned above and
from random weights below (docs/img/finetune-*.png; run it with the same QD_CACHE_DIR as
`strokes` to draw those very models). Each run prints one JSON line; the step plan is forced (QD_STEP_PLAN, default
float32-xla) so both arms run the same step. The cache is a fresh temporary folder unless
QD_CACHE_DIR is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

STROKES = ["windmill", "whale", "coffee cup", "hexagon", "triangle", "lighthouse", "umbrella", "guitar"]
ZOO_26 = [
    "airplane", "alarm clock", "apple", "banana", "bicycle", "bird", "book", "boomerang", "butterfly", "carrot",
    "cat", "diamond", "dog", "eye", "fish", "flower", "horse", "house", "house plant", "pizza", "rabbit",
    "rainbow", "scissors", "snowflake", "train", "zebra",
]  # fmt: skip
UNSEEN = "bicycle"
CHAIN = "filters: [{use: ink, size: 84, threshold: 0.55, softness: 0.5}]\n"


def recipe_text(name: str, dataset: str, start: str | None, train: str) -> str:
    model = f"model: {{start: {start}}}\n" if start else ""
    return f"name: {name}\nseed: 0\ndataset: {dataset}\n{model}train: {{{train}}}\ngenerate: {{n: 500}}\n{CHAIN}"


def run(folder: Path, text: str, *, recognize: bool = False) -> dict:
    """Train the recipe (timed) and measure it: held-out bound, reconstruction error, and with
    `recognize` the recognizer's figures of 500 prior samples through the display chain."""
    from qdcore import engine
    from qdcore.plugin_manager import build
    from qdcore.recipe import load

    path = folder / "recipe.yaml"
    path.write_text(text)
    r = load(path, build().registry)
    pipeline = engine.Run(r)
    pipeline.data()
    start = time.perf_counter()
    trained = pipeline.model()
    return measure(pipeline, trained, time.perf_counter() - start, recognize)


def measure(pipeline, trained, seconds: float, recognize: bool = False) -> dict:
    from qdcore.training import train

    r, data = pipeline.recipe, pipeline.data()
    out = {
        "recipe": r.name,
        "start": r.start.name if r.start else None,
        "steps": trained.step,
        "seconds": round(seconds, 1),
        **{k: round(v, 2) for k, v in train.evaluate(trained, data, r.train).items() if k in ("bound", "lx", "lz")},
        "reconstruction_error": train.reconstruction_error(trained, data, r.train, n=500, seed=r.seed),
    }
    finished = json.loads((Path(trained.workdir) / "finished.json").read_text())
    if "start" in finished:
        out["rows"] = finished["start"]["rows"]
    if recognize:
        category, why = pipeline.eval_category()
        if category is None:
            raise SystemExit(why)
        figures = pipeline.recognition(category)
        out.update({k: figures[k] for k in ("recognized", "frechet", "frechet_floor")})
        out["frechet_over_floor"] = round(figures["frechet"] / figures["frechet_floor"], 2)
    print(json.dumps(out), flush=True)
    return out


def strokes(folder: Path) -> None:
    for category in STROKES:
        dataset = f"{{use: quickdraw-strokes, category: {category}}}"
        slug = category.replace(" ", "-")
        run(folder, recipe_text(f"ft-{slug}-0", dataset, "zoo-26", "holdout: 0.2, iterations: 0, stop: budget"))
        for steps in (250, 1000):
            train = f"holdout: 0.2, iterations: {steps}, stop: budget"
            run(folder, recipe_text(f"ft-{slug}-{steps}", dataset, "zoo-26", train))
            run(folder, recipe_text(f"scratch-{slug}-{steps}", dataset, None, train))


def zoo_25(folder: Path, steps: int) -> None:
    """The start that never saw bicycle: zoo-26's recipe without it, exported and imported as a pack."""
    from qdcore import engine, packs, paths
    from qdcore.plugin_manager import build
    from qdcore.recipe import load

    if packs.imported(paths.cache_dir(), "zoo-25") is not None:
        return
    cats = ", ".join(c for c in ZOO_26 if c != UNSEEN)
    path = folder / "zoo-25.yaml"
    path.write_text(
        f"name: zoo-25\nseed: 0\ndataset: {{use: quickdraw, category: [{cats}], mix: balanced}}\n"
        f"train: {{iterations: {steps}, stop: budget}}\n"
    )
    r = load(path, build().registry)
    start = time.perf_counter()
    engine.Run(r).model()
    print(json.dumps({"zoo-25": steps, "seconds": round(time.perf_counter() - start, 1)}), flush=True)
    packs.export("zoo-25", folder / "zoo-25.safetensors", paths.cache_dir(), {})
    packs.import_pack(folder / "zoo-25.safetensors", paths.cache_dir())


def bitmap(folder: Path, start_steps: int) -> None:
    zoo_25(folder, start_steps)
    dataset = f"{{use: quickdraw, category: {UNSEEN}}}"
    for steps in (500, 2000):
        train = f"iterations: {steps}, stop: budget"
        run(folder, recipe_text(f"ft-{UNSEEN}-{steps}", dataset, "zoo-25", train), recognize=True)
        run(folder, recipe_text(f"scratch-{UNSEEN}-{steps}", dataset, None, train), recognize=True)


def rows(folder: Path) -> None:
    """The same fine-tune with the start's rows chosen each way, trained into folders of its
    own (the row rule is part of a model's cache key: qd itself uses config.WARM_START_ROWS)."""
    from qdcore import engine
    from qdcore.plugin_manager import build
    from qdcore.recipe import load
    from qdcore.training import train, warm_start

    for category in STROKES:
        dataset = f"{{use: quickdraw-strokes, category: {category}}}"
        for rule in ("closest", "mean"):
            for steps in (0, 250):
                path = folder / "recipe.yaml"
                train_cfg = f"holdout: 0.2, iterations: {steps}, stop: budget"
                path.write_text(recipe_text(f"rows-{rule}-{category}-{steps}", dataset, "zoo-26", train_cfg))
                r = load(path, build().registry)
                pipeline = engine.Run(r)
                source = pipeline.source.start
                start = warm_start.Start(source.label, source.identity(), engine.source_model(source), rule)
                clock = time.perf_counter()
                workdir = folder / f"{rule}-{category}-{steps}"
                trained = train.train(r.model, r.train, pipeline.data(), workdir, start=start)
                measure(pipeline, trained, time.perf_counter() - clock)


def sheets(folder: Path, out: Path) -> None:
    """docs/img/finetune-CATEGORY.png: 8 prior samples of the 1,000-step models of `strokes`
    (trained there, or now), through the display chain: the fine-tuned one on the top row, the
    one trained from random weights below."""
    import numpy as np
    from PIL import Image

    from qdcore import engine
    from qdcore.plugin_manager import build
    from qdcore.recipe import load

    for category in ("hexagon", "coffee cup", "whale", "windmill"):
        dataset = f"{{use: quickdraw-strokes, category: {category}}}"
        slug = category.replace(" ", "-")
        rows = []
        for name, start in ((f"ft-{slug}-1000", "zoo-26"), (f"scratch-{slug}-1000", None)):
            path = folder / "recipe.yaml"
            path.write_text(recipe_text(name, dataset, start, "holdout: 0.2, iterations: 1000, stop: budget"))
            r = load(path, build().registry).with_overrides(n=8)
            drawing = engine.Run(r).drawing(prior=True, final_only=True)
            rows.append(np.concatenate(list(drawing.final), axis=1))
        sheet = 255 - (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).astype(np.uint8)  # dark ink on white
        Image.fromarray(sheet).save(out / f"finetune-{slug}.png", optimize=True)
        print(json.dumps({"sheet": str(out / f"finetune-{slug}.png")}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["strokes", "bitmap", "rows", "sheets"])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "img", help="where `sheets` writes")
    ap.add_argument("--start-steps", type=int, default=4000, help="zoo-25's training steps (bitmap)")
    args = ap.parse_args()
    os.environ.setdefault("QD_STEP_PLAN", "float32-xla")
    os.environ.setdefault("QD_CACHE_DIR", tempfile.mkdtemp(prefix="qd-finetune-"))
    print(json.dumps({"cache": os.environ["QD_CACHE_DIR"], "plan": os.environ["QD_STEP_PLAN"]}), file=sys.stderr)
    with tempfile.TemporaryDirectory() as folder:
        {
            "strokes": strokes,
            "bitmap": lambda f: bitmap(f, args.start_steps),
            "rows": rows,
            "sheets": lambda f: sheets(f, args.out),
        }[args.what](Path(folder))


if __name__ == "__main__":
    main()
