"""The live dashboard: a pyqtgraph window that reads pipeline snapshots on a timer.

The dashboard is a *reader*, not a stage: the pipeline publishes its newest
:class:`~etemlive.snapshot.PipelineSnapshot` (a conflated queue of one) and the window
takes it on its own ``QTimer``; it never blocks, slows or feeds back into the analysis.

This module holds the public entry points and the array helpers (pure numpy, tested
without Qt). The Qt widgets live in :mod:`etemlive._dashboard_qt` and are imported
only when a window is opened, so a headless run never imports Qt (an optional extra:
``pip install etemlive[gui]``).

Public API
----------
``SnapshotProvider``
    What the window reads (the pipeline satisfies it).
``dashboard_available() -> (bool, reason)``
    Whether a window can open here; the CLI falls back to headless when not.
``run_dashboard(provider, *, title, refresh_hz)``
    Show the window in this process until it is closed (closing asks the run to stop).
``run_dashboard_process(provider, *, title, refresh_hz)``
    The same window in its own, lower-priority process, fed over a local ZeroMQ
    socket (:mod:`etemlive._dashboard_proc`): what the CLI opens, so the window never
    takes the GIL from the analysis.
``DashboardWindow(provider, ...)``
    The window itself (imported lazily from :mod:`etemlive._dashboard_qt`).
``benchmark_refresh(n, size, n_particles) -> dict``
    Redraw time per snapshot with big frames, for ``tools/bench.py``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from .snapshot import PipelineSnapshot, PipelineStats

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from ._dashboard_proc import run_dashboard_process
    from ._dashboard_qt import DashboardWindow

__all__ = [
    "SnapshotProvider",
    "DashboardWindow",
    "OutlineRenderer",
    "benchmark_refresh",
    "boundary_mask",
    "contrast_levels",
    "CpuBudget",
    "default_cpu_budget",
    "dashboard_available",
    "display_factor",
    "downsample_image",
    "downsample_labels",
    "fit_lognormal_moments",
    "label_colour_lut",
    "nice_scale_bar_nm",
    "run_dashboard",
    "run_dashboard_process",
    "size_histogram",
]

#: Longest side (px) of what the window draws; bigger frames are reduced first.
MAX_DISPLAY_PX = 1024

#: Outline colours (RGBA) of the shape classes measure.py assigns; unknown names get a
#: stable colour from ``TRACK_PALETTE`` (hash of the name).
SHAPE_COLOURS: dict[str, tuple[int, int, int, int]] = {
    # etemlive.measure.SHAPES
    "round": (0, 230, 255, 255),
    "elongated": (255, 150, 0, 255),
    "triangle": (255, 235, 0, 255),
    "square": (60, 220, 60, 255),
    "hexagon": (180, 120, 255, 255),
    "irregular": (255, 60, 200, 255),
}

#: Track colours: saturated hues, none of them grey (the frame is grey) nor white
#: (white marks the selected particles).
TRACK_PALETTE = np.array(
    [
        (230, 25, 75, 255),
        (60, 200, 75, 255),
        (255, 225, 25, 255),
        (0, 130, 200, 255),
        (245, 130, 48, 255),
        (145, 30, 180, 255),
        (70, 240, 240, 255),
        (240, 50, 230, 255),
        (210, 245, 60, 255),
        (0, 128, 128, 255),
        (170, 110, 40, 255),
        (128, 0, 0, 255),
    ],
    dtype=np.uint8,
)

#: Outline colour of a particle that has no row in the table (or no track yet).
UNKNOWN_COLOUR = (160, 160, 160, 255)
#: Outline colour of selected particles.
SELECTED_COLOUR = (255, 255, 255, 255)


# ----------------------------------------------------------------------------------
# What the window reads
# ----------------------------------------------------------------------------------


@runtime_checkable
class SnapshotProvider(Protocol):
    """What the dashboard reads; the pipeline object satisfies it.

    Every method must be cheap and thread-safe: the window calls them from the Qt
    thread while the analysis runs on its own threads.
    """

    running: bool  #: False once the run has finished (the window then shows "finished")

    def latest_snapshot(self) -> PipelineSnapshot | None:
        """The newest snapshot (conflated), or None before the first analysed frame."""
        ...

    def track_history(self, track_id: int) -> pd.DataFrame:
        """Growth curve of one track: columns ``frame``, ``time_s``, ``diameter_nm``."""
        ...

    def stop(self) -> None:
        """Ask the run to stop (closing the window calls it)."""
        ...


class _CallableProvider:
    """Adapts a bare ``snapshot_getter()`` callable (architecture.md) to the protocol."""

    running = True

    def __init__(self, getter: Any) -> None:
        self._getter = getter

    def latest_snapshot(self) -> PipelineSnapshot | None:
        return self._getter()

    def track_history(self, track_id: int) -> pd.DataFrame:
        snap = self._getter()
        if snap is not None and track_id in snap.tracks:
            return snap.tracks[track_id]
        return pd.DataFrame({"frame": [], "time_s": [], "diameter_nm": []})

    def stop(self) -> None:
        self.running = False


def as_provider(provider: Any) -> SnapshotProvider:
    """Return ``provider`` itself, or wrap a bare snapshot-returning callable."""
    if hasattr(provider, "latest_snapshot"):
        return provider
    if callable(provider):
        return _CallableProvider(provider)
    raise TypeError(
        "the dashboard needs a pipeline (latest_snapshot / track_history / stop / running) "
        f"or a callable returning snapshots, got {type(provider).__name__}"
    )


# ----------------------------------------------------------------------------------
# Can a window open here?
# ----------------------------------------------------------------------------------

_NON_DISPLAY_PLATFORMS = ("offscreen", "minimal", "vnc", "eglfs", "linuxfb", "vkkhrdisplay")


def dashboard_available() -> tuple[bool, str]:
    """Whether a Qt window can be opened here, and why not.

    Returns
    -------
    ok : bool
        True when PySide6 and pyqtgraph are installed and a display (X11 / Wayland,
        Windows, macOS) or an explicit non-display Qt platform (``QT_QPA_PLATFORM``,
        e.g. ``offscreen``) is available.
    reason : str
        ``""`` when ok, else one line saying what to do (the CLI prints it and falls
        back to headless).
    """
    missing = [m for m in ("PySide6", "pyqtgraph") if importlib.util.find_spec(m) is None]
    if missing:
        return False, (
            f"the dashboard needs {' and '.join(missing)}: pip install 'etemlive[gui]', "
            "or add --headless"
        )
    broken = _broken_pyside()
    if broken:
        return False, broken
    platform = os.environ.get("QT_QPA_PLATFORM", "").split(":")[0].strip().lower()
    if platform in _NON_DISPLAY_PLATFORMS or platform in ("windows", "cocoa"):
        return True, ""
    if sys.platform in ("win32", "darwin"):
        return True, ""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return True, ""
    return False, "no display: add --headless"


def pyside_refcount_bug(pyside_version: str, python_version: tuple[int, int]) -> bool:
    """True for PySide6 builds known to crash this Python.

    PySide6 6.12.0 returns ``None`` from void methods without a reference; on Python
    < 3.12 (``None`` not immortal) the interpreter aborts with "none_dealloc" after a
    few thousand Qt calls, i.e. seconds into a live display.
    """
    return pyside_version.startswith("6.12.0") and tuple(python_version) < (3, 12)


def _broken_pyside() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("PySide6-Essentials", "PySide6"):
        try:
            found = version(dist)
        except PackageNotFoundError:
            continue
        if pyside_refcount_bug(found, sys.version_info[:2]):
            return (
                f"PySide6 {found} crashes on Python {sys.version_info[0]}.{sys.version_info[1]}: "
                "pip install 'PySide6-Essentials<6.12', or add --headless"
            )
        return ""
    return ""


def __getattr__(name: str) -> Any:
    # The Qt window is imported on first use only (headless runs never import Qt).
    if name == "DashboardWindow":
        from ._dashboard_qt import DashboardWindow

        return DashboardWindow
    if name == "run_dashboard_process":
        from ._dashboard_proc import run_dashboard_process

        return run_dashboard_process
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_dashboard(
    provider: SnapshotProvider,
    *,
    title: str = "etemlive",
    refresh_hz: float = 20.0,
    cpu_budget: float | str | None = "auto",
    close_when_finished: bool = False,
    save_png: str | os.PathLike[str] | None = None,
) -> dict[str, int]:
    """Show the dashboard for a run and return when the window is closed.

    Creates the ``QApplication`` if there is none, shows a ``DashboardWindow`` that
    reads ``provider.latest_snapshot()`` ``refresh_hz`` times a second, and runs an
    event loop until the window is closed. Closing calls ``provider.stop()``; when
    the run finishes first, the window stays open on the final state ("finished").
    Ctrl+C in the terminal (or SIGTERM) closes the window, so the run stops the same way.

    Parameters
    ----------
    provider : SnapshotProvider
        The running pipeline (or a callable returning snapshots).
    title : str
        Window title.
    refresh_hz : float
        Redraw rate in Hz (> 0); a redraw is skipped when no new frame arrived.
    cpu_budget : float, "auto" or None
        The window's CPU budget (see :class:`DashboardWindow`).
    close_when_finished : bool
        Close the window once the run has finished and its last frame is drawn.
    save_png : path, optional
        Save a PNG of the window just before it closes.

    Returns
    -------
    dict
        ``redraws`` (frames drawn), ``skipped`` (new frames not drawn: over the CPU
        budget) and ``redraw_errors`` of the window.
    """
    import signal
    import threading

    from PySide6 import QtCore, QtWidgets

    from ._dashboard_qt import DashboardWindow

    app = QtWidgets.QApplication.instance()
    if app is None:  # kept referenced until the window closes
        app = QtWidgets.QApplication(sys.argv[:1])
        app.setApplicationName("etemlive")
    window = DashboardWindow(provider, title=title, refresh_hz=refresh_hz, cpu_budget=cpu_budget)
    attach = getattr(provider, "attach_window", None)
    if callable(attach):  # a remote provider asks for frames only when they will be drawn
        attach(window)
    if save_png is not None:
        window.save_png_on_close = save_png
    loop = QtCore.QEventLoop()
    window.closed.connect(loop.quit)
    if close_when_finished:
        def close_if_finished() -> None:
            if window.finished and window.shows_newest:
                window.close()

        finisher = QtCore.QTimer(window)
        finisher.timeout.connect(close_if_finished)
        finisher.start(200)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        # Qt's loop holds the main thread; the refresh timer lets Python run the handlers.
        # Ctrl-C and SIGTERM close the window, which stops the run (the window would
        # otherwise stay open on the finished run and the process would not exit).
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: window.close())
    try:
        window.show()
        loop.exec()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        counts = {"redraws": window.redraws, "redraw_errors": window.redraw_errors,
                  "skipped": window.cpu_budget.denied if window.cpu_budget is not None else 0}
        window.deleteLater()
        # processEvents() does not run deferred deletes; free the window now.
        QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
    return counts


# ----------------------------------------------------------------------------------
# Array helpers (pure numpy; the window calls them once per new frame)
# ----------------------------------------------------------------------------------


def display_factor(shape: tuple[int, ...], max_px: int = MAX_DISPLAY_PX) -> int:
    """Integer factor that brings the longest side of ``shape`` to ``<= max_px``."""
    longest = max(int(shape[0]), int(shape[1]), 1)
    return max(1, math.ceil(longest / max_px))


def downsample_image(
    image: np.ndarray, factor: int, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Reduce a frame by an integer ``factor`` for display (area average, anti-aliased).

    The output has ``ceil(rows / factor), ceil(cols / factor)`` pixels, the same grid
    as :func:`downsample_labels`, so outlines stay on their particles. ``out``, when
    it has that shape and the frame's dtype, is written in place (reused between frames).
    """
    if factor <= 1:
        return image
    import cv2

    rows, cols = image.shape[:2]
    size = (math.ceil(cols / factor), math.ceil(rows / factor))
    src = image if image.dtype in (np.uint8, np.uint16, np.float32) else image.astype(np.float32)
    if out is not None and out.shape == (size[1], size[0]) and out.dtype == src.dtype:
        return cv2.resize(src, size, dst=out, interpolation=cv2.INTER_AREA)
    return cv2.resize(src, size, interpolation=cv2.INTER_AREA)


