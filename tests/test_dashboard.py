"""The live dashboard: array helpers, and a real Qt window (offscreen) with pixel checks.

The window is fed real snapshots: simulator frames (exact instance labels) measured
with etemlive.measure, or the real pipeline running on a simulated movie. The snapshot
provider in ``SimProvider`` is the system edge the dashboard reads from.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pandas as pd
import pytest

from etemlive import dashboard as dash
from etemlive.errors import InputError
from etemlive.snapshot import PipelineSnapshot, PipelineStats

# --------------------------------------------------------------------------- helpers (no Qt)


def test_boundary_mask_marks_inner_boundaries_of_each_label():
    labels = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 2, 2],
            [0, 1, 1, 1, 2, 2],
            [0, 0, 0, 0, 0, 0],
        ]
    )
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 1, 0, 1, 1, 1],
            [0, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    before = labels.copy()
    np.testing.assert_array_equal(dash.boundary_mask(labels), expected)
    np.testing.assert_array_equal(labels, before)  # input not modified
    buffer = np.ones(labels.shape, dtype=bool)  # stale content must be cleared
    assert dash.boundary_mask(labels, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, expected)


def test_boundary_mask_frame_edge_is_not_a_boundary():
    labels = np.full((4, 4), 3)
    assert not dash.boundary_mask(labels).any()


def test_outline_renderer_colours_only_boundaries():
    labels = np.zeros((8, 8), dtype=np.int32)
    labels[2:6, 2:6] = 1
    lut = np.array([[0, 0, 0, 0], [10, 200, 30, 255]], dtype=np.uint8)
    thin = dash.OutlineRenderer(width_px=1).render(labels, lut)
    ring = np.zeros((8, 8), dtype=bool)
    ring[2:6, 2:6] = True
    ring[3:5, 3:5] = False
    np.testing.assert_array_equal(thin[ring], np.tile(lut[1], (ring.sum(), 1)))
    assert not thin[~ring].any()  # transparent elsewhere (alpha 0 too)

    renderer = dash.OutlineRenderer(width_px=2)
    wide = renderer.render(labels, lut)
    # Widened by a 2 x 2 maximum: the ring shifted down, right and diagonally.
    coloured = wide[..., 3] > 0
    expected = ring.copy()
    expected[1:] |= ring[:-1]
    expected[:, 1:] |= ring[:, :-1]
    expected[1:, 1:] |= ring[:-1, :-1]
    np.testing.assert_array_equal(coloured, expected)
    # Two buffers alternate, so the image a view still holds is not overwritten.
    again = renderer.render(labels, lut)
    assert again is not wide
    np.testing.assert_array_equal(again, wide)
    assert renderer.render(labels, lut) is wide


def test_outline_renderer_rejects_bad_width():
    with pytest.raises(ValueError, match="width_px must be 1 or 2"):
        dash.OutlineRenderer(width_px=3)


def _particles(labels, tracks, shapes):
    return pd.DataFrame({"label": labels, "track_id": tracks, "shape": shapes})


def test_label_colour_lut_by_shape_track_and_selection():
    table = _particles([1, 2, 4], [7, 8, 9], ["round", "elongated", "round"])
    lut = dash.label_colour_lut(table, 6, colour_by="shape")
    assert lut.shape == (6, 4) and lut.dtype == np.uint8
    assert tuple(lut[0]) == (0, 0, 0, 0)
    assert tuple(lut[1]) == dash.SHAPE_COLOURS["round"]
    assert tuple(lut[2]) == dash.SHAPE_COLOURS["elongated"]
    assert tuple(lut[4]) == dash.SHAPE_COLOURS["round"]
    assert tuple(lut[3]) == dash.UNKNOWN_COLOUR  # no row for label 3
    assert tuple(lut[5]) == dash.UNKNOWN_COLOUR

    lut = dash.label_colour_lut(table, 6, colour_by="track", selected_tracks=[8])
    assert tuple(lut[1]) == tuple(dash.TRACK_PALETTE[7 % len(dash.TRACK_PALETTE)])
    assert tuple(lut[4]) == tuple(dash.TRACK_PALETTE[9 % len(dash.TRACK_PALETTE)])
    assert tuple(lut[2]) == dash.SELECTED_COLOUR


def test_label_colour_lut_tolerates_missing_and_out_of_range_values():
    table = _particles([1, 50, np.nan], [np.nan, 3, 4], ["square", "round", "mystery"])
    lut = dash.label_colour_lut(table, 3, colour_by="track")
    assert tuple(lut[1]) == dash.UNKNOWN_COLOUR  # untracked particle stays grey
    empty = dash.label_colour_lut(pd.DataFrame(), 4)
    assert tuple(empty[0]) == (0, 0, 0, 0) and tuple(empty[3]) == dash.UNKNOWN_COLOUR
    with pytest.raises(ValueError, match="colour_by must be"):
        dash.label_colour_lut(table, 3, colour_by="size")


def test_unknown_shape_names_get_a_stable_saturated_colour():
    a = dash.shape_colour_table(["blob"])["blob"]
    assert a == dash.shape_colour_table(["blob", "round"])["blob"]
    assert max(a[:3]) - min(a[:3]) > 80


@pytest.mark.parametrize(
    ("field_nm", "expected"),
    [(1000.0, 200.0), (512.0, 100.0), (37.0, 5.0), (3.0, 0.5), (20000.0, 2000.0)],
)
def test_nice_scale_bar_nm(field_nm, expected):
    assert dash.nice_scale_bar_nm(field_nm) == pytest.approx(expected)


@pytest.mark.parametrize("bad", [0.0, -5.0, float("nan"), float("inf")])
def test_nice_scale_bar_rejects_bad_field(bad):
    with pytest.raises(ValueError, match="positive and finite"):
        dash.nice_scale_bar_nm(bad)


def test_format_length_nm():
    assert dash.format_length_nm(200.0) == "200 nm"
    assert dash.format_length_nm(0.5) == "0.5 nm"
    assert dash.format_length_nm(2000.0) == "2 µm"


def test_contrast_levels_percentiles_flat_and_nan():
    image = np.arange(10000, dtype=np.float32).reshape(100, 100)
    low, high = dash.contrast_levels(image, (1.0, 99.0))
    assert low == pytest.approx(np.percentile(image, 1.0))
    assert high == pytest.approx(np.percentile(image, 99.0))
    assert dash.contrast_levels(np.full((5, 5), 7, np.uint16)) == (7.0, 8.0)
    with_nan = image.copy()
    with_nan[:50] = np.nan
    low, high = dash.contrast_levels(with_nan, (0.0, 100.0))
    assert (low, high) == (5000.0, 9999.0)
    assert dash.contrast_levels(np.full((4, 4), np.nan, np.float32)) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("shape", "factor", "shown"),
    [((512, 512), 1, (512, 512)), ((2048, 2048), 2, (1024, 1024)),
     ((2049, 100), 3, (683, 34)), ((4096, 1000), 4, (1024, 250))],
)
def test_display_downsampling_keeps_image_and_labels_on_one_grid(shape, factor, shown):
    assert dash.display_factor(shape) == factor
    image = np.zeros(shape, dtype=np.uint16)
    labels = np.zeros(shape, dtype=np.int32)
    assert dash.downsample_image(image, factor).shape == shown
    assert dash.downsample_labels(labels, factor).shape == shown


def test_downsample_image_averages_areas():
    image = np.array([[0, 4, 8, 8], [0, 4, 8, 8]], dtype=np.float32)
    np.testing.assert_allclose(dash.downsample_image(image, 2), [[2.0, 8.0]])
    buffer = np.full((1, 2), -1.0, dtype=np.float32)
    assert dash.downsample_image(image, 2, out=buffer) is buffer  # written in place
    np.testing.assert_allclose(buffer, [[2.0, 8.0]])
    wrong = np.zeros((1, 2), dtype=np.uint16)  # wrong dtype: a new array instead
    assert dash.downsample_image(image, 2, out=wrong) is not wrong


def test_size_histogram_and_lognormal_fit_by_moments():
    rng = np.random.default_rng(3)
    d = rng.lognormal(2.0, 0.25, 400)
    d_with_junk = np.concatenate([d, [np.nan, -1.0, 0.0, np.inf]])
    counts, edges = dash.size_histogram(d_with_junk)
    assert counts.sum() == 400 and len(edges) == len(counts) + 1 == 21
    mu, sigma = dash.fit_lognormal_moments(d_with_junk)
    assert mu == pytest.approx(np.log(d).mean())
    assert sigma == pytest.approx(np.log(d).std(ddof=1))
    x, y, name = dash.fitted_curve(d, edges)
    # The curve is in counts per bin: its integral over x, divided by the bin width, is n.
    assert np.trapezoid(y, x) / (edges[1] - edges[0]) == pytest.approx(400, rel=0.03)
    assert name in ("log-normal", "normal")
    assert dash.fitted_curve(d[:2], edges) is None
    assert dash.fit_lognormal_moments([5.0, 5.0, 5.0]) is None
    counts, edges = dash.size_histogram(np.array([np.nan]))
    assert counts.sum() == 0 and np.isfinite(edges).all()


def test_lognormal_pdf_matches_scipy():
    from scipy import stats

    x = np.array([0.0, 0.5, 2.0, 10.0])
    expected = stats.lognorm(s=0.4, scale=np.exp(1.0)).pdf(x)
    np.testing.assert_allclose(dash.lognormal_pdf(x, 1.0, 0.4), expected, rtol=1e-12)


def test_health_and_warning_lines_with_nan_stats_and_no_pixel_size():
    snap = PipelineSnapshot()  # NaN latency, no pixel size, zero counters
    text = "\n".join(dash.health_lines(snap))
    assert "p50 – ms" in text and "p99 – ms" in text
    assert "pixel size: none" in text
    assert dash.warning_lines(snap.stats) == ["no pixel size: sizes are in px (pass --pixel-size-nm X)"]
    stats = PipelineStats(dropped=4, malformed=1, gaps=2, pixel_size_nm=0.5,
                          warnings=("camera is slow",))
    lines = dash.warning_lines(stats)
    assert lines[0].startswith("dropping frames: 4 dropped")
    assert "1 malformed messages skipped" in lines and "2 gaps in frame numbers" in lines
    assert lines[-1] == "camera is slow"


class FakeClocks:
    """Wall and CPU clocks advanced by the test (the budget takes clocks as parameters)."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def tick(self, wall_s, cpu_s):
        self.wall += wall_s
        self.cpu += cpu_s


