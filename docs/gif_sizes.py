"""docs/builtins.md's GIF sizes: each shipped recipe's GIF frames encoded as qd did before
(imageio's Pillow plugin: a colour table per frame) and as it does now (one palette,
plugins/writers.py's gif_bytes), and how far the new file's frames are from the frames the
writer got.

    QD_DATA_DIR=../shared/data/quickdraw QD_CACHE_DIR=/tmp/gifcache \\
        .venv/bin/python docs/gif_sizes.py [RECIPE ...]

Prints one JSON line a recipe (default: every recipes/*.yaml). Most run as shipped: cat,
apple, finish-cat and cat-to-dog draw from the zoo-26 pack in seconds, the five stroke recipes
fine-tune it for up to 1,000 steps (a minute or two each, once: the cache keeps the model). The
ones that would train for long draw from the pack instead (OVERRIDES). Sizes differ a little
from run to run for the recipes that train (training is not bit-reproducible across processes).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

from qdcore import engine
from qdcore.plugin_manager import build
from qdcore.recipe import load
from qdplugins.writers import gif_bytes

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = {
    "cat-quality": ["model.from=zoo-26"],  # instead of 2,000 steps from random weights
    "apple-quality": ["model.from=zoo-26"],
    "zoo-345": ["model.start=zoo-26", "train.iterations=100"],
    # The pack is this recipe trained; a recipe cannot start from itself, so a copy does.
    "zoo-26": ["model.start=zoo-26", "train.iterations=1"],
}


def frames_of(path: Path) -> tuple[np.ndarray, list[int], int]:
    """The frames, delays and loop the recipe's GIF writer gets."""
    registry = build().registry
    sets = OVERRIDES.get(path.stem, [])
    with tempfile.TemporaryDirectory() as folder:
        if path.stem == "zoo-26":
            path = Path(shutil.copy(path, Path(folder) / "zoo-26-drawn.yaml"))
        recipe = load(path, registry, sets)
        run = engine.Run(recipe)
        writer = run.built.writer
        frames = np.stack(writer.images(run.drawing()))
    return frames, writer.durations_ms(len(frames)), writer.loop


def read(blob: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as gif:
        out = []
        for i in range(gif.n_frames):
            gif.seek(i)
            out.append(np.asarray(gif.convert("RGB")))
    return np.stack(out)


def figures(path: Path) -> dict:
    frames, durations, loop = frames_of(path)
    before = iio.imwrite(
        "<bytes>",
        frames,
        extension=".gif",
        plugin="pillow",
        is_batch=True,
        duration=durations[0] if len(durations) == 1 else durations,
        loop=loop,
    )
    after = gif_bytes(frames, durations, loop)
    # Both files fold a frame equal to the one before it into it.
    kept = [0] + [i for i in range(1, len(frames)) if not np.array_equal(frames[i], frames[i - 1])]
    given = frames[kept] if frames.ndim == 4 else np.repeat(frames[kept, ..., None], 3, axis=-1)
    off = np.abs(read(after).astype(int) - given)
    return {
        "recipe": path.stem,
        "set": OVERRIDES.get(path.stem, []),
        "frames": len(frames),
        "size": list(frames.shape[1:3]),
        "before_kb": round(len(before) / 1000, 1),
        "after_kb": round(len(after) / 1000, 1),
        "smaller": round(len(before) / len(after), 2),
        "mean_off_255": round(float(off.mean()), 2),
        "max_off_255": int(off.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", type=Path)
    args = parser.parse_args()
    for path in args.recipes or sorted((ROOT / "recipes").glob("*.yaml")):
        print(json.dumps(figures(path)), flush=True)


if __name__ == "__main__":
    main()
