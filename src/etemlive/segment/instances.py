"""Network maps <-> instance labels (numpy / OpenCV / scikit-image; no torch).

:func:`maps_to_instances` turns the U-Net's particle probability and normalized
distance maps into int32 instance labels: the particle mask is ``prob > 0.5``;
markers are the particle "cores" (``distance > core_threshold``); a connected
piece of the mask with one or no core is one particle as it stands, and only the
pieces holding two or more cores (touching / coalescing particles) are split, by
a seeded watershed on the distance map (:func:`ascent_watershed`, whole-array
numpy; skimage's flooding watershed took 560-900 ms on dense 1024^2-2048^2
frames, measured here and on the lent GPU machine's CPU).

:func:`training_targets` is the inverse, used by training: labels -> (mask,
normalized distance), with the distance cut at the border between touching
particles so that the network learns a dip there.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError


def training_targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel targets for the U-Net from instance labels.

    Parameters
    ----------
    labels : ndarray (H, W) of int
        0 = background, each particle a distinct positive value.

    Returns
    -------
    fg : ndarray (H, W) float32
        1 inside any particle, else 0.
    dist : ndarray (H, W) float32
        Euclidean distance (px) to the particle's border divided by the largest
        such distance in that particle: 1 at its centre, small at its rim and at
        the contact line with a touching particle, 0 outside.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"labels must be 2-D, got shape {labels.shape}")
    lab = labels.astype(np.int32, copy=False)
    fg = lab > 0
    # Pixels whose right/lower neighbour is another particle form the contact line;
    # removing them from the distance source makes the distance dip between particles.
    contact = np.zeros_like(fg)
    dx = (lab[:, 1:] != lab[:, :-1]) & fg[:, 1:] & fg[:, :-1]
    dy = (lab[1:, :] != lab[:-1, :]) & fg[1:, :] & fg[:-1, :]
    contact[:, 1:] |= dx
    contact[1:, :] |= dy
    src = (fg & ~contact).astype(np.uint8)
    d = cv2.distanceTransform(src, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # contact pixels get a small positive value (they are inside particles)
    d[contact] = 0.5
    n = int(lab.max())
    if n == 0:
        return fg.astype(np.float32), np.zeros(lab.shape, np.float32)
    dmax = ndi.maximum(d, lab, index=np.arange(n + 1)).astype(np.float32)
    dmax[0] = 1.0
    dist = d / np.maximum(dmax[lab], 1e-6)
    dist[~fg] = 0.0
    return fg.astype(np.float32), np.clip(dist, 0.0, 1.0).astype(np.float32)


#: Defaults of :func:`instances_and_regions` (and :func:`maps_to_instances`), chosen on
#: simulator seeds 3000-3001 (all scenarios, three doses; never the benchmark's seeds or
#: real images): see docs/model.md.
MERGE_DYNAMIC = 0.5
MERGE_NECK_RATIO = 0.8
MIN_MEAN_PROB = 0.8
MIN_PEAK_DISTANCE = 0.3


def maps_to_instances(prob: np.ndarray, dist: np.ndarray, **params: float) -> np.ndarray:
    """Instance labels from the particle probability and normalized distance maps: the
    labels of :func:`instances_and_regions` (its steps and keyword parameters)."""
    return instances_and_regions(prob, dist, **params)[0]


def instances_and_regions(
    prob: np.ndarray,
    dist: np.ndarray,
    *,
    threshold: float = 0.5,
    core_threshold: float = 0.5,
    min_area_px: int = 4,
    merge_dynamic: float = MERGE_DYNAMIC,
    merge_neck_ratio: float = MERGE_NECK_RATIO,
    min_mean_prob: float = MIN_MEAN_PROB,
    min_peak_distance: float = MIN_PEAK_DISTANCE,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels from the particle probability and normalized distance maps.

    Steps: mask ``prob > threshold``; cores ``dist > core_threshold``; mask pieces
    holding two or more cores are split by a seeded watershed on ``dist``; two
    neighbouring parts are merged again when the distance map barely dips between
    them (:func:`merge_shallow_splits`: the corners of a triangle or the ends of a
    rod, not two touching particles, whose distance falls to ~0 at the contact);
    instances the network is unsure of (mean probability below ``min_mean_prob``
    or no pixel with distance above ``min_peak_distance``: noise and film grain)
    and specks below ``min_area_px`` are dropped.

    Parameters
    ----------
    prob : ndarray (H, W) float, or uint8 (probability x 255)
        Particle probability in [0, 1].
    dist : ndarray (H, W) float, or uint8 (x 255)
        Predicted normalized distance in [0, 1] (1 at particle centres).
    threshold : float
        Mask = ``prob > threshold``.
    core_threshold : float
        Markers = connected regions of ``dist > core_threshold`` inside the mask.
    min_area_px : int
        Instances smaller than this (px) are dropped (noise specks).
    merge_dynamic : float
        Two touching parts are one particle when ``dist`` dips between them by less
        than this fraction of the lower of their two peaks (0 = never merge).
    merge_neck_ratio : float
        ... and (when > 0) only when the mask is at least this fraction as thick where
        they meet as at the thicker point of the thinner part (Euclidean distance to
        the mask border): no neck between them, as at a triangle's corner or along a
        rod, unlike two touching round particles.
    min_mean_prob : float
        Instances whose mean probability is below this are dropped (0 = keep all).
    min_peak_distance : float
        Instances whose largest ``dist`` is below this are dropped (0 = keep all).

    Returns
    -------
    labels : ndarray (H, W) int32
        0 = background, particles 1..N (consecutive).
    region_areas_px : ndarray of int
        Area (px) of every connected region of the mask ``prob > threshold``: the
        network's detections before splits and filters (the scale check's input),
        from the same labelling pass.
    """
    prob = np.asarray(prob)
    dist = np.asarray(dist)
    if prob.shape != dist.shape or prob.ndim != 2:
        raise InputError(f"prob and dist must be 2-D of one shape, got {prob.shape} and {dist.shape}")
    # thresholds in the maps' units (uint8 maps are probability x 255, from the GPU runners)
    scale = 255.0 if prob.dtype == np.uint8 else 1.0
    if prob.dtype == np.uint8:
        t_fg, t_core = int(threshold * 255), int(core_threshold * 255)
    else:
        t_fg, t_core = threshold, core_threshold
    fg = (prob > t_fg).astype(np.uint8)
    n_comp, comp, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8, ltype=cv2.CV_32S)
    region_areas_px = stats[1:, cv2.CC_STAT_AREA]
    if n_comp <= 1:
        return np.zeros(prob.shape, np.int32), region_areas_px
    cores = ((dist > t_core) & (fg > 0)).astype(np.uint8)
    n_mk, mk = cv2.connectedComponents(cores, connectivity=8, ltype=cv2.CV_32S)
    out = comp
    n_labels = n_comp
    if n_mk > 2:
        core_px = mk > 0
        comp_of_marker = np.zeros(n_mk, np.int32)
        comp_of_marker[mk[core_px]] = comp[core_px]  # a core lies in exactly one mask piece
        n_cores = np.bincount(comp_of_marker[1:], minlength=n_comp)
        multi = n_cores >= 2
        multi[0] = False
        if multi.any():
            # Split only inside the bounding box of the touching pieces (from the pieces' stats).
            box = stats[multi]
            top, left = box[:, cv2.CC_STAT_TOP].min(), box[:, cv2.CC_STAT_LEFT].min()
            bottom = (box[:, cv2.CC_STAT_TOP] + box[:, cv2.CC_STAT_HEIGHT]).max()
            right = (box[:, cv2.CC_STAT_LEFT] + box[:, cv2.CC_STAT_WIDTH]).max()
            sl = (slice(top, bottom), slice(left, right))
            reg = np.take(multi, comp[sl].astype(np.intp))
            markers = np.where(reg, mk[sl], 0)
            d = dist[sl]
            if d.dtype == np.uint8:
                relief = d.astype(np.int16)
            else:  # in place: one float buffer, not four
                r = np.clip(d, 0, 1)
                r *= 30000
                relief = np.rint(r, out=r).astype(np.int16)
            ws = ascent_watershed(relief, markers, reg)
            if merge_dynamic > 0:
                # mask thickness (px x 100) for the neck test; only in the touching pieces' box
                thick = (cv2.distanceTransform(reg.astype(np.uint8), cv2.DIST_L2, 5) * 100).astype(np.int32) \
                    if merge_neck_ratio > 0 else None
                ws = merge_shallow_splits(ws, relief, merge_dynamic, mask_distance=thick,
                                          neck_ratio=merge_neck_ratio)
            out = comp.copy()
            out[sl][reg] = ws[reg] + n_comp  # marker ids shifted past the piece ids
            n_labels = n_comp + n_mk
    # per-label sums over the particle pixels only (flat indices): the background is
    # most of a frame
    at = np.flatnonzero(fg)
    lab = out.ravel()[at].astype(np.intp)  # bincount's index type: converted once, not per call
    area = np.bincount(lab, minlength=n_labels)
    keep = area >= max(min_area_px, 1)
    if min_mean_prob > 0 or min_peak_distance > 0:
        keep &= _sure(lab, area, prob.ravel()[at], dist.ravel()[at], min_mean_prob * scale, min_peak_distance * scale)
    labels = np.zeros(prob.shape, np.int32)
    labels.ravel()[at] = _relabel_kept(lab, keep)  # ravel of a fresh array: a view
    return labels, region_areas_px


