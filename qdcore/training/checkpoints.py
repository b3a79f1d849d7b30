"""Reading back what training left in a model folder, when it may be damaged.

A crash, `kill -9` or a bad disk can leave the newest checkpoint unreadable (TensorFlow
checks every tensor's CRC and length when it restores), `finished.json` truncated, or
`last_batch.npy` cut short. Nothing here gives up on a model folder because one file is bad:
the newest checkpoint that restores wins, a damaged one is moved to `checkpoints/damaged/`
(kept for a post-mortem, out of TensorFlow's way), and each finding is one warning line.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

DAMAGED = "damaged"


def warn(message: str) -> None:
    # cli.py prints a warning as one `Warning: ...` line.
    warnings.warn(message, UserWarning, stacklevel=3)


def set_aside_damaged_state(directory: Path) -> None:
    """Move a `checkpoint` state file TensorFlow cannot read to damaged/, with one warning.
    CheckpointManager's constructor reads that file and raises (UnicodeDecodeError on binary
    garbage), so it must be gone before a manager is built; candidates() then finds the
    checkpoints from their files."""
    state = Path(directory) / "checkpoint"
    if not state.is_file():
        return
    try:
        tf.train.get_checkpoint_state(str(directory))
    except Exception as e:  # noqa: BLE001 - UnicodeDecodeError, a protobuf ParseError, ...
        warn(
            f"{state} is damaged ({type(e).__name__}); "
            f"moved it to {DAMAGED}/ and looking at the checkpoint files instead"
        )
        aside = state.parent / DAMAGED
        aside.mkdir(exist_ok=True)
        shutil.move(str(state), aside / state.name)


def candidates(directory: Path) -> list[str]:
    """The checkpoint prefixes CheckpointManager recorded in `directory`, newest first, that
    still have an index file. A kill while TensorFlow writes a checkpoint leaves only a
    `*_temp` folder and the previous record, so a half-written checkpoint is never listed."""
    try:
        state = tf.train.get_checkpoint_state(str(directory))
    except Exception as e:  # noqa: BLE001 - a damaged `checkpoint` record: fall back to the files
        warn(f"{directory / 'checkpoint'} is damaged ({type(e).__name__}); looking at the checkpoint files instead")
        state = None
    if state is not None:
        paths = [p if Path(p).is_absolute() else str(directory / p) for p in state.all_model_checkpoint_paths]
    else:
        paths = sorted((str(p.with_suffix("")) for p in directory.glob("ckpt-*.index")), key=_number)
    return [p for p in reversed(paths) if Path(p + ".index").is_file()]


def remove_half_written(directory: Path) -> None:
    """Remove the `*_temp` folders a save killed by SIGKILL (or power loss) left: no record
    lists them and no later save reuses them. Only a trainer holding the model's lock may call
    this, since a running save writes into such a folder."""
    for temp in Path(directory).glob("*_temp"):
        shutil.rmtree(temp, ignore_errors=True)


def _number(prefix: str) -> int:
    tail = prefix.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def restore_newest(
    checkpoint: tf.train.Checkpoint, directory: Path, *, partial: bool = False, restore=None
) -> str | None:
    """Restore the newest checkpoint in `directory` that reads back whole; its prefix, or None.

    A checkpoint that fails is moved aside with one warning, so the next run does not trip
    on it again. After None the variables may hold parts of a failed restore: build fresh ones.
    `partial=True` allows objects the checkpoint has that `checkpoint` does not (Adam's
    state, when only the model is wanted). `restore(prefix)`, when given, restores instead
    (the trainer's, which also reads checkpoints written before qd used Keras' Adam).
    """
    found = candidates(Path(directory))
    for i, prefix in enumerate(found):
        try:
            if restore is not None:
                restore(prefix)
            else:
                status = checkpoint.restore(prefix)
                status.expect_partial() if partial else status.assert_consumed()
            return prefix
        except Exception as e:  # noqa: BLE001 - TF raises DataLossError, IndexError, ValueError, ...
            nxt = f"trying {Path(found[i + 1]).name}" if i + 1 < len(found) else "no older checkpoint is left"
            step = _number(found[i + 1]) if i + 1 < len(found) else None
            where = f" (step {step})" if step is not None else ""
            warn(
                f"checkpoint {Path(prefix).name} in {directory} is damaged ({type(e).__name__}: "
                f"{_first_line(e)}); moved it to {DAMAGED}/, {nxt}{where}"
            )
            _move_aside(Path(prefix))
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else ""


def _move_aside(prefix: Path) -> None:
    aside = prefix.parent / DAMAGED
    aside.mkdir(exist_ok=True)
    for f in prefix.parent.glob(prefix.name + ".*"):
        shutil.move(str(f), aside / f.name)


def read_finished(path: Path) -> dict | None:
    """finished.json as a dict with an integer `step`, or None (with a warning) if it is
    missing or damaged; a damaged one is removed so training resumes and rewrites it."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        classes = record.get("classes") if isinstance(record, dict) else None
        if (
            isinstance(record, dict)
            and isinstance(record.get("step"), int)
            and not isinstance(record.get("step"), bool)
            and record["step"] >= 0
            and (classes is None or (isinstance(classes, list) and all(isinstance(c, str) for c in classes)))
            and isinstance(record.get("stopped"), (dict, type(None)))
        ):
            return record
        problem = "it is not a record with a step (and class names, a stop) as qd writes them"
    except (ValueError, UnicodeDecodeError, OSError, RecursionError) as e:
        problem = f"{type(e).__name__}: {_first_line(e)}"
    warn(f"{path} is damaged ({problem}); checking the checkpoints again")
    path.unlink(missing_ok=True)
    return None


