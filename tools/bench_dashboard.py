"""Benchmark: the live dashboard (redraw time, and the pipeline's throughput with it open).

``run(quick) -> str`` returns a Markdown section for docs/benchmarks.md. The window
is real (PySide6 + pyqtgraph) on Qt's ``offscreen`` platform when there is no display:
the same raster painting as on screen, without the compositor.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from etemlive.dashboard import benchmark_refresh, default_cpu_budget  # noqa: E402
from etemlive.pipeline import Pipeline  # noqa: E402
from etemlive.record import Recorder  # noqa: E402
from etemlive.sources.files import open_movie  # noqa: E402
from etemlive.sources.simulate import SimulationConfig, write_simulation  # noqa: E402


def _tracker_factory():
    from etemlive.track.tracker import Tracker

    return lambda px, dt: Tracker(pixel_size_nm=px, frame_interval_s=dt)


def pipeline_fps(movie: Path, out: Path, *, dashboard: bool | str,
                 refresh_hz: float = 20.0, cpu_budget: float | str | None = "auto",
                 nice: int = 19) -> dict:
    """Analyse ``movie`` with the classical backend, headless or with the window open.

    The pipeline runs on a worker thread; the main thread waits (``dashboard=False``),
    shows the window in its own process as ``etemlive analyze`` does
    (``dashboard="process"``), or runs the window in this process (``True``).
    """
    from etemlive.segment.classical import ClassicalSegmenter

    source = open_movie(movie)
    with source:
        pipeline = Pipeline(source, ClassicalSegmenter(), Recorder(out),
                            pixel_size_nm=source.pixel_size_nm, pixel_size_source="metadata",
                            frame_interval_s=source.frame_interval_s,
                            tracker_factory=_tracker_factory(), publish_snapshots=dashboard)
        summary: dict = {}
        worker = threading.Thread(target=lambda: summary.update(pipeline.run()), daemon=True)
        redraws = 0
        display_cores = 0.0
        if dashboard == "process":
            import json

            from etemlive.dashboard import run_dashboard_process

            stats = out.parent / f"{out.name}_window.json"

            class Watched:  # the pipeline, noting when the window first asks for it
                def __init__(self) -> None:
                    self.asked = threading.Event()

                @property
                def running(self) -> bool:
                    return not pipeline.finished  # running from before its start

                def latest_snapshot(self):
                    self.asked.set()
                    return pipeline.latest_snapshot()

                def track_history(self, track_id):
                    return pipeline.track_history(track_id)

                def stop(self) -> None:
                    pipeline.stop()

            watched = Watched()
            window = threading.Thread(target=run_dashboard_process, args=(watched,), kwargs={
                "refresh_hz": refresh_hz, "close_when_finished": True, "stats_json": stats,
                "cpu_budget": cpu_budget, "nice": nice})
            window.start()
            # The window is open (Qt started, first request made) before the run starts,
            # as in a session where the run goes on for minutes.
            watched.asked.wait(60)
            worker.start()
            worker.join()
            window.join()
            counts = json.loads(stats.read_text())
            redraws = counts["redraws"]
            display_cores = counts.get("cores_after_first_frame", float("nan"))
        elif dashboard:
            from PySide6 import QtCore, QtWidgets

            from etemlive.dashboard import DashboardWindow

            app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
            window = DashboardWindow(pipeline, refresh_hz=refresh_hz)
            window.resize(1600, 950)
            window.show()
            app.processEvents()
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            # Event-driven, as `etemlive analyze` runs the window (app.exec): a polling
            # loop here would wake the GIL hundreds of times a second and slow the run.
            loop = QtCore.QEventLoop()
            done = QtCore.QTimer()
            done.timeout.connect(lambda: None if worker.is_alive() else loop.quit())
            done.start(100)
            worker.start()
            loop.exec()
            done.stop()
            # CPU time of the display (main) thread per second of run: its load on the machine.
            display_cores = (time.thread_time() - cpu0) / (time.perf_counter() - wall0)
            redraws = window.redraws
            window.close()
            window.deleteLater()
            app.processEvents()
        else:
            worker.start()
            worker.join()
    return {"fps": summary["fps"], "frames": summary["frames_analysed"], "redraws": redraws,
            "display_cores": display_cores}


def run(quick: bool = False) -> str:
    lines = ["## Dashboard", ""]
    lines += [
        "### Redraw time per new snapshot",
        "",
        "`etemlive.dashboard.benchmark_refresh(n, size, n_particles)`: a real window (1600x950) "
        "fed distinct snapshots (frame, labels, particle table, growing history, events); "
        "*update* is the data work (downsample to <= 1024 px, contrast, outlines overlay, ids, "
        "plots, histogram fit, events, health), *total* adds painting what changed (the event "
        "loop run to completion, as live).",
        "",
        "| frame | particles | plots redrawn | update ms (median) | total ms median / p90 / max | redraws per s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    n = 10 if quick else 50
    for size, particles, plots in ((1024, 200, True), (2048, 500, True), (2048, 500, False)):
        r = benchmark_refresh(n=n, size=size, n_particles=particles, with_plots=plots)
        if size == 2048 and plots:
            r_plots_2048 = r
        lines.append(
            f"| {size}x{size} | {particles} | {'yes' if plots else 'no (between plot refreshes)'} | "
            f"{r['update_ms_median']:.1f} | "
            f"{r['total_ms_median']:.1f} / {r['total_ms_p90']:.1f} / {r['total_ms_max']:.1f} | "
            f"{r['fps']:.1f} |"
        )
    lines += ["", f"Qt platform: {r['platform']}; {n} snapshots per row. The window redraws the "
              "plots and events at most 5 times a second and the frame at every new snapshot, "
              "so a live refresh costs between the last two rows.", ""]
    from etemlive._dashboard_proc import benchmark_transfer

    t = benchmark_transfer(n=30 if not quick else 10, size=2048, n_particles=500)
    slow = r_plots_2048["total_ms_median"] + t["ms_median"]
    lines += [f"The window runs in its own process: a new snapshot of a 2048x2048 run (display "
              f"arrays {t['mb_per_frame']:.1f} MB, 500 particles) reaches it in "
              f"{t['ms_median']:.1f} ms (median, p90 {t['ms_p90']:.1f}; "
              "`etemlive._dashboard_proc.benchmark_transfer`, a real local socket), so a full "
              f"redraw with plots costs {slow:.1f} ms there: {1000 / slow:.1f} redraws per s.", ""]

    size, n_frames = (512, 20) if quick else (1024, 240)
    lines += [
        "### Pipeline throughput with the dashboard open",
        "",
        f"`analyze` loop (classical, tracked) over a simulated coalescence movie, {size}x{size}, "
        f"{n_frames} frames; headless and with the window open (20 Hz timer), alternated, "
        f"{2 if quick else 4} runs each (median, and the spread: on this shared virtual "
        "machine the same run varies by about +-10 % from minute to minute).",
        "",
        "| run | fps analysed (median) | min - max | window redraws | display CPU (cores) |",
        "| --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        movie = tmp / "coalescence.tif"
        write_simulation(movie, SimulationConfig(scenario="coalescence", seed=7,
                                                 n_frames=n_frames, size_px=size))
        modes = (False, "process", "process-nice10", True)
        rounds = 2 if quick else 4
        results: dict[object, list[dict]] = {mode: [] for mode in modes}
        for k in range(rounds):
            for mode in modes:
                kind, nice = ("process", 10) if mode == "process-nice10" else (mode, 19)
                results[mode].append(
                    pipeline_fps(movie, tmp / f"out_{k}_{mode}", dashboard=kind, nice=nice))

        def median(mode: object, key: str) -> float:
            return statistics.median(r[key] for r in results[mode])

        headless = median(False, "fps")
        names = {"process": "window in its own process, nice +19 (what the CLI opens)",
                 "process-nice10": "window in its own process, nice +10 (for comparison)",
                 True: "window in the analysis process (for comparison)"}
        def spread(mode: object) -> str:
            fps = [r["fps"] for r in results[mode]]
            return f"{min(fps):.2f} - {max(fps):.2f}"

        lines.append(f"| headless | {headless:.2f} | {spread(False)} | - | - |")
        for mode in ("process", "process-nice10", True):
            lines.append(f"| {names[mode]} | {median(mode, 'fps'):.2f} | {spread(mode)} | "
                         f"{median(mode, 'redraws'):.0f} | {median(mode, 'display_cores'):.2f} |")
        shown = median("process", "fps")
        inproc = median(True, "fps")
        lines += ["", f"With the dashboard open (`etemlive analyze`, `live` and `demo` open it in "
                  f"its own process) the pipeline runs at {100 * shown / headless:.0f}% of its "
                  f"headless throughput ({100 * inproc / headless:.0f}% with the window in the "
                  "analysis process, where it competes for the GIL). The window process runs at "
                  "nice +19 (lowest priority) and holds itself under "
                  f"{default_cpu_budget():.2f} of a core (`default_cpu_budget()`, 5% of this "
                  f"{os.cpu_count()}-core machine) by skipping frames, never by slowing the run; "
                  "the window is opened before the run starts (a live session runs for minutes; "
                  "the window's start, about 1.5 s of CPU for Qt and pyqtgraph, is left out) and "
                  "its CPU column is its share from its first frame on.",
                  ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    t0 = time.perf_counter()
    print(run(quick="--quick" in sys.argv))
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
