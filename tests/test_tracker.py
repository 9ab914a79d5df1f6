"""Tracker and evaluation: analytic scenes whose right answer is known.

Track ids are compared independently of their numbering (a one-to-one map between truth
and track ids must exist); every test also checks that no id appears twice in a frame.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment

from etemlive.errors import CalibrationError, InputError
from etemlive.track import (
    EVENT_COLUMNS,
    TRACK_COLUMNS,
    NoMotionModel,
    Tracker,
    TrackerConfig,
    link,
    link_with_events,
    solve_gated_assignment,
    track_frames,
)
from etemlive.track.evaluate import (
    evaluate_tracking,
    match_detections,
    merge_event_scores,
    mot_metrics,
)
from etemlive.track.tracker import theil_sen_slope

PX_NM = 1.0  # 1 nm per px keeps the scenes readable


def scene(rows: list[tuple[int, int, float, float, float]]) -> pd.DataFrame:
    """Particle table from (frame, truth, x_px, y_px, diameter_nm) rows."""
    f, t, x, y, d = (np.array(c) for c in zip(*rows, strict=True))
    d = d.astype(float)
    return pd.DataFrame(
        {
            "frame": f.astype(np.int64),
            "time_s": f * 0.5,
            "track_id": -1,
            "label": t.astype(np.int64) + 1,
            "x_px": x.astype(float),
            "y_px": y.astype(float),
            "diameter_nm": d,
            "area_nm2": math.pi / 4 * d**2,
            "truth": t.astype(np.int64),
        }
    )


def assert_same_partition(table: pd.DataFrame, truth_col: str = "truth") -> None:
    """Each truth id has one track id and vice versa (numbering ignored)."""
    pairs = table[[truth_col, "track_id"]].drop_duplicates()
    assert pairs[truth_col].is_unique, pairs.sort_values(truth_col)
    assert pairs["track_id"].is_unique, pairs.sort_values("track_id")


def assert_no_id_twice_per_frame(table: pd.DataFrame) -> None:
    tracked = table[table["track_id"] >= 0]
    assert not tracked.duplicated(["frame", "track_id"]).any()


def disk_labels(shape, particles) -> np.ndarray:
    """Label image with disks (x, y, diameter_px, label)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, dtype=np.int32)
    for x, y, d, lab in particles:
        out[(xx - x) ** 2 + (yy - y) ** 2 <= (d / 2) ** 2] = lab
    return out


# ------------------------------------------------------------------ scenes
def merging_scene():
    """A and B approach at 2 px/frame and fuse at frame 8 into one particle of summed
    volume (diameter 10 * 2**(1/3)); a third particle C stays away."""
    rows = []
    for f in range(8):
        rows += [(f, 0, 20 + 2 * f, 50, 10.0), (f, 1, 60 - 2 * f, 50, 10.0), (f, 2, 40, 10, 8.0)]
    for f in range(8, 14):
        rows += [(f, 3, 40, 50, 10 * 2 ** (1 / 3)), (f, 2, 40, 10, 8.0)]
    return scene(rows)


#: merges reported in the frame they are seen (no confirmation frame)
AT_ONCE = TrackerConfig(merge_confirm_frames=1)


@pytest.mark.parametrize("with_labels", [False, True])
def test_two_particles_approach_and_merge(with_labels):
    tab = merging_scene()
    labels = None
    if with_labels:
        labels = np.stack(
            [
                disk_labels((64, 80), g[["x_px", "y_px", "diameter_nm", "label"]].to_numpy())
                for _, g in tab.groupby("frame")
            ]
        )
    out, events, tracks = link_with_events(
        tab, pixel_size_nm=PX_NM, frame_interval_s=0.5, labels=labels, config=AT_ONCE
    )
    assert_same_partition(out)
    assert_no_id_twice_per_frame(out)
    ids = out.groupby("truth")["track_id"].first()
    merges = events[events["kind"] == "merge"]
    assert len(merges) == 1
    m = merges.iloc[0]
    assert m["frame"] == 8
    assert set(map(int, m["track_ids"].split())) == {ids[0], ids[1]}
    assert m["into_id"] == ids[3]
    fate = tracks.set_index("track_id")
    assert fate.loc[ids[0], "fate"] == "merged" and fate.loc[ids[1], "fate"] == "merged"
    assert fate.loc[ids[0], "merged_into"] == ids[3]
    assert set(map(int, fate.loc[ids[3], "parent_ids"].split())) == {ids[0], ids[1]}
    assert fate.loc[ids[3], "fate"] == "alive"
    assert set(events["kind"]) == {"merge"}  # no appear / vanish around a merge


@pytest.mark.parametrize("confirm", [2, 3])
def test_confirmed_merge_keeps_the_merge_frame(confirm):
    tab = merging_scene()
    out, events, tracks = link_with_events(
        tab,
        pixel_size_nm=PX_NM,
        frame_interval_s=0.5,
        config=TrackerConfig(merge_confirm_frames=confirm),
    )
    assert_no_id_twice_per_frame(out)
    ids = out.groupby("truth")["track_id"].first()
    (m,) = events.itertuples(index=False)
    assert (m.kind, m.frame) == ("merge", 8)
    assert set(map(int, m.track_ids.split())) == {ids[0], ids[1]}
    product = out[out["truth"] == 3]
    # until confirmed, the product carries the parent linked to it; then the new id
    early = product["frame"] < 8 + confirm - 1
    assert set(product.loc[early, "track_id"]) <= {ids[0], ids[1]}
    assert (product.loc[~early, "track_id"] == m.into_id).all()