def merge_shallow_splits(
    labels: np.ndarray, relief: np.ndarray, dynamic: float, *, mask_distance: np.ndarray | None = None,
    neck_ratio: float = 0.0,
) -> np.ndarray:
    """Merge neighbouring labels whose ``relief`` dips only a little between them.

    For each pair of 8-adjacent labels the saddle is the highest ``min(relief_p,
    relief_q)`` over their touching pixel pairs; the pair is merged when the dip
    ``min(peak_a, peak_b) - saddle`` is below ``dynamic`` times the lower peak (a
    relative h-dynamics criterion, computed on the label adjacency: vectorized, no
    loop over pixels). Two touching particles have a dip of ~the whole peak (the
    predicted distance falls to ~0 at their contact); the corners of a triangle or
    the two ends of a rod dip only a little below their peaks. Chains of such
    pairs become one label.

    Parameters
    ----------
    labels : ndarray (H, W) int32
        0 = background.
    relief : ndarray (H, W) int
        High at particle centres, >= 0 inside labels.
    dynamic : float
        Fraction of the lower peak, in [0, 1].
    mask_distance : ndarray (H, W) int, optional
        Mask thickness (distance to the mask border) for the neck test.
    neck_ratio : float
        When > 0 (and ``mask_distance`` is given), a pair is merged only where the mask
        is more than this fraction as thick at their saddle as at the thicker point of
        the thinner label.

    Returns
    -------
    ndarray (H, W) int32: each merged group takes its smallest label id.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(labels.max()) + 1
    if n <= 2:
        return labels
    use_neck = mask_distance is not None and neck_ratio > 0
    rels = (relief, mask_distance) if use_neck else (relief,)
    pairs = _adjacent_pairs(labels, rels, n)
    if pairs is None:
        return labels
    pa, pb, saddles, _contact = pairs
    # per-label maxima over the labelled pixels only (flat indices: no 2-D boolean masks)
    at = np.flatnonzero(labels > 0)
    lab = labels.ravel()[at]
    peak = _label_max(lab, relief, at, n)
    low_peak = np.minimum(peak[pa], peak[pb]).astype(np.float64)
    merge = (low_peak - saddles[0]) < dynamic * low_peak
    if use_neck:
        # and the mask is as thick where they meet as inside the thinner part: no neck
        thick = _label_max(lab, mask_distance, at, n)
        merge &= saddles[1] > neck_ratio * np.minimum(thick[pa], thick[pb])
    if not merge.any():
        return labels
    graph = coo_matrix((np.ones(int(merge.sum()), np.int8), (pa[merge], pb[merge])), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    # each group takes its smallest member id (0 stays 0: background is never in an edge)
    first = np.full(n, n, np.int64)
    np.minimum.at(first, group, np.arange(n))
    return np.take(first[group].astype(np.int32), labels)


def _label_max(lab: np.ndarray, values: np.ndarray, at: np.ndarray, n: int) -> np.ndarray:
    """int32 maximum of ``values`` (H, W) over each label's pixels (flat indices ``at``,
    labels ``lab``), floored at 0; 0 for labels without pixels."""
    out = np.zeros(n, np.int32)
    np.maximum.at(out, lab, np.asarray(values).ravel()[at].astype(np.int32))
    return out


def _adjacent_pairs(labels: np.ndarray, rels: tuple[np.ndarray, ...], n: int):
    """8-adjacent label pairs (a < b): ids, saddle of each relief in ``rels``, touching pixel pairs.

    The saddle of a relief between two labels is the highest ``min(relief_p, relief_q)``
    over their touching pixel pairs (as int32). Returns None when no two labels touch.
    """
    # Only pixels with a larger label among their 8 neighbours take part (a label's
    # boundary with its higher-numbered neighbours): every adjacent pixel pair (p, q)
    # with label(p) < label(q) has p among them, so the saddles are exact.
    h, w = labels.shape
    wp = w + 2
    # labels in a frame padded by one pixel of 0 (never a larger label): neighbour
    # look-ups need no bounds checks. uint16 (half float32's memory and page faults)
    # when the ids fit, else float32 (exact below 2**24); cv2.dilate takes both.
    lab_pad = np.zeros((h + 2, wp), np.uint16 if n <= 65536 else np.float32)
    lab_pad[1:-1, 1:-1] = labels
    grown = cv2.dilate(lab_pad, np.ones((3, 3), np.uint8))
    at = np.flatnonzero((lab_pad > 0) & (grown != lab_pad))  # positions in the padded frame
    if at.size == 0:
        return None
    lab_flat = lab_pad.ravel()
    own = lab_flat[at]
    at_frame = at - 2 * (at // wp) - (wp - 1)  # the same pixels' flat indices in the frame
    rel_flat = [np.asarray(rel).ravel() for rel in rels]
    own_rels = [rf[at_frame].astype(np.int32) for rf in rel_flat]
    a_parts, b_parts = [], []
    s_parts: list[list[np.ndarray]] = [[] for _ in rels]
    for dy, dx in _NEIGHBOURS:
        nb = lab_flat[at + dy * wp + dx]
        up = nb > own  # the neighbour is labelled: inside the frame
        a_parts.append(own[up])
        b_parts.append(nb[up])
        nb_at = at_frame[up] + dy * w + dx
        for k, rf in enumerate(rel_flat):
            s_parts[k].append(np.minimum(own_rels[k][up], rf[nb_at].astype(np.int32)))
    lo = np.concatenate(a_parts).astype(np.int64)
    hi = np.concatenate(b_parts).astype(np.int64)
    if lo.size == 0:
        return None
    key = lo * n + hi
    order = np.argsort(key, kind="stable")
    key_s = key[order]
    starts = np.flatnonzero(np.r_[True, key_s[1:] != key_s[:-1]])
    saddles = [np.maximum.reduceat(np.concatenate(sp)[order], starts) for sp in s_parts]
    pa, pb = lo[order][starts], hi[order][starts]
    contact = np.diff(np.r_[starts, key_s.size])
    return pa, pb, saddles, contact


def _sure(flat: np.ndarray, area: np.ndarray, prob: np.ndarray, dist: np.ndarray,
          min_mean_prob: float, min_peak_distance: float) -> np.ndarray:
    """Per label: mean probability >= min and some pixel's distance >= min (map units)."""
    n = area.size
    # weights as float64 up front: bincount's own conversion of uint8 maps is slower
    mean_p = np.bincount(flat, weights=prob.ravel().astype(np.float64), minlength=n) / np.maximum(area, 1)
    # "largest distance below t" = "no pixel at or above t": a count, not a maximum (10x faster)
    n_high = np.bincount(flat[dist.ravel() >= min_peak_distance], minlength=n)
    return (mean_p >= min_mean_prob) & (n_high > 0)


