"""The dashboard in its own process: the snapshot server and its remote reader over real
ZeroMQ sockets, fed by the real pipeline on a simulated movie, and the window process
itself (offscreen Qt), grabbed to PNG and checked."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pandas as pd
import pytest
import zmq

from etemlive._dashboard_proc import RemoteProvider, SnapshotServer, decode, encode
from etemlive.sources.simulate import SimulationConfig

qt = pytest.mark.skipif(
    importlib.util.find_spec("PySide6") is None or importlib.util.find_spec("pyqtgraph") is None,
    reason="PySide6 / pyqtgraph not installed (pip install 'etemlive[gui]')",
)


def _pipeline(tmp_path, *, n_frames=8, size_px=192, display_max_px=128):
    from etemlive.pipeline import Pipeline
    from etemlive.record import Recorder
    from etemlive.segment.classical import ClassicalSegmenter
    from etemlive.sources.simulate import SimulatedSource
    from etemlive.track.tracker import Tracker

    config = SimulationConfig(scenario="coalescence", seed=3, n_frames=n_frames, size_px=size_px)
    return Pipeline(
        SimulatedSource(config), ClassicalSegmenter(), Recorder(tmp_path),
        pixel_size_nm=config.pixel_size_nm, pixel_size_source="metadata",
        frame_interval_s=config.frame_interval_s,
        tracker_factory=lambda px, dt: Tracker(pixel_size_nm=px, frame_interval_s=dt),
        publish_snapshots=True, workers=1, display_max_px=display_max_px,
    )


@pytest.fixture(scope="module")
def finished_pipeline(tmp_path_factory):
    pipeline = _pipeline(tmp_path_factory.mktemp("run"))
    pipeline.run()
    return pipeline


class _StillRunning:
    """The finished pipeline, reported as running (the window then asks for frames only
    when it will draw them); everything else is the pipeline's own answer."""

    running = True

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def latest_snapshot(self):
        return self.pipeline.latest_snapshot()

    def track_history(self, track_id):
        return self.pipeline.track_history(track_id)

    def stop(self):
        self.pipeline.stop()


def _read(provider, within_s=30.0):
    # a deadline, not a number of polls: on a loaded 2-core box the run's first frame can
    # take seconds to arrive
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        snap = provider.latest_snapshot()
        if snap is not None and provider._pending_since is None:
            return snap
    raise AssertionError("no snapshot arrived")


def test_encode_keeps_arrays_out_of_band_and_round_trips():
    image = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    frames = encode({"image": image, "n": 3})
    assert len(frames) == 2 and len(frames[1]) == image.nbytes  # the array is its own frame
    back = decode([bytes(f) for f in frames])
    assert back["n"] == 3
    np.testing.assert_array_equal(back["image"], image)


def test_remote_reader_mirrors_the_pipeline_over_a_real_socket(finished_pipeline):
    pipeline = finished_pipeline
    local = pipeline.latest_snapshot()
    with SnapshotServer(pipeline) as server:
        remote = RemoteProvider(server.endpoint)
        try:
            snap = _read(remote)
            assert remote.running is False  # the run has finished
            assert snap.frame_index == local.frame_index == 7
            assert snap.display_scale == local.display_scale == 2
            np.testing.assert_array_equal(snap.image, local.image)
            np.testing.assert_array_equal(snap.labels, local.labels)
            pd.testing.assert_frame_equal(snap.particles, local.particles)
            pd.testing.assert_frame_equal(snap.history, local.history)
            assert len(snap.history) == 8
            pd.testing.assert_frame_equal(snap.events.reset_index(drop=True),
                                          local.events.reset_index(drop=True))
            assert snap.stats.analysed == local.stats.analysed == 8
            assert snap.stats.pixel_size_nm == pytest.approx(pipeline.pixel_size_nm)
            # The growth curve of a particle comes from the run's tracker.
            track_id = int(local.particles["track_id"].iloc[0])
            pd.testing.assert_frame_equal(remote.track_history(track_id),
                                          pipeline.track_history(track_id))
            # Nothing new: the next replies carry neither the frame nor history rows again.
            sent = server.frames_sent
            again = _read(remote)
            assert server.frames_sent == sent
            assert again.image is snap.image and len(again.history) == 8
        finally:
            remote.close()


def test_frames_are_sent_only_when_the_window_will_draw_them(finished_pipeline):
    with SnapshotServer(_StillRunning(finished_pipeline)) as server:
        remote = RemoteProvider(server.endpoint)
        try:
            remote.frame_wanted = lambda: False  # paused, or over its CPU budget
            for _ in range(5):
                assert remote.latest_snapshot() is None
            assert server.frames_sent == 0
            assert remote._history.n == 8  # the counters and plots still follow
            remote.frame_wanted = lambda: True
            assert _read(remote).frame_index == 7
            assert server.frames_sent == 1
        finally:
            remote.close()


