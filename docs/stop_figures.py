"""docs/performance.md's "Stopping at the plateau" figures: what a model folder's stop record
says, and how well the model reconstructs the training-batch seeds the recipe draws.

    QD_DATA_DIR=../shared/data/quickdraw .venv/bin/python docs/stop_figures.py \
        recipes/windmill.yaml MODEL_FOLDER [MODEL_FOLDER ...]

For each trained model folder (`qd models` lists them; a copy of one taken at the stop works
too) prints one JSON line: its step, the stop (step, reason), the last training-loss figure
of its checks, and the reconstruction error of the recipe's n seeds (the last training batch,
then the recipe's perturbations, drawn with the recipe's seed) against the clean drawings
they came from: mean absolute pixel error of the final canvas (0..1) and its cross-entropy
(nats per image, as L^x counts it); and the same for every training drawing, clean, so that
models of different steps are compared on the same images. The figures do not depend on load.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from qdcore import engine
from qdcore.plugin_manager import build
from qdcore.recipe import load
from qdcore.training import train


def _errors(recipe, model, seeds: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """(mean absolute pixel error, cross-entropy in nats per image) of the final canvases
    drawn from `seeds` against `clean`."""
    final = np.clip(engine.generate(recipe, model, seeds).canvases[-1], 1e-6, 1 - 1e-6)
    bce = -(clean * np.log(final) + (1 - clean) * np.log(1 - final)).sum(axis=(1, 2))
    return round(float(np.abs(final - clean).mean()), 4), round(float(bce.mean()), 2)


def figures(recipe, data, folder: Path) -> dict:
    run = engine.Run(recipe, data=data, trained=train.load(recipe.model, folder))
    trained = run.model()
    n = recipe.generate.n
    clean = trained.last_batch[np.arange(n) % len(trained.last_batch)]
    mae, bce = _errors(recipe, trained.model, run.seeds(), clean)
    # The same images for every model: all training drawings, clean (the last batch differs
    # from step to step).
    train_idx, _ = train.split(len(data.images), recipe.train, train.stream_labels(data))
    every = data.as_float(np.sort(train_idx))
    every_mae, every_bce = _errors(recipe, trained.model, every, every)
    finished = json.loads((folder / "finished.json").read_text())
    state = folder / "stop.json"
    checks = json.loads(state.read_text())["checks"] if state.exists() else []
    return {
        "folder": str(folder),
        "step": trained.step,
        "stopped": finished.get("stopped"),
        "last_check": checks[-1] if checks else None,
        "seed_mae": mae,
        "seed_bce_nats": bce,
        "train_images": len(every),
        "train_mae": every_mae,
        "train_bce_nats": every_bce,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", type=Path)
    ap.add_argument("folders", type=Path, nargs="+")
    args = ap.parse_args()
    recipe = load(args.recipe, build().registry)
    data = engine.Run(recipe).data()
    for folder in args.folders:
        print(json.dumps(figures(recipe, data, folder)))


if __name__ == "__main__":
    main()