@pytest.mark.parametrize(("cpu_per_tick", "allowed"), [(0.005, True), (0.03, False)])
def test_cpu_budget_postpones_redraws_over_the_share(cpu_per_tick, allowed):
    clocks = FakeClocks()
    budget = dash.CpuBudget(0.2, window_s=1.0, clock=lambda: clocks.wall,
                            cpu_clock=lambda: clocks.cpu)
    answers = []
    for _ in range(60):  # 3 s of 20 Hz ticks
        answers.append(budget.allow())
        clocks.tick(0.05, cpu_per_tick)
    assert budget.share == pytest.approx(cpu_per_tick / 0.05)
    assert all(answers[:5])  # under 0.25 s of history: always draw
    assert all(answers[6:]) is allowed and (budget.denied == 0) is allowed


def test_cpu_budget_recovers_after_a_busy_spell():
    clocks = FakeClocks()
    budget = dash.CpuBudget(0.2, clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)
    for _ in range(20):
        budget.allow()
        clocks.tick(0.05, 0.05)  # 100 % busy
    assert not budget.allow()
    for _ in range(40):
        clocks.tick(0.05, 0.0)  # idle ticks (no new frame, nothing recorded)
    assert budget.allow()  # the last second was idle: draw again


def test_cpu_budget_within_answers_like_allow_without_recording():
    clocks = FakeClocks()
    budget = dash.CpuBudget(0.2, clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)
    assert budget.within()  # no history yet
    for _ in range(20):
        budget.allow()
        clocks.tick(0.05, 0.05)  # 100 % busy
    denied, samples = budget.denied, len(budget._samples)
    assert not budget.within()
    assert (budget.denied, len(budget._samples)) == (denied, samples)  # nothing recorded
    for _ in range(40):
        clocks.tick(0.05, 0.0)
    assert budget.within() and budget.allow()


