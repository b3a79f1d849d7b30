"""One process at a time per model folder.

Two `qd run` of one recipe would otherwise both train the same model in the same cache folder,
their checkpoints interleaving. The lock is the kernel's `flock` on a file beside the folder:
the kernel drops it when its process ends, however it ends (`kill -9`, a crash, a power cut on
a local disk), so a lock left by a dead process never blocks anyone. The file itself stays and
holds the pid of the last holder, which is only used to say whom we are waiting for.

Standard library only (fcntl, on Linux and macOS). Where fcntl is missing (Windows), runs are
not serialised; docs/reliability.md says so.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

POLL_SECONDS = 0.2


@contextlib.contextmanager
def hold(path: Path, what: str, on_wait: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """Hold the exclusive lock `path` for the block; if another process holds it, say so once
    through `on_wait` and wait (polling, so Ctrl-C still interrupts) until it is free."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    on_wait(
                        f"waiting for another qd process{_holder(fd)} that is {what} ({path}); "
                        "this run goes on when it finishes"
                    )
                told = True
                time.sleep(POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
