"""User-facing errors: what is wrong and what to do about it."""

from __future__ import annotations


class CloseError(Exception):
    """An error caused by input or settings, shown to the user as is.

    ``hint`` says what to do; the CLI prints both and exits with status 2,
    Blender operators report both and change nothing.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ScanError(CloseError):
    """A scan file or scan arrays that cannot be used."""


class CheckpointError(CloseError):
    """A checkpoint that cannot be found, read or trusted."""


class Cancelled(Exception):
    """A long job was cancelled by the user; nothing was written."""
