"""SIGINT and SIGTERM: a run stops where it is, every `finally` and atomic write unwinds, and
the checkpoints written so far are kept.

The handler raises Stopped wherever the main thread happens to be. That is almost always the
right place, but not always: when it lands inside a finalizer (a TensorFlow object's
`__del__`, a weakref callback, a generator being closed), Python prints the exception as
"Exception ignored in ..." and carries on, and a training run would then go on to its budget
with the signal forgotten (seen in CI: SIGINT, a traceback, then two minutes of training).
So the handler also records the signal, the long loops call check() at each step (a signal
that was swallowed stops the run there), and while it is installed Python's report of a
swallowed Stopped is dropped: it is not lost, only postponed to the next check().

It sits at the bottom (imports nothing of qd's): the command line installs it, the trainer
checks it.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading


class Stopped(BaseException):
    """SIGINT or SIGTERM, raised like KeyboardInterrupt so every `finally` and atomic write
    unwinds, but not a KeyboardInterrupt: typer turns that into a silent exit 130."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# The signals received since install(). Raised inside a callback from TensorFlow's C++ code,
# Stopped can also come back out of it as another exception (TensorFlow re-raises what its
# callback raised as its own kind); the command line still reports that as the signal.
received: list[int] = []


def handler(signum, frame) -> None:
    received.append(signum)
    raise Stopped(signum)


def install() -> tuple:
    """Install the handler for SIGINT and SIGTERM, forget earlier signals, and keep a
    swallowed Stopped off stderr; returns what it replaced, for restore(). A signal the parent
    ignored (SIGINT in a background job) stays ignored. Only the main thread can install
    signal handlers: elsewhere, only the rest."""
    received.clear()
    hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_unraisable, hook)
    if threading.current_thread() is not threading.main_thread():
        return {}, hook
    return {
        sig: signal.signal(sig, handler)
        for sig in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(sig) is not signal.SIG_IGN
    }, hook


def restore(previous: tuple) -> None:
    """Put back what install() replaced; the signals it recorded are handled by then, and a
    later run in this process (a test's, the studio's) must not stop for them."""
    handlers, hook = previous
    for sig, old in handlers.items():
        signal.signal(sig, old)
    sys.unraisablehook = hook
    received.clear()


def _unraisable(default, unraisable) -> None:
    if not isinstance(unraisable.exc_value, Stopped):
        default(unraisable)


def check() -> None:
    """Raise Stopped if a signal arrived whose exception was swallowed on its way out."""
    if received:
        raise Stopped(received[0])
