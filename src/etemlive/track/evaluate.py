"""Tracking metrics against ground truth: IDF1, MOTA, ID switches, merge-event F1.

Detections are matched to truth per frame by position (one-to-one, within ``radius_px``,
minimum total squared distance), all frames in one sparse assignment (frames are kept
apart by offsetting their coordinates, so no pair ever spans two frames).

- MOTA (CLEAR MOT) = 1 - (misses + false positives + ID switches) / truth detections; an
  ID switch is a truth track whose matched predicted id differs from its previous match.
- IDF1 (Ristani et al. 2016) = 2 IDTP / (truth detections + predicted detections), where
  IDTP is the number of frames the globally best one-to-one truth-id <-> predicted-id
  pairing agrees (pairs within the radius in the same frame).
- A predicted merge counts when a truth merge lies within ``tolerance_frames`` frames and
  the predicted merging tracks, mapped to the truth tracks they were mostly matched to,
  are exactly the truth's merging tracks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from ..errors import InputError
from .tracker import solve_gated_assignment

__all__ = [
    "TrackingScores",
    "match_detections",
    "mot_metrics",
    "merge_event_scores",
    "evaluate_tracking",
]


@dataclass(frozen=True)
class TrackingScores:
    """MOT scores; counts are detections (rows), rates are 0..1 (MOTA can be < 0)."""

    idf1: float
    idp: float
    idr: float
    mota: float
    id_switches: int
    false_positives: int
    misses: int
    n_truth: int
    n_pred: int
    n_truth_tracks: int
    n_pred_tracks: int

    def as_dict(self) -> dict:
        return asdict(self)


def _xy_frame(df: pd.DataFrame, id_col: str, what: str) -> tuple[np.ndarray, ...]:
    missing = [c for c in ("frame", "x_px", "y_px", id_col) if c not in df.columns]
    if missing:
        raise InputError(f"{what} table lacks column(s) {', '.join(missing)}")
    xy = df[["x_px", "y_px"]].to_numpy(dtype=float)
    ids = df[id_col].to_numpy()
    ok = np.isfinite(xy).all(axis=1) & (ids >= 0)
    return (
        df["frame"].to_numpy(dtype=np.int64)[ok],
        xy[ok],
        ids[ok].astype(np.int64),
    )


def _truth_radius(truth: pd.DataFrame, truth_id: str, radius_px: float, size_relative: bool):
    """Per truth row match radius: ``radius_px``, or at least the particle's own radius."""
    _, xy, _ = _xy_frame(truth, truth_id, "truth")
    if not size_relative or "area_px" not in truth.columns:
        return np.full(len(xy), float(radius_px))
    ids = truth[truth_id].to_numpy()
    ok = np.isfinite(truth[["x_px", "y_px"]].to_numpy(dtype=float)).all(axis=1) & (ids >= 0)
    own = np.sqrt(np.maximum(truth["area_px"].to_numpy(dtype=float)[ok], 0) / np.pi)
    return np.maximum(float(radius_px), np.nan_to_num(own))


def _frame_offset_points(frame: np.ndarray, xy: np.ndarray, span: float) -> np.ndarray:
    # frames far apart along x: a radius query can never pair two frames
    pts = xy.copy()
    pts[:, 0] += frame * span
    return pts


def match_detections(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    radius_px: float,
    pred_id: str = "track_id",
    truth_id: str = "truth_id",
    size_relative: bool = False,
) -> pd.DataFrame:
    """One-to-one per-frame matches between predicted and truth detections.

    A pair matches when the predicted centroid is within ``radius_px`` of the truth (or,
    with ``size_relative`` and an ``area_px`` truth column, within the truth particle's
    equivalent radius if that is larger: occluded or edge-cut particles have label
    centroids px away from their 3-D centres).

    Returns
    -------
    DataFrame
        ``frame``, ``truth_id``, ``pred_id``, ``distance_px``: one row per matched pair.
    """
    if not radius_px > 0:
        raise InputError(f"radius_px must be > 0, got {radius_px!r}")
    pf, pxy, pid = _xy_frame(pred, pred_id, "predicted")
    tf, txy, tid = _xy_frame(truth, truth_id, "truth")
    cols = ["frame", "truth_id", "pred_id", "distance_px"]
    if len(pf) == 0 or len(tf) == 0:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in cols}).astype(
            {"distance_px": float}
        )
    rad = _truth_radius(truth, truth_id, radius_px, size_relative)
    ti, pj, d = _pairs(tf, txy, pf, pxy, rad)
    # cost in [0, 1) < 2 * 0.5: any pair within the radius beats leaving both unmatched
    r, c = solve_gated_assignment(len(tf), len(pf), ti, pj, (d / rad[ti]) ** 2 * 0.999, 0.5)
    dist = np.hypot(*(txy[r] - pxy[c]).T)
    out = pd.DataFrame({"frame": tf[r], "truth_id": tid[r], "pred_id": pid[c], "distance_px": dist})
    return out.sort_values(["frame", "truth_id"], kind="stable").reset_index(drop=True)


