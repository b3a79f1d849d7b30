"""Atomic file writes: a file is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import glob
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator

from .errors import WRITE_ERRNOS, InputError, WriteError, os_error_line

# What an existing path is, when it is not a regular file: qd never replaces one of these.
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def refuse_not_regular(path: Path | str, example: str = "") -> None:
    """InputError when `path` exists and is not a regular file (following a link: a link to
    a file is replaced like the file, a link to a device is refused like the device).

    os.replace puts a new file in place of whatever has that name: as root, `--out /dev/null`
    replaced the machine's /dev/null. Only a regular file can be one qd wrote before."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise InputError(os_error_line(e, path)) from None
    except ValueError as e:  # a NUL byte, lone surrogates: no file can have that name
        shown = str(path).encode("utf-8", "backslashreplace").decode("utf-8")
        raise InputError(f"output {shown} is not a name a file can have ({type(e).__name__}); give another") from None
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    folder = stat.S_ISDIR(mode)  # a folder gets an example file inside it; a device or FIFO does not
    fix = f"give a file name, for example {example}" if example and folder else "give the path of a new or regular file"
    raise InputError(f"output {path} is {kind}; qd replaces only regular files: {fix}")


def check_target(path: Path | str, example: str = "") -> Path:
    """Before any work: `path` is somewhere atomic_path can write. It is new or a regular file
    (refuse_not_regular), and a file can be made in the nearest folder that exists: that is
    tried, not inferred from permission bits, since root passes every permission check and
    still cannot create files under /proc or /sys. Returns the absolute path."""
    path = Path(path).expanduser().absolute()
    refuse_not_regular(path, example)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write {path}: no permission to write in {parent}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".qd-probe-", dir=parent)
    except OSError as e:
        reason = (e.strerror or type(e).__name__).lower()
        raise InputError(
            f"cannot write {path}: files cannot be made in {parent} ({reason}); write somewhere else"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return path


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`.

    On any exception the temporary file is removed and `path` is left untouched. The
    temporary name keeps the suffix so libraries that pick a format by extension still work.
    """
    path = Path(path)
    refuse_not_regular(path)
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
        refuse_not_regular(path)  # again: a FIFO or device made there while we wrote
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