@pytest.mark.parametrize(("cores", "share"), [(1, 0.1), (2, 0.1), (4, 0.2), (16, 0.6)])
def test_default_cpu_budget(cores, share):
    assert dash.default_cpu_budget(cores) == pytest.approx(share)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_cpu_budget_rejects_bad_share(bad):
    with pytest.raises(ValueError, match="positive share of a core"):
        dash.CpuBudget(bad)


def test_dashboard_available_needs_a_display(monkeypatch):
    monkeypatch.setattr(dash, "_broken_pyside", lambda: "")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert dash.dashboard_available() == (False, "no display: add --headless")
    monkeypatch.setenv("DISPLAY", ":0")
    assert dash.dashboard_available() == (True, "")
    monkeypatch.delenv("DISPLAY")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert dash.dashboard_available() == (True, "")


@pytest.mark.parametrize(
    ("pyside", "python", "broken"),
    [("6.12.0", (3, 11), True), ("6.12.0", (3, 12), False), ("6.11.3", (3, 11), False)],
)
def test_pyside_refcount_bug_guard(pyside, python, broken):
    assert dash.pyside_refcount_bug(pyside, python) is broken


def test_installed_pyside_survives_many_void_calls():
    """The installed PySide6 must not drop None's refcount (6.12.0 on 3.11 aborts)."""
    pytest.importorskip("PySide6")
    import subprocess

    code = (
        "import sys\n"
        "from PySide6 import QtCore\n"
        "o = QtCore.QObject()\n"
        "before = sys.getrefcount(None)\n"
        "for _ in range(1000): o.setObjectName('x')\n"
        "print(sys.getrefcount(None) - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert abs(int(out.stdout.strip())) < 50, "PySide6 leaks None references: pin <6.12"
    ok, reason = dash.dashboard_available()
    assert "crashes on Python" not in reason


# --------------------------------------------------------------------------- real Qt window

HAVE_QT = all(importlib.util.find_spec(m) is not None for m in ("PySide6", "pyqtgraph"))
if HAVE_QT:
    from PySide6 import QtCore, QtGui

from etemlive.measure import measure_particles  # noqa: E402
from etemlive.sources.simulate import SimulationConfig, simulate  # noqa: E402

#: Real-window tests: offscreen Qt; skipped where PySide6 / pyqtgraph are not installed.
qt = pytest.mark.skipif(not HAVE_QT, reason="PySide6 and pyqtgraph not installed (gui extra)")

SATURATED = 80  # max - min over RGB: outline colours are saturated, the frame is grey


class SimProvider:
    """Snapshots of a simulated movie, measured with etemlive.measure (truth id = track).

    ``index`` chooses which snapshot ``latest_snapshot`` returns (tests step it).
    """

    def __init__(self, *, scenario="coalescence", n_frames=8, size_px=256, seed=1,
                 pixel_size_nm=0.5, stats_extra=None):
        config = SimulationConfig(scenario=scenario, seed=seed, n_frames=n_frames,
                                  size_px=size_px, pixel_size_nm=pixel_size_nm)
        self.frames = list(simulate(config))
        self.pixel_size_nm = pixel_size_nm
        self.running = True
        self.stop_calls = 0
        self.history_calls: list[int] = []
        self.index = 0
        tables, rows, events = [], [], []
        self.snapshots = []
        for sf in self.frames:
            labels = sf.labels.astype(np.int32)
            table = measure_particles(labels, pixel_size_nm, frame=sf.index, time_s=sf.time_s)
            table["track_id"] = table["label"].astype(np.int64)
            tables.append(table)
            d = table["diameter_nm"].to_numpy()
            rows.append({"frame": sf.index, "time_s": sf.time_s, "count": len(table),
                         "mean_diameter_nm": d.mean() if d.size else np.nan,
                         "std_diameter_nm": d.std() if d.size else np.nan,
                         "latency_ms": 10.0 + sf.index})
            for e in sf.events:
                events.append({"frame": e.frame, "kind": e.kind,
                               "track_ids": " ".join(map(str, e.ids)),
                               "into_id": -1 if e.into_id is None else e.into_id})
            stats = PipelineStats(
                received=sf.index + 1, analysed=sf.index + 1, fps_received=9.5,
                fps_analysed=9.25, latency_p50_ms=12.5, latency_p99_ms=31.0,
                backend="classical", device="cpu", pixel_size_nm=pixel_size_nm,
                pixel_size_source="metadata", **(stats_extra or {}),
            )
            self.snapshots.append(PipelineSnapshot(
                frame_index=sf.index, time_s=sf.time_s, image=sf.image, labels=labels,
                particles=table, history=pd.DataFrame(rows),
                events=pd.DataFrame(events, columns=["frame", "kind", "track_ids", "into_id"]),
                stats=stats,
            ))
        self.all_particles = pd.concat(tables, ignore_index=True)

    def latest_snapshot(self):
        return self.snapshots[self.index]

    def track_history(self, track_id):
        self.history_calls.append(track_id)
        rows = self.all_particles[self.all_particles["track_id"] == track_id]
        return rows.loc[:, ["frame", "time_s", "diameter_nm"]].reset_index(drop=True)

    def stop(self):
        self.stop_calls += 1
        self.running = False


@pytest.fixture(scope="module")
def sim_provider_data():
    return SimProvider()


@pytest.fixture
def provider(sim_provider_data):
    p = sim_provider_data
    p.index, p.running, p.stop_calls = len(p.snapshots) - 1, True, 0
    p.history_calls.clear()
    return p


@pytest.fixture
def window(qtbot, provider):
    from etemlive.dashboard import DashboardWindow

    w = DashboardWindow(provider, refresh_hz=0.0, colour_by="track", cpu_budget=None)
    qtbot.addWidget(w)
    w.resize(1400, 900)
    w.show()
    qtbot.waitExposed(w)
    return w


def _grab_viewport(window) -> np.ndarray:
    """The image view's viewport as an (rows, cols, 4) RGBA array."""
    QtCore.QCoreApplication.processEvents()
    viewport = window.image_widget.viewport()
    image = viewport.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGBA8888)
    assert (image.width(), image.height()) == (viewport.width(), viewport.height())
    buf = np.frombuffer(image.constBits(), dtype=np.uint8, count=image.sizeInBytes())
    return buf.reshape(image.height(), image.bytesPerLine())[:, : image.width() * 4].reshape(
        image.height(), image.width(), 4
    ).copy()


