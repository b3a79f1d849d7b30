"""Built-in datasets: Quick, Draw! bitmaps, Quick, Draw! strokes, and a folder of images.

Files are looked up in the local mirror first ($QD_DATA_DIR, laid out like the bucket's
`full/` folder), then in the cache, and only then downloaded (into the cache, atomically,
the size checked against Content-Length). $QD_DOWNLOAD_URL replaces the bucket's URL, which
is how the tests exercise the real download code against a server on 127.0.0.1.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated, Iterator, Literal, Optional, Union

import numpy as np
from PIL import Image, ImageOps

from qdcore import (
    ALL,
    Context,
    Dataset,
    ImageSet,
    ImageStack,
    InputError,
    Range,
    RecipeError,
    atomic_path,
    check_categories,
    data_dir as env_data_dir,
    hookimpl,
    open_image,
    reading,
    remove_stale_parts,
)

from .rasterize import VERSION as RASTER_VERSION, rasterize_many

DEFAULT_URL = "https://storage.googleapis.com/quickdraw_dataset/full/"
URL_ENV = "QD_DOWNLOAD_URL"
BITMAP_SIDE = 28
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}

Binarize = Literal["none", "threshold", "dynamic"]
Limit = Optional[Annotated[int, Range(1, None)]]
Threshold = Optional[Annotated[float, Range(0.0, 1.0)]]
Mix = Literal["balanced", "proportional"]


def categories() -> list[str]:
    """The 345 Quick, Draw! category names, as spelled in the bucket's file names."""
    # Beside this file rather than importlib.resources: an editable install made while plugins/
    # was empty maps qdplugins as a namespace package, which resources cannot read.
    text = Path(__file__).with_name("categories.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]


def _check_binarize(binarize: str, threshold: Optional[float], who: str) -> float:
    if threshold is not None and binarize != "threshold":
        raise RecipeError(f"{who}: `threshold` only applies with `binarize: threshold` (got binarize: {binarize})")
    return 0.5 if threshold is None else float(threshold)


# --- finding and downloading files ------------------------------------------------------------


def base_url() -> str:
    url = os.environ.get(URL_ENV) or DEFAULT_URL
    return url if url.endswith("/") else url + "/"


def remote_url(kind: str, filename: str) -> str:
    return base_url() + kind + "/" + urllib.parse.quote(filename)


def locate(kind: str, filename: str, ctx: Context) -> Path:
    """The path of `<kind>/<filename>`: local mirror, else cache, else downloaded into the cache."""
    local_root = ctx.data_dir if ctx.data_dir is not None else env_data_dir()
    if local_root is not None:
        local = Path(local_root) / kind / filename
        if local.is_file():
            return local
    cached = Path(ctx.cache_dir) / "quickdraw" / kind / filename
    if cached.is_file():
        return cached
    url = remote_url(kind, filename)
    where = (
        f"{local_root / kind / filename}"
        if local_root is not None
        else f"$QD_DATA_DIR/{kind}/{filename} (QD_DATA_DIR is not set)"
    )
    try:
        download(url, cached, quiet=ctx.quiet)
    except InputError as e:
        raise InputError(
            f"{filename} is not in {where} nor in the cache {cached}, and {e}. "
            f"Fix: put Google's {kind}/{filename} in $QD_DATA_DIR/{kind}/, or run once with internet access"
        ) from None
    return cached


# A stalled server is given DOWNLOAD_TIMEOUT seconds per connect or read; a failure that may
# pass (a 5xx, a dropped connection, a short or damaged body, a stall) is retried
# DOWNLOAD_ATTEMPTS times in all, waiting DOWNLOAD_BACKOFF, then twice that, ... in between.
DOWNLOAD_TIMEOUT = 60.0
DOWNLOAD_ATTEMPTS = 3
DOWNLOAD_BACKOFF = 2.0


class _Transient(Exception):
    """A download failure worth another attempt."""


def download(url: str, dest: Path, quiet: bool = False, chunk: int = 1 << 20) -> Path:
    """Fetch `url` to `dest` atomically: a complete, checked file or nothing, never a partial one."""
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            return _download_once(url, dest, quiet, chunk)
        except _Transient as e:
            if attempt == DOWNLOAD_ATTEMPTS:
                raise InputError(f"downloading {url} failed: {e} ({DOWNLOAD_ATTEMPTS} attempts)") from None
            time.sleep(DOWNLOAD_BACKOFF * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _download_once(url: str, dest: Path, quiet: bool, chunk: int) -> Path:
    request = urllib.request.Request(url, headers={"User-Agent": "qd"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
            if "html" in (response.headers.get("Content-Type") or "").lower():
                # A portal, proxy or error page answering 200: never a Quick, Draw! file.
                raise InputError(f"downloading {url} failed: the server answered with an HTML page, not the file")
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with atomic_path(dest) as tmp:
                written = _copy_with_progress(response, tmp, total, dest.name, quiet, chunk)
                if total is not None and written != total:
                    raise _Transient(f"it stopped after {written} of {total} bytes")
                _check_whole(tmp)
            _remove_stale_parts(dest)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code in (408, 429):
            raise _Transient(f"HTTP {e.code} {e.reason}") from None
        raise InputError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        # A connection cut short raises IncompleteRead (an HTTPException, not an OSError).
        reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
        raise _Transient(str(reason)) from None
    return dest


def _remove_stale_parts(dest: Path) -> None:
    """Temporary files a killed download left beside `dest` (atomic_path's names). One that
    is still growing belongs to a download running now, so only old ones go."""
    remove_stale_parts(dest, 2 * DOWNLOAD_TIMEOUT)


def _check_whole(path: Path) -> None:
    """A .npy must hold exactly the bytes its header promises: a server that under-reports
    Content-Length sends a short file that no length check catches."""
    if path.suffix != ".npy":
        return
    try:
        np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy's ValueError, EOFError, OSError on a short file
        raise _Transient(f"the file arrived damaged ({type(e).__name__}: {e}; {path.stat().st_size} bytes)") from None


def _copy_with_progress(response, tmp: Path, total: Optional[int], label: str, quiet: bool, chunk: int) -> int:
    written = 0
    with open(tmp, "wb") as out:
        if quiet:
            while block := response.read(chunk):
                out.write(block)
                written += len(block)
            return written
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = (
            TextColumn("downloading {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        # On stderr, so a command's stdout stays clean for pipes.
        with Progress(*columns, transient=True, console=Console(stderr=True)) as progress:
            task = progress.add_task(label, total=total)
            while block := response.read(chunk):
                out.write(block)
                written += len(block)
                progress.update(task, advance=len(block))
    return written


def _fix_for(path: Path, ctx: Context, kind: str) -> str:
    if Path(ctx.cache_dir) in path.parents:
        return f"delete {path} so it is downloaded again"
    return f"replace it with Google's file {remote_url(kind, path.name)}"


# --- numpy_bitmap -------------------------------------------------------------------------------


def open_bitmap(path: Path, ctx: Context) -> np.ndarray:
    """A (N, 784) uint8 memmap, or InputError naming the file and the fix."""
    fix = _fix_for(path, ctx, "numpy_bitmap")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # numpy raises ValueError, OSError, EOFError... for a damaged file
        raise InputError(f"{path} is not a readable .npy file ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{path} is not a single .npy array (an .npz archive?); {fix}")
    side = BITMAP_SIDE * BITMAP_SIDE
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != side:
        raise InputError(
            f"{path} holds {arr.dtype} of shape {arr.shape}, expected uint8 of shape (N, {side}) "
            f"(28x28 Quick, Draw! bitmaps); {fix}"
        )
    if arr.shape[0] == 0:
        raise InputError(f"{path} holds no drawings (shape {arr.shape}); {fix}")
    return arr


def resize_stack(images: np.ndarray, shape: tuple[int, int], chunk: int = 4096) -> np.ndarray:
    """(N, s, s) square uint8 -> (N, H, W) uint8 with Pillow's Lanczos, `chunk` rows at a time.

    The square fits the shorter side and is centred on the longer one (as the rasteriser
    places its frame), so a non-square model does not get squashed drawings.
    """
    h, w = shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    out = np.zeros((len(images), h, w), np.uint8)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk])
        for i, img in enumerate(block):
            out[start + i, top : top + side, left : left + side] = Image.fromarray(img).resize(
                (side, side), Image.LANCZOS
            )
    return out


class _Categories(Dataset):
    """What the two Quick, Draw! datasets share; each keeps its own explicit signature,
    since that signature is what a recipe is validated against.

    Several categories become one labelled set whose images stay per-category memmaps behind
    an ImageStack: nothing is concatenated into memory, however many categories.
    """

    who = ""
    # `mix` came after models were cached: left at its default it stays out of the model key,
    # so a recipe written before it keeps its cached model (qdcore.recipe.Recipe.model_key).
    key_omits_default = ("mix",)

    def _setup(self, category, limit, binarize, threshold, mix) -> None:
        self.everything = category == ALL
        self.categories = check_categories(category, categories(), self.who)
        self.limit = limit
        self.binarize = binarize
        self.threshold = _check_binarize(binarize, threshold, self.who)
        self.mix = mix

    def _image_set(self, parts: list[np.ndarray]) -> ImageSet:
        counts = [len(p) for p in parts]
        name = ALL if self.everything else "+".join(self.categories)
        # One category stays the memmap itself; labels are 2 bytes a drawing (345 < 2^15).
        images = parts[0] if len(parts) == 1 else ImageStack(parts)
        labels = np.repeat(np.arange(len(parts), dtype=np.int16), counts)
        return ImageSet(
            images, name, self.binarize, self.threshold, labels=labels, classes=list(self.categories), mix=self.mix
        )

    def describe(self) -> str:
        cats = ALL if self.everything else ",".join(self.categories)
        out = f"{self.who}:{cats}"
        if len(self.categories) > 1:
            out += f":mix={self.mix}"
        if self.limit:
            out += f":limit={self.limit}"
        if self.binarize != "none":
            out += f":binarize={self.binarize}"
            out += f"@{self.threshold:g}" if self.binarize == "threshold" else ""
        return out


class QuickDraw(_Categories):
    """Google's 28x28 bitmaps (`numpy_bitmap/<category>.npy`), memory-mapped."""

    who = "quickdraw"

    def __init__(
        self,
        category: Union[str, list[str]],
        limit: Limit = None,
        binarize: Binarize = "none",
        threshold: Threshold = None,
        mix: Mix = "balanced",
    ):
        self._setup(category, limit, binarize, threshold, mix)

    def load(self, ctx: Context) -> ImageSet:
        shape = tuple(ctx.image_shape)
        parts = []
        for cat in self.categories:
            arr = open_bitmap(locate("numpy_bitmap", f"{cat}.npy", ctx), ctx)
            arr = arr[: self.limit] if self.limit else arr
            images = arr.reshape(len(arr), BITMAP_SIDE, BITMAP_SIDE)  # still a memmap view
            if shape != (BITMAP_SIDE, BITMAP_SIDE):
                images = resize_stack(images, shape)
            parts.append(images)
        return self._image_set(parts)


# --- simplified strokes -------------------------------------------------------------------------


def _is_stroke(stroke) -> bool:
    return (
        isinstance(stroke, list)
        and len(stroke) >= 2
        and isinstance(stroke[0], list)
        and isinstance(stroke[1], list)
        and len(stroke[0]) == len(stroke[1])
        and all(_is_coordinate(v) for v in stroke[0])
        and all(_is_coordinate(v) for v in stroke[1])
    )


def _is_coordinate(v) -> bool:
    # A number the rasterizer can place: not a string, a list, a boolean, NaN or 1e300.
    return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= MAX_COORDINATE


# Google's strokes are 0..255 (simplified) or screen pixels (raw); far beyond is not a drawing.
MAX_COORDINATE = 1e6
# One ndjson record; Google's longest simplified drawings are a few tens of KB.
MAX_RECORD_BYTES = 1 << 20


def read_strokes(path: Path, limit: Optional[int], ctx: Context) -> Iterator[list]:
    """Yield each line's `drawing` (a list of strokes), stopping after `limit` lines."""
    fix = _fix_for(path, ctx, "simplified")
    try:
        with open(path, "r", encoding="utf-8") as f:
            count = 0
            for number, line in enumerate(iter(lambda: f.readline(MAX_RECORD_BYTES + 1), ""), start=1):
                if limit is not None and count >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    if len(line) > MAX_RECORD_BYTES:
                        raise ValueError(f"a record longer than {MAX_RECORD_BYTES >> 10} KiB")
                    drawing = json.loads(line)["drawing"]
                    if not isinstance(drawing, list) or not all(_is_stroke(s) for s in drawing):
                        raise TypeError("`drawing` is not a list of strokes [[x...], [y...]] of numbers")
                except (ValueError, KeyError, TypeError, IndexError, RecursionError) as e:
                    raise InputError(f"{path}, line {number}: not a Quick, Draw! ndjson record ({e}); {fix}") from None
                count += 1
                yield drawing
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text ({e}); {fix}") from None


class QuickDrawStrokes(_Categories):
    """Google's simplified strokes (`simplified/<category>.ndjson`), rasterised like numpy_bitmap.

    Rasterised images are cached as .npy (keyed by the source file's size and mtime and by
    the canvas size) and memory-mapped, so a large category is drawn once, not every run.
    """

    who = "quickdraw-strokes"

    def __init__(
        self,
        category: Union[str, list[str]],
        limit: Limit = None,
        binarize: Binarize = "none",
        threshold: Threshold = None,
        supersample: Annotated[int, Range(1, 32)] = 8,
        mix: Mix = "balanced",
    ):
        self._setup(category, limit, binarize, threshold, mix)
        self.supersample = supersample

    def describe(self) -> str:
        return f"{super().describe()}:supersample={self.supersample}"

    def load(self, ctx: Context) -> ImageSet:
        shape = tuple(int(s) for s in ctx.image_shape)
        return self._image_set([self._one(cat, shape, ctx) for cat in self.categories])

    def _one(self, cat: str, shape: tuple[int, int], ctx: Context) -> np.ndarray:
        source = locate("simplified", f"{cat}.ndjson", ctx)
        stat = source.stat()
        key = hashlib.sha256(
            f"{RASTER_VERSION}|{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{shape}|"
            f"{self.supersample}|{self.limit}".encode()
        ).hexdigest()[:16]
        cached = Path(ctx.cache_dir) / "quickdraw" / "raster" / f"{cat}-{shape[0]}x{shape[1]}-{key}.npy"
        if cached.is_file():
            try:
                arr = np.load(cached, mmap_mode="r", allow_pickle=False)
                if arr.dtype == np.uint8 and arr.shape[1:] == shape and len(arr):
                    return arr
            except Exception:
                pass  # a damaged cache entry is simply redrawn below
        images = rasterize_many(read_strokes(source, self.limit, ctx), shape, self.supersample, count=self.limit)
        if len(images) == 0:
            raise InputError(f"{source} holds no drawings; {_fix_for(source, ctx, 'simplified')}")
        with atomic_path(cached) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, images)
        return np.load(cached, mmap_mode="r", allow_pickle=False)


# --- image files --------------------------------------------------------------------------------

Invert = Literal["auto", "always", "never"]
Fit = Literal["pad", "stretch"]


def load_image(
    path: Path, shape: tuple[int, int], invert: str = "auto", fit: str = "pad", normalize: bool = True
) -> np.ndarray:
    """Any PNG/JPEG -> (H, W) float32 in [0, 1], ink bright on 0.

    Transparency is flattened onto white (a transparent background is paper). With
    invert="auto" the image is inverted when its border is mostly light (dark ink on paper).
    fit="pad" keeps the aspect ratio and pads with background; "stretch" fills the canvas.
    normalize stretches the result so the brightest ink is 1, because thin lines drawn on a
    large image fade to faint grey once shrunk to 28 px.
    """
    # qdcore.images holds the one size rule every place that opens a user's image shares.
    with open_image(path) as im, reading(str(path)):
        grey = _to_grey(ImageOps.exif_transpose(im))
    if invert == "always" or (invert == "auto" and _light_background(grey)):
        grey = 1.0 - grey
    h, w = shape
    src = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32))
    if fit == "stretch":
        out = np.asarray(src.resize((w, h), Image.LANCZOS))
    else:
        scale = min(w / src.width, h / src.height)
        size = (max(1, round(src.width * scale)), max(1, round(src.height * scale)))
        small = np.asarray(src.resize(size, Image.LANCZOS))
        out = np.zeros((h, w), np.float32)
        top, left = (h - size[1]) // 2, (w - size[0]) // 2
        out[top : top + size[1], left : left + size[0]] = small
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    peak = out.max()
    if normalize and peak > 0:
        out = out / peak
    return out


def _to_grey(im: Image.Image) -> np.ndarray:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return np.clip(arr / top, 0.0, 1.0)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(paper, rgba)
    return np.asarray(im.convert("L"), dtype=np.float64) / 255.0


def _light_background(grey: np.ndarray) -> bool:
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return float(np.median(border)) > 0.5


def image_files(path: Path) -> list[Path]:
    """A folder's PNG/JPEG files, a glob's matches, or one file; sorted for reproducibility."""
    if path.is_dir():
        found = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    elif any(ch in str(path) for ch in "*?["):
        found = [Path(p) for p in globlib.glob(str(path), recursive=True)]
        found = [p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    elif path.is_file():
        found = [path]
    else:
        raise InputError(f"images: {path} does not exist; give a folder, a glob like 'doodles/*.png', or a file")
    if not found:
        raise InputError(f"images: no .png/.jpg/.jpeg files in {path}")
    return sorted(found)


class Images(Dataset):
    """A folder (or glob) of PNG/JPEG files of any size and mode, as ink-bright greyscale."""

    def __init__(
        self,
        path: Path,
        limit: Limit = None,
        invert: Invert = "auto",
        fit: Fit = "pad",
        normalize: bool = True,
        binarize: Binarize = "none",
        threshold: Threshold = None,
    ):
        image_files(Path(path))  # a wrong path fails when the recipe is built, before training
        self.path = path
        self.limit = limit
        self.invert = invert
        self.fit = fit
        self.normalize = normalize
        self.binarize = binarize
        self.threshold = _check_binarize(binarize, threshold, "images")

    def describe(self) -> str:
        return f"images:{self.path}:invert={self.invert}:fit={self.fit}:limit={self.limit}"

    def load(self, ctx: Context) -> ImageSet:
        files = image_files(Path(self.path))[: self.limit]
        shape = tuple(int(s) for s in ctx.image_shape)
        images = np.stack([load_image(p, shape, self.invert, self.fit, self.normalize) for p in files])
        return ImageSet(images, Path(self.path).name, self.binarize, self.threshold)


@hookimpl
def qd_register_datasets(register):
    register(
        "quickdraw", QuickDraw, description="Quick, Draw! 28x28 bitmaps (numpy_bitmap/<category>.npy), memory-mapped"
    )
    register(
        "quickdraw-strokes",
        QuickDrawStrokes,
        description="Quick, Draw! simplified strokes rasterised the way Google made the bitmaps",
    )
    register("images", Images, description="a folder or glob of PNG/JPEG files, as ink-bright greyscale")
