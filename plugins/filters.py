"""Built-in post-filters: frames (K, H, W) float32 in [0, 1] in, frames out.

Pillow does the image work, as in the blog. The kernel filters (sharpen, edge-enhance) run on
8-bit images, because that is what Pillow defines them on; resampling runs on 32-bit float
images so that chaining filters does not round to 8 bits at every step.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

import numpy as np
from PIL import Image, ImageFilter

from qdcore import Context, Filter, InputError, Range, RecipeError, hookimpl

RESAMPLE = {
    "nearest": Image.NEAREST,
    "box": Image.BOX,
    "bilinear": Image.BILINEAR,
    "hamming": Image.HAMMING,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}
Resample = Literal["nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"]


def _frames(frames: np.ndarray, name: str) -> np.ndarray:
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3:
        raise InputError(f"filter {name} expects frames shaped (K, H, W), got {frames.shape}")
    return frames


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)


def _per_frame(frames: np.ndarray, fn) -> np.ndarray:
    out = [np.asarray(fn(f)) for f in frames]
    return np.stack(out) if out else frames


def _resize(frames: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """(K, H, W) float -> (K, h, w) float; size is (w, h) as Pillow wants it."""
    out = _per_frame(
        frames, lambda f: Image.fromarray(np.ascontiguousarray(f, dtype=np.float32)).resize(size, resample)
    )
    return np.clip(out, 0.0, 1.0).astype(np.float32)


class _KernelFilter(Filter):
    kernel: ImageFilter.Filter
    name: str

    def __init__(self, passes: Annotated[int, Range(1, 10)] = 1):
        self.passes = passes

    def apply(self, frames: np.ndarray, ctx: Context) -> np.ndarray:
        x = to_uint8(_frames(frames, self.name))

        def run(f: np.ndarray) -> Image.Image:
            img = Image.fromarray(np.ascontiguousarray(f, dtype=np.uint8))
            for _ in range(self.passes):
                img = img.filter(self.kernel)
            return img

        return _per_frame(x, run).astype(np.float32) / np.float32(255.0)


class Sharpen(_KernelFilter):
    """Pillow's ImageFilter.SHARPEN, `passes` times."""

    kernel = ImageFilter.SHARPEN
    name = "sharpen"


class EdgeEnhance(_KernelFilter):
    """Pillow's ImageFilter.EDGE_ENHANCE, `passes` times."""

    kernel = ImageFilter.EDGE_ENHANCE
    name = "edge-enhance"


class AntiAlias(Filter):
    """Upscale by `factor` and back down, both with `resample` (the blog's smoothing trick).
    The size is unchanged."""

    def __init__(self, factor: Annotated[int, Range(2, 16)] = 4, resample: Resample = "lanczos"):
        self.factor = factor
        self.resample = RESAMPLE[resample]

    def apply(self, frames: np.ndarray, ctx: Context) -> np.ndarray:
        x = _frames(frames, "anti-alias")
        h, w = x.shape[1:]
        big = _resize(x, (w * self.factor, h * self.factor), self.resample)
        return _resize(big, (w, h), self.resample)


class Upscale(Filter):
    """Resize so the longer side is `size` pixels, keeping the aspect ratio."""

    def __init__(self, size: Annotated[int, Range(1, 4096)] = 224, resample: Literal["nearest", "lanczos"] = "nearest"):
        self.size = size
        self.resample = RESAMPLE[resample]

    def shape(self, height: int, width: int) -> tuple[int, int]:
        scale = self.size / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def apply(self, frames: np.ndarray, ctx: Context) -> np.ndarray:
        x = _frames(frames, "upscale")
        h, w = x.shape[1:]
        scale = self.size / max(h, w)
        target = (max(1, round(w * scale)), max(1, round(h * scale)))
        if target == (w, h):
            return x.copy()
        return _resize(x, target, self.resample)


class Invert(Filter):
    """Dark ink on white, how people see doodles (1 - x)."""

    def __init__(self):
        pass

    def apply(self, frames: np.ndarray, ctx: Context) -> np.ndarray:
        return (np.float32(1.0) - np.clip(_frames(frames, "invert"), 0.0, 1.0)).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold for values in [0, 1]: the cut that maximises the between-class
    variance of the two sides. Where several cuts tie (an empty gap between the two inks)
    it takes the middle of them, not the edge of the darker one. A constant input has no
    cut: it returns 0.5."""
    hist, edges = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)  # weight at or below each bin
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    if not between.any():
        return 0.5
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(edges[(best[0] + best[-1]) // 2 + 1])  # a cut sits above its bin


def stroke_centres(image: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W) float -> bool pixels on the centre lines of its bright strokes.

    A stroke's centre is where the brightness peaks across it: the image, smoothed by a
    Gaussian of `sigma` pixels, is at least as bright there as its two neighbours along the
    direction the brightness falls off fastest (the Hessian's most negative eigenvector),
    and curves down that way. A blurred outline keeps its ring shape this way, where the
    medial axis of a thresholded blob would put a line through the middle. A stroke much
    wider than `sigma` with a flat top is found as its two edges.
    """
    from scipy import ndimage  # here, not at the top: it costs ~0.2 s and `qd plugins` loads this module

    g = ndimage.gaussian_filter(image, sigma)
    hyy = ndimage.gaussian_filter(image, sigma, order=(2, 0))
    hxx = ndimage.gaussian_filter(image, sigma, order=(0, 2))
    hxy = ndimage.gaussian_filter(image, sigma, order=(1, 1))
    curvature = (hxx + hyy) / 2 - np.sqrt(((hxx - hyy) / 2) ** 2 + hxy**2)  # the smaller eigenvalue
    across = 0.5 * np.arctan2(2 * hxy, hxx - hyy) + np.pi / 2  # its eigenvector's angle
    dx, dy = np.rint(np.cos(across)).astype(np.intp), np.rint(np.sin(across)).astype(np.intp)
    h, w = image.shape
    rows, cols = np.indices((h, w))

    def neighbour(sign: int) -> np.ndarray:
        return g[np.clip(rows + sign * dy, 0, h - 1), np.clip(cols + sign * dx, 0, w - 1)]

    a, b = neighbour(1), neighbour(-1)
    # Strictly above one side: on a flat top (a saturated blob) only its rim qualifies, so a
    # filled blob is drawn as its outline rather than filled in.
    flat = 1e-4 * max(float(g.max()), 1e-6) / sigma**2
    return (curvature < -flat) & (g >= a) & (g >= b) & ((g > a) | (g > b))