def _view_to_viewport(window, x: np.ndarray, y: np.ndarray):
    """Full-resolution px (view coordinates) -> viewport pixel coordinates (float)."""
    gv = window.image_widget
    t = gv.viewportTransform()

    def to_vp(px, py):
        scene = window.view.mapViewToScene(QtCore.QPointF(px, py))
        p = t.map(scene)
        return p.x(), p.y()

    x0, y0 = to_vp(0.0, 0.0)
    x1, y1 = to_vp(100.0, 100.0)
    return x0 + x * (x1 - x0) / 100.0, y0 + y * (y1 - y0) / 100.0


def _saturation(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].max(axis=-1).astype(int) - rgb[..., :3].min(axis=-1).astype(int)


@pytest.mark.qt
@qt
def test_outlines_are_drawn_on_particle_boundaries_and_nowhere_else(window, provider):
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    snap = provider.latest_snapshot()
    window.draw_snapshot(snap)
    assert window.redraw_errors == 0
    pixels = _grab_viewport(window)
    labels = snap.labels
    # Independent boundary computation (scikit-image), sampled at pixel centres.
    rows, cols = np.nonzero(find_boundaries(labels, mode="inner") & (labels > 0))
    vx, vy = _view_to_viewport(window, cols + 0.5, rows + 0.5)
    inside = (vx >= 0) & (vy >= 0) & (vx < pixels.shape[1]) & (vy < pixels.shape[0])
    assert inside.mean() > 0.99, "the whole frame is in view"
    seen = pixels[vy[inside].astype(int), vx[inside].astype(int)]
    assert (_saturation(seen) > SATURATED).mean() > 0.95
    table = snap.particles.set_index("label")
    expected = dash.TRACK_PALETTE[
        table.loc[labels[rows, cols][inside], "track_id"].to_numpy() % len(dash.TRACK_PALETTE)
    ]
    exact = np.all(np.abs(seen[:, :3].astype(int) - expected[:, :3]) <= 2, axis=1)
    assert exact.mean() > 0.8  # touching particles share some boundary pixels

    # Background well away from every particle: no outline colour at all.
    far = ndimage.distance_transform_edt(labels == 0) > 4
    far[:8, :] = far[-8:, :] = False  # margins: scale bar / title may sit there
    far[:, :8] = far[:, -8:] = False
    rows, cols = np.nonzero(far)
    vx, vy = _view_to_viewport(window, cols + 0.5, rows + 0.5)
    seen = pixels[vy.astype(int), vx.astype(int)]
    assert (_saturation(seen) > SATURATED).mean() < 0.002


