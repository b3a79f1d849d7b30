"""Built-in recognizer: `cnn`, a small Keras CNN trained on the Quick, Draw! bitmaps the user has.

It learns every category whose `numpy_bitmap/<category>.npy` is in $QD_DATA_DIR or was
downloaded into the cache (or the `categories` it is given), from at most `per_class`
drawings each, and keeps at least `holdout` drawings of each category (at most half of a
small file) out of training, so `qd eval` can compare against real drawings it never saw.

Trained once, then cached under `<cache>/recognizers/cnn-<key>/` (weights.npz, meta.json),
where the key hashes the categories, their files' sizes and every parameter; the folder is
written beside its final name and renamed into place, so it is complete or absent.
TensorFlow is imported only when it trains or classifies, never by `qd plugins`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import Annotated, Optional

import numpy as np

from qdcore import (
    Classifier,
    Context,
    InputError,
    Range,
    Recognizer,
    check_categories,
    current_umask,
    data_dir as env_data_dir,
    hookimpl,
)

from .datasets import BITMAP_SIDE, categories as known_categories, open_bitmap

FORMAT = 1  # bump when a change makes cached recognizers wrong to reuse
WEIGHTS, META = "weights.npz", "meta.json"
ACCURACY_ROWS = 500  # held-out drawings per category scored after training


class CNN(Recognizer):
    """Conv(w)-pool-Conv(2w)-pool-Conv(4w)-pool, a `features`-unit dense layer (the
    penultimate features), softmax over the categories. Adam, a few epochs."""

    def __init__(
        self,
        categories: Optional[list[str]] = None,
        per_class: Annotated[int, Range(10, 1_000_000)] = 2000,
        holdout: Annotated[int, Range(0, 1_000_000)] = 1000,
        epochs: Annotated[int, Range(1, 1000)] = 4,
        width: Annotated[int, Range(1, 512)] = 32,
        features: Annotated[int, Range(2, 4096)] = 128,
        batch_size: Annotated[int, Range(1, 100_000)] = 128,
        learning_rate: Annotated[float, Range(1e-6, 1.0)] = 1e-3,
        seed: int = 0,
    ):
        if categories is not None:
            categories = check_categories(categories, known_categories(), "cnn")
            if len(categories) < 2:
                raise InputError("cnn: `categories` names one category; a recognizer needs at least two to tell apart")
        self.params = {
            "categories": categories,
            "per_class": per_class,
            "holdout": holdout,
            "epochs": epochs,
            "width": width,
            "features": features,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "seed": seed,
        }

    # --- which files -----------------------------------------------------------------------

    def files(self, ctx: Context) -> dict[str, Path]:
        """category -> numpy_bitmap file, local mirror first, then the cache's downloads."""
        roots = []
        local = ctx.data_dir if ctx.data_dir is not None else env_data_dir()
        if local is not None:
            roots.append(Path(local) / "numpy_bitmap")
        roots.append(Path(ctx.cache_dir) / "quickdraw" / "numpy_bitmap")
        known = set(known_categories())
        found: dict[str, Path] = {}
        for root in roots:
            for path in sorted(root.glob("*.npy")) if root.is_dir() else []:
                if path.stem in known and path.stem not in found:
                    found[path.stem] = path
        wanted = self.params["categories"]
        if wanted is not None:
            missing = [c for c in wanted if c not in found]
            if missing:
                raise InputError(
                    f"cnn: no numpy_bitmap file for {', '.join(repr(m) for m in missing)} in "
                    f"{' or '.join(str(r) for r in roots)}; available: {', '.join(sorted(found)) or '(none)'}"
                )
            found = {c: found[c] for c in wanted}
        if len(found) < 2:
            raise InputError(
                f"cnn: a recognizer needs the bitmaps of at least two categories, found "
                f"{len(found)} in {' or '.join(str(r) for r in roots)}. Fix: set QD_DATA_DIR to a folder "
                "holding numpy_bitmap/<category>.npy files"
            )
        return dict(sorted(found.items()))

    def categories(self, ctx: Context) -> list[str]:
        return list(self.files(ctx))

    def key(self, files: dict[str, Path]) -> str:
        material = {
            "format": FORMAT,
            "params": self.params,
            "files": [[name, path.stat().st_size] for name, path in files.items()],
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]

    def rows(self, category: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(held-out, training) row indices of a category's file, fixed by the seed."""
        perm = np.random.default_rng([self.params["seed"], zlib.crc32(category.encode())]).permutation(n)
        held = min(self.params["holdout"], n // 2)
        return np.sort(perm[:held]), np.sort(perm[held : held + self.params["per_class"]])

    # --- train or load ------------------------------------------------------------------------

    def load(self, ctx: Context) -> "TrainedCNN":
        files = self.files(ctx)
        folder = Path(ctx.cache_dir) / "recognizers" / f"cnn-{self.key(files)}"
        if not (folder / META).is_file():
            self._train(files, folder, ctx)
        meta = json.loads((folder / META).read_text())
        model = build_model(len(files), self.params)
        with np.load(folder / WEIGHTS) as w:
            model.set_weights([w[f"arr_{i}"] for i in range(len(w.files))])
        return TrainedCNN(self, files, model, meta, ctx)

    def _train(self, files: dict[str, Path], folder: Path, ctx: Context) -> None:
        import keras

        start = time.perf_counter()
        bitmaps = {c: open_bitmap(p, ctx) for c, p in files.items()}
        x, y, xv, yv = [], [], [], []
        for label, (cat, arr) in enumerate(bitmaps.items()):
            held, train = self.rows(cat, len(arr))
            x.append(np.asarray(arr[train]))
            y.append(np.full(len(train), label, np.int32))
            xv.append(np.asarray(arr[held[:ACCURACY_ROWS]]))
            yv.append(np.full(min(len(held), ACCURACY_ROWS), label, np.int32))
        x, y = _images(np.concatenate(x)), np.concatenate(y)
        xv, yv = _images(np.concatenate(xv)), np.concatenate(yv)

        keras.utils.set_random_seed(self.params["seed"])
        model = build_model(len(files), self.params)
        trainer = keras.Model(model.inputs, model.outputs[0])
        trainer.compile(
            optimizer=keras.optimizers.Adam(self.params["learning_rate"]),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        callbacks = (
            [] if ctx.quiet else [_Progress(self.params["epochs"], len(x), self.params["batch_size"], len(files))]
        )
        trainer.fit(
            x,
            y,
            batch_size=self.params["batch_size"],
            epochs=self.params["epochs"],
            shuffle=True,
            verbose=0,
            callbacks=callbacks,
        )
        accuracy = float(trainer.evaluate(xv, yv, batch_size=1024, verbose=0)[1]) if len(xv) else None
        meta = {
            "classes": list(files),
            "params": self.params,
            "format": FORMAT,
            "files": {c: {"path": str(p), "size": p.stat().st_size, "rows": len(bitmaps[c])} for c, p in files.items()},
            "trained_on": len(x),
            "held_out_accuracy": accuracy,
            "held_out_scored": len(xv),
            "seconds": time.perf_counter() - start,
            "keras": keras.__version__,
        }
        _save(folder, model, meta)


def _save(folder: Path, model, meta: dict) -> None:
    """The trained recognizer's folder, whole or not at all (made aside, then renamed)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with open(tmp / WEIGHTS, "wb") as f:
            np.savez(f, *model.get_weights())
        (tmp / META).write_text(json.dumps(meta, indent=1))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; a cache folder is like any other
        os.rename(tmp, folder)
    except OSError:
        if not (folder / META).is_file():  # not "another process finished first": a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class TrainedCNN(Classifier):
    def __init__(self, spec: CNN, files: dict[str, Path], model, meta: dict, ctx: Context):
        self.spec, self.files, self.model, self.meta, self.ctx = spec, files, model, meta, ctx
        self.classes = list(meta["classes"])
        self.held_out_accuracy = meta.get("held_out_accuracy")

    def classify(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images, np.float32).reshape(-1, BITMAP_SIDE, BITMAP_SIDE, 1)
        probabilities, features = [], []
        for lo in range(0, len(images), 2048):
            p, f = self.model(images[lo : lo + 2048], training=False)
            probabilities.append(np.asarray(p))
            features.append(np.asarray(f))
        if not probabilities:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, self.spec.params["features"]), np.float32)
        return np.concatenate(probabilities), np.concatenate(features)

    def drawings(self, category: str) -> tuple[np.ndarray, np.ndarray]:
        if category not in self.files:
            raise InputError(f"cnn: no drawings of {category!r}; it knows {', '.join(self.classes)}")
        arr = open_bitmap(self.files[category], self.ctx)
        _, train = self.spec.rows(category, len(arr))
        unseen = np.setdiff1d(np.arange(len(arr)), train)
        side = (BITMAP_SIDE, BITMAP_SIDE)
        return np.asarray(arr[unseen]).reshape((-1,) + side), np.asarray(arr[train]).reshape((-1,) + side)


def _images(rows: np.ndarray) -> np.ndarray:
    return (rows.astype(np.float32) / 255.0).reshape(-1, BITMAP_SIDE, BITMAP_SIDE, 1)


def build_model(classes: int, params: dict):
    """One Keras model with two outputs: class probabilities and the penultimate features."""
    import keras
    from keras import layers

    w = params["width"]
    inputs = keras.Input((BITMAP_SIDE, BITMAP_SIDE, 1))
    x = inputs
    for filters in (w, 2 * w, 4 * w):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)  # 28 -> 14 -> 7 -> 3
    features = layers.Dense(params["features"], activation="relu", name="features")(layers.Flatten()(x))
    probabilities = layers.Dense(classes, activation="softmax", name="probabilities")(layers.Dropout(0.3)(features))
    return keras.Model(inputs, [probabilities, features])


def _progress_class():
    import keras

    class Progress(keras.callbacks.Callback):
        """A rich progress bar on stderr (stdout stays clean for `qd eval`'s JSON)."""

        def __init__(self, epochs: int, n: int, batch: int, classes: int):
            super().__init__()
            self.total = epochs * -(-n // batch)
            self.label = f"training recognizer cnn on {n} drawings of {classes} categories (once; cached)"

        def on_train_begin(self, logs=None):
            from rich.console import Console
            from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self.bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("acc {task.fields[acc]}"),
                TimeRemainingColumn(),
                transient=True,
                console=Console(stderr=True),
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=self.total, acc="-")

        def on_train_batch_end(self, batch, logs=None):
            acc = (logs or {}).get("accuracy")
            self.bar.update(self.task, advance=1, acc="-" if acc is None else f"{float(acc):.3f}")

        def on_train_end(self, logs=None):
            self.bar.stop()

    return Progress


def _Progress(*args):
    return _progress_class()(*args)


@hookimpl
def qd_register_recognizers(register):
    register("cnn", CNN, description="a small Keras CNN trained on the Quick, Draw! bitmaps available locally")
