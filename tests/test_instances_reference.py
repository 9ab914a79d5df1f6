"""The vectorized watershed and merge of segment.instances against plain per-pixel references.

The references below follow the functions' documented rules pixel by pixel (slow,
small arrays only); the random inputs use few relief levels so that ties and plateaus,
the cases where a changed tie-break would silently change labels, are everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from etemlive.segment.instances import (
    _adjacent_pairs,
    _fill_lost,
    _label_max,
    _uphill_steps,
    ascent_watershed,
    merge_shallow_splits,
)

# the order in which equally high neighbours are preferred (the first one wins)
ORDER = ((-1, 0), (0, -1), (0, 1), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))


def ref_uphill(relief, mask):
    """(dy, dx) to the highest 8-neighbour in the mask (first in ORDER among equals), (0, 0) if none higher."""
    h, w = relief.shape
    steps = {}
    for y, x in zip(*np.nonzero(mask), strict=True):
        best, step = int(relief[y, x]), (0, 0)
        for dy, dx in ORDER:
            ny, nx = y + dy, x + dx
            if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and int(relief[ny, nx]) > best:
                best, step = int(relief[ny, nx]), (dy, dx)
        steps[(y, x)] = step
    return steps


def ref_fill_lost(out, lost):
    """Three simultaneous passes of 'largest 8-neighbour label' at the lost pixels."""
    out = out.copy()
    h, w = out.shape
    todo = [tuple(p) for p in np.argwhere(lost)]
    for _ in range(3):
        new = {}
        for y, x in todo:
            new[(y, x)] = max([int(out[y + dy, x + dx]) for dy, dx in ORDER
                               if 0 <= y + dy < h and 0 <= x + dx < w] + [0])
        for (y, x), v in new.items():
            out[y, x] = v
        todo = [p for p in todo if out[p] == 0]
    return out, todo


def ref_ascent_watershed(relief, markers, mask):
    steps = ref_uphill(relief, mask)
    out = np.zeros(relief.shape, np.int32)
    for p in steps:
        q = p
        while markers[q] == 0 and steps[q] != (0, 0):
            q = (q[0] + steps[q][0], q[1] + steps[q][1])
        out[p] = markers[q]
    out, left = ref_fill_lost(out, mask & (out == 0))
    if left:  # a wide plateau: the nearest labelled pixel's label
        _, (iy, ix) = ndi.distance_transform_edt(out == 0, return_indices=True)
        for y, x in left:
            out[y, x] = out[iy[y, x], ix[y, x]]
    return out


def ref_merge(labels, relief, dynamic, thick=None, neck_ratio=0.0):
    h, w = labels.shape
    n = int(labels.max()) + 1
    peak, thk = np.zeros(n, np.int64), np.zeros(n, np.int64)
    saddle, saddle_t = {}, {}
    for y in range(h):
        for x in range(w):
            a = int(labels[y, x])
            if a == 0:
                continue
            peak[a] = max(peak[a], int(relief[y, x]))
            if thick is not None:
                thk[a] = max(thk[a], int(thick[y, x]))
            for dy, dx in ORDER:
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and int(labels[ny, nx]) > a:
                    key = (a, int(labels[ny, nx]))
                    saddle[key] = max(saddle.get(key, -1), min(int(relief[y, x]), int(relief[ny, nx])))
                    if thick is not None:
                        saddle_t[key] = max(saddle_t.get(key, -1), min(int(thick[y, x]), int(thick[ny, nx])))
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for (a, b), s in saddle.items():
        low = min(peak[a], peak[b])
        ok = (low - s) < dynamic * low
        if thick is not None and neck_ratio > 0:
            ok = ok and saddle_t[(a, b)] > neck_ratio * min(thk[a], thk[b])
        if ok:
            ra, rb = root(a), root(b)
            parent[max(ra, rb)] = min(ra, rb)  # the group keeps its smallest id
    return np.array([root(i) for i in range(n)], np.int32)[labels]


def random_case(seed, shape=(13, 17), levels=4, mask_fraction=0.75, n_markers=6):
    rng = np.random.default_rng(seed)
    relief = rng.integers(0, levels, shape).astype(np.int16)
    mask = rng.random(shape) < mask_fraction
    markers = np.zeros(shape, np.int32)
    ys, xs = np.nonzero(mask)
    pick = rng.choice(ys.size, size=min(n_markers, ys.size), replace=False)
    markers[ys[pick], xs[pick]] = rng.integers(1, 40, pick.size)
    return relief, markers, mask


@pytest.mark.parametrize("seed", range(12))
def test_uphill_steps_match_the_first_highest_neighbour(seed):
    relief, _, mask = random_case(seed)
    h, w = relief.shape
    wp = w + 2
    at = np.flatnonzero(mask)
    steps = _uphill_steps(relief.ravel()[at], at + (at // w) * 2, np.zeros(at.size, np.int32),
                          np.empty((h + 2) * wp, np.int32), wp)
    want = ref_uphill(relief, mask)
    got = {(int(a // w), int(a % w)): s for a, s in zip(at, steps, strict=True)}
    assert got == {p: dy * wp + dx for p, (dy, dx) in want.items()}


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("levels", [2, 4, 1000])
def test_ascent_watershed_matches_the_per_pixel_rule(seed, levels):
    relief, markers, mask = random_case(seed, levels=levels, n_markers=1 + seed % 7)
    np.testing.assert_array_equal(ascent_watershed(relief, markers, mask), ref_ascent_watershed(relief, markers, mask))


def test_ascent_watershed_ignores_markers_outside_the_mask_and_empty_mask():
    relief = np.array([[1, 2, 3, 2, 1]], np.int16)
    markers = np.array([[0, 0, 0, 0, 9]], np.int32)
    mask = np.array([[True, True, True, True, False]])
    markers[0, 2] = 4
    np.testing.assert_array_equal(ascent_watershed(relief, markers, mask), [[4, 4, 4, 4, 0]])
    out = ascent_watershed(relief, markers, np.zeros_like(mask))
    assert out.dtype == np.int32 and not out.any()


def test_fill_lost_reaches_three_pixels_and_stops_at_the_frame_edge():
    out = np.zeros((4, 6), np.int32)
    out[0, 0] = 5
    out[3, 5] = 2
    lost = np.ones(out.shape, bool)
    lost[0, 0] = lost[3, 5] = False
    want, left = ref_fill_lost(out, lost)
    got = out.copy()
    _fill_lost(got, np.flatnonzero(lost))
    assert not left  # three passes reach every pixel here
    np.testing.assert_array_equal(got, want)
    # both labels arrive at (0, 3) and (3, 2) in the third pass: the larger wins
    assert got[0, 3] == 5 and got[3, 2] == 5 and got[0, 5] == 2


def test_label_max_floors_at_zero_and_skips_absent_labels():
    labels = np.array([[1, 1, 0, 3], [1, 3, 3, 0]], np.int32)
    values = np.array([[-5, -2, 9, 7], [-1, 4, 8, 100]], np.int16)
    at = np.flatnonzero(labels)
    np.testing.assert_array_equal(_label_max(labels.ravel()[at], values, at, 4), [0, 0, 0, 8])


def test_adjacent_pairs_saddles_and_contacts():
    labels = np.array([[1, 1, 2, 2],
                       [1, 1, 2, 2],
                       [0, 3, 3, 0]], np.int32)
    relief = np.array([[5, 6, 4, 9],
                       [7, 3, 2, 8],
                       [0, 1, 6, 0]], np.int16)
    pa, pb, (saddle,), contact = _adjacent_pairs(labels, (relief,), 4)
    assert list(zip(pa.tolist(), pb.tolist(), strict=True)) == [(1, 2), (1, 3), (2, 3)]
    want = {}
    h, w = labels.shape
    for y in range(h):
        for x in range(w):
            for dy, dx in ORDER:
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and labels[ny, nx] > labels[y, x] > 0:
                    k = (int(labels[y, x]), int(labels[ny, nx]))
                    s, c = want.get(k, (-1, 0))
                    want[k] = (max(s, min(int(relief[y, x]), int(relief[ny, nx]))), c + 1)
    assert saddle.tolist() == [want[k][0] for k in [(1, 2), (1, 3), (2, 3)]]
    assert contact.tolist() == [want[k][1] for k in [(1, 2), (1, 3), (2, 3)]]
    assert _adjacent_pairs(np.array([[1, 0, 2]], np.int32), (relief[:1, :3],), 3) is None


def random_labels(seed, shape=(14, 16), n=9):
    """Voronoi cells of random seeds with random holes: many touching labels."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    ys, xs = rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)
    seeds[ys, xs] = np.arange(1, n + 1)
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[iy, ix]
    labels[rng.random(shape) < 0.15] = 0
    return labels, rng


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("dynamic", [0.2, 0.5, 0.9])
def test_merge_shallow_splits_matches_the_pairwise_rule(seed, dynamic):
    labels, rng = random_labels(seed)
    relief = rng.integers(0, 6, labels.shape).astype(np.int16)
    thick = rng.integers(0, 500, labels.shape).astype(np.int32)
    np.testing.assert_array_equal(merge_shallow_splits(labels, relief, dynamic), ref_merge(labels, relief, dynamic))
    got = merge_shallow_splits(labels, relief, dynamic, mask_distance=thick, neck_ratio=0.8)
    np.testing.assert_array_equal(got, ref_merge(labels, relief, dynamic, thick, 0.8))


def test_adjacent_pairs_same_beyond_16_bit_label_ids():
    # ids above 65 535 take the float32 path of the boundary search: same pairs and saddles
    labels, rng = random_labels(3)
    relief = rng.integers(0, 6, labels.shape).astype(np.int16)
    n = int(labels.max()) + 1
    small = _adjacent_pairs(labels, (relief,), n)
    big_labels = np.where(labels > 0, labels + 70_000, 0).astype(np.int32)
    big = _adjacent_pairs(big_labels, (relief,), n + 70_000)
    np.testing.assert_array_equal(big[0] - 70_000, small[0])
    np.testing.assert_array_equal(big[1] - 70_000, small[1])
    np.testing.assert_array_equal(big[2][0], small[2][0])
    np.testing.assert_array_equal(big[3], small[3])
    assert small[0].size >= 5  # the Voronoi cells do touch
