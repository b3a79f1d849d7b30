"""Where qd reads data and keeps its caches. Environment variables win over defaults."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "QD_DATA_DIR"
CACHE_ENV = "QD_CACHE_DIR"


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
