"""The run configuration validates at start-up and round-trips through config.json."""

from __future__ import annotations

import pytest

from etemlive.config import RunConfig
from etemlive.errors import InputError


def test_round_trip(tmp_path):
    config = RunConfig(mode="analyze", input="movie.tif", out_dir="out", backend="classical",
                       pixel_size_nm=0.25, save_labels=True, workers=2, outline="half-contrast")
    config.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == config


@pytest.mark.parametrize("field, value, message", [
    ("backend", "gpu", "unknown backend"),
    ("pixel_size_nm", 0.0, "pixel-size-nm must be positive"),
    ("pixel_size_nm", float("nan"), "pixel-size-nm must be positive"),
    ("frame_interval_s", -1.0, "frame-interval-s must be positive"),
    ("policy", "newest", "unknown policy"),
    ("workers", 0, "workers must be"),
    ("outline", "hand", "unknown outline"),
])
def test_bad_values_are_rejected(field, value, message):
    with pytest.raises(InputError, match=message):
        RunConfig(mode="analyze", input="m.tif", out_dir="o", **{field: value})


def test_unknown_field_in_file(tmp_path):
    (tmp_path / "c.json").write_text('{"mode": "live", "input": "x", "out_dir": "o", "colour": 1}')
    with pytest.raises(InputError, match="unknown config field"):
        RunConfig.load(tmp_path / "c.json")
