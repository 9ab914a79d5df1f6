"""The frame record that flows from every source into the analysis.

A source is a small object that yields :class:`Frame` objects and can be closed;
the analysis never knows whether frames come from a camera stream, a file or the
simulator (the LiberTEM-live pattern).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import CalibrationError, InputError

#: dtypes a frame image may have; anything else is converted or rejected by the source.
FRAME_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


@dataclass(frozen=True, slots=True)
class Frame:
    """One 2-D image of a movie.

    Attributes
    ----------
    index : int
        0-based frame number in its movie or series (gaps reveal lost frames).
    timestamp_s : float
        Acquisition time in seconds since the start of the series. Sources without
        timing use ``index * frame_interval_s``, or ``float(index)`` when even the
        interval is unknown.
    pixel_size_nm : float or None
        Pixel size in nm/px from the source's metadata, or None when it has none.
    image : ndarray, shape (rows, cols)
        uint8, uint16 or float32 pixels, gray. Sources convert RGB to gray.
    series : str
        Name of the series / movie this frame belongs to.
    received_s : float or None
        ``time.perf_counter()`` when the frame entered the process; latency is
        measured from here to results written.
    """

    index: int
    timestamp_s: float
    pixel_size_nm: float | None
    image: np.ndarray
    series: str = ""
    received_s: float | None = None


@runtime_checkable
class FrameSource(Protocol):
    """An iterable of :class:`Frame` with metadata and ``close()``.

    Attributes every source provides (None where unknown):
    ``name`` (str), ``pixel_size_nm`` (float | None), ``pixel_size_source``
    (``"metadata"``, ``"user"``, ``"scale bar"`` or None), ``frame_interval_s``
    (float | None) and ``n_frames`` (int | None, None for live streams).
    """

    name: str
    pixel_size_nm: float | None
    pixel_size_source: str | None
    frame_interval_s: float | None
    n_frames: int | None

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


def _positive_finite(value: object, *, what: str, unit: str, error: type[Exception]) -> float:
    """``value`` as a float > 0 and finite, or ``error`` with one readable line."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise error(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise error(f"{what} must be positive and finite, got {number!r} {unit}")
    return number


def validate_frame_interval_s(frame_interval_s: float) -> float:
    """Return ``frame_interval_s`` (s) as a float > 0, or raise :class:`InputError`."""
    return _positive_finite(frame_interval_s, what="frame interval", unit="s", error=InputError)


def validate_pixel_size_nm(pixel_size_nm: float | None, *, what: str = "pixel size") -> float:
    """Return ``pixel_size_nm`` as a float, or raise :class:`CalibrationError`.

    Parameters
    ----------
    pixel_size_nm : float or None
        Candidate pixel size in nm/px.
    what : str
        Name used in the error message.
    """
    if pixel_size_nm is None:
        raise CalibrationError(
            f"no {what} known: pass --pixel-size-nm X (nm per pixel)"
        )
    return _positive_finite(pixel_size_nm, what=what, unit="nm/px", error=CalibrationError)