def drop_specks(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """`mask` without its 8-connected pieces of fewer than `min_pixels` pixels."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return mask
    sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
    return np.concatenate([[False], sizes >= min_pixels])[labels]


class Ink(Filter):
    """Crisp strokes from DRAW's soft canvas, drawn at the output size.

    Each frame is resized smoothly (bicubic) to `supersample` times the output size and cut
    at `threshold` (ink where brighter; with `softness`, a linear ramp that wide in
    brightness, so a stroke keeps the anti-aliased greys of Google's bitmaps and, measured on
    real drawings, its weight: docs/quality.md). With `width` null that shape is the ink. With a
    `width`, the ink is redrawn with a round pen `width` output pixels wide along the centre
    lines of the strokes above the cut (where the brightness peaks across a stroke, found
    on the image smoothed by half an input pixel), leaving out pieces shorter than
    `min_length` output pixels (specks). Either way the result is box-averaged down to the
    output size, so the edges are anti-aliased at the size the GIF shows.

    `threshold: otsu` takes Otsu's cut over all the frames it is given at once (one cut for
    every step and sample, so ink that grows from step to step stays growing). The output
    size is `size` on the longer side (aspect kept), or the input's size when null.
    """

    def __init__(
        self,
        threshold: Union[Literal["otsu"], Annotated[float, Range(0.0, 1.0)]] = "otsu",
        width: Optional[Annotated[float, Range(0.5, 256.0)]] = None,
        size: Optional[Annotated[int, Range(1, 4096)]] = None,
        supersample: Annotated[int, Range(1, 16)] = 4,
        min_length: Optional[Annotated[float, Range(0.0, 4096.0)]] = None,
        softness: Annotated[float, Range(0.0, 1.0)] = 0.0,
    ):
        if min_length is not None and width is None:
            raise RecipeError("ink: `min_length` applies to pen strokes: set `width` too")
        if softness and width is not None:
            raise RecipeError(
                "ink: `softness` shapes the cut's edge, and a pen draws its own: set one of `softness`, `width`"
            )
        self.threshold = threshold
        self.softness = softness
        self.width = width
        self.min_length = 3 * width if min_length is None and width is not None else min_length
        self.size = size
        self.supersample = supersample

    def cut(self, frames: np.ndarray) -> float:
        if self.threshold == "otsu":
            return otsu_threshold(frames)
        return float(self.threshold)

    def shape(self, height: int, width: int) -> tuple[int, int]:
        if self.size is None:
            return height, width
        scale = self.size / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def apply(self, frames: np.ndarray, ctx: Context) -> np.ndarray:
        x = _frames(frames, "ink")
        h, w = x.shape[1:]
        oh, ow = self.shape(h, w)
        from scipy import ndimage

        ss = self.supersample
        cut = self.cut(x)
        sigma = 0.5 * oh * ss / h  # half an input pixel, in supersampled pixels
        out = np.empty((len(x), oh, ow), np.float32)
        for i, frame in enumerate(x):
            big = np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((ow * ss, oh * ss), Image.BICUBIC))
            mask = big > cut
            if self.width is not None and mask.any():
                centres = drop_specks(stroke_centres(big, sigma) & mask, self.min_length * ss)
                mask = ndimage.distance_transform_edt(~centres) <= self.width * ss / 2
            elif self.softness:
                mask = np.clip((big - cut) / self.softness + 0.5, 0.0, 1.0)
            out[i] = mask.reshape(oh, ss, ow, ss).mean(axis=(1, 3))
        return out


@hookimpl
def qd_register_filters(register):
    register("sharpen", Sharpen, description="Pillow's ImageFilter.SHARPEN")
    register("edge-enhance", EdgeEnhance, description="Pillow's ImageFilter.EDGE_ENHANCE")
    register("anti-alias", AntiAlias, description="upscale by a factor and back down to smooth jagged edges")
    register("upscale", Upscale, description="resize to a target pixel size (nearest or lanczos)")
    register("invert", Invert, description="dark ink on white (1 - x)")
    register(
        "ink", Ink, description="crisp anti-aliased strokes at the output size: a (soft) threshold, optional pen width"
    )
