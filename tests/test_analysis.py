"""Tests of etemlive.analysis: distribution fits, kinetics, live updates, output folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etemlive.analysis import (
    DISTRIBUTION_COLUMNS,
    NOT_ENOUGH_DATA,
    PLOT_NAMES,
    LiveAnalysis,
    analyze_output,
    fit_coarsening_kinetics,
    fit_size_distribution,
    growth_rate_vs_size,
    ks_to_reduced,
    mean_radius_series,
    merge_rate,
    reduced_size_pdf,
    size_distributions_table,
)
from etemlive.errors import InputError


# ----------------------------------------------------------------------------- helpers
def lsw_ripening_particles(
    *, n0: int = 300, n_frames: int = 40, k_diff: float = 3.0, dt: float = 0.5, seed: int = 0,
    noise: float = 0.01,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Particles coarsening by diffusion-limited LSW growth, dr/dt = K/r (1/<r> - 1/r).

    Returns (particles table in the particles.csv format, events with 'vanish' rows).
    """
    rng = np.random.default_rng(seed)
    r = np.clip(rng.normal(5.0, 1.0, n0), 2.0, None)
    alive = np.ones(n0, bool)
    frames, events = [], []
    for f in range(n_frames):
        ids = np.flatnonzero(alive)
        d = 2 * r[ids] * (1 + rng.normal(0, noise, ids.size))
        frames.append(pd.DataFrame({
            "frame": f, "time_s": f * dt, "track_id": ids, "x_px": rng.uniform(0, 500, ids.size),
            "y_px": rng.uniform(0, 500, ids.size), "diameter_nm": d,
            "touches_edge": False,
        }))
        for _ in range(20):  # sub-steps of the ODE
            rc = r[alive].mean()
            r = np.where(alive, r + dt / 20 * k_diff / r * (1 / rc - 1 / r), r)
            dead = alive & (r < 1.0)
            events += [(f + 1, "vanish", str(i), "") for i in np.flatnonzero(dead)]
            alive &= ~dead
    ev = pd.DataFrame(events, columns=["frame", "kind", "track_ids", "into_id"])
    return pd.concat(frames, ignore_index=True), ev