def read_record(path: Path) -> dict | None:
    """A small JSON record qd wrote beside a model (start.json), or None: absent or damaged
    (a damaged one is only left out, with a warning: it describes the model, it decides nothing)."""
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")[:1_000_000])
        if isinstance(value, dict):
            return value
    except (ValueError, UnicodeDecodeError, OSError, RecursionError):
        pass
    warn(f"{path} is damaged; left out of the model's records")
    return None


def read_last_batch(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """last_batch.npy as (n, H, W) float32, or None (with a warning if it was damaged)."""
    if not path.exists():
        return None
    try:
        batch = np.load(path, allow_pickle=False)
        if isinstance(batch, np.ndarray) and batch.ndim == 3 and tuple(batch.shape[1:]) == tuple(shape) and len(batch):
            return batch
        problem = f"it holds {getattr(batch, 'shape', type(batch).__name__)}, not (n, {shape[0]}, {shape[1]})"
    except (ValueError, EOFError, OSError) as e:
        problem = f"{type(e).__name__}: {_first_line(e)}"
    warn(f"{path} is damaged ({problem}); rebuilding it from the data")
    return None


def save(manager: tf.train.CheckpointManager, step: int, last_saved: int | None) -> None:
    """manager.save, with a full disk or read-only cache as one TrainingError that says which
    checkpoint is kept. TensorFlow writes into `ckpt-N_temp/` and renames at the end, so a
    failed save leaves that folder only; it is removed."""
    from ..errors import TrainingError

    try:
        manager.save(checkpoint_number=step)
    except BaseException as e:
        # A signal (Ctrl-C, SIGTERM) can land mid-save too: no half-written folder either way.
        remove_half_written(Path(manager.directory))
        if not isinstance(e, (tf.errors.OpError, OSError)):
            raise
        message = e.message if isinstance(e, tf.errors.OpError) else (e.strerror or str(e))
        reason = message.rsplit("; ", 1)[-1].strip()
        reason = reason[:1].lower() + reason[1:]
        kept = (
            f"the checkpoint of step {last_saved} is kept"
            if last_saved is not None
            else "no checkpoint had been saved yet"
        )
        raise TrainingError(
            f"cannot save the checkpoint of step {step} in {manager.directory}: {reason}; {kept}. "
            "Free some space or set QD_CACHE_DIR to a writable folder, then run again to resume"
        ) from None