def _pairs(tf, txy, pf, pxy, rad):
    """All (truth row, predicted row, distance) in the same frame within the truth radius."""
    lo = min(pxy.min(), txy.min())
    span = max(pxy.max(), txy.max()) - lo + 4 * rad.max() + 1
    pairs = cKDTree(_frame_offset_points(tf, txy - lo, span)).sparse_distance_matrix(
        cKDTree(_frame_offset_points(pf, pxy - lo, span)), float(rad.max()), output_type="ndarray"
    )
    ti, pj, d = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64), pairs["v"]
    ok = (tf[ti] == pf[pj]) & (d <= rad[ti])
    return ti[ok], pj[ok], d[ok]


def _co_occurrence(pred, truth, radius_px, pred_id, truth_id, size_relative):
    """Counts of frames where truth id t and predicted id p are within the radius."""
    pf, pxy, pid = _xy_frame(pred, pred_id, "predicted")
    tf, txy, tid = _xy_frame(truth, truth_id, "truth")
    if len(pf) == 0 or len(tf) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    rad = _truth_radius(truth, truth_id, radius_px, size_relative)
    ti, pj, _ = _pairs(tf, txy, pf, pxy, rad)
    t_ids, p_ids = tid[ti], pid[pj]
    key = np.unique(np.column_stack([t_ids, p_ids]), axis=0, return_counts=True)
    return key[0][:, 0], key[0][:, 1], key[1]


def mot_metrics(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    radius_px: float,
    pred_id: str = "track_id",
    truth_id: str = "truth_id",
    matches: pd.DataFrame | None = None,
    size_relative: bool = False,
) -> TrackingScores:
    """IDF1, IDP, IDR, MOTA, ID switches, false positives and misses.

    Parameters
    ----------
    pred, truth : DataFrame
        Tidy tables with ``frame``, ``x_px``, ``y_px`` and an id column (rows with a
        negative id or NaN position are ignored).
    radius_px : float
        Largest distance of a correct detection from its truth, px.
    matches : DataFrame, optional
        Output of :func:`match_detections` (computed when None).
    """
    if matches is None:
        matches = match_detections(
            pred, truth, radius_px=radius_px, pred_id=pred_id, truth_id=truth_id
        )
    _, _, pid = _xy_frame(pred, pred_id, "predicted")
    _, _, tid = _xy_frame(truth, truth_id, "truth")
    n_pred, n_truth = len(pid), len(tid)
    n_match = len(matches)
    # ID switches: a truth track's matched predicted id changes between its matched frames
    m = matches.sort_values(["truth_id", "frame"], kind="stable")
    t = m["truth_id"].to_numpy()
    p = m["pred_id"].to_numpy()
    switches = int(np.count_nonzero((t[1:] == t[:-1]) & (p[1:] != p[:-1])))
    fp = n_pred - n_match
    fn = n_truth - n_match
    mota = 1.0 - (fn + fp + switches) / n_truth if n_truth else float("nan")
    # IDF1: best one-to-one pairing of ids by co-occurrence counts
    ct, cp, cn = _co_occurrence(pred, truth, radius_px, pred_id, truth_id, size_relative)
    if len(cn):
        tu, t_inv = np.unique(ct, return_inverse=True)
        pu, p_inv = np.unique(cp, return_inverse=True)
        # maximize total count: cost -count, leaving ids unpaired costs nothing
        r, c = solve_gated_assignment(len(tu), len(pu), t_inv, p_inv, -cn.astype(float), 1e-9)
        lookup = dict(
            zip(zip(t_inv.tolist(), p_inv.tolist(), strict=True), cn.tolist(), strict=True)
        )
        idtp = int(sum(lookup[(a, b)] for a, b in zip(r.tolist(), c.tolist(), strict=True)))
    else:
        idtp = 0
    idf1 = 2 * idtp / (n_truth + n_pred) if (n_truth + n_pred) else float("nan")
    return TrackingScores(
        idf1=idf1,
        idp=idtp / n_pred if n_pred else float("nan"),
        idr=idtp / n_truth if n_truth else float("nan"),
        mota=mota,
        id_switches=switches,
        false_positives=fp,
        misses=fn,
        n_truth=n_truth,
        n_pred=n_pred,
        n_truth_tracks=int(len(np.unique(tid))),
        n_pred_tracks=int(len(np.unique(pid))),
    )


def _ids_of(value) -> frozenset[int]:
    if isinstance(value, str):
        return frozenset(int(v) for v in value.split())
    if isinstance(value, int | np.integer):
        return frozenset([int(value)])
    return frozenset(int(v) for v in value)


