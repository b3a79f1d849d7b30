"""Atomic file writes: a file is either complete or absent, never half-written."""
from __future__ import annotations

import contextlib
import os
import tempfile
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
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:  # a full disk, a read-only folder
            raise WriteError(os_error_line(e, path)) from e
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