@pytest.mark.qt
@qt
def test_colour_switch_to_shape_recolours_outlines(window, provider):
    snap = provider.latest_snapshot()
    window.draw_snapshot(snap)
    window.set_colour_by("shape")
    assert window.colour_combo.currentText() == "shape"
    overlay = window.overlay_item.image
    labels = snap.labels
    table = snap.particles.set_index("label")
    rows, cols = np.nonzero(dash.boundary_mask(labels))
    # Pixels whose 2x2 up-left neighbourhood holds only their own label keep its colour.
    own = labels[rows, cols]
    solo = (labels[rows - 1, cols] == own) & (labels[rows, cols - 1] == own) & (
        labels[rows - 1, cols - 1] == own) & (rows > 0) & (cols > 0)
    got = overlay[rows[solo], cols[solo]]
    want = np.array([dash.SHAPE_COLOURS[s] for s in table.loc[own[solo], "shape"]])
    np.testing.assert_array_equal(got, want)
    window.colour_combo.setCurrentText("track")  # the control drives the same switch
    assert window.colour_by == "track"
    with pytest.raises(ValueError, match="colour_by"):
        window.set_colour_by("size")


@pytest.mark.qt
@qt
def test_plots_hold_the_expected_points(window, provider):
    snap = provider.latest_snapshot()
    window.draw_snapshot(snap)
    n_frames = len(snap.history)
    x, y = window.count_curve.getOriginalDataset()
    np.testing.assert_array_equal(x, snap.history["time_s"].to_numpy())
    np.testing.assert_array_equal(y, snap.history["count"].to_numpy())
    assert len(window.mean_curve.getOriginalDataset()[0]) == n_frames
    upper = window.upper_curve.getOriginalDataset()[1]
    lower = window.lower_curve.getOriginalDataset()[1]
    np.testing.assert_allclose(
        upper - lower, 2 * snap.history["std_diameter_nm"].to_numpy(), rtol=1e-12
    )
    edges, counts = window.hist_curve.getOriginalDataset()
    assert counts.sum() == len(snap.particles)
    assert len(edges) == len(counts) + 1
    fx, fy = window.fit_curve.getOriginalDataset()
    assert fx is not None and len(fx) == 200 and np.all(fy >= 0)
    assert window.fit_label.text().startswith("size distribution (red): ")
    # Track ids drawn over the frame: one visible text per tracked particle.
    shown = sorted(int(t) for t in window.id_layer.texts)
    assert shown == sorted(snap.particles["track_id"].tolist())
    table = snap.particles.set_index("track_id")
    np.testing.assert_allclose(window.id_layer.x_px, table.loc[
        [int(t) for t in window.id_layer.texts], "x_px"])


@pytest.mark.qt
@qt
def test_live_fit_of_the_pipeline_is_drawn_over_histogram_and_mean_size(window, provider):
    import dataclasses

    from etemlive.analysis import LiveAnalysis

    live = LiveAnalysis(update_every_n_frames=1000, window_frames=4)
    for snap in provider.snapshots:
        live.update(snap.particles)
    result = live.refit(frame=provider.index)
    assert result.distribution.status == "ok" and result.kinetics.status == "ok"
    window.refresh()  # the newest frame, before its live fit exists
    assert "live" not in window.fit_label.text()
    snap = dataclasses.replace(provider.latest_snapshot(), live_fit=result)
    original = provider.snapshots[provider.index]
    provider.snapshots[provider.index] = snap
    try:
        window.refresh()  # same frame, new fit (fits arrive on their own thread): redrawn
    finally:
        provider.snapshots[provider.index] = original
    edges, counts = window.hist_curve.getOriginalDataset()
    fx, fy = window.fit_curve.getOriginalDataset()
    best = result.distribution.best_fit
    expected = dash.model_pdf(best, fx) * counts.sum() * (edges[1] - edges[0])
    np.testing.assert_allclose(fy, expected, rtol=1e-12)
    assert f"{dash.model_name(best)}, live fit" in window.fit_label.text()
    # Kinetics: 2 <r>(t) of the fit, dashed over the mean diameter, n in the title.
    kx, ky = window.kinetics_curve.getOriginalDataset()
    np.testing.assert_allclose(ky, 2 * result.kinetics.predict(kx), rtol=1e-12)
    assert f"n = {result.kinetics.n:.2f}, {result.kinetics.mechanism}" in window.fit_label.text()
    # A failed live fit falls back to this frame's own fit.
    failed = dataclasses.replace(result, distribution=dataclasses.replace(
        result.distribution, status="not enough data", models={}, best=None))
    window.draw_snapshot(dataclasses.replace(snap, live_fit=failed, frame_index=99))
    assert "live" not in window.fit_label.text()


@pytest.mark.qt
@qt
def test_counters_and_warnings_show_the_pipelines_numbers(qtbot):
    from etemlive.dashboard import DashboardWindow

    provider = SimProvider(n_frames=3, size_px=128,
                           stats_extra={"dropped": 5, "malformed": 2, "gaps": 1,
                                        "warnings": ("segmenter fell back to CPU",)})
    w = DashboardWindow(provider, refresh_hz=0.0)
    qtbot.addWidget(w)
    provider.index = 2
    w.refresh()
    assert w.redraw_errors == 0
    health = w.health_label.text()
    for text in ("received 3 (9.5 fps)", "analysed 3 (9.2 fps)", "p50 12.5 ms", "p99 31.0 ms",
                 "dropped 5", "malformed 2", "gaps 1", "backend classical on cpu",
                 "pixel size 0.5 nm/px (metadata)"):
        assert text in health
    warning = w.warning_label.text()
    assert "dropping frames: 5 dropped" in warning
    assert "segmenter fell back to CPU" in warning
    assert "#b35c00" in w.warning_label.styleSheet()
    assert w.status_label.text() == "running: frame 2"


