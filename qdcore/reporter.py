"""Where a run's words go: one object, handed down, instead of `quiet` flags and copies of a
"print to stderr unless quiet" lambda in every layer.

It sits at the bottom (it imports nothing of qd's), so the pipeline, the trainer, the step
plan and the benchmarks all take the same one, and the command line decides once where words
go (stderr; nothing with --quiet).
"""

from __future__ import annotations

import sys
from typing import Callable, Optional


class Reporter:
    """`quiet`: plugins and training show no progress (Context.quiet, the progress bar);
    `say` gets a run's own lines ("dataset: ...", "model: ..."), dropped without `lines`;
    `note` is the progress a person watching wants (the step plan, a warm start, a lock being
    waited for, a benchmark's stages): stderr unless quiet."""

    def __init__(self, quiet: bool = True, lines: Optional[Callable[[str], None]] = None):
        self.quiet = quiet
        self._lines = lines

    @classmethod
    def to_stderr(cls, quiet: bool = False) -> "Reporter":
        """Every word on stderr (none when quiet): a command's, a benchmark's."""
        return cls(quiet, None if quiet else _stderr)

    def say(self, message: str) -> None:
        if self._lines is not None:
            self._lines(message)

    def note(self, message: str) -> None:
        if not self.quiet:
            _stderr(message)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


QUIET = Reporter()