def write_folder(out: Path, particles: pd.DataFrame, events: pd.DataFrame | None,
                 frame_interval_s: float | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    particles.to_csv(out / "particles.csv", index=False)
    if events is not None:
        events.to_csv(out / "events.csv", index=False)
    (out / "summary.json").write_text(json.dumps({
        "input": "synthetic.tif", "pixel_size_nm": 0.5, "pixel_size_source": "user",
        "frame_interval_s": frame_interval_s, "backend": "classical", "fps": 12.0,
        "latency_p50_ms": 20.0, "latency_p99_ms": 45.0, "frames_analysed": 40,
        "version": "test",
    }))
    return out


# ----------------------------------------------------------------------------- distributions
@pytest.mark.parametrize("seed", [0, 1])
def test_normal_sample_recovered(seed):
    rng = np.random.default_rng(seed)
    d = rng.normal(8.0, 0.8, 400)
    fit = fit_size_distribution(d, n_bootstrap=40, seed=seed)
    assert fit.status == "ok" and fit.n == 400
    normal = fit.models["normal"].components[0]
    assert normal.mean_nm == pytest.approx(d.mean(), rel=1e-6)
    assert normal.std_nm == pytest.approx(d.std(), rel=1e-3)  # ML estimate (ddof 0)
    # bootstrap standard error ~ sigma / sqrt(n)
    assert normal.mean_err_nm == pytest.approx(0.8 / math.sqrt(400), rel=0.35)
    assert fit.n_families == 1


def test_lognormal_sample_prefers_lognormal():
    rng = np.random.default_rng(3)
    d = rng.lognormal(np.log(6.0), 0.35, 800)
    fit = fit_size_distribution(d, n_bootstrap=0)
    assert fit.best == "lognormal"
    c = fit.models["lognormal"].components[0]
    assert c.log_mean == pytest.approx(np.log(6.0), abs=0.04)
    assert c.log_std == pytest.approx(0.35, abs=0.03)
    expected_mean = 6.0 * math.exp(0.35**2 / 2)
    assert c.mean_nm == pytest.approx(expected_mean, rel=0.04)
    assert math.isnan(c.mean_err_nm)  # n_bootstrap=0: no uncertainties


@pytest.mark.parametrize(("means", "stds", "w1"), [((5.0, 12.0), (0.6, 1.5), 0.7),
                                                     ((8.0, 14.0), (1.0, 1.2), 0.4)])
def test_bimodal_bic_picks_two_families(means, stds, w1):
    rng = np.random.default_rng(7)
    n = 1000
    n1 = int(round(w1 * n))
    d = np.concatenate([rng.normal(means[0], stds[0], n1), rng.normal(means[1], stds[1], n - n1)])
    fit = fit_size_distribution(d, n_bootstrap=30)
    assert fit.n_families == 2
    comps = fit.best_fit.components
    assert [c.mean_nm for c in comps] == pytest.approx(list(means), rel=0.05)
    assert comps[0].weight == pytest.approx(w1, abs=0.05)
    assert sum(c.weight for c in comps) == pytest.approx(1.0)
    assert all(c.mean_err_nm > 0 and c.weight_err > 0 for c in comps)
    # the truth lies within 4 bootstrap standard errors
    assert abs(comps[1].mean_nm - means[1]) < 4 * comps[1].mean_err_nm + 0.05


@pytest.mark.parametrize("d", [[], [5.0] * 10, np.r_[np.full(15, 4.0), [np.nan, -1, 0, np.inf] * 5]])
def test_too_few_particles_is_a_result(d):
    fit = fit_size_distribution(d)
    assert fit.status == NOT_ENOUGH_DATA
    assert fit.models == {} and fit.best is None and fit.n_families == 0


def test_fit_is_seeded_and_input_untouched():
    rng = np.random.default_rng(0)
    d = np.concatenate([rng.normal(5, 0.5, 200), rng.normal(9, 0.8, 200)])
    before = d.copy()
    a = fit_size_distribution(d, seed=4, n_bootstrap=10)
    b = fit_size_distribution(d, seed=4, n_bootstrap=10)
    assert a.best_fit.components == b.best_fit.components
    np.testing.assert_array_equal(d, before)
    with pytest.raises(ValueError, match="max_components"):
        fit_size_distribution(d, max_components=0)


def _lsw_pdf_independent(rho):
    """LSW reduced radius density written out from the textbook formula (u = rho, <u> = 1)."""
    u = np.asarray(rho, float)
    out = np.zeros_like(u)
    m = (u > 0) & (u < 1.5)
    um = u[m]
    out[m] = (4 / 9) * um**2 * (3 / (3 + um)) ** (7 / 3) * (1.5 / (1.5 - um)) ** (11 / 3) * np.exp(
        -um / (1.5 - um))
    return out


def test_lsw_curves_shape():
    rho = np.linspace(0, 2.5, 20001)
    step = rho[1] - rho[0]
    for kind, rho_max in (("lsw", 1.5), ("wagner", 2.25)):
        pdf = reduced_size_pdf(rho, kind)
        assert pdf.sum() * step == pytest.approx(1.0, abs=2e-3)
        assert (rho * pdf).sum() * step == pytest.approx(1.0, abs=2e-3)  # <rho> = 1
        assert pdf[rho > rho_max + 0.01].max() == 0
    # the textbook closed form (normalised to 1 with mean 1) matches
    np.testing.assert_allclose(reduced_size_pdf(rho, "lsw")[::50], _lsw_pdf_independent(rho)[::50],
                               atol=0.02)


def test_ks_distinguishes_lsw_from_wagner():
    rng = np.random.default_rng(0)
    # rejection-sample the textbook LSW density
    cand = rng.uniform(0, 1.5, 200000)
    keep = rng.uniform(0, 2.2, cand.size) < _lsw_pdf_independent(cand)
    r = cand[keep][:3000]
    assert ks_to_reduced(2 * r, "lsw") < 0.04
    assert ks_to_reduced(2 * r, "wagner") > ks_to_reduced(2 * r, "lsw") + 0.03
    assert math.isnan(ks_to_reduced([], "lsw"))


# ----------------------------------------------------------------------------- kinetics
@pytest.mark.parametrize("n_true", [2.0, 3.0, 4.0])
def test_kinetics_recovers_exponent(n_true):
    rng = np.random.default_rng(int(n_true))
    t = np.linspace(0, 200, 80)
    r0, r_end = 4.0, 12.0
    k = (r_end**n_true - r0**n_true) / t[-1]
    r = (r0**n_true + k * t) ** (1 / n_true) * (1 + rng.normal(0, 0.004, t.size))
    fit = fit_coarsening_kinetics(t, r)
    assert fit.status == "ok" and fit.n_points == 80
    assert fit.n == pytest.approx(n_true, abs=0.3)
    assert fit.n_ci_low <= n_true <= fit.n_ci_high  # 95 % interval
    assert fit.k == pytest.approx(k, rel=0.5)
    assert fit.r0_nm == pytest.approx(r0, rel=0.03)
    np.testing.assert_allclose(fit.predict(t), r, rtol=0.02)
    expected = {2.0: "interface-limited", 3.0: "diffusion-limited", 4.0: "undetermined"}[n_true]
    assert fit.mechanism.startswith(expected)


def test_kinetics_time_origin_and_order_do_not_matter():
    t = np.linspace(50, 150, 40)
    r = (5.0**3 + 2.0 * (t - 50)) ** (1 / 3)
    a = fit_coarsening_kinetics(t, r)
    perm = np.random.default_rng(0).permutation(t.size)
    b = fit_coarsening_kinetics(t[perm], r[perm])
    assert a.n == pytest.approx(3.0, abs=0.05) and b.n == pytest.approx(a.n, abs=1e-6)
    assert a.t0 == 50


@pytest.mark.parametrize(("t", "r", "status"), [
    ([0, 1, 2], [1, 2, 3], NOT_ENOUGH_DATA),
    ([], [], NOT_ENOUGH_DATA),
    (np.arange(20.0), np.full(20, 5.0), "no coarsening"),
    (np.zeros(10), np.arange(1.0, 11.0), NOT_ENOUGH_DATA),  # no time span
])
def test_kinetics_without_enough_data(t, r, status):
    fit = fit_coarsening_kinetics(t, r)
    assert fit.status == status
    assert math.isnan(fit.n) and fit.mechanism == "undetermined"
    assert np.isnan(fit.predict(np.array([1.0]))).all()


def test_kinetics_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        fit_coarsening_kinetics([0, 1, 2], [1, 2])


def test_growth_rate_vs_size_finds_critical_radius():
    # dr/dt = K (r - r*) / r^3 with r* = 5 nm, constant during the short segments
    rng = np.random.default_rng(2)
    n_tracks, n_frames = 120, 10
    r0 = rng.uniform(3.0, 8.0, n_tracks)
    rate = 4.0 * (r0 - 5.0) / r0**3
    f = np.tile(np.arange(n_frames), n_tracks)
    tid = np.repeat(np.arange(n_tracks), n_frames)
    r = r0[tid] + rate[tid] * f * 0.1
    p = pd.DataFrame({"frame": f, "time_s": f * 0.1, "track_id": tid, "diameter_nm": 2 * r,
                      "touches_edge": False})
    points, summary = growth_rate_vs_size(p, segment_frames=10)
    assert len(points) == n_tracks
    np.testing.assert_allclose(points.sort_values("track_id")["drdt_nm_per_s"], rate, rtol=1e-6)
    assert summary["status"] == "ok"
    assert summary["critical_radius_nm"] == pytest.approx(5.0, rel=0.1)
    assert summary["fraction_shrinking"] == pytest.approx(np.mean(rate < 0))


def test_merge_rate_counts_merges_per_time():
    series = pd.DataFrame({"frame": np.arange(10), "time_s": np.arange(10) * 2.0,
                           "count": np.full(10, 50)})
    events = pd.DataFrame({"frame": [1, 2, 2, 8, 3], "kind": ["merge", "merge", "merge", "merge",
                                                              "vanish"],
                           "track_ids": ["1 2", "3 4", "5 6", "7 8", "9"],
                           "into_id": [1, 3, 5, 7, None]})
    out = merge_rate(events, series, n_bins=2)
    assert out["total_merges"] == 4 and out["total_vanish"] == 1
    # bins [0, 9) and [9, 18] s: 3 merges in the first (9 s), 1 in the second
    assert out["merges_per_time"] == pytest.approx([3 / 9, 1 / 9])
    assert out["merges_per_particle_per_time"][0] == pytest.approx(3 / 9 / 50)
    assert out["merge_fraction_of_disappearances"] == pytest.approx(0.8)
    assert merge_rate(None, series)["total_merges"] == 0


# ----------------------------------------------------------------------------- tables
def test_size_distributions_table_windows_and_edges():
    rng = np.random.default_rng(0)
    rows = []
    for f in range(6):
        d = rng.normal(6.0 + f, 0.5, 40)
        rows.append(pd.DataFrame({"frame": f, "time_s": 0.5 * f, "track_id": np.arange(40) + 100 * f,
                                  "diameter_nm": d, "touches_edge": False}))
    p = pd.concat(rows, ignore_index=True)
    p.loc[p.index[:5], ["diameter_nm", "touches_edge"]] = [500.0, True]  # cut particles: ignored
    table = size_distributions_table(p, window_frames=2, n_bootstrap=5)
    assert list(table.columns) == list(DISTRIBUTION_COLUMNS)
    assert sorted(table["window_start_frame"].unique()) == [0, 2, 4]
    assert set(table["model"]) >= {"normal", "lognormal", "normal_mixture", "lognormal_mixture"}
    sel = table[table["selected"]]
    assert sel.groupby("window_start_frame")["model"].nunique().eq(1).all()
    first = table[(table["window_start_frame"] == 0) & (table["model"] == "normal")].iloc[0]
    assert first["n"] == 75 and first["n_tracks"] == 75  # 80 rows minus 5 cut
    assert first["mean_nm"] == pytest.approx(p[(p.frame < 2) & ~p.touches_edge]["diameter_nm"].mean())
    assert first["window_end_time_s"] == 0.5


def test_size_distributions_table_counts_each_particle_once():
    # 30 particles seen in 10 frames: the fit uses 30 values (one per track), not 300
    rng = np.random.default_rng(1)
    d0 = rng.normal(7.0, 1.0, 30)
    p = pd.DataFrame({"frame": np.repeat(np.arange(10), 30), "time_s": np.repeat(np.arange(10.0), 30),
                      "track_id": np.tile(np.arange(30), 10), "diameter_nm": np.tile(d0, 10),
                      "touches_edge": False})
    table = size_distributions_table(p, window_frames=10, n_bootstrap=0)
    row = table[table["model"] == "normal"].iloc[0]
    assert row["n"] == 300 and row["n_tracks"] == 30
    assert row["n_components"] == 1
    assert row["std_nm"] == pytest.approx(d0.std(), rel=1e-3)


def test_size_distributions_table_small_and_empty():
    p = pd.DataFrame({"frame": [0, 0, 1], "time_s": [0.0, 0.0, 1.0], "diameter_nm": [3.0, 4.0, 5.0],
                      "touches_edge": [False, False, False]})
    table = size_distributions_table(p)
    assert list(table["status"]) == [NOT_ENOUGH_DATA, NOT_ENOUGH_DATA]
    assert list(table["model"]) == ["none", "none"]
    empty = size_distributions_table(pd.DataFrame())
    assert list(empty.columns) == list(DISTRIBUTION_COLUMNS) and len(empty) == 0


def test_mean_radius_series_excludes_edge_particles():
    p = pd.DataFrame({"frame": [0, 0, 0, 1], "time_s": [0.0, 0.0, 0.0, 2.0],
                      "diameter_nm": [4.0, 6.0, 100.0, 8.0],
                      "touches_edge": ["False", "False", "True", "False"]})
    s = mean_radius_series(p)
    assert list(s["count"]) == [3, 1] and list(s["n_sized"]) == [2, 1]
    assert list(s["mean_radius_nm"]) == pytest.approx([2.5, 4.0])
    assert list(s["time_s"]) == [0.0, 2.0]


# ----------------------------------------------------------------------------- live
def test_live_analysis_refits_every_n_frames():
    particles, _ = lsw_ripening_particles(n0=200, n_frames=30, k_diff=20.0, dt=1.0)
    live = LiveAnalysis(update_every_n_frames=10, window_frames=5)
    results = []
    for f, rows in particles.groupby("frame"):
        res = live.update(rows)
        if res is not None:
            results.append(res)
            assert res.frame == f
    assert [r.frame for r in results] == [9, 19, 29]
    last = results[-1]
    assert last.distribution.status == "ok"
    # each tracked particle counted once over the 5-frame window
    assert last.distribution.n == particles[particles.frame >= 25]["track_id"].nunique()
    assert last.kinetics.status == "ok" and last.kinetics.n_points == 30
    assert live.latest is last
    # an empty frame is fine
    assert live.update(particles.iloc[:0], time_s=31.0) is None
    with pytest.raises(ValueError, match=">= 1"):
        LiveAnalysis(update_every_n_frames=0)


# ----------------------------------------------------------------------------- output folder
def test_analyze_output_writes_everything(tmp_path):
    particles, events = lsw_ripening_particles(n0=250, n_frames=30, k_diff=20.0, dt=1.0)
    out = write_folder(tmp_path / "run", particles, events, frame_interval_s=1.0)
    res = analyze_output(out, n_bootstrap=5, window_frames=10)
    dist = pd.read_csv(out / "distributions.csv")
    assert list(dist.columns) == list(DISTRIBUTION_COLUMNS) and len(dist) > 0
    kin = json.loads((out / "kinetics.json").read_text())
    assert kin["time_unit"] == "s" and kin["notes"] == []
    assert kin["coarsening"]["status"] == "ok"
    assert kin["merge_rate"]["total_vanish"] == len(events)
    assert kin["growth_rate_vs_size"]["status"] == "ok"
    # LSW: small particles shrink, large grow; r* close to <r>
    assert 0.7 < kin["growth_rate_vs_size"]["critical_over_mean"] < 1.3
    assert kin["number_density"]["count"][0] == 250
    assert set(res["plots"]) == set(PLOT_NAMES)
    for name in PLOT_NAMES:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and res["plots"][name] == png


def test_analyze_output_without_frame_interval_says_frames(tmp_path):
    particles, events = lsw_ripening_particles(n0=60, n_frames=12, dt=1.0)
    out = write_folder(tmp_path / "run", particles, events, frame_interval_s=None)
    res = analyze_output(out, n_bootstrap=0, plots=False)
    assert res["time_unit"] == "frame"
    kin = json.loads((out / "kinetics.json").read_text())
    assert kin["time_unit"] == "frame" and "frame" in kin["notes"][0]
    assert kin["coarsening"]["k_unit"] == "nm^n/frame"


def test_analyze_output_on_empty_and_missing_folders(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    (out / "particles.csv").write_text("frame,time_s,track_id,diameter_nm,touches_edge\n")
    res = analyze_output(out)
    assert res["final_fit"].status == NOT_ENOUGH_DATA
    kin = json.loads((out / "kinetics.json").read_text())  # valid JSON (no NaN)
    assert kin["coarsening"]["status"] == NOT_ENOUGH_DATA
    assert (out / "size_histogram.png").is_file()
    with pytest.raises(InputError, match="not found"):
        analyze_output(tmp_path / "nope")