@pytest.mark.qt
@qt
def test_empty_frame_nan_stats_and_no_pixel_size_do_not_raise(qtbot):
    from etemlive.dashboard import DashboardWindow

    empty_particles = measure_particles(np.zeros((64, 64), np.int32), 1.0)
    snap = PipelineSnapshot(
        frame_index=0, time_s=float("nan"),
        image=np.full((64, 64), 100, np.uint16), labels=np.zeros((64, 64), np.int32),
        particles=empty_particles,
        history=pd.DataFrame({"frame": [0], "time_s": [0.0], "count": [0],
                              "mean_diameter_nm": [np.nan], "std_diameter_nm": [np.nan],
                              "latency_ms": [np.nan]}),
        events=pd.DataFrame(columns=["frame", "kind", "track_ids", "into_id"]),
        stats=PipelineStats(), time_unit="frame",
    )

    class Single:
        running = True

        def latest_snapshot(self):
            return snap

        def track_history(self, track_id):
            return pd.DataFrame({"frame": [], "time_s": [], "diameter_nm": []})

        def stop(self):
            self.running = False

    w = DashboardWindow(Single(), refresh_hz=0.0)
    qtbot.addWidget(w)
    w.show()
    w.refresh()
    assert w.redraw_errors == 0
    assert w._drawn_index == 0
    assert not w.overlay_item.image[..., 3].any()  # no outlines
    assert w.no_scale_label.isVisible()
    assert "no pixel size" in w.warning_label.text()
    assert "p50 – ms" in w.health_label.text()
    x_mean = w.mean_curve.getOriginalDataset()[0]
    assert x_mean is None or len(x_mean) == 0  # NaN means are not plotted
    assert w.count_plot.getAxis("bottom").labelText == "time (frame)"
    # A frame-less snapshot (image None) clears the view instead of raising.
    w.draw_snapshot(PipelineSnapshot(frame_index=1))
    assert w.frame_item.image is None
    assert w.track_at(10.0, 10.0) is None


@pytest.mark.qt
@qt
def test_refresh_skips_redraw_when_the_frame_is_unchanged(window, provider):
    provider.index = 3
    window.refresh()
    drawn = window.overlay_item.image
    redraws = window.redraws
    window.refresh()  # same frame_index: nothing redrawn
    assert window.overlay_item.image is drawn
    assert window.redraws == redraws
    provider.index = 4
    window.refresh()
    assert window.overlay_item.image is not drawn
    assert window._drawn_index == 4


@pytest.mark.qt
@qt
def test_display_over_its_cpu_budget_skips_frames_until_the_run_ends(window, provider):
    clocks = FakeClocks()
    window.cpu_budget = dash.CpuBudget(0.1, clock=lambda: clocks.wall,
                                       cpu_clock=lambda: clocks.cpu)
    provider.index = 1
    window.refresh()
    assert window._drawn_index == 1
    clocks.tick(0.5, 0.4)  # the display thread used 80 % of a core
    provider.index = 2
    window.refresh()
    assert window._drawn_index == 1 and window.throttled
    assert "display thinned" in window.status_label.text()
    assert "received 3" in window.health_label.text()  # counters still live
    provider.running = False  # the final frame is always drawn
    window.refresh()
    assert window._drawn_index == 2


@pytest.mark.qt
@qt
def test_plots_follow_at_plot_hz_while_the_frame_follows_every_snapshot(qtbot, provider):
    from etemlive.dashboard import DashboardWindow

    w = DashboardWindow(provider, refresh_hz=0.0, plot_hz=4.0, cpu_budget=None)
    qtbot.addWidget(w)
    provider.index = 1
    w.refresh()
    assert len(w.count_curve.getOriginalDataset()[0]) == 2
    provider.index = 2
    w.refresh()  # at once: new frame drawn, plots wait for their 250 ms
    assert w._drawn_index == 2 and w.plots_pending
    assert len(w.count_curve.getOriginalDataset()[0]) == 2
    qtbot.wait(300)
    w.refresh()  # same frame, plots now due
    assert not w.plots_pending
    assert len(w.count_curve.getOriginalDataset()[0]) == 3
    provider.index = 3
    provider.running = False
    w.refresh()  # the final state always includes the plots
    assert len(w.count_curve.getOriginalDataset()[0]) == 4 and not w.plots_pending
    with pytest.raises(ValueError, match="plot_hz"):
        DashboardWindow(provider, plot_hz=0.0)


@pytest.mark.qt
@qt
def test_pause_freezes_the_display_not_the_counters(window, provider):
    provider.index = 2
    window.refresh()
    window.pause_box.setChecked(True)
    assert window.paused
    provider.index = 5
    window.refresh()
    assert window._drawn_index == 2
    assert "received 6" in window.health_label.text()  # health keeps updating
    assert window.status_label.text().startswith("paused (analysis and recording go on)")
    window.set_paused(False)
    assert window._drawn_index == 5 and not window.pause_box.isChecked()


