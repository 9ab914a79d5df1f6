"""What the pipeline publishes for readers (the dashboard, the headless status line).

The pipeline replaces its newest :class:`PipelineSnapshot` after every analysed
frame (a conflated queue of one); readers take it on their own timer and never
block the analysis. Everything here is plain data, owned by the snapshot (copies),
so a reader may keep it as long as it likes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """Health counters of a run so far.

    ``received == analysed + dropped + malformed`` holds at the end of a run
    (frames still queued are counted in ``queued`` while it runs).
    """

    received: int = 0
    analysed: int = 0
    dropped: int = 0
    malformed: int = 0
    gaps: int = 0
    failed: int = 0
    queued: int = 0
    fps_received: float = 0.0
    fps_analysed: float = 0.0
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    backend: str = ""
    device: str = ""
    pixel_size_nm: float | None = None
    pixel_size_source: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PipelineSnapshot:
    """The newest analysed frame and the run's history, for display.

    Attributes
    ----------
    frame_index : int
        Index of the newest analysed frame (-1 before the first).
    time_s : float
        Its timestamp in seconds (frame units when the interval is unknown).
    image : ndarray or None
        The frame (2-D), possibly downsampled for display by ``display_scale``.
    display_scale : int
        Integer factor by which ``image`` and ``labels`` were downsampled; particle
        coordinates in ``particles`` are full-resolution px.
    labels : ndarray or None
        Instance labels of that frame (same shape as ``image``).
    particles : DataFrame
        That frame's rows of particles.csv (``track_id``, ``x_px``, ``y_px``,
        ``diameter_nm``, ``shape``, ``label`` ...).
    history : DataFrame
        frames.csv so far: ``frame``, ``time_s``, ``count``, ``mean_diameter_nm``,
        ``std_diameter_nm``, ``latency_ms``.
    events : DataFrame
        The newest events (events.csv columns), newest last.
    tracks : dict[int, DataFrame]
        Growth curves (``time_s``, ``diameter_nm``) of recently selected or longest tracks.
    stats : PipelineStats
        Health counters.
    time_unit : str
        ``"s"``, or ``"frame"`` when the frame interval is unknown.
    live_fit : object or None
        The newest :class:`etemlive.analysis.LiveResult` (size-distribution and
        kinetics fits, refreshed every N frames), None before the first.
    """

    frame_index: int = -1
    time_s: float = float("nan")
    image: np.ndarray | None = None
    display_scale: int = 1
    labels: np.ndarray | None = None
    particles: pd.DataFrame = field(default_factory=pd.DataFrame)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    events: pd.DataFrame = field(default_factory=pd.DataFrame)
    tracks: dict[int, pd.DataFrame] = field(default_factory=dict)
    stats: PipelineStats = field(default_factory=PipelineStats)
    time_unit: str = "s"
    live_fit: object | None = None
