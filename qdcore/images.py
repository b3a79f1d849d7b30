"""Opening an image a user gave qd: one size rule for every place that does it.

A seed file, an `images` dataset folder and an upload to a web page all open images through
`open_image`, so they refuse the same things with the same line. The rule is a pixel count,
checked from the header before a single pixel is decoded: a small PNG can claim 20000x20000
(400 million pixels, about 1.6 GB once decoded as RGBA) and take the machine down. DRAW
works at 28x28; a photo of a doodle is a few megapixels.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator, Union

from .errors import InputError

if TYPE_CHECKING:  # Pillow itself is imported when an image is opened
    from PIL import Image

# 8192 x 8192. Below Pillow's own DecompressionBombWarning threshold (about 89.5 million
# pixels), so Pillow never warns or raises first and every refusal is this one.
MAX_PIXELS = 8192 * 8192

Source = Union[str, Path, bytes, BinaryIO]

# What Pillow raises for a file that is not a valid image, depending on the format and on
# where in the file the damage is (header, chunk table, compressed data).
_UNREADABLE = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    struct.error,
    TypeError,
    KeyError,
    ZeroDivisionError,
    MemoryError,
)


def too_large(name: str, width: int | None = None, height: int | None = None, pixels: int | None = None) -> InputError:
    if width and height:
        size = f"{width}x{height} = {width * height:,} pixels"
    else:
        size = f"{pixels:,} pixels" if pixels else "more pixels than Pillow allows"
    side = int(MAX_PIXELS**0.5)
    return InputError(
        f"{name} is too large ({size}); the limit is {MAX_PIXELS:,} pixels (for example {side}x{side}): "
        "shrink the image first"
    )


@contextlib.contextmanager
def open_image(source: Source, name: str | None = None) -> Iterator["Image.Image"]:
    """A Pillow image whose size is within MAX_PIXELS, or InputError naming `name`.

    `source` is a path, bytes (an upload) or a binary file object. Reading the pixels
    (`.load()`, `.convert()`) inside the block may still fail on damaged data: do that inside
    `reading(name)` too.
    """
    from PIL import Image

    name = name or (str(source) if isinstance(source, (str, Path)) else "the image")
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with reading(name):
        im = Image.open(stream)
    with im:
        width, height = im.size
        if width * height > MAX_PIXELS:
            raise too_large(name, width, height)
        yield im


def unreadable(name: str, error: BaseException) -> InputError:
    # Pillow names a file object by its repr (`<_io.BytesIO object at 0x7f...>`): say `name`.
    detail = re.sub(r"<[^<>]*? at 0x[0-9a-fA-F]+>", name, str(error))
    return InputError(f"{name} is not a readable image ({type(error).__name__}: {detail}); give a PNG or JPEG file")


@contextlib.contextmanager
def reading(name: str) -> Iterator[None]:
    """Turns Pillow's errors while decoding pixels into one InputError naming `name`."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except Image.DecompressionBombError as e:
        # Pillow refuses far larger images itself, before their size reaches open_image; its
        # message still holds the pixel count.
        raise too_large(name, pixels=_pixels_in(str(e))) from None
    except _UNREADABLE as e:
        raise unreadable(name, e) from None


def _pixels_in(message: str) -> int | None:
    found = re.search(r"\((\d+) pixels\)", message)
    return int(found.group(1)) if found else None
