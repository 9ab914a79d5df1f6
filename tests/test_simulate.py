"""Tests of the physics-based simulator (etemlive.sources.simulate)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import tifffile

from etemlive.errors import EtemliveError, InputError
from etemlive.frames import Frame, FrameSource
from etemlive.sources.simulate import (
    DOSES,
    SCENARIOS,
    SOLIDS,
    TRAINING_PARAMETERS,
    TRUTH_COLUMNS,
    SimulatedSource,
    SimulationConfig,
    footprint_descriptors,
    lsw_distribution,
    render_particles,
    render_training_sample,
    simulate,
    solid_dimensions,
    write_simulation,
)


def _frames(**kw):
    return list(simulate(SimulationConfig(**kw)))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenarios_are_deterministic_and_well_formed(scenario):
    kw = dict(scenario=scenario, seed=3, n_frames=4, size_px=96)
    a, b = _frames(**kw), _frames(**kw)
    c = _frames(**{**kw, "seed": 4})
    assert len(a) == 4
    for fa, fb in zip(a, b, strict=True):
        assert fa.image.dtype == np.uint16 and fa.image.shape == (96, 96)
        assert fa.labels.dtype == np.uint16 and fa.labels.shape == (96, 96)
        assert np.array_equal(fa.image, fb.image)
        assert np.array_equal(fa.labels, fb.labels)
        pd.testing.assert_frame_equal(fa.truth, fb.truth)
        assert fa.events == fb.events
        assert list(fa.truth.columns) == list(TRUTH_COLUMNS)
        assert fa.truth.dtypes.astype(str).to_dict() == TRUTH_COLUMNS
        # every labelled pixel belongs to a truth row and vice versa
        present = np.unique(fa.labels)
        assert set(present[present > 0]) == set(fa.truth["truth_id"])
        assert fa.truth["truth_id"].is_unique
    assert not np.array_equal(a[-1].image, c[-1].image)


def test_labels_match_truth_table():
    frame = _frames(scenario="shapes", seed=5, n_frames=1, size_px=256, drift_px_per_frame=0.0)[0]
    truth = frame.truth.set_index("truth_id")
    counts = np.bincount(frame.labels.ravel())
    assert (truth["area_px"] == counts[truth.index]).all()
    inner = truth[~truth["touches_edge"]]
    assert len(inner) >= 5
    px_area_nm2 = 0.5**2
    rows, cols = np.indices(frame.labels.shape)
    for tid, row in inner.iterrows():
        mask = frame.labels == tid
        # pixel-centre footprint area ~ analytic projected area (boundary-pixel tolerance)
        perimeter_px = math.pi * row["feret_max_nm"] / 0.5
        assert abs(mask.sum() - row["area_nm2"] / px_area_nm2) <= 0.35 * perimeter_px + 2
        assert abs(cols[mask].mean() - row["x_px"]) < 0.6
        assert abs(rows[mask].mean() - row["y_px"]) < 0.6


@pytest.mark.parametrize("solid", range(len(SOLIDS)))
def test_rendered_thickness_integrates_to_volume(solid):
    # anti-aliased rendering: sum of projected thickness x pixel area == particle volume
    px = 0.4
    r = np.array([4.0])
    q = np.array([2.0])
    dims = solid_dimensions(np.array([solid]), r, q)
    desc = footprint_descriptors(np.array([solid]), dims)
    thick = np.zeros((64, 64), np.float32)
    labels = np.zeros((64, 64), np.uint16)
    z = np.zeros((64, 64), np.float32)
    render_particles(thick, labels, z, x_px=np.array([31.3]), y_px=np.array([30.8]),
                     solid=np.array([solid]), dims_nm=dims, theta_rad=np.array([0.7]),
                     circumradius_nm=desc["circumradius_nm"], ids=np.array([7]),
                     pixel_size_nm=px, supersample=3)
    volume = 4 / 3 * math.pi * 4.0**3
    assert thick.sum() * px**2 == pytest.approx(volume, rel=0.03)
    assert (labels == 7).sum() * px**2 == pytest.approx(desc["area_nm2"][0], rel=0.06)
    assert set(np.unique(labels)) == {0, 7}


def test_footprint_descriptors_known_shapes():
    solids = np.arange(len(SOLIDS))
    r = np.full(len(SOLIDS), 3.0)
    q = np.full(len(SOLIDS), 2.0)
    dims = solid_dimensions(solids, r, q)
    d = footprint_descriptors(solids, dims)
    # volume is preserved by every solid's dimensions
    vols = [
        4 / 3 * math.pi * dims[0, 0] ** 3,
        4 / 3 * math.pi * dims[1, 0] * dims[1, 1] * dims[1, 2],
        math.pi * dims[2, 0] ** 2 * 2 * dims[2, 1] + 4 / 3 * math.pi * dims[2, 0] ** 3,
        (2 * dims[3, 0]) ** 3,
        4 / 3 * dims[4, 0] ** 3,
        1.5 * math.sqrt(3) * dims[5, 0] ** 2 * dims[5, 1],
        math.sqrt(3) / 4 * (2 * math.sqrt(3) * dims[6, 0]) ** 2 * dims[6, 1],
    ]
    assert vols == pytest.approx([4 / 3 * math.pi * 27] * len(SOLIDS), rel=1e-9)
    assert d["roundness"][0] == pytest.approx(1.0)
    assert d["aspect_ratio"][1] == pytest.approx(2.0)
    assert d["roundness"][1] == pytest.approx(0.5)
    assert d["roundness"][3] == pytest.approx(2 / math.pi)
    assert d["roundness"][4] == pytest.approx(2 / math.pi)
    assert d["roundness"][5] == pytest.approx(3 * math.sqrt(3) / (2 * math.pi))
    assert d["roundness"][6] == pytest.approx(math.sqrt(3) / math.pi)
    assert 1.5 < d["aspect_ratio"][2] < 2.0  # rod of length/width 2: moments give less than 2


@pytest.mark.parametrize(("n", "gamma", "mean_rho"), [(3.0, 4 / 27, 1.0), (2.0, 1 / 4, 8 / 9)])
def test_lsw_distribution_matches_classical_results(n, gamma, mean_rho):
    rho, pdf, g = lsw_distribution(n)
    assert g == pytest.approx(gamma)
    assert np.trapezoid(pdf, rho) == pytest.approx(1.0)
    assert np.trapezoid(rho * pdf, rho) == pytest.approx(mean_rho, abs=2e-3)
    assert rho.max() < n / (n - 1)


def test_ripening_conserves_volume_small_shrink_large_grow():
    frames = _frames(scenario="ripening", seed=2, n_frames=12, size_px=192, drift_px_per_frame=0.0)
    vol = [f.truth["volume_nm3"].sum() for f in frames]
    assert vol == pytest.approx([vol[0]] * len(vol), rel=1e-9)
    assert len(frames[-1].truth) < len(frames[0].truth)
    vanished = [e for f in frames for e in f.events if e.kind == "vanish"]
    assert vanished and all(len(e.ids) == 1 and e.into_id is None for e in vanished)
    first, second = frames[0].truth.set_index("truth_id"), frames[1].truth.set_index("truth_id")
    survivors = first.index.intersection(second.index)
    dr = second.loc[survivors, "radius_nm"] - first.loc[survivors, "radius_nm"]
    r0 = first.loc[survivors, "radius_nm"]
    # the LSW fingerprint over one frame: the largest grew, the smallest shrank
    assert dr[r0 >= r0.quantile(0.8)].min() > 0
    assert dr[r0 <= r0.quantile(0.2)].max() < 0
    gone = {e.ids[0] for e in vanished}
    assert first.loc[list(gone & set(first.index)), "radius_nm"].mean() < first["radius_nm"].mean()


def test_merge_produces_one_particle_with_summed_volume():
    frames = _frames(scenario="coalescence", seed=1, n_frames=20, size_px=160)
    merges = [(i, e) for i, f in enumerate(frames) for e in f.events if e.kind == "merge"]
    assert len(merges) >= 2
    checked = 0
    for i, ev in merges:
        before = frames[i - 1].truth.set_index("truth_id")
        after = frames[i].truth.set_index("truth_id")
        a, b = ev.ids
        if a not in before.index or b not in before.index:
            continue  # a parent outside the field of view
        checked += 1
        assert a not in after.index and b not in after.index
        assert ev.into_id in after.index and ev.into_id not in before.index
        assert after.loc[ev.into_id, "volume_nm3"] == pytest.approx(
            before.loc[a, "volume_nm3"] + before.loc[b, "volume_nm3"], rel=1e-9)
        # the new particle starts elongated along the pair axis, then relaxes
        assert after.loc[ev.into_id, "aspect_ratio"] > 1.2
    assert checked >= 2


def test_necked_pair_keeps_two_labels_until_merge():
    frames = _frames(scenario="coalescence", seed=1, n_frames=20, size_px=160)
    merge_frame, ev = next((i, e) for i, f in enumerate(frames) for e in f.events
                           if e.kind == "merge")
    prev = frames[merge_frame - 1].labels
    a, b = ev.ids
    mask_a, mask_b = prev == a, prev == b
    # the two labels touch (a neck joins them) but stay distinct
    grown = np.zeros_like(mask_a)
    grown[1:-1, 1:-1] = (mask_a[:-2, 1:-1] | mask_a[2:, 1:-1] | mask_a[1:-1, :-2] | mask_a[1:-1, 2:])
    assert (grown & mask_b).any()


def test_poisson_noise_variance_equals_mean_on_flat_field():
    f = _frames(scenario="ripening", seed=0, n_frames=1, size_px=128, n_particles=0,
                carbon_thickness_nm=0.0, carbon_texture_nm=0.0, illumination_gradient=0.0,
                blur_sigma_px=0.0, dose_e_per_px=200.0)[0]
    counts = f.image.astype(np.float64)
    assert counts.mean() == pytest.approx(200.0, rel=0.01)
    assert counts.var() == pytest.approx(counts.mean(), rel=0.05)


@pytest.mark.parametrize("bright_field", [True, False])
def test_contrast_polarity(bright_field):
    f = _frames(scenario="shapes", seed=2, n_frames=1, size_px=128, bright_field=bright_field,
                dose_e_per_px=DOSES["high"])[0]
    inside = f.image[f.labels > 0].mean()
    outside = f.image[f.labels == 0].mean()
    assert (inside < 0.9 * outside) if bright_field else (inside > 2.0 * outside)


def test_dose_sets_mean_counts():
    means = [_frames(scenario="shapes", seed=2, n_frames=1, size_px=64, dose_e_per_px=d)[0]
             .image.mean() for d in (DOSES["low"], DOSES["high"])]
    assert means[1] / means[0] == pytest.approx(DOSES["high"] / DOSES["low"], rel=0.05)


def test_drift_moves_truth_and_image():
    frames = _frames(scenario="shapes", seed=1, n_frames=6, size_px=128, drift_px_per_frame=2.0)
    steps = np.diff([f.drift_px for f in frames], axis=0)
    assert np.hypot(steps[:, 0], steps[:, 1]) == pytest.approx(np.full(5, 2.0))
    t0, t5 = frames[0].truth.set_index("truth_id"), frames[5].truth.set_index("truth_id")
    common = t0.index.intersection(t5.index)
    shift = t5.loc[common, ["x_px", "y_px"]].to_numpy() - t0.loc[common, ["x_px", "y_px"]].to_numpy()
    assert shift == pytest.approx(np.tile(frames[5].drift_px, (len(common), 1)))


def test_simulated_source_is_a_frame_source():
    cfg = SimulationConfig(scenario="liquid", seed=0, n_frames=3, size_px=64, pixel_size_nm=0.8)
    with SimulatedSource(cfg) as src:
        assert isinstance(src, FrameSource)
        assert src.pixel_size_source == "metadata" and src.n_frames == 3
        frames = list(src)
        assert all(isinstance(f, Frame) for f in frames)
        assert [f.index for f in frames] == [0, 1, 2]
        assert frames[2].timestamp_s == pytest.approx(2 * cfg.frame_interval_s)
        assert frames[0].pixel_size_nm == 0.8 and frames[0].image.dtype == np.uint16
        assert src.last_truth is not None and (src.last_truth["frame"] == 2).all()
        ref = _frames(scenario="liquid", seed=0, n_frames=3, size_px=64, pixel_size_nm=0.8)
        assert np.array_equal(frames[-1].image, ref[-1].image)


def test_write_simulation_round_trip(tmp_path):
    cfg = SimulationConfig(scenario="coalescence", seed=7, n_frames=8, size_px=96,
                           pixel_size_nm=0.4, frame_interval_s=0.25)
    paths = write_simulation(tmp_path / "movie.tif", cfg)
    assert set(paths) == {"movie", "labels", "truth", "events", "meta"}
    ref = _frames(scenario="coalescence", seed=7, n_frames=8, size_px=96, pixel_size_nm=0.4,
                  frame_interval_s=0.25)
    with tifffile.TiffFile(paths["movie"]) as tf:
        assert tf.is_imagej and len(tf.pages) == 8
        ij = tf.imagej_metadata
        assert ij["unit"] == "nm" and ij["finterval"] == pytest.approx(0.25)
        info = json.loads(ij["Info"])
        assert info["pixel_size_nm"] == 0.4 and info["frame_interval_s"] == 0.25
        assert info["scenario"] == "coalescence" and info["seed"] == 7
        num, den = tf.pages[0].tags["XResolution"].value
        assert den / num == pytest.approx(0.4)
        movie = tf.asarray()
    assert movie.dtype == np.uint16 and movie.shape == (8, 96, 96)
    assert np.array_equal(movie, np.stack([f.image for f in ref]))
    labels = tifffile.imread(paths["labels"])
    assert np.array_equal(labels, np.stack([f.labels for f in ref]))
    truth = pd.read_csv(paths["truth"])
    assert list(truth.columns) == list(TRUTH_COLUMNS)
    expected = pd.concat([f.truth for f in ref], ignore_index=True)
    assert np.array_equal(truth["truth_id"], expected["truth_id"])
    assert truth["diameter_nm"].to_numpy() == pytest.approx(expected["diameter_nm"], rel=1e-5)
    events = pd.read_csv(paths["events"], dtype={"ids": str})
    assert list(events.columns) == ["frame", "kind", "ids", "into_id"]
    ref_events = [e for f in ref for e in f.events]
    assert len(events) == len(ref_events)
    for row, ev in zip(events.itertuples(), ref_events, strict=True):
        assert (row.frame, row.kind) == (ev.frame, ev.kind)
        assert tuple(int(i) for i in row.ids.split()) == ev.ids
    meta = json.loads(paths["meta"].read_text())
    assert meta["pixel_size_nm"] == 0.4 and meta["config"]["seed"] == 7


def test_write_simulation_rejects_bad_paths(tmp_path):
    cfg = SimulationConfig(n_frames=1, size_px=32)
    with pytest.raises(InputError, match="does not exist"):
        write_simulation(tmp_path / "missing" / "m.tif", cfg)
    with pytest.raises(InputError, match=r"\.tif"):
        write_simulation(tmp_path / "m.png", cfg)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scenario": "boiling"}, "unknown simulation scenario 'boiling'"),
        ({"n_frames": 0}, "n_frames must be in"),
        ({"size_px": 4}, "size_px must be in"),
        ({"size_px": 64.5}, "size_px must be an integer"),
        ({"pixel_size_nm": -1.0}, "pixel_size_nm must be positive"),
        ({"pixel_size_nm": float("nan")}, "pixel_size_nm must be positive"),
        ({"frame_interval_s": 0.0}, "frame_interval_s must be finite"),
        ({"dose_e_per_px": -5.0}, "dose_e_per_px must be finite"),
        ({"ripening_exponent": 7.0}, "ripening_exponent must be finite"),
        ({"blur_sigma_px": "wide"}, "blur_sigma_px must be a number"),
        ({"supersample": 2}, "supersample must be odd"),
        ({"bright_field": "yes"}, "bright_field must be True or False"),
    ],
)
def test_bad_config_raises_one_readable_line(kwargs, match):
    with pytest.raises(EtemliveError, match=match) as info:
        SimulationConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_training_sample_is_reproducible_and_labelled():
    a = render_training_sample(np.random.default_rng(11), 96)
    b = render_training_sample(np.random.default_rng(11), 96)
    image, labels, params = a
    assert image.dtype == np.float32 and image.shape == (96, 96)
    assert labels.dtype == np.uint16 and labels.shape == (96, 96)
    assert np.array_equal(image, b[0]) and np.array_equal(labels, b[1]) and params == b[2]
    assert set(TRAINING_PARAMETERS) <= set(params)
    assert params["n_particles"] == len(np.unique(labels[labels > 0]))


def test_training_samples_span_the_requested_ranges():
    rng = np.random.default_rng(5)
    draws = [render_training_sample(rng, 64) for _ in range(40)]
    params = [p for _, _, p in draws]
    px = np.array([p["pixel_size_nm"] for p in params])
    assert px.min() >= 0.05 and px.max() <= 2.0 and px.max() / px.min() > 5
    d_nm = np.array([p["mean_diameter_nm"] for p in params])
    assert d_nm.min() >= 1.0 and d_nm.max() <= 100.0
    assert (d_nm / px >= 4.0 - 1e-9).all()  # particles at least ~4 px across
    doses = np.array([p["dose_e_per_px"] for p in params])
    assert doses.min() < 30 and doses.max() > 300
    assert {p["bright_field"] for p in params} == {True, False}
    assert len({p["scene"] for p in params}) >= 3 and len({p["solids"] for p in params}) >= 3


@pytest.mark.parametrize("bright_field", [True, False])
def test_training_sample_overrides_and_polarity(bright_field):
    image, labels, params = render_training_sample(
        np.random.default_rng(2), 128, bright_field=bright_field, dose_e_per_px=2000.0,
        scene="medium", pixel_size_nm=0.5, mean_diameter_nm=8.0, liquid_thickness_nm=0.0,
        motion_blur_px=0.0, particle_mfp_nm=20.0)
    assert params["bright_field"] is bright_field and params["pixel_size_nm"] == 0.5
    assert labels.max() > 0
    inside, outside = image[labels > 0].mean(), image[labels == 0].mean()
    assert (inside < outside) if bright_field else (inside > outside)


def test_training_sample_rejects_unknown_override():
    with pytest.raises(InputError, match="unknown parameter"):
        render_training_sample(np.random.default_rng(0), 64, brightness=3)


def _fit_ripening_exponent(t_s, r_nm):
    from scipy.optimize import curve_fit

    def model(t, n, k, r0):
        return (np.abs(r0) ** n + np.abs(k) * t) ** (1.0 / n)

    p0 = [2.5, (r_nm[-1] ** 2.5 - r_nm[0] ** 2.5) / t_s[-1], r_nm[0]]
    params, _ = curve_fit(model, t_s, r_nm, p0=p0, maxfev=20000)
    return params[0]


@pytest.mark.parametrize("n", [3.0, 2.0])
def test_ripening_mean_radius_recovers_the_exponent(n):
    # 4 nm particles: enough of them in a small 256 px field for a stable mean.
    cfg = SimulationConfig(scenario="ripening", seed=0, n_frames=60, size_px=256,
                           mean_diameter_nm=4.0, ripening_exponent=n, drift_px_per_frame=0.0)
    t_s, r_nm = [], []
    for f in simulate(cfg):
        t_s.append(f.time_s)
        r_nm.append(f.truth["radius_nm"].mean())
    t_s, r_nm = np.array(t_s), np.array(r_nm)
    assert _fit_ripening_exponent(t_s, r_nm) == pytest.approx(n, abs=0.3)
    # with n fixed at the truth, the slope of <r>^n is the K the metadata reports
    k_fit = np.polyfit(t_s, r_nm**n, 1)[0]
    from etemlive.sources.simulate import Simulation
    k_true = Simulation(cfg).metadata["ripening"]["K_mean_radius_nm_n_per_s"]
    assert k_fit == pytest.approx(k_true, rel=0.15)


def test_split_events_conserve_volume():
    frames = _frames(scenario="shapes", seed=4, n_frames=12, size_px=160, split_rate_per_s=0.1,
                     drift_px_per_frame=0.0)
    splits = [(i, e) for i, f in enumerate(frames) for e in f.events if e.kind == "split"]
    assert splits
    for i, ev in splits:
        before = frames[i - 1].truth.set_index("truth_id")
        after = frames[i].truth.set_index("truth_id")
        a, b = ev.ids
        if ev.into_id not in before.index or a not in after.index or b not in after.index:
            continue
        assert ev.into_id not in after.index
        assert after.loc[[a, b], "volume_nm3"].sum() == pytest.approx(
            before.loc[ev.into_id, "volume_nm3"], rel=1e-9)


@pytest.mark.parametrize("blocked", ["movie.tif", "movie_labels.tif"])
def test_write_simulation_failure_is_one_line_and_does_not_hang(tmp_path, blocked):
    (tmp_path / blocked).mkdir()  # a folder where a file must go
    cfg = SimulationConfig(scenario="shapes", n_frames=3, size_px=32)
    with pytest.raises(InputError, match="cannot write") as info:
        write_simulation(tmp_path / "movie.tif", cfg)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("scenario", ["ripening", "nucleation", "coalescence"])
def test_events_are_observable_in_the_field_of_view(scenario):
    frames = _frames(scenario=scenario, seed=0, n_frames=30, size_px=128, drift_px_per_frame=1.5)
    events = [e for f in frames for e in f.events]
    assert events
    for e in events:
        now = set(frames[e.frame].truth["truth_id"])
        before = set(frames[e.frame - 1].truth["truth_id"])
        if e.kind == "vanish":
            assert e.ids[0] in before and e.ids[0] not in now
        elif e.kind == "appear":
            assert e.ids[0] in now and e.ids[0] not in before
        else:
            assert e.into_id in now or any(i in before for i in e.ids)


def test_config_round_trips_through_the_meta_file(tmp_path):
    cfg = SimulationConfig(scenario="nucleation", seed=9, n_frames=5, size_px=64)
    paths = write_simulation(tmp_path / "m.tif", cfg)
    saved = json.loads(paths["meta"].read_text())["config"]
    again = SimulationConfig.from_dict(saved)
    assert again == cfg.resolved()
    a, b = _frames(**dataclasses.asdict(cfg)), list(simulate(again))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    with pytest.raises(InputError, match="unknown simulation setting"):
        SimulationConfig.from_dict({**saved, "warp_speed": 9})