def merge_event_scores(
    pred_events: pd.DataFrame,
    truth_events: pd.DataFrame,
    matches: pd.DataFrame,
    *,
    tolerance_frames: int = 2,
    pred_ids_column: str = "track_ids",
    truth_ids_column: str = "ids",
    truth: pd.DataFrame | None = None,
    truth_id: str = "truth_id",
) -> dict[str, float]:
    """Precision, recall and F1 of merge events.

    Each predicted track of a merge is mapped to the truth track it was matched to most
    often (``matches`` from :func:`match_detections`) in the frames before the merge (its
    life as a part; a tracker that confirms merges over a few frames follows the merge
    product with the surviving part's id meanwhile), or over its whole life when it was
    never matched before the merge frame; a predicted merge is a true positive when
    an unused truth merge within ``tolerance_frames`` has exactly the mapped set of ids.
    With ``truth`` (the truth detections), only truth merges whose merging particles were
    all visible in the ``tolerance_frames + 1`` frames before are scored (the simulator
    also reports merges outside the field of view, which no tracker can see).

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1``, ``true_positives``, ``n_pred``, ``n_truth``.
    """

    def merges(ev: pd.DataFrame, col: str) -> pd.DataFrame:
        if len(ev) == 0:
            return ev
        if col not in ev.columns:
            raise InputError(f"events table lacks column {col!r}")
        return ev[ev["kind"] == "merge"]

    pm = merges(pred_events, pred_ids_column)
    tm = merges(truth_events, truth_ids_column)
    # majority truth id for every predicted id (over its whole life) ...
    if len(matches):
        cnt = matches.groupby(["pred_id", "truth_id"]).size().reset_index(name="n")
        cnt = cnt.sort_values(["pred_id", "n"], ascending=[True, False], kind="stable")
        best = cnt.drop_duplicates("pred_id")
        to_truth = dict(zip(best["pred_id"].tolist(), best["truth_id"].tolist(), strict=True))
        m_frame = matches["frame"].to_numpy()
        m_pred = matches["pred_id"].to_numpy()
        m_truth = matches["truth_id"].to_numpy()
    else:
        to_truth = {}
        m_frame = m_pred = m_truth = np.zeros(0, dtype=np.int64)

    def part_of(pred_id: int, frame: int) -> int:
        """... and as a part: over the frames before the merge (a loop over merges)."""
        sel = (m_pred == pred_id) & (m_frame < frame)
        if not sel.any():
            return to_truth.get(pred_id, -1 - pred_id)
        ids, n = np.unique(m_truth[sel], return_counts=True)
        return int(ids[np.argmax(n)])

    truth_list = (
        [(int(f), _ids_of(ids)) for f, ids in zip(tm["frame"], tm[truth_ids_column], strict=True)]
        if len(tm)
        else []
    )
    if truth is not None and truth_list:
        seen = set(zip(truth["frame"].tolist(), truth[truth_id].tolist(), strict=True))
        truth_list = [
            (f, ids)
            for f, ids in truth_list
            if all(any((g, i) in seen for g in range(f - tolerance_frames - 1, f)) for i in ids)
        ]
    used = [False] * len(truth_list)
    tp = 0
    for f, ids in (
        zip(pm["frame"].tolist(), pm[pred_ids_column].tolist(), strict=True) if len(pm) else []
    ):
        mapped = frozenset(part_of(i, int(f)) for i in _ids_of(ids))
        best_k, best_gap = -1, None
        for k, (tf, tids) in enumerate(truth_list):
            gap = abs(tf - int(f))
            if not used[k] and gap <= tolerance_frames and tids == mapped:
                if best_gap is None or gap < best_gap:
                    best_k, best_gap = k, gap
        if best_k >= 0:
            used[best_k] = True
            tp += 1
    n_pred, n_truth = len(pm), len(truth_list)
    precision = tp / n_pred if n_pred else float("nan")
    recall = tp / n_truth if n_truth else float("nan")
    if n_pred == 0 and n_truth == 0:
        f1 = 1.0
    elif tp == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positives": tp,
        "n_pred": n_pred,
        "n_truth": n_truth,
    }


def evaluate_tracking(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    radius_px: float,
    pred_events: pd.DataFrame | None = None,
    truth_events: pd.DataFrame | None = None,
    pred_id: str = "track_id",
    truth_id: str = "truth_id",
    tolerance_frames: int = 2,
    size_relative: bool = False,
) -> dict[str, float]:
    """All scores in one flat dict: MOT metrics plus ``merge_precision`` / ``merge_recall``
    / ``merge_f1`` (and counts) when both event tables are given."""
    matches = match_detections(
        pred,
        truth,
        radius_px=radius_px,
        pred_id=pred_id,
        truth_id=truth_id,
        size_relative=size_relative,
    )
    out: dict[str, float] = mot_metrics(
        pred,
        truth,
        radius_px=radius_px,
        pred_id=pred_id,
        truth_id=truth_id,
        matches=matches,
        size_relative=size_relative,
    ).as_dict()
    if pred_events is not None and truth_events is not None:
        m = merge_event_scores(
            pred_events,
            truth_events,
            matches,
            tolerance_frames=tolerance_frames,
            truth=truth,
            truth_id=truth_id,
        )
        out.update({f"merge_{k}": v for k, v in m.items()})
    return out
