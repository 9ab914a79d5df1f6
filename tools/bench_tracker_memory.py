"""Memory and tracks_table() cost of a long live run of the tracker (synthetic churn).

~250 particles random-walk (1 nm/frame) over 2000 frames; each dies with probability
0.005 per frame (mean lifetime 200 frames) and as many new ones are born, so ended tracks
accumulate. ``tracks_table()`` is called every 20 frames, as the pipeline does every ~2 s.

Run: ``.venv/bin/python tools/bench_tracker_memory.py [--frames 2000] [--tracemalloc]``
(``--tracker-file /tmp/old_tracker.py`` runs another copy of tracker.py, e.g. from
``git show <commit>:src/etemlive/track/tracker.py``.)
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc

import numpy as np
import pandas as pd

from etemlive.track import Tracker, TrackerConfig


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--particles", type=int, default=250)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument(
        "--tracker-file", help="load Tracker from this copy of tracker.py (before/after runs)"
    )
    a = ap.parse_args()
    tracker_cls = Tracker
    if a.tracker_file:
        import importlib.util

        spec = importlib.util.spec_from_file_location("etemlive.track._bench_copy", a.tracker_file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        tracker_cls = mod.Tracker
    rng = np.random.default_rng(0)
    side = 2000.0
    n = a.particles
    pos = rng.uniform(20, side - 20, (n, 2))
    diam = rng.uniform(6, 10, n)
    tr = tracker_cls(TrackerConfig(drift="none"), pixel_size_nm=1.0, frame_interval_s=0.1)
    if a.tracemalloc:
        tracemalloc.start()
    t_calls: list[float] = []
    marks = {}
    for f in range(a.frames):
        dead = rng.random(len(pos)) < 0.005
        pos, diam = pos[~dead], diam[~dead]
        nb = int(dead.sum())
        pos = np.vstack([pos, rng.uniform(20, side - 20, (nb, 2))])
        diam = np.r_[diam, rng.uniform(6, 10, nb)]
        pos = np.clip(pos + rng.normal(0, 1.0, pos.shape), 5, side - 5)
        diam = diam + 0.01 + rng.normal(0, 0.1, len(diam))
        d = diam + rng.normal(0, 0.2, len(diam))
        tab = pd.DataFrame(
            {
                "frame": f,
                "time_s": f * 0.1,
                "x_px": pos[:, 0],
                "y_px": pos[:, 1],
                "diameter_nm": d,
                "area_nm2": np.pi / 4 * d**2,
            }
        )
        tr.update(tab)
        if (f + 1) % a.every == 0:
            t0 = time.perf_counter()
            table = tr.tracks_table()
            t_calls.append(time.perf_counter() - t0)
        if f + 1 in (200, 1000, a.frames):
            traced = tracemalloc.get_traced_memory()[0] / 2**20 if a.tracemalloc else float("nan")
            marks[f + 1] = (rss_mib(), traced, len(table), t_calls[-1])
    print(f"frames {a.frames}, tracks {len(table)}, tracks_table() calls {len(t_calls)}")
    for k, (rss, traced, ntr, tc) in marks.items():
        print(
            f"  after {k:5d} frames: RSS {rss:7.1f} MiB, traced {traced:7.1f} MiB, "
            f"tracks {ntr:5d}, last tracks_table() {tc * 1e3:6.1f} ms"
        )
    tc = np.array(t_calls) * 1e3
    print(
        f"  tracks_table(): mean {tc.mean():.1f} ms, last 10 mean {tc[-10:].mean():.1f} ms, "
        f"max {tc.max():.1f} ms; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB"
    )


if __name__ == "__main__":
    main()