_NEIGHBOURS = ((-1, 0), (0, -1), (0, 1), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))


def ascent_watershed(relief: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Watershed by steepest ascent: each mask pixel joins the marker its uphill path reaches.

    Every pixel points to its highest 8-neighbour (itself if none is higher; among
    equally high neighbours the first in :data:`_NEIGHBOURS` order); marker pixels
    and pixels outside ``mask`` point to themselves; pointer jumping (``parent =
    parent[parent]``, ~log2 of the longest path, 5-7 passes) finds each path's end
    in whole-array numpy operations on the mask pixels only. This is the
    drainage-basin partition of ``relief``, the same split as a flooding
    watershed of ``-relief`` except on plateaus (99.7 % of the mask pixels
    agreed with skimage's watershed on a dense 1024^2 U-Net frame, at 4.5x its
    speed). Pixels whose path ends at a peak without a marker take a
    neighbour's label.

    Parameters
    ----------
    relief : ndarray (H, W) int16
        High at particle centres (the normalized distance map, scaled), >= 0 in ``mask``.
    markers : ndarray (H, W) int32
        Seeds (0 = none).
    mask : ndarray (H, W) bool
        Pixels to label.

    Returns
    -------
    ndarray (H, W) int32: marker values, 0 outside ``mask``.
    """
    h, w = relief.shape
    wp = w + 2
    at = np.flatnonzero(mask)  # the mask pixels' flat indices in the frame
    if at.size == 0:
        return np.zeros((h, w), np.int32)
    # ... and in the frame padded by one pixel, less (wp + 1): pos + (wp + 1) + offset
    # is a neighbour, never outside the padded frame (no bounds checks)
    pos = at // w
    pos *= 2
    pos += at
    # One padded-frame buffer serves as the keys, then the pixel-number map, then the
    # output: each fresh frame-sized array costs ~1 000 page faults at 1024^2 (~2 ms here).
    buf = np.empty((h + 2) * wp, np.int32)
    seeds = markers.ravel()[at]
    step = _uphill_steps(relief.astype(np.int16, copy=False).ravel()[at], pos, seeds, buf, wp)
    step = step + pos
    inner = buf[wp + 1:]
    inner[pos] = np.arange(at.size, dtype=np.int32)  # padded position -> mask pixel number
    parent = inner[step].astype(np.intp)  # uphill neighbours are mask pixels (only those are read)
    nxt = step  # reused: two buffers in turn, no fresh array per pass
    for _ in range(64):  # converges in ~log2(longest path) passes
        np.take(parent, parent, out=nxt, mode="clip")  # (the default mode copies ``out``)
        if np.array_equal(nxt, parent):
            break
        parent, nxt = nxt, parent
    lab = seeds[parent]
    out = buf[: h * w].reshape(h, w)
    out.fill(0)
    out.ravel()[at] = lab
    lost = lab == 0
    if lost.any():  # a path ended at a peak without a marker: take a neighbour's label
        _fill_lost(out, at[lost])
    return out


def _uphill_steps(relief_px: np.ndarray, pos: np.ndarray, seeds: np.ndarray, buf: np.ndarray,
                  wp: int) -> np.ndarray:
    """Offset (int32, in the padded frame) from each mask pixel to its highest 8-neighbour.

    0 where no neighbour is higher and at seeds (``seeds != 0``); among equally high
    neighbours the first in :data:`_NEIGHBOURS` order. ``relief_px`` (int16) and
    ``seeds`` are the mask pixels' values, ``pos`` their positions in the frame
    padded by one pixel (width ``wp``), less ``wp + 1``; ``buf`` is a work buffer of
    the padded frame's size (int32). One maximum per neighbour over keys ``16 relief +
    c`` (self: ``c = 15``, k-th neighbour: ``c = 7 - k``): the largest key is the
    highest pixel, ties going to the pixel itself, then to the earlier neighbour;
    this is the running "strictly higher than the best so far" scan without its two
    masked copies per neighbour (3x slower).
    """
    # keys of the padded frame: -16 (relief -1, never uphill) but at the mask pixels,
    # written there only (a fill and a scatter: the mask is often a small part of its box)
    best = np.multiply(relief_px, 16, dtype=np.int32)
    buf.fill(-16)
    buf[wp + 1:][pos] = best
    best += 15
    cand = np.empty_like(best)
    for k, (dy, dx) in enumerate(_NEIGHBOURS):
        # the neighbour's key: a gather from the buffer shifted by its offset (no index sums)
        np.take(buf[wp + 1 + dy * wp + dx:], pos, out=cand, mode="clip")  # (the default mode copies ``out``)
        cand += 7 - k
        np.maximum(best, cand, out=best)
    best &= 15
    code = best.astype(np.uint8)
    code[seeds != 0] = 15  # markers are path ends
    # code -> offset by an 8-bit look-up table (numpy's take with int32 indices: 20x slower)
    lut = np.zeros(256, np.int32)
    lut[7 - np.arange(8)] = [dy * wp + dx for dy, dx in _NEIGHBOURS]
    return cv2.LUT(code, lut).ravel()


def _fill_lost(out: np.ndarray, lost_at: np.ndarray) -> None:
    """Give unlabelled mask pixels (flat indices ``lost_at``) a neighbour's label, in place.

    Three passes of "the largest 8-neighbour label" (a 3x3 grey dilation), each
    looked up at the still unlabelled pixels only and applied to all of them at once;
    what is left (a wide plateau) takes the nearest labelled pixel's label.
    """
    h, w = out.shape
    flat = out.ravel()
    ly, lx = np.divmod(lost_at, w)
    for _ in range(3):
        best_lab = np.zeros(ly.size, np.int32)
        for dy, dx in _NEIGHBOURS:
            ny, nx = ly + dy, lx + dx
            inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)  # outside the frame: label 0
            nb = np.where(inside, flat[np.where(inside, ny * w + nx, 0)], 0)
            np.maximum(best_lab, nb, out=best_lab)
        out[ly, lx] = best_lab  # all at once: each pass sees the last one's
        still = best_lab == 0
        if not still.any():
            return
        ly, lx = ly[still], lx[still]
    lost = np.zeros(out.shape, bool)
    lost[ly, lx] = True
    _fill_nearest(out, lost)  # a wide plateau: the nearest labelled pixel's label (else one stray label)


def _fill_nearest(out: np.ndarray, lost: np.ndarray, margin_px: int = 32) -> None:
    """Give each ``lost`` pixel the label of the nearest labelled pixel (in place).

    The Euclidean transform runs on the lost pixels' bounding box plus a margin (the
    whole frame cost ~70 ms at 1024^2); the whole frame only if that box holds no label.
    """
    rows = np.flatnonzero(lost.any(axis=1))
    cols = np.flatnonzero(lost.any(axis=0))
    h, w = out.shape
    sl = (slice(max(rows[0] - margin_px, 0), min(rows[-1] + margin_px + 1, h)),
          slice(max(cols[0] - margin_px, 0), min(cols[-1] + margin_px + 1, w)))
    crop = out[sl]
    if not (crop > 0).any():
        sl, crop = (slice(None), slice(None)), out
    _, (iy, ix) = ndi.distance_transform_edt(crop == 0, return_indices=True)
    lost_c = lost[sl]
    crop[lost_c] = crop[iy[lost_c], ix[lost_c]]


def _relabel_kept(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Zero the labels not kept and renumber the rest 1..N (one lookup pass)."""
    keep = keep.copy()
    keep[0] = False
    lut = np.zeros(keep.size, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


#: Width (px, at the analysed sampling) of the ring of background around each instance
#: whose mean intensity is the instance's local background in :func:`keep_consistent_contrast`.
CONTRAST_RING_PX = 3


def keep_consistent_contrast(
    labels: np.ndarray, image: np.ndarray, particle_mask: np.ndarray, *, ring_px: int = CONTRAST_RING_PX
) -> np.ndarray:
    """Drop instances whose contrast sign disagrees with the frame's particles.

    In one TEM frame every particle has the same contrast sign (mass-thickness or
    Z contrast: all darker than the support in bright field, all brighter in dark
    field / HAADF). Each instance's contrast is its local background (mean of the
    ``ring_px`` ring of non-particle pixels around it) minus its own mean; the
    frame's sign is that of the area-weighted sum over all instances (large, clear
    particles dominate), and instances of the other sign are removed: on grainy
    real carbon films the network also marks small blobs of the opposite contrast
    (``msa_sintering`` test set: 28 of its 40 false detections, no true one lost;
    simulator seeds 3004-3005, all scenarios and doses: none of 10 728 instances
    removed). The sign is taken from the
    detections themselves, so a frame whose canonical polarity was decided wrongly
    keeps its particles. Instances with no background ring (fully enclosed) are kept.
    No threshold: only the sign is used.

    Parameters
    ----------
    labels : ndarray (H, W) int
        Instances, 0 = background, 1..N.
    image : ndarray (H, W)
        The frame at the same sampling (raw intensities, either polarity).
    particle_mask : ndarray (H, W) bool
        Pixels the network calls particle (``prob > threshold``): excluded from rings.
    ring_px : int
        Ring width, px.

    Returns
    -------
    ndarray (H, W) int32
        Kept instances renumbered 1..M.
    """
    labels = np.asarray(labels)
    n = int(labels.max())
    if n == 0:
        return labels.astype(np.int32, copy=False)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1, 2 * ring_px + 1))
    # the labels grown by ring_px (grey dilation; where two grow into the same pixel the
    # larger label takes it); only the grown pixels are visited (sparse frames: few)
    grown = cv2.dilate(labels.astype(np.float32), k).ravel()
    sel = np.flatnonzero(grown)
    g = grown[sel].astype(np.int64)
    lab = labels.ravel()[sel].astype(np.int64)
    val = np.asarray(image, np.float32).ravel()[sel]
    area = np.bincount(lab, minlength=n + 1).astype(np.float64)
    inside = np.bincount(lab, weights=val, minlength=n + 1)
    ring = (lab == 0) & ~np.asarray(particle_mask, bool).ravel()[sel]  # background pixels only
    ring_n = np.bincount(g[ring], minlength=n + 1).astype(np.float64)
    ring_sum = np.bincount(g[ring], weights=val[ring], minlength=n + 1)
    has_ring = ring_n > 0
    contrast = np.zeros(n + 1)
    contrast[has_ring] = ring_sum[has_ring] / ring_n[has_ring] - inside[has_ring] / area[has_ring]
    sign = 1.0 if float(np.sum(contrast * area)) >= 0 else -1.0
    keep = sign * contrast >= 0
    if keep[1:].all():
        return labels.astype(np.int32, copy=False)
    return _relabel_kept(labels.astype(np.int64, copy=False), keep)