@pytest.mark.qt
@qt
def test_click_on_a_particle_selects_it_and_shows_its_growth_curve(qtbot, window, provider):
    snap = provider.latest_snapshot()
    window.draw_snapshot(snap)
    QtCore.QCoreApplication.processEvents()
    table = snap.particles[~snap.particles["touches_edge"]]
    target = table.loc[table["area_px"].idxmax()]
    # Click on a pixel of that particle (its label's pixel nearest the centroid).
    rows, cols = np.nonzero(snap.labels == target["label"])
    k = np.argmin((cols - target["x_px"]) ** 2 + (rows - target["y_px"]) ** 2)
    vx, vy = _view_to_viewport(window, np.array([cols[k] + 0.5]), np.array([rows[k] + 0.5]))
    point = QtCore.QPoint(int(vx[0]), int(vy[0]))
    qtbot.mouseClick(window.image_widget.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=point)
    track_id = int(target["track_id"])
    assert window.selected_tracks == [track_id]
    assert provider.history_calls[-1] == track_id
    curve = window._growth_curves[track_id]
    expected = provider.track_history(track_id)
    np.testing.assert_allclose(curve.getOriginalDataset()[1], expected["diameter_nm"])
    # The selected particle is outlined white.
    lab = window._display_labels
    on_edge = dash.boundary_mask(lab) & (lab == target["label"])
    assert np.all(window.overlay_item.image[on_edge] == dash.SELECTED_COLOUR)
    # Ctrl-click on the background keeps the selection; a plain click clears it.
    from scipy import ndimage

    far = ndimage.distance_transform_edt(snap.labels == 0)
    r, c = np.unravel_index(np.argmax(far), far.shape)
    bx, by = _view_to_viewport(window, np.array([c + 0.5]), np.array([r + 0.5]))
    empty = QtCore.QPoint(int(bx[0]), int(by[0]))
    assert window.track_at(*_viewport_to_view(window, empty)) is None
    qtbot.mouseClick(window.image_widget.viewport(), QtCore.Qt.MouseButton.LeftButton,
                     QtCore.Qt.KeyboardModifier.ControlModifier, pos=empty)
    assert window.selected_tracks == [track_id]
    qtbot.mouseClick(window.image_widget.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=empty)
    assert window.selected_tracks == []
    assert track_id not in window._growth_curves


def _viewport_to_view(window, point):
    scene = window.image_widget.mapToScene(point)
    p = window.view.mapSceneToView(scene)
    return p.x(), p.y()


@pytest.mark.qt
@qt
def test_events_list_is_newest_first_and_click_selects(qtbot, window, provider):
    snap = provider.latest_snapshot()
    window.draw_snapshot(snap)
    events = snap.events
    assert len(events) > 0, "the coalescence movie has merge events"
    assert window.events_list.count() == min(len(events), 100)
    newest = events.iloc[-1]
    first = window.events_list.item(0)
    assert first.text().startswith(f"frame {int(newest['frame']):>5}  {newest['kind']}")
    merges = [i for i in range(window.events_list.count())
              if "merge" in window.events_list.item(i).text()]
    item = window.events_list.item(merges[0])
    into = int(item.text().rsplit("→", 1)[1])
    rect = window.events_list.visualItemRect(item)
    window.events_list.scrollToItem(item)
    rect = window.events_list.visualItemRect(item)
    qtbot.mouseClick(window.events_list.viewport(), QtCore.Qt.MouseButton.LeftButton,
                     pos=rect.center())
    assert window.selected_tracks == [into]
    assert into in window._growth_curves


@pytest.mark.qt
@qt
def test_scale_bar_length_and_label_follow_the_pixel_size(window, provider):
    snap = provider.latest_snapshot()
    window.draw_snapshot(snap)
    width_nm = snap.image.shape[1] * provider.pixel_size_nm  # 256 px * 0.5 nm = 128 nm
    length_nm = dash.nice_scale_bar_nm(width_nm)
    assert length_nm == 20.0
    bar = window._scale_bar
    assert bar.isVisible() and not window.no_scale_label.isVisible()
    assert bar.size == pytest.approx(length_nm / provider.pixel_size_nm)
    assert bar.text.textItem.toPlainText() == "20 nm"


@pytest.mark.qt
@qt
def test_save_png_writes_the_window(tmp_path, window, provider):
    window.draw_snapshot(provider.latest_snapshot())
    path = window.save_png(tmp_path / "dash.png")
    image = QtGui.QImage(str(path))
    assert (image.width(), image.height()) == (window.width(), window.height())
    with pytest.raises(InputError, match="could not write the dashboard PNG"):
        window.save_png(tmp_path / "missing-folder" / "dash.png")


@pytest.mark.qt
@qt
def test_closing_the_window_calls_stop(qtbot, provider):
    from etemlive.dashboard import DashboardWindow

    w = DashboardWindow(provider, refresh_hz=50.0)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w._drawn_index == provider.index, timeout=5000)
    with qtbot.waitSignal(w.closed, timeout=2000):
        w.close()
    assert provider.stop_calls == 1
    assert not w.timer.isActive()


@pytest.mark.qt
@qt
def test_run_dashboard_stays_open_after_the_run_finishes_then_returns_on_close(qtbot, provider):
    from PySide6 import QtWidgets

    from etemlive.dashboard import DashboardWindow, run_dashboard

    seen = {}

    def finish_then_close():
        windows = [w for w in QtWidgets.QApplication.topLevelWidgets()
                   if isinstance(w, DashboardWindow) and w.isVisible()]
        if not windows:
            QtCore.QTimer.singleShot(20, finish_then_close)
            return
        w = windows[0]
        if "status" not in seen:
            provider.running = False  # the run ends on its own
            seen["status"] = ""
            QtCore.QTimer.singleShot(200, finish_then_close)
            return
        seen["status"] = w.status_label.text()
        seen["drawn"] = w._drawn_index
        w.close()

    QtCore.QTimer.singleShot(50, finish_then_close)
    run_dashboard(provider, title="test", refresh_hz=30.0)
    assert seen["status"].startswith("finished: 8 frames analysed")
    assert seen["drawn"] == provider.index
    assert provider.stop_calls == 1


