"""Wire a source, a segmenter, the tracker and the sinks; measure the run's health.

Threads: the caller's thread iterates the source and hands frames to a small pool
of workers that segment and measure (OpenCV / NumPy / ONNX Runtime release the GIL,
so two workers use both cores); results are consumed strictly in frame order by the
same thread, which tracks, records and publishes a snapshot. A live source
(:class:`etemlive.sources.zmq.ZmqSource`) receives on its own thread with its own
drop policy, so analysis never blocks reception.

The dashboard and the headless status line are readers: they call
:meth:`Pipeline.latest_snapshot` on their own timers (a conflated queue of one).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from . import __version__
from .errors import EtemliveError, InputError
from .frames import Frame, FrameSource, validate_pixel_size_nm
from .measure import measure_particles
from .record import EVENT_COLUMNS, FRAME_COLUMNS, Recorder
from .segment import Segmenter
from .segment.batching import BatchingSegmenter
from .snapshot import PipelineSnapshot, PipelineStats

log = logging.getLogger(__name__)

#: How many recent latencies the live p50 / p99 are computed over.
_LATENCY_WINDOW = 500
#: Seconds over which live fps are averaged.
_FPS_WINDOW_S = 3.0
#: Newest events kept for the dashboard.
_EVENTS_KEPT = 200


@dataclass(frozen=True, slots=True)
class _Analysed:
    """What a worker hands back for one frame."""

    frame: Frame
    labels: np.ndarray | None
    particles: pd.DataFrame | None
    error: str | None
    segment_ms: float
    measure_ms: float


class _RateMeter:
    """Events per second over a sliding time window."""

    def __init__(self, window_s: float = _FPS_WINDOW_S) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], 1e-9)
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()


class _FrameHistory:
    """frames.csv rows kept for display in growable column arrays.

    Rows are only appended, so a snapshot shares the filled part of the arrays
    (views, no copy): building a snapshot costs O(1), not O(frames so far), which
    matters in a run of hours. Growing reallocates; earlier views stay valid.
    """

    def __init__(self, columns: tuple[str, ...], capacity: int = 1024) -> None:
        self._columns = columns
        self._data = {c: np.empty(capacity, dtype=float) for c in columns}
        self._n = 0

    def append(self, row: dict[str, float]) -> None:
        if self._n == len(self._data[self._columns[0]]):
            self._data = {c: np.concatenate([a, np.empty_like(a)]) for c, a in self._data.items()}
        for column in self._columns:
            self._data[column][self._n] = row[column]
        self._n += 1

    def table(self) -> pd.DataFrame:
        """The rows so far as a DataFrame over views of the arrays (read-only use)."""
        # Read the row count once: the frame loop may append while a reader builds this.
        n, data = self._n, self._data
        return pd.DataFrame({c: a[:n] for c, a in data.items()}, copy=False)


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float("nan")


class Pipeline:
    """One analysis run: source -> segment -> measure -> track -> record / snapshot.

    Parameters
    ----------
    source : FrameSource
        Where frames come from (file, camera stream, simulator).
    segmenter : Segmenter
        Image -> instance labels.
    recorder : Recorder
        Writes the output folder.
    pixel_size_nm : float or None
        Calibration in nm/px. None: taken from the first frame's own pixel size,
        and when that is missing too, 1 nm/px is assumed with a visible warning
        (sizes are then in px), so a live run never stops for it.
    pixel_size_source : str or None
        Where ``pixel_size_nm`` came from (``metadata``, ``user``, ``scale bar``).
    frame_interval_s : float or None
        Seconds between frames, for the tracker's motion model; None or 0 means
        time is counted in frames (``time_unit = "frame"``).
    tracker_factory : callable, optional
        ``tracker_factory(pixel_size_nm, frame_interval_s) -> tracker`` with the
        ``Tracker`` interface of :mod:`etemlive.track.tracker`. None: no tracking
        (``track_id`` stays -1).
    workers : int, optional
        Segmentation workers run in parallel; default 2 for the classical
        segmenter (CPU bound, releases the GIL), 1 for network backends (which
        use their own threads or the GPU).
    publish_snapshots : bool
        Build display snapshots (needed by the dashboard only).
    display_max_px : int
        Snapshot images are downsampled by an integer factor to at most this size.
    input_name : str
        What is analysed, for summary.json.
    summary_extra : dict, optional
        More fields for summary.json.
    max_frames, max_seconds : optional
        Stop after this many frames received / seconds.
    exclude_mask : ndarray of bool, optional
        Pixels that are not specimen (a burned-in scale bar and its label): any
        particle touching them is removed before measurement.
    live_analysis : optional
        An :class:`etemlive.analysis.LiveAnalysis` fed every analysed frame on its own
        thread (refits never delay the frames); its newest fit is ``live_fit``.
    """

    def __init__(
        self,
        source: FrameSource,
        segmenter: Segmenter,
        recorder: Recorder,
        *,
        pixel_size_nm: float | None = None,
        pixel_size_source: str | None = None,
        frame_interval_s: float | None = None,
        tracker_factory: Callable[[float, float | None], Any] | None = None,
        workers: int | None = None,
        publish_snapshots: bool = False,
        display_max_px: int = 1024,
        input_name: str = "",
        summary_extra: dict[str, Any] | None = None,
        max_frames: int | None = None,
        max_seconds: float | None = None,
        exclude_mask: np.ndarray | None = None,
        live_analysis: Any = None,
    ) -> None:
        self.source = source
        self.segmenter = segmenter
        self.recorder = recorder
        self._pixel_size_nm = (
            validate_pixel_size_nm(pixel_size_nm) if pixel_size_nm is not None else None
        )
        self._pixel_size_source = pixel_size_source if pixel_size_nm is not None else None
        interval = frame_interval_s if frame_interval_s and frame_interval_s > 0 else None
        self.frame_interval_s = interval
        self.time_unit = "s" if interval else "frame"
        self._tracker_factory = tracker_factory
        self.tracker: Any = None
        if workers is None:
            batch_frames = int(getattr(segmenter, "batch_frames", 1) or 1)
            if batch_frames > 1 and hasattr(segmenter, "segment_batch"):
                # A GPU segmenter: one worker per frame of a batch; the concurrent
                # calls are gathered into one network call (segment/batching.py).
                segmenter = BatchingSegmenter(segmenter, max_batch=batch_frames)
                self.segmenter = segmenter
                workers = batch_frames
            else:
                workers = 2 if getattr(segmenter, "name", "") == "classical" else 1
        self.workers = max(1, int(workers))
        self.publish_snapshots = publish_snapshots
        self.display_max_px = display_max_px
        self.input_name = input_name
        self.summary_extra = dict(summary_extra or {})
        self.max_frames = max_frames
        self.max_seconds = max_seconds
        self.exclude_mask = exclude_mask
        self.live_analysis = live_analysis
        self._live_queue: queue.Queue[pd.DataFrame | None] = queue.Queue(maxsize=1000)
        self._live_thread: threading.Thread | None = None
        self.live_fit: Any = None

        self._stop = threading.Event()
        self._finished = threading.Event()
        self._lock = threading.Lock()  # guards tracker reads from other threads
        # The newest analysed frame, kept by reference only: readers build (and cache)
        # the display snapshot on their own thread, so the frame loop pays nothing.
        self._display_state: tuple[Frame, np.ndarray, pd.DataFrame, float] | None = None
        self._snapshot: PipelineSnapshot | None = None  # built from _display_state, cached
        self._snapshot_state: tuple | None = None  # the state _snapshot was built from
        self._snapshot_lock = threading.Lock()
        self._events_lock = threading.Lock()
        self._events_total = 0
        self._events_table: tuple[int, pd.DataFrame] | None = None
        self._warnings: list[str] = []

        # Counters of frames this pipeline saw; live sources add their own
        # (dropped / malformed / gaps) in :meth:`stats`.
        self.received = 0
        self.analysed = 0
        self.failed = 0
        self._failed_kinds: dict[str, int] = {}
        self._latencies_ms: list[float] = []
        self._recent_latency: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._in_meter = _RateMeter()
        self._out_meter = _RateMeter()
        self._stage_ms = {"segment": 0.0, "measure": 0.0, "track": 0.0, "write": 0.0}
        self._history = _FrameHistory(FRAME_COLUMNS)
        self._events: deque[dict[str, Any]] = deque(maxlen=_EVENTS_KEPT)
        self._started_s: float | None = None
        self._ended_s: float | None = None
        self._last_count = 0
        self._last_mean_nm = float("nan")
        self._last_frame_index = -1
        self._index_offset = 0
        self._image_shape: tuple[int, ...] | None = None
        self._time_offset_s = 0.0
        self._last_index_in = -1
        self._last_time_in = 0.0
        self.restarts = 0
        self._tracking_failures = 0

    # ------------------------------------------------------------------ readers
    @property
    def running(self) -> bool:
        """False once the run has finished (or before it started)."""
        return self._started_s is not None and not self._finished.is_set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def stop(self) -> None:
        """Ask the run to stop after the frames in flight; safe from any thread."""
        self._stop.set()
        stop_source = getattr(self.source, "stop", None)
        if callable(stop_source):
            stop_source()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run has finished; True if it has."""
        return self._finished.wait(timeout)

    def latest_snapshot(self) -> PipelineSnapshot | None:
        """The newest snapshot (None before the first frame); never blocks the run.

        Built on the caller's thread from references the frame loop left (the frame's
        display copy once per frame; the history as views), so its cost is the reader's.
        The particle table and arrays are shared: treat them as read-only.
        """
        snapshot = self._display_snapshot()
        if snapshot is None:
            return None
        # Stats, history and events are read now, so a stalled stream still shows live numbers.
        return PipelineSnapshot(
            frame_index=snapshot.frame_index,
            time_s=snapshot.time_s,
            image=snapshot.image,
            display_scale=snapshot.display_scale,
            labels=snapshot.labels,
            particles=snapshot.particles,
            history=self._history.table(),
            events=self._events_frame(),
            tracks={},
            stats=self.stats(),
            time_unit=snapshot.time_unit,
            live_fit=self.live_fit,
        )

    def track_history(self, track_id: int) -> pd.DataFrame:
        """Growth curve of one track: ``frame``, ``time_s``, ``diameter_nm``."""
        empty = pd.DataFrame({"frame": [], "time_s": [], "diameter_nm": []})
        if self.tracker is None or not hasattr(self.tracker, "track_history"):
            return empty
        with self._lock:
            history = self.tracker.track_history(int(track_id))
        if history is None or len(history) == 0:
            return empty
        return history.loc[:, [c for c in ("frame", "time_s", "diameter_nm") if c in history]]

    @property
    def pixel_size_nm(self) -> float | None:
        return self._pixel_size_nm

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(self._warnings)

    def source_counters(self) -> dict[str, int]:
        """received / dropped / malformed / gaps as the source counted them (live sources)."""
        counters = getattr(self.source, "counters", None)
        if counters is None:
            # File readers skip frames they cannot read and list them.
            unreadable = len(getattr(self.source, "failed_frames", ()) or ())
            if not unreadable:
                return {}
            return {"received": self.received + unreadable, "dropped": 0,
                    "malformed": unreadable, "gaps": 0}
        if hasattr(counters, "as_dict"):
            counters = counters.as_dict()
        elif not isinstance(counters, dict):
            counters = {k: getattr(counters, k) for k in ("received", "dropped", "malformed", "gaps")
                        if hasattr(counters, k)}
        out: dict[str, int] = {}
        for key in ("received", "dropped", "malformed", "gaps"):
            value = counters.get(key, 0)
            if isinstance(value, dict):  # malformed by kind
                value = sum(value.values())
            out[key] = int(value)
        return out

    def stats(self) -> PipelineStats:
        """Health counters now. ``received == analysed + dropped + malformed`` at the end."""
        now = time.perf_counter()
        src = self.source_counters()
        recent = np.fromiter(self._recent_latency, dtype=float)
        if src:
            received = src.get("received", self.received)
            malformed = src.get("malformed", 0) + self.failed
            dropped = src.get("dropped", 0)
            gaps = src.get("gaps", 0)
        else:
            received, malformed, dropped, gaps = self.received, self.failed, 0, 0
        queued = max(0, received - self.analysed - dropped - malformed)
        warnings = list(self._warnings)
        if dropped:
            warnings.append(f"dropping frames: {dropped} dropped (analysis slower than camera)")
        return PipelineStats(
            received=received,
            analysed=self.analysed,
            dropped=dropped,
            malformed=malformed,
            gaps=gaps,
            failed=self.failed,
            queued=queued,
            fps_received=self._rate(received, self._in_meter, now),
            fps_analysed=self._rate(self.analysed, self._out_meter, now),
            latency_p50_ms=_percentile(recent, 50),
            latency_p99_ms=_percentile(recent, 99),
            backend=str(getattr(self.segmenter, "name", "")),
            device=str(getattr(self.segmenter, "device", "")),
            pixel_size_nm=self._pixel_size_nm,
            pixel_size_source=self._pixel_size_source,
            warnings=tuple(warnings),
        )

    def _rate(self, count: int, meter: _RateMeter, now: float) -> float:
        """Live: frames/s over the last seconds; once finished: over the whole run."""
        if self._ended_s is not None and self._started_s is not None:
            return count / max(self._ended_s - self._started_s, 1e-9)
        return meter.rate(now)

    def status_line(self) -> str:
        """One line of live status for a terminal."""
        s = self.stats()
        mean = f"{self._last_mean_nm:.2f} nm" if math.isfinite(self._last_mean_nm) else "-"
        p50 = f"{s.latency_p50_ms:.0f}" if math.isfinite(s.latency_p50_ms) else "-"
        p99 = f"{s.latency_p99_ms:.0f}" if math.isfinite(s.latency_p99_ms) else "-"
        return (
            f"frame {self._last_frame_index} | in {s.fps_received:.1f} fps | analysed "
            f"{s.fps_analysed:.1f} fps | latency p50 {p50} ms p99 {p99} ms | count "
            f"{self._last_count} | mean d {mean} | dropped {s.dropped} malformed {s.malformed}"
        )

    # ---------------------------------------------------------------- the run
    def run(self) -> dict[str, Any]:
        """Analyse frames until the source ends or :meth:`stop`; return the summary.

        The summary is also written to ``summary.json`` (atomically, every few
        seconds during the run and at the end) and every table is flushed per frame.
        """
        self._started_s = time.perf_counter()
        self._started_wall = time.time()
        if self.live_analysis is not None:
            self._live_thread = threading.Thread(target=self._live_loop, name="etemlive-analysis",
                                                 daemon=True)
            self._live_thread.start()
        pending: deque[Future[_Analysed]] = deque()
        max_in_flight = self.workers + 1
        last_periodic = self._started_s
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="etemlive-seg") as pool:
                for frame in self._frames():
                    pending.append(pool.submit(self._analyse, frame))
                    while pending and (len(pending) >= max_in_flight or pending[0].done()):
                        self._consume(pending.popleft().result())
                    now = time.perf_counter()
                    if now - last_periodic > 2.0:
                        self._write_periodic()
                        last_periodic = now
                    if self._should_stop(now):
                        break
                while pending:
                    self._consume(pending.popleft().result())
            self._finish_tracks()
            self._stop_live_analysis()
        finally:
            self._ended_s = time.perf_counter()
            try:
                # Closed first: a live source counts frames still queued as dropped,
                # so the final summary's counters add up.
                close = getattr(self.source, "close", None)
                if callable(close):
                    close()
                summary = self.summary()
                self.recorder.write_summary(summary)
            finally:
                self.recorder.close()
                self._finished.set()
        return summary

    def _should_stop(self, now: float) -> bool:
        if self._stop.is_set():
            return True
        if self.max_frames is not None and self.received >= self.max_frames:
            return True
        started = self._started_s or now
        return self.max_seconds is not None and now - started >= self.max_seconds

    def _frames(self):
        """Iterate the source, stamping receipt time, counting, checking calibration."""
        iterator = iter(self.source)
        while not self._stop.is_set():
            try:
                frame = next(iterator)
            except StopIteration:
                return
            except EtemliveError as err:
                # A frame that cannot be read is counted and the run goes on; a
                # reader that cannot go on raises StopIteration next time.
                self.received += 1
                self._count_failure("read", str(err))
                continue
            now = time.perf_counter()
            frame = self._renumber(frame, now)
            self.received += 1
            self._in_meter.tick(now)
            if self._pixel_size_nm is None:
                self._adopt_pixel_size(frame)
            yield frame

    def _renumber(self, frame: Frame, now: float) -> Frame:
        """Keep frame numbers and times increasing across a restarted stream.

        A camera (or a looping replay) that starts a new series numbers from 0
        again; the run goes on, numbered after the last frame seen, so the output
        tables stay one movie and the tracker sees time move forward.
        """
        index = frame.index + self._index_offset
        timestamp_s = frame.timestamp_s + self._time_offset_s
        if index <= self._last_index_in:
            step_s = self.frame_interval_s or 1.0
            self._index_offset = self._last_index_in + 1 - frame.index
            self._time_offset_s = self._last_time_in + step_s - frame.timestamp_s
            index = frame.index + self._index_offset
            timestamp_s = frame.timestamp_s + self._time_offset_s
            self.restarts += 1
            log.warning("frame numbers restarted (series %r, frame %d): continuing as frame %d",
                        frame.series, frame.index, index)
        self._last_index_in, self._last_time_in = index, timestamp_s
        if index == frame.index and timestamp_s == frame.timestamp_s and frame.received_s:
            return frame
        return Frame(index, timestamp_s, frame.pixel_size_nm, frame.image, frame.series,
                     frame.received_s or now)

    def _adopt_pixel_size(self, frame: Frame) -> None:
        candidate = frame.pixel_size_nm
        if candidate is None:
            candidate = getattr(self.source, "pixel_size_nm", None)
        try:
            self._pixel_size_nm = validate_pixel_size_nm(candidate)
            self._pixel_size_source = getattr(self.source, "pixel_size_source", None) or "metadata"
        except EtemliveError:
            self._pixel_size_nm = 1.0
            self._pixel_size_source = "none (1 nm/px assumed)"
            message = "no pixel size: sizes are in px (pass --pixel-size-nm X)"
            self._warnings.append(message)
            log.warning(message)

    def _analyse(self, frame: Frame) -> _Analysed:
        """Segment and measure one frame (runs on a worker thread)."""
        t0 = time.perf_counter()
        try:
            image = frame.image
            if image.ndim != 2:
                raise InputError(f"frame {frame.index}: expected a 2-D image, got shape {image.shape}")
            # One float64 sum instead of a frame-sized bool mask: NaN and inf propagate.
            if image.dtype.kind == "f" and not np.isfinite(image.sum(dtype=np.float64)):
                raise InputError(f"frame {frame.index}: image contains NaN or inf")
            pixel_size_nm = self._pixel_size_nm or 1.0
            labels = self.segmenter.segment(image, pixel_size_nm)
            if self.exclude_mask is not None and self.exclude_mask.shape == labels.shape:
                labels = _remove_touching(labels, self.exclude_mask)
            t1 = time.perf_counter()
            particles = measure_particles(
                labels, pixel_size_nm, frame=frame.index, time_s=self._time_of(frame)
            )
            t2 = time.perf_counter()
            return _Analysed(frame, labels, particles, None, (t1 - t0) * 1e3, (t2 - t1) * 1e3)
        except Exception as err:  # noqa: BLE001 (a bad frame is counted, never fatal)
            if not isinstance(err, EtemliveError):
                log.debug("frame %d failed", frame.index, exc_info=True)
            message = str(err) or type(err).__name__
            return _Analysed(frame, None, None, f"{type(err).__name__}: {message}", 0.0, 0.0)

    def _time_of(self, frame: Frame) -> float:
        return float(frame.timestamp_s) if self.time_unit == "s" else float(frame.index)

    def _count_failure(self, kind: str, message: str) -> None:
        self.failed += 1
        first = kind not in self._failed_kinds
        self._failed_kinds[kind] = self._failed_kinds.get(kind, 0) + 1
        if first:  # logged once per kind, then only counted
            log.warning("skipping bad frame (%s): %s", kind, message)

    def _consume(self, result: _Analysed) -> None:
        """Track, record and publish one analysed frame (frame order)."""
        frame = result.frame
        if result.error is not None:
            kind = result.error.split(":", 1)[0]
            self._count_failure(kind, result.error)
            return
        particles = result.particles
        assert particles is not None and result.labels is not None
        t0 = time.perf_counter()
        events = None
        drift_nm = None
        if self._tracker_factory is not None:
            try:
                with self._lock:
                    if self.tracker is None:
                        self.tracker = self._tracker_factory(self._pixel_size_nm or 1.0,
                                                             self.frame_interval_s)
                    step = self.tracker.update(particles, labels=result.labels, image=frame.image)
                particles = step.particles
                events = step.events
                drift_nm = tuple(step.drift_nm)
            except Exception:  # noqa: BLE001 (the frame is still measured and written)
                self._tracking_failures += 1
                if self._tracking_failures == 1:
                    log.warning("tracking failed at frame %d; the frame is written untracked",
                                frame.index, exc_info=True)
        t1 = time.perf_counter()
        time_s = self._time_of(frame)
        sized = particles.loc[~particles["touches_edge"].to_numpy(bool), "diameter_nm"].to_numpy()
        mean_nm = float(sized.mean()) if sized.size else float("nan")
        std_nm = float(sized.std(ddof=1)) if sized.size > 1 else float("nan")
        frame_row = {
            "frame": frame.index,
            "time_s": time_s,
            "count": int(len(particles)),
            "mean_diameter_nm": mean_nm,
            "std_diameter_nm": std_nm,
            "latency_ms": float("nan"),
        }
        # Latency runs from receipt to results written; the frames.csv row is the
        # last thing written, so it is measured just before and includes the rest.
        received_s = frame.received_s if frame.received_s is not None else t0
        latency_ms = (time.perf_counter() - received_s) * 1e3
        frame_row["latency_ms"] = latency_ms
        self.recorder.write_frame(
            particles=particles, frame_row=frame_row, events=events, drift_nm=drift_nm,
            labels=result.labels,
        )
        t2 = time.perf_counter()
        self.analysed += 1
        self._out_meter.tick(t2)
        self._latencies_ms.append(latency_ms)
        self._recent_latency.append(latency_ms)
        self._stage_ms["segment"] += result.segment_ms
        self._stage_ms["measure"] += result.measure_ms
        self._stage_ms["track"] += (t1 - t0) * 1e3
        self._stage_ms["write"] += (t2 - t1) * 1e3
        self._history.append(frame_row)
        if events is not None and len(events):
            with self._events_lock:  # readers copy the deque under the same lock
                self._events.extend(events.to_dict("records"))
                self._events_total += len(events)
        self._image_shape = result.labels.shape
        self._last_count = int(len(particles))
        self._last_mean_nm = mean_nm
        self._last_frame_index = frame.index
        if self._live_thread is not None:
            try:
                self._live_queue.put_nowait(particles)
            except queue.Full:  # analysis thread far behind: skip, never block the frames
                pass
        if self.publish_snapshots:
            self._display_state = (frame, result.labels, particles, time_s)

    def _live_loop(self) -> None:
        """Feed the live analysis on its own thread; refits never delay frames."""
        while True:
            particles = self._live_queue.get()
            if particles is None:
                return
            try:
                result = self.live_analysis.update(particles)
            except Exception:  # noqa: BLE001 (a failed fit must not stop the run)
                log.warning("live analysis failed", exc_info=True)
                continue
            if result is not None:
                self.live_fit = result

    def _stop_live_analysis(self) -> None:
        if self._live_thread is not None:
            self._live_queue.put(None)
            self._live_thread.join(timeout=30)

    def _display_snapshot(self) -> PipelineSnapshot | None:
        """The snapshot of the newest analysed frame, built once per frame (reader side)."""
        state = self._display_state
        if state is None:
            return None
        frame, labels, particles, time_s = state
        with self._snapshot_lock:
            if self._snapshot is not None and self._snapshot_state is state:
                return self._snapshot
            step = max(1, math.ceil(max(frame.image.shape) / self.display_max_px))
            snapshot = PipelineSnapshot(
                frame_index=frame.index,
                time_s=time_s,
                image=np.ascontiguousarray(frame.image[::step, ::step]),
                display_scale=step,
                labels=np.ascontiguousarray(labels[::step, ::step]),
                particles=particles,
                time_unit=self.time_unit,
            )
            self._snapshot, self._snapshot_state = snapshot, state
            return snapshot

    def _events_frame(self) -> pd.DataFrame:
        """The newest events as a table, rebuilt only when events arrived."""
        with self._events_lock:
            cached = self._events_table
            if cached is not None and cached[0] == self._events_total:
                return cached[1]
            total, rows = self._events_total, list(self._events)
        table = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
        self._events_table = (total, table)
        return table

    def _finish_tracks(self) -> None:
        if self.tracker is None:
            return
        with self._lock:
            finish = getattr(self.tracker, "finish", None)
            events = finish() if callable(finish) else None
            if events is not None and len(events):
                self.recorder.write_events(events)
            self.recorder.write_tracks(self.tracker.tracks_table())

    def _write_periodic(self) -> None:
        """Keep summary.json and tracks.csv current, so an interrupted run loses little."""
        self.recorder.write_summary(self.summary())
        if self.tracker is not None:
            with self._lock:
                tracks = self.tracker.tracks_table()
            self.recorder.write_tracks(tracks)

    def summary(self) -> dict[str, Any]:
        """summary.json's content now (design.md: Output folder contract)."""
        s = self.stats()
        now = self._ended_s or time.perf_counter()
        elapsed = max(now - (self._started_s or now), 1e-9)
        latencies = np.asarray(self._latencies_ms, dtype=float)
        n = max(self.analysed, 1)
        return {
            "version": __version__,
            "input": self.input_name,
            "status": "finished" if self._ended_s is not None else "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(
                getattr(self, "_started_wall", time.time()))),
            "image_shape": list(self._image_shape) if self._image_shape else None,
            "pixel_size_nm": self._pixel_size_nm,
            "pixel_size_source": self._pixel_size_source,
            "frame_interval_s": self.frame_interval_s,
            "time_unit": self.time_unit,
            "backend": s.backend,
            "device": s.device,
            # the U-Net outline convention (absent for the classical pipeline)
            "outline": getattr(self.segmenter, "outline", None),
            "workers": self.workers,
            "segment_batches": getattr(self.segmenter, "batches", None),
            "frames_seen": s.received,
            "frames_received": s.received,
            "frames_analysed": s.analysed,
            "frames_dropped": s.dropped,
            "frames_malformed": s.malformed,
            "frames_failed": self.failed,
            "failed_by_kind": dict(self._failed_kinds),
            "gaps": s.gaps,
            "elapsed_s": elapsed,
            "fps": self.analysed / elapsed,
            "latency_p50_ms": _percentile(latencies, 50),
            "latency_p99_ms": _percentile(latencies, 99),
            "latency_max_ms": float(latencies.max()) if latencies.size else float("nan"),
            "stage_ms_mean": {k: v / n for k, v in self._stage_ms.items()},
            "tracking": self._tracker_factory is not None,
            "tracking_failures": self._tracking_failures,
            "tracker": _tracker_info(self.tracker),
            "stream_restarts": self.restarts,
            "live_kinetics": _live_kinetics(self.live_fit),
            "warnings": list(s.warnings),
            **self.summary_extra,
        }


def _remove_touching(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero every instance that has a pixel under ``mask`` (vectorized over instances)."""
    hit = np.unique(labels[mask])
    hit = hit[hit > 0]
    if hit.size == 0:
        return labels
    lookup = np.ones(int(labels.max()) + 1, dtype=bool)
    lookup[hit] = False
    return np.where(lookup[labels], labels, 0).astype(labels.dtype, copy=False)


def _live_kinetics(live_fit: Any) -> dict[str, Any] | None:
    """The newest live coarsening fit, for summary.json (None before the first)."""
    if live_fit is None:
        return None
    kinetics = getattr(live_fit, "kinetics", None)
    to_dict = getattr(kinetics, "to_dict", None)
    out = to_dict() if callable(to_dict) else {}
    return {"frame": getattr(live_fit, "frame", None), **out}


def _tracker_info(tracker: Any) -> dict[str, Any] | None:
    """The tracker's settings and its count of rows dropped for NaN coordinates."""
    if tracker is None:
        return None
    config = getattr(tracker, "config", None)
    to_dict = getattr(config, "to_dict", None)
    return {"config": to_dict() if callable(to_dict) else None,
            "rows_dropped_nan": int(getattr(tracker, "n_dropped_nan", 0))}
