"""The pipeline end to end on real frames: counts, bad frames, stopping, crash safety."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from etemlive.frames import Frame
from etemlive.pipeline import Pipeline
from etemlive.record import Recorder
from etemlive.segment.classical import ClassicalSegmenter
from etemlive.sources.simulate import SimulatedSource, SimulationConfig, write_simulation


class ListSource:
    """A source over prepared frames (a test edge: it can inject bad frames)."""

    name = "list"
    pixel_size_source = "metadata"
    n_frames = None

    def __init__(self, frames, pixel_size_nm=0.5, frame_interval_s=0.5):
        self.frames = frames
        self.pixel_size_nm = pixel_size_nm
        self.frame_interval_s = frame_interval_s
        self.closed = False

    def __iter__(self):
        yield from self.frames

    def close(self):
        self.closed = True


def _sim_frames(n=6, size=192, scenario="coalescence"):
    config = SimulationConfig(scenario=scenario, seed=5, n_frames=n, size_px=size)
    with SimulatedSource(config) as source:
        return list(source), source.pixel_size_nm, source.frame_interval_s


def _tracker_factory():
    try:
        from etemlive.track.tracker import Tracker
    except ImportError:
        return None
    return lambda px, dt: Tracker(pixel_size_nm=px, frame_interval_s=dt)


def test_run_writes_every_frame_and_consistent_counters(tmp_path):
    frames, px, dt = _sim_frames()
    source = ListSource(frames, px, dt)
    pipeline = Pipeline(source, ClassicalSegmenter(), Recorder(tmp_path), pixel_size_nm=px,
                        pixel_size_source="metadata", frame_interval_s=dt,
                        tracker_factory=_tracker_factory(), publish_snapshots=True)
    summary = pipeline.run()
    assert source.closed
    assert summary["frames_analysed"] == len(frames) == summary["frames_seen"]
    assert summary["frames_seen"] == (summary["frames_analysed"] + summary["frames_dropped"]
                                      + summary["frames_malformed"])
    assert summary["latency_p50_ms"] > 0 and summary["latency_p99_ms"] >= summary["latency_p50_ms"]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["status"] == "finished" and on_disk["frames_analysed"] == len(frames)
    table = pd.read_csv(tmp_path / "frames.csv")
    assert table["frame"].tolist() == [f.index for f in frames]  # frame order kept with 2 workers
    assert (table["count"] > 0).all()
    particles = pd.read_csv(tmp_path / "particles.csv")
    assert particles.groupby("frame").size().to_dict() == dict(zip(table["frame"], table["count"], strict=True))
    snapshot = pipeline.latest_snapshot()
    assert snapshot is not None and snapshot.frame_index == frames[-1].index
    assert len(snapshot.history) >= 1 and snapshot.stats.analysed == len(frames)
    if pipeline.tracker is not None:
        assert (particles["track_id"] >= 0).all()
        assert not particles.duplicated(["frame", "track_id"]).any()
        assert (tmp_path / "tracks.csv").exists()


def test_bad_frames_are_counted_and_the_run_goes_on(tmp_path):
    frames, px, dt = _sim_frames(n=4)
    nan_image = frames[1].image.astype(np.float32)
    nan_image[10, 10] = np.nan
    bad = [
        Frame(1, dt, px, nan_image),
        Frame(2, 2 * dt, px, np.zeros((2, 3, 4), np.uint8)),  # not 2-D
    ]
    good = [Frame(i + 2, (i + 2) * dt, px, f.image) for i, f in enumerate(frames[1:], start=1)]
    source = ListSource([frames[0], *bad, *good], px, dt)
    summary = Pipeline(source, ClassicalSegmenter(), Recorder(tmp_path), pixel_size_nm=px,
                       frame_interval_s=dt).run()
    assert summary["frames_failed"] == 2
    assert summary["frames_analysed"] == 4
    assert summary["frames_seen"] == 6 == summary["frames_analysed"] + summary["frames_malformed"]
    assert pd.read_csv(tmp_path / "frames.csv")["frame"].tolist() == [0, 3, 4, 5]


def test_stop_from_another_thread_writes_the_summary(tmp_path):
    frames, px, dt = _sim_frames(n=3)

    class Endless(ListSource):
        def __iter__(self):
            i = 0
            while True:
                f = self.frames[i % len(self.frames)]
                yield Frame(i, i * dt, px, f.image)
                i += 1

    pipeline = Pipeline(Endless(frames, px, dt), ClassicalSegmenter(), Recorder(tmp_path),
                        pixel_size_nm=px, frame_interval_s=dt)
    worker = threading.Thread(target=pipeline.run)
    worker.start()
    deadline = time.monotonic() + 60
    while pipeline.analysed < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    pipeline.stop()
    worker.join(timeout=60)
    assert not worker.is_alive()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["frames_analysed"] >= 3
    assert len(pd.read_csv(tmp_path / "frames.csv")) == summary["frames_analysed"]


def test_unknown_frame_interval_counts_time_in_frames(tmp_path):
    frames, px, _ = _sim_frames(n=2)
    pipeline = Pipeline(ListSource(frames, px, None), ClassicalSegmenter(), Recorder(tmp_path),
                        pixel_size_nm=px, frame_interval_s=None)
    summary = pipeline.run()
    assert summary["time_unit"] == "frame"
    assert pd.read_csv(tmp_path / "frames.csv")["time_s"].tolist() == [0.0, 1.0]


def test_missing_pixel_size_live_assumes_px_and_warns(tmp_path):
    frames, _, dt = _sim_frames(n=2)
    stripped = [Frame(f.index, f.timestamp_s, None, f.image) for f in frames]
    pipeline = Pipeline(ListSource(stripped, None, dt), ClassicalSegmenter(), Recorder(tmp_path),
                        frame_interval_s=dt)
    summary = pipeline.run()
    assert summary["pixel_size_nm"] == 1.0
    assert any("no pixel size" in w for w in summary["warnings"])


def test_killed_run_leaves_parseable_tables(tmp_path):
    movie = tmp_path / "m.tif"
    write_simulation(movie, SimulationConfig(scenario="ripening", seed=2, n_frames=60, size_px=256))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "etemlive", "analyze", str(movie), "--out",
                             str(out), "--headless", "--backend", "classical", "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    frames_csv = out / "frames.csv"
    while time.monotonic() < deadline:
        if frames_csv.exists() and len(frames_csv.read_text().splitlines()) > 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    frames = pd.read_csv(frames_csv)
    particles = pd.read_csv(out / "particles.csv")
    assert len(frames) >= 3
    # Every recorded frame's particles are complete (rows are written before the frame row).
    assert set(frames["frame"]) <= set(particles["frame"]) | set(frames.loc[frames["count"] == 0, "frame"])
    assert particles["diameter_nm"].notna().all()


@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_sigint_on_analyze_writes_a_complete_summary(tmp_path, sig):
    movie = tmp_path / "m.tif"
    write_simulation(movie, SimulationConfig(scenario="dense", seed=4, n_frames=200, size_px=256))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "etemlive", "analyze", str(movie), "--out",
                             str(out), "--headless", "--backend", "classical", "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / "frames.csv").exists() and len((out / "frames.csv").read_text().splitlines()) > 3:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert 3 <= summary["frames_analysed"] < 200
    assert len(pd.read_csv(out / "frames.csv")) == summary["frames_analysed"]


def test_restarted_stream_is_renumbered_and_tracked_on(tmp_path):
    """A camera (or looping replay) that starts again at frame 0 continues the run."""
    frames, px, dt = _sim_frames(n=3)
    again = [Frame(f.index, f.timestamp_s, px, f.image, "second") for f in frames]
    pipeline = Pipeline(ListSource([*frames, *again], px, dt), ClassicalSegmenter(),
                        Recorder(tmp_path), pixel_size_nm=px, frame_interval_s=dt,
                        tracker_factory=_tracker_factory())
    summary = pipeline.run()
    assert summary["stream_restarts"] == 1
    assert summary["frames_analysed"] == 6 and summary["tracking_failures"] == 0
    table = pd.read_csv(tmp_path / "frames.csv")
    assert table["frame"].tolist() == list(range(6))
    assert np.all(np.diff(table["time_s"].to_numpy()) > 0)


def test_frame_history_snapshots_are_stable_views():
    from etemlive.pipeline import _FrameHistory

    history = _FrameHistory(("frame", "count"), capacity=2)
    history.append({"frame": 0, "count": 5})
    first = history.table()
    for i in range(1, 10):  # grows past its capacity twice
        history.append({"frame": i, "count": 5 + i})
    assert first["count"].tolist() == [5.0]  # an earlier snapshot does not change
    table = history.table()
    assert table["frame"].tolist() == list(range(10))
    assert table["count"].tolist() == [5.0 + i for i in range(10)]
