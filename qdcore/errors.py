"""Domain errors. Only cli.py turns them into one `Error: ...` line and an exit code."""
from __future__ import annotations


class QdError(Exception):
    """Base of every error qd reports to a user. `exit_code` is what the CLI exits with."""

    exit_code = 1


class RecipeError(QdError):
    """A recipe is malformed: bad YAML, unknown key, wrong type, value out of range.

    `where` is the file and location, for example `recipe.yaml: filters[2].scale`.
    """

    exit_code = 2

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class UnknownNameError(QdError):
    """A recipe names a plugin component nobody registered."""

    exit_code = 2


class InputError(QdError):
    """Bad input data: a missing, corrupt or wrongly shaped file, an unknown category."""

    exit_code = 2


class PluginError(QdError):
    """The installed plugins are inconsistent: a duplicate name, a misspelled hook."""

    exit_code = 1


class TrainingError(QdError):
    """Training failed while running, for example a non-finite loss."""

    exit_code = 1


class Cancelled(QdError):
    """Training was stopped on request (the studio's Cancel); its last checkpoint is kept."""

    exit_code = 130
