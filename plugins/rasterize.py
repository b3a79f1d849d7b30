"""Quick, Draw! strokes -> greyscale bitmaps, the way Google made `numpy_bitmap/`.

Google's bitmaps come from its simplified strokes (coordinates 0..255, aligned to 0 at the
top-left). The geometry that reproduces them, found by measuring against the real files:

- the 256-unit frame is surrounded by a margin of 24 units on every side (16 of padding plus
  half the 16-unit line), so the canvas spans 256 + 48 = 304 units. Scaling the bare 0..256
  frame to the canvas instead puts the ink in the wrong place (mean |diff| ~ 55/255);
- the drawing's bounding box is centred in the frame. (Google's own code shifts by
  (256 - max) / 2, which is the same for its data, aligned to min = 0, except for the rare
  drawing whose minimum is not 0: 7 of the 650 checked. Matching those would lower the mean
  |diff| by about 0.05/255 but would leave any other strokes off-centre.);
- lines are 16 units wide with round caps and joins;
- drawn at `supersample` x the canvas size with PIL ImageDraw, then box-averaged down.

Measured on the first 25 rows of the 26 local categories (tests/test_rasterize.py):
mean |diff| about 3.1/255 at 8x supersampling, about 1.8/255 at 16x.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Bump when the drawing changes: cached rasters (datasets.QuickDrawStrokes) are keyed on it.
VERSION = 1
FRAME = 256.0
LINE_WIDTH = 16.0
# Google's padding (16) on each side plus room for half a line (8) on each side.
MARGIN = 16.0 + LINE_WIDTH / 2

Stroke = Sequence[Sequence[float]]  # [[x0, x1, ...], [y0, y1, ...]] (a third row, t, is ignored)


def _points(stroke: Stroke) -> np.ndarray:
    pts = np.asarray(stroke[:2], dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] != 2:
        raise ValueError(f"a stroke must be [[x...], [y...]], got shape {pts.shape}")
    return pts.T  # (P, 2) as (x, y)


def rasterize(strokes: Sequence[Stroke], shape: tuple[int, int] = (28, 28), supersample: int = 8) -> np.ndarray:
    """One drawing -> (H, W) uint8, ink 255 on 0. An empty drawing gives a blank canvas."""
    h, w = int(shape[0]), int(shape[1])
    ss = int(supersample)
    big_h, big_w = h * ss, w * ss
    img = Image.new("L", (big_w, big_h), 0)
    strokes = [p for p in (_points(s) for s in strokes) if len(p)]
    if not strokes:
        return np.zeros((h, w), np.uint8)
    every = np.concatenate(strokes)
    offset = FRAME / 2.0 - (every.min(axis=0) + every.max(axis=0)) / 2.0
    # The square frame fits the shorter side; a non-square canvas centres it on the longer one.
    side = min(big_h, big_w)
    scale = side / (FRAME + 2 * MARGIN)
    origin = np.array([(big_w - side) / 2.0, (big_h - side) / 2.0])
    width = max(1, int(round(LINE_WIDTH * scale)))
    radius = width / 2.0
    draw = ImageDraw.Draw(img)
    for pts in strokes:
        xy = (pts + offset + MARGIN) * scale + origin
        coords = [tuple(p) for p in xy.tolist()]
        if len(coords) > 1:
            draw.line(coords, fill=255, width=width, joint="curve")
        # PIL's line has square ends; round caps (and single-point dots) need a disc.
        for x, y in {coords[0], coords[-1]}:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
    return np.asarray(img.reduce(ss), dtype=np.uint8)


def rasterize_many(
    drawings: Iterable[Sequence[Stroke]],
    shape: tuple[int, int] = (28, 28),
    supersample: int = 8,
    count: int | None = None,
) -> np.ndarray:
    """Many drawings -> (N, H, W) uint8. `count`, when known, preallocates the result."""
    if count is not None:
        out = np.zeros((count, *shape), np.uint8)
        n = 0
        for i, strokes in enumerate(drawings):
            out[i] = rasterize(strokes, shape, supersample)
            n = i + 1
        return out[:n]
    rows = [rasterize(s, shape, supersample) for s in drawings]
    return np.stack(rows) if rows else np.zeros((0, *shape), np.uint8)
