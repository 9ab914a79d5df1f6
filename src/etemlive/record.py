"""Write a run's output folder incrementally and crash-safely.

Every table is appended and flushed once per analysed frame, so a run killed at any
point leaves each CSV parseable up to its last complete frame. Whole-file outputs
(``summary.json``, ``tracks.csv``, ``config.json``) are replaced atomically
(written to a temporary file, then ``os.replace``), so a reader never sees half a file.
Column names follow ``../shared/design.md`` ("Output folder contract").
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError
from .measure import PARTICLE_COLUMNS

#: frames.csv columns (one row per analysed frame).
FRAME_COLUMNS: tuple[str, ...] = (
    "frame",
    "time_s",
    "count",
    "mean_diameter_nm",
    "std_diameter_nm",
    "latency_ms",
)
#: events.csv columns.
EVENT_COLUMNS: tuple[str, ...] = ("frame", "kind", "track_ids", "into_id")
#: drift.csv columns (cumulative drift removed before tracking).
DRIFT_COLUMNS: tuple[str, ...] = ("frame", "dx_nm", "dy_nm")
#: tracks.csv columns required by the contract (the tracker may add more after them).
TRACK_COLUMNS: tuple[str, ...] = (
    "track_id",
    "first_frame",
    "last_frame",
    "n_frames",
    "diameter_start_nm",
    "diameter_end_nm",
    "growth_rate_nm_per_s",
    "fate",
)


def _json_default(value: Any) -> Any:
    """Make numpy scalars, paths and non-finite floats JSON-serialisable."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite_or_none(obj: Any) -> Any:
    """Replace NaN / inf floats (invalid JSON) by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json_atomic(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    text = json.dumps(_finite_or_none(dict(data)), indent=2, default=_json_default)
    _write_text_atomic(path, text + "\n")


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv_atomic(path: str | Path, table: pd.DataFrame) -> None:
    """Write a whole table to ``path`` atomically."""
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    _write_text_atomic(Path(path), buffer.getvalue())


def prepare_output_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (and parents) and check it is writable.

    Raises
    ------
    InputError
        With one readable line when the folder cannot be created or written.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".etemlive-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputError(f"cannot write to output folder {str(out)!r}: {reason}") from None
    return out


class _CsvAppender:
    """One CSV file opened for appending with a fixed header; flushed per write."""

    def __init__(self, path: Path, columns: tuple[str, ...] | list[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self._fh = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 (kept open)
        self._fh.write(",".join(self.columns) + "\n")
        self._fh.flush()

    def append(self, table: pd.DataFrame) -> None:
        if len(table) == 0:
            return
        # Write whole rows in one call so a crash never leaves half a frame's rows
        # interleaved with the next frame.
        text = table.reindex(columns=self.columns).to_csv(index=False, header=False)
        self._fh.write(text)
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()


class Recorder:
    """Writes the output folder of one run, frame by frame.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created; must be writable).
    save_labels : bool
        Also write ``labels.tif`` (uint16 instance labels, one page per frame).
    extra_particle_columns : sequence of str
        Columns written after the contract's particle columns, when present.

    Notes
    -----
    Not thread-safe: one thread (the pipeline's ordered consumer) writes.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        save_labels: bool = False,
        extra_particle_columns: tuple[str, ...] = (),
    ) -> None:
        self.out_dir = prepare_output_dir(out_dir)
        particle_columns = list(PARTICLE_COLUMNS) + [
            c for c in extra_particle_columns if c not in PARTICLE_COLUMNS
        ]
        self._particles = _CsvAppender(self.out_dir / "particles.csv", particle_columns)
        self._frames = _CsvAppender(self.out_dir / "frames.csv", FRAME_COLUMNS)
        self._events = _CsvAppender(self.out_dir / "events.csv", EVENT_COLUMNS)
        self._drift = _CsvAppender(self.out_dir / "drift.csv", DRIFT_COLUMNS)
        self._labels_writer = None
        self.labels_overflow = 0
        if save_labels:
            import tifffile

            self._labels_writer = tifffile.TiffWriter(self.out_dir / "labels.tif", bigtiff=True)
        self.frames_written = 0

    def write_frame(
        self,
        *,
        particles: pd.DataFrame,
        frame_row: Mapping[str, float],
        events: pd.DataFrame | None = None,
        drift_nm: tuple[float, float] | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        """Append one analysed frame to every table and flush.

        Parameters
        ----------
        particles : DataFrame
            That frame's rows of particles.csv (may be empty).
        frame_row : mapping
            The frames.csv row (``FRAME_COLUMNS``).
        events : DataFrame, optional
            Events found at this frame (``EVENT_COLUMNS``).
        drift_nm : (float, float), optional
            Cumulative drift (dx, dy) in nm removed before tracking.
        labels : ndarray, optional
            Instance labels, written to labels.tif when ``save_labels``.
        """
        if self._labels_writer is not None and labels is not None:
            # Labels are written first: a row in particles.csv must never point at a
            # labels page that does not exist.
            top = int(labels.max()) if labels.size else 0
            if top > np.iinfo(np.uint16).max:
                self.labels_overflow += 1
                labels = np.where(labels > np.iinfo(np.uint16).max, 0, labels)
            self._labels_writer.write(labels.astype(np.uint16, copy=False), contiguous=True)
        self._particles.append(particles)
        if events is not None and len(events):
            self._events.append(events)
        if drift_nm is not None:
            frame = int(frame_row["frame"])
            self._drift.append(
                pd.DataFrame({"frame": [frame], "dx_nm": [drift_nm[0]], "dy_nm": [drift_nm[1]]})
            )
        self._frames.append(pd.DataFrame([dict(frame_row)], columns=list(FRAME_COLUMNS)))
        self.frames_written += 1

    def write_events(self, events: pd.DataFrame) -> None:
        """Append events that are not tied to one analysed frame (end of run)."""
        if len(events):
            self._events.append(events)

    def write_tracks(self, tracks: pd.DataFrame) -> None:
        """Replace tracks.csv atomically with the current track table."""
        columns = list(TRACK_COLUMNS) + [c for c in tracks.columns if c not in TRACK_COLUMNS]
        write_csv_atomic(self.out_dir / "tracks.csv", tracks.reindex(columns=columns))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Replace summary.json atomically."""
        write_json_atomic(self.out_dir / "summary.json", summary)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Replace config.json atomically."""
        write_json_atomic(self.out_dir / "config.json", config)

    def close(self) -> None:
        """Flush and close every file (idempotent)."""
        for appender in (self._particles, self._frames, self._events, self._drift):
            appender.close()
        if self._labels_writer is not None:
            self._labels_writer.close()
            self._labels_writer = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
