"""Errors that the CLI reports as one readable line (no traceback)."""

from __future__ import annotations


class EtemliveError(Exception):
    """Base class for every error a user can cause and fix (bad input, bad options).

    The CLI prints ``str(err)`` on one line and exits non-zero. Messages must say
    what was wrong and, where possible, what to do about it.
    """


class InputError(EtemliveError):
    """A movie, file, frame or message that cannot be read or is not valid."""


class CalibrationError(EtemliveError):
    """No usable pixel size: missing, non-positive or not finite."""


class BackendUnavailable(EtemliveError):
    """A segmentation backend that cannot run on this machine (missing package, no GPU)."""
