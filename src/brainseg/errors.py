"""Errors that the command line reports as one clear line, without a traceback."""

from __future__ import annotations


class BrainsegError(ValueError):
    """A problem with the user's input or settings; the message names the file/value at fault."""


class DataError(BrainsegError):
    """A dataset file or folder that cannot be used (names the file and what is wrong).

    Attributes:
        patient: the patient folder the problem belongs to, when known (lets `--skip-bad`
            drop that patient and say so).
    """

    def __init__(self, message: str, patient: str | None = None) -> None:
        super().__init__(message)
        self.patient = patient


class CheckpointError(BrainsegError):
    """A checkpoint that cannot be loaded (wrong format version, missing keys, other file)."""