@pytest.mark.qt
@qt
def test_benchmark_refresh_small_runs_and_reports(qtbot):
    result = dash.benchmark_refresh(n=3, size=512, n_particles=40, with_plots=False)
    assert result["n"] == 3 and result["size_px"] == 512 and result["n_particles"] == 40
    assert result["with_plots"] is False
    assert 0 < result["update_ms_median"] <= result["total_ms_median"]
    assert result["fps"] == pytest.approx(1000.0 / result["total_ms_median"])
    assert result["platform"] == "offscreen"


# --------------------------------------------------------------------------- end to end


@pytest.mark.qt
@qt
def test_real_pipeline_runs_into_the_window(qtbot, tmp_path):
    from etemlive.dashboard import DashboardWindow
    from etemlive.pipeline import Pipeline
    from etemlive.record import Recorder
    from etemlive.sources.simulate import SimulatedSource

    classical = pytest.importorskip("etemlive.segment.classical", reason="classical segmenter not built")
    tracker = pytest.importorskip("etemlive.track.tracker", reason="tracker not built")
    ClassicalSegmenter, Tracker = classical.ClassicalSegmenter, tracker.Tracker  # noqa: N806

    config = SimulationConfig(scenario="coalescence", seed=2, n_frames=10, size_px=192)
    source = SimulatedSource(config)
    pipeline = Pipeline(
        source, ClassicalSegmenter(), Recorder(tmp_path),
        pixel_size_nm=config.pixel_size_nm, pixel_size_source="metadata",
        frame_interval_s=config.frame_interval_s,
        tracker_factory=lambda px, dt: Tracker(pixel_size_nm=px, frame_interval_s=dt),
        publish_snapshots=True, workers=1,
        display_max_px=128,  # the pipeline halves its snapshots: display_scale 2
    )
    w = DashboardWindow(pipeline, refresh_hz=50.0, colour_by="track")
    qtbot.addWidget(w)
    w.resize(1400, 900)
    w.show()
    qtbot.waitExposed(w)
    failure: list[BaseException] = []

    def run():
        try:
            pipeline.run()
        except BaseException as err:  # handed to the test thread
            failure.append(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    qtbot.waitUntil(lambda: not worker.is_alive(), timeout=120_000)
    assert not failure, f"the pipeline failed (not the dashboard): {failure[0]!r}"
    last = pipeline.latest_snapshot()
    qtbot.waitUntil(lambda: w._drawn_index == last.frame_index and w.finished, timeout=5000)
    assert w.redraw_errors == 0
    stats = pipeline.stats()
    # Counters show the pipeline's own numbers.
    assert f"received {stats.received} " in w.health_label.text()
    assert f"analysed {stats.analysed} " in w.health_label.text()
    assert w.status_label.text().startswith(f"finished: {stats.analysed} frames analysed")
    # The count plot has one point per analysed frame of the published history.
    frames_csv = pd.read_csv(tmp_path / "frames.csv")
    x, y = w.count_curve.getOriginalDataset()
    assert len(x) == len(last.history) == len(frames_csv)
    np.testing.assert_array_equal(y, frames_csv["count"].to_numpy())
    # Outlines over the segmented particles (pixel test on the pipeline's labels).
    pixels = _grab_viewport(w)
    labels = last.labels
    rows, cols = np.nonzero(dash.boundary_mask(labels))
    assert rows.size > 0, "the segmenter found particles"
    scale = last.display_scale
    assert scale == 2 and labels.shape == (96, 96)
    # A click lookup in full-resolution px lands on the particle that the table places there.
    compact = last.particles[last.particles["roundness"] > 0.7]  # centroid inside it
    row = compact.loc[compact["area_px"].idxmax()]
    assert w.label_at(row["x_px"], row["y_px"]) == row["label"]
    vx, vy = _view_to_viewport(w, (cols + 0.5) * scale, (rows + 0.5) * scale)
    seen = pixels[vy.astype(int), vx.astype(int)]
    assert (_saturation(seen) > SATURATED).mean() > 0.9
    # Closing the window asks the (finished) run to stop: harmless, and called.
    w.close()
    assert pipeline._stop.is_set()
    assert math.isfinite(stats.fps_analysed)


@pytest.mark.qt
@qt
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_cli_analyze_opens_the_window_and_closing_it_writes_the_summary(tmp_path, signame):
    """``etemlive analyze`` without --headless shows the dashboard (offscreen here);
    Ctrl-C (or SIGTERM) closes the window, which stops the run; summary written, exit 0."""
    import json
    import signal
    import subprocess
    import time

    from etemlive.sources.simulate import write_simulation

    movie = tmp_path / "coalescence.tif"
    write_simulation(movie, SimulationConfig(scenario="coalescence", seed=4, n_frames=60,
                                             size_px=256))
    out = tmp_path / "out"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    env.pop("DISPLAY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "etemlive", "analyze", str(movie), "--out", str(out),
         "--backend", "classical", "--no-report"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        frames_csv = out / "frames.csv"
        while time.monotonic() < deadline and proc.poll() is None:
            if frames_csv.exists() and len(frames_csv.read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
        # Signal until it exits: the dashboard turns it into closing the window.
        while time.monotonic() < deadline and proc.poll() is None:
            proc.send_signal(getattr(signal, signame))
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "running headless" not in stderr  # the window did open
    summary = json.loads((out / "summary.json").read_text())
    analysed = summary["frames_analysed"]
    assert 2 <= analysed <= 60
    assert len(pd.read_csv(out / "frames.csv")) == analysed
