"""Tests of etemlive.report: the self-contained HTML report of a run."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etemlive.errors import InputError
from etemlive.report import SECTIONS, write_report


class _Collector(HTMLParser):
    """Collects section ids, image sources and external references of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.section_ids: list[str] = []
        self.img_src: list[str] = []
        self.external: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.section_ids.append(a.get("id", ""))
        if tag == "img":
            self.img_src.append(a.get("src", ""))
        for key in ("src", "href"):
            v = a.get(key) or ""
            if v and not v.startswith(("data:", "#")):
                self.external.append(v)


def _run_folder(out: Path, *, n_frames: int = 25, frame_interval_s: float | None = 0.5) -> Path:
    """A run with 150 particles ripening (dr/dt ~ (1/<r> - 1/r)/r), vanish and merge events."""
    rng = np.random.default_rng(0)
    out.mkdir(parents=True)
    r = rng.normal(5.0, 1.0, 150).clip(2.0)
    rows = []
    for f in range(n_frames):
        rows.append(pd.DataFrame({
            "frame": f, "time_s": f * (frame_interval_s or 1.0), "track_id": np.arange(r.size),
            "x_px": 0.0, "y_px": 0.0, "diameter_nm": 2 * r, "touches_edge": False}))
        r = np.clip(r + 0.5 * (1 / r.mean() - 1 / r) / r, 0.5, None)
    pd.concat(rows).to_csv(out / "particles.csv", index=False)
    pd.DataFrame({"frame": [3, 7, 9], "kind": ["merge", "vanish", "appear"],
                  "track_ids": ["1 2", "3", "4"], "into_id": [1, None, None]}).to_csv(
        out / "events.csv", index=False)
    pd.DataFrame({"track_id": [0, 1], "first_frame": [0, 0], "last_frame": [24, 24],
                  "n_frames": [25, 25], "diameter_start_nm": [5.0, 6.0],
                  "diameter_end_nm": [5.5, 6.6], "growth_rate_nm_per_s": [0.04, 0.05],
                  "fate": ["alive", "alive"]}).to_csv(out / "tracks.csv", index=False)
    (out / "summary.json").write_text(json.dumps({
        "input": "movie <1>.tif", "pixel_size_nm": 0.25, "pixel_size_source": "scale bar",
        "frame_interval_s": frame_interval_s, "backend": "onnx", "device": "cpu",
        "outline": "half-contrast", "frames_seen": n_frames, "frames_analysed": n_frames, "frames_dropped": 0, "fps": 14.5,
        "latency_p50_ms": 31.0, "latency_p99_ms": 80.0, "warnings": ["dropping frames: 2"],
        "stage_ms_mean": {"segment": 20.0}, "version": "0.1.0"}))
    return out


def _parse(path: Path) -> tuple[str, _Collector]:
    text = path.read_text(encoding="utf-8")
    c = _Collector()
    c.feed(text)
    return text, c


def test_report_is_self_contained_with_sections_and_plots(tmp_path):
    out = _run_folder(tmp_path / "run")
    path = write_report(out, n_bootstrap=5, window_frames=10)
    assert path == out / "report.html"
    text, c = _parse(path)
    assert c.section_ids == [sid for sid, _ in SECTIONS]
    for _, heading in SECTIONS:
        assert f"<h2>{heading}</h2>" in text
    assert c.external == []  # nothing fetched from anywhere
    assert "script" not in c.tags and "link" not in c.tags
    assert len(c.img_src) == 7
    for src in c.img_src:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # facts from the folder made it in, escaped
    assert "movie &lt;1&gt;.tif" in text and "scale bar" in text
    assert "<th>U-Net outlines</th><td>half-contrast</td>" in text
    assert "dropping frames: 2" in text and "merge" in text
    m = re.search(r"<b>n = ([0-9.]+)</b>", text)
    assert m is not None  # the kinetics fit ran
    # analysis outputs regenerated beside it
    for name in ("distributions.csv", "kinetics.json", "count_vs_time.png", "size_histogram.png"):
        assert (out / name).is_file()


def test_report_of_an_empty_run_says_not_enough_data(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    path = write_report(out, n_bootstrap=0)
    text, c = _parse(path)
    assert c.section_ids == [sid for sid, _ in SECTIONS]
    assert "not enough data" in text
    assert "No summary.json found." in text and "No events recorded." in text


def test_report_without_frame_interval_says_frames(tmp_path):
    out = _run_folder(tmp_path / "run", frame_interval_s=None)
    text, _ = _parse(write_report(out, n_bootstrap=0, window_frames=25))
    assert "frames (no frame interval known)" in text
    assert "no frame interval known: times are frame numbers" in text


def test_report_of_a_missing_folder_raises_one_line(tmp_path):
    with pytest.raises(InputError, match="output folder not found"):
        write_report(tmp_path / "nope")
