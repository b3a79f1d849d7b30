"""Several image arrays seen as one, without copying them: how a many-category dataset stays
on disk.

Each part is typically a category's (N_i, H, W) uint8 memmap. Indexing the stack with an
int, a slice or an index array reads only the rows asked for, from the parts that hold them,
so a 345-category set (about 50M drawings, 39 GB) costs a few bytes of offsets in memory,
not 39 GB. The trainer only ever asks for batches of rows.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class ImageStack:
    """Parts of shape (N_i, ...) with one dtype and trailing shape, read as (sum N_i, ...)."""

    def __init__(self, parts: Sequence[np.ndarray]):
        if not parts:
            raise ValueError("an ImageStack needs at least one part")
        self.parts = list(parts)
        first = self.parts[0]
        for p in self.parts[1:]:
            if p.shape[1:] != first.shape[1:] or p.dtype != first.dtype:
                raise ValueError(f"parts differ: {first.dtype}{first.shape[1:]} vs {p.dtype}{p.shape[1:]}")
        # offsets[i] is the first row of part i; offsets[-1] the total.
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts], dtype=np.int64)
        self.shape = (int(self.offsets[-1]),) + tuple(first.shape[1:])
        self.dtype = first.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def _rows(self, index) -> np.ndarray:
        n = self.shape[0]
        if isinstance(index, slice):
            return np.arange(*index.indices(n), dtype=np.int64)
        rows = np.asarray(index)
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise IndexError(f"boolean index of shape {rows.shape} for {n} rows")
            return np.flatnonzero(rows)
        if not np.issubdtype(rows.dtype, np.integer):
            raise IndexError(
                f"only integers, slices and integer or boolean arrays index an ImageStack, got {rows.dtype}"
            )
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"index out of range for {n} rows")
        return np.where(rows < 0, rows + n, rows)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows (any shape of row numbers) as a new in-memory array of shape rows.shape + item shape."""
        flat = rows.reshape(-1)
        out = np.empty((len(flat),) + self.shape[1:], self.dtype)
        part = np.searchsorted(self.offsets, flat, side="right") - 1
        for p in np.unique(part):
            mask = part == p
            out[mask] = self.parts[p][flat[mask] - self.offsets[p]]
        return out.reshape(rows.shape + self.shape[1:])

    def __getitem__(self, index):
        rest = ()
        if isinstance(index, tuple):
            index, rest = (index[0], index[1:]) if index else (slice(None), ())
        if isinstance(index, (int, np.integer)):
            row = self.take(self._rows(np.array([index])))[0]
            return row[rest] if rest else row
        out = self.take(self._rows(index))
        return out[(slice(None),) + rest] if rest else out

    def __array__(self, dtype=None, copy=None):
        # Reads every part: only for small sets (tests, comparisons), never in the trainer.
        out = self.take(np.arange(len(self), dtype=np.int64))
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"ImageStack({len(self.parts)} parts, shape={self.shape}, dtype={self.dtype})"
