"""Segmentation accuracy: instance matching and per-image / aggregated scores.

Convention (shared with ``../shared/data/README.md`` and the benchmark): predicted
and true instances are matched one-to-one at IoU >= 0.5; precision, recall and F1
count matches; size errors are computed on matched pairs, both sides measured by
:func:`etemlive.measure.measure_particles`; particles cut by the image border are
left out on both sides (a true particle touching the border and whatever matches
it, and any unmatched prediction touching the border).

The IoU table is sparse: one ``np.unique`` over the (true, pred) label pairs of the
pixels where either is foreground gives every overlap at once, no per-particle loop.
For IoU > 0.5 each instance can overlap at most one partner that much, so the
greedy assignment by decreasing IoU is the optimal one (identical to Hungarian);
below 0.5 it is a greedy approximation.

Helpers score against the real annotations in ``../shared/data``: YOLO boxes
(``ardagen_catalysts``: predicted instances' bounding boxes vs the boxes) and
binary masks (``msa_sintering``: the true instances are the mask's connected
components, so touching particles that share one mask region count as one).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import InputError
from .frames import validate_pixel_size_nm
from .measure import measure_particles

#: Keys of :func:`score_segmentation` / :func:`aggregate_scores` results.
SCORE_KEYS = (
    "precision", "recall", "f1", "n_true", "n_pred", "n_matched", "diameter_mae_nm",
    "diameter_rel_err", "aspect_ratio_rmse", "roundness_rmse", "count_error",
)


@dataclass(frozen=True)
class MatchResult:
    """One-to-one matching of predicted and true instances.

    Attributes
    ----------
    pred_ids, true_ids : ndarray of int64
        Matched label values, pair by pair (same length).
    iou : ndarray of float64
        IoU of each matched pair.
    pred_kept, true_kept : ndarray of int64
        Labels that count (after the border exclusion), sorted.
    """

    pred_ids: np.ndarray
    true_ids: np.ndarray
    iou: np.ndarray
    pred_kept: np.ndarray
    true_kept: np.ndarray

    @property
    def n_matched(self) -> int:
        return int(self.pred_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_kept.size)

    @property
    def n_true(self) -> int:
        return int(self.true_kept.size)


def _check_pair(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred), np.asarray(true)
    for name, arr in (("predicted labels", pred), ("true labels", true)):
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
            raise InputError(f"{name} must be a 2-D integer label image, got "
                             f"{arr.ndim}-D {arr.dtype}")
    if pred.shape != true.shape:
        raise InputError(f"predicted labels {pred.shape} and true labels {true.shape} "
                         "differ in shape")
    return pred, true


def edge_labels(labels: np.ndarray) -> np.ndarray:
    """Sorted label values (> 0) that touch the image border."""
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.unique(border[border > 0]).astype(np.int64)


def _greedy_one_to_one(a: np.ndarray, b: np.ndarray, score: np.ndarray, threshold: float
                       ) -> np.ndarray:
    """Indices of candidate pairs kept: by decreasing score, each a and b used once."""
    keep = np.flatnonzero(score >= threshold)
    keep = keep[np.argsort(-score[keep], kind="stable")]
    if threshold > 0.5:
        return keep  # already one-to-one (see module docstring)
    used_a: set[int] = set()
    used_b: set[int] = set()
    out = []
    for k in keep:  # only candidates at IoU >= threshold: a handful per particle
        if a[k] in used_a or b[k] in used_b:
            continue
        used_a.add(a[k])
        used_b.add(b[k])
        out.append(k)
    return np.asarray(out, dtype=np.int64)


def match_instances(pred_labels: np.ndarray, true_labels: np.ndarray, *,
                    iou_threshold: float = 0.5, exclude_edge: bool = True) -> MatchResult:
    """Match predicted to true instances one-to-one at IoU >= ``iou_threshold``.

    Parameters
    ----------
    pred_labels, true_labels : ndarray of int, shape (rows, cols)
        Instance label images (0 = background), same shape.
    iou_threshold : float
        Minimum intersection over union of a match (0 < t <= 1).
    exclude_edge : bool
        Leave out particles cut by the image border (see module docstring).

    Returns
    -------
    MatchResult
    """
    pred, true = _check_pair(pred_labels, true_labels)
    if not 0.0 < iou_threshold <= 1.0:
        raise InputError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    p = pred.ravel().astype(np.int64)
    t = true.ravel().astype(np.int64)
    pred_ids, pred_area = np.unique(p[p > 0], return_counts=True)
    true_ids, true_area = np.unique(t[t > 0], return_counts=True)
    both = (p > 0) & (t > 0)
    stride = int(p.max()) + 1 if p.size else 1
    pair, inter = np.unique(t[both] * stride + p[both], return_counts=True)
    ct, cp = np.divmod(pair, stride)
    union = (true_area[np.searchsorted(true_ids, ct)] + pred_area[np.searchsorted(pred_ids, cp)]
             - inter)
    iou = inter / union
    kept = _greedy_one_to_one(ct, cp, iou, iou_threshold)
    m_true, m_pred, m_iou = ct[kept], cp[kept], iou[kept]

    pred_kept, true_kept = pred_ids.astype(np.int64), true_ids.astype(np.int64)
    if exclude_edge:
        true_edge = edge_labels(true)
        pred_edge = edge_labels(pred)
        drop_pair = np.isin(m_true, true_edge)
        dropped_pred = m_pred[drop_pair]
        m_true, m_pred, m_iou = m_true[~drop_pair], m_pred[~drop_pair], m_iou[~drop_pair]
        true_kept = true_kept[~np.isin(true_kept, true_edge)]
        unmatched_edge_pred = pred_edge[~np.isin(pred_edge, m_pred)]
        pred_kept = pred_kept[~np.isin(pred_kept, np.concatenate([dropped_pred,
                                                                   unmatched_edge_pred]))]
    order = np.argsort(m_true)
    return MatchResult(m_pred[order].astype(np.int64), m_true[order].astype(np.int64),
                       m_iou[order].astype(np.float64), pred_kept, true_kept)


def _rates(n_matched: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    precision = n_matched / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
    recall = n_matched / n_true if n_true else (1.0 if n_pred == 0 else 0.0)
    f1 = 2 * n_matched / (n_pred + n_true) if (n_pred + n_true) else 1.0
    return precision, recall, f1


def score_segmentation(pred_labels: np.ndarray, true_labels: np.ndarray, pixel_size_nm: float,
                       *, iou_threshold: float = 0.5, exclude_edge: bool = True
                       ) -> dict[str, float]:
    """Detection and size accuracy of one predicted label image.

    Parameters
    ----------
    pred_labels, true_labels : ndarray of int, shape (rows, cols)
        Predicted and true instance labels.
    pixel_size_nm : float
        Pixel size in nm/px (> 0); pass 1.0 to score in px.
    iou_threshold, exclude_edge
        As in :func:`match_instances`.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1``; ``n_true``, ``n_pred``, ``n_matched``;
        on matched pairs ``diameter_mae_nm`` (equivalent-circle diameter, nm),
        ``diameter_rel_err`` (mean of |d_pred - d_true| / d_true), ``aspect_ratio_rmse``,
        ``roundness_rmse`` (NaN without matches); ``count_error`` = (n_pred - n_true)
        / n_true (signed; NaN when n_true = 0).
    """
    px = validate_pixel_size_nm(pixel_size_nm)
    match = match_instances(pred_labels, true_labels, iou_threshold=iou_threshold,
                            exclude_edge=exclude_edge)
    precision, recall, f1 = _rates(match.n_matched, match.n_pred, match.n_true)
    out: dict[str, float] = {
        "precision": precision, "recall": recall, "f1": f1,
        "n_true": match.n_true, "n_pred": match.n_pred, "n_matched": match.n_matched,
        "diameter_mae_nm": math.nan, "diameter_rel_err": math.nan,
        "aspect_ratio_rmse": math.nan, "roundness_rmse": math.nan,
        "count_error": ((match.n_pred - match.n_true) / match.n_true) if match.n_true
        else math.nan,
    }
    if match.n_matched:
        tp = measure_particles(np.asarray(pred_labels), px).set_index("label")
        tt = measure_particles(np.asarray(true_labels), px).set_index("label")
        p, t = tp.loc[match.pred_ids], tt.loc[match.true_ids]
        dd = p["diameter_nm"].to_numpy() - t["diameter_nm"].to_numpy()
        out["diameter_mae_nm"] = float(np.mean(np.abs(dd)))
        out["diameter_rel_err"] = float(np.mean(np.abs(dd) / t["diameter_nm"].to_numpy()))
        for col in ("aspect_ratio", "roundness"):
            diff = p[col].to_numpy() - t[col].to_numpy()
            out[f"{col}_rmse"] = float(np.sqrt(np.mean(diff * diff)))
    return out


def aggregate_scores(scores: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Combine per-image scores: micro-averaged counts, errors weighted by matches.

    Precision / recall / F1 / count error come from the summed counts; the MAE and
    relative error are match-weighted means; RMSEs are pooled
    (sqrt of the match-weighted mean square). Images without matches add counts only.
    """
    scores = list(scores)
    n_true = int(sum(s["n_true"] for s in scores))
    n_pred = int(sum(s["n_pred"] for s in scores))
    n_matched = int(sum(s["n_matched"] for s in scores))
    precision, recall, f1 = _rates(n_matched, n_pred, n_true)
    out: dict[str, float] = {
        "precision": precision, "recall": recall, "f1": f1,
        "n_true": n_true, "n_pred": n_pred, "n_matched": n_matched,
        "count_error": (n_pred - n_true) / n_true if n_true else math.nan,
    }
    with_matches = [s for s in scores if s["n_matched"]]
    w = np.array([s["n_matched"] for s in with_matches], dtype=float)
    for key in ("diameter_mae_nm", "diameter_rel_err"):
        vals = np.array([s[key] for s in with_matches], dtype=float)
        out[key] = float(np.sum(w * vals) / w.sum()) if w.size else math.nan
    for key in ("aspect_ratio_rmse", "roundness_rmse"):
        vals = np.array([s[key] for s in with_matches], dtype=float)
        out[key] = float(np.sqrt(np.sum(w * vals**2) / w.sum())) if w.size else math.nan
    return {k: out[k] for k in SCORE_KEYS}


