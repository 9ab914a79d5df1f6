"""maps <-> instance labels: training targets and the seeded split of touching particles."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi

from etemlive.errors import InputError
from etemlive.segment.instances import (
    ascent_watershed,
    half_contrast_outlines,
    keep_consistent_contrast,
    maps_to_instances,
    merge_shallow_splits,
    training_targets,
)


def disk_labels(shape, disks):
    """Label image with disks (cy, cx, r) labelled 1..n in order (later disks win overlaps)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for k, (cy, cx, r) in enumerate(disks, start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return lab


def test_targets_isolated_disk_center_is_one_and_rim_small():
    lab = disk_labels((41, 41), [(20, 20, 10)])
    fg, dist = training_targets(lab)
    assert fg.dtype == np.float32 and dist.dtype == np.float32
    np.testing.assert_array_equal(fg, (lab > 0).astype(np.float32))
    assert dist[20, 20] == pytest.approx(1.0)
    assert dist[20, 10] < 0.15  # rim pixel: distance 1 px of 10.5
    assert (dist[lab == 0] == 0).all()
    # distance grows monotonically from rim to centre along a radius
    assert np.all(np.diff(dist[20, 10:21]) > 0)


def test_targets_dip_at_contact_between_touching_particles():
    # two disks of radius 8 touching along column 20
    lab = np.zeros((30, 40), np.int32)
    lab[:, :20][disk_labels((30, 20), [(15, 12, 8)])[:, :20] > 0] = 1
    lab[:, 20:][disk_labels((30, 20), [(15, 7, 8)])[:, :20] > 0] = 2
    assert lab[15, 19] == 1 and lab[15, 20] == 2
    _, dist = training_targets(lab)
    assert dist[15, 19] < 0.15 and dist[15, 20] < 0.15  # contact line is a valley
    assert dist[15, 12] == pytest.approx(1.0) and dist[lab == 2].max() == pytest.approx(1.0)


def test_targets_small_and_large_particle_both_reach_one():
    lab = disk_labels((80, 80), [(40, 30, 20), (40, 55, 3)])
    _, dist = training_targets(lab)
    for k in (1, 2):
        assert dist[lab == k].max() == pytest.approx(1.0)


def test_targets_empty_and_bad_shape():
    fg, dist = training_targets(np.zeros((5, 6), np.uint16))
    assert fg.sum() == 0 and dist.sum() == 0 and fg.shape == (5, 6)
    with pytest.raises(InputError, match="2-D"):
        training_targets(np.zeros((2, 3, 4)))


def _maps_from_labels(lab):
    fg, dist = training_targets(lab)
    return fg * 0.9 + 0.05, dist


@pytest.mark.parametrize(
    "disks",
    [
        [(20, 20, 6), (20, 60, 9), (60, 40, 12)],  # isolated
        [(40, 30, 10), (40, 50, 10)],  # touching, equal
        [(40, 30, 14), (40, 49, 5)],  # small beside large (ripening case)
        [(30, 30, 8), (30, 46, 8), (44, 38, 8)],  # a touching triple
    ],
)
def test_maps_to_instances_recovers_each_particle(disks):
    lab = np.zeros((80, 80), np.int32)
    for k, d in enumerate(disks, start=1):  # draw so that disks keep their own pixels (no overwrite)
        one = disk_labels((80, 80), [d])
        lab[(one > 0) & (lab == 0)] = k
    prob, dist = _maps_from_labels(lab)
    pred = maps_to_instances(prob, dist)
    assert pred.dtype == np.int32
    assert pred.max() == len(disks)
    assert set(np.unique(pred)) == set(range(len(disks) + 1))
    # each true particle is covered by one predicted instance at IoU > 0.8
    for k in range(1, len(disks) + 1):
        vals, counts = np.unique(pred[lab == k], return_counts=True)
        best = vals[np.argmax(counts)]
        inter = counts.max()
        union = (lab == k).sum() + (pred == best).sum() - inter
        assert best > 0 and inter / union > 0.8


def test_maps_to_instances_drops_specks_and_empty():
    prob = np.zeros((20, 20), np.float32)
    prob[2:4, 2:3] = 1.0  # 2 px speck
    prob[10:16, 10:16] = 1.0
    dist = np.zeros_like(prob)
    dist[12:14, 12:14] = 1.0
    pred = maps_to_instances(prob, dist, min_area_px=4)
    assert pred.max() == 1 and (pred[10:16, 10:16] == 1).all() and pred[2, 2] == 0
    assert maps_to_instances(np.zeros((8, 8)), np.zeros((8, 8))).max() == 0


def test_maps_to_instances_no_core_still_one_particle():
    # confident (prob 0.9) but no pixel above core_threshold 0.5: one particle, unsplit
    prob = np.zeros((12, 12), np.float32)
    prob[3:9, 3:9] = 0.9
    dist = np.zeros_like(prob)
    dist[5:7, 5:7] = 0.4
    pred = maps_to_instances(prob, dist)
    assert pred.max() == 1 and (pred > 0).sum() == 36


@pytest.mark.parametrize(
    "prob_value, dist_peak, kept",
    [
        (0.95, 1.0, True),
        (0.7, 1.0, False),  # mean probability 0.7 < 0.85: the network is unsure (noise, film grain)
        (0.95, 0.2, False),  # no pixel reaches distance 0.3: no particle centre
    ],
)
def test_unsure_instances_are_dropped(prob_value, dist_peak, kept):
    prob = np.zeros((16, 16), np.float32)
    prob[4:12, 4:12] = prob_value
    dist = np.zeros_like(prob)
    dist[7:9, 7:9] = dist_peak
    assert maps_to_instances(prob, dist, min_mean_prob=0.85, min_peak_distance=0.3).max() == int(kept)
    # the filters off: always one particle
    assert maps_to_instances(prob, dist, min_mean_prob=0, min_peak_distance=0).max() == 1


@pytest.mark.parametrize(
    "relief, merged",
    [
        ([5, 10, 9, 8], True),  # peaks 10 and 8, saddle min(10, 9) = 9: no dip
        ([5, 10, 5, 8], True),  # saddle 5 > 8 / 2: dip 3 < 0.5 x 8
        ([5, 10, 1, 8], False),  # saddle min(10, 1) = 1: dip 7 > 0.5 x 8
        ([5, 10, 3, 8], False),  # dip 5 > 4
    ],
)
def test_merge_shallow_splits_relative_dip(relief, merged):
    labels = np.array([[1, 1, 2, 2]], np.int32)
    out = merge_shallow_splits(labels, np.array([relief], np.int16), 0.5)
    expected = [[1, 1, 1, 1]] if merged else [[1, 1, 2, 2]]
    np.testing.assert_array_equal(out, expected)


def test_merge_shallow_splits_chains_and_keeps_background():
    # 1-2 merge (shallow), 2-3 merge (shallow), 4 is separated from 3 by a deep dip
    labels = np.array([[1, 2, 3, 4, 0, 5]], np.int32)
    relief = np.array([[10, 9, 10, 10, 0, 7]], np.int16)
    relief_deep = relief.copy()
    out = merge_shallow_splits(labels, relief, 0.5)
    np.testing.assert_array_equal(out, [[1, 1, 1, 1, 0, 5]])
    relief_deep[0, 3] = 2  # 3-4 saddle min(10, 2) = 2, low peak 2: dip 0 -> still merges
    labels_deep = np.array([[1, 2, 3, 0, 4, 4]], np.int32)
    out = merge_shallow_splits(labels_deep, np.array([[10, 9, 10, 0, 10, 10]], np.int16), 0.5)
    np.testing.assert_array_equal(out, [[1, 1, 1, 0, 4, 4]])  # 4 does not touch 3


def test_corners_of_a_triangle_are_not_split_off():
    # A predicted distance map with a main peak and a shallow secondary peak in a corner
    # (what the network gives on faceted particles): one particle, not two.
    yy, xx = np.mgrid[:60, :60]
    mask = (xx >= 5) & (yy >= 5) & (xx + yy <= 60)  # right triangle
    dist = np.where(mask, 0.9 * np.exp(-((yy - 15) ** 2 + (xx - 15) ** 2) / 60.0), 0.0)
    tip = 0.6 * np.exp(-((yy - 8) ** 2 + (xx - 45) ** 2) / 8.0)  # shallow core near a corner
    dist = np.where(mask, np.maximum(dist, np.maximum(tip, 0.45 * (yy < 12))), 0.0).astype(np.float32)
    prob = np.where(mask, 0.95, 0.02).astype(np.float32)
    assert maps_to_instances(prob, dist, merge_dynamic=0).max() == 2  # the split before merging
    assert maps_to_instances(prob, dist).max() == 1


def test_maps_to_instances_input_checked_and_not_modified():
    prob = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    dist = prob.copy()
    before = prob.copy()
    maps_to_instances(prob, dist)
    np.testing.assert_array_equal(prob, before)
    with pytest.raises(InputError, match="one shape"):
        maps_to_instances(prob, dist[:8])


def test_uint8_maps_give_the_same_instances():
    lab = np.zeros((80, 80), np.int32)
    for k, d in enumerate([(40, 30, 14), (40, 49, 5), (15, 15, 6)], start=1):
        one = disk_labels((80, 80), [d])
        lab[(one > 0) & (lab == 0)] = k
    prob, dist = _maps_from_labels(lab)
    p8 = np.rint(prob * 255).astype(np.uint8)
    d8 = np.rint(dist * 255).astype(np.uint8)
    np.testing.assert_array_equal(maps_to_instances(p8, d8), maps_to_instances(prob, dist))


def test_neck_keeps_touching_disks_apart_when_the_distance_map_barely_dips():
    # Two disks (r = 10 px) touching across a narrow neck, with a blurry predicted distance
    # map whose dip between them is shallow (saddle 0.46, dip 0.49 of the 0.9 peaks): the dip alone
    # would merge them; the neck (mask 2-3 px thick there, 10 px inside each) keeps them apart.
    lab = disk_labels((40, 60), [(20, 20, 10), (20, 39, 10)])
    prob = np.where(lab > 0, 0.95, 0.02).astype(np.float32)
    yy, xx = np.mgrid[:40, :60]
    bump = [0.9 * np.exp(-((yy - 20) ** 2 + (xx - cx) ** 2) / 120.0) for cx in (20, 39)]
    dist = np.where(lab > 0, np.maximum(*bump), 0.0).astype(np.float32)
    assert maps_to_instances(prob, dist, merge_neck_ratio=0).max() == 1
    assert maps_to_instances(prob, dist).max() == 2


@pytest.mark.parametrize("bright_field", [True, False])
def test_opposite_contrast_blob_is_dropped(bright_field):
    """Two large particles of one contrast and a small blob of the other: the blob goes,
    in either polarity (the sign comes from the detections, area-weighted)."""
    lab = disk_labels((60, 80), [(20, 20, 9), (35, 55, 12), (50, 15, 3)])
    particle, background, blob = (40.0, 100.0, 130.0) if bright_field else (160.0, 30.0, 10.0)
    image = np.full(lab.shape, background, np.float32)
    image[(lab == 1) | (lab == 2)] = particle
    image[lab == 3] = blob
    out = keep_consistent_contrast(lab, image, lab > 0)
    assert out.dtype == np.int32 and out.max() == 2
    np.testing.assert_array_equal(out > 0, (lab == 1) | (lab == 2))
    assert np.unique(out[lab == 2]).tolist() == [2]  # renumbered 1..M, order kept


def test_consistent_contrast_keeps_everything_and_enclosed_instances():
    lab = disk_labels((40, 40), [(20, 20, 12), (20, 20, 3)])  # 2 inside 1: no background ring
    image = np.full(lab.shape, 100.0, np.float32)
    image[lab == 1] = 50.0
    image[lab == 2] = 200.0  # opposite contrast, but no ring to compare with: kept
    out = keep_consistent_contrast(lab, image, lab > 0)
    np.testing.assert_array_equal(out, lab)
    # pixels the network calls particle but no instance holds (a dropped, darker
    # detection around particle 2) are not its background: its ring is the 100 beyond
    lab2 = disk_labels((40, 60), [(20, 12, 8), (20, 40, 4)])
    yy, xx = np.mgrid[:40, :60]
    halo = ((yy - 20) ** 2 + (xx - 40) ** 2 <= 36) & (lab2 == 0)
    image2 = np.full(lab2.shape, 100.0, np.float32)
    image2[lab2 == 1] = 50.0
    image2[lab2 == 2] = 70.0
    image2[halo] = 40.0
    out2 = keep_consistent_contrast(lab2, image2, (lab2 > 0) | halo)
    assert out2.max() == 2
    # (were the halo taken as background, particle 2 would look brighter than it: dropped)
    assert keep_consistent_contrast(lab2, image2, lab2 > 0).max() == 1
    assert keep_consistent_contrast(np.zeros((5, 5), np.int32), np.ones((5, 5)), np.zeros((5, 5), bool)).max() == 0


def test_ascent_watershed_gives_an_unmarked_peak_a_neighbours_label():
    # markers on the peaks at 1 and 7; the peak at 4 has none: its path (pixels 3, 4) ends
    # unlabelled, and each takes its largest neighbour's label in one simultaneous pass
    relief = np.array([[5, 6, 5, 4, 6, 4, 7, 8, 7]], np.int16)
    markers = np.zeros_like(relief, dtype=np.int32)
    markers[0, 1], markers[0, 7] = 1, 2
    mask = np.ones(relief.shape, bool)
    out = ascent_watershed(relief, markers, mask)
    np.testing.assert_array_equal(out, [[1, 1, 1, 1, 2, 2, 2, 2, 2]])
    # outside the mask stays 0; a long unmarked plateau is filled from the nearest label
    mask[0, 8] = False
    wide = np.array([[9, 1, 1, 1, 1, 1, 1, 1, 1]], np.int16)
    only = np.zeros_like(markers)
    only[0, 0] = 3
    out = ascent_watershed(wide, only, mask)
    np.testing.assert_array_equal(out, [[3, 3, 3, 3, 3, 3, 3, 3, 0]])


def _blurred_disks(shape, disks, *, particle, background, blur_px):
    """Flat-top disks (cy, cx, r) of intensity ``particle`` on ``background``, blurred."""
    image = np.where(disk_labels(shape, disks) > 0, particle, background).astype(np.float32)
    return cv2.GaussianBlur(image, (0, 0), blur_px)


def _diameter_px(lab, k):
    return 2.0 * np.sqrt(np.count_nonzero(lab == k) / np.pi)


@pytest.mark.parametrize("particle, background", [(40.0, 100.0), (160.0, 30.0)])
def test_half_contrast_outline_of_a_blurred_disk_is_its_edge(particle, background):
    """A flat-top disk blurred by 3 px crosses half its contrast at its edge: outlines
    drawn 4 px too wide (the network's foot of the ramp) come back to it, in either
    polarity."""
    image = _blurred_disks((80, 80), [(40, 40, 15)], particle=particle, background=background, blur_px=3.0)
    wide = disk_labels((80, 80), [(40, 40, 19)])
    out = half_contrast_outlines(wide, image)
    assert out.dtype == np.int32 and out.max() == 1
    assert abs(_diameter_px(out, 1) - 30.0) < 1.0
    assert _diameter_px(wide, 1) > 37.0
    assert np.all(out[wide == 0] == 0)  # outlines only shrink
    np.testing.assert_array_equal(wide, disk_labels((80, 80), [(40, 40, 19)]))  # not modified


def test_half_contrast_keeps_touching_particles_apart_and_whole():
    """Two touching disks of different contrast, drawn wide: each is trimmed at its own
    half contrast, keeps its id and stays one hole-free piece inside its old outline."""
    shape = (60, 90)
    image = _blurred_disks(shape, [(30, 30, 12)], particle=40.0, background=100.0, blur_px=2.0)
    image += _blurred_disks(shape, [(30, 56, 12)], particle=-30.0, background=0.0, blur_px=2.0)
    wide = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    left = (yy - 30) ** 2 + (xx - 30) ** 2 <= 15**2
    right = ((yy - 30) ** 2 + (xx - 56) ** 2 <= 15**2) & ~left
    wide[left], wide[right] = 1, 2
    out = half_contrast_outlines(wide, image)
    assert sorted(np.unique(out).tolist()) == [0, 1, 2]
    for k in (1, 2):
        assert np.all(wide[out == k] == k)
        assert abs(_diameter_px(out, k) - 24.0) < 2.0
        pieces = ndi.label(out == k)[1]
        assert pieces == 1
        assert np.array_equal(ndi.binary_fill_holes(out == k), out == k)


def test_half_contrast_leaves_faint_or_ringless_instances_alone():
    rng = np.random.default_rng(0)
    lab = disk_labels((60, 60), [(30, 30, 8)])
    # no contrast at all, only noise: a local threshold would keep a random half
    noise = rng.normal(100.0, 5.0, lab.shape).astype(np.float32)
    np.testing.assert_array_equal(half_contrast_outlines(lab, noise, smooth_px=0), lab)
    # an instance filling the frame has no background ring
    full = np.ones((20, 20), np.int32)
    np.testing.assert_array_equal(half_contrast_outlines(full, rng.random((20, 20))), full)
    empty = np.zeros((10, 10), np.int32)
    np.testing.assert_array_equal(half_contrast_outlines(empty, np.ones((10, 10))), empty)


def test_half_contrast_input_checked():
    with pytest.raises(InputError, match="one shape"):
        half_contrast_outlines(np.zeros((5, 5), np.int32), np.zeros((5, 6)))
    with pytest.raises(InputError, match="level"):
        half_contrast_outlines(np.zeros((5, 5), np.int32), np.zeros((5, 5)), level=1.0)
