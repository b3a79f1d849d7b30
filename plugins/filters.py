"""Built-in post-filters: frames (K, H, W) float32 in [0, 1] in, frames out.

Pillow does the image work, as in the blog. The kernel filters (sharpen, edge-enhance) run on
8-bit images, because that is what Pillow defines them on; resampling runs on 32-bit float
images so that chaining filters does not round to 8 bits at every step.
"""
from __future__ import annotations

from typing import Annotated, Literal

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


@hookimpl
def qd_register_filters(register):
    register("sharpen", Sharpen, description="Pillow's ImageFilter.SHARPEN")
    register("edge-enhance", EdgeEnhance, description="Pillow's ImageFilter.EDGE_ENHANCE")
    register("anti-alias", AntiAlias, description="upscale by a factor and back down to smooth jagged edges")
    register("upscale", Upscale, description="resize to a target pixel size (nearest or lanczos)")
    register("invert", Invert, description="dark ink on white (1 - x)")