def downsample_labels(labels: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour reduction of a label image (a strided view, no copy)."""
    if factor <= 1:
        return labels
    return labels[::factor, ::factor]


def contrast_levels(
    image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5), *, max_samples: int = 65536
) -> tuple[float, float]:
    """Display levels (low, high) from intensity percentiles of a frame.

    Percentiles are taken on a regular subsample of at most ``max_samples`` pixels
    (cheap on 2048 x 2048 frames); NaNs are ignored. A flat or empty frame gives
    ``high = low + 1`` so that the display never divides by zero.
    """
    step = max(1, int(math.sqrt(image.size / max_samples)))
    sample = np.asarray(image[::step, ::step], dtype=np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(sample, percentiles)
    low, high = float(low), float(high)
    if not high > low:
        high = low + 1.0
    return low, high


def boundary_mask(labels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Pixels of a particle that touch (4-neighbourhood) a different label.

    Parameters
    ----------
    labels : ndarray of int, shape (rows, cols)
        Instance labels, 0 = background.
    out : ndarray of bool, optional
        Buffer to write into (same shape), reused between frames.

    Returns
    -------
    ndarray of bool
        True on the inner boundary of every particle (frame edges are not boundaries).
    """
    if out is None:
        out = np.zeros(labels.shape, dtype=bool)
    else:
        out.fill(False)
    vertical = labels[1:] != labels[:-1]
    out[1:] |= vertical
    out[:-1] |= vertical
    horizontal = labels[:, 1:] != labels[:, :-1]
    out[:, 1:] |= horizontal
    out[:, :-1] |= horizontal
    out &= labels > 0
    return out


class OutlineRenderer:
    """Draws every particle outline into one RGBA image in a few vectorized passes.

    Buffers are kept between frames (two RGBA buffers, alternated, so the image the
    view still holds is never overwritten while it may be painted).

    Parameters
    ----------
    width_px : int
        Outline width in display pixels: 1 (inner boundary) or 2 (plus the pixel
        outside it, visible when the view shrinks the image).
    """

    def __init__(self, width_px: int = 2) -> None:
        if width_px not in (1, 2):
            raise ValueError(f"width_px must be 1 or 2, got {width_px}")
        self.width_px = width_px
        self._key: tuple | None = None
        self._flip = 0

    def _buffers(self, labels: np.ndarray) -> None:
        key = (labels.shape, labels.dtype)
        if key != self._key:
            self._key = key
            self._mask = np.zeros(labels.shape, dtype=bool)
            self._index = np.zeros(labels.shape, dtype=labels.dtype)
            self._rgba = [np.zeros((*labels.shape, 4), dtype=np.uint8) for _ in range(2)]

    def render(self, labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
        """Return an RGBA overlay: ``lut[label]`` on outlines, transparent elsewhere.

        Parameters
        ----------
        labels : ndarray of int, shape (rows, cols)
            Instance labels (display resolution).
        lut : ndarray of uint8, shape (n, 4)
            RGBA per label value; ``lut[0]`` should be transparent. Label values
            ``>= n`` are drawn with ``lut[-1]``.
        """
        self._buffers(labels)
        mask = boundary_mask(labels, out=self._mask)
        index = self._index
        np.multiply(labels, mask, out=index, casting="unsafe")
        if self.width_px == 2:
            # Widen by one pixel down / right (2 x 2 maximum filter, in place).
            np.maximum(index[1:], index[:-1], out=index[1:])
            np.maximum(index[:, 1:], index[:, :-1], out=index[:, 1:])
        self._flip ^= 1
        rgba = self._rgba[self._flip]
        np.take(lut, index, axis=0, out=rgba, mode="clip")
        return rgba


def _shape_colour(name: object) -> tuple[int, int, int, int]:
    key = str(name).strip().lower()
    if key in SHAPE_COLOURS:
        return SHAPE_COLOURS[key]
    return tuple(int(v) for v in TRACK_PALETTE[zlib.crc32(key.encode()) % len(TRACK_PALETTE)])


def shape_colour_table(shapes: Iterable[object]) -> dict[str, tuple[int, int, int, int]]:
    """RGBA colour of each shape class name (for the legend)."""
    return {str(s): _shape_colour(s) for s in shapes}


def label_colour_lut(
    particles: pd.DataFrame,
    n_labels: int,
    *,
    colour_by: str = "shape",
    selected_tracks: Iterable[int] = (),
) -> np.ndarray:
    """RGBA colour of every label value of one frame.

    Parameters
    ----------
    particles : DataFrame
        That frame's particle rows; uses ``label`` and ``shape`` or ``track_id``.
    n_labels : int
        Size of the table (largest label value + 1).
    colour_by : {"shape", "track"}
        Colour by shape class, or by track id (a fixed palette cycled by id).
    selected_tracks : iterable of int
        Tracks drawn white.

    Returns
    -------
    ndarray of uint8, shape (n_labels, 4)
        Row 0 (background) is transparent; labels without a row are grey.
    """
    if colour_by not in ("shape", "track"):
        raise ValueError(f"colour_by must be 'shape' or 'track', got {colour_by!r}")
    n_labels = max(int(n_labels), 1)
    lut = np.empty((n_labels, 4), dtype=np.uint8)
    lut[:] = UNKNOWN_COLOUR
    lut[0] = 0
    if len(particles) == 0 or "label" not in particles:
        return lut
    label = pd.to_numeric(particles["label"], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(label) & (label > 0) & (label < n_labels)
    label = np.where(ok, label, 0).astype(np.int64)
    track = (
        pd.to_numeric(particles["track_id"], errors="coerce").to_numpy(dtype=float)
        if "track_id" in particles
        else np.full(len(particles), np.nan)
    )
    if colour_by == "shape" and "shape" in particles:
        names = particles["shape"].astype(str)
        table = shape_colour_table(pd.unique(names))
        codes, uniques = pd.factorize(names)
        colours = np.array([table[u] for u in uniques], dtype=np.uint8).reshape(-1, 4)
        lut[label[ok]] = colours[codes[ok]]
    elif colour_by == "track":
        has = ok & np.isfinite(track) & (track >= 0)
        lut[label[has]] = TRACK_PALETTE[track[has].astype(np.int64) % len(TRACK_PALETTE)]
    selected = np.fromiter((int(t) for t in selected_tracks), dtype=float)
    if selected.size:
        sel = ok & np.isin(track, selected)
        lut[label[sel]] = SELECTED_COLOUR
    return lut


def nice_scale_bar_nm(field_width_nm: float, fraction: float = 0.2) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k nm) near ``fraction`` of the field."""
    target = float(field_width_nm) * fraction
    if not math.isfinite(target) or target <= 0:
        raise ValueError(f"field width must be positive and finite, got {field_width_nm!r} nm")
    power = 10.0 ** math.floor(math.log10(target))
    for step in (5.0, 2.0, 1.0):
        if step * power <= target:
            return step * power
    return power  # pragma: no cover (target >= power always)


def format_length_nm(length_nm: float) -> str:
    """``"200 nm"``, ``"1.5 µm"``, ``"0.5 nm"``."""
    if length_nm >= 1000:
        return f"{length_nm / 1000:g} µm"
    return f"{length_nm:g} nm"


def size_histogram(
    diameters: np.ndarray, *, max_bins: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram (counts, edges) of the finite positive diameters of one frame.

    The number of bins follows sqrt(n), between 5 and ``max_bins``; an empty input
    gives zero counts on [0, 1].
    """
    d = np.asarray(diameters, dtype=float)
    d = d[np.isfinite(d) & (d > 0)]
    if d.size == 0:
        return np.zeros(5), np.linspace(0.0, 1.0, 6)
    n_bins = int(np.clip(round(math.sqrt(d.size)), 5, max_bins))
    high = float(d.max())
    counts, edges = np.histogram(d, bins=n_bins, range=(0.0, high * 1.05 if high > 0 else 1.0))
    return counts.astype(float), edges


def fit_lognormal_moments(diameters: np.ndarray) -> tuple[float, float] | None:
    """Log-normal parameters (mu, sigma of ln d) by moments; None with < 3 diameters."""
    d = np.asarray(diameters, dtype=float)
    d = d[np.isfinite(d) & (d > 0)]
    if d.size < 3:
        return None
    logs = np.log(d)
    sigma = float(logs.std(ddof=1))
    if not sigma > 0:
        return None
    return float(logs.mean()), sigma


def lognormal_pdf(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    """Log-normal density at ``x`` (> 0), zero at ``x <= 0``."""
    x = np.asarray(x, dtype=float)
    out = np.zeros_like(x)
    pos = x > 0
    z = (np.log(x[pos]) - mu) / sigma
    out[pos] = np.exp(-0.5 * z * z) / (x[pos] * sigma * math.sqrt(2 * math.pi))
    return out


def model_pdf(model: Any, x: np.ndarray) -> np.ndarray | None:
    """Density at ``x`` (nm) of a fitted model of :mod:`etemlive.analysis` (``ModelFit``).

    Sums the weighted components (normal, or log-normal with ``log_mean`` /
    ``log_std``); None when a component is not usable.
    """
    x = np.asarray(x, dtype=float)
    pdf = np.zeros_like(x)
    lognormal = "lognormal" in str(getattr(model, "model", ""))
    for c in getattr(model, "components", ()):
        if lognormal:
            if not (np.isfinite(c.log_mean) and c.log_std > 0):
                return None
            pdf += c.weight * lognormal_pdf(x, c.log_mean, c.log_std)
        else:
            if not (np.isfinite(c.mean_nm) and c.std_nm > 0):
                return None
            z = (x - c.mean_nm) / c.std_nm
            pdf += c.weight * np.exp(-0.5 * z * z) / (c.std_nm * math.sqrt(2 * math.pi))
    if not pdf.any() or not np.all(np.isfinite(pdf)):
        return None
    return pdf


def model_name(model: Any) -> str:
    """``"log-normal"``, ``"normal mixture of 2"`` ... for a fitted model."""
    kind = "log-normal" if "lognormal" in str(getattr(model, "model", "")) else "normal"
    k = len(getattr(model, "components", ()))
    return f"{kind} mixture of {k}" if k > 1 else kind


def fitted_curve(
    diameters: np.ndarray,
    edges: np.ndarray,
    *,
    live_fit: Any = None,
    n_points: int = 200,
) -> tuple[np.ndarray, np.ndarray, str] | None:
    """The fitted size distribution, scaled to histogram counts.

    Uses, in order: the pipeline's live fit (``snapshot.live_fit``: the BIC-best model,
    mixtures included, on the last frames, refreshed every few frames); else
    ``etemlive.analysis.fit_size_distribution`` on this frame (one family, by BIC);
    else a log-normal by moments.

    Returns
    -------
    (x, y, name) or None
        ``x`` in the diameter unit, ``y`` in counts per bin; None when there are too
        few diameters to fit.
    """
    d = np.asarray(diameters, dtype=float)
    d = d[np.isfinite(d) & (d > 0)]
    if d.size < 3:
        return None
    bin_width = float(edges[1] - edges[0])
    x = np.linspace(max(float(edges[0]), 1e-9), float(edges[-1]), n_points)
    best = _live_best_fit(live_fit)
    if best is not None:
        pdf = model_pdf(best, x)
        if pdf is not None:
            return x, pdf * d.size * bin_width, f"{model_name(best)}, live"
    curve = _analysis_curve(d, x)
    if curve is not None:
        pdf, name = curve
        return x, pdf * d.size * bin_width, name
    params = fit_lognormal_moments(d)
    if params is None:
        return None
    return x, lognormal_pdf(x, *params) * d.size * bin_width, "log-normal"


def _live_best_fit(live_fit: Any) -> Any:
    distribution = getattr(live_fit, "distribution", None)
    if distribution is None or getattr(distribution, "status", "") != "ok":
        return None
    return getattr(distribution, "best_fit", None)


def live_kinetics(live_fit: Any) -> Any:
    """The live coarsening-kinetics fit (``KineticsFit``) when it succeeded, else None."""
    kinetics = getattr(live_fit, "kinetics", None)
    if kinetics is None or getattr(kinetics, "status", "") != "ok":
        return None
    return kinetics


def _analysis_curve(d: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, str] | None:
    """Density at ``x`` of ``etemlive.analysis.fit_size_distribution``'s best single family.

    Live, only one family (normal or log-normal, chosen by BIC, no bootstrap: < 1 ms
    for 500 particles); the mixtures with uncertainties are the report's job.
    Returns None when the analysis module is absent, has too few particles or fails.
    """
    try:
        from .analysis import fit_size_distribution
    except Exception:  # the analysis module may not exist or not import here
        return None
    try:
        best = fit_size_distribution(d, max_components=1, n_bootstrap=0, n_init=1).best_fit
    except Exception:  # a failed fit on a live frame is not fatal: fall back
        log.debug("live size fit failed", exc_info=True)
        return None
    if best is None:
        return None
    pdf = model_pdf(best, x)
    return None if pdf is None else (pdf, model_name(best))


def health_lines(snapshot: PipelineSnapshot) -> list[str]:
    """The pipeline-health panel text, one line per group of counters."""
    s = snapshot.stats
    lines = [
        f"received {s.received} ({_num(s.fps_received, '.1f')} fps)   "
        f"analysed {s.analysed} ({_num(s.fps_analysed, '.1f')} fps)",
        f"latency p50 {_num(s.latency_p50_ms, '.1f')} ms   p99 {_num(s.latency_p99_ms, '.1f')} ms",
        f"dropped {s.dropped}   malformed {s.malformed}   gaps {s.gaps}   "
        f"failed {s.failed}   queued {s.queued}",
        f"backend {s.backend or '–'} on {s.device or '–'}",
    ]
    if s.pixel_size_nm is None:
        lines.append("pixel size: none (sizes in px)")
    else:
        lines.append(
            f"pixel size {s.pixel_size_nm:.4g} nm/px ({s.pixel_size_source or 'unknown source'})"
        )
    return lines


def warning_lines(stats: PipelineStats) -> list[str]:
    """Warnings the window shows in its coloured banner (besides logging them)."""
    out: list[str] = []
    if stats.dropped > 0:
        out.append(f"dropping frames: {stats.dropped} dropped (analysis slower than the camera)")
    if stats.malformed > 0:
        out.append(f"{stats.malformed} malformed messages skipped")
    if stats.gaps > 0:
        out.append(f"{stats.gaps} gaps in frame numbers")
    if stats.failed > 0:
        out.append(f"{stats.failed} frames failed to analyse")
    if stats.pixel_size_nm is None:
        out.append("no pixel size: sizes are in px (pass --pixel-size-nm X)")
    out.extend(w for w in stats.warnings if w not in out)
    return out


def default_cpu_budget(n_cores: int | None = None) -> float:
    """Share of one core the display may use by default: 5 % of the machine, 0.1 to 0.6.

    Measured on the 2-core machine (docs/benchmarks.md, Dashboard): a display thread
    at 0.2 of a core cost the saturated analysis 14 % of its throughput (GIL and
    cache contention add to the CPU share), over the 10 % the product allows.
    """
    cores = n_cores if n_cores is not None else (os.cpu_count() or 1)
    return float(np.clip(0.05 * cores, 0.1, 0.6))


class CpuBudget:
    """Keeps the display thread under a share of one core, measured (not guessed).

    The dashboard shares the CPU (and the GIL) with the analysis; on a small machine
    drawing every frame would slow the analysis down. Before each redraw the window
    asks :meth:`allow`, which compares the display thread's CPU time over the last
    ``window_s`` seconds (``time.thread_time``: paint included, since Qt paints on
    this thread) with ``fraction``; above it, the redraw waits for a later tick.

    Parameters
    ----------
    fraction : float
        Largest share of one core (0 < fraction), e.g. 0.2 = 200 ms of CPU per second.
    window_s : float
        Length of the measuring window in seconds.
    clock, cpu_clock : callable
        Wall clock and this thread's CPU clock, in seconds.
    """

    def __init__(
        self,
        fraction: float,
        *,
        window_s: float = 1.0,
        clock: Any = None,
        cpu_clock: Any = None,
    ) -> None:
        if not (math.isfinite(fraction) and fraction > 0):
            raise ValueError(f"cpu budget must be a positive share of a core, got {fraction!r}")
        import time
        from collections import deque

        self.fraction = float(fraction)
        self.window_s = float(window_s)
        self._clock = clock or time.perf_counter
        self._cpu_clock = cpu_clock or time.thread_time
        self._samples: deque[tuple[float, float]] = deque()
        self.share = 0.0  #: last measured share of a core
        self.denied = 0  #: redraws postponed so far

    def within(self) -> bool:
        """Whether a redraw now would be allowed, without recording a tick."""
        samples = self._samples
        if not samples:
            return True
        now, cpu = self._clock(), self._cpu_clock()
        # The reference sample allow() would keep after trimming (see there).
        first, n = 0, len(samples) + 1
        while n - first > 2 and now - samples[first + 1][0] >= self.window_s:
            first += 1
            if first + 1 == len(samples):
                break
        then, cpu_then = samples[first]
        span = now - then
        if span < 0.25 * self.window_s:
            return True
        return (cpu - cpu_then) / span <= self.fraction

    def allow(self) -> bool:
        """Record a tick; True when the thread is within budget (draw now)."""
        now, cpu = self._clock(), self._cpu_clock()
        samples = self._samples
        samples.append((now, cpu))
        while len(samples) > 2 and now - samples[1][0] >= self.window_s:
            samples.popleft()
        then, cpu_then = samples[0]
        span = now - then
        if span < 0.25 * self.window_s:
            return True  # too short a history to judge
        self.share = (cpu - cpu_then) / span
        if self.share <= self.fraction:
            return True
        self.denied += 1
        return False


def _num(value: float | None, fmt: str) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return format(value, fmt)


# ----------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------


def synthetic_snapshots(
    n: int, *, size: int = 2048, n_particles: int = 500, seed: int = 0
) -> list[PipelineSnapshot]:
    """``n`` snapshots of a ``size`` x ``size`` frame with ``n_particles`` drawn discs.

    For the refresh benchmark: labels drawn with OpenCV, an image with shot noise, the
    particle table, a history growing by one row per snapshot and a few events. The
    particles move by a pixel per snapshot so every redraw differs.
    """
    import cv2

    rng = np.random.default_rng(seed)
    pixel_size_nm = 0.5
    radius = rng.uniform(4, max(6.0, size / 80), n_particles)
    centre = rng.uniform(radius[:, None] + 2, size - radius[:, None] - 2, (n_particles, 2))
    shapes = np.array(["round", "elongated", "faceted"])[rng.integers(0, 3, n_particles)]
    base = rng.poisson(200.0, (size, size)).astype(np.uint16)
    history_all = pd.DataFrame(
        {
            "frame": np.arange(n),
            "time_s": np.arange(n) * 0.1,
            "count": np.full(n, n_particles),
            "mean_diameter_nm": 2 * radius.mean() * pixel_size_nm + 0.01 * np.arange(n),
            "std_diameter_nm": np.full(n, 2 * radius.std() * pixel_size_nm),
            "latency_ms": rng.uniform(10, 30, n),
        }
    )
    out = []
    for k in range(n):
        labels = np.zeros((size, size), dtype=np.int32)
        shift = k % 4
        for i in range(n_particles):  # setup only, not the timed path
            cv2.circle(
                labels, (int(centre[i, 0]) + shift, int(centre[i, 1])), int(radius[i]), i + 1, -1
            )
        image = base.copy()
        image[labels > 0] //= 2
        diameter_nm = 2 * radius * pixel_size_nm
        particles = pd.DataFrame(
            {
                "frame": k,
                "time_s": k * 0.1,
                "track_id": np.arange(n_particles),
                "x_px": centre[:, 0] + shift,
                "y_px": centre[:, 1],
                "area_px": np.pi * radius**2,
                "diameter_nm": diameter_nm,
                "shape": shapes,
                "label": np.arange(1, n_particles + 1),
            }
        )
        events = pd.DataFrame(
            {
                "frame": [max(k - 1, 0), k],
                "kind": ["appear", "merge"],
                "track_ids": ["3", "1 2"],
                "into_id": [-1, 1],
            }
        )
        out.append(
            PipelineSnapshot(
                frame_index=k,
                time_s=k * 0.1,
                image=image,
                display_scale=1,
                labels=labels,
                particles=particles,
                history=history_all.iloc[: k + 1].copy(),
                events=events,
                stats=PipelineStats(
                    received=k + 1,
                    analysed=k + 1,
                    fps_received=10.0,
                    fps_analysed=10.0,
                    latency_p50_ms=15.0,
                    latency_p99_ms=28.0,
                    backend="classical",
                    device="cpu",
                    pixel_size_nm=pixel_size_nm,
                    pixel_size_source="metadata",
                ),
            )
        )
    return out


def benchmark_refresh(
    n: int = 50, size: int = 2048, n_particles: int = 500, *, with_plots: bool = True
) -> dict:
    """Time the dashboard's redraw of one new snapshot (update + paint of the window).

    Opens a real ``DashboardWindow`` (offscreen when there is no display), feeds it
    ``n`` distinct snapshots of ``size`` x ``size`` frames with ``n_particles``
    particles and times, per snapshot, the data update (``draw_snapshot``) and the
    painting of what changed (the event loop's repaint, run to completion). ``with_plots=False`` times the redraws
    between two plot refreshes (the window redraws plots at ``plot_hz``, 5 Hz, and the
    frame, outlines and ids at every new snapshot).

    Returns
    -------
    dict
        ``n``, ``size_px``, ``n_particles``, ``update_ms_median``, ``total_ms_median``,
        ``total_ms_p90``, ``total_ms_max``, ``fps`` (1000 / total median),
        ``platform`` (the Qt platform used).
    """
    import time

    if not dashboard_available()[0]:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from PySide6 import QtCore, QtWidgets

    from ._dashboard_qt import DashboardWindow

    snapshots = synthetic_snapshots(n + 2, size=size, n_particles=n_particles)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])

    class _Static:
        running = True

        def latest_snapshot(self) -> PipelineSnapshot | None:
            return None

        def track_history(self, track_id: int) -> pd.DataFrame:
            return pd.DataFrame({"frame": [], "time_s": [], "diameter_nm": []})

        def stop(self) -> None:
            self.running = False

    window = DashboardWindow(_Static(), refresh_hz=0.0)
    window.resize(1600, 1000)
    window.show()
    app.processEvents()
    window.select_track(1)
    # Two warm-up redraws (first-use allocations, font caches).
    for snap in snapshots[:2]:
        window.draw_snapshot(snap)
        window.repaint()
        app.processEvents()
    update_ms, total_ms = [], []
    for snap in snapshots[2:]:
        t0 = time.perf_counter()
        window.draw_snapshot(snap, plots=with_plots)
        t1 = time.perf_counter()
        # Paint what changed, as the live event loop does (scene updates are posted).
        app.processEvents()
        app.processEvents()
        t2 = time.perf_counter()
        update_ms.append((t1 - t0) * 1e3)
        total_ms.append((t2 - t0) * 1e3)
    window.close()
    window.deleteLater()
    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
    total = np.asarray(total_ms)
    return {
        "n": n,
        "size_px": size,
        "n_particles": n_particles,
        "update_ms_median": float(np.median(update_ms)),
        "total_ms_median": float(np.median(total)),
        "total_ms_p90": float(np.percentile(total, 90)),
        "total_ms_max": float(total.max()),
        "fps": float(1000.0 / np.median(total)),
        "with_plots": with_plots,
        "platform": QtWidgets.QApplication.platformName(),
    }
