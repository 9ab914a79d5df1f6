"""Kalman + Hungarian particle tracker with drift compensation and merge / split events.

Layers (trackpy style): :class:`Tracker` is stateful and takes one frame's particle table
at a time (live use); :func:`track_frames` is a generator over tables; :func:`link` and
:func:`link_with_events` take a whole tidy table and return a copy with ``track_id``.

One frame, in order:

1. rows with NaN coordinates are set aside (``track_id`` -1, counted in ``n_dropped_nan``);
2. every live track is predicted by the motion model (all tracks in one vectorized call);
3. the stage drift since the previous frame is removed before association. By default
   ("auto") it comes from the particles: the expected drift (a slowly varying drift
   velocity, a scalar Kalman filter per axis) plus, when most detections have no track
   within the gate, the mode of detection-to-prediction displacements (so a stage jump
   larger than the gate is still found); after linking, the median displacement of the
   matched particles from their last positions updates the drift velocity. Phase
   correlation of consecutive (band-passed, downsampled) images is used with
   ``drift="image"``, or in "auto" when too few particles were linked to tell: on the
   simulator's movies the particle estimate was the more accurate (docs/benchmarks.md);
4. gating in nm (a k-d tree, or brute force for small frames); the gated bipartite graph
   is cut into connected blocks: 1-to-1 and star blocks are solved vectorized, the others
   by ``scipy.optimize.linear_sum_assignment`` on small dense matrices. The cost adds the
   squared normalized distance, a penalty per missed frame, a penalty for tentative
   tracks (seen fewer than ``confirm_hits`` frames: spurious blobs and fragments do not
   take particles from established tracks), the size change against the track's smoothed
   diameter (low-dose sizes jitter) and, when label images are given, 1 - IoU of the
   masks;
5. events: a track lost next to a detection that now covers it (mask overlap, or centres
   within the sum of the radii plus the particle's own recent motion), whose area is
   about the sum of the parts and which grew by part of the lost one's area, is a
   ``merge`` (the merge product gets a new id by default, and is established from birth;
   a particle that was shrinking away is a ``vanish``, never a merge, unless its visible
   area collapsed because it went behind another particle: what was left of it lay inside
   the other's disk); a new detection budding off a track that shrank
   is a ``split``; other new detections ``appear``. A merge needs two established
   parts: a tentative track (seen fewer than ``confirm_hits`` frames: a spurious blob),
   or one born touching a track that shrank at that moment (a fragment: the segmentation
   cut one particle in two), seen as one particle with another track is not a merge: the
   established track keeps its id and the other track ends (``vanish``) at once, with no
   merge-confirmation wait; tracks missed for more than
   ``max_gap_frames`` frames ``vanish`` (gap closing keeps them predicted until then; one
   last seen on the image border waits up to ``edge_gap_frames`` for a re-entry).

Track ids start at 0, are never reused and never appear twice in one frame.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..errors import InputError
from ..frames import validate_pixel_size_nm
from .kalman import ConstantVelocityModel, MotionModel

__all__ = [
    "EVENT_COLUMNS",
    "TRACK_COLUMNS",
    "TrackerConfig",
    "TrackStep",
    "Tracker",
    "track_frames",
    "link",
    "link_with_events",
    "solve_gated_assignment",
]

#: events.csv columns and dtypes.
EVENT_COLUMNS: dict[str, str] = {
    "frame": "int64",
    "kind": "object",
    "track_ids": "object",
    "into_id": "int64",
}

#: tracks.csv columns and dtypes (the first eight are the output-folder contract).
TRACK_COLUMNS: dict[str, str] = {
    "track_id": "int64",
    "first_frame": "int64",
    "last_frame": "int64",
    "n_frames": "int64",
    "diameter_start_nm": "float64",
    "diameter_end_nm": "float64",
    "growth_rate_nm_per_s": "float64",
    "fate": "object",
    "diameter_min_nm": "float64",
    "diameter_max_nm": "float64",
    "merged_into": "int64",
    "parent_ids": "object",
    "split_from": "int64",
}

_FATE_ALIVE, _FATE_VANISHED, _FATE_MERGED = "alive", "vanished", "merged"
#: per-frame history columns, as the chunks appended by :meth:`Tracker.update` hold them
_HIST_COLUMNS: dict[str, str] = {
    "frame": "int64",
    "track_id": "int64",
    "time_s": "float64",
    "diameter_nm": "float64",
    "x_px": "float64",
    "y_px": "float64",
}
#: per-track summary columns computed from the history (the rest of tracks.csv is looked
#: up by id when the table is built: fate, merged_into, parent_ids, split_from)
_SUMMARY_COLUMNS = (
    "track_id",
    "first_frame",
    "last_frame",
    "n_frames",
    "diameter_start_nm",
    "diameter_end_nm",
    "growth_rate_nm_per_s",
    "diameter_min_nm",
    "diameter_max_nm",
)
#: an ended track's growth curve is kept (float32) for its last this many frames ...
_CURVE_POINTS = 2000
#: ... and the curves of the most recently ended tracks, up to this many points in all
_CURVE_BUDGET = 500_000
_DRIFT_MODES = ("auto", "image", "matches", "none")
#: zero / NaN sizes and inf steps are expected in the cost terms (each is masked where
#: used): one error state around the frame step (offline: around all frames) rather
#: than one per term
_FRAME_ERRSTATE = {"divide": "ignore", "invalid": "ignore"}
#: a missed track's gate grows by at most this many of its own typical steps x sqrt(gap)
_GAP_SIGMAS = 6.0


_EMPTY_EVENTS = pd.DataFrame({c: pd.Series(dtype=t) for c, t in EVENT_COLUMNS.items()})


def _empty_events() -> pd.DataFrame:
    return _EMPTY_EVENTS.copy(deep=False)


def _events_frame(events: list[tuple[int, str, str, int]]) -> pd.DataFrame:
    """events.csv rows from (frame, kind, track_ids, into_id) tuples, with the right dtypes."""
    if not events:
        return _empty_events()
    frame, kind, ids, into = zip(*events, strict=True)
    return pd.DataFrame(
        {
            "frame": np.array(frame, dtype=np.int64),
            "kind": np.array(kind, dtype=object),
            "track_ids": np.array(ids, dtype=object),
            "into_id": np.array(into, dtype=np.int64),
        }
    )


def _values(column: pd.Series, dtype: type) -> np.ndarray:
    """A column as a numpy array of ``dtype``: the stored array itself when it already is
    one (``Series.to_numpy`` costs several times more per call; this runs every frame),
    else converted, missing values as NaN for floats."""
    values = column.values
    if isinstance(values, np.ndarray) and values.dtype == dtype:
        return values
    if dtype is float:
        return column.to_numpy(dtype=float, na_value=np.nan)
    return np.asarray(column.to_numpy(), dtype=dtype)


def _frame_columns(df: pd.DataFrame) -> tuple[np.ndarray | None, ...]:
    """The columns :meth:`Tracker._advance` reads, as arrays (None where absent): x_px,
    y_px, diameter_nm, area_nm2 (float), touches_edge (bool), label (int64), time_s."""

    def col(name: str, dtype: type) -> np.ndarray | None:
        return _values(df[name], dtype) if name in df.columns else None

    return (
        col("x_px", float),
        col("y_px", float),
        col("diameter_nm", float),
        col("area_nm2", float),
        col("touches_edge", bool),
        col("label", np.int64),
        col("time_s", float),
    )


class _Detections(NamedTuple):
    """A table's rows with finite coordinates, as the tracker reads them (see
    :func:`_detections`)."""

    rows: np.ndarray  # index of each detection in the table
    x_px: np.ndarray
    y_px: np.ndarray
    pos_nm: np.ndarray  # (n, 2) position in nm, before drift correction
    diameter_nm: np.ndarray
    area_nm2: np.ndarray
    touches_edge: np.ndarray
    label: np.ndarray | None  # None: no label column (no mask overlap)
    time_s: np.ndarray | None  # None: from the frame number


def _detections(
    columns: tuple[np.ndarray | None, ...], pixel_size_nm: float, *, copy: bool
) -> _Detections:
    """The detections in ``columns`` (from :func:`_frame_columns`): rows with NaN
    coordinates dropped, sizes filled (a missing diameter from the area, and back),
    missing optional columns as zeros / False. Computed once for a whole table offline,
    once per frame live. ``copy``: never return the given arrays themselves (the live
    tracker keeps some in its history, and the caller's table may change)."""
    x_px, y_px, diameter_nm, area_nm2, touches_edge, label, time_s = columns
    rows = _nz(np.isfinite(x_px) & np.isfinite(y_px))
    n = len(rows)
    if n == len(x_px):  # the usual case: nothing to drop
        take = (lambda c: c.copy()) if copy else (lambda c: c)
        x, y = take(x_px), take(y_px)
    else:
        x, y = x_px[rows], y_px[rows]
        take = lambda c: c[rows]  # noqa: E731
    pos_nm = np.empty((n, 2))
    pos_nm[:, 0] = x
    pos_nm[:, 1] = y
    pos_nm *= pixel_size_nm
    diam = take(diameter_nm) if diameter_nm is not None else np.full(n, np.nan)
    area = take(area_nm2) if area_nm2 is not None else np.full(n, np.nan)
    area = np.where(np.isfinite(area), area, math.pi / 4 * diam**2)
    diam = np.where(np.isfinite(diam), diam, np.sqrt(4 * np.abs(area) / math.pi))
    return _Detections(
        rows,
        x,
        y,
        pos_nm,
        diam,
        area,
        take(touches_edge) if touches_edge is not None else np.zeros(n, dtype=bool),
        take(label) if label is not None else None,
        take(time_s) if time_s is not None else None,
    )


def _slice_detections(
    det: _Detections, sel: np.ndarray | slice, row_offset: int = 0
) -> _Detections:
    """The detections ``sel`` (an index array or a slice) of ``det``, their ``rows``
    less ``row_offset``."""
    rows = det.rows[sel] - row_offset if row_offset else det.rows[sel]
    return _Detections(rows, *[None if c is None else c[sel] for c in det[1:]])


def _nan_to_zero(a: np.ndarray) -> np.ndarray:
    """``a`` with NaN as 0 (``np.nan_to_num`` without its checks, which cost more than
    the arrays of one frame)."""
    return np.where(np.isnan(a), 0.0, a)


def _nansum(a: np.ndarray) -> np.floating:
    """``np.nansum`` of a few values (the same sum, without its checks and copies)."""
    return np.add.reduce(_nan_to_zero(a))


def _median_rows(a: np.ndarray) -> np.ndarray:
    """``np.median(a, axis=0)`` of a small (n, k) array, without its per-call overhead."""
    s = np.sort(a, axis=0)
    n = len(s)
    if n % 2:
        return s[n // 2]  # the middle row itself: (m + m) / 2 is m exactly
    return (s[n // 2 - 1] + s[n // 2]) / 2


def _median_and_mad(a: np.ndarray) -> tuple[list[float], list[float]]:
    """Median and median absolute deviation of each row of a small (k, n) array (as
    ``np.median(a, axis=1)`` and ``np.median(np.abs(a - median[:, None]), axis=1)``).
    Sorts ``a`` in place (rows sort faster than the strided columns of (n, k))."""
    a.sort(axis=1)
    n = a.shape[1]
    med = a[:, n // 2] if n % 2 else (a[:, n // 2 - 1] + a[:, n // 2]) / 2
    dev = np.abs(a - med[:, None])
    dev.sort(axis=1)
    mad = dev[:, n // 2] if n % 2 else (dev[:, n // 2 - 1] + dev[:, n // 2]) / 2
    return med.tolist(), mad.tolist()


def _drift_axis(
    v0: float, p0: float, med: float, mad: float, n: int, q: float, jumped: bool
) -> tuple[float, float]:
    """One axis of :meth:`Tracker._filter_drift`: the drift velocity ``v0`` and its
    variance ``p0`` (process variance ``q`` added) updated with the median ``med`` of
    ``n`` displacements whose median absolute deviation is ``mad``."""
    sd = mad * 1.4826  # MAD to standard deviation
    r = (sd * sd + 1e-12) / n  # variance of the median
    if jumped:  # restart at the measurement
        return med, r
    p = p0 + q
    gain = p / (p + r)
    return v0 + gain * (med - v0), (1 - gain) * p


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InputError(f"TrackerConfig.{name} must be a positive finite number, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise InputError(f"TrackerConfig.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class TrackerConfig:
    """Tracker settings, all lengths in nm and gaps in frames; validated at construction.

    Parameters
    ----------
    gate_nm : float
        Largest distance between a track's predicted position and a detection it may be
        linked to, nm.
    max_gap_frames : int
        A track missed for up to this many frames is kept (predicted) and can be linked
        again (gap closing); one missed for longer has vanished.
    edge_gap_frames : int
        A track last seen cut by the image border may have left the field of view and
        come back: it is kept this many frames, waiting where it left, and can only be
        linked again to a detection cut by the border (gate growing as sqrt(gap), at the
        pace of the track's own steps, at least ``gate_nm``).
    gate_growth_per_gap : float
        The gate of a track missed for ``m`` frames is ``gate_nm * (1 + growth * m)``, but
        widened by no more than 6 of the track's own typical steps x sqrt(m) (a particle
        that stood still is looked for where it stood).
    gap_cost : float
        Added cost per frame a track has been missed (counted up to 3 frames), so a track
        seen in the last frame wins a particle from a stale one.
    size_weight : float
        Cost of a size change: ``size_weight * |ln(d_new / d_track)|``, with ``d_track``
        the track's smoothed diameter (geometric running mean, halving weight per frame).
    confirm_hits : int
        A track linked in fewer than this many frames is tentative (a spurious blob or a
        fragment of a particle may be behind it).
    tentative_cost : float
        Added to the cost of linking a tentative track to a detection an established
        track could also take, so the established track wins it from a newborn one.
    overlap_weight : float
        Cost of poor mask overlap, ``overlap_weight * (1 - IoU)``; used with label images.
    unmatched_cost : float
        Cost of leaving a track or a detection unlinked. A link costs
        ``(distance / gate)**2 + size + overlap`` terms, so with the default of 1 a link is
        made whenever it costs less than leaving both ends unlinked (2).
    drift : {"auto", "image", "matches", "none"}
        Stage-drift estimate: phase correlation of consecutive images ("image"), the
        displacement of matched particles ("matches"), "auto" (matches; the images only
        when too few particles were linked in the previous frame) or none.
    max_drift_nm : float
        Largest stage jump between two frames the displacement search looks for, nm.
    min_drift_matches : int
        Fewest matched particles needed to estimate drift from matches.
    drift_change_nm_per_frame : float
        How fast the drift velocity may change (std per frame, nm/frame); the drift from
        matches is smoothed in time with it (a scalar Kalman filter per axis). Jumps
        larger than the gate are taken as they come.
    merge_overlap : float
        Fraction (0..1) of a lost particle's previous mask that the merged particle must
        cover to call a merge (label images given).
    merge_area_min : float
        A merged particle's area must be at least this fraction of the parts' summed
        areas (projected area shrinks as a merged particle relaxes: two equal spheres
        give 0.79); the same bound is used for splits.
    merge_margin_nm : float
        A lost particle merged into a detection when their masks overlap (label images)
        or their centres are within the sum of their radii, plus twice the lost
        particle's typical step per frame (it moved on), plus this margin, nm.
    merge_growth_min : float
        The particle linked to a merge product must have grown by at least this fraction
        of the lost particles' area (a small particle vanishing next to a large one by
        ripening is a vanish, not a merge).
    merge_confirm_frames : int
        A merge is only reported when the lost particle stays lost this many frames (1:
        at once); the event keeps the frame the merge was first seen, the merge product's
        new id starts when it is confirmed.
    blob_area_ratio : float
        A detection more than this many times the area of the track linked to it, touching
        a track lost in the same frame, is taken as a blob (touching particles seen as
        one): the track keeps its own position and size instead of being updated with it.
        For at most ``merge_confirm_frames`` frames in a row (unless a merge into it is
        pending): a "blob" that lasts longer is the particle, last seen too small.
    vanish_fraction : float
        A lost particle whose last area is below this fraction of its largest area was
        shrinking away: its end is a vanish, never a merge, and it is given up after at
        most 2 missed frames (unless it was moving across the image border).
    split_shrink : float
        A parent that splits keeps at most this fraction of its previous area.
    detect_merges, detect_splits : bool
        Turn merge / split detection on or off.
    merge_new_id : bool
        A merge product gets a new track id (the merged tracks all end, fate "merged");
        False keeps the id of the track linked to it (the others merge into it).
    """

    gate_nm: float = 10.0
    max_gap_frames: int = 6
    edge_gap_frames: int = 50
    gate_growth_per_gap: float = 0.5
    gap_cost: float = 0.3
    size_weight: float = 1.0
    overlap_weight: float = 0.5
    unmatched_cost: float = 1.0
    drift: Literal["auto", "image", "matches", "none"] = "auto"
    max_drift_nm: float = 200.0
    min_drift_matches: int = 3
    drift_change_nm_per_frame: float = 0.05
    merge_overlap: float = 0.2
    merge_area_min: float = 0.55
    merge_margin_nm: float = 0.0
    merge_growth_min: float = 0.5
    merge_confirm_frames: int = 2
    blob_area_ratio: float = 1.6
    vanish_fraction: float = 0.3
    split_shrink: float = 0.85
    detect_merges: bool = True
    detect_splits: bool = True
    merge_new_id: bool = True
    confirm_hits: int = 3
    tentative_cost: float = 0.6
    version: int = 1

    def __post_init__(self) -> None:
        _non_negative("merge_margin_nm", self.merge_margin_nm)
        if not (isinstance(self.blob_area_ratio, int | float) and self.blob_area_ratio >= 1):
            raise InputError(
                f"TrackerConfig.blob_area_ratio must be >= 1, got {self.blob_area_ratio!r}"
            )
        for name in ("gate_nm", "unmatched_cost", "max_drift_nm"):
            _positive(name, getattr(self, name))
        for name in (
            "gate_growth_per_gap",
            "size_weight",
            "overlap_weight",
            "drift_change_nm_per_frame",
            "tentative_cost",
        ):
            _non_negative(name, getattr(self, name))
        for name in (
            "max_gap_frames",
            "edge_gap_frames",
            "min_drift_matches",
            "merge_confirm_frames",
            "confirm_hits",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
                raise InputError(f"TrackerConfig.{name} must be an integer >= 0, got {value!r}")
        for name in (
            "merge_overlap",
            "merge_area_min",
            "split_shrink",
            "merge_growth_min",
            "vanish_fraction",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value <= 1):
                raise InputError(f"TrackerConfig.{name} must be between 0 and 1, got {value!r}")
        if self.drift not in _DRIFT_MODES:
            raise InputError(
                f"TrackerConfig.drift must be one of {', '.join(_DRIFT_MODES)}, got {self.drift!r}"
            )
        if self.max_drift_nm < self.gate_nm:
            raise InputError("TrackerConfig.max_drift_nm must be >= gate_nm")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready) of every setting; :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrackerConfig:
        """Config from :meth:`to_dict` output; unknown keys raise ``InputError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown tracker setting(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class TrackStep:
    """What :meth:`Tracker.update` returns for one frame.

    Attributes
    ----------
    particles : DataFrame
        A copy of the frame's particle table with ``track_id`` filled (-1 for rows with
        NaN coordinates).
    events : DataFrame
        events.csv rows found at this update (``frame``, ``kind``, ``track_ids``,
        ``into_id``). A vanish is only known ``max_gap_frames`` later, so its ``frame``
        (first frame without the particle) can be earlier than this frame.
    drift_nm : tuple of float
        Cumulative stage drift (dx, dy) removed up to this frame, nm.
    """

    particles: pd.DataFrame
    events: pd.DataFrame
    drift_nm: tuple[float, float]


# --------------------------------------------------------------------------------------
# Assignment on sparse gated blocks
# --------------------------------------------------------------------------------------
#: Below this many cells (rows x columns involved), one dense assignment beats blocking.
_DENSE_LIMIT = 16384
#: Below this many track x detection pairs, all distances are measured (no sweep).
_DENSE_PAIRS = 4096


def _nz(mask: np.ndarray) -> np.ndarray:
    """Indices of the true / non-zero entries of a 1-D array (``np.flatnonzero``
    without its ravel wrapper: it runs several times a frame)."""
    return mask.nonzero()[0]


def _isin(values: np.ndarray, test: np.ndarray) -> np.ndarray:
    """``np.isin(values, test)``; a few values (a frame's merges) by one comparison
    table, which costs a tenth of ``np.isin``'s sort at that size."""
    if len(values) * len(test) > 4096:
        return np.isin(values, test)
    return (values[:, None] == test[None, :]).any(axis=1)


def _as_complex(points: np.ndarray) -> np.ndarray:
    """(n, 2) points as an (n, 1) complex view (x + iy): distances in one operation."""
    return np.ascontiguousarray(points, dtype=float).view(np.complex128)


def _pairs_within(
    a: np.ndarray, b: np.ndarray, radius: float | np.ndarray
) -> tuple[np.ndarray, ...]:
    """All (i, j, distance) with ``|a[i] - b[j]| <= radius`` (one radius, or one per row of
    ``a``): a sweep along x for small sets (pairs in (i, j) order), a k-d tree otherwise."""
    r = np.asarray(radius, dtype=float)
    if len(a) * len(b) <= _DENSE_PAIRS:
        # few enough to measure every pair: no sort, pairs come out in (i, j) order;
        # points as complex numbers (a view, no copy) make it two array operations
        d = np.abs(_as_complex(a) - _as_complex(b).T).ravel()
        flat = (d <= (r.repeat(len(b)) if r.ndim else r)).nonzero()[0]  # np.nonzero in 2-D
        i, j = np.divmod(flat, len(b))  # costs twice this
        return i, j, d[flat]
    if r.ndim == 0:
        r = np.full(len(a), float(r))
    if len(a) * len(b) <= 16384:
        # only pairs within the radius in x are measured, then put in (i, j) order (the
        # order a dense distance matrix would give)
        order = np.argsort(b[:, 0], kind="stable")
        bx = b[order, 0]
        lo = np.searchsorted(bx, a[:, 0] - r, "left")
        cnt = np.maximum(np.searchsorted(bx, a[:, 0] + r, "right") - lo, 0)
        i = np.repeat(np.arange(len(a), dtype=np.int64), cnt)
        start = np.cumsum(cnt) - cnt
        j = order[np.arange(len(i)) - np.repeat(start - lo, cnt)].astype(np.int64)
        d = np.hypot(a[i, 0] - b[j, 0], a[i, 1] - b[j, 1])
        ok = d <= r[i]
        i, j, d = i[ok], j[ok], d[ok]
        o = np.lexsort((j, i))
        return i[o], j[o], d[o]
    if len(a) == 0 or len(b) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros(0)
    pairs = cKDTree(a).sparse_distance_matrix(cKDTree(b), float(r.max()), output_type="ndarray")
    i, j, d = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64), pairs["v"]
    ok = d <= r[i]
    return i[ok], j[ok], d[ok]


def _nearest(points: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest ``points`` of each query, as ``cKDTree(points).query(queries, k)``
    (distances, indices; shape (n, k)): brute force for small sets (no tree to build)."""
    if len(points) * len(queries) > 16384:
        dist, idx = cKDTree(points).query(queries, k=k)
        return np.asarray(dist).reshape(len(queries), k), np.asarray(idx).reshape(len(queries), k)
    d = np.abs(_as_complex(queries) - _as_complex(points).T)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.sort(d, axis=1)[:, :k], idx  # (the same values as d at idx, cheaper)


def _compact(idx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(idx, return_inverse=True)`` for indices in ``[0, n)``, by a lookup table
    instead of a sort."""
    used = np.zeros(n, dtype=bool)
    used[idx] = True
    unique = _nz(used)
    position = np.empty(n, dtype=np.int64)
    position[unique] = np.arange(len(unique))
    return unique, position[idx]


def solve_gated_assignment(
    n_rows: int,
    n_cols: int,
    rows: np.ndarray,
    cols: np.ndarray,
    costs: np.ndarray,
    unmatched_cost: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost partial matching on a sparse set of allowed (gated) pairs.

    Minimizes ``sum(linked costs) + unmatched_cost * (unlinked rows + unlinked cols)``.
    The bipartite graph of allowed pairs is cut into connected blocks; blocks with one
    row or one column are solved vectorized (cheapest pair), the others with
    ``linear_sum_assignment`` on a dense block where a missing pair costs
    ``2 * unmatched_cost`` (leaving both ends unlinked), which is the same optimum.

    Parameters
    ----------
    n_rows, n_cols : int
        Numbers of rows (tracks) and columns (detections).
    rows, cols, costs : ndarray, shape (n_pairs,)
        The allowed pairs and their costs (no duplicates).
    unmatched_cost : float
        Cost of one unlinked row or column.

    Returns
    -------
    matched_rows, matched_cols : ndarray of int
        Linked pairs (each row and column at most once).
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    costs = np.asarray(costs, dtype=float)
    limit = 2.0 * unmatched_cost
    keep = costs < limit
    if np.count_nonzero(keep) < len(keep):
        rows, cols, costs = rows[keep], cols[keep], costs[keep]
    if len(rows) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    # Fast path: a pair whose row and column have no other allowed pair links directly.
    row_deg = np.bincount(rows, minlength=n_rows)
    col_deg = np.bincount(cols, minlength=n_cols)
    single = row_deg[rows] * col_deg[cols] == 1  # (both degrees are >= 1)
    # (masks applied to several arrays as indices: indexing by a mask costs more)
    one = _nz(single)
    out_r: list[np.ndarray] = [rows[one]]
    out_c: list[np.ndarray] = [cols[one]]
    if len(one) == len(rows):
        return out_r[0], out_c[0]
    multi = _nz(~single)
    rows, cols, costs = rows[multi], cols[multi], costs[multi]
    r_u, r_inv = _compact(rows, n_rows)
    c_u, c_inv = _compact(cols, n_cols)
    if len(r_u) * len(c_u) <= _DENSE_LIMIT:
        # small remainder: one dense Hungarian is cheaper than finding the blocks
        block = np.empty((len(r_u), len(c_u)))
        block.fill(limit)  # (np.full without its Python wrapper)
        block[r_inv, c_inv] = costs
        ri, ci = linear_sum_assignment(block)
        ok = block[ri, ci] < limit
        return np.concatenate([out_r[0], r_u[ri[ok]]]), np.concatenate([out_c[0], c_u[ci[ok]]])
    n = n_rows + n_cols
    graph = coo_matrix((np.ones(len(rows)), (rows, cols + n_rows)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[rows]
    row_nodes = np.unique(rows)
    col_nodes = np.unique(cols)
    rows_per_comp = np.bincount(comp[row_nodes], minlength=n)
    cols_per_comp = np.bincount(comp[col_nodes + n_rows], minlength=n)
    star = (rows_per_comp[edge_comp] == 1) | (cols_per_comp[edge_comp] == 1)

    # Star blocks (incl. 1-to-1): the cheapest pair wins, vectorized over blocks.
    if star.any():
        s_idx = _nz(star)
        order = s_idx[np.lexsort((costs[s_idx], edge_comp[s_idx]))]
        first = np.r_[True, edge_comp[order][1:] != edge_comp[order][:-1]]
        best = order[first]
        out_r.append(rows[best])
        out_c.append(cols[best])
    # Other blocks: a small dense Hungarian each.
    if not star.all():
        b_idx = _nz(~star)
        br, bc, bcost, bcomp = rows[b_idx], cols[b_idx], costs[b_idx], edge_comp[b_idx]
        # local row / column numbers inside each block, computed once for all blocks
        r_u = np.unique(br)
        c_u = np.unique(bc)
        r_sorted = r_u[np.argsort(comp[r_u], kind="stable")]
        c_sorted = c_u[np.argsort(comp[c_u + n_rows], kind="stable")]
        r_comp = comp[r_sorted]
        c_comp = comp[c_sorted + n_rows]
        r_start = _nz(np.r_[True, r_comp[1:] != r_comp[:-1]])
        c_start = _nz(np.r_[True, c_comp[1:] != c_comp[:-1]])
        r_local = np.empty(n_rows, dtype=np.int64)
        c_local = np.empty(n_cols, dtype=np.int64)
        r_first = np.repeat(r_start, np.diff(np.r_[r_start, len(r_sorted)]))
        c_first = np.repeat(c_start, np.diff(np.r_[c_start, len(c_sorted)]))
        r_local[r_sorted] = np.arange(len(r_sorted)) - r_first
        c_local[c_sorted] = np.arange(len(c_sorted)) - c_first
        r_bounds = np.r_[r_start, len(r_sorted)]
        c_bounds = np.r_[c_start, len(c_sorted)]
        order = np.argsort(bcomp, kind="stable")
        e_bounds = _nz(np.r_[True, bcomp[order][1:] != bcomp[order][:-1], True])
        # blocks come out in increasing component number for rows, columns and edges alike
        for k, (a, b) in enumerate(zip(e_bounds[:-1], e_bounds[1:], strict=True)):
            e = order[a:b]
            rs = r_sorted[r_bounds[k] : r_bounds[k + 1]]
            cs = c_sorted[c_bounds[k] : c_bounds[k + 1]]
            block = np.full((len(rs), len(cs)), limit)
            block[r_local[br[e]], c_local[bc[e]]] = bcost[e]
            ri, ci = linear_sum_assignment(block)
            ok = block[ri, ci] < limit
            out_r.append(rs[ri[ok]])
            out_c.append(cs[ci[ok]])
    return np.concatenate(out_r), np.concatenate(out_c)


def theil_sen_slope(t: np.ndarray, y: np.ndarray) -> float:
    """Theil-Sen slope: the median of the slopes of all point pairs with distinct ``t``.

    Robust to up to ~29 % outliers (a few mis-segmented frames); NaN values are ignored;
    NaN when fewer than two distinct times remain. Vectorized over pairs, O(n^2) memory:
    callers thin long series.
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(t) & np.isfinite(y)
    t, y = t[ok], y[ok]
    i, j = np.triu_indices(len(t), k=1)
    dt = t[j] - t[i]
    good = dt != 0
    if not good.any():
        return float("nan")
    return float(np.median((y[j] - y[i])[good] / dt[good]))


# --------------------------------------------------------------------------------------
# Label-image overlap
# --------------------------------------------------------------------------------------
class _Overlap:
    """Pixel counts of (previous label, current label) pairs after an integer shift."""

    def __init__(self, prev: np.ndarray, cur: np.ndarray, shift_px: tuple[int, int]) -> None:
        dx, dy = shift_px
        h = min(prev.shape[0], cur.shape[0])
        w = min(prev.shape[1], cur.shape[1])
        # current pixel (y, x) shows what the previous frame had at (y - dy, x - dx)
        ys_c = slice(max(0, dy), min(h, h + dy))
        xs_c = slice(max(0, dx), min(w, w + dx))
        ys_p = slice(max(0, -dy), min(h, h - dy))
        xs_p = slice(max(0, -dx), min(w, w - dx))
        a = prev[ys_p, xs_p]
        b = cur[ys_c, xs_c]
        both = np.logical_and(a, b)
        self._nb = int(cur.max()) + 1 if cur.size else 1
        keys = a[both].astype(np.int64) * self._nb + b[both]
        top = int(prev.max()) + 1 if prev.size else 1
        if top * self._nb <= 1 << 22:
            # few labels: counting beats sorting (same keys and counts as np.unique)
            counts = np.bincount(keys, minlength=0)
            self.keys = _nz(counts)
            self.counts = counts[self.keys]
        else:
            self.keys, self.counts = np.unique(keys, return_counts=True)

    def intersection(self, prev_labels: np.ndarray, cur_labels: np.ndarray) -> np.ndarray:
        keys = prev_labels.astype(np.int64) * self._nb + cur_labels.astype(np.int64)
        if len(self.keys) == 0:
            return np.zeros(len(keys))
        pos = np.clip(np.searchsorted(self.keys, keys), 0, len(self.keys) - 1)
        valid = (prev_labels > 0) & (cur_labels > 0) & (cur_labels < self._nb)
        hit = (self.keys[pos] == keys) & valid
        return np.where(hit, self.counts[pos], 0).astype(float)


def _phase_drift_px(prev: np.ndarray, cur: np.ndarray) -> tuple[float, float, float]:
    """Shift (dx, dy) in px of ``cur`` relative to ``prev`` (both downsampled float32), and
    the phase-correlation peak response (0..1)."""
    import cv2  # imported here: the tracker without images does not need OpenCV

    window = cv2.createHanningWindow((cur.shape[1], cur.shape[0]), cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(prev, cur, window)
    return float(dx), float(dy), float(response)


def _downsample(image: np.ndarray, max_side: int = 256) -> tuple[np.ndarray, float]:
    """Band-passed float32 copy at most ``max_side`` px wide, and the scale factor.

    The band-pass (difference of Gaussians) removes the static illumination gradient,
    which would otherwise pull the correlation peak to zero shift, and pixel noise.
    """
    import cv2

    img = np.asarray(image, dtype=np.float32)
    factor = max(1.0, max(img.shape) / max_side)
    if factor > 1:
        size = (max(1, round(img.shape[1] / factor)), max(1, round(img.shape[0] / factor)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        factor = image.shape[1] / img.shape[1]
    img = cv2.GaussianBlur(img, (0, 0), 1.5) - cv2.GaussianBlur(img, (0, 0), 16.0)
    return np.ascontiguousarray(img), float(factor)


# --------------------------------------------------------------------------------------
# The tracker
# --------------------------------------------------------------------------------------
class Tracker:
    """Stateful tracker: feed it one frame's particle table at a time with :meth:`update`.

    Parameters
    ----------
    config : TrackerConfig, optional
        Settings (nm, frames); defaults when None.
    motion_model : MotionModel, optional
        Defaults to :class:`~etemlive.track.kalman.ConstantVelocityModel` with noise scaled
        to the gate.
    pixel_size_nm : float
        nm per pixel of the frames (validated: positive, finite).
    frame_interval_s : float or None
        Seconds between frames. None or 0: time runs in frames (``time_unit == "frame"``,
        velocities in nm/frame, growth rates in nm/frame); say so in summary.json.

    Attributes
    ----------
    time_unit : {"s", "frame"}
    n_dropped_nan : int
        Rows with NaN coordinates set aside so far.
    n_frames : int
        Frames processed.
    """

    def __init__(
        self,
        config: TrackerConfig | None = None,
        motion_model: MotionModel | None = None,
        *,
        pixel_size_nm: float,
        frame_interval_s: float | None,
    ) -> None:
        self.config = config if config is not None else TrackerConfig()
        self.pixel_size_nm = validate_pixel_size_nm(pixel_size_nm)
        fi = None if frame_interval_s is None else float(frame_interval_s)
        if fi is not None and not math.isfinite(fi):
            raise InputError(f"frame interval must be finite, got {frame_interval_s!r} s")
        if fi is not None and fi < 0:
            raise InputError(f"frame interval must be >= 0, got {fi!r} s")
        self.frame_interval_s = fi if fi else None
        self.time_unit: Literal["s", "frame"] = "s" if self.frame_interval_s else "frame"
        self._dt = self.frame_interval_s if self.frame_interval_s else 1.0
        if motion_model is None:
            g = self.config.gate_nm
            # Noise scaled to the gate: a particle may wander ~gate/2 per frame unmodelled
            # (Brownian motion in liquid), while its velocity changes slowly, so a random
            # walk is not mistaken for directed motion.
            motion_model = ConstantVelocityModel(
                position_noise_nm=g / 2 / math.sqrt(self._dt),
                velocity_noise_nm_per_s=g / 100 / self._dt / math.sqrt(self._dt),
                measurement_noise_nm=max(g / 20, 1e-3),
                initial_speed_nm_per_s=g / 100 / self._dt,
            )
        self.motion_model = motion_model
        # live tracks, struct of arrays (index = row in these arrays, not the id)
        self._ids = np.zeros(0, dtype=np.int64)
        self._x, self._P = motion_model.init(np.zeros((0, 2)))
        self._pos = np.zeros((0, 2))  # last measured position, nm (drift-corrected)
        self._diam = np.zeros(0)  # last diameter, nm
        # smoothed diameter (geometric running mean), nm: low-dose sizes jitter frame to
        # frame, so the size cost compares with it rather than with the last value
        self._dsm = np.zeros(0)
        self._hits = np.zeros(0, dtype=np.int64)  # frames the track was linked
        self._blob_run = np.zeros(0, dtype=np.int64)  # frames in a row linked to a blob
        self._area = np.zeros(0)  # last area, nm^2
        self._peak = np.zeros(0)  # largest area so far, nm^2
        self._label = np.zeros(0, dtype=np.int64)  # label in the last frame it was seen
        self._edge = np.zeros(0, dtype=bool)  # touched the image border when last seen
        self._step = np.zeros(0)  # typical own displacement per frame (running mean), nm
        # a merge seen but not yet confirmed: the id of the track it merged into, and when
        self._pend_into = np.zeros(0, dtype=np.int64)
        self._maybe_pending = False  # False: no _pend_into is set (checks skipped)
        self._pend_frame = np.zeros(0, dtype=np.int64)
        self._seen = np.zeros(0, dtype=np.int64)  # last frame seen
        self._missed = np.zeros(0, dtype=np.int64)
        # :meth:`_gap_limit` of a track while it is missed (it depends only on what was
        # measured when last linked, so it is computed once per gap); -1: not yet
        self._limit = np.zeros(0, dtype=np.int64)
        # every track ever, indexed by id
        self._first: list[int] = []
        self._fate: list[str] = []
        self._merged_into: list[int] = []
        self._split_from: list[int] = []
        # the track a track was born touching (a fragment of it, or a split child), -1
        self._born_near: list[int] = []
        self._parents: dict[int, list[int]] = {}
        self._next_id = 0
        # History for tracks_table / track_history, kept bounded in a long live run:
        # update() appends one chunk per frame to _hist; _absorb() moves the chunks into
        # columnar buffers (_rows, the first _n_rows rows used, in frame order) holding the
        # rows of alive tracks only. A track that ended (dropped from the live arrays) is
        # summarised once into _done (its tracks.csv numbers), its growth curve is kept
        # compact in _curves (float32, capped) and its rows are released.
        self._hist: list[tuple[Any, ...]] = []  # (frame, then per-detection arrays)
        self._rows = {c: np.zeros(0, dtype=t) for c, t in _HIST_COLUMNS.items()}
        self._n_rows = 0
        # (frame dropped at, ids) of ended tracks whose rows are not yet summarised
        self._ended: list[tuple[int, np.ndarray]] = []
        self._hist_frame = -1  # the last frame whose chunk is in _hist
        self._done_parts: list[dict[str, np.ndarray]] = []
        self._done: dict[str, np.ndarray] | None = None
        self._curves: OrderedDict[int, np.ndarray] = OrderedDict()
        self._curve_points = 0
        self._lock = threading.Lock()
        self._drift = np.zeros(2)
        self._drift_vel = np.zeros(2)  # nm per frame
        self._drift_var = np.full(2, self.config.gate_nm**2)
        self._drift_rows: list[tuple[int, float, float]] = []
        self._last_frame: int | None = None
        self._first_frame: int | None = None
        self._prev_labels: np.ndarray | None = None
        self._prev_labels_frame = -1
        self._prev_image: np.ndarray | None = None
        self._finished = False
        self.n_dropped_nan = 0
        self.n_frames = 0

    # ---------------------------------------------------------------- helpers
    def _new_ids(self, n: int, frame: int) -> np.ndarray:
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        self._first.extend([frame] * n)
        self._fate.extend([_FATE_ALIVE] * n)
        self._merged_into.extend([-1] * n)
        self._split_from.extend([-1] * n)
        self._born_near.extend([-1] * n)
        return ids

    def _drop_tracks(self, keep: np.ndarray) -> None:
        gone = self._ids[~keep]
        if len(gone):
            # ended at this frame: no rows of theirs after it (ids are never reused)
            with self._lock:
                self._ended.append((int(self._last_frame), gone.copy()))
        for name in (
            "_ids",
            "_x",
            "_P",
            "_pos",
            "_diam",
            "_dsm",
            "_hits",
            "_blob_run",
            "_area",
            "_peak",
            "_label",
            "_edge",
            "_step",
            "_pend_into",
            "_pend_frame",
            "_seen",
            "_missed",
            "_limit",
        ):
            setattr(self, name, getattr(self, name)[keep])

    def _vanish(
        self,
        gone: np.ndarray,
        events: list[tuple[int, str, str, int]],
        merged: np.ndarray | None = None,
    ) -> None:
        """Drop the ``gone`` tracks; those not ``merged`` vanished (one event each)."""
        if not np.count_nonzero(gone):
            return
        vanished = gone if merged is None else gone & ~merged
        for i in _nz(vanished).tolist():
            tid = int(self._ids[i])
            self._fate[tid] = _FATE_VANISHED
            events.append((int(self._seen[i]) + 1, "vanish", str(tid), -1))
        self._drop_tracks(~gone)

    def _append_tracks(
        self,
        ids: np.ndarray,
        pos: np.ndarray,
        diam: np.ndarray,
        area: np.ndarray,
        label: np.ndarray,
        edge: np.ndarray,
        frame: int,
    ) -> None:
        x, P = self.motion_model.init(pos)
        self._ids = np.concatenate([self._ids, ids])
        self._x = np.concatenate([self._x, x])
        self._P = np.concatenate([self._P, P])
        self._pos = np.concatenate([self._pos, pos])
        self._diam = np.concatenate([self._diam, diam])
        self._dsm = np.concatenate([self._dsm, diam])
        self._hits = np.concatenate([self._hits, np.ones(len(ids), dtype=np.int64)])
        self._blob_run = np.concatenate([self._blob_run, np.zeros(len(ids), dtype=np.int64)])
        self._area = np.concatenate([self._area, area])
        self._peak = np.concatenate([self._peak, area])
        self._label = np.concatenate([self._label, label])
        self._edge = np.concatenate([self._edge, edge])
        self._step = np.concatenate([self._step, np.zeros(len(ids))])
        self._pend_into = np.concatenate([self._pend_into, np.full(len(ids), -1, dtype=np.int64)])
        self._pend_frame = np.concatenate([self._pend_frame, np.zeros(len(ids), dtype=np.int64)])
        self._seen = np.concatenate([self._seen, np.full(len(ids), frame, dtype=np.int64)])
        self._missed = np.concatenate([self._missed, np.zeros(len(ids), dtype=np.int64)])
        self._limit = np.concatenate([self._limit, np.full(len(ids), -1, dtype=np.int64)])

    # ---------------------------------------------------------------- drift
    def _drift_from_image(self, image: np.ndarray | None, prev_frame: int) -> np.ndarray | None:
        """Phase-correlation drift (nm) from the previous image to this one, or None.

        With ``drift="auto"`` it is only computed when the matches cannot tell (fewer
        than ``min_drift_matches`` tracks were seen in ``prev_frame``): on the
        simulator's movies the match estimate is the more accurate (docs/benchmarks.md,
        tracking section).
        """
        if image is None or self.config.drift not in ("auto", "image"):
            self._prev_image = None
            return None
        prev, self._prev_image = self._prev_image, image
        if prev is None or prev.shape != np.shape(image):
            return None
        if self.config.drift == "auto":
            prev_seen = np.count_nonzero(self._seen == prev_frame)
            if prev_seen >= max(self.config.min_drift_matches, 1):
                return None
        a, factor = _downsample(prev)
        b, _ = _downsample(image)
        dx, dy, response = _phase_drift_px(a, b)
        if response < 0.1:
            return None  # no clear peak (featureless or very noisy frames)
        return np.array([dx, dy]) * factor * self.pixel_size_nm

    def _filter_drift(
        self, med: list[float], mad: list[float], n: int, steps: int, jumped: bool
    ) -> None:
        """Update the drift velocity (nm/frame) and its variance from the median ``med`` and
        median absolute deviation ``mad`` (x, y) of ``n`` matched displacements: a scalar
        Kalman filter per axis, restarted at the measurement after a jump. In Python
        floats (the same IEEE arithmetic as numpy's): on two numbers, a numpy call costs
        ten times the maths."""
        q = steps * self.config.drift_change_nm_per_frame**2
        (vx, vy), (px, py) = self._drift_vel.tolist(), self._drift_var.tolist()
        vx, px = _drift_axis(vx, px, med[0], mad[0], n, q, jumped)
        vy, py = _drift_axis(vy, py, med[1], mad[1], n, q, jumped)
        self._drift_vel = np.array((vx, vy))
        self._drift_var = np.array((px, py))

    def _mostly_near(
        self, ti: np.ndarray, dj: np.ndarray, dist: np.ndarray, n_tracks: int, n_det: int
    ) -> bool:
        """Whether at least half the detections (of the smaller side) have a track within
        ``gate_nm`` among the gated pairs: then there was no stage jump to look for."""
        cfg = self.config
        if n_tracks < cfg.min_drift_matches or n_det < cfg.min_drift_matches:
            return True  # too few to tell a jump: :meth:`_drift_mode` would say none
        near = np.zeros(n_det, dtype=bool)
        near[dj[dist < cfg.gate_nm]] = True
        return np.count_nonzero(near) >= 0.5 * min(n_tracks, n_det)

    def _drift_mode(self, pred: np.ndarray, det: np.ndarray) -> np.ndarray:
        """Coarse frame-to-frame displacement: the mode of detection-minus-prediction
        vectors over near neighbours, so a stage jump larger than the gate is still found."""
        cfg = self.config
        if len(pred) < cfg.min_drift_matches or len(det) < cfg.min_drift_matches:
            return np.zeros(2)
        tree = cKDTree(pred)
        k = min(4, len(pred))
        dist, idx = tree.query(det, k=k, distance_upper_bound=cfg.max_drift_nm)
        dist = np.asarray(dist).reshape(len(det), k)
        idx = np.asarray(idx).reshape(len(det), k)
        ok = np.isfinite(dist)
        if not ok.any():
            return np.zeros(2)
        vec = det[np.nonzero(ok)[0]] - pred[idx[ok]]
        w = cfg.gate_nm
        cells = np.floor(vec / w + 0.5).astype(np.int64)  # cell 0 is centred on no drift
        span = int(math.ceil(cfg.max_drift_nm / w)) + 1
        flat = (cells[:, 0] + span) * (2 * span + 1) + (cells[:, 1] + span)
        counts = np.bincount(flat, minlength=(2 * span + 1) ** 2)
        best = int(np.argmax(counts))
        zero = span * (2 * span + 1) + span
        # move only when the best cell clearly beats "no drift"
        if best == zero or counts[best] < max(cfg.min_drift_matches, 1.5 * counts[zero]):
            return np.zeros(2)
        centre = np.array([best // (2 * span + 1) - span, best % (2 * span + 1) - span]) * w
        near = np.all(np.abs(vec - centre) <= w, axis=1)
        return _median_rows(vec[near])

    # ---------------------------------------------------------------- update
    def update(
        self,
        particles: pd.DataFrame,
        *,
        labels: np.ndarray | None = None,
        image: np.ndarray | None = None,
        frame: int | None = None,
    ) -> TrackStep:
        """Link one frame's particles to the tracks.

        Parameters
        ----------
        particles : DataFrame
            One frame of the particle table (``x_px``, ``y_px`` required; ``frame``,
            ``time_s``, ``diameter_nm``, ``area_nm2``, ``label`` used when present). Not
            modified.
        labels : ndarray (rows, cols) of int, optional
            The frame's label image (values in ``particles["label"]``): adds mask overlap
            to the cost and to merge / split detection.
        image : ndarray (rows, cols), optional
            The raw frame, for phase-correlation drift.
        frame : int, optional
            Frame index when ``particles`` is empty or has no ``frame`` column (default:
            the previous frame + 1).

        Returns
        -------
        TrackStep
        """
        if self._finished:
            raise InputError("this tracker was finished; start a new Tracker for a new movie")
        if not isinstance(particles, pd.DataFrame):
            raise InputError(
                f"particles must be a pandas DataFrame, got {type(particles).__name__}"
            )
        missing = [c for c in ("x_px", "y_px") if c not in particles.columns]
        if missing:
            raise InputError(f"particle table lacks column(s) {', '.join(missing)}")
        frame_idx = self._frame_index(particles, frame)
        with np.errstate(**_FRAME_ERRSTATE):
            track_col, events = self._advance(
                frame_idx,
                len(particles),
                _detections(_frame_columns(particles), self.pixel_size_nm, copy=True),
                labels=labels,
                image=image,
            )
        # a shallow copy: the track_id column set here is a new array, the caller's table
        # is not modified (and its other columns are not copied every frame)
        out = particles.copy(deep=False)
        loc = out.columns.get_loc("track_id") if "track_id" in out.columns else None
        if isinstance(loc, int):
            out.isetitem(loc, track_col)  # a new array, not written into the caller's
        else:
            out["track_id"] = track_col
        return TrackStep(out, _events_frame(events), (float(self._drift[0]), float(self._drift[1])))

    def _advance(
        self,
        frame_idx: int,
        n_rows: int,
        found: _Detections,
        *,
        labels: np.ndarray | None,
        image: np.ndarray | None,
    ) -> tuple[np.ndarray, list[tuple[int, str, str, int]]]:
        """One frame: the track id of each of the frame's ``n_rows`` table rows (-1 for
        NaN coordinates) and the events found, from the frame's detections ``found``
        (``rows`` index the frame's rows). :meth:`update` and :func:`link_with_events`
        call it, under ``np.errstate(**_FRAME_ERRSTATE)``."""
        cfg = self.config
        steps = 1 if self._last_frame is None else frame_idx - self._last_frame
        prev_frame = -1 if self._last_frame is None else self._last_frame
        self._last_frame = frame_idx
        if self._first_frame is None:
            self._first_frame = frame_idx

        rows = found.rows
        self.n_dropped_nan += n_rows - len(rows)
        det_raw = found.pos_nm
        diam, area = found.diameter_nm, found.area_nm2
        det_edge = found.touches_edge
        det_label = found.label if found.label is not None else np.zeros(len(rows), np.int64)
        time_s = found.time_s
        if time_s is None:
            time_s = np.full(len(rows), frame_idx * self._dt)

        # 1. frames skipped since the last update count as misses; predict every live track
        events: list[tuple[int, str, str, int]] = []
        if steps > 1 and len(self._ids):
            self._missed += steps - 1
            self._vanish(self._missed > self._gap_limit(), events)
        if len(self._ids):
            self._x, self._P = self.motion_model.predict(self._x, self._P, steps * self._dt)
        pred = self._x[:, :2]

        # 2. drift since the previous frame, nm
        use_labels = labels is not None and found.label is not None
        d_inc = self._drift_from_image(image, prev_frame)
        drift_from_image = d_inc is not None
        jumped = False
        look_for_jump = False
        if d_inc is None:
            if cfg.drift in ("auto", "matches"):
                # stage drift is smooth: expect the last drift velocity, then look for a jump
                d_inc = self._drift_vel * steps if steps > 1 else self._drift_vel
                look_for_jump = True
            else:
                d_inc = np.zeros(2)
        det = det_raw - (self._drift + d_inc)

        # 3. gating and costs
        ti, dj, dist, gate = self._gated_pairs(pred, det, det_edge)
        if look_for_jump and not self._mostly_near(ti, dj, dist, len(pred), len(det)):
            jump = self._drift_mode(pred, det)
            if np.any(jump):
                jumped = True
                d_inc = d_inc + jump
                det = det_raw - (self._drift + d_inc)
                ti, dj, dist, gate = self._gated_pairs(pred, det, det_edge)
        overlap = None
        if use_labels and self._prev_labels is not None:
            shift = tuple(int(round(v)) for v in d_inc / self.pixel_size_nm)
            overlap = _Overlap(self._prev_labels, np.asarray(labels), shift)
        cost = self._pair_costs(ti, dj, dist, gate, diam, area, det_label, overlap, det_edge)
        m_t, m_d = solve_gated_assignment(
            len(self._ids), len(det), ti, dj, cost, cfg.unmatched_cost
        )

        # 4. drift from the matches: median displacement from the last *measured* positions
        # (not the predictions, whose velocities would soak up a common drift), filtered
        # in time as a slowly changing drift velocity
        last = self._seen[m_t] == prev_frame  # linked tracks seen in the last frame
        n_last = np.count_nonzero(last)
        if drift_from_image:
            self._drift_vel = d_inc / steps
            self._drift_var[:] = 0.0
        elif cfg.drift in ("auto", "matches"):
            if n_last >= max(cfg.min_drift_matches, 1):
                lt, ld = (m_t, m_d) if n_last == len(m_t) else (m_t[last], m_d[last])
                # displacements as rows (x, y): the medians sort along rows
                disp = (
                    det_raw.T.take(ld, axis=1) - self._drift[:, None] - self._pos.T.take(lt, axis=1)
                )
                if steps > 1:
                    disp /= steps
                med, mad = _median_and_mad(disp)
                self._filter_drift(med, mad, disp.shape[1], steps, jumped)
                d_inc = self._drift_vel * steps if steps > 1 else self._drift_vel
                det = det_raw - (self._drift + d_inc)
            elif jumped:
                self._drift_vel = d_inc / steps
        self._drift = self._drift + d_inc
        self._drift_rows.append((frame_idx, float(self._drift[0]), float(self._drift[1])))

        # 5. events
        n_det = len(det)
        det_track = np.full(n_det, -1, dtype=np.int64)  # track id per detection
        det_is_new = np.zeros(n_det, dtype=bool)
        det_track[m_d] = self._ids[m_t]
        matched = np.zeros(len(self._ids), dtype=bool)
        matched[m_t] = True
        ended = np.zeros(len(self._ids), dtype=bool)  # merged away this frame
        # links handed over by _rejoin: (old row or -1, new row, detection)
        self._swaps: list[tuple[int, int, int]] = []
        self._products: list[int] = []  # merge products born in this frame
        self._whole: list[int] = []  # rows whose fragments rejoined them in this frame

        # tracks lost in this frame (seen in the last one) may have merged: with every
        # track linked, none was lost
        lost_now = None
        if cfg.detect_merges and len(m_t) < len(self._ids) and len(det):
            lost_now = ~matched & (self._missed == 0)
        if lost_now is not None and np.count_nonzero(lost_now):
            self._find_merges(
                lost_now,
                frame_idx,
                matched,
                m_t,
                m_d,
                pred,
                det,
                diam,
                area,
                det_label,
                overlap,
                det_track,
                det_is_new,
                ended,
                events,
            )
        if self._maybe_pending and cfg.detect_merges and cfg.merge_confirm_frames > 1:
            self._confirm_merges(frame_idx, matched, m_t, m_d, det_track, det_is_new, ended, events)
        for old_row, new_row, j in self._swaps:
            if old_row >= 0:
                m_t = np.where(m_t == old_row, new_row, m_t)
            else:
                m_t, m_d = np.append(m_t, new_row), np.append(m_d, j)
            matched[new_row] = True
        unmatched_det = _nz(det_track < 0)
        # births (incl. split children)
        if len(unmatched_det):
            child_of = np.full(n_det, -1, dtype=np.int64)
            if cfg.detect_splits and len(m_t):
                child_of = self._find_splits(
                    unmatched_det, m_t, m_d, det, diam, area, det_label, overlap, ended
                )
            new_ids = self._new_ids(len(unmatched_det), frame_idx)
            det_track[unmatched_det] = new_ids
            det_is_new[unmatched_det] = True
            parents = child_of[unmatched_det]
            first_frame = frame_idx == self._first_frame
            if cfg.detect_merges and not first_frame:
                self._note_born_near(
                    new_ids, unmatched_det, det, diam, area, det_track, det_is_new, m_t, m_d
                )
            for tid, parent in zip(new_ids.tolist(), parents.tolist(), strict=True):
                if parent >= 0:
                    self._split_from[tid] = parent
                    self._born_near[tid] = parent
                    self._parents[tid] = [parent]
                    events.append((frame_idx, "split", f"{parent} {tid}", -1))
                elif not first_frame:
                    events.append((frame_idx, "appear", str(tid), -1))

        # 6. update linked tracks, age the others, drop vanished / merged ones
        any_ended = bool(np.count_nonzero(ended))
        keep_m = ~ended[m_t] if any_ended else None  # links that update (None: all)
        # A track linked to a blob (an unconfirmed merge, or a sudden jump in area: two
        # touching particles segmented as one) keeps its own position and size, so that
        # when the blob comes apart each part is found where it was.
        blob = area[m_d] > cfg.blob_area_ratio * self._area[m_t]
        maybe_blob = bool(np.count_nonzero(blob))
        if maybe_blob:  # (rare: the other terms only then)
            blob &= (
                ~det_edge[m_d]  # a particle coming into view grows fast: not a blob
                & ~self._edge[m_t]
                # a "blob" lasting longer than a merge takes to confirm, with no merge, is
                # the particle itself, last seen too small (a fragment; low-dose size noise)
                & (self._blob_run[m_t] < max(cfg.merge_confirm_frames, 1))
            )
            if keep_m is not None:
                blob &= keep_m
            if np.count_nonzero(blob):
                # a blob covers another particle: a track lost in this frame touching it
                # (with none, the jump in size is the particle itself measured larger:
                # low-dose noise)
                b = _nz(blob)
                blob[b] = self._touches_lost(det[m_d[b]], diam[m_d[b]], pred, ~matched & ~ended)
        pend = self._pend_into[self._pend_into >= 0] if self._maybe_pending else ()
        if len(pend):
            pending = _isin(self._ids[m_t], pend)
            blob |= pending if keep_m is None else pending & keep_m
            maybe_blob = True
        if maybe_blob and self._whole:
            blob &= ~_isin(m_t, np.asarray(self._whole))
        if maybe_blob and np.count_nonzero(blob):
            self._seen[m_t[blob]] = frame_idx
            self._missed[m_t[blob]] = 0
            self._label[m_t[blob]] = det_label[m_d[blob]]
            keep_m = ~blob if keep_m is None else keep_m & ~blob
            self._blob_run[m_t[blob]] += 1
            self._blob_run[m_t[~blob]] = 0
        else:
            self._blob_run[m_t] = 0
        if keep_m is not None:
            mt, md = m_t[keep_m], m_d[keep_m]
        else:  # the usual case: every link is an update
            mt, md = m_t, m_d
        if len(mt):
            # every one seen in the last frame: all were missed for none
            gap = steps if n_last == len(m_t) and not self._swaps else None
            self._update_linked(mt, md, det, diam, area, det_label, det_edge, frame_idx, gap)
        # tracks not linked (nor ended) missed this frame; those missed too long vanished
        gone = ended
        lost = _nz(~matched & ~ended if any_ended else ~matched)
        if len(lost):
            missed = self._missed[lost] + 1
            self._missed[lost] = missed
            limit = self._limit[lost]
            unknown = limit < 0  # missed since it was last measured: compute its limit
            if np.count_nonzero(unknown):
                limit[unknown] = self._gap_limit(lost[unknown])
                self._limit[lost] = limit
            over = lost[missed > limit]
            if len(over):
                gone = ended.copy()
                gone[over] = True
        if any_ended or gone is not ended:
            self._vanish(gone, events, merged=ended)
        new_idx = _nz(det_is_new)
        if len(new_idx):
            self._append_tracks(
                det_track[new_idx],
                det[new_idx],
                diam[new_idx],
                area[new_idx],
                det_label[new_idx],
                det_edge[new_idx],
                frame_idx,
            )
            if self._products:
                prod = _isin(self._ids, np.asarray(self._products))
                self._hits[prod] = np.maximum(self._hits[prod], cfg.confirm_hits)

        # 7. outputs
        if len(rows) == n_rows:
            track_col = det_track
        else:
            track_col = np.full(n_rows, -1, dtype=np.int64)
            track_col[rows] = det_track
        with self._lock:
            self._hist.append(
                (
                    frame_idx,  # (one number: _absorb repeats it for the frame's rows)
                    det_track,
                    time_s,
                    diam,
                    found.x_px,
                    found.y_px,
                )
            )
            self._hist_frame = frame_idx
        if use_labels:
            self._prev_labels = np.asarray(labels)
            self._prev_labels_frame = frame_idx
        else:
            self._prev_labels = None
        self.n_frames += 1
        return track_col, events

    def _update_linked(
        self,
        mt: np.ndarray,
        md: np.ndarray,
        det: np.ndarray,
        diam: np.ndarray,
        area: np.ndarray,
        det_label: np.ndarray,
        det_edge: np.ndarray,
        frame_idx: int,
        gap: int | None,
    ) -> None:
        """Update the tracks ``mt`` with the detections ``md`` they were linked to, ``gap``
        frames after they were last seen (None: as many as each track's own).

        A frame's arrays are small, so the number of numpy calls is the cost: each column
        is gathered once, and rows of 2-D arrays with ``take`` (a fraction of the cost of
        fancy indexing at this size)."""
        pos_m = det.take(md, axis=0)
        diam_m = diam[md]
        area_m = area[md]
        x_m, P_m = self.motion_model.update(
            self._x.take(mt, axis=0), self._P.take(mt, axis=0), pos_m
        )
        self._x[mt] = x_m
        self._P[mt] = P_m
        moved = pos_m - self._pos.take(mt, axis=0)
        step = np.hypot(moved[:, 0], moved[:, 1])  # per frame of the gap:
        if gap is None:
            step /= frame_idx - self._seen[mt]
        elif gap > 1:
            step /= gap
        step += self._step[mt]
        step *= 0.5  # running mean: (old + new) / 2, exactly 0.5 old + 0.5 new
        self._step[mt] = step
        self._pos[mt] = pos_m
        self._diam[mt] = diam_m
        dsm = self._dsm[mt]
        both = np.isfinite(np.log(dsm) + np.log(diam_m))  # both logs finite
        self._dsm[mt] = np.where(both, np.sqrt(dsm * diam_m), diam_m)
        self._hits[mt] += 1
        self._area[mt] = area_m
        self._peak[mt] = np.fmax(self._peak[mt], area_m)
        self._label[mt] = det_label[md]
        self._edge[mt] = det_edge[md]
        self._seen[mt] = frame_idx
        self._missed[mt] = 0
        self._limit[mt] = -1  # measured anew: its gap limit may change

    def _frame_index(self, particles: pd.DataFrame, frame: int | None) -> int:
        if "frame" in particles.columns and len(particles):
            f = particles["frame"].values
            f = f if isinstance(f, np.ndarray) else particles["frame"].to_numpy()
            lo, hi = int(f.min()), int(f.max())
            if lo != hi:
                raise InputError(
                    f"update() takes one frame's particles, got frames {lo}..{hi}; use link() for a table"
                )
            idx = lo
        elif frame is not None:
            idx = int(frame)
        else:
            idx = 0 if self._last_frame is None else self._last_frame + 1
        if self._last_frame is not None and idx <= self._last_frame:
            raise InputError(
                f"frame {idx} arrived after frame {self._last_frame}: frames must increase"
            )
        return idx

    def _gap_limit(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Frames each live track (of ``rows``: default all) may stay missed: longer for
        one that left by the border, at most 2 for one that was shrinking away."""
        cfg = self.config
        # A particle that was shrinking away in place (ripening) has most likely vanished:
        # short wait. One moving across the border shrinks too, as it leaves the view: it
        # may come back, so it waits longer.
        shrinking = self._area[rows] < cfg.vanish_fraction * self._peak[rows]
        moving = self._step[rows] > 0.05 * cfg.gate_nm
        may_return = self._edge[rows] & (moving | ~shrinking)
        limit = np.where(shrinking, min(cfg.max_gap_frames, 2), cfg.max_gap_frames)
        return np.where(may_return, max(cfg.edge_gap_frames, cfg.max_gap_frames), limit)

    def _gated_pairs(
        self, pred: np.ndarray, det: np.ndarray, det_edge: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | float]:
        """(track row, detection, distance nm) of every pair inside the track's gate, and
        the gates (nm, one per track; one number, ``gate_nm``, when no track is missed)."""
        cfg = self.config
        if len(pred) == 0 or len(det) == 0:
            z = np.zeros(0, dtype=np.int64)
            return z, z, np.zeros(0), np.zeros(len(pred))
        missed = self._missed
        miss = _nz(missed)
        if len(miss) == 0:  # every track seen last frame: one gate for all
            ti, dj, dist = _pairs_within(pred, det, cfg.gate_nm)
            return ti, dj, dist, float(cfg.gate_nm)
        # a missed track's gate widens with the gap, by at most gate_growth_per_gap x gate
        # per frame and by at most _GAP_SIGMAS of its own typical steps x sqrt(gap) (a
        # random walk of them): a particle that stood still is looked for where it stood
        # (a track seen once has no steps yet: it borrows the typical step of the
        # established tracks, the motion of this movie; none yet: the gap alone widens it.
        # One last seen cut by the border takes at most that typical step: its centroid
        # jitters with the cut, not the particle; with its own jitter a border particle
        # of a still ripening scene that dissolved was linked to one entering 15 nm along
        # the border three frames later).
        # Computed for the missed tracks only (the others keep gate_nm).
        m_raw = missed[miss]
        m = np.minimum(m_raw, cfg.max_gap_frames)
        step = self._step[miss]
        seen_moving = self._hits[miss] >= 2
        on_edge = self._edge[miss]
        moved = seen_moving & ~on_edge
        all_moved = np.count_nonzero(moved) == len(miss)  # (then no np.where below)
        if not all_moved:
            known = self._hits >= max(cfg.confirm_hits, 2)
            typical = _median_rows(self._step[known]) if np.count_nonzero(known) else np.inf
            step = np.where(moved, step, np.where(seen_moving, np.minimum(step, typical), typical))
            moved = np.isfinite(step)
        widen = cfg.gate_growth_per_gap * m
        own_widen = _GAP_SIGMAS * step * np.sqrt(m) / cfg.gate_nm  # 0 x inf: not used
        if all_moved:
            widen = np.minimum(widen, own_widen)
        else:
            widen = np.where(moved, np.minimum(widen, own_widen), widen)
        gate_miss = cfg.gate_nm * (1.0 + widen)
        # A track that left the field of view (last seen on the border, missed longer than
        # max_gap_frames) waits where it left; its gate grows like diffusion, sqrt(gap),
        # at the pace of its own steps (as the gap gate; steps seen while cut by the
        # border understate its motion, hence the generous factor) but at least gate_nm:
        # a particle that barely moved comes back where it left, not 20 nm along the border
        ex = _nz(m_raw > cfg.max_gap_frames)  # (among the missed)
        if len(ex):
            ex_rows = miss[ex]
            pred = pred.copy()
            pred[ex_rows] = self._pos.take(ex_rows, axis=0)
            root_gap = np.sqrt(missed[ex_rows])  # (missed > max_gap_frames >= 0)
            wide = gate_miss[ex] * root_gap / math.sqrt(max(cfg.max_gap_frames, 1))
            own = np.maximum(cfg.gate_nm, _GAP_SIGMAS * step[ex] * root_gap)
            gate_miss[ex] = (
                np.minimum(wide, own)
                if all_moved
                else np.where(moved[ex], np.minimum(wide, own), wide)
            )
        gate = np.full(len(pred), cfg.gate_nm)
        gate[miss] = gate_miss
        ti, dj, dist = _pairs_within(pred, det, gate)
        if len(ex):
            exited = missed > cfg.max_gap_frames
            ok = _nz(~exited[ti] | det_edge[dj])  # it can only come back through the border
            ti, dj, dist = ti[ok], dj[ok], dist[ok]
        return ti, dj, dist, gate

    def _pair_costs(
        self,
        ti: np.ndarray,
        dj: np.ndarray,
        dist: np.ndarray,
        gate: np.ndarray | float,
        diam: np.ndarray,
        area: np.ndarray,
        det_label: np.ndarray,
        overlap: _Overlap | None,
        det_edge: np.ndarray,
    ) -> np.ndarray:
        """The assignment cost of each gated pair (:meth:`_gated_pairs`, with its gates).
        A term that is zero for every pair this frame is not added (adding 0.0 changes
        no cost)."""
        cfg = self.config
        if isinstance(gate, float):  # no track missed: no gap cost
            cost = (dist / gate) ** 2
        else:
            # a track missed for m frames has a wider gate but pays gap_cost per missed
            # frame, so a stale track never wins a particle from the track that saw it
            # last frame (capped: a track back after a long absence is still a good link)
            cost = (dist / gate[ti]) ** 2 + cfg.gap_cost * np.minimum(self._missed[ti], 3)
        if cfg.tentative_cost:
            # a track seen fewer than confirm_hits times may be a spurious blob or a
            # fragment: an established track wins a particle from it (only where one
            # competes, so a young track alone is linked as easily as any other)
            tentative = self._hits[ti] < cfg.confirm_hits
            if np.count_nonzero(tentative):
                contested = np.bincount(dj[~tentative], minlength=len(diam)) > 0
                cost += cfg.tentative_cost * (tentative & contested[dj])
        if cfg.size_weight:
            # zero / NaN sizes (a log that is not finite): no term
            size = np.abs(np.log(diam[dj] / self._dsm[ti]))
            # two views cut by the border say nothing about the particle's size
            size[~np.isfinite(size) | (self._edge[ti] & det_edge[dj])] = 0.0
            cost += cfg.size_weight * size if cfg.size_weight != 1 else size
        if overlap is not None and cfg.overlap_weight:
            # only tracks seen in the previous frame have a mask there
            prev_lab = np.where(self._seen[ti] == self._prev_labels_frame, self._label[ti], 0)
            inter = overlap.intersection(prev_lab, det_label[dj])
            px2 = self.pixel_size_nm**2  # areas in px from the tables, not recounted
            union = _nan_to_zero(self._area[ti] / px2 + area[dj] / px2) - inter
            has = prev_lab > 0
            iou = np.where(has & (union > 0), inter / np.maximum(union, 1), 0.0)
            cost += cfg.overlap_weight * np.where(has, 1.0 - iou, 0.5)
        return cost

    def _find_merges(
        self,
        lost,
        frame_idx,
        matched,
        m_t,
        m_d,
        pred,
        det,
        diam,
        area,
        det_label,
        overlap,
        det_track,
        det_is_new,
        ended,
        events,
    ) -> None:
        """Tracks ``lost`` this frame (a mask, some true) whose particle is now covered by a
        detection (``det`` not empty): merges."""
        cfg = self.config
        # lost in this frame, and not a particle that was shrinking away (ripening: vanish);
        # one whose visible area collapsed because another particle hid it is no such one
        shrunk = lost & (self._area < cfg.vanish_fraction * self._peak)
        if np.count_nonzero(shrunk):
            shrunk[shrunk] = ~self._hidden(_nz(shrunk))
        cand = _nz(lost & ~shrunk)
        if len(cand) == 0:
            return
        r_det = diam / 2
        r_i = self._diam[cand] / 2
        k = min(3, len(det))
        dist, idx = _nearest(det, pred[cand], k)
        dist = np.asarray(dist).reshape(len(cand), k)
        idx = np.asarray(idx).reshape(len(cand), k)
        ci = np.repeat(cand, k)
        dj = np.minimum(idx.ravel(), len(det) - 1)
        dd = dist.ravel()
        # the two particles touched: centres within the sum of radii, plus the motion the
        # merged particle may have made since (merge_margin_nm)
        reach = r_det[dj] + np.repeat(r_i + 2 * self._step[cand], k) + cfg.merge_margin_nm
        if overlap is not None:
            prev_lab = np.where(self._seen[ci] == self._prev_labels_frame, self._label[ci], 0)
            inter = overlap.intersection(prev_lab, det_label[dj])
            frac = inter / np.maximum(_nan_to_zero(self._area[ci] / self.pixel_size_nm**2), 1)
            # the masks overlap, or (fast Brownian particles whose masks do not) they touched
            ok = ((prev_lab > 0) & (frac >= cfg.merge_overlap)) | (dd <= reach)
        else:
            ok = dd <= reach
        ok &= np.isfinite(dd)
        if not ok.any():
            return
        # each lost track merges into at most one detection: its nearest qualifying one
        ci, dj, dd = ci[ok], dj[ok], dd[ok]
        order = np.lexsort((dd, ci))
        ci, dj = ci[order], dj[order]
        first = np.concatenate(([True], ci[1:] != ci[:-1]))
        ci, dj = ci[first], dj[first]
        row_of_det = np.full(len(det), -1, dtype=np.int64)
        row_of_det[m_d] = m_t
        for j in sorted(set(dj.tolist())):  # (np.unique, for a few values)
            absorbed = ci[dj == j]
            survivor = int(row_of_det[j])
            parts = absorbed.tolist() + ([survivor] if survivor >= 0 else [])
            if len(parts) < 2:
                continue
            parts_area = float(_nansum(self._area[parts]))
            if not area[j] >= cfg.merge_area_min * parts_area:
                continue
            if survivor >= 0 and not (
                area[j]
                >= self._area[survivor] + cfg.merge_growth_min * _nansum(self._area[absorbed])
            ):
                continue  # the linked particle did not take up the lost one's matter
            if survivor >= 0 and cfg.merge_confirm_frames > 1 and len(self._roots(parts)) > 1:
                # wait: a segmentation glitch (two touching particles seen as one for a
                # frame) comes apart again and the lost track simply links back
                self._pend_into[absorbed] = self._ids[survivor]
                self._maybe_pending = True
                self._pend_frame[absorbed] = frame_idx
                continue
            self._merge(
                absorbed, survivor, j, frame_idx, frame_idx, det_track, det_is_new, ended, events
            )

    def _hidden(self, rows: np.ndarray) -> np.ndarray:
        """Which of the ``rows`` (established tracks whose visible area collapsed) were, when
        last seen, behind another established particle seen in the same frame: the centre
        of what was left visible lies inside the neighbour's equivalent disk, which two
        particles side by side (a small one dissolving next to a large one: ripening)
        never do, as their disks do not overlap."""
        cfg = self.config
        hidden = np.zeros(len(rows), dtype=bool)
        # a young track that collapsed is a fragment, not a particle hidden
        old = _nz(self._hits[rows] >= cfg.confirm_hits)
        nb = _nz(self._hits >= cfg.confirm_hits)
        diam = _nan_to_zero(self._diam[nb])
        widest = float(diam.max()) if len(nb) else 0.0
        if len(old) == 0 or len(nb) < 2 or not widest > 0:
            return hidden
        r = rows[old]
        i, j, dist = _pairs_within(
            self._pos.take(r, axis=0), self._pos.take(nb, axis=0), widest / 2
        )
        nj = nb[j]
        ok = (dist < diam[j] / 2) & (nj != r[i]) & (self._seen[nj] == self._seen[r[i]])
        hidden[old[i[ok]]] = True
        return hidden

    def _confirm_merges(self, frame_idx, matched, m_t, m_d, det_track, det_is_new, ended, events):
        """Pending merges whose lost tracks stayed lost ``merge_confirm_frames`` frames while
        the track they merged into went on: merge events (dated when the merge was seen)."""
        cfg = self.config
        pend = self._pend_into >= 0
        if not np.count_nonzero(pend):
            self._maybe_pending = False
            return
        # a pending track seen again was not merged
        self._pend_into[pend & matched] = -1
        pend = (self._pend_into >= 0) & ~ended
        if not np.count_nonzero(pend):
            return
        row_of_id = dict(zip(self._ids[m_t].tolist(), m_t.tolist(), strict=True))
        det_of_row = dict(zip(m_t.tolist(), m_d.tolist(), strict=True))
        for into in sorted(set(self._pend_into[pend].tolist())):  # (np.unique, a few)
            absorbed = _nz(pend & (self._pend_into == into))
            survivor = row_of_id.get(into, -1)
            if survivor < 0 or ended[survivor]:
                self._pend_into[absorbed] = -1  # the merge product was lost: no merge
                continue
            first = int(self._pend_frame[absorbed].min())
            if frame_idx - first + 1 < cfg.merge_confirm_frames:
                continue
            j = det_of_row[survivor]
            self._merge(
                absorbed, survivor, j, first, frame_idx, det_track, det_is_new, ended, events
            )

    def _merge(
        self, absorbed, survivor, j, event_frame, frame_idx, det_track, det_is_new, ended, events
    ):
        """Record one merge of the ``absorbed`` rows (and ``survivor`` row, -1 for none) into
        detection ``j``."""
        cfg = self.config
        parts = list(np.atleast_1d(absorbed).tolist()) + ([survivor] if survivor >= 0 else [])
        part_ids = sorted(int(self._ids[p]) for p in parts)
        roots = self._roots(parts)
        if len(roots) <= 1:
            # one particle seen as one again: no merge
            root = roots[0] if roots else max(parts, key=lambda p: (self._hits[p], p == survivor))
            self._rejoin(parts, root, survivor, j, frame_idx, det_track, ended, events)
            return
        if cfg.merge_new_id or survivor < 0:
            (into,) = self._new_ids(1, frame_idx).tolist()
            self._parents[into] = part_ids
            det_track[j] = into
            det_is_new[j] = True
            ended[parts] = True
            # born of established particles: established itself (a merge into it is a merge)
            self._products.append(into)
        else:
            into = int(self._ids[survivor])
            ended[absorbed] = True
        for p in parts:
            if ended[p]:
                self._fate[int(self._ids[p])] = _FATE_MERGED
                self._merged_into[int(self._ids[p])] = into
        self._pend_into[parts] = -1
        events.append((event_frame, "merge", " ".join(map(str, part_ids)), into))

    def _touches_lost(
        self, pos: np.ndarray, diam: np.ndarray, pred: np.ndarray, lost: np.ndarray
    ) -> np.ndarray:
        """For each detection (``pos``, ``diam``, nm), whether a ``lost`` track's predicted
        particle touches it (centres within the sum of the radii plus twice the track's
        typical step)."""
        rows = _nz(lost)
        if len(rows) == 0:
            return np.zeros(len(pos), dtype=bool)
        r_lost = _nan_to_zero(self._diam[rows]) / 2 + 2 * self._step[rows]
        radius = float(np.nanmax(diam, initial=0.0)) / 2 + float(r_lost.max())
        i, j, dist = _pairs_within(pos, pred[rows], radius)
        ok = dist <= diam[i] / 2 + r_lost[j]
        return np.bincount(i[ok], minlength=len(pos)) > 0

    def _roots(self, parts: list[int]) -> list[int]:
        """The rows among ``parts`` that are particles of their own: established tracks (a
        tentative one may be a spurious blob or a fragment) not born as a fragment of
        another part."""
        part_ids = {int(self._ids[p]) for p in parts}
        return [
            p
            for p in parts
            if self._hits[p] >= self.config.confirm_hits
            and self._born_near[int(self._ids[p])] not in part_ids
        ]

    def _note_born_near(
        self, new_ids, new_det, det, diam, area, det_track, det_is_new, m_t, m_d
    ) -> None:
        """Remember, for each newborn track, a linked track whose particle it touches
        (centres within the sum of the radii, the track's as now or as last seen, whole)
        and which shrank as it was born: most likely a fragment of that particle
        (over-segmentation at low dose), see :meth:`_rejoin`."""
        row_of_det = np.full(len(det), -1, dtype=np.int64)
        row_of_det[m_d] = m_t
        old = _nz((det_track >= 0) & ~det_is_new & (row_of_det >= 0))
        old = old[area[old] <= self.config.split_shrink * self._area[row_of_det[old]]]
        if len(old) == 0:
            return
        dist, idx = _nearest(det[old], det[new_det], min(2, len(old)))
        reach = diam[new_det][:, None] / 2 + diam[old[idx]] / 2
        near = dist <= reach
        # or within the footprint the particle had when last seen (before it came apart,
        # its pieces may lie wider apart than their own radii)
        rows_k = row_of_det[old[idx]]
        prev = np.hypot(*np.moveaxis(det[new_det][:, None, :] - self._pos[rows_k], -1, 0))
        near |= prev <= diam[new_det][:, None] / 2 + self._diam[rows_k] / 2
        has = near.any(axis=1)
        col = np.argmax(near, axis=1)  # nearest touching one
        touched = det_track[old[idx[np.arange(len(new_det)), col]]]
        for tid, t in zip(new_ids[has].tolist(), touched[has].tolist(), strict=True):
            self._born_near[tid] = int(t)

    def _rejoin(self, parts, root, survivor, j, frame_idx, det_track, ended, events) -> None:
        """Tracks born touching ``root`` (fragments of one particle, split by the
        segmentation) seen as one particle again: not a merge. ``root`` keeps its id and
        takes detection ``j``; the fragment tracks end (vanish)."""
        for p in parts:
            if p == root:
                continue
            ended[p] = True
            tid = int(self._ids[p])
            self._fate[tid] = _FATE_VANISHED
            events.append((frame_idx, "vanish", str(tid), -1))
        self._pend_into[parts] = -1
        self._whole.append(root)  # the detection is this particle, whole: not a blob
        if root != survivor:
            # the survivor row (-1: none) was linked to j: hand the link to the root
            self._swaps.append((survivor, root, j))
            det_track[j] = self._ids[root]

    def _find_splits(
        self, unmatched_det, m_t, m_d, det, diam, area, det_label, overlap, ended
    ) -> np.ndarray:
        """New detections budding off a linked track that shrank: split children."""
        cfg = self.config
        child_of = np.full(len(det), -1, dtype=np.int64)
        live = ~ended[m_t]
        mt, md = m_t[live], m_d[live]
        shrank = area[md] <= cfg.split_shrink * self._area[mt]
        mt, md = mt[shrank], md[shrank]
        if len(mt) == 0:
            return child_of
        k = min(2, len(mt))
        dist, idx = _nearest(self._pos[mt], det[unmatched_det], k)
        for col in range(k):  # k <= 2: not a loop over particles
            u = unmatched_det
            p = mt[idx[:, col]]
            j = md[idx[:, col]]
            near = dist[:, col] <= self._diam[p] / 2 + diam[u] / 2
            total = area[u] + area[j] >= cfg.merge_area_min * self._area[p]
            ok = near & total & (child_of[u] < 0)
            if overlap is not None:
                prev_lab = np.where(self._seen[p] == self._prev_labels_frame, self._label[p], 0)
                inter = overlap.intersection(prev_lab, det_label[u])
                frac = inter / np.maximum(_nan_to_zero(area[u] / self.pixel_size_nm**2), 1)
                ok &= (prev_lab == 0) | (frac >= cfg.merge_overlap)
            child_of[u[ok]] = self._ids[p[ok]]
        return child_of

    # ---------------------------------------------------------------- end and tables
    def finish(self) -> pd.DataFrame:
        """End of the movie: tracks still missing have vanished; the rest stay alive.

        Returns the events found now (vanish rows), possibly empty.
        """
        events = []
        if not self._finished:
            lost = _nz(self._missed > 0)
            for i in lost.tolist():
                tid = int(self._ids[i])
                self._fate[tid] = _FATE_VANISHED
                events.append((int(self._seen[i]) + 1, "vanish", str(tid), -1))
            self._finished = True
        return _events_frame(events)

    def _absorb(self) -> None:
        """Move the new history chunks into the row buffers, then summarise and release
        the tracks that ended (call with ``self._lock`` held). O(new rows), plus one pass
        over the alive tracks' rows when some tracks ended."""
        if self._hist:
            chunks = self._hist
            self._hist = []
            frames, *columns = zip(*chunks, strict=True)
            lengths = [len(c) for c in columns[0]]
            new = [np.repeat(np.array(frames, dtype=np.int64), lengths)]
            new += [np.concatenate(c) for c in columns]
            keep = new[1] >= 0
            n_new = int(keep.sum())
            need = self._n_rows + n_new
            cap = len(self._rows["frame"])
            if need > cap:  # grow by doubling: amortized O(1) per row
                cap = max(need, 2 * cap, 1024)
                for c, t in _HIST_COLUMNS.items():
                    buf = np.empty(cap, dtype=t)
                    buf[: self._n_rows] = self._rows[c][: self._n_rows]
                    self._rows[c] = buf
            for c, col in zip(_HIST_COLUMNS, new, strict=True):
                self._rows[c][self._n_rows : need] = col[keep]
            self._n_rows = need
        if not self._ended:
            return
        # tracks dropped at a frame whose chunk is absorbed are complete (a concurrent
        # reader may come between the drop and the chunk of the same frame)
        n = self._n_rows
        ready = [ids for f, ids in self._ended if f <= self._hist_frame]
        self._ended = [(f, ids) for f, ids in self._ended if f > self._hist_frame]
        if not ready:
            return
        ended_ids = np.concatenate(ready)
        tid = self._rows["track_id"][:n]
        gone = np.isin(tid, ended_ids)
        if gone.any():
            rows = {c: v[:n][gone] for c, v in self._rows.items()}
            summary = self._summarise(rows)
            self._done_parts.append(summary)
            self._keep_curves(rows)
            for v in self._rows.values():
                kept = v[:n][~gone]
                v[: len(kept)] = kept
            self._n_rows = int((~gone).sum())

    def _keep_curves(self, rows: dict[str, np.ndarray]) -> None:
        """Compact float32 growth curves (last :data:`_CURVE_POINTS` frames) of ended tracks,
        the most recent ones up to :data:`_CURVE_BUDGET` points in all."""
        tid = rows["track_id"]
        order = np.argsort(tid, kind="stable")
        stacked = np.stack(
            [rows[c][order] for c in ("frame", "time_s", "diameter_nm", "x_px", "y_px")], axis=1
        ).astype(np.float32)
        tid = tid[order]
        starts = _nz(np.r_[True, tid[1:] != tid[:-1]])
        ends = np.r_[starts[1:], len(tid)]
        # a loop over the tracks that ended since the last call (a few), not over rows
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            curve = stacked[max(a, b - _CURVE_POINTS) : b].copy()
            self._curves[int(tid[a])] = curve
            self._curve_points += len(curve)
        while self._curve_points > _CURVE_BUDGET and self._curves:
            _, old = self._curves.popitem(last=False)
            self._curve_points -= len(old)

    def _summarise(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-track numbers of tracks.csv (:data:`_SUMMARY_COLUMNS`) from history rows
        in frame order."""
        tid = rows["track_id"]
        # rows are in frame order, so a stable sort by id is the (id, frame) order
        order = np.argsort(tid, kind="stable")
        tid = tid[order]
        t = (
            rows["time_s"][order].astype(float)
            if self.time_unit == "s"
            else rows["frame"][order].astype(float)
        )
        d = rows["diameter_nm"][order].astype(float)
        f = rows["frame"][order]
        if len(tid) == 0:
            return {c: np.zeros(0, dtype=TRACK_COLUMNS[c]) for c in _SUMMARY_COLUMNS}
        starts = _nz(np.r_[True, tid[1:] != tid[:-1]])
        ends = np.r_[starts[1:], len(tid)]
        rate = np.full(len(starts), np.nan)
        for k, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            if b - a < 2:
                continue
            sel = np.arange(a, b)
            if len(sel) > 200:  # Theil-Sen is O(n^2): thin long tracks evenly
                sel = sel[np.linspace(0, len(sel) - 1, 200).astype(int)]
            rate[k] = theil_sen_slope(t[sel], d[sel])
        return {
            "track_id": tid[starts],
            "first_frame": f[starts],
            "last_frame": f[ends - 1],
            "n_frames": (ends - starts).astype(np.int64),
            "diameter_start_nm": d[starts],
            "diameter_end_nm": d[ends - 1],
            "growth_rate_nm_per_s": rate,
            "diameter_min_nm": np.fmin.reduceat(d, starts),
            "diameter_max_nm": np.fmax.reduceat(d, starts),
        }

    def _alive_rows(self) -> dict[str, np.ndarray]:
        """Copies of the buffered rows (tracks not yet ended); call with the lock held."""
        return {c: v[: self._n_rows].copy() for c, v in self._rows.items()}

    def track_history(self, track_id: int) -> pd.DataFrame:
        """One track's rows: ``frame``, ``time_s``, ``diameter_nm``, ``x_px``, ``y_px``
        (a growth curve). Thread-safe; empty for an unknown id.

        The whole curve of a track still alive. A track that ended (vanished, merged)
        keeps its last 2000 frames in float32 (~7 significant digits), for the most
        recently ended tracks up to 500 000 points in all (bounded memory in a long live
        run); older ended tracks give an empty table.
        """
        tid = int(track_id)
        with self._lock:
            self._absorb()
            n = self._n_rows
            sel = self._rows["track_id"][:n] == tid
            if sel.any():
                out = {c: self._rows[c][:n][sel] for c in _HIST_COLUMNS if c != "track_id"}
            elif tid in self._curves:
                curve = self._curves[tid].astype(np.float64)
                out = {
                    c: curve[:, k]
                    for k, c in enumerate(("frame", "time_s", "diameter_nm", "x_px", "y_px"))
                }
                out["frame"] = out["frame"].astype(np.int64)
            else:
                out = {c: np.zeros(0, dtype=t) for c, t in _HIST_COLUMNS.items() if c != "track_id"}
        return pd.DataFrame(out)

    def drift_table(self) -> pd.DataFrame:
        """drift.csv: ``frame``, ``dx_nm``, ``dy_nm`` (cumulative drift removed)."""
        return pd.DataFrame(self._drift_rows, columns=["frame", "dx_nm", "dy_nm"]).astype(
            {"frame": "int64", "dx_nm": "float64", "dy_nm": "float64"}
        )

    def tracks_table(self) -> pd.DataFrame:
        """tracks.csv: one row per track (see :data:`TRACK_COLUMNS`).

        ``growth_rate_nm_per_s`` is the Theil-Sen slope of diameter against time (nm per
        frame when ``time_unit == "frame"``; NaN for a single-frame track). The numbers
        of an ended track are computed once, when it ends; each call recomputes only
        those of the alive tracks.
        """
        with self._lock:
            self._absorb()
            rows = self._alive_rows()
            if self._done_parts:
                parts = ([self._done] if self._done is not None else []) + self._done_parts
                self._done = {c: np.concatenate([p[c] for p in parts]) for c in _SUMMARY_COLUMNS}
                self._done_parts = []
            done = self._done
        alive = self._summarise(rows)
        if done is not None:
            alive = {c: np.concatenate([done[c], alive[c]]) for c in _SUMMARY_COLUMNS}
        if len(alive["track_id"]) == 0:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in TRACK_COLUMNS.items()})
        order = np.argsort(alive["track_id"], kind="stable")
        cols = {c: v[order] for c, v in alive.items()}
        ids = cols["track_id"].tolist()
        table = pd.DataFrame(
            {
                **{c: cols[c] for c in _SUMMARY_COLUMNS[:7]},
                "fate": [self._fate[i] for i in ids],
                "diameter_min_nm": cols["diameter_min_nm"],
                "diameter_max_nm": cols["diameter_max_nm"],
                "merged_into": [self._merged_into[i] for i in ids],
                "parent_ids": [" ".join(map(str, self._parents.get(i, []))) for i in ids],
                "split_from": [self._split_from[i] for i in ids],
            }
        )
        return table.astype(TRACK_COLUMNS)


# --------------------------------------------------------------------------------------
# Generator and batch layers
# --------------------------------------------------------------------------------------
def track_frames(
    tables: Iterable[pd.DataFrame],
    *,
    pixel_size_nm: float,
    frame_interval_s: float | None,
    config: TrackerConfig | None = None,
    motion_model: MotionModel | None = None,
    labels: Iterable[np.ndarray | None] | None = None,
    images: Iterable[np.ndarray | None] | None = None,
    tracker: Tracker | None = None,
) -> Iterator[TrackStep]:
    """Track an iterable of per-frame particle tables, yielding one :class:`TrackStep` each.

    After the last table, if ending the tracks produced events (vanishings), one more step
    with an empty particle table carries them. Pass ``tracker`` to keep access to it
    (``tracks_table()``, ``drift_table()``) afterwards.
    """
    tr = tracker or Tracker(
        config, motion_model, pixel_size_nm=pixel_size_nm, frame_interval_s=frame_interval_s
    )
    lab_it = iter(labels) if labels is not None else None
    img_it = iter(images) if images is not None else None
    last: pd.DataFrame | None = None
    for table in tables:
        lab = next(lab_it, None) if lab_it is not None else None
        img = next(img_it, None) if img_it is not None else None
        step = tr.update(table, labels=lab, image=img)
        last = step.particles
        yield step
    end = tr.finish()
    if len(end):
        empty = last.iloc[:0] if last is not None else pd.DataFrame()
        yield TrackStep(empty, end, (float(tr._drift[0]), float(tr._drift[1])))


def _link_frames(
    tr: Tracker,
    table: pd.DataFrame,
    labels: Sequence[np.ndarray] | np.ndarray | None,
    images: Sequence[np.ndarray] | np.ndarray | None,
) -> tuple[np.ndarray, list[tuple[int, str, str, int]]]:
    """Feed a whole table to ``tr`` frame by frame: track id per row (table order) and the
    events found (before ``finish``). The columns are read once and each frame's rows
    taken from the arrays (no per-frame DataFrame slicing)."""
    if "frame" not in table.columns:
        raise InputError("particle table lacks column 'frame'")
    frames = table["frame"].to_numpy()
    if len(frames) and not np.issubdtype(frames.dtype, np.integer):
        if not np.all(np.isfinite(frames.astype(float))):
            raise InputError("column 'frame' has missing values")
        frames = frames.astype(np.int64)
    order = np.argsort(frames, kind="stable")
    sorted_frames = frames[order]
    bounds = (
        _nz(np.r_[True, sorted_frames[1:] != sorted_frames[:-1], True])
        if len(order)
        else np.zeros(1, int)
    )
    missing = [c for c in ("x_px", "y_px") if c not in table.columns]
    if missing:
        raise InputError(f"particle table lacks column(s) {', '.join(missing)}")
    # the columns read and prepared once, in frame order; each frame is then a slice
    in_order = bool(np.all(order == np.arange(len(order))))
    columns = _frame_columns(table)
    if not in_order:
        columns = tuple(None if c is None else c[order] for c in columns)
    # (no copies: the tracker lives only for this call, the table is not changed in it)
    found = _detections(columns, tr.pixel_size_nm, copy=False)
    # the detections of frame k are found[cut[k]:cut[k + 1]] (rows with NaN coordinates
    # are missing from found: count the kept rows before each frame's first row)
    cut = np.searchsorted(found.rows, bounds).tolist()
    first_rows = bounds[:-1]
    frame_of = sorted_frames[first_rows].tolist() if len(first_rows) else []
    bounds = bounds.tolist()
    track_sorted = np.full(len(table), -1, dtype=np.int64)
    event_rows: list[tuple[int, str, str, int]] = []
    with np.errstate(**_FRAME_ERRSTATE):
        for k, f in enumerate(frame_of):
            a, b = bounds[k], bounds[k + 1]
            lab = labels[f] if labels is not None else None
            img = images[f] if images is not None else None
            frame_found = _slice_detections(found, slice(cut[k], cut[k + 1]), row_offset=a)
            track_sorted[a:b], events = tr._advance(f, b - a, frame_found, labels=lab, image=img)
            event_rows.extend(events)
    if in_order:
        return track_sorted, event_rows
    track_id = np.empty_like(track_sorted)
    track_id[order] = track_sorted
    return track_id, event_rows


def link_with_events(
    table: pd.DataFrame,
    *,
    pixel_size_nm: float,
    frame_interval_s: float | None,
    config: TrackerConfig | None = None,
    motion_model: MotionModel | None = None,
    labels: Sequence[np.ndarray] | np.ndarray | None = None,
    images: Sequence[np.ndarray] | np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Track a whole particle table (all frames) offline.

    Parameters
    ----------
    table : DataFrame
        Tidy particle table with ``frame``, ``x_px``, ``y_px`` (and the optional columns
        :meth:`Tracker.update` uses). Not modified.
    pixel_size_nm, frame_interval_s, config, motion_model
        As for :class:`Tracker`.
    labels, images : sequence indexed by frame number, optional
        Label images / raw frames (e.g. a (T, rows, cols) array).

    Returns
    -------
    particles : DataFrame
        A copy of ``table`` (same index and row order) with ``track_id`` filled.
    events : DataFrame
        events.csv rows, sorted by frame.
    tracks : DataFrame
        tracks.csv rows.
    """
    tr = Tracker(
        config, motion_model, pixel_size_nm=pixel_size_nm, frame_interval_s=frame_interval_s
    )
    track_id, event_rows = _link_frames(tr, table, labels, images)
    events = pd.concat([_events_frame(event_rows), tr.finish()], ignore_index=True)
    out = table.copy()
    out["track_id"] = track_id
    events = events.sort_values("frame", kind="stable").reset_index(drop=True)
    return out, events.astype(EVENT_COLUMNS), tr.tracks_table()


def link(
    table: pd.DataFrame,
    *,
    pixel_size_nm: float,
    frame_interval_s: float | None,
    config: TrackerConfig | None = None,
    motion_model: MotionModel | None = None,
    labels: Sequence[np.ndarray] | np.ndarray | None = None,
    images: Sequence[np.ndarray] | np.ndarray | None = None,
) -> pd.DataFrame:
    """A copy of ``table`` with ``track_id`` filled, as :func:`link_with_events` gives it
    (without building the events and tracks tables)."""
    tr = Tracker(
        config, motion_model, pixel_size_nm=pixel_size_nm, frame_interval_s=frame_interval_s
    )
    track_id, _ = _link_frames(tr, table, labels, images)
    out = table.copy()
    out["track_id"] = track_id
    return out
