"""The studio's state and operations, with no HTTP in sight: recipes from the page, uploads,
cached models, generations and training jobs. server.py puts them on the web.

Everything goes through the same code as `qd run`: the plugin registry, recipe.parse (the
same checks, the same one-line errors) and engine.Run (the same model, `model.from`,
`best_of`, `mode:` and filters; training with a progress callback). Errors are qd's own
(errors.NotFound, Conflict, TooLarge carry their HTTP status); server.py answers with them.
The page never names a file: a file parameter may only be `upload:ID` (a file this module
wrote into its private temporary folder) or a file the starting recipe itself named.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from .. import engine, params, paths, sources
from ..errors import Conflict, InputError, NotFound, NotTrained, QdError, RecipeError, TooLarge
from ..ink import two_inks
from ..interfaces import Context, SeedInput
from ..recipe import Recipe, parse

MAX_UPLOAD = 4 << 20  # decoded image bytes
MAX_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding
UPLOAD_PREFIX = "upload:"
PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")
KEEP_GENERATIONS = 8
KEEP_UPLOADS = 64

# Used when `qd studio` is started without a recipe and no model pack draws cats (see
# default_recipe): small enough to train in minutes.
DEFAULT_RECIPE = {
    "name": "studio-cat",
    "dataset": {"use": "quickdraw", "category": "cat"},
    "train": {"iterations": 1500, "batch_size": 100, "learning_rate": 0.001},
    "generate": {"n": 16},
    "seeds": [{"use": "prior"}],
    # The shipped recipes' display chain: crisp ink at Quick Draw's stroke weight, dark on
    # white (docs/quality.md#ink).
    "filters": [{"use": "ink", "size": 84, "threshold": 0.55, "softness": 0.5}, {"use": "invert"}],
    "output": {"use": "gif", "frames": "steps", "attention": True, "duration": 0.15, "hold_last": 1.0},
}


# The pack the default recipe draws from when it is there: the one qd ships (docs/packs.md).
DEFAULT_PACK = "zoo-26"


def default_recipe(registry) -> dict:
    """The recipe the page starts with when `qd studio` is given none: DEFAULT_RECIPE, drawing
    its cats from a model pack when one draws cats at its size (DEFAULT_PACK first), so that
    the first Generate draws at once; else DEFAULT_RECIPE as it is, which trains its own."""
    from ..config import ModelConfig

    shape = (ModelConfig.height, ModelConfig.width)  # DEFAULT_RECIPE's model is the default one
    name = sources.pack_for(registry, DEFAULT_RECIPE["dataset"]["category"], shape, prefer=DEFAULT_PACK)
    if name is None:
        return DEFAULT_RECIPE
    # if_missing: train: were the pack removed while the page is open, Train still works.
    return {**DEFAULT_RECIPE, "model": {"from": name, "if_missing": "train"}}


_OBJECT_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")


def one_line(text: str) -> str:
    """The line the page shows: one line, and no Python object reprs (`<... at 0x7f...>`),
    which say nothing to a user and something about the server."""
    return _OBJECT_REPR.sub("the data", " ".join(str(text).split()))


@dataclass
class Job:
    key: str
    name: str
    total: int
    state: str = "starting"  # starting, running, done, cancelled, failed
    step: int = 0
    start_step: Optional[int] = None
    lx: Optional[float] = None
    lz: Optional[float] = None
    error: Optional[str] = None
    started: float = field(default_factory=time.time)
    first_step_at: Optional[float] = None
    stop: threading.Event = field(default_factory=threading.Event, repr=False)
    thread: Optional[threading.Thread] = field(default=None, repr=False)

    def as_json(self) -> dict:
        rate = eta = None
        if self.first_step_at and self.start_step is not None and self.step > self.start_step:
            elapsed = time.time() - self.first_step_at
            rate = (self.step - self.start_step) / max(elapsed, 1e-9)
            eta = (self.total - self.step) / rate if rate > 0 else None
        return {
            "key": self.key,
            "name": self.name,
            "state": self.state,
            "step": self.step,
            "total": self.total,
            "lx": self.lx,
            "lz": self.lz,
            "steps_per_s": rate,
            "eta_s": eta,
            "error": self.error,
            "elapsed_s": time.time() - self.started,
        }


@dataclass
class Generation:
    run: engine.Run
    drawing: Any
    uploads: dict  # upload id -> stored path, for "copy as recipe"


class Studio:
    """The server's state: plugins, the starting recipe, a private folder, models, jobs."""

    def __init__(self, plugins, recipe_path: Optional[Path] = None, workdir: Optional[Path] = None):
        self.plugins = plugins
        self.registry = plugins.registry
        self.tmp = Path(workdir or tempfile.mkdtemp(prefix="qd-studio-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        os.chmod(self.tmp, 0o700)
        self.uploads = self.tmp / "uploads"
        self.uploads.mkdir(exist_ok=True)
        if recipe_path is not None:
            from ..recipe import load

            loaded = load(recipe_path, self.registry)  # a bad starting recipe fails at startup
            self.base_data, self.base_path = loaded.raw, loaded.path
        else:
            self.base_data, self.base_path = default_recipe(self.registry), self.tmp / "studio.yaml"
        # Files the starting recipe names are the only on-disk paths a page may send back.
        self.allowed_files = set(self._paths_in(self.base_data))
        # The same for `model.from`: the starting recipe's own value (a recipe the server was
        # given), or a model in the cache (see _shared_source). Nothing else is ever opened.
        base_model = self.base_data.get("model") if isinstance(self.base_data, dict) else None
        self.base_from = base_model.get("from") if isinstance(base_model, dict) else None
        self.base_start = base_model.get("start") if isinstance(base_model, dict) else None
        self.lock = threading.Lock()
        self.models: dict[str, Any] = {}
        self.datasets: dict[str, Any] = {}
        self.generations: OrderedDict[str, Generation] = OrderedDict()
        self.jobs: dict[str, Job] = {}
        self.upload_order: list[str] = []

    # --- recipes from the page -------------------------------------------------------------

    def _path_params(self, kind: str, use: Any) -> set[str]:
        if not isinstance(use, str) or use not in self.registry.entries[kind]:
            return set()
        fn = self.registry.entries[kind][use].factory
        return {name for name, p in params.parameters(fn).items() if "path" in params.describe_type(p.annotation)}

    def _steps(self, data: dict):
        """(kind, where, step dict) of every step that is a mapping."""
        sections = [
            ("datasets", "dataset", data.get("dataset")),
            ("writers", "output", data.get("output")),
            ("generators", "mode", data.get("mode")),
        ]
        for kind, key in (("seed_strategies", "seeds"), ("filters", "filters")):
            if isinstance(data.get(key), list):
                sections += [(kind, f"{key}[{i}]", s) for i, s in enumerate(data[key])]
        return [(k, w, s) for k, w, s in sections if isinstance(s, dict)]

    def _paths_in(self, data: dict) -> list[Path]:
        out = []
        folder = self.base_path.parent
        for kind, _, step in self._steps(data):
            for name in self._path_params(kind, step.get("use")):
                value = step.get(name)
                if isinstance(value, str) and value:
                    out.append(_resolved(value, folder))
        return out

    def intake(self, data: Any) -> tuple[Recipe, dict]:
        """A recipe sent by the page -> (validated Recipe, uploads it uses). File parameters
        are rewritten from `upload:ID` to the private copy, or must be the starting recipe's."""
        if not isinstance(data, dict):
            raise RecipeError("the request must hold a recipe object (`recipe: {...}`)", "studio")
        data = json.loads(json.dumps(data))  # a private copy, JSON types only
        if isinstance(data.get("output"), dict) and "path" in data["output"]:
            raise RecipeError(
                "the studio does not write where the page says: downloads go to your browser", "studio: output.path"
            )
        for key, base in (("from", self.base_from), ("start", self.base_start)):
            if isinstance(data.get("model"), dict) and key in data["model"]:
                data["model"][key] = self._shared_source(data["model"][key], key, base)
        used = {}
        for kind, where, step in self._steps(data):
            for name in self._path_params(kind, step.get("use")):
                if name not in step:
                    continue
                value = step[name]
                if isinstance(value, str) and value.startswith(UPLOAD_PREFIX):
                    uid = value[len(UPLOAD_PREFIX) :]
                    stored = self.upload_path(uid)
                    step[name] = str(stored)
                    used[uid] = stored
                    continue
                p = _resolved(str(value), self.base_path.parent)
                if p is None or p not in self.allowed_files:
                    raise RecipeError(
                        "the studio does not open files named by the page: upload the image instead",
                        f"studio: {where}.{name}",
                    )
        return parse(data, self.base_path, self.registry, label="studio"), used

    def _shared_source(self, source: Any, key: str = "from", base: Any = None) -> Any:
        """`model.from` (or `model.start`) as the recipe loader may resolve it: the starting
        recipe's own value (`base`), the name of a model pack (imported or installed: `qd models`
        lists it), or the recipe (rebuilt into the private folder from its recipe.json) of a
        model in the cache, named by its name or folder. Never a path or name the page made up."""
        if isinstance(source, str) and source == base:
            return source
        if isinstance(source, str) and source in self._pack_names():
            # A pack name has no '/' and no suffix (packs.NAME): the loader looks for
            # NAME.yaml beside the starting recipe (a model trained here comes first, as in
            # `qd run`), then for the pack.
            return source
        if isinstance(source, str):
            made = sources.cached_recipe(source)
            if made is not None:
                row, made = made
                sections = {k: made.get(k) for k in ("name", "dataset", "model", "train") if made.get(k) is not None}
                target = self.tmp / "shared" / f"{row['folder']}.yaml"
                target.parent.mkdir(exist_ok=True)
                target.write_text(yaml.safe_dump(sections, sort_keys=False))
                return str(target)
        known = [repr(base)] if isinstance(base, str) else []
        known += [repr(n) for n in sorted(self._pack_names())]
        known += [repr(r["folder"]) for r in sources.cached_models() if r["finished"] and r["recipe"]]
        raise RecipeError(
            f"the studio does not open recipes named by the page: `{key}` may name "
            + (", ".join(known[:8]) if known else "no model yet (train one first)"),
            f"studio: model.{key}",
        )

    def _pack_names(self) -> set[str]:
        return sources.pack_names(self.registry)

    def upload_path(self, uid: str) -> Path:
        if not (len(uid) == 32 and all(c in "0123456789abcdef" for c in uid)):
            raise InputError(f"{uid[:40]!r} is not an upload id: upload the image again")
        path = self.uploads / f"{uid}.png"
        if not path.is_file():
            raise NotFound(f"upload {uid} is not on this server (was it restarted?): upload the image again")
        return path

    # --- uploads ---------------------------------------------------------------------------

    def upload(self, data_url: Any, shape: tuple[int, int]) -> dict:
        """Store an image (a data URL) after decoding it with the file-image rules."""
        from ..images import open_image

        if not isinstance(data_url, str) or not data_url.startswith("data:image/") or "," not in data_url:
            raise InputError("send the image as a data URL (data:image/png;base64,...)")
        try:
            raw = base64.b64decode(data_url.split(",", 1)[1], validate=True)
        except ValueError:
            raise InputError("the image's base64 is corrupt: upload it again") from None
        if len(raw) > MAX_UPLOAD:
            raise TooLarge(f"the image is {len(raw) / 1e6:.1f} MB; the limit is {MAX_UPLOAD >> 20} MB")
        try:
            # qdcore.images: the size rule every image qd opens shares; uploads add a stricter one.
            with open_image(raw, name="the upload") as im:
                if im.width * im.height > MAX_PIXELS:
                    raise InputError(f"the image is {im.width}x{im.height} pixels; the limit is 4096x4096")
                im.load()
                # Re-encoded as PNG: what is stored is pixels, never the sender's bytes. PNG
                # holds fewer modes than JPEG or TIFF (CMYK, YCbCr, LAB, float): those become RGB(A),
                # as file-image would read them.
                if im.mode not in PNG_MODES:
                    im = im.convert("RGBA" if {"A", "a"} & set(im.getbands()) else "RGB")
                clean = io.BytesIO()
                im.save(clean, format="PNG")
        except QdError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoder failure is bad input
            raise InputError(f"the upload is not a readable image ({type(e).__name__}); give a PNG or JPEG") from None
        uid = uuid.uuid4().hex
        path = self.uploads / f"{uid}.png"
        from ..atomic import atomic_path

        # The folder stays bounded: the oldest uploads go first (a recipe using one says so).
        with self.lock:
            self.upload_order.append(uid)
            while len(self.upload_order) > KEEP_UPLOADS:
                (self.uploads / f"{self.upload_order.pop(0)}.png").unlink(missing_ok=True)

        with atomic_path(path) as tmp:
            tmp.write_bytes(clean.getvalue())
        # The same rules as a recipe's file-image step decide what the seed looks like.
        entry = self.registry.get("seed_strategies", "file-image")
        seed = entry.factory(path=path).apply(
            None,
            SeedInput(n=1),
            Context(
                image_shape=shape,
                rng=np.random.default_rng(0),
                recipe_dir=self.tmp,
                data_dir=None,
                cache_dir=paths.cache_dir(),
            ),
        )
        return {"id": uid, "ref": UPLOAD_PREFIX + uid, "preview": png_data_url(np.asarray(seed)[0])}

    # --- models ----------------------------------------------------------------------------

    def pipeline(self, r: Recipe) -> engine.Run:
        """The recipe's engine.Run, with the dataset and the models this studio has loaded."""
        with self.lock:
            return engine.Run(r, data=self.datasets.get(_data_key(r)), models=self.models)

    def dataset(self, run: engine.Run):
        key = _data_key(run.recipe)
        with self.lock:
            if key not in self.datasets:
                self.datasets[key] = run.data()
            return self.datasets[key]

    def trained(self, run: engine.Run):
        """The model the recipe draws with (its own, or its `model.from` one), never trained here."""
        r = run.recipe
        key = str(run.source.own)
        with self.lock:
            if key in self.jobs and self.jobs[key].state in ("starting", "running"):
                raise Conflict("this model is training right now: wait for it to finish, or cancel it")
        self.dataset(run)
        try:
            return run.model(train=False)
        except NotTrained:
            raise NotTrained(
                f"the model for recipe {r.name!r} is not trained yet: press Train (or run `qd train`) first"
            ) from None

    def check(self, data: Any) -> dict:
        """The page's recipe checked as `qd validate` would, and whether it can draw now."""
        r, _ = self.intake(data)
        source = engine.Run(r).source
        job = self.jobs.get(str(source.own))
        return {
            "ok": True,
            "name": r.name,
            "model_key": source.key,
            "trained": source.can_draw,
            "training": bool(job and job.state in ("starting", "running")),
            "draws_from": getattr(source.serving, "label", None),
            # `model.start`: Train fine-tunes that model's weights (the same road as `qd train`).
            "starts_from": getattr(source.start, "label", None),
        }

    # --- generate --------------------------------------------------------------------------

    def generate(self, data: Any, n: Optional[int]) -> dict:
        start = time.perf_counter()
        generate = data.get("generate") or {} if isinstance(data, dict) else None
        if n is not None and isinstance(generate, dict):
            # The page's count is checked as the recipe's generate.n (the line names that key).
            data = {**data, "generate": {**generate, "n": n}}
        r, used = self.intake(data)
        run = self.pipeline(r)
        trained = self.trained(run)
        # What `qd run` draws: the seeds, `best_of`, a `mode:` (Finish my drawing, Morph), the filters.
        drawing = run.drawing()
        gid = uuid.uuid4().hex
        with self.lock:
            self.generations[gid] = Generation(run, drawing, used)
            while len(self.generations) > KEEP_GENERATIONS:
                self.generations.popitem(last=False)
        canvases = np.asarray(drawing.canvases)
        _, count, h, w = canvases.shape
        windows = None if drawing.windows is None else np.asarray(drawing.windows).round(3).tolist()
        if drawing.given is not None:
            # A completion: the person's drawing alone first, then each step, the model's ink in blue.
            given = np.asarray(drawing.given, np.float32)
            canvases = np.stack([two_inks(given, c) for c in [given, *canvases]])
            windows = None if windows is None else [None, *windows]
        # One PNG strip per step (the samples side by side): small, and lossless.
        frames = [png_data_url(np.concatenate(list(step), axis=1)) for step in canvases]
        return {
            "id": gid,
            "steps": len(frames),
            "n": count,
            "height": h,
            "width": w,
            "frames": frames,
            "windows": windows,
            "write_n": drawing.write_n,
            "model_shape": list(drawing.model_shape),
            "source": drawing.source,
            "model_step": trained.step,
            "seconds": time.perf_counter() - start,
        }

    def download(self, gid: str, kind: str) -> tuple[bytes, str]:
        with self.lock:
            g = self.generations.get(gid)
        if g is None:
            raise NotFound("that generation is gone (the server keeps the last 8): generate again")
        if kind not in ("gif", "png"):
            raise NotFound("downloads are .gif or .png")
        name = {"gif": "gif", "png": "png-sheet"}[kind]
        r = g.run.recipe
        # The recipe's own writer settings when it names this writer, so the download is
        # what `qd run` of "copy as recipe" writes; else the writer's defaults with steps.
        given = (
            dict(r.output.params)
            if r.output.use == name
            else {"frames": "steps", "attention": g.drawing.windows is not None}
        )
        if g.drawing.windows is None:
            given["attention"] = False  # a morph's frames have no write window to box
        writer = self.registry.get("writers", name).factory(**given)
        out = self.tmp / f"{gid}.{kind}"
        g.run.write(out, g.drawing, writer)
        try:
            return out.read_bytes(), f"{g.run.stem}.{kind}"
        finally:
            out.unlink(missing_ok=True)

    def as_yaml(self, data: Any) -> dict:
        """YAML that reproduces the page's recipe with `qd run`, plus the seed images to save."""
        r, used = self.intake(data)
        data = json.loads(json.dumps(data))
        files = []
        for kind, _, step in self._steps(data):
            for name in self._path_params(kind, step.get("use")):
                value = step.get(name)
                if isinstance(value, str) and value.startswith(UPLOAD_PREFIX):
                    uid = value[len(UPLOAD_PREFIX) :]
                    step[name] = f"studio-seed-{uid[:8]}.png"
                    files.append({"name": step[name], "url": f"/api/uploads/{uid}.png"})
        head = "# Made in qd studio. Run it with: qd run THIS.yaml\n"
        for f in files:
            head += f"# Save {f['url']} beside this file as {f['name']}.\n"
        head += self._portable_from(data, "from", self.base_from) + self._portable_from(data, "start", self.base_start)
        return {
            "yaml": head + yaml.safe_dump(data, sort_keys=False),
            "files": files,
            "model_key": sources.resolve(r).key,
        }

    def _portable_from(self, data: dict, key: str, base: Any) -> str:
        """`model.from` (or `model.start`, the `key`) naming a cached model by its folder
        (`tiny-<key>`) is a name only the studio resolves; `qd run` resolves a recipe beside the
        file, or a pack. The copy names the recipe that trained it (its file, or the pack `qd
        models export` makes of it) instead, and says so in a comment (the head's next line)."""
        model = data.get("model")
        source = model.get(key) if isinstance(model, dict) else None
        if not isinstance(source, str) or source == base or source in self._pack_names():
            return ""
        found = sources.cached_recipe(source)
        name = found[1].get("name") if found is not None else None
        if not isinstance(name, str) or not name:
            return ""
        model[key] = name
        return (
            f"# model.{key}: {name!r} is the recipe that trained the cached model {found[0]['folder']}: save this "
            f"file beside {name}.yaml, or import that model as a pack: qd models export {found[0]['folder']} "
            f"{name}.safetensors && qd models import {name}.safetensors\n"
        )

    # --- training --------------------------------------------------------------------------

    def start_training(self, data: Any) -> dict:
        r, _ = self.intake(data)
        run = self.pipeline(r)
        key = str(run.source.own)
        with self.lock:
            old = self.jobs.get(key)
            if old and old.state in ("starting", "running"):
                raise Conflict(
                    f"{r.name!r} is already training (step {old.step} of {old.total}): one training job per model"
                )
            job = Job(key=key, name=r.name, total=r.train.iterations)
            self.jobs[key] = job
            # The model, and what recipes drawing from it by `model.from` loaded.
            sources.forget_loaded(self.models, run.source.own)
        job.thread = threading.Thread(target=self._train, args=(job, run), daemon=True, name=f"qd-train-{r.name}")
        job.thread.start()
        return job.as_json()

    def _train(self, job: Job, run: engine.Run) -> None:
        from ..errors import Cancelled

        def on_step(step: int, total: int, lx: float, lz: float) -> bool:
            if job.start_step is None:
                job.start_step, job.first_step_at = step - 1, time.time()
            job.state, job.step, job.lx, job.lz = "running", step, lx, lz
            return job.stop.is_set()

        try:
            self.dataset(run)
            job.state = "running"
            trained = run.model(on_step=on_step)
            job.step = trained.step
            job.state = "done"
        except Cancelled as e:
            job.state, job.error = "cancelled", one_line(e)
        except QdError as e:
            job.state, job.error = "failed", "Error: " + one_line(e)
        except Exception as e:  # noqa: BLE001 - a job reports, it never takes the server down
            job.state, job.error = "failed", f"Error: unexpected {type(e).__name__}: {one_line(e)}"

    def cancel(self, key: str) -> dict:
        with self.lock:
            job = self.jobs.get(key)
        if job is None:
            raise NotFound("no such training job")
        if job.state not in ("starting", "running"):
            raise Conflict(f"the job is not running (it is {job.state})")
        job.stop.set()
        return job.as_json()

    def close(self) -> None:
        """Stop: running jobs save a checkpoint at their next step (like Cancel), then the
        private folder goes."""
        for job in self.jobs.values():
            job.stop.set()
        for job in self.jobs.values():
            if job.thread is not None:
                job.thread.join(timeout=60)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _data_key(r: Recipe) -> str:
    return json.dumps([r.dataset.use, {k: str(v) for k, v in r.dataset.params.items()}, r.model.height, r.model.width])


def _resolved(value: str, folder: Path) -> Optional[Path]:
    """The real path `value` names (relative to `folder`), or None when it has none: a
    symlink loop (RuntimeError on Python 3.11), a name the OS refuses (a NUL byte)."""
    try:
        p = Path(value).expanduser()
        return (p if p.is_absolute() else folder / p).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
