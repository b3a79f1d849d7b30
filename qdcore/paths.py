"""Where qd reads data and keeps its caches. Environment variables win over defaults."""

from __future__ import annotations

import os
import re
from pathlib import Path

DATA_ENV = "QD_DATA_DIR"
CACHE_ENV = "QD_CACHE_DIR"
# A model pack's name (`model.from: NAME`), also its folder under <cache>/packs: here, not in
# packs.py, so reading a recipe never imports the packs (nor, through them, the trainer).
# Matched whole (fullmatch): `$` alone also matches before a final newline ("zoo\n").
PACK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def data_dir() -> Path | None:
    """A local mirror of the bucket's `full/` folder (holding numpy_bitmap/, simplified/)."""
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """$QD_CACHE_DIR, else $XDG_CACHE_HOME/qd, else ~/.cache/qd."""
    value = os.environ.get(CACHE_ENV)
    if value:
        # Absolute: TensorFlow's checkpoint state names checkpoints by a path it joins to a
        # relative folder itself, and a relative cache then made finished models unreadable.
        return Path(value).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "qd"
