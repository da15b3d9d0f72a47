"""User-facing errors.

A ``UserError`` is something the user can fix (a bad flag, bad data, a busy port). The CLI turns
it into one actionable line and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user caused and can fix; its message says what to do."""

    exit_code = 2


class BadFlag(UserError):
    """A command-line flag, or a combination of flags, that cannot work."""


class BadData(UserError):
    """A dataset YAML, image folder or label set that cannot be used."""


class BadConfig(UserError):
    """A model or hyperparameter YAML that cannot be used."""


class BadCheckpoint(UserError):
    """A weights file that is missing, truncated, corrupt or unsafe."""


class PortBusy(UserError):
    """The rendezvous port is already taken by another process."""


class DistFailure(UserError):
    """A distributed job could not start or lost a rank."""

    exit_code = 1


class CannotSave(UserError):
    """A checkpoint could not be written (a full disk, a lost mount, no permission); the previous one is intact."""

    exit_code = 1


class NonFiniteLoss(UserError):
    """The loss or the gradients stayed NaN/inf for many updates in a row."""

    exit_code = 1


class Interrupted(UserError):
    """Training stopped on SIGINT/SIGTERM after a checkpoint; exits 128 + the signal number (130, 143)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
