"""The recorder writes parseable, flushed tables and atomic JSON."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import tifffile

from etemlive.errors import InputError
from etemlive.measure import PARTICLE_COLUMNS
from etemlive.record import (
    DRIFT_COLUMNS,
    EVENT_COLUMNS,
    FRAME_COLUMNS,
    TRACK_COLUMNS,
    Recorder,
    write_json_atomic,
)


def _particles(frame: int, n: int) -> pd.DataFrame:
    rows = {c: np.zeros(n, dtype=d) for c, d in PARTICLE_COLUMNS.items()}
    table = pd.DataFrame(rows)
    table["frame"] = frame
    table["diameter_nm"] = np.arange(n, dtype=float) + 1.0
    table["shape"] = "round"
    return table


def _frame_row(frame: int) -> dict:
    return {"frame": frame, "time_s": frame * 0.5, "count": 2, "mean_diameter_nm": 1.5,
            "std_diameter_nm": 0.7, "latency_ms": 12.0}


def test_tables_are_readable_after_every_frame(tmp_path):
    with Recorder(tmp_path, save_labels=True) as rec:
        for i in range(3):
            labels = np.zeros((8, 8), np.int32)
            labels[1:3, 1:3] = 1
            labels[5:7, 5:7] = 2
            events = pd.DataFrame([{"frame": i, "kind": "appear", "track_ids": "1", "into_id": -1}])
            rec.write_frame(particles=_particles(i, 2), frame_row=_frame_row(i), events=events,
                            drift_nm=(0.1 * i, -0.2 * i), labels=labels)
            # Flushed per frame: readable while the recorder is still open.
            particles = pd.read_csv(tmp_path / "particles.csv")
            assert len(particles) == 2 * (i + 1)
            assert list(particles.columns) == list(PARTICLE_COLUMNS)
            assert len(pd.read_csv(tmp_path / "frames.csv")) == i + 1
        rec.write_tracks(pd.DataFrame({"track_id": [1], "first_frame": [0], "last_frame": [2],
                                       "n_frames": [3], "diameter_start_nm": [1.0],
                                       "diameter_end_nm": [2.0], "growth_rate_nm_per_s": [1.0],
                                       "fate": ["alive"], "extra": [7]}))
    assert list(pd.read_csv(tmp_path / "frames.csv").columns) == list(FRAME_COLUMNS)
    assert list(pd.read_csv(tmp_path / "events.csv").columns) == list(EVENT_COLUMNS)
    drift = pd.read_csv(tmp_path / "drift.csv")
    assert list(drift.columns) == list(DRIFT_COLUMNS)
    assert drift["dy_nm"].iloc[-1] == pytest.approx(-0.4)
    tracks = pd.read_csv(tmp_path / "tracks.csv")
    assert list(tracks.columns[: len(TRACK_COLUMNS)]) == list(TRACK_COLUMNS)
    assert tracks["extra"].iloc[0] == 7
    stack = tifffile.imread(tmp_path / "labels.tif")
    assert stack.shape == (3, 8, 8) and stack.dtype == np.uint16
    assert stack[2, 5, 5] == 2


def test_empty_frame_writes_frame_row_but_no_particles(tmp_path):
    with Recorder(tmp_path) as rec:
        rec.write_frame(particles=_particles(0, 0), frame_row=_frame_row(0))
    assert len(pd.read_csv(tmp_path / "particles.csv")) == 0
    assert len(pd.read_csv(tmp_path / "frames.csv")) == 1


def test_summary_is_atomic_and_valid_json_with_nan(tmp_path):
    write_json_atomic(tmp_path / "summary.json", {"fps": float("nan"), "n": np.int64(3)})
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data == {"fps": None, "n": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_unwritable_folder_is_one_line_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(InputError, match="cannot write to output folder"):
        Recorder(locked / "out")


def test_output_path_that_is_a_file_is_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot write to output folder"):
        Recorder(blocker / "out")
