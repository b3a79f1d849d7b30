"""Built-in post-filters: frames (K, H, W) float32 in [0, 1] in, frames out.

Pillow does the image work, as in the blog. The kernel filters (sharpen, edge-enhance) run on
8-bit images, because that is what Pillow defines them on; resampling runs on 32-bit float
images so that chaining filters does not round to 8 bits at every step.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

import numpy as np
from PIL import Image, ImageFilter

from qdcore import Context, Filter, InputError, Range, hookimpl

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
    out = _per_frame(frames, lambda f: Image.fromarray(np.ascontiguousarray(f, dtype=np.float32)).resize(size, resample))
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

        return (_per_frame(x, run).astype(np.float32) / np.float32(255.0))


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


def centre_lines(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool shape -> bool pixels on its centre lines (an approximate medial axis).

    A pixel is on a centre line when no neighbour is more than half a pixel further from
    the background than it: across a stroke the distance changes by about one pixel a step,
    along a stroke's spine by much less.
    """
    from scipy import ndimage  # here, not at the top: it costs ~0.2 s and `qd plugins` loads this module

    dist = ndimage.distance_transform_edt(mask)
    return mask & (dist >= ndimage.maximum_filter(dist, size=3, mode="constant") - 0.5)


class Ink(Filter):
    """Crisp pen strokes from DRAW's soft canvas, drawn at the output size.

    Each frame is resized smoothly (bicubic) to `supersample` times the output size, cut at
    `threshold` (ink where brighter), optionally redrawn with a round pen `width` output
    pixels wide along the shape's centre lines, and box-averaged down to the output size, so
    the edges are anti-aliased at the size the GIF shows. `threshold: otsu` takes Otsu's cut
    over all the frames it is given at once (one cut for every step and sample, so ink that
    grows from step to step stays growing). The output size is `size` on the longer side
    (aspect kept), or the input's size when null.
    """

    def __init__(
        self,
        threshold: Union[Literal["otsu"], Annotated[float, Range(0.0, 1.0)]] = "otsu",
        width: Optional[Annotated[float, Range(0.5, 256.0)]] = None,
        size: Optional[Annotated[int, Range(1, 4096)]] = None,
        supersample: Annotated[int, Range(1, 16)] = 4,
    ):
        self.threshold = threshold
        self.width = width
        self.size = size
        self.supersample = supersample

    def cut(self, frames: np.ndarray) -> float:
        if self.threshold == "otsu":
            return otsu_threshold(frames)
        return float(self.threshold)

    def apply(self, frames: np.ndarray, ctx: Context) -> np.ndarray:
        x = _frames(frames, "ink")
        h, w = x.shape[1:]
        if self.size is None:
            oh, ow = h, w
        else:
            scale = self.size / max(h, w)
            oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
        from scipy import ndimage

        ss = self.supersample
        cut = self.cut(x)
        radius = None if self.width is None else self.width * ss / 2
        out = np.empty((len(x), oh, ow), np.float32)
        for i, frame in enumerate(x):
            big = np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((ow * ss, oh * ss), Image.BICUBIC))
            mask = big > cut
            if radius is not None and mask.any():
                mask = ndimage.distance_transform_edt(~centre_lines(mask)) <= radius
            out[i] = mask.reshape(oh, ss, ow, ss).mean(axis=(1, 3))
        return out


@hookimpl
def qd_register_filters(register):
    register("sharpen", Sharpen, description="Pillow's ImageFilter.SHARPEN")
    register("edge-enhance", EdgeEnhance, description="Pillow's ImageFilter.EDGE_ENHANCE")
    register("anti-alias", AntiAlias, description="upscale by a factor and back down to smooth jagged edges")
    register("upscale", Upscale, description="resize to a target pixel size (nearest or lanczos)")
    register("invert", Invert, description="dark ink on white (1 - x)")
    register("ink", Ink, description="crisp anti-aliased pen strokes: threshold (Otsu), optional pen width, at the output size")