def test_bad_requests_get_an_error_reply_and_serving_goes_on(finished_pipeline):
    with SnapshotServer(_StillRunning(finished_pipeline)) as server:
        context = zmq.Context()
        sock = context.socket(zmq.REQ)
        sock.linger = 0
        sock.connect(server.endpoint)
        try:
            for message in (b"\x80not json", b"[1, 2]", json.dumps({"op": "explode"}).encode(),
                            json.dumps({"op": "history", "track_id": "x"}).encode()):
                sock.send(message)
                assert sock.poll(5000)
                assert "error" in decode(sock.recv_multipart())
            assert server.bad_requests == 4
            sock.send(json.dumps({"op": "snapshot"}).encode())
            assert sock.poll(5000)
            reply = decode(sock.recv_multipart())
            assert reply["frame"]["frame_index"] == 7 and reply["running"] is True
        finally:
            sock.close(0)
            context.term()


def test_stop_request_stops_the_run(tmp_path):
    pipeline = _pipeline(tmp_path, n_frames=1000, size_px=128)
    worker = threading.Thread(target=pipeline.run, daemon=True)
    worker.start()
    with SnapshotServer(pipeline) as server:
        remote = RemoteProvider(server.endpoint)
        try:
            _read(remote)
            assert remote.running
            remote.stop()
            worker.join(timeout=60)
            assert not worker.is_alive()
            assert pipeline.analysed < 1000
            assert (tmp_path / "summary.json").exists()
        finally:
            remote.close()


def test_a_silent_run_is_shown_as_finished_without_raising(tmp_path):
    endpoint = f"ipc://{tmp_path}/nobody" if zmq.has("ipc") else "tcp://127.0.0.1:9"
    remote = RemoteProvider(endpoint, wait_s=0.01, timeout_s=0.05)
    try:
        for _ in range(10):
            assert remote.latest_snapshot() is None
        assert remote.connection_lost and remote.running is False
        assert remote.track_history(3).empty
        remote.stop()  # nothing to ask: returns at once
    finally:
        remote.close()


@pytest.mark.qt
@qt
def test_window_process_shows_the_run_and_closes_at_its_end(tmp_path):
    from etemlive.dashboard import run_dashboard_process

    pipeline = _pipeline(tmp_path / "out", n_frames=12, size_px=256, display_max_px=1024)
    worker = threading.Thread(target=pipeline.run, daemon=True)
    worker.start()
    png = tmp_path / "window.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    stats = tmp_path / "window.json"
    code = run_dashboard_process(pipeline, title="test", close_when_finished=True, save_png=png,
                                 stats_json=stats, env=env)
    worker.join(timeout=60)
    assert code == 0
    counts = json.loads(stats.read_text())
    assert 1 <= counts["redraws"] <= 12 and counts["redraw_errors"] == 0 and counts["cpu_s"] > 0
    assert pipeline.analysed == 12  # the window closed at the end, not before
    from PySide6 import QtGui

    grabbed = QtGui.QImage(str(png))
    assert grabbed.width() > 800 and grabbed.height() > 500
    ptr = grabbed.convertToFormat(QtGui.QImage.Format.Format_RGB888)
    rgb = np.frombuffer(ptr.constBits(), np.uint8).reshape(ptr.height(), ptr.bytesPerLine())
    rgb = rgb[:, : 3 * ptr.width()].reshape(ptr.height(), ptr.width(), 3).astype(int)
    # Outlines: saturated pixels on the (grey) frame panel, the left half of the window.
    left = rgb[:, : ptr.width() // 2]
    saturation = left.max(axis=2) - left.min(axis=2)
    assert (saturation > 120).sum() > 200


@pytest.mark.qt
@qt
def test_window_process_that_fails_returns_its_code_and_the_run_goes_on(tmp_path):
    from etemlive.dashboard import run_dashboard_process

    pipeline = _pipeline(tmp_path, n_frames=6, size_px=128)
    worker = threading.Thread(target=pipeline.run, daemon=True)
    worker.start()
    env = {**os.environ, "QT_QPA_PLATFORM": "no-such-platform"}
    code = run_dashboard_process(pipeline, env=env)
    worker.join(timeout=60)
    assert code != 0
    assert pipeline.analysed == 6 and not pipeline._stop.is_set()


def test_window_process_module_runs_as_a_script():
    # The window is started as `python -m etemlive._dashboard_proc`: its argument parser
    # answers without Qt.
    import subprocess

    out = subprocess.run([sys.executable, "-m", "etemlive._dashboard_proc", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "endpoint" in out.stdout


def test_benchmark_transfer_moves_distinct_snapshots():
    from etemlive._dashboard_proc import benchmark_transfer

    r = benchmark_transfer(n=4, size=256, n_particles=20, display_max_px=128)
    # 128 x 128 display arrays: uint16 image + int32 labels.
    assert r["mb_per_frame"] == pytest.approx(128 * 128 * (2 + 4) / 2**20)
    assert 0 < r["ms_median"] <= r["ms_p90"] < 5000