def half_contrast_outlines(
    labels: np.ndarray,
    image: np.ndarray,
    *,
    level: float = 0.5,
    smooth_px: float = 1.0,
    ring_px: tuple[int, int] = (2, 6),
    min_kept: float = 0.25,
) -> np.ndarray:
    """Trim each instance to the pixels beyond ``level`` of its own contrast: the outline
    a microscopist draws by hand, at the middle of the particle's edge.

    The network draws the edge where the particle's geometry ends (the simulator's
    truth): for a weakly scattering, dome-shaped particle that is at the foot of its
    intensity ramp, ~15 % of its contrast. Hand annotations put it near 50 %
    (``msa_sintering``, docs/model.md "Outline width"). This step moves the outline to
    that convention. Each instance's contrast runs from its local background (mean of
    the background pixels ``ring_px[0]``-``ring_px[1]`` px outside it) to its core (mean
    of its pixels at least half its largest inner distance from the background), on a
    copy of ``image`` smoothed by ``smooth_px`` (shot noise); the instance keeps its
    pixels on the particle's side of ``background + level * (core - background)``,
    holes filled, in one 4-connected piece (its largest). Outlines only shrink. An
    instance with no core or background ring, or that would keep less than
    ``min_kept`` of its area (too faint for a local threshold), is left as it is.

    Parameters
    ----------
    labels : ndarray (H, W) int
        Instances, 0 = background, 1..N.
    image : ndarray (H, W)
        The frame at the same sampling (raw intensities, either polarity).
    level : float
        Fraction of the contrast (0-1) at which the outline is drawn.
    smooth_px : float
        Gaussian sigma (px) applied to ``image`` before thresholding (0 = none).
    ring_px : (int, int)
        Inner and outer distance (px) of the background ring.
    min_kept : float
        Smallest fraction of an instance's area the trimmed outline may keep.

    Returns
    -------
    ndarray (H, W) int32
        The same instance ids (none removed), outlines trimmed.
    """
    lab = np.asarray(labels)
    img = np.asarray(image, np.float32)
    if lab.ndim != 2 or lab.shape != img.shape:
        raise InputError(f"labels {lab.shape} and image {img.shape} must be 2-D of one shape")
    if not 0.0 < level < 1.0:
        raise InputError(f"level must be in (0, 1), got {level!r}")
    lab = lab.astype(np.int32, copy=False)
    n = int(lab.max())
    if n == 0:
        return lab
    if smooth_px > 0:
        img = cv2.GaussianBlur(img, (0, 0), smooth_px)
    fg = lab > 0
    flat_lab = lab.ravel()
    flat_img = img.ravel()
    at = np.flatnonzero(fg)
    lab_at = flat_lab[at].astype(np.int64)
    img_at = flat_img[at]  # (gathered once: used for the core and the threshold)
    # core: pixels at least half the instance's largest distance from the background
    d_in = cv2.distanceTransform(fg.astype(np.uint8), cv2.DIST_L2, 3).ravel()[at]
    d_max = np.zeros(n + 1, np.float32)
    np.maximum.at(d_max, lab_at, d_in)
    core = d_in >= 0.5 * d_max[lab_at]
    core_n = np.bincount(lab_at[core], minlength=n + 1)
    core_sum = np.bincount(lab_at[core], weights=img_at[core], minlength=n + 1)
    # background ring: the background pixels ring_px[0]-ring_px[1] px from the particles,
    # each given to its nearest instance (so a particle in a cluster keeps its own side)
    d_out, nearest = cv2.distanceTransformWithLabels(
        (~fg).astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
    )
    owner = np.zeros(int(nearest.max()) + 1, np.int64)  # nearest-pixel index -> instance
    owner[nearest.ravel()[at]] = lab_at
    d_out = d_out.ravel()
    ring = np.flatnonzero((d_out >= ring_px[0]) & (d_out <= ring_px[1]))
    ring_lab = owner[nearest.ravel()[ring]]
    ring_n = np.bincount(ring_lab, minlength=n + 1)
    ring_sum = np.bincount(ring_lab, weights=flat_img[ring], minlength=n + 1)
    ok = (core_n > 0) & (ring_n > 0)
    bg = ring_sum / np.maximum(ring_n, 1)
    contrast = core_sum / np.maximum(core_n, 1) - bg
    threshold = bg + level * contrast
    # a pixel is kept on the core's side of its instance's threshold
    side = np.where(contrast >= 0, 1.0, -1.0)
    keep_at = ~ok[lab_at] | (side[lab_at] * (img_at - threshold[lab_at]) >= 0)
    kept = np.zeros(lab.size, np.int32)
    kept[at[keep_at]] = lab_at[keep_at]
    kept = _largest_piece(kept.reshape(lab.shape))
    kept = _fill_holes_within(kept, lab)
    # too little left: the local threshold is not to be trusted there
    area = np.bincount(lab_at, minlength=n + 1)
    kept_area = np.bincount(kept.ravel(), minlength=n + 1)
    undo = kept_area < min_kept * area
    undo[0] = False
    if undo.any():
        back = undo[flat_lab]
        kept.ravel()[back] = flat_lab[back]
    return kept


