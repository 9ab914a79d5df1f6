"""Render docs/dashboard.png: the live dashboard on a simulated coalescence movie.

The real path: simulator -> segmenter -> measure -> tracker -> recorder, with the
dashboard reading the pipeline's snapshots on its timer (offscreen Qt). When the
run has finished, the particle born of the newest merge is selected (growth curve,
white outline) and the window is saved.

    QT_QPA_PLATFORM=offscreen .venv/bin/python tools/dashboard_screenshot.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--scenario", default="coalescence")
    parser.add_argument("--size", type=int, default=512, help="frame size in px")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--backend", default="classical")
    args = parser.parse_args(argv)

    from PySide6 import QtCore, QtWidgets

    from etemlive import cli
    from etemlive.cli import tracker_factory
    from etemlive.dashboard import DashboardWindow
    from etemlive.pipeline import Pipeline
    from etemlive.record import Recorder
    from etemlive.segment.backends import make_segmenter
    from etemlive.sources.simulate import SimulatedSource, SimulationConfig

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    config = SimulationConfig(scenario=args.scenario, seed=args.seed, n_frames=args.frames,
                              size_px=args.size)
    with tempfile.TemporaryDirectory() as out_dir, SimulatedSource(config) as source:
        pipeline = Pipeline(
            source, make_segmenter(args.backend), Recorder(out_dir),
            pixel_size_nm=source.pixel_size_nm, pixel_size_source="metadata",
            frame_interval_s=source.frame_interval_s, tracker_factory=tracker_factory(),
            publish_snapshots=True, input_name=source.name,
            live_analysis=cli._live_analysis(),  # the fits `etemlive analyze` shows live
        )
        window = DashboardWindow(pipeline, title=f"etemlive: {source.name}", refresh_hz=20.0)
        window.resize(1600, 950)
        window.show()
        worker = threading.Thread(target=pipeline.run, daemon=True)
        worker.start()
        while worker.is_alive():
            app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.01)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # let the timer draw the final state
            app.processEvents()
            time.sleep(0.02)
        snap = pipeline.latest_snapshot()
        # Show two growth curves: the longest-lived particle born of a merge, and the
        # longest-lived particle overall.
        alive = [int(t) for t in snap.particles["track_id"] if int(t) >= 0]
        length = {t: len(pipeline.track_history(t)) for t in alive}
        merged = set()
        if len(snap.events):
            merged = {int(i) for i in snap.events.loc[snap.events["kind"] == "merge", "into_id"]}
        chosen = sorted((t for t in alive if t in merged), key=length.get)[-1:]
        chosen += [t for t in sorted(alive, key=length.get)[::-1] if t not in chosen][:1]
        for track_id in chosen:
            window.select_track(track_id, add=True)
        app.processEvents()
        path = window.save_png(args.out)
        stats = pipeline.stats()
        print(f"wrote {path}: frame {snap.frame_index}, {len(snap.particles)} particles, "
              f"{stats.analysed} frames analysed at {stats.fps_analysed:.1f} fps, "
              f"selected {chosen}")
        window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
