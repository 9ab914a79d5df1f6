"""Qt widgets of the live dashboard (imported only when a window opens).

The public entry points are in :mod:`etemlive.dashboard`; the array work (outlines,
contrast, histogram, fit) is done there in vectorized helpers. This module lays out
the window and moves the results into pyqtgraph items: one ImageItem for the frame,
one RGBA ImageItem for every outline at once, a bounded pool of TextItems for the
track ids, and PlotDataItems that are updated in place.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from . import dashboard as core
from .errors import InputError
from .snapshot import PipelineSnapshot

log = logging.getLogger(__name__)

_EVENT_COLOURS = {
    "merge": QtGui.QColor(255, 170, 60),
    "split": QtGui.QColor(230, 90, 230),
    "appear": QtGui.QColor(110, 220, 110),
    "vanish": QtGui.QColor(170, 170, 170),
}
_WARN_STYLE = "QLabel { background: #b35c00; color: white; padding: 4px; font-weight: bold; }"
_OK_STYLE = "QLabel { background: #2d5a2d; color: white; padding: 4px; }"


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    """A column as float64 (NaN where missing or not numeric); all-NaN when absent."""
    if name not in table:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=float)


class IdLayer(pg.GraphicsObject):
    """All track ids of a frame as one graphics item (one text layer).

    Positions are in view coordinates (full-resolution px); the text is drawn at a
    fixed screen size whatever the zoom. One item with one paint call is far cheaper
    than hundreds of TextItems (each with its own geometry callbacks).
    """

    def __init__(self) -> None:
        super().__init__()
        self.font = QtGui.QFont()
        self.font.setPointSize(8)
        self.colour = QtGui.QColor(255, 255, 200)
        self.shadow = QtGui.QColor(0, 0, 0, 220)
        self.x_px = np.empty(0)
        self.y_px = np.empty(0)
        self.texts: list[str] = []
        self._rect = QtCore.QRectF()

    def set_ids(self, x_px: np.ndarray, y_px: np.ndarray, texts: list[str],
                rect: QtCore.QRectF) -> None:
        """Replace the ids shown (``rect``: the frame's extent, for repaint bounds)."""
        if rect != self._rect:
            self.prepareGeometryChange()
            self._rect = QtCore.QRectF(rect)
        self.x_px, self.y_px, self.texts = x_px, y_px, texts
        self.update()

    def boundingRect(self) -> QtCore.QRectF:  # noqa: N802 (Qt name)
        return self._rect

    def paint(self, painter: QtGui.QPainter, *args) -> None:
        if not self.texts:
            return
        t = painter.transform()
        # Screen positions of every id in one vectorized step (no rotation in a ViewBox).
        sx = t.m11() * self.x_px + t.m21() * self.y_px + t.dx()
        sy = t.m12() * self.x_px + t.m22() * self.y_px + t.dy()
        painter.save()
        painter.resetTransform()
        painter.setFont(self.font)
        metrics = painter.fontMetrics()
        half_h = (metrics.ascent() - metrics.descent()) / 2.0
        # Bounded loop over the ids shown (<= max_id_labels); Qt has no batch text call.
        for x, y, text in zip(sx, sy, self.texts, strict=True):
            left = x - metrics.horizontalAdvance(text) / 2.0
            painter.setPen(self.shadow)
            painter.drawText(QtCore.QPointF(left + 1.0, y + half_h + 1.0), text)
            painter.setPen(self.colour)
            painter.drawText(QtCore.QPointF(left, y + half_h), text)
        painter.restore()


class DashboardWindow(QtWidgets.QMainWindow):
    """The live dashboard window.

    Parameters
    ----------
    provider : SnapshotProvider
        The running pipeline (or a callable returning snapshots).
    title : str
        Window title.
    refresh_hz : float
        How often the timer reads the newest snapshot (Hz); 0 disables the timer
        (the caller then calls :meth:`refresh` or :meth:`draw_snapshot` itself).
    plot_hz : float
        Most redraws per second of the plots and the events list (> 0); the frame and
        its outlines follow every new snapshot, the slowly changing plots need not
        (they cost about half of a full redraw).
    colour_by : {"shape", "track"}
        Initial outline colouring.
    max_id_labels : int
        Most track ids written on the frame (selected, then largest particles first).
    contrast_percentiles : (float, float)
        Percentiles of the frame's intensities mapped to black and white (auto contrast).
    max_selected : int
        Most particles whose growth curves are shown together.
    cpu_budget : float, "auto" or None
        Largest share of one core the display may use (see :class:`CpuBudget`): new
        frames are skipped while above it, so the analysis keeps its speed. "auto":
        :func:`default_cpu_budget` (5 % of the machine); None: no limit.

    Attributes
    ----------
    closed : Signal
        Emitted once the window has closed (after ``provider.stop()``).
    selected_tracks : list of int
        Track ids currently selected (growth curves, white outlines).
    redraw_errors : int
        Redraws that raised (logged, shown in the status bar; the timer keeps going).
    redraws : int
        Snapshots drawn so far.
    """

    closed = QtCore.Signal()

    def __init__(
        self,
        provider: core.SnapshotProvider,
        *,
        title: str = "etemlive",
        refresh_hz: float = 20.0,
        plot_hz: float = 5.0,
        colour_by: str = "shape",
        max_id_labels: int = 300,
        contrast_percentiles: tuple[float, float] = (0.5, 99.5),
        max_selected: int = 6,
        cpu_budget: float | str | None = "auto",
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        if not (math.isfinite(refresh_hz) and refresh_hz >= 0):
            raise ValueError(f"refresh_hz must be >= 0 and finite, got {refresh_hz!r}")
        if not (math.isfinite(plot_hz) and plot_hz > 0):
            raise ValueError(f"plot_hz must be > 0 and finite, got {plot_hz!r}")
        if colour_by not in ("shape", "track"):
            raise ValueError(f"colour_by must be 'shape' or 'track', got {colour_by!r}")
        self._plot_interval_s = 1.0 / plot_hz
        self._plots_drawn_s = -math.inf
        self.plots_pending = False
        self.provider = core.as_provider(provider)
        self.colour_by = colour_by
        self.max_id_labels = int(max_id_labels)
        self.contrast_percentiles = contrast_percentiles
        self.max_selected = int(max_selected)
        self.paused = False
        self.auto_contrast = True
        self.levels: tuple[float, float] | None = None
        self.selected_tracks: list[int] = []
        self.redraw_errors = 0
        self.redraws = 0
        if cpu_budget == "auto":
            cpu_budget = core.default_cpu_budget()
        self.cpu_budget = None if cpu_budget is None else core.CpuBudget(float(cpu_budget))
        self.throttled = False
        self.finished = False
        #: Where :meth:`closeEvent` saves a PNG of the window first (None: nowhere).
        self.save_png_on_close: str | Path | None = None

        self._snapshot: PipelineSnapshot | None = None  # drawn
        self._latest: PipelineSnapshot | None = None  # newest read
        self._drawn_index: int | None = None
        self._display_labels: np.ndarray | None = None
        self._display_particles = pd.DataFrame()
        self._scale_total = 1.0
        self._image_shape: tuple[int, int] | None = None
        self._renderer = core.OutlineRenderer(width_px=2)
        self._labels_buffer: np.ndarray | None = None
        self._image_buffers: list[np.ndarray] = []
        self._image_buffers_key: tuple | None = None
        self._image_flip = 0
        self._scale_bar: pg.ScaleBar | None = None
        self._scale_bar_key: tuple[float, float] | None = None
        self._events_key: object = None
        self._health_key: object = None
        self._growth_fetched_s = 0.0
        self._growth_curves: dict[int, pg.PlotDataItem] = {}
        self._time_unit: str | None = None
        self._legend_shapes: tuple[str, ...] | None = None

        self.setWindowTitle(title)
        self._build_ui()
        self.resize(1500, 900)

        self.timer = QtCore.QTimer(self)
        self.timer.timeout.connect(self.refresh)
        if refresh_hz > 0:
            self.timer.start(max(1, int(round(1000.0 / refresh_hz))))

    # ------------------------------------------------------------------ layout
    def _build_ui(self) -> None:
        splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        self.setCentralWidget(splitter)

        # Left: controls, live frame, legend.
        left = QtWidgets.QWidget()
        left_layout = QtWidgets.QVBoxLayout(left)
        left_layout.setContentsMargins(4, 4, 4, 4)
        controls = QtWidgets.QHBoxLayout()
        self.pause_box = QtWidgets.QCheckBox("Pause display")
        self.pause_box.setToolTip("Freeze the display; analysis and recording go on.")
        self.pause_box.toggled.connect(self.set_paused)
        self.colour_combo = QtWidgets.QComboBox()
        self.colour_combo.addItems(["shape", "track"])
        self.colour_combo.setCurrentText(self.colour_by)
        self.colour_combo.currentTextChanged.connect(self.set_colour_by)
        self.contrast_box = QtWidgets.QCheckBox("Auto contrast")
        self.contrast_box.setChecked(True)
        self.contrast_box.toggled.connect(self._on_auto_contrast)
        self.save_button = QtWidgets.QPushButton("Save PNG…")
        self.save_button.clicked.connect(self._on_save_clicked)
        controls.addWidget(self.pause_box)
        controls.addWidget(QtWidgets.QLabel("Outlines by"))
        controls.addWidget(self.colour_combo)
        controls.addWidget(self.contrast_box)
        controls.addStretch(1)
        controls.addWidget(self.save_button)
        left_layout.addLayout(controls)

        self.image_widget = pg.GraphicsLayoutWidget()
        self.image_title = self.image_widget.addLabel("waiting for the first frame", row=0, col=0)
        self.view = self.image_widget.addViewBox(row=1, col=0, lockAspect=True, invertY=True)
        self.view.setMenuEnabled(False)
        self.frame_item = pg.ImageItem(axisOrder="row-major")
        self.overlay_item = pg.ImageItem(axisOrder="row-major")
        self.overlay_item.setZValue(10)
        self.view.addItem(self.frame_item)
        self.view.addItem(self.overlay_item)
        self.id_layer = IdLayer()
        self.id_layer.setZValue(20)
        self.view.addItem(self.id_layer)
        self.no_scale_label = pg.LabelItem("no pixel size", color=(255, 170, 0), size="11pt")
        self.no_scale_label.setParentItem(self.view)
        self.no_scale_label.anchor(itemPos=(1, 1), parentPos=(1, 1), offset=(-10, -10))
        self.no_scale_label.setVisible(False)
        self.image_widget.scene().sigMouseClicked.connect(self._on_scene_click)
        left_layout.addWidget(self.image_widget, 1)
        self.legend_label = QtWidgets.QLabel("")
        self.legend_label.setTextFormat(QtCore.Qt.TextFormat.RichText)
        left_layout.addWidget(self.legend_label)
        splitter.addWidget(left)

        # Right: warnings, plots, events and health.
        right = QtWidgets.QWidget()
        right_layout = QtWidgets.QVBoxLayout(right)
        right_layout.setContentsMargins(4, 4, 4, 4)
        self.warning_label = QtWidgets.QLabel("no warnings")
        self.warning_label.setWordWrap(True)
        self.warning_label.setStyleSheet(_OK_STYLE)
        self._warning_style = _OK_STYLE
        right_layout.addWidget(self.warning_label)

        self.plots = pg.GraphicsLayoutWidget()
        self.count_plot = self.plots.addPlot(row=0, col=0, title="particle count")
        self.count_curve = self.count_plot.plot(pen=pg.mkPen((90, 200, 255), width=2))
        self.mean_plot = self.plots.addPlot(row=0, col=1, title="mean diameter ± 1 std")
        self.mean_curve = self.mean_plot.plot(pen=pg.mkPen((255, 200, 80), width=2))
        self.upper_curve = pg.PlotDataItem(pen=pg.mkPen((255, 200, 80, 90)))
        self.lower_curve = pg.PlotDataItem(pen=pg.mkPen((255, 200, 80, 90)))
        self.mean_plot.addItem(self.upper_curve)
        self.mean_plot.addItem(self.lower_curve)
        self.std_band = pg.FillBetweenItem(
            self.upper_curve, self.lower_curve, brush=pg.mkBrush(255, 200, 80, 60)
        )
        self.mean_plot.addItem(self.std_band)
        # The live coarsening fit <r>^n - <r0>^n = k t, as mean diameter 2 <r>(t).
        self.kinetics_curve = self.mean_plot.plot(
            pen=pg.mkPen((255, 90, 90), width=2, style=QtCore.Qt.PenStyle.DashLine)
        )
        for curve in (self.count_curve, self.mean_curve, self.upper_curve, self.lower_curve):
            # Long runs: draw at most a few points per screen pixel.
            curve.setDownsampling(auto=True, method="peak")
            curve.setClipToView(True)
        self.hist_plot = self.plots.addPlot(row=1, col=0, title="size distribution")
        self.hist_curve = pg.PlotDataItem(
            stepMode="center", fillLevel=0, brush=pg.mkBrush(90, 140, 255, 130),
            pen=pg.mkPen((140, 180, 255)),
        )
        self.hist_plot.addItem(self.hist_curve)
        self.fit_curve = self.hist_plot.plot(pen=pg.mkPen((255, 80, 80), width=2))
        self.hist_plot.setLabel("left", "particles")
        self.growth_plot = self.plots.addPlot(row=1, col=1, title="growth of selected particles")
        self.growth_plot.setLabel("left", "diameter (nm)")
        self.growth_legend = self.growth_plot.addLegend(offset=(5, 5))
        self.count_plot.setLabel("left", "count")
        self.mean_plot.setLabel("left", "diameter (nm)")
        right_layout.addWidget(self.plots, 3)
        self.fit_label = QtWidgets.QLabel("no fits yet")
        self.fit_label.setWordWrap(True)
        self.fit_label.setTextFormat(QtCore.Qt.TextFormat.RichText)
        right_layout.addWidget(self.fit_label)

        bottom = QtWidgets.QHBoxLayout()
        events_box = QtWidgets.QVBoxLayout()
        events_box.addWidget(QtWidgets.QLabel("Newest events (click to select)"))
        self.events_list = QtWidgets.QListWidget()
        self.events_list.setStyleSheet("QListWidget { background: black; color: #ddd; }")
        self.events_list.itemClicked.connect(self._on_event_clicked)
        events_box.addWidget(self.events_list)
        bottom.addLayout(events_box, 1)
        self.health_label = QtWidgets.QLabel("")
        self.health_label.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        self.health_label.setAlignment(QtCore.Qt.AlignmentFlag.AlignTop)
        self.health_label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        bottom.addWidget(self.health_label, 1)
        right_layout.addLayout(bottom, 1)
        splitter.addWidget(right)
        splitter.setSizes([800, 700])

        self.status_label = QtWidgets.QLabel("waiting for the first frame")
        self.statusBar().addWidget(self.status_label, 1)

    # ------------------------------------------------------------------ timer
    def refresh(self) -> None:
        """Read the newest snapshot and redraw if it is a new frame (the timer's slot).

        Never raises: a failing provider or redraw is logged, counted in
        ``redraw_errors`` and shown in the status bar; the next tick tries again.
        """
        try:
            snap = self.provider.latest_snapshot()
            running = bool(getattr(self.provider, "running", True))
            self.finished = not running
            if snap is None:
                self._set_status(
                    "finished: no frame was analysed" if not running else "waiting for the first frame"
                )
                return
            self._latest = snap
            self._update_health(snap)
            if not self.paused and snap.frame_index != self._drawn_index:
                # The newest frame is drawn unless the display is over its CPU budget
                # (then a later tick draws the then-newest frame: frames are conflated).
                self.throttled = self.cpu_budget is not None and not self.cpu_budget.allow()
                if not self.throttled or not running:
                    self.draw_snapshot(snap, plots=self._plots_due() or not running)
            elif (not self.paused and self._snapshot is not None
                  and getattr(snap, "live_fit", None) is not getattr(self._snapshot, "live_fit", None)):
                # A new live fit for the frame already shown (fits run on their own thread).
                self._snapshot = snap
                self._draw_panels(snap)
            elif not self.paused and self.plots_pending and (self._plots_due() or not running):
                self._draw_panels(self._snapshot)
            elif not self.paused and self.selected_tracks:
                self._refresh_growth(force=False)
            self._update_status()
        except Exception as exc:  # a live display counts, logs and keeps going
            self.redraw_errors += 1
            log.exception("dashboard redraw failed")
            self._set_status(f"redraw failed ({self.redraw_errors}x): {exc}")

    def draw_snapshot(self, snap: PipelineSnapshot, *, plots: bool = True) -> None:
        """Draw one snapshot: frame, outlines, ids, scale bar, health, and (``plots``)
        the plots and the events list; without, they are marked pending."""
        self._snapshot = snap
        self._drawn_index = snap.frame_index
        self.redraws += 1
        self._draw_frame(snap)
        self._update_health(snap)
        self.image_title.setText(self._frame_title(snap))
        if plots:
            self._draw_panels(snap)
        else:
            self.plots_pending = True

    @property
    def shows_newest(self) -> bool:
        """True when the newest snapshot read (if any) is the one drawn."""
        return self._latest is None or self._drawn_index == self._latest.frame_index

    def _plots_due(self) -> bool:
        return time.monotonic() - self._plots_drawn_s >= self._plot_interval_s

    def _draw_panels(self, snap: PipelineSnapshot) -> None:
        """Plots, histogram, events list and growth curves of ``snap``."""
        self._plots_drawn_s = time.monotonic()
        self.plots_pending = False
        self._draw_plots(snap)
        self._draw_events(snap)
        self._refresh_growth(force=False)

    # ------------------------------------------------------------------ frame
    def _draw_frame(self, snap: PipelineSnapshot) -> None:
        image = snap.image
        if image is None or image.ndim != 2 or image.size == 0:
            self.frame_item.clear()
            self.overlay_item.clear()
            self._display_labels = None
            self._hide_ids()
            self._draw_scale_bar(snap, None)
            return
        factor = core.display_factor(image.shape)
        shown = core.downsample_image(image, factor, out=self._next_image_buffer(image, factor))
        self._scale_total = float(max(int(snap.display_scale), 1) * factor)
        rows, cols = shown.shape
        rect = QtCore.QRectF(0.0, 0.0, cols * self._scale_total, rows * self._scale_total)
        if self.auto_contrast or self.levels is None:
            self.levels = core.contrast_levels(shown, self.contrast_percentiles)
        self.frame_item.setImage(shown, autoLevels=False, levels=self.levels)
        self.frame_item.setRect(rect)

        labels = snap.labels
        if labels is not None and labels.shape == image.shape:
            self._display_labels = self._contiguous(core.downsample_labels(labels, factor))
            self._display_particles = snap.particles
            self._draw_overlay()
            self.overlay_item.setRect(rect)
        else:
            self._display_labels = None
            self._display_particles = snap.particles
            self.overlay_item.clear()
        self._draw_ids(snap.particles)
        self._draw_scale_bar(snap, cols * self._scale_total)
        shape = (rows, cols)
        if shape != self._image_shape:
            self._image_shape = shape
            self.view.autoRange(padding=0.0)

    def _next_image_buffer(self, image: np.ndarray, factor: int) -> np.ndarray | None:
        """One of two reused display-frame buffers (alternated: the view may still hold
        the other one until it repaints)."""
        if factor <= 1:
            return None
        shape = (math.ceil(image.shape[0] / factor), math.ceil(image.shape[1] / factor))
        key = (shape, image.dtype)
        if key != self._image_buffers_key:
            self._image_buffers_key = key
            self._image_buffers = [np.empty(shape, dtype=image.dtype) for _ in range(2)]
        self._image_flip ^= 1
        return self._image_buffers[self._image_flip]

    def _contiguous(self, labels: np.ndarray) -> np.ndarray:
        """A C-contiguous copy of strided labels in a reused buffer (5x faster outlines)."""
        if labels.flags.c_contiguous:
            return labels
        buf = self._labels_buffer
        if buf is None or buf.shape != labels.shape or buf.dtype != labels.dtype:
            buf = self._labels_buffer = np.empty(labels.shape, dtype=labels.dtype)
        np.copyto(buf, labels)
        return buf

    def _draw_overlay(self) -> None:
        labels = self._display_labels
        if labels is None:
            return
        n = int(labels.max()) + 1 if labels.size else 1
        lut = core.label_colour_lut(
            self._display_particles, n, colour_by=self.colour_by,
            selected_tracks=self.selected_tracks,
        )
        rgba = self._renderer.render(labels, lut)
        self.overlay_item.setImage(rgba, autoLevels=False, levels=None)
        self._update_legend()

    def _update_legend(self) -> None:
        particles = self._display_particles
        if self.colour_by == "shape" and "shape" in particles and len(particles):
            shapes = tuple(sorted(pd.unique(particles["shape"].astype(str))))
        else:
            shapes = ()
        key = (self.colour_by, shapes)
        if key == self._legend_shapes:
            return
        self._legend_shapes = key
        if self.colour_by == "track":
            self.legend_label.setText("outlines coloured by track id; white = selected")
            return
        parts = [
            f'<span style="color: rgb({r},{g},{b})">■</span> {name}'
            for name, (r, g, b, _) in core.shape_colour_table(shapes).items()
        ]
        self.legend_label.setText("shape: " + " &nbsp; ".join(parts) + " &nbsp; white = selected")

    def _hide_ids(self) -> None:
        if self.id_layer.texts:
            self.id_layer.set_ids(np.empty(0), np.empty(0), [], QtCore.QRectF())

    def _draw_ids(self, particles: pd.DataFrame) -> None:
        if len(particles) == 0 or "track_id" not in particles or self.max_id_labels <= 0:
            self._hide_ids()
            return
        track = _column(particles, "track_id")
        x = _column(particles, "x_px")
        y = _column(particles, "y_px")
        ok = np.flatnonzero(np.isfinite(track) & (track >= 0) & np.isfinite(x) & np.isfinite(y))
        if ok.size > self.max_id_labels:
            # Selected particles first, then the largest.
            size = _column(particles, "area_px")
            if not np.isfinite(size).any():
                size = _column(particles, "diameter_nm")
            size = np.nan_to_num(size[ok], nan=0.0)
            priority = size + np.isin(track[ok], self.selected_tracks) * (np.abs(size).max() + 1)
            ok = ok[np.argsort(-priority, kind="stable")[: self.max_id_labels]]
        texts = track[ok].astype(np.int64).astype(str).tolist()
        self.id_layer.set_ids(x[ok], y[ok], texts, self.frame_item.mapRectToParent(
            self.frame_item.boundingRect()))

    def _draw_scale_bar(self, snap: PipelineSnapshot, width_px: float | None) -> None:
        pixel_size_nm = snap.stats.pixel_size_nm
        ok = (
            pixel_size_nm is not None
            and math.isfinite(pixel_size_nm)
            and pixel_size_nm > 0
            and width_px is not None
        )
        self.no_scale_label.setVisible(not ok)
        if not ok:
            if self._scale_bar is not None:
                self._scale_bar.setVisible(False)
            return
        length_nm = core.nice_scale_bar_nm(width_px * pixel_size_nm)
        key = (length_nm, float(pixel_size_nm))
        if key != self._scale_bar_key:
            if self._scale_bar is not None:
                self.view.scene().removeItem(self._scale_bar)
            bar = pg.ScaleBar(length_nm / pixel_size_nm, width=6, brush="w", pen="k", suffix="")
            bar.text.setText(core.format_length_nm(length_nm))
            bar.text.setColor((255, 255, 255))
            bar.text.fill = pg.mkBrush(0, 0, 0, 170)  # readable over a noisy frame
            bar.setParentItem(self.view)
            bar.anchor(itemPos=(1, 1), parentPos=(1, 1), offset=(-20, -20))
            self._scale_bar = bar
            self._scale_bar_key = key
        self._scale_bar.setVisible(True)

    # ------------------------------------------------------------------ plots
    def _draw_plots(self, snap: PipelineSnapshot) -> None:
        history = snap.history
        unit = "frame" if snap.time_unit == "frame" else "s"
        if unit != self._time_unit:
            self._time_unit = unit
            for plot in (self.count_plot, self.mean_plot, self.growth_plot):
                plot.setLabel("bottom", f"time ({unit})")
        t = _column(history, "time_s")
        count = _column(history, "count")
        mean = _column(history, "mean_diameter_nm")
        std = _column(history, "std_diameter_nm")
        ok = np.isfinite(t) & np.isfinite(count)
        self.count_curve.setData(t[ok], count[ok])
        ok = np.isfinite(t) & np.isfinite(mean)
        self.mean_curve.setData(t[ok], mean[ok])
        band = ok & np.isfinite(std)
        self.upper_curve.setData(t[band], mean[band] + std[band])
        self.lower_curve.setData(t[band], mean[band] - std[band])
        kinetics = core.live_kinetics(snap.live_fit)
        fit_text = []
        if kinetics is not None and ok.any():
            tk = np.linspace(max(kinetics.t0, float(t[ok].min())), float(t[ok].max()), 100)
            with np.errstate(invalid="ignore"):
                dk = 2.0 * kinetics.predict(tk)
            good = np.isfinite(dk)
            self.kinetics_curve.setData(tk[good], dk[good])
            fit_text.append(
                f"coarsening (dashed): &lt;r&gt;<sup>n</sup> − &lt;r<sub>0</sub>&gt;<sup>n</sup> = k t, "
                f"n = {kinetics.n:.2f}, {kinetics.mechanism}"
            )
        else:
            self.kinetics_curve.setData([], [])

        particles = snap.particles
        diameters = _column(particles, "diameter_nm")
        unit_d = "nm"
        if not np.isfinite(diameters).any() and "area_px" in particles:
            # No pixel size: show equivalent diameters in px rather than nothing.
            diameters = np.sqrt(4.0 * np.clip(_column(particles, "area_px"), 0, None) / np.pi)
            unit_d = "px"
        counts, edges = core.size_histogram(diameters)
        self.hist_curve.setData(edges, counts)
        fit = core.fitted_curve(diameters, edges,
                                live_fit=snap.live_fit if unit_d == "nm" else None)
        n = int(np.count_nonzero(np.isfinite(diameters) & (diameters > 0)))
        title = f"size distribution (n = {n})"
        if self.hist_plot.titleLabel.text != title:
            self.hist_plot.setTitle(title)  # titles stay short: they set the column widths
        if fit is None:
            self.fit_curve.setData([], [])
        else:
            x, y, name = fit
            self.fit_curve.setData(x, y)
            fit_text.insert(0, f"size distribution (red): {name} fit")
        self.fit_label.setText("; ".join(fit_text) if fit_text else "no fits yet")
        self.hist_plot.setLabel("bottom", f"diameter ({unit_d})")

    # ------------------------------------------------------------------ events
    def _draw_events(self, snap: PipelineSnapshot, max_rows: int = 100) -> None:
        events = snap.events
        if len(events) == 0:
            key: object = 0
        else:
            key = (len(events), tuple(events.iloc[-1].astype(str)))
        if key == self._events_key:
            return
        self._events_key = key
        self.events_list.clear()
        if len(events) == 0:
            return
        tail = events.iloc[-max_rows:].iloc[::-1]
        frame = _column(tail, "frame")
        into = _column(tail, "into_id")
        kinds = tail["kind"].astype(str).to_numpy() if "kind" in tail else np.full(len(tail), "?")
        ids = (
            tail["track_ids"].astype(str).to_numpy()
            if "track_ids" in tail
            else np.full(len(tail), "")
        )
        # Bounded loop (<= max_rows list rows), only when the events changed.
        for f, kind, track_ids, into_id in zip(frame, kinds, ids, into, strict=True):
            frame_text = str(int(f)) if math.isfinite(f) else "?"
            text = f"frame {frame_text:>5}  {kind:<6} {track_ids}"
            target = None
            if math.isfinite(into_id) and into_id >= 0:
                text += f" → {int(into_id)}"
                target = int(into_id)
            else:
                first = track_ids.split()[0] if track_ids.split() else ""
                if first.lstrip("-").isdigit():
                    target = int(first)
            item = QtWidgets.QListWidgetItem(text)
            item.setData(QtCore.Qt.ItemDataRole.UserRole, target)
            colour = _EVENT_COLOURS.get(kind)
            if colour is not None:
                item.setForeground(colour)
            self.events_list.addItem(item)

    def _on_event_clicked(self, item: QtWidgets.QListWidgetItem) -> None:
        target = item.data(QtCore.Qt.ItemDataRole.UserRole)
        if target is not None:
            self.select_track(int(target))

    # ------------------------------------------------------------------ health
    def _update_health(self, snap: PipelineSnapshot) -> None:
        key = (snap.frame_index, snap.stats)
        if key == self._health_key:
            return
        self._health_key = key
        self._set_text(self.health_label, "\n".join(core.health_lines(snap)))
        warnings = core.warning_lines(snap.stats)
        text = "⚠ " + "\n⚠ ".join(warnings) if warnings else "no warnings"
        self._set_text(self.warning_label, text)
        style = _WARN_STYLE if warnings else _OK_STYLE
        if style != self._warning_style:  # a style sheet re-polishes the widget: only on change
            self._warning_style = style
            self.warning_label.setStyleSheet(style)

    @staticmethod
    def _set_text(label: QtWidgets.QLabel, text: str) -> None:
        if label.text() != text:  # an unchanged text would still relayout and repaint
            label.setText(text)

    def _frame_title(self, snap: PipelineSnapshot) -> str:
        unit = "frame" if snap.time_unit == "frame" else "s"
        t = f"{snap.time_s:.2f} {unit}" if math.isfinite(snap.time_s) else "–"
        return f"frame {snap.frame_index}   t = {t}   {len(snap.particles)} particles"

    def _update_status(self) -> None:
        latest = self._latest
        newest = latest.frame_index if latest is not None else -1
        if self.finished:
            analysed = latest.stats.analysed if latest is not None else 0
            text = f"finished: {analysed} frames analysed (close the window to exit)"
        elif self.paused:
            text = f"paused (analysis and recording go on): newest frame {newest}"
        else:
            text = f"running: frame {newest}"
            if self.throttled:
                text += " (display thinned to leave the CPU to the analysis)"
        if self.redraw_errors:
            text += f"   ({self.redraw_errors} redraw errors, see log)"
        self._set_status(text)

    def _set_status(self, text: str) -> None:
        if self.status_label.text() != text:
            self.status_label.setText(text)

    # ------------------------------------------------------------------ selection
    def label_at(self, x_px: float, y_px: float) -> int:
        """Label value under full-resolution pixel coordinates (0 = background/outside)."""
        labels = self._display_labels
        if labels is None or not (math.isfinite(x_px) and math.isfinite(y_px)):
            return 0
        row = int(y_px // self._scale_total)
        col = int(x_px // self._scale_total)
        if not (0 <= row < labels.shape[0] and 0 <= col < labels.shape[1]):
            return 0
        return int(labels[row, col])

    def track_at(self, x_px: float, y_px: float) -> int | None:
        """Track id of the particle under full-resolution pixel coordinates, or None."""
        value = self.label_at(x_px, y_px)
        particles = self._display_particles
        if value <= 0 or "label" not in particles or "track_id" not in particles:
            return None
        hit = _column(particles, "label") == value
        track = _column(particles, "track_id")[hit]
        track = track[np.isfinite(track)]
        return int(track[0]) if track.size else None

    def select_track(self, track_id: int, *, add: bool = False) -> None:
        """Select a track: white outline, growth curve; ``add`` keeps the others."""
        track_id = int(track_id)
        if add:
            chosen = [t for t in self.selected_tracks if t != track_id] + [track_id]
            self.selected_tracks = chosen[-self.max_selected :]
        else:
            self.selected_tracks = [track_id]
        self._selection_changed()

    def clear_selection(self) -> None:
        """Deselect every particle."""
        self.selected_tracks = []
        self._selection_changed()

    def _selection_changed(self) -> None:
        self._draw_overlay()
        if self._snapshot is not None:
            self._draw_ids(self._snapshot.particles)
        self._refresh_growth(force=True)

    def _on_scene_click(self, event) -> None:
        if event.button() != QtCore.Qt.MouseButton.LeftButton:
            return
        pos = event.scenePos()
        if not self.view.sceneBoundingRect().contains(pos):
            return
        point = self.view.mapSceneToView(pos)
        track_id = self.track_at(point.x(), point.y())
        add = bool(event.modifiers() & QtCore.Qt.KeyboardModifier.ControlModifier)
        if track_id is None:
            if not add:
                self.clear_selection()
            return
        self.select_track(track_id, add=add)

    def _refresh_growth(self, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._growth_fetched_s < 0.5:
            return  # growth curves change slowly; fetch at most twice a second
        self._growth_fetched_s = now
        wanted = list(self.selected_tracks)
        for track_id in list(self._growth_curves):
            if track_id not in wanted:
                curve = self._growth_curves.pop(track_id)
                self.growth_plot.removeItem(curve)
                self.growth_legend.removeItem(curve)
        for track_id in wanted:
            try:
                history = self.provider.track_history(track_id)
            except Exception:
                log.exception("track_history(%s) failed", track_id)
                continue
            t = _column(history, "time_s")
            d = _column(history, "diameter_nm")
            ok = np.isfinite(t) & np.isfinite(d)
            curve = self._growth_curves.get(track_id)
            if curve is None:
                colour = tuple(int(v) for v in core.TRACK_PALETTE[track_id % len(core.TRACK_PALETTE)][:3])
                curve = self.growth_plot.plot(
                    pen=pg.mkPen(colour, width=2), symbol="o", symbolSize=4,
                    symbolBrush=colour, symbolPen=None, name=f"track {track_id}",
                )
                self._growth_curves[track_id] = curve
            curve.setData(t[ok], d[ok])

    # ------------------------------------------------------------------ controls
    def set_paused(self, paused: bool) -> None:
        """Freeze (True) or resume the display; the analysis is not affected."""
        self.paused = bool(paused)
        if self.pause_box.isChecked() != self.paused:
            self.pause_box.setChecked(self.paused)
        if not self.paused and self._latest is not None:
            self.draw_snapshot(self._latest)
        self._update_status()

    def set_colour_by(self, colour_by: str) -> None:
        """Colour outlines by ``"shape"`` class or by ``"track"`` id."""
        if colour_by not in ("shape", "track"):
            raise ValueError(f"colour_by must be 'shape' or 'track', got {colour_by!r}")
        self.colour_by = colour_by
        if self.colour_combo.currentText() != colour_by:
            self.colour_combo.setCurrentText(colour_by)
        self._draw_overlay()

    def set_levels(self, low: float, high: float) -> None:
        """Fix the display contrast to [low, high] (turns auto contrast off)."""
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ValueError(f"levels must be finite with high > low, got {low!r}, {high!r}")
        self.levels = (float(low), float(high))
        self.auto_contrast = False
        if self.contrast_box.isChecked():
            self.contrast_box.setChecked(False)
        self.frame_item.setLevels(self.levels)

    def _on_auto_contrast(self, checked: bool) -> None:
        self.auto_contrast = bool(checked)
        if self.auto_contrast and self._snapshot is not None:
            self._draw_frame(self._snapshot)

    def save_png(self, path: str | Path) -> Path:
        """Save a PNG of the whole window; returns the path.

        Raises
        ------
        InputError
            When the file cannot be written.
        """
        path = Path(path)
        if not self.grab().save(str(path), "PNG"):
            raise InputError(f"could not write the dashboard PNG to {path}: check the folder exists")
        return path

    def _on_save_clicked(self) -> None:
        index = self._snapshot.frame_index if self._snapshot is not None else 0
        name, _ = QtWidgets.QFileDialog.getSaveFileName(
            self, "Save the dashboard as PNG", f"etemlive-frame{index}.png", "PNG image (*.png)"
        )
        if not name:
            return
        try:
            self._set_status(f"saved {self.save_png(name)}")
        except InputError as exc:
            self._set_status(str(exc))

    # ------------------------------------------------------------------ closing
    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 (Qt name)
        """Closing the window stops the timer and asks the run to stop."""
        self.timer.stop()
        if self.save_png_on_close is not None:
            try:
                self.save_png(self.save_png_on_close)
            except Exception:
                log.exception("saving the window failed")
        try:
            self.provider.stop()
        except Exception:
            log.exception("stopping the run failed")
        event.accept()
        self.closed.emit()