def _largest_piece(labels: np.ndarray) -> np.ndarray:
    """Each instance of ``labels`` reduced to its largest 4-connected piece (work on the
    instances' pixels only: a frame is mostly background)."""
    flat = labels.ravel()
    sel = np.flatnonzero(flat)
    if len(sel) == 0:
        return labels
    lab = flat[sel]
    cols = labels.shape[1]
    # cut the pixels whose left or upper neighbour is another instance, so that no
    # piece spans two (such contact pixels are kept whatever their piece)
    left = np.where(sel % cols > 0, flat[sel - 1], 0)
    up = np.where(sel >= cols, flat[sel - cols], 0)
    contact = ((left > 0) & (left != lab)) | ((up > 0) & (up != lab))
    solo = np.zeros(labels.size, np.uint8)
    solo[sel[~contact]] = 1
    n_pieces, pieces = cv2.connectedComponents(solo.reshape(labels.shape), connectivity=4)
    if n_pieces <= 2:
        return labels
    piece = pieces.ravel()[sel]
    size = np.bincount(piece, minlength=n_pieces)
    owner = np.zeros(n_pieces, np.int64)
    owner[piece] = lab  # (one instance per piece)
    owner[0] = 0
    # per instance, the piece listed last in (instance, size) order is its largest
    order = np.lexsort((size[1:], owner[1:])) + 1
    last = np.r_[owner[order][1:] != owner[order][:-1], True]
    best = np.zeros(n_pieces, bool)
    best[order[last]] = True
    keep = best[piece] | contact
    out = np.zeros(labels.size, np.int32)
    out[sel[keep]] = lab[keep]
    return out.reshape(labels.shape)


def _fill_holes_within(kept: np.ndarray, original: np.ndarray) -> np.ndarray:
    """``kept`` with the holes of its particles filled back from ``original``: the
    removed pixels of ``original``'s instances that no 4-connected path of non-kept
    pixels joins to ``original``'s background (one labelling pass; ``ndi.binary_fill_holes``
    took 35 ms per 1024^2 frame)."""
    n_pieces, pieces = cv2.connectedComponents((kept == 0).view(np.uint8), connectivity=4)
    outside = np.zeros(n_pieces, bool)
    outside[pieces[original == 0]] = True
    hole = ~outside[pieces] & (kept == 0)
    if hole.any():
        kept = kept.copy()
        kept[hole] = original[hole]
    return kept
