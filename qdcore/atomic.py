"""Atomic file writes: a file is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

from .errors import WRITE_ERRNOS, WriteError, os_error_line


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`.

    On any exception the temporary file is removed and `path` is left untouched. The
    temporary name keeps the suffix so libraries that pick a format by extension still work.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".part" + path.suffix, dir=path.parent)
    except OSError as e:
        raise WriteError(os_error_line(e, path)) from e
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes 0600 files; a written GIF should get the permissions any new file would.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
        remove_stale_parts(path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:  # a full disk, a read-only folder
            raise WriteError(os_error_line(e, path)) from e
        raise


# A temporary file untouched this long belongs to a writer that died (kill -9, power cut):
# a live write streams into it, or encodes in memory and writes it in one call.
STALE_AFTER = 600.0


def temporary_names(path: Path) -> str:
    """The glob of atomic_path's temporary files for `path` (hidden, so easy to miss)."""
    return f".{glob.escape(path.stem)}.*{glob.escape(path.suffix)}.part{glob.escape(path.suffix)}"


def remove_stale_parts(path: Path | str, older_than: float = STALE_AFTER) -> None:
    """Remove the temporary files a killed writer of `path` left beside it. One modified
    recently may belong to a write running now, so only old ones go."""
    path = Path(path)
    cutoff = time.time() - older_than
    for part in path.parent.glob(temporary_names(path)):
        try:
            if part.stat().st_mtime < cutoff:
                part.unlink()
        except OSError:
            pass  # gone already, or not ours to remove


def current_umask() -> int:
    """The process's umask, for giving a file or folder made 0600/0700 (mkstemp, mkdtemp) the
    permissions any new one would get. Reading it means setting it, so it is set back at once."""
    current = os.umask(0)
    os.umask(current)
    return current
