"""Domain errors. Only cli.py turns them into one `Error: ...` line and an exit code."""

from __future__ import annotations

import errno


class QdError(Exception):
    """Base of every error qd reports to a user. `exit_code` is what the CLI exits with;
    `status` the HTTP status the studio's web layer answers with (4xx: the user can fix it)."""

    exit_code = 1
    status = 500


class RecipeError(QdError):
    """A recipe is malformed: bad YAML, unknown key, wrong type, value out of range.

    `where` is the file and location, for example `recipe.yaml: filters[2].scale`.
    """

    exit_code = 2
    status = 400

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class UnknownNameError(QdError):
    """A recipe names a plugin component nobody registered."""

    exit_code = 2
    status = 400


class InputError(QdError):
    """Bad input data: a missing, corrupt or wrongly shaped file, an unknown category."""

    exit_code = 2
    status = 400


class NotFound(InputError):
    """A thing a request names is not there (an upload, a generation, a training job)."""

    status = 404


class TooLarge(InputError):
    """An input is over a size limit (an upload, a request body)."""

    status = 413


class Conflict(QdError):
    """The request is fine but the state is not: a model training right now, a job not running."""

    exit_code = 1
    status = 409


class NotTrained(Conflict):
    """A recipe's model is needed and not trained, where nothing may train it (the studio's Generate)."""


class PluginError(QdError):
    """The installed plugins are inconsistent: a duplicate name, a misspelled hook."""

    exit_code = 1


class TrainingError(QdError):
    """Training failed while running, for example a non-finite loss."""

    exit_code = 1


# The errors of a write that a user fixes by freeing space or choosing another folder.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def os_error_line(error: OSError, path=None) -> str:
    """One line for a failed file operation, with the fix a user can make: a full disk, a
    read-only or forbidden folder. `path` is what the user knows (not a temporary name)."""
    from pathlib import Path

    from .paths import cache_dir

    path = path or error.filename or "a file"
    reason = error.strerror or str(error) or type(error).__name__
    reason = reason[:1].lower() + reason[1:]
    target = Path(path).absolute()
    in_cache = cache_dir().absolute() in (target, *target.parents)
    elsewhere = "set QD_CACHE_DIR to a writable folder with space" if in_cache else "write somewhere else (--out)"
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"cannot write {path}: {reason}; free some space or {elsewhere}"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {path}: {reason}; {elsewhere}"
    return f"{path}: {reason}"


class WriteError(QdError):
    """A file could not be written: a full disk, a read-only folder. Nothing half-written is left."""

    exit_code = 1


class Cancelled(QdError):
    """Training was stopped on request (the studio's Cancel); its last checkpoint is kept."""

    exit_code = 130
