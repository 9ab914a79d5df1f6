"""`etemlive serve` -> `etemlive live` and `etemlive demo` as a user runs them: real processes, real sockets."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pandas as pd

from etemlive.sources.simulate import SimulationConfig, write_simulation

OUTPUT_TABLES = ("particles.csv", "frames.csv", "events.csv", "drift.csv")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_rows(path, n, timeout_s=120.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) > n:
            return True
        time.sleep(0.05)
    return False


def test_sigint_on_live_writes_complete_summary_and_parseable_tables(tmp_path):
    movie = tmp_path / "cam.tif"
    write_simulation(movie, SimulationConfig(scenario="coalescence", seed=8, n_frames=20, size_px=256))
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    out = tmp_path / "live"
    live = subprocess.Popen([sys.executable, "-m", "etemlive", "live", endpoint, "--out", str(out),
                             "--headless", "--backend", "classical", "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    camera = subprocess.Popen([sys.executable, "-m", "etemlive", "serve", str(movie), "--bind",
                               endpoint, "--fps", "20", "--loop"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_rows(out / "frames.csv", 5), live.stderr.read() if live.poll() else "no frames"
        live.send_signal(signal.SIGINT)
        _, stderr = live.communicate(timeout=60)
    finally:
        camera.send_signal(signal.SIGINT)
        try:
            camera.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            camera.kill()
        if live.poll() is None:
            live.kill()
    assert live.returncode == 0, stderr
    assert "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["pixel_size_source"] == "metadata"  # carried in the stream's headers
    assert summary["frames_analysed"] >= 5
    assert summary["frames_received"] == (summary["frames_analysed"] + summary["frames_dropped"]
                                          + summary["frames_malformed"])
    for name in OUTPUT_TABLES:
        pd.read_csv(out / name)
    assert len(pd.read_csv(out / "frames.csv")) == summary["frames_analysed"]


def test_demo_headless_runs_the_whole_path(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "etemlive", "demo", "--headless", "--seconds", "4",
                             "--size", "256", "--fps", "8", "--backend", "classical", "--out", str(out)],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_analysed"] >= 10
    assert summary["frames_received"] == (summary["frames_analysed"] + summary["frames_dropped"]
                                          + summary["frames_malformed"])
    assert summary["frames_malformed"] == 0
    particles = pd.read_csv(out / "particles.csv")
    assert len(particles) > 0 and (particles["diameter_nm"] > 0).all()
    assert "analysed" in result.stdout and "fps" in result.stdout