# --------------------------------------------------------------------------- masks


def mask_to_instances(mask: np.ndarray) -> np.ndarray:
    """True instances from a binary annotation mask: its 4-connected components.

    Any non-zero pixel is foreground; for an RGB(A) mask any non-zero colour channel
    (the alpha channel is ignored: ``msa_sintering`` masks are RGBA with alpha 255
    everywhere and particle = 255 in RGB). Touching particles that share one mask
    region become one instance.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., :3].any(axis=-1)
    if mask.ndim != 2:
        raise InputError(f"mask must be 2-D (or 2-D x channels), got shape {mask.shape}")
    labels, _ = ndimage.label(mask != 0)
    return labels.astype(np.int32)


def score_against_mask(pred_labels: np.ndarray, mask: np.ndarray, pixel_size_nm: float = 1.0,
                       **kwargs) -> dict[str, float]:
    """:func:`score_segmentation` against a binary mask's connected components."""
    return score_segmentation(pred_labels, mask_to_instances(mask), pixel_size_nm, **kwargs)


# --------------------------------------------------------------------------- boxes


def instance_boxes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label values and their bounding boxes (x0, y0, x1, y1) in px, x1/y1 exclusive."""
    labels = np.asarray(labels)
    slices = ndimage.find_objects(labels)
    ids = np.array([i + 1 for i, s in enumerate(slices) if s is not None], dtype=np.int64)
    boxes = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop]
                      for s in slices if s is not None], dtype=np.float64).reshape(-1, 4)
    return ids, boxes


def read_yolo_boxes(path: str | Path, image_shape: tuple[int, int]) -> np.ndarray:
    """Read a YOLO label file (``class cx cy w h``, normalised) as px boxes (x0, y0, x1, y1)."""
    rows, cols = image_shape[:2]
    text = Path(path).read_text().split()
    if len(text) % 5:
        raise InputError(f"{path}: YOLO label file must have 5 numbers per line")
    vals = np.array(text, dtype=np.float64).reshape(-1, 5)
    cx, cy, w, h = vals[:, 1] * cols, vals[:, 2] * rows, vals[:, 3] * cols, vals[:, 4] * rows
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of boxes (x0, y0, x1, y1)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]),
                 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]),
                 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def score_boxes(pred_labels: np.ndarray, true_boxes: np.ndarray, *, pixel_size_nm: float = 1.0,
                iou_threshold: float = 0.5, exclude_edge: bool = True,
                edge_margin_px: float = 2.0) -> dict[str, float]:
    """Score predicted instances against box annotations (e.g. YOLO).

    Each predicted instance becomes its bounding box; boxes are matched one-to-one
    at box IoU >= ``iou_threshold`` (Hungarian on the IoU matrix). The size error
    uses the box's mean side, (w + h) / 2, as the diameter of both sides
    (``diameter_mae_nm``, ``diameter_rel_err``); shape errors are NaN (boxes carry
    no shape). Boxes within ``edge_margin_px`` of the border count as cut.

    Returns the keys of :data:`SCORE_KEYS`.
    """
    from scipy.optimize import linear_sum_assignment

    px = validate_pixel_size_nm(pixel_size_nm)
    labels = np.asarray(pred_labels)
    rows, cols = labels.shape
    _, pred = instance_boxes(labels)
    true = np.asarray(true_boxes, dtype=np.float64).reshape(-1, 4)
    iou = box_iou(pred, true)
    pi, ti = linear_sum_assignment(-iou) if iou.size else (np.zeros(0, int), np.zeros(0, int))
    ok = iou[pi, ti] >= iou_threshold
    pi, ti = pi[ok], ti[ok]

    def cut(b: np.ndarray) -> np.ndarray:
        return ((b[:, 0] <= edge_margin_px) | (b[:, 1] <= edge_margin_px)
                | (b[:, 2] >= cols - edge_margin_px) | (b[:, 3] >= rows - edge_margin_px))

    pred_keep = np.ones(len(pred), bool)
    true_keep = np.ones(len(true), bool)
    if exclude_edge:
        true_cut, pred_cut = cut(true), cut(pred)
        drop = true_cut[ti]
        pred_keep[pi[drop]] = False
        pi, ti = pi[~drop], ti[~drop]
        true_keep &= ~true_cut
        unmatched = np.ones(len(pred), bool)
        unmatched[pi] = False
        pred_keep &= ~(pred_cut & unmatched)
    n_pred, n_true, n_matched = int(pred_keep.sum()), int(true_keep.sum()), int(pi.size)
    precision, recall, f1 = _rates(n_matched, n_pred, n_true)

    def side(b: np.ndarray) -> np.ndarray:
        return ((b[:, 2] - b[:, 0]) + (b[:, 3] - b[:, 1])) / 2 * px

    out = {
        "precision": precision, "recall": recall, "f1": f1, "n_true": n_true,
        "n_pred": n_pred, "n_matched": n_matched, "diameter_mae_nm": math.nan,
        "diameter_rel_err": math.nan, "aspect_ratio_rmse": math.nan,
        "roundness_rmse": math.nan,
        "count_error": (n_pred - n_true) / n_true if n_true else math.nan,
    }
    if n_matched:
        dp, dt = side(pred[pi]), side(true[ti])
        out["diameter_mae_nm"] = float(np.mean(np.abs(dp - dt)))
        out["diameter_rel_err"] = float(np.mean(np.abs(dp - dt) / dt))
    return out
