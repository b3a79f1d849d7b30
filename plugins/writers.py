"""Built-in writers: an animated GIF (or the same animation as WebP or MP4), or one PNG
contact sheet.

All write through qdcore.atomic.atomic_path, so the output is complete or absent. The
frames they receive are already filtered (maybe upscaled, maybe inverted); the write
attention, given in model pixels, is scaled to whatever size the frames have now.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np
from PIL import Image, ImageDraw

from qdcore import (
    WRITE_ERRNOS,
    Context,
    Drawing,
    InputError,
    QdError,
    Range,
    RecipeError,
    Writer,
    WriteError,
    atomic_path,
    hookimpl,
    two_inks,
)

Frames = Literal["samples", "steps"]
Seconds = Annotated[float, Range(0.01, 655.35)]  # a GIF stores a frame's delay in 1/100 s, 16 bits
Columns = Optional[Annotated[int, Range(1, 1000)]]
Spacing = Annotated[int, Range(0, 256)]
Shade = Annotated[float, Range(0.0, 1.0)]

BOX_COLOUR = (255, 48, 48)


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _canvases(drawing: Drawing) -> np.ndarray:
    c = np.asarray(drawing.canvases)
    if c.ndim != 4 or 0 in c.shape:
        raise InputError(f"a drawing's canvases must be shaped (T, n, H, W) and non-empty, got {c.shape}")
    return c


class Layout:
    """Places cells of size (h, w) on a grid with `spacing` pixels between them."""

    def __init__(self, rows: int, cols: int, h: int, w: int, spacing: int):
        self.rows, self.cols, self.h, self.w, self.spacing = rows, cols, h, w, spacing

    @property
    def size(self) -> tuple[int, int]:
        s = self.spacing
        return self.rows * self.h + (self.rows - 1) * s, self.cols * self.w + (self.cols - 1) * s

    def origin(self, index: int) -> tuple[int, int]:
        r, c = divmod(index, self.cols)
        return r * (self.h + self.spacing), c * (self.w + self.spacing)

    def compose(self, cells: np.ndarray, shade: float) -> np.ndarray:
        """(k, h, w) -> one (H, W) image, empty places and gaps filled with `shade`."""
        out = np.full(self.size, shade, dtype=np.float32)
        for i, cell in enumerate(cells):
            top, left = self.origin(i)
            out[top : top + self.h, left : left + self.w] = cell
        return out


def grid_columns(count: int, columns: Optional[int]) -> int:
    return min(count, columns) if columns else math.ceil(math.sqrt(count))


def attention_box(
    window: np.ndarray, write_n: int, model_shape: tuple[int, int], cell: tuple[int, int]
) -> tuple[float, float, float, float]:
    """(gx, gy, delta) in model pixels -> (x0, y0, x1, y1) in cell pixel indices.

    In the model a pixel index a is the centre of that pixel (the filterbank evaluates its
    Gaussians at a), so the window's edges gx -+ delta*N/2 sit at a + 0.5 in continuous
    pixel-edge units, which scale by the size ratio; back to PIL's pixel indices is -0.5.
    """
    gx, gy, delta = (float(v) for v in window)
    half = delta * write_n / 2.0
    sy, sx = cell[0] / model_shape[0], cell[1] / model_shape[1]
    x0, x1 = (gx - half + 0.5) * sx - 0.5, (gx + half + 0.5) * sx - 0.5
    y0, y1 = (gy - half + 0.5) * sy - 0.5, (gy + half + 0.5) * sy - 0.5
    return x0, y0, x1, y1


def draw_boxes(
    image: np.ndarray, layout: Layout, windows: np.ndarray, write_n: int, model_shape: tuple[int, int]
) -> np.ndarray:
    """Greyscale (H, W) or RGB (H, W, 3) float -> RGB (H, W, 3) uint8 with one box per cell,
    clipped to it; a NaN window (a completion's partial drawing, no step drew it) has none."""
    rgb = Image.fromarray(_uint8(image)).convert("RGB")
    draw = ImageDraw.Draw(rgb)
    width = max(1, round(min(layout.h, layout.w) / 64))
    for i, window in enumerate(windows):
        if np.isnan(window).any():
            continue
        top, left = layout.origin(i)
        x0, y0, x1, y1 = attention_box(window, write_n, model_shape, (layout.h, layout.w))
        x0, x1 = np.clip([x0, x1], 0, layout.w - 1) + left
        y0, y1 = np.clip([y0, y1], 0, layout.h - 1) + top
        draw.rectangle([round(x0), round(y0), round(x1), round(y1)], outline=BOX_COLOUR, width=width)
    return np.asarray(rgb)


def compose_rgb(layout: "Layout", cells: np.ndarray, shade: float) -> np.ndarray:
    """Layout.compose, channel by channel: (k, h, w, 3) -> (H, W, 3)."""
    return np.stack([layout.compose(cells[..., c], shade) for c in range(3)], axis=-1)


def step_frames(drawing: Drawing) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(T', n, h, w) greyscale or (T', n, h, w, 3) colour frames for a `steps` writer, and
    the windows (T', n, 3) they go with (None where a frame has no window). A completion
    starts with the person's drawing alone, then each step in two inks."""
    canvases = _canvases(drawing)
    windows = None if drawing.windows is None else np.asarray(drawing.windows, np.float32)
    if drawing.given is None:
        return canvases, windows
    given = np.asarray(drawing.given, np.float32)
    frames = np.stack([two_inks(given, c) for c in np.concatenate([given[None], canvases])])
    if windows is not None:
        windows = np.concatenate([np.full((1,) + windows.shape[1:], np.nan, np.float32), windows])
    return frames, windows


class _GridWriter(Writer):
    """The grid settings both writers share; each keeps its own explicit signature, since
    that signature is what a recipe is validated against."""

    who = ""
    # The largest side the format holds, in pixels (GIF: 16-bit sizes; WebP: 14-bit).
    max_side: Optional[int] = None
    format_name = ""

    def canvas(self, n: int, frame: tuple[int, int]) -> tuple[int, int]:
        """(height, width) of the images this writer makes from n pictures of `frame` pixels."""
        h, w = frame
        if self.frames == "samples":
            return h, w
        shown = 1 if getattr(self, "sample", None) is not None else n
        cols = grid_columns(shown, self.columns)
        return Layout(math.ceil(shown / cols), cols, h, w, self.spacing).size

    def check_size(self, n: int, frame: Optional[tuple[int, int]]) -> None:
        """The format's limit on a side, checked when the recipe is checked (Writer.check)."""
        if frame is None or self.max_side is None:
            return
        h, w = self.canvas(n, frame)
        if max(h, w) > self.max_side:
            raise RecipeError(
                f"{self.who}: {n} pictures of {frame[0]}x{frame[1]} make {h}x{w} images, and {self.format_name} "
                f"holds at most {self.max_side:,} pixels a side: lower generate.n, set `columns`, or make the "
                "filters' size smaller"
            )

    def _grid(self, frames: str, columns, attention: bool, spacing: int, shade: float) -> None:
        if attention and frames != "steps":
            raise RecipeError(
                f"{self.who}: `attention: true` needs `frames: steps` (a window belongs to a drawing step)"
            )
        self.frames = frames
        self.columns = columns
        self.attention = attention
        self.spacing = spacing
        self.shade = shade


def _windows(drawing: Drawing, who: str) -> np.ndarray:
    if drawing.windows is None:
        raise RecipeError(f"{who}: `attention: true` but the model has no write attention (model.attention: false)")
    return np.asarray(drawing.windows, dtype=np.float32)


class Gif(_GridWriter):
    """An animated GIF: one frame per sample (the blog's GIFs) or one per drawing step."""

    suffix = ".gif"
    who = "gif"

    def __init__(
        self,
        frames: Frames = "samples",
        duration: Seconds = 0.12,
        hold_last: Optional[Seconds] = None,
        loop: Annotated[int, Range(0, 65535)] = 0,
        sample: Optional[Annotated[int, Range(0, None)]] = None,
        attention: bool = False,
        columns: Columns = None,
        spacing: Spacing = 2,
        spacing_shade: Shade = 0.5,
    ):
        self._grid(frames, columns, attention, spacing, spacing_shade)
        if frames == "samples" and (sample is not None or columns is not None):
            raise RecipeError(
                "gif: `sample` and `columns` apply to `frames: steps`; with `frames: samples` each frame is one sample"
            )
        self.duration = duration
        self.hold_last = hold_last
        self.loop = loop
        self.sample = sample

    max_side = 65_535
    format_name = "a GIF"

    def check(self, n: int, frame: Optional[tuple[int, int]] = None) -> None:
        if self.sample is not None and self.frames == "steps" and self.sample >= n:
            raise RecipeError(
                f"{self.who}: `sample: {self.sample}` but generate.n draws {n} samples (0..{n - 1}): "
                f"choose one of those, or raise generate.n"
            )
        self.check_size(n, frame)

    def images(self, drawing: Drawing) -> list[np.ndarray]:
        """The GIF's frames as uint8 arrays, (H, W) greyscale or (H, W, 3) with boxes or two inks."""
        canvases = _canvases(drawing)
        steps, n, h, w = canvases.shape
        if self.frames == "samples":
            last = (
                canvases[-1] if drawing.given is None else two_inks(np.asarray(drawing.given, np.float32), canvases[-1])
            )
            return [_uint8(f) for f in last]
        if self.attention:
            _windows(drawing, self.who)
        frames, windows = step_frames(drawing)
        if self.sample is not None:
            if self.sample >= n:
                raise RecipeError(f"{self.who}: `sample: {self.sample}` but only {n} samples were drawn (0..{n - 1})")
            chosen = [self.sample]
        else:
            chosen = list(range(n))
        cols = grid_columns(len(chosen), self.columns)
        layout = Layout(math.ceil(len(chosen) / cols), cols, h, w, self.spacing)
        out = []
        for t in range(len(frames)):
            cells = frames[t, chosen]
            image = layout.compose(cells, self.shade) if cells.ndim == 3 else compose_rgb(layout, cells, self.shade)
            if not self.attention:
                out.append(_uint8(image))
            else:
                out.append(draw_boxes(image, layout, windows[t, chosen], drawing.write_n, drawing.model_shape))
        return out

    def durations_ms(self, count: int) -> list[int]:
        # GIF delays are whole hundredths of a second; round here so what is asked is what is kept.
        def centis(seconds: float) -> int:
            return int(math.floor(seconds * 100 + 0.5))

        out = [centis(self.duration) * 10] * count
        if self.hold_last is not None:
            out[-1] = centis(self.hold_last) * 10
        return out

    def write(self, drawing: Drawing, path: Path, ctx: Context) -> Path:
        frames = self.images(drawing)
        path = Path(path)
        # Identical consecutive frames are merged by Pillow with their delays summed, so the
        # animation plays the same; the file then holds fewer frames.
        durations = self.durations_ms(len(frames))
        # Encoded in memory, then written in one call: a full disk fails that call only. Given
        # the file, imageio's writer failed mid-GIF and flushed again when garbage-collected,
        # printing a second traceback after qd's one Error line.
        with encoding(path, self.who):
            blob = gif_bytes(np.stack(frames), durations, self.loop)
        with atomic_path(path) as tmp:
            tmp.write_bytes(blob)
        return path


# One palette for the whole GIF (docs/builtins.md#gif has the sizes it saves). qd draws grey
# ink, a red attention box and a blue model ink: a few colours, so snapping every channel to 16
# levels keeps them all in one table with room to spare, and LZW compresses 16 greys far
# better than the 256 a soft ink edge has.
GIF_STEP = 17  # 0, 17, ..., 255: no channel moves more than 8/255
# A colour on this share of the pixels (paper, the grid's gap shade, the box's red) is kept as
# it is, so the large areas keep their exact colour.
GIF_FREQUENT = 0.01
# At most this many colours, so an index is left over for "unchanged" (transparent) pixels.
GIF_COLOURS = 255


def gif_bytes(frames: np.ndarray, durations: list[int], loop: int) -> bytes:
    """(T, H, W) grey or (T, H, W, 3) RGB uint8 frames -> an animated GIF89a: one global
    palette (gif_palette), no local colour tables; each frame after the first is cropped by
    Pillow to the box where it differs from the one before."""
    palette, indices = gif_indexed(frames)
    unchanged = len(palette)
    table = np.concatenate([palette, _unused_colour(palette)[None]]).tobytes()
    # Marking unchanged pixels transparent helps when a frame adds ink to the last (steps),
    # and costs when each frame is a new drawing (samples): the paper that happens to stay
    # paper becomes a speckle of two indices that LZW compresses worse than plain paper.
    # Measured both ways on every recipe, neither wins everywhere, so both are made and the
    # smaller kept.
    tries = (unchanged, None) if len(indices) > 1 else (None,)
    return min((_gif_encode(indices, table, clear, durations, loop) for clear in tries), key=len)


def _gif_encode(indices: np.ndarray, table: bytes, clear: Optional[int], durations: list[int], loop: int) -> bytes:
    images = []
    for i, frame in enumerate(indices):
        image = Image.fromarray(frame)
        image.putpalette(table)
        if clear is not None and i:
            # Pillow's `optimize` fills the pixels equal to the previous frame's with this
            # index. The first frame has nothing beneath it to show through.
            image.info["transparency"] = clear
        images.append(image)
    out = io.BytesIO()
    images[0].save(
        out,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        # The one global table; without it Pillow writes a local table for every frame.
        palette=table,
        optimize=clear is not None,
        disposal=1,  # leave each frame in place: the next draws over it (or lets it show through)
        # Pillow's single-frame GIF path takes one number, not a list.
        duration=durations[0] if len(durations) == 1 else durations,
        loop=loop,
    )
    return out.getvalue()


def gif_indexed(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames -> (palette (K, 3) uint8 with K <= GIF_COLOURS, indices (T, H, W) uint8):
    each pixel's nearest palette colour."""
    if frames.ndim == 3:
        counts = np.bincount(frames.reshape(-1), minlength=256)
        present = np.flatnonzero(counts)
        colours = np.repeat(present[:, None], 3, axis=1).astype(np.uint8)
        palette = gif_palette(frames, colours, counts[present])
        lookup = np.zeros(256, np.uint8)
        lookup[present] = _nearest(colours, palette)
        return palette, lookup[frames]
    keys = (frames[..., 0].astype(np.int32) << 16) | (frames[..., 1].astype(np.int32) << 8) | frames[..., 2]
    unique, inverse, counts = np.unique(keys.reshape(-1), return_inverse=True, return_counts=True)
    colours = np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], axis=1).astype(np.uint8)
    palette = gif_palette(frames, colours, counts)
    return palette, _nearest(colours, palette)[inverse].reshape(frames.shape[:-1])


def gif_palette(frames: np.ndarray, colours: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The GIF's one palette, from the distinct colours of all its frames and how many pixels
    each covers: every colour snapped to GIF_STEP levels a channel, plus the frequent colours
    as they are. Colourful frames that would need more than GIF_COLOURS entries (never qd's
    own) get Pillow's median cut over all frames instead."""
    snapped = (np.round(colours / GIF_STEP) * GIF_STEP).astype(np.uint8)
    frequent = colours[counts >= GIF_FREQUENT * counts.sum()]
    palette = np.unique(np.concatenate([snapped, frequent]), axis=0)
    if len(palette) <= GIF_COLOURS:
        return palette
    mosaic = Image.fromarray(frames.reshape(-1, frames.shape[-2], 3))
    # A k-means pass after the cut: on a colour ramp, 15/255 off on average becomes 9.
    cut = mosaic.quantize(GIF_COLOURS, method=Image.Quantize.MEDIANCUT, kmeans=1, dither=Image.Dither.NONE)
    return np.unique(np.asarray(cut.getpalette()[: 3 * GIF_COLOURS], np.uint8).reshape(-1, 3), axis=0)


def _nearest(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Each colour's palette index: the entry fewest levels off on its worst channel, so never
    further than the colour's own snapped one (8/255)."""
    from scipy.spatial import cKDTree

    return cKDTree(palette.astype(np.float64)).query(colours.astype(np.float64), p=np.inf)[1].astype(np.uint8)


def _unused_colour(palette: np.ndarray) -> np.ndarray:
    """A colour not in the palette, for the transparent index's entry: Pillow maps a frame
    onto the table by colour, so two equal entries would swap indices."""
    taken = set(((palette[:, 0].astype(int) << 16) | (palette[:, 1].astype(int) << 8) | palette[:, 2]).tolist())
    key = 0xFF00FF  # magenta, which qd never draws
    while key in taken:
        key += 1
    return np.array([key >> 16, (key >> 8) & 255, key & 255], np.uint8)


class WebP(Gif):
    """An animated WebP: the GIF's frames and timing, in full colour and lossless (no
    256-colour palette), which chat apps and browsers play like a GIF."""

    suffix = ".webp"
    who = "webp"
    max_side = 16_383
    format_name = "a WebP"

    def write(self, drawing: Drawing, path: Path, ctx: Context) -> Path:
        frames = [Image.fromarray(f).convert("RGB") for f in self.images(drawing)]
        path = Path(path)
        with atomic_path(path) as tmp, encoding(path, self.who):
            frames[0].save(
                tmp,
                format="WEBP",
                save_all=True,
                append_images=frames[1:],
                lossless=True,
                # libwebp's effort, 0..6 (Pillow's default 4). On the recipes' frames 5 makes the same
                # pixels 1.1x-2.1x smaller (1.5x in all) for under 1.5 s more; 6, or quality 100,
                # saves under 1% more for several times the time (docs/builtins.md#webp).
                method=5,
                duration=self.durations_ms(len(frames)),
                loop=self.loop,
            )
        return path


class Mp4(Gif):
    """An H.264 MP4 of the GIF's frames and timing, through imageio-ffmpeg (the optional
    `mp4` extra: pip install "qd[mp4]"). A video has one frame rate, so each frame is shown
    for a whole number of ticks of the largest tick that divides every frame's delay."""

    suffix = ".mp4"
    who = "mp4"
    # H.264 levels stop at 8,192 x 4,320 (level 6.2: 139,264 macroblocks a frame); libx264 refuses more.
    max_side = 8_192
    format_name = "an H.264 MP4"

    def __init__(
        self,
        frames: Frames = "samples",
        duration: Seconds = 0.12,
        hold_last: Optional[Seconds] = None,
        sample: Optional[Annotated[int, Range(0, None)]] = None,
        attention: bool = False,
        columns: Columns = None,
        spacing: Spacing = 2,
        spacing_shade: Shade = 0.5,
    ):
        encoder(check=True)  # missing or broken encoder: fail while the recipe is checked, before any training
        super().__init__(frames, duration, hold_last, 0, sample, attention, columns, spacing, spacing_shade)

    def ticks(self, count: int) -> tuple[float, list[int]]:
        """(frames per second, how many ticks each frame lasts) for the GIF's delays."""
        delays = self.durations_ms(count)
        tick = math.gcd(*delays)
        return 1000.0 / tick, [d // tick for d in delays]

    def write(self, drawing: Drawing, path: Path, ctx: Context) -> Path:
        ffmpeg = encoder()
        frames = [np.asarray(Image.fromarray(f).convert("RGB")) for f in self.images(drawing)]
        h, w = frames[0].shape[:2]
        # H.264's 4:2:0 colour needs even sides: pad with the grid's gap shade.
        pad = ((0, h % 2), (0, w % 2), (0, 0))
        fill = int(round(self.shade * 255))
        fps, repeats = self.ticks(len(frames))
        path = Path(path)
        with atomic_path(path) as tmp, encoding(path, self.who):
            writer = ffmpeg.write_frames(
                str(tmp),
                (w + w % 2, h + h % 2),
                fps=fps,
                codec="libx264",
                # x264's constant quality (crf). 18 keeps the grey recipes within 1/255 of their
                # frames on average, and makes them 1.5x smaller than crf 10 did; measured in
                # docs/builtins.md#mp4.
                quality=None,
                macro_block_size=1,
                # 4:2:0, the H.264 every browser and phone plays. It halves the colour's
                # resolution: a red box's edges blur (3/255 off on average for cat.yaml, even lossless).
                pix_fmt_out="yuv420p",
                # Quiet: its log would print lines of its own around qd's one line; a failure
                # is found below from the file instead, and said once.
                ffmpeg_log_level="quiet",
                output_params=["-crf", "18", "-f", "mp4"],
            )
            # An ffmpeg that ends early breaks the pipe sooner or later, depending on when it
            # ends and on the pipe's buffer; imageio-ffmpeg re-raises that as a bare OSError
            # with ffmpeg's command line in it. Either way the video lacks frames, and the
            # failure reads the same however far the frames got.
            ended_early = False
            try:
                writer.send(None)
                for frame, times in zip(frames, repeats):
                    padded = np.ascontiguousarray(np.pad(frame, pad, constant_values=fill))
                    for _ in range(times):
                        writer.send(padded)
            except OSError:
                ended_early = True
            with contextlib.suppress(OSError):
                writer.close()
            # imageio-ffmpeg does not look at ffmpeg's exit status: an MP4 begins with its
            # `ftyp` box, and without one ffmpeg failed (the half-written file goes).
            with open(tmp, "rb") as f:
                head = f.read(8)
            if ended_early or head[4:8] != b"ftyp":
                raise WriteError(
                    f"cannot write {path}: the mp4 encoder ({ffmpeg.get_ffmpeg_exe()}) wrote no video; run it by hand "
                    "to see why, or use `output: {use: gif}`"
                )
        return path


def encoder(check: bool = False):
    """imageio_ffmpeg, or InputError saying how to install it; with `check`, its ffmpeg must
    also run (`ffmpeg -version`): a missing or broken binary is found before any training."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise InputError(
            'the mp4 writer needs imageio-ffmpeg, which is not installed: pip install "qd[mp4]" '
            "(or pip install imageio-ffmpeg), or use `output: {use: gif}` or `webp`"
        ) from None
    if check:
        import subprocess

        try:
            exe = imageio_ffmpeg.get_ffmpeg_exe()
            subprocess.run([exe, "-version"], capture_output=True, timeout=30, check=True)
        except Exception as e:  # noqa: BLE001 - not found, not executable, crashed, hung: all one answer
            raise InputError(
                f"the mp4 writer's ffmpeg does not run ({type(e).__name__}: {_first_line(e)}): reinstall "
                "imageio-ffmpeg, set IMAGEIO_FFMPEG_EXE to a working ffmpeg, or use `output: {use: gif}`"
            ) from None
    return imageio_ffmpeg


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:200]


@contextlib.contextmanager
def encoding(path: Path, who: str):
    """An encoder's failure (Pillow's, ffmpeg's: a size past the format's limits, a broken
    pipe, a full disk) as one line naming the file; a full disk or read-only folder is
    atomic_path's own line. Nothing is left: the write is atomic."""
    try:
        yield
    except QdError:
        raise
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise
        raise WriteError(f"cannot write {path}: the {who} encoder failed ({_first_line(e)})") from None
    except (ValueError, RuntimeError, OverflowError, EOFError, struct.error) as e:
        raise WriteError(
            f"cannot write {path}: the {who} encoder failed ({type(e).__name__}: {_first_line(e)})"
        ) from None


class PngSheet(_GridWriter):
    """One PNG: a grid of the samples' final canvases, or of every step (rows = samples,
    columns = steps)."""

    suffix = ".png"
    who = "png-sheet"

    def __init__(
        self,
        frames: Frames = "samples",
        columns: Columns = None,
        attention: bool = False,
        spacing: Spacing = 2,
        spacing_shade: Shade = 0.5,
    ):
        self._grid(frames, columns, attention, spacing, spacing_shade)
        if frames == "steps" and columns is not None:
            raise RecipeError(
                "png-sheet: `columns` applies to `frames: samples`; with `frames: steps` a row holds one sample's steps"
            )

    def image(self, drawing: Drawing) -> np.ndarray:
        canvases = _canvases(drawing)
        steps, n, h, w = canvases.shape
        if self.frames == "samples":
            cols = grid_columns(n, self.columns)
            layout = Layout(math.ceil(n / cols), cols, h, w, self.spacing)
            return _uint8(layout.compose(canvases[-1], self.shade))
        frames, windows = step_frames(drawing)
        steps = len(frames)
        layout = Layout(n, steps, h, w, self.spacing)
        # row-major: sample, then step
        cells = np.swapaxes(frames, 0, 1).reshape((n * steps,) + frames.shape[2:])
        image = layout.compose(cells, self.shade) if cells.ndim == 3 else compose_rgb(layout, cells, self.shade)
        if not self.attention:
            return _uint8(image)
        _windows(drawing, "png-sheet")
        boxes = np.swapaxes(windows, 0, 1).reshape(n * steps, 3)
        return draw_boxes(image, layout, boxes, drawing.write_n, drawing.model_shape)

    def write(self, drawing: Drawing, path: Path, ctx: Context) -> Path:
        image = Image.fromarray(self.image(drawing))
        path = Path(path)
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        return path


@hookimpl
def qd_register_writers(register):
    register("gif", Gif, description="animated GIF: one frame per sample, or one per drawing step")
    register("png-sheet", PngSheet, description="one PNG grid of samples, or of samples x steps")
    register("webp", WebP, description="animated WebP: the GIF's frames and timing, lossless colour")
    register("mp4", Mp4, description="H.264 MP4 video of the GIF's frames and timing (needs imageio-ffmpeg)")