def test_one_frame_blob_is_not_a_merge():
    # two touching particles segmented as one blob in frame 5 only
    rows = []
    for f in range(10):
        if f == 5:
            rows.append((f, 9, 45.0, 40.0, 14.0))
        else:
            rows += [(f, 0, 40.0, 40.0, 10.0), (f, 1, 50.0, 40.0, 10.0)]
    tab = scene(rows)
    out, events, _ = link_with_events(tab, pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert len(events) == 0
    kept = out[out["truth"] != 9]
    assert_same_partition(kept)
    assert out["track_id"].nunique() == 2


def test_merge_keeping_the_survivor_id():
    tab = merging_scene()
    out, events, tracks = link_with_events(
        tab, pixel_size_nm=PX_NM, frame_interval_s=0.5, config=TrackerConfig(merge_new_id=False)
    )
    m = events[events["kind"] == "merge"].iloc[0]
    survivor = out.loc[out["truth"] == 3, "track_id"].iloc[0]
    assert m["into_id"] == survivor
    assert survivor in set(map(int, m["track_ids"].split()))
    fate = tracks.set_index("track_id")["fate"]
    assert (fate == "merged").sum() == 1


def test_particle_shrinking_to_zero_vanishes_not_merges():
    # a small particle shrinks away 9 nm from a large one (ripening), then is gone
    rows = []
    diam = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    for f in range(10):
        rows.append((f, 0, 30.0, 30.0, 14.0 + 0.2 * f))
        if f < len(diam):
            rows.append((f, 1, 46.0, 30.0, diam[f]))
    tab = scene(rows)
    out, events, tracks = link_with_events(tab, pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert_same_partition(out)
    small = out.loc[out["truth"] == 1, "track_id"].iloc[0]
    assert events["kind"].tolist() == ["vanish"]
    assert events["track_ids"].tolist() == [str(small)] and events["frame"].tolist() == [6]
    row = tracks.set_index("track_id").loc[small]
    assert row["fate"] == "vanished"
    assert row["diameter_end_nm"] == 1.0 and row["diameter_start_nm"] == 6.0
    assert row["growth_rate_nm_per_s"] == pytest.approx(-2.0)  # -1 nm per 0.5 s frame
    big = tracks.set_index("track_id").loc[out.loc[out["truth"] == 0, "track_id"].iloc[0]]
    assert big["growth_rate_nm_per_s"] == pytest.approx(0.4)
    assert big["fate"] == "alive" and big["n_frames"] == 10


def test_crossing_keeps_identities_with_the_kalman_model():
    # A moves right along y=40, B moves down along x=40; they pass 4 px apart
    rows = []
    for f in range(16):
        rows.append((f, 0, 4 + 5 * f, 40.0, 2.0))
        rows.append((f, 1, 44.0, 4 + 5 * f, 2.0))
    tab = scene(rows)
    out = link(tab, pixel_size_nm=PX_NM, frame_interval_s=1.0, config=TrackerConfig(gate_nm=6.0))
    assert_same_partition(out)
    assert_no_id_twice_per_frame(out)
    assert out["track_id"].nunique() == 2


def test_missed_detection_for_two_frames_keeps_the_id():
    rows = []
    for f in range(12):
        if f not in (5, 6):
            rows.append((f, 0, 10 + 3 * f, 20.0, 5.0))
        rows.append((f, 1, 80.0, 80.0, 5.0))
    tab = scene(rows)
    out, events, _ = link_with_events(
        tab, pixel_size_nm=PX_NM, frame_interval_s=0.5, config=TrackerConfig(max_gap_frames=2)
    )
    assert_same_partition(out)
    assert len(events) == 0


def test_a_gap_longer_than_max_gap_is_a_new_track():
    rows = [(f, 0, 20.0, 20.0, 5.0) for f in range(12) if f not in (4, 5, 6)]
    out, events, tracks = link_with_events(
        scene(rows),
        pixel_size_nm=PX_NM,
        frame_interval_s=0.5,
        config=TrackerConfig(max_gap_frames=2),
    )
    assert out["track_id"].nunique() == 2
    assert events["kind"].tolist() == ["vanish", "appear"]
    assert events["frame"].tolist() == [4, 7]
    assert sorted(tracks["fate"]) == ["alive", "vanished"]


def test_particle_leaving_and_reentering_through_the_border_keeps_its_id():
    rows = []
    for f in range(30):
        if f < 8 or f >= 20:  # out of the field of view for 12 frames
            rows.append((f, 0, 2.0 + 0.2 * (f % 3), 50.0, 6.0))
        rows.append((f, 1, 60.0, 60.0, 6.0))
    tab = scene(rows)
    tab["touches_edge"] = tab["x_px"] < 5
    out, events, _ = link_with_events(
        tab,
        pixel_size_nm=PX_NM,
        frame_interval_s=0.5,
        config=TrackerConfig(max_gap_frames=2, edge_gap_frames=20),
    )
    assert_same_partition(out)
    assert len(events) == 0
    # an interior particle gone as long is a new track
    tab2 = tab.assign(touches_edge=False)
    out2 = link(
        tab2,
        pixel_size_nm=PX_NM,
        frame_interval_s=0.5,
        config=TrackerConfig(max_gap_frames=2, edge_gap_frames=20),
    )
    assert out2.loc[out2["truth"] == 0, "track_id"].nunique() == 2


def test_event_table_dtypes():
    _, events, _ = link_with_events(merging_scene(), pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert {c: str(events[c].dtype) for c in events.columns} == EVENT_COLUMNS


def _drifting_scene(step_px: tuple[float, float], n_frames: int = 10, seed: int = 3):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 400, (25, 2))
    rows = []
    for f in range(n_frames):
        pos = base + rng.normal(0, 0.3, base.shape) + np.array(step_px) * f
        rows += [(f, i, x, y, 6.0) for i, (x, y) in enumerate(pos)]
    return scene(rows)


def test_drift_of_30_px_per_frame_is_removed():
    tab = _drifting_scene((30.0, -10.0))
    tr = Tracker(pixel_size_nm=PX_NM, frame_interval_s=0.5)  # gate 10 nm << 30 px jumps
    steps = [tr.update(g) for _, g in tab.groupby("frame")]
    out = pd.concat([s.particles for s in steps])
    assert_same_partition(out)
    assert out["track_id"].nunique() == 25
    dx, dy = steps[-1].drift_nm
    assert dx == pytest.approx(30.0 * 9, abs=1.0) and dy == pytest.approx(-10.0 * 9, abs=1.0)
    drift = tr.drift_table()
    assert list(drift.columns) == ["frame", "dx_nm", "dy_nm"]
    np.testing.assert_allclose(drift["dx_nm"], 30.0 * np.arange(10), atol=1.0)


def test_single_huge_jump_is_followed():
    tab = _drifting_scene((0.0, 0.0))
    jump = tab["frame"] >= 5
    tab.loc[jump, "x_px"] += 120.0  # a stage jump 12x the gate
    out, events, _ = link_with_events(tab, pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert_same_partition(out)
    assert len(events) == 0


def test_phase_correlation_drift_from_images():
    rng = np.random.default_rng(0)
    texture = rng.normal(100, 10, (300, 300)).astype(np.float32)
    import cv2

    texture = cv2.GaussianBlur(texture, (0, 0), 2.0)
    images = [np.roll(texture, (0, 7 * f), axis=(0, 1))[50:250, 50:250] for f in range(4)]
    tr = Tracker(TrackerConfig(drift="image"), pixel_size_nm=0.5, frame_interval_s=1.0)
    empty = scene([(0, 0, 1.0, 1.0, 1.0)]).iloc[:0]
    steps = [tr.update(empty, image=img, frame=f) for f, img in enumerate(images)]
    # content moves +7 px in x per frame = +3.5 nm
    assert steps[-1].drift_nm[0] == pytest.approx(3 * 3.5, abs=0.3)
    assert steps[-1].drift_nm[1] == pytest.approx(0.0, abs=0.3)


def test_no_motion_model_run():
    rng = np.random.default_rng(5)
    base = rng.uniform(0, 300, (30, 2))
    rows = []
    for f in range(8):
        pos = base + rng.normal(0, 0.5, base.shape)
        rows += [(f, i, x, y, 5.0) for i, (x, y) in enumerate(pos)]
    out = link(scene(rows), pixel_size_nm=PX_NM, frame_interval_s=0.5, motion_model=NoMotionModel())
    assert_same_partition(out)
    assert out["track_id"].nunique() == 30


def test_split_event():
    rows = []
    for f in range(5):
        rows.append((f, 0, 40.0, 40.0, 12.0))
    for f in range(5, 9):
        rows.append((f, 0, 37.0, 40.0, 12.0 / math.sqrt(2)))
        rows.append((f, 1, 44.0, 40.0, 12.0 / math.sqrt(2)))
    out, events, tracks = link_with_events(scene(rows), pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert_no_id_twice_per_frame(out)
    parent = out.loc[(out["truth"] == 0), "track_id"].iloc[0]
    child = out.loc[out["truth"] == 1, "track_id"].iloc[0]
    assert events["kind"].tolist() == ["split"]
    assert events["track_ids"].iloc[0] == f"{parent} {child}"
    assert tracks.set_index("track_id").loc[child, "split_from"] == parent


def test_fragments_seen_whole_again_rejoin_without_a_merge():
    # one particle, cut in two by the segmentation for 4 frames, then seen whole again:
    # the whole particle keeps its first id; the fragment's track ends, no merge event
    rows = []
    for f in range(5):
        rows.append((f, 0, 40.0, 40.0, 12.0))
    for f in range(5, 9):
        rows.append((f, 0, 37.0, 40.0, 12.0 / math.sqrt(2)))
        rows.append((f, 1, 44.0, 40.0, 12.0 / math.sqrt(2)))
    for f in range(9, 15):
        rows.append((f, 0, 40.0, 40.0, 12.0))
    out, events, tracks = link_with_events(scene(rows), pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert_no_id_twice_per_frame(out)
    whole = out.loc[out["truth"] == 0, "track_id"]
    assert whole.nunique() == 1
    fragment = out.loc[out["truth"] == 1, "track_id"].iloc[0]
    assert "merge" not in set(events["kind"])
    assert events["kind"].tolist() == ["split", "vanish"]
    assert events["track_ids"].iloc[1] == str(fragment)
    assert tracks.set_index("track_id").loc[fragment, "fate"] == "vanished"


def test_real_particles_meeting_still_merge_after_a_fragment_rule():
    # the fragment rule must not swallow real merges: the merge scene still gives one
    tab = merging_scene()
    _, events, _ = link_with_events(tab, pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert events["kind"].tolist() == ["merge"]


@pytest.mark.parametrize(("tentative_cost", "established_wins"), [(0.6, True), (0.0, False)])
def test_established_track_wins_over_a_newborn_one(tentative_cost, established_wins):
    # A sits at x=40; at frame 5 a spurious blob S shows at x=47 (one frame); from frame 6
    # A is at x=44, nearer S's last position than its own. With the tentative cost the
    # established track keeps the particle.
    rows = [(f, 0, 40.0, 40.0, 8.0) for f in range(6)] + [(5, 1, 47.0, 40.0, 8.0)]
    rows += [(f, 0, 44.0, 40.0, 8.0) for f in range(6, 9)]
    cfg = TrackerConfig(tentative_cost=tentative_cost)
    out = link(scene(rows), pixel_size_nm=PX_NM, frame_interval_s=0.5, config=cfg)
    assert_no_id_twice_per_frame(out)
    a = out.loc[out["truth"] == 0].sort_values("frame")["track_id"]
    assert (a.nunique() == 1) is established_wins


@pytest.mark.parametrize(("confirm_hits", "merged"), [(3, False), (1, True)])
def test_a_one_frame_blob_absorbed_by_a_particle_is_not_a_merge(confirm_hits, merged):
    # A (10 nm) alone; in frame 6 a spurious blob S (4 nm) touches it, then A is seen with
    # the summed area. S was never confirmed: A keeps its id, S's track just ends. With
    # confirm_hits=1 (every birth confirmed) the same scene is a merge.
    rows = [(f, 0, 40.0, 40.0, 10.0) for f in range(7)] + [(6, 1, 46.0, 40.0, 4.0)]
    rows += [(f, 0, 40.5, 40.0, math.hypot(10.0, 4.0)) for f in range(7, 13)]
    cfg = TrackerConfig(confirm_hits=confirm_hits)
    out, events, _ = link_with_events(
        scene(rows), pixel_size_nm=PX_NM, frame_interval_s=0.5, config=cfg
    )
    assert_no_id_twice_per_frame(out)
    a = out.loc[out["truth"] == 0, "track_id"]
    kinds = events["kind"].tolist()
    if merged:
        assert kinds.count("merge") == 1 and a.nunique() == 2
    else:
        assert "merge" not in kinds and a.nunique() == 1
        blob = out.loc[out["truth"] == 1, "track_id"].iloc[0]
        assert events.loc[events["kind"] == "vanish", "track_ids"].tolist() == [str(blob)]


def test_a_young_track_alone_is_linked_as_easily_as_an_old_one():
    # the tentative cost only decides contests: a newborn particle shrinking fast (size
    # cost ln(10 / 2) = 1.6, below leaving both ends unlinked, 2) keeps its id
    rows = [(0, 0, 40.0, 40.0, 10.0), (1, 0, 40.0, 40.0, 2.0), (2, 0, 40.0, 40.0, 2.0)]
    out = link(scene(rows), pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert out["track_id"].nunique() == 1


def test_a_particle_seen_once_too_small_is_still_followed():
    # a moving 10 nm particle measured once at 4 nm (a fragment, low-dose noise): the
    # whole particle afterwards is a jump in area but no merge follows, so after
    # merge_confirm_frames the track takes it as the particle again and keeps following
    rows = [(f, 0, 20.0 + 2 * f, 40.0, 4.0 if f == 5 else 10.0) for f in range(25)]
    out = link(scene(rows), pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert out["track_id"].nunique() == 1


def test_link_does_not_modify_its_input_and_keeps_its_index():
    tab = merging_scene()
    tab.index = tab.index[::-1] + 100
    before = tab.copy()
    out = link(tab, pixel_size_nm=PX_NM, frame_interval_s=0.5)
    pd.testing.assert_frame_equal(tab, before)
    assert out.index.equals(tab.index)
    assert (out["track_id"] >= 0).all()


def test_empty_frames_and_gaps():
    tr = Tracker(pixel_size_nm=PX_NM, frame_interval_s=0.5)
    a = scene([(0, 0, 10.0, 10.0, 5.0)])
    s0 = tr.update(a)
    s1 = tr.update(a.iloc[:0], frame=1)
    assert len(s1.particles) == 0 and list(s1.events.columns) == list(EVENT_COLUMNS)
    s2 = tr.update(scene([(2, 0, 10.5, 10.0, 5.0)]))
    assert s2.particles["track_id"].iloc[0] == s0.particles["track_id"].iloc[0]
    assert len(tr.finish()) == 0
    tracks = tr.tracks_table()
    assert list(tracks.columns) == list(TRACK_COLUMNS)
    assert tracks["n_frames"].tolist() == [2]


def test_empty_tracker_tables_have_their_columns():
    tr = Tracker(pixel_size_nm=PX_NM, frame_interval_s=None)
    assert list(tr.tracks_table().columns) == list(TRACK_COLUMNS)
    assert len(tr.finish()) == 0
    out, events, tracks = link_with_events(
        scene([(0, 0, 1.0, 1.0, 1.0)]).iloc[:0], pixel_size_nm=PX_NM, frame_interval_s=1.0
    )
    assert len(out) == 0 and len(events) == 0 and len(tracks) == 0


@pytest.mark.parametrize("interval", [None, 0, 0.0])
def test_missing_frame_interval_runs_in_frame_units(interval):
    rows = [(f, 0, 10.0 + f, 10.0, 5.0 + f) for f in range(5)]
    tr = Tracker(pixel_size_nm=PX_NM, frame_interval_s=interval)
    assert tr.time_unit == "frame"
    for _, g in scene(rows).groupby("frame"):
        tr.update(g.drop(columns="time_s"))
    assert tr.tracks_table()["growth_rate_nm_per_s"].iloc[0] == pytest.approx(1.0)


def test_nan_coordinates_are_dropped_and_counted():
    tab = merging_scene()
    tab.loc[[3, 10], "x_px"] = np.nan
    out = link(tab, pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert (out.loc[[3, 10], "track_id"] == -1).all()
    assert (out.drop(index=[3, 10])["track_id"] >= 0).all()
    tr = Tracker(pixel_size_nm=PX_NM, frame_interval_s=0.5)
    tr.update(tab[tab["frame"] == 0])
    tr.update(tab[tab["frame"] == 1])
    assert tr.n_dropped_nan == 1


def test_no_id_is_ever_reused():
    rng = np.random.default_rng(2)
    rows = []
    for f in range(30):  # particles blink in and out at random
        for i in range(15):
            if rng.random() < 0.7:
                rows.append((f, i, 30.0 * i, 50.0, 5.0))
    out, events, tracks = link_with_events(
        scene(rows),
        pixel_size_nm=PX_NM,
        frame_interval_s=0.5,
        config=TrackerConfig(max_gap_frames=1),
    )
    assert_no_id_twice_per_frame(out)
    spans = out.groupby("track_id")["frame"].agg(["min", "max"])
    for i, truth in out.groupby("truth"):
        ids = truth.drop_duplicates("track_id")["track_id"].tolist()
        # the ids of one particle's successive tracks never overlap in time
        s = spans.loc[ids].sort_values("min")
        assert (s["min"].to_numpy()[1:] > s["max"].to_numpy()[:-1]).all(), i
    assert tracks["track_id"].is_unique


def test_update_rejects_bad_input():
    tr = Tracker(pixel_size_nm=PX_NM, frame_interval_s=0.5)
    with pytest.raises(InputError, match="lacks column"):
        tr.update(pd.DataFrame({"x_px": [1.0]}))
    with pytest.raises(InputError, match="one frame's particles"):
        tr.update(merging_scene())
    tr.update(scene([(3, 0, 1.0, 1.0, 1.0)]))
    with pytest.raises(InputError, match="frames must increase"):
        tr.update(scene([(2, 0, 1.0, 1.0, 1.0)]))
    with pytest.raises(CalibrationError):
        Tracker(pixel_size_nm=0.0, frame_interval_s=1.0)
    with pytest.raises(InputError, match="frame interval"):
        Tracker(pixel_size_nm=1.0, frame_interval_s=-1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gate_nm": 0}, "gate_nm"),
        ({"gate_nm": float("inf")}, "gate_nm"),
        ({"max_gap_frames": -1}, "max_gap_frames"),
        ({"max_gap_frames": 1.5}, "max_gap_frames"),
        ({"merge_overlap": 1.5}, "merge_overlap"),
        ({"drift": "magic"}, "drift"),
        ({"size_weight": -0.1}, "size_weight"),
        ({"tentative_cost": -1.0}, "tentative_cost"),
        ({"confirm_hits": -1}, "confirm_hits"),
        ({"gate_nm": 50.0, "max_drift_nm": 10.0}, "max_drift_nm"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(InputError, match=match):
        TrackerConfig(**kwargs)


def test_config_round_trip():
    cfg = TrackerConfig(gate_nm=7.5, max_gap_frames=4, drift="none")
    assert TrackerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="unknown tracker setting"):
        TrackerConfig.from_dict({**cfg.to_dict(), "gate_px": 3})


def test_track_frames_generator_and_history():
    tab = merging_scene()
    tr = Tracker(AT_ONCE, pixel_size_nm=PX_NM, frame_interval_s=0.5)
    steps = list(
        track_frames(
            (g for _, g in tab.groupby("frame")),
            pixel_size_nm=PX_NM,
            frame_interval_s=0.5,
            tracker=tr,
        )
    )
    assert len(steps) == tab["frame"].nunique()  # nothing left to report at the end
    merged = steps[8].particles.loc[steps[8].particles["truth"] == 3, "track_id"].iloc[0]
    hist = tr.track_history(int(merged))
    assert hist["frame"].tolist() == list(range(8, 14))
    assert np.allclose(hist["diameter_nm"], 10 * 2 ** (1 / 3))
    assert len(tr.track_history(9999)) == 0


# ------------------------------------------------------------------ assignment
@pytest.mark.parametrize("seed", range(6))
def test_gated_assignment_is_optimal(seed):
    rng = np.random.default_rng(seed)
    n_r, n_c = 7, 6
    dense = rng.uniform(0, 2.5, (n_r, n_c))
    allowed = rng.random((n_r, n_c)) < 0.35
    r, c = np.nonzero(allowed)
    u = 1.0
    mr, mc = solve_gated_assignment(n_r, n_c, r, c, dense[r, c], u)
    assert len(set(mr)) == len(mr) and len(set(mc)) == len(mc)
    assert allowed[mr, mc].all()
    got = dense[mr, mc].sum() + u * (n_r - len(mr) + n_c - len(mc))
    # independent optimum: the classic augmented (n_r + n_c) square problem
    big = 1e6
    aug = np.full((n_r + n_c, n_c + n_r), big)
    aug[:n_r, :n_c] = np.where(allowed, dense, big)
    aug[:n_r, n_c:] = np.where(np.eye(n_r, dtype=bool), u, big)
    aug[n_r:, :n_c] = np.where(np.eye(n_c, dtype=bool), u, big)
    aug[n_r:, n_c:] = 0.0
    ri, ci = linear_sum_assignment(aug)
    assert got == pytest.approx(aug[ri, ci].sum())


def test_theil_sen_ignores_an_outlier():
    t = np.arange(10.0)
    y = 2 * t + 1
    y[4] = 100.0
    assert theil_sen_slope(t, y) == pytest.approx(2.0)
    assert math.isnan(theil_sen_slope([1.0], [1.0]))


# ------------------------------------------------------------------ evaluation
def _truth_and_pred():
    # two truths over 4 frames; the prediction swaps its id for truth 1 at frame 2
    truth = pd.DataFrame(
        {
            "frame": [0, 1, 2, 3] * 2,
            "truth_id": [0] * 4 + [1] * 4,
            "x_px": [0.0] * 4 + [50.0] * 4,
            "y_px": 0.0,
        }
    )
    pred = truth.rename(columns={"truth_id": "track_id"}).copy()
    pred.loc[(pred["track_id"] == 1) & (pred["frame"] >= 2), "track_id"] = 7
    return truth, pred


def test_mot_metrics_on_a_known_case():
    truth, pred = _truth_and_pred()
    s = mot_metrics(pred, truth, radius_px=2.0)
    assert s.id_switches == 1 and s.false_positives == 0 and s.misses == 0
    assert s.mota == pytest.approx(1 - 1 / 8)
    # best id pairing: 0<->0 (4 frames) and 1<->1 or 1<->7 (2 frames): IDTP 6 of 8
    assert s.idf1 == pytest.approx(6 / 8)
    # a missed and a false detection
    pred2 = pred.copy()
    pred2.loc[0, "x_px"] = 20.0
    s2 = mot_metrics(pred2, truth, radius_px=2.0)
    assert s2.misses == 1 and s2.false_positives == 1
    assert s2.mota == pytest.approx(1 - 3 / 8)


def test_merge_event_scores():
    truth, pred = _truth_and_pred()
    matches = match_detections(pred, truth, radius_px=2.0)
    tev = pd.DataFrame(
        {"frame": [3, 10], "kind": ["merge", "merge"], "ids": ["0 1", "4 5"], "into_id": [9, 6]}
    )
    pev = pd.DataFrame(
        {
            "frame": [4, 3],
            "kind": ["merge", "merge"],
            "track_ids": ["0 7", "0 5"],
            "into_id": [8, 9],
        }
    )
    m = merge_event_scores(pev, tev, matches)
    assert m["true_positives"] == 1 and m["n_pred"] == 2 and m["n_truth"] == 2
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    # with the truth detections, the merge of never-seen particles 4 and 5 is not scored
    m2 = merge_event_scores(pev, tev, matches, truth=truth)
    assert m2["n_truth"] == 1 and m2["recall"] == 1.0


def test_evaluate_tracking_perfect_on_the_merge_scene():
    tab = merging_scene()
    out, events, _ = link_with_events(
        tab, pixel_size_nm=PX_NM, frame_interval_s=0.5, config=AT_ONCE
    )
    truth = tab.rename(columns={"truth": "truth_id"})
    tev = pd.DataFrame({"frame": [8], "kind": ["merge"], "ids": ["0 1"], "into_id": [3]})
    r = evaluate_tracking(out, truth, radius_px=1.0, pred_events=events, truth_events=tev)
    assert r["idf1"] == 1.0 and r["mota"] == 1.0 and r["merge_f1"] == 1.0


# ------------------------------------------------------------------ real trajectories
def monet_table(shared_data, n_frames: int, spacing_px: float) -> pd.DataFrame:
    """The 459 measured Au-nanorod trajectories (MoNet, px, 300 frames), each moved to its
    own cell of a grid ``spacing_px`` apart: the file overlays trajectories from many
    movies (median nearest neighbour 8 px for 4 px median steps), far denser than any one
    movie, so they are spread out while keeping their real motion."""
    from scipy.io import loadmat

    path = shared_data / "monet_trajectories" / "AuNRs_300.mat"
    if not path.exists():
        pytest.skip(f"{path} not found")
    tr = loadmat(path)["tr"]
    n = len(np.unique(tr[:, 2]))
    xy = tr[:, :2].reshape(n, -1, 2)[:, :n_frames]
    cell = np.arange(n)
    side = math.ceil(math.sqrt(n))
    offset = np.stack([cell % side, cell // side], axis=1) * spacing_px
    pos = xy - xy[:, :1] + offset[:, None, :]
    return pd.DataFrame(
        {
            "frame": np.tile(np.arange(xy.shape[1]), n),
            "x_px": pos[:, :, 0].ravel(),
            "y_px": pos[:, :, 1].ravel(),
            "truth_id": np.repeat(cell, xy.shape[1]),
        }
    )


def test_real_liquid_cell_trajectories(shared_data):
    """Fed the real trajectories' positions as detections, the tracker recovers their
    identities (measured 0.943 IDF1; trackpy link, search 40 px, memory 5: 0.938)."""
    table = monet_table(shared_data, n_frames=60, spacing_px=100.0)
    out = link(
        table,
        pixel_size_nm=1.0,
        frame_interval_s=None,
        config=TrackerConfig(gate_nm=40.0, size_weight=0.0),
    )
    assert_no_id_twice_per_frame(out)
    s = mot_metrics(out, table, radius_px=0.5)
    assert s.idf1 >= 0.93, s
    assert s.mota >= 0.98, s


# ------------------------------------------------------------------ bounded history
def full_history_tracks(rows: pd.DataFrame, time_unit: str) -> pd.DataFrame:
    """The per-track numbers of tracks.csv from every tracked row, computed the way the
    tracker did when it kept the whole history (independent reference)."""
    h = rows[rows["track_id"] >= 0].sort_values(["track_id", "frame"], kind="stable")
    out = []
    for tid, g in h.groupby("track_id", sort=True):
        t = (g["time_s"] if time_unit == "s" else g["frame"]).to_numpy(dtype=float)
        d = g["diameter_nm"].to_numpy(dtype=float)
        sel = np.arange(len(g))
        if len(sel) > 200:
            sel = sel[np.linspace(0, len(sel) - 1, 200).astype(int)]
        out.append(
            {
                "track_id": tid,
                "first_frame": g["frame"].iloc[0],
                "last_frame": g["frame"].iloc[-1],
                "n_frames": len(g),
                "diameter_start_nm": d[0],
                "diameter_end_nm": d[-1],
                "growth_rate_nm_per_s": theil_sen_slope(t[sel], d[sel]) if len(g) > 1 else np.nan,
                "diameter_min_nm": np.nanmin(d),
                "diameter_max_nm": np.nanmax(d),
            }
        )
    return pd.DataFrame(out)


def vanish_and_merge_scene() -> pd.DataFrame:
    """The merging scene plus a particle growing 0.3 nm per frame (one outlier frame), one
    shrinking away to a vanish at frame 6 and one seen only in frames 2..4."""
    rows = list(merging_scene().itertuples(index=False, name=None))
    rows = [(r[0], r[8], r[4], r[5], r[6]) for r in rows]
    for f in range(14):
        rows.append((f, 4, 90.0, 90.0, 6.0 + 0.3 * f + (4.0 if f == 5 else 0.0)))
        if f < 6:
            rows.append((f, 5, 10.0, 90.0, 6.0 - f))
        if 2 <= f <= 4:
            rows.append((f, 6, 90.0, 20.0, 7.0))
    return scene(rows).sort_values("frame", kind="stable")


@pytest.mark.parametrize("interval", [0.5, None])
def test_tracks_table_equals_the_full_history_computation(interval):
    tab = vanish_and_merge_scene()
    tr = Tracker(AT_ONCE, pixel_size_nm=PX_NM, frame_interval_s=interval)
    seen, kinds = [], set()
    for _, g in tab.groupby("frame"):
        step = tr.update(g)
        seen.append(step.particles)
        kinds |= set(step.events["kind"])
        got = tr.tracks_table()  # called every frame, as tracks end one by one
        expected = full_history_tracks(pd.concat(seen), tr.time_unit)
        assert list(got.columns) == list(TRACK_COLUMNS)
        pd.testing.assert_frame_equal(
            got[list(expected.columns)], expected.astype(got[expected.columns].dtypes)
        )
    tr.finish()
    got = tr.tracks_table().set_index("track_id")
    assert {"merge", "vanish"} <= kinds
    assert set(got["fate"]) == {"alive", "merged", "vanished"}
    merged = got[got["fate"] == "merged"]
    assert len(merged) == 2 and (merged["merged_into"] >= 0).all()
    into = int(merged["merged_into"].iloc[0])
    assert got.loc[into, "parent_ids"] == " ".join(map(str, merged.index))
    # the ended tracks' per-frame rows were released; their curves are kept compact
    assert tr._n_rows == int(got.loc[got["fate"] == "alive", "n_frames"].sum())
    for tid in merged.index:
        hist = tr.track_history(int(tid))
        assert hist["frame"].tolist() == list(range(8))
        assert np.allclose(hist["diameter_nm"], 10.0)


def test_ended_tracks_rows_are_released_while_ids_churn():
    # 20 particles at a time, each seen 5 frames and gone, replaced elsewhere: over 300
    # frames 1200 tracks end, but only the alive tracks' rows are kept
    rows = []
    for f in range(300):
        gen = f // 5
        for i in range(20):
            rows.append((f, gen * 20 + i, 30.0 * i, 50.0 + 200 * (gen % 3), 5.0))
    tab = scene(rows)
    tr = Tracker(TrackerConfig(max_gap_frames=1), pixel_size_nm=PX_NM, frame_interval_s=0.5)
    buffered = []
    for f, g in tab.groupby("frame"):
        tr.update(g)
        if f % 10 == 9:
            tracks = tr.tracks_table()
            buffered.append(tr._n_rows)
    # alive tracks: at most 2 generations of 20 (5 frames + the gap frame each)
    assert max(buffered) <= 2 * 20 * 5
    assert len(tracks) == 1200 and tracks["track_id"].is_unique
    assert (tracks["n_frames"] == 5).all()
    assert (tracks.loc[tracks["fate"] != "alive", "n_frames"] == 5).all()
    assert tracks["growth_rate_nm_per_s"].eq(0.0).all()
    ended = tracks.loc[tracks["fate"] == "vanished", "track_id"].iloc[0]
    assert tr.track_history(int(ended))["frame"].tolist() == list(range(5))
    for f in range(300, 303):  # all gone: empty frames release the last rows too
        tr.update(tab.iloc[:0], frame=f)
    assert (tr.tracks_table()["fate"] == "vanished").all() and tr._n_rows == 0


# ------------------------------------------------------------------ issue 5 gaps
def _hiding_scene(remnant_x: float) -> pd.DataFrame:
    """B (10 nm) approaches A (12 nm, still); in frame 5 only a sliver of B is seen (3.5 nm)
    at ``remnant_x``; from frame 6 one particle of their summed volume."""
    rows = []
    for f in range(12):
        if f < 6:
            rows.append((f, 0, 40.0, 50.0, 12.0))
        if f < 5:
            rows.append((f, 1, 62.0 - 2 * f, 50.0, 10.0))
        elif f == 5:
            rows.append((f, 1, remnant_x, 50.0, 3.5))
        else:
            rows.append((f, 2, 43.0, 50.0, (12.0**3 + 10.0**3) ** (1 / 3)))
    return scene(rows)


@pytest.mark.parametrize(
    ("remnant_x", "kinds"),
    [
        (45.0, ["merge"]),  # the sliver's centre is inside A's disk: B went behind A
        (54.0, ["vanish"]),  # beside A, not overlapping: B shrank away (and A grew)
    ],
)
def test_a_particle_hidden_behind_another_before_merging_is_a_merge(remnant_x, kinds):
    out, events, tracks = link_with_events(
        _hiding_scene(remnant_x), pixel_size_nm=PX_NM, frame_interval_s=0.5
    )
    assert_no_id_twice_per_frame(out)
    ids = out.groupby("truth")["track_id"].agg(set)
    assert all(len(v) >= 1 for v in ids)
    a, b = min(ids[0]), min(ids[1])
    assert ids[1] == {b}  # B keeps one id up to its sliver
    merges_or_vanish = events[events["kind"].isin(["merge", "vanish"])]
    assert merges_or_vanish["kind"].tolist() == kinds
    ev = merges_or_vanish.iloc[0]
    if kinds == ["merge"]:
        assert ev["frame"] == 6
        assert set(map(int, ev["track_ids"].split())) == {a, b}
        assert tracks.set_index("track_id").loc[b, "fate"] == "merged"
    else:
        assert ev["track_ids"] == str(b) and ev["frame"] == 6


def test_a_merge_product_merging_again_soon_is_a_merge():
    # A + B -> P at frame 8 (confirmed at 10 with a 3-frame confirmation: P's new id
    # starts then); C touches P at frame 10 and is one with it from frame 11 (Q): P, a
    # merge product, is a particle of its own from birth, so this is a second merge, not
    # a fragment rejoining
    rows = []
    for f in range(8):
        rows += [(f, 0, 20 + 2 * f, 50, 10.0), (f, 1, 60 - 2 * f, 50, 10.0)]
    for f in range(8, 11):
        rows.append((f, 3, 40, 50, 10 * 2 ** (1 / 3)))
    for f in range(11):
        rows.append((f, 2, 40.0, 62.0 + 2 * (10 - f), 10.0))
    for f in range(11, 18):
        rows.append((f, 4, 40.0, 52.0, 15.0))
    out, events, tracks = link_with_events(
        scene(rows),
        pixel_size_nm=PX_NM,
        frame_interval_s=0.5,
        config=TrackerConfig(merge_confirm_frames=3),
    )
    assert_no_id_twice_per_frame(out)
    merges = events[events["kind"] == "merge"]
    assert merges["frame"].tolist() == [8, 11]
    p_id = merges["into_id"].iloc[0]
    c_id = out.loc[out["truth"] == 2, "track_id"].iloc[0]
    assert set(map(int, merges["track_ids"].iloc[1].split())) == {p_id, c_id}
    assert "vanish" not in set(events["kind"])


def _link_on_the_border(rows):
    """``link`` of a scene whose rows at x < 5 px touch the left border; short gaps, but
    20 frames for a track that left through the border."""
    tab = scene(rows)
    tab["touches_edge"] = tab["x_px"] < 5
    return link(
        tab,
        pixel_size_nm=PX_NM,
        frame_interval_s=0.5,
        config=TrackerConfig(max_gap_frames=2, edge_gap_frames=20),
    )


@pytest.mark.parametrize(("reentry_y", "same"), [(51.0, True), (65.0, False)])
def test_a_still_particle_that_left_by_the_border_comes_back_where_it_left(reentry_y, same):
    # track 0 sat still on the border, then was gone 12 frames; a particle coming in 15 nm
    # along the border is another one (the old track's gate grows with its own steps)
    rows = []
    for f in range(30):
        if f < 8:
            rows.append((f, 0, 2.0, 50.0, 6.0))
        elif f >= 20:
            rows.append((f, 0 if same else 2, 2.0, reentry_y, 6.0))
        rows.append((f, 1, 60.0, 60.0, 6.0))
    assert_same_partition(_link_on_the_border(rows))


def test_merge_scores_map_a_part_by_its_life_before_the_merge():
    # pred track 7 is truth 1 for frames 0-2, then follows the merge product (truth 2) for
    # frames 3-6 before its merge is confirmed: as a part of the frame-3 merge it is truth 1
    matches = pd.DataFrame(
        {
            "frame": [0, 1, 2, 0, 1, 2, 3, 4, 5, 6],
            "truth_id": [0, 0, 0, 1, 1, 1, 2, 2, 2, 2],
            "pred_id": [5, 5, 5, 7, 7, 7, 7, 7, 7, 7],
            "distance_px": 0.0,
        }
    )
    tev = pd.DataFrame({"frame": [3], "kind": ["merge"], "ids": ["0 1"], "into_id": [2]})
    pev = pd.DataFrame({"frame": [3], "kind": ["merge"], "track_ids": ["5 7"], "into_id": [9]})
    assert merge_event_scores(pev, tev, matches)["true_positives"] == 1
    # a merge reported before any frame of a part falls back to its whole-life identity
    late = pev.assign(frame=0)
    tev0 = tev.assign(frame=0, ids="0 2")
    assert merge_event_scores(late, tev0, matches)["true_positives"] == 1


@pytest.mark.parametrize(("speed_px", "same"), [(0.0, False), (3.0, True)])
def test_a_missed_still_particle_is_looked_for_where_it_stood(speed_px, same):
    # a particle missed for 3 frames, then a detection 14 nm from where it was expected:
    # a particle that stood still cannot have gone there (another one, a new id), one
    # moving 3 nm per frame could have
    rows = []
    for f in range(15):
        if f < 6:
            rows.append((f, 0, 20.0 + speed_px * f, 50.0, 6.0))
        elif f >= 9:
            rows.append((f, 0 if same else 2, 20.0 + speed_px * f, 64.0, 6.0))
        rows.append((f, 1, 80.0, 10.0, 6.0))
    out = link(scene(rows), pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert_same_partition(out)


def test_a_fragment_seen_whole_again_ends_at_once_and_the_particle_moves_on():
    # a particle moving 2 px/frame is cut in two for frames 5-6; whole again from frame 7:
    # the fragment (a young track, it cannot be a merge) ends in frame 7, not after a
    # merge-confirmation wait, and the particle's track takes the whole detection at once
    rows = []
    for f in range(14):
        x = 20.0 + 2 * f
        if f in (5, 6):
            rows.append((f, 0, x - 3, 40.0, 12.0 / math.sqrt(2)))
            rows.append((f, 1, x + 3, 40.0, 12.0 / math.sqrt(2)))
        else:
            rows.append((f, 0, x, 40.0, 12.0))
    out, events, tracks = link_with_events(scene(rows), pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert_no_id_twice_per_frame(out)
    assert out.loc[out["truth"] == 0, "track_id"].nunique() == 1
    fragment = out.loc[out["truth"] == 1, "track_id"].iloc[0]
    vanish = events[events["kind"] == "vanish"]
    assert vanish["track_ids"].tolist() == [str(fragment)]
    assert vanish["frame"].tolist() == [7]
    assert "merge" not in set(events["kind"])


@pytest.mark.parametrize("has_track_id", [True, False])
def test_update_does_not_modify_the_frame_table(has_track_id):
    tab = merging_scene()
    if not has_track_id:
        tab = tab.drop(columns="track_id")
    tracker = Tracker(pixel_size_nm=PX_NM, frame_interval_s=0.5)
    for _, frame in tab.groupby("frame"):
        before = frame.copy()
        step = tracker.update(frame)
        pd.testing.assert_frame_equal(frame, before)
        assert (step.particles["track_id"] >= 0).all()
        extra = [] if has_track_id else ["track_id"]
        assert list(step.particles.columns) == list(frame.columns) + extra


def _jittering_others(frame: int, step_px: float) -> list[tuple]:
    """Rows of four particles away from the border that jump ``step_px`` back and forth
    each frame: the movie's typical motion."""
    return [
        (frame, 1 + k, 40.0 + 30 * k + step_px * (1 if (frame + k) % 2 else -1), 120.0, 6.0)
        for k in range(4)
    ]


@pytest.mark.parametrize(("others_step_px", "same"), [(3.0, True), (0.0, False)])
def test_a_track_seen_once_borrows_the_motion_of_the_others(others_step_px, same):
    # a particle seen once on the border, back 15 nm along it 12 frames later: in a movie
    # whose particles jitter 3 nm per frame it may have wandered that far (same id); in
    # one where they stand still it cannot (a new particle)
    rows = []
    for f in range(20):
        if f == 3:
            rows.append((f, 0, 2.0, 50.0, 6.0))
        elif f >= 15:
            rows.append((f, 0 if same else 9, 2.0, 65.0, 6.0))
        rows += _jittering_others(f, others_step_px)
    assert_same_partition(_link_on_the_border(rows))


@pytest.mark.parametrize(("others_step_px", "same"), [(0.0, False), (3.0, True)])
def test_a_border_particle_s_jitter_is_not_motion(others_step_px, same):
    # a particle cut by the border, its centroid jumping 2 px a frame with the cut, is
    # missed for 3 frames; then one comes in 14 nm along the border. Among still
    # particles it is another (the jitter is the cut's, not the particle's: the track
    # takes the movie's typical step); among particles moving 3 nm per frame it may be it
    rows = []
    for f in range(15):
        if f < 6:
            rows.append((f, 0, 2.0, 50.0 + (2.0 if f % 2 else -2.0), 6.0))
        elif f >= 9:
            rows.append((f, 0 if same else 9, 2.0, 64.0, 6.0))
        rows += _jittering_others(f, others_step_px)
    assert_same_partition(_link_on_the_border(rows))


def test_pieces_lying_apart_within_the_old_footprint_are_fragments_not_particles():
    # a 14 nm particle seen as two 6 nm pieces 11 nm apart for 5 frames (farther apart
    # than their own radii, but inside the particle as last seen whole), then whole again:
    # the pieces were fragments, not two particles merging
    rows = [(f, 0, 40.0, 40.0, 14.0) for f in range(5)]
    for f in range(5, 10):
        rows += [(f, 0, 35.0, 40.0, 6.0), (f, 1, 46.0, 40.0, 6.0)]
    rows += [(f, 0, 40.0, 40.0, 14.0) for f in range(10, 16)]
    out, events, _ = link_with_events(scene(rows), pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert_no_id_twice_per_frame(out)
    assert out.loc[out["truth"] == 0, "track_id"].nunique() == 1
    assert "merge" not in set(events["kind"])
    piece = out.loc[out["truth"] == 1, "track_id"].iloc[0]
    assert events.loc[events["kind"] == "vanish", "track_ids"].tolist() == [str(piece)]


def test_a_particle_measured_larger_with_no_neighbour_is_followed_not_frozen():
    # a still particle starts moving 4 nm/frame while its size is over-measured (x1.4) for
    # three frames: with no other particle lost next to it this is not a blob of two, so
    # the track follows it (a frozen track would be 12 nm behind by frame 7)
    rows = [(f, 0, 20.0, 20.0, 6.0) for f in range(5)]
    rows += [(f, 0, 20.0 + 4 * (f - 4), 20.0, 8.5) for f in range(5, 8)]
    rows += [(f, 0, 36.0, 20.0, 6.0) for f in range(8, 12)]
    rows += [(f, 1, 80.0, 80.0, 6.0) for f in range(12)]
    out, events, _ = link_with_events(scene(rows), pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert_same_partition(out)
    assert len(events) == 0


def test_link_gives_the_track_ids_of_link_with_events_and_of_update():
    tab = _hiding_scene(45.0)
    kw = dict(pixel_size_nm=PX_NM, frame_interval_s=0.5)
    out = link(tab, **kw)
    out2, events, _ = link_with_events(tab, **kw)
    pd.testing.assert_frame_equal(out, out2)
    tracker = Tracker(**kw)
    live = pd.concat([tracker.update(g).particles for _, g in tab.groupby("frame")])
    np.testing.assert_array_equal(live["track_id"].to_numpy(), out["track_id"].to_numpy())
    assert events["kind"].tolist() == ["merge"]


def test_link_of_a_shuffled_table_with_nan_rows_gives_each_row_the_same_id():
    # offline link reads the table once and walks it frame by frame: rows out of frame
    # order and rows dropped for NaN coordinates must not shift any id onto another row
    tab = _hiding_scene(45.0)
    tab.loc[[2, 7], "y_px"] = np.nan
    kw = dict(pixel_size_nm=PX_NM, frame_interval_s=0.5)
    ids = link(tab, **kw)["track_id"]
    shuffled = tab.sample(frac=1.0, random_state=3)
    ids_shuffled = link(shuffled, **kw)["track_id"].loc[tab.index]
    # the same tracks (a new particle's id follows the row order within its frame)
    pairs = pd.DataFrame({"a": ids, "b": ids_shuffled}).drop_duplicates()
    assert pairs["a"].is_unique and pairs["b"].is_unique
    assert (ids.loc[[2, 7]] == -1).all() and (ids.drop(index=[2, 7]) >= 0).all()
    tracker = Tracker(**kw)
    live = pd.concat([tracker.update(g).particles for _, g in tab.groupby("frame")])
    assert (live["track_id"].loc[tab.index] == ids).all()


# ------------------------------------------------------------------ frame-step helpers
# (the per-frame step swaps numpy calls for cheaper equivalents: each must give exactly
# what the plain numpy call gives)
@pytest.mark.parametrize("n", [1, 2, 5, 6, 25])
def test_median_and_mad_equal_numpy(n):
    from etemlive.track.tracker import _median_and_mad

    a = np.random.default_rng(n).normal(size=(2, n)) * 7
    want = np.median(a, axis=1)
    want_mad = np.median(np.abs(a - want[:, None]), axis=1)
    med, mad = _median_and_mad(a.copy())
    assert med == want.tolist()
    assert mad == want_mad.tolist()


def test_compact_equals_unique_with_inverse():
    from etemlive.track.tracker import _compact

    idx = np.array([7, 2, 7, 0, 9, 2, 2])
    unique, inverse = _compact(idx, 10)
    want_u, want_inv = np.unique(idx, return_inverse=True)
    assert unique.tolist() == want_u.tolist() and inverse.tolist() == want_inv.tolist()


@pytest.mark.parametrize("n_a, n_b", [(26, 24), (3, 0), (90, 90), (200, 150)])
def test_pairs_within_finds_exactly_the_pairs_inside_each_radius(n_a, n_b):
    from etemlive.track.tracker import _pairs_within

    rng = np.random.default_rng(n_a)
    a, b = rng.random((n_a, 2)) * 100, rng.random((n_b, 2)) * 100
    radius = rng.uniform(5, 15, n_a)
    i, j, d = _pairs_within(a, b, radius)
    dist = np.hypot(*(a[:, None, :] - b[None, :, :]).transpose(2, 0, 1))
    want_i, want_j = np.nonzero(dist <= radius[:, None])
    got = sorted(zip(i.tolist(), j.tolist(), strict=True))
    assert got == sorted(zip(want_i.tolist(), want_j.tolist(), strict=True))
    assert np.allclose(d, dist[i, j], rtol=1e-12)
    # one radius for all rows: the same as that radius repeated
    i1, j1, d1 = _pairs_within(a, b, 10.0)
    i2, j2, d2 = _pairs_within(a, b, np.full(n_a, 10.0))
    assert i1.tolist() == i2.tolist() and j1.tolist() == j2.tolist() and d1.tolist() == d2.tolist()


def test_gap_limit_follows_the_particle_as_measured_at_each_loss():
    """A particle seen shrunk then missed (a shrinking particle waits 2 frames), seen again
    at full size, then missed 4 frames: it waits max_gap_frames again (the limit of its
    first loss is not reused) and keeps its id."""
    rows = [(f, 0, 50.0, 50.0, 12.0) for f in range(5)]
    rows += [(5, 0, 50.0, 50.0, 5.0)]  # shrunk below vanish_fraction of its peak area
    rows += [(7, 0, 50.0, 50.0, 12.0)]  # frame 6 missed, then whole again
    rows += [(12, 0, 50.0, 50.0, 12.0)]  # frames 8-11 missed (more than 2, at most 6)
    rows += [(f, 1, 150.0, 150.0, 12.0) for f in range(13)]  # another one, every frame
    tab = scene(rows).sort_values("frame", kind="stable")
    out, events, _ = link_with_events(tab, pixel_size_nm=PX_NM, frame_interval_s=0.5)
    assert_same_partition(out)
    assert (events["kind"] != "vanish").all()
