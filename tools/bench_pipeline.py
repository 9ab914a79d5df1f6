"""Benchmark: the whole analyze loop (read + segment + measure + track + write) and the demo.

``run(quick) -> str`` returns a Markdown section for docs/benchmarks.md.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from etemlive.frames import Frame
from etemlive.pipeline import Pipeline
from etemlive.record import Recorder
from etemlive.sources.files import open_movie
from etemlive.sources.simulate import SimulationConfig, write_simulation


def _tracker_factory():
    from etemlive.track.tracker import Tracker

    return lambda px, dt: Tracker(pixel_size_nm=px, frame_interval_s=dt)


def _segmenter(backend: str):
    if backend == "classical":
        from etemlive.segment.classical import ClassicalSegmenter

        return ClassicalSegmenter()
    from etemlive.segment.backends import make_segmenter

    return make_segmenter(backend)


def analyze_throughput(movie: Path, backend: str, out: Path, *, track: bool = True) -> dict:
    """Run the real pipeline over a movie file; return summary.json's numbers."""
    source = open_movie(movie)
    with source:
        pipeline = Pipeline(source, _segmenter(backend), Recorder(out),
                            pixel_size_nm=source.pixel_size_nm, pixel_size_source="metadata",
                            frame_interval_s=source.frame_interval_s,
                            tracker_factory=_tracker_factory() if track else None)
        return pipeline.run()


class _Cycle:
    """Frames of a short movie repeated: a long run without a long file."""

    name = "cycle"
    pixel_size_source = "metadata"

    def __init__(self, frames: list[Frame], n_frames: int, px: float, dt: float) -> None:
        self.frames, self.n_frames = frames, n_frames
        self.pixel_size_nm, self.frame_interval_s = px, dt

    def __iter__(self):
        for i, f in zip(range(self.n_frames), itertools.cycle(self.frames), strict=False):
            yield Frame(i, i * self.frame_interval_s, self.pixel_size_nm, f.image)

    def close(self) -> None:
        pass


def memory_over_run(movie: Path, n_frames: int, out: Path) -> dict:
    """RSS at 10% and 100% of a long run (cycled frames) through the whole pipeline."""
    import psutil

    proc = psutil.Process()
    with open_movie(movie) as source:
        frames = list(source)
        px, dt = source.pixel_size_nm, source.frame_interval_s
    from etemlive.segment.classical import ClassicalSegmenter

    samples: list[tuple[int, float]] = []
    pipeline = Pipeline(_Cycle(frames, n_frames, px, dt), ClassicalSegmenter(), Recorder(out),
                        pixel_size_nm=px, frame_interval_s=dt, tracker_factory=_tracker_factory())
    import threading

    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            samples.append((pipeline.analysed, proc.memory_info().rss / 2**20))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    summary = pipeline.run()
    done.set()
    sampler.join()
    samples.append((pipeline.analysed, proc.memory_info().rss / 2**20))
    arr = np.array(samples)
    early = arr[arr[:, 0] >= 0.1 * n_frames]
    return {"frames": n_frames, "rss_at_10pct_mib": float(early[0, 1]) if len(early) else float("nan"),
            "rss_end_mib": float(arr[-1, 1]), "rss_max_mib": float(arr[:, 1].max()),
            "fps": summary["fps"]}


def demo_run(seconds: float, out: Path) -> dict:
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "etemlive", "demo", "--headless", "--seconds",
                             str(seconds), "--out", str(out)], capture_output=True, text=True,
                            timeout=seconds + 600)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1:] or ["?"], "wall_s": wall}
    summary = json.loads((out / "summary.json").read_text())
    outputs_ok = all((out / name).exists() for name in (
        "particles.csv", "frames.csv", "events.csv", "tracks.csv", "drift.csv", "summary.json"))
    for name in ("particles.csv", "frames.csv", "events.csv", "tracks.csv", "drift.csv"):
        pd.read_csv(out / name)  # parseable
    return {**{k: summary.get(k) for k in ("frames_seen", "frames_analysed", "frames_dropped",
                                           "frames_malformed", "fps", "latency_p50_ms",
                                           "latency_p99_ms", "backend", "device")},
            "outputs_ok": outputs_ok, "wall_s": wall}


def run(quick: bool = False) -> str:
    lines = ["## Whole pipeline (`etemlive analyze` loop: read + segment + measure + track + write)", ""]
    sizes = (512, 1024) if quick else (512, 1024, 2048)
    n_frames = 10 if quick else 30
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines += ["| backend | frame size | frames | fps | ms/frame | segment ms | measure ms | track ms | write ms | latency p50 / p99 ms |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        movies = {}
        for size in sizes:
            movie = tmp / f"ripening_{size}.tif"
            write_simulation(movie, SimulationConfig(scenario="ripening", seed=101, n_frames=n_frames,
                                                     size_px=size))
            movies[size] = movie
        backends = ["classical"]
        try:
            from etemlive.segment.backends import make_segmenter

            make_segmenter("onnx")
            backends.append("onnx")
        except Exception as err:  # noqa: BLE001
            lines.insert(2, f"(ONNX backend not measured: {err})\n")
        for backend in backends:
            for size in sizes:
                s = analyze_throughput(movies[size], backend, tmp / f"out_{backend}_{size}")
                st = s["stage_ms_mean"]
                lines.append(
                    f"| {backend} | {size}x{size} | {s['frames_analysed']} | {s['fps']:.1f} | "
                    f"{1e3 / s['fps']:.0f} | {st['segment']:.0f} | {st['measure']:.1f} | "
                    f"{st['track']:.1f} | {st['write']:.1f} | {s['latency_p50_ms']:.0f} / "
                    f"{s['latency_p99_ms']:.0f} |")
        lines += ["", "Segment and measure run on 2 worker threads, so per-stage times add up to more "
                  "than ms/frame.", ""]
        n_long = 200 if quick else 1000
        mem = memory_over_run(movies[1024 if 1024 in movies else sizes[0]], n_long, tmp / "mem")
        lines += [f"Memory over a {mem['frames']}-frame run (1024x1024, classical, tracked, cycled "
                  f"frames): RSS {mem['rss_at_10pct_mib']:.0f} MiB at 10% of the run, "
                  f"{mem['rss_end_mib']:.0f} MiB at the end (max {mem['rss_max_mib']:.0f} MiB); "
                  f"{mem['fps']:.1f} fps.", ""]
        seconds = 10 if quick else 30
        demo = demo_run(seconds, tmp / "demo")
        lines += [f"### `etemlive demo --headless --seconds {seconds}`", ""]
        if "error" in demo:
            lines.append(f"FAILED: {demo['error']}")
        else:
            lines.append(
                f"received {demo['frames_seen']}, analysed {demo['frames_analysed']}, dropped "
                f"{demo['frames_dropped']}, malformed {demo['frames_malformed']}; "
                f"{demo['fps']:.1f} fps analysed; latency p50 {demo['latency_p50_ms']:.0f} ms, p99 "
                f"{demo['latency_p99_ms']:.0f} ms; backend {demo['backend']} ({demo['device']}); all "
                f"outputs present and parseable: {demo['outputs_ok']}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
