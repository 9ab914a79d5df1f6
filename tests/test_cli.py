"""The command line: exit codes, one-line errors, and a real simulate -> analyze run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile

from etemlive import __version__


def etemlive(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etemlive", *args], capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_version():
    result = etemlive("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"etemlive {__version__}"


def test_missing_movie(tmp_path):
    result = etemlive("analyze", str(tmp_path / "nope.tif"), "--out", str(tmp_path / "o"),
                      "--headless")
    assert_one_line_error(result, "nope.tif")


def test_unknown_format(tmp_path):
    movie = tmp_path / "movie.xyz"
    movie.write_bytes(b"\x00" * 100)
    result = etemlive("analyze", str(movie), "--out", str(tmp_path / "o"), "--headless")
    assert_one_line_error(result, "movie.xyz")


def test_no_pixel_size_anywhere_asks_for_it(tmp_path):
    movie = tmp_path / "plain.tif"
    tifffile.imwrite(movie, np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8),
                     photometric="minisblack")
    result = etemlive("analyze", str(movie), "--out", str(tmp_path / "o"), "--headless",
                      "--backend", "classical")
    assert_one_line_error(result, "--pixel-size-nm")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "abc"])
def test_bad_pixel_size_option(tmp_path, value):
    movie = tmp_path / "m.tif"
    tifffile.imwrite(movie, np.zeros((2, 16, 16), np.uint8), photometric="minisblack")
    result = etemlive("analyze", str(movie), "--out", str(tmp_path / "o"), "--headless",
                      f"--pixel-size-nm={value}")
    assert_one_line_error(result, "pixel-size-nm")


def test_unwritable_output_folder(tmp_path):
    movie = tmp_path / "m.tif"
    tifffile.imwrite(movie, np.zeros((2, 16, 16), np.uint8), photometric="minisblack")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    result = etemlive("analyze", str(movie), "--out", str(blocker / "out"), "--headless",
                      "--pixel-size-nm", "0.5", "--backend", "classical")
    assert_one_line_error(result, "output folder")


def test_simulate_then_analyze(tmp_path):
    movie = tmp_path / "sim.tif"
    result = etemlive("simulate", str(movie), "--scenario", "coalescence", "--seed", "3",
                      "--frames", "6", "--size", "256")
    assert result.returncode == 0, result.stderr
    assert movie.exists() and (tmp_path / "sim_truth.csv").exists()
    out = tmp_path / "out"
    result = etemlive("analyze", str(movie), "--out", str(out), "--headless", "--backend",
                      "classical", "--save-labels")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_analysed"] == 6
    assert summary["pixel_size_source"] == "metadata"
    assert summary["backend"] == "classical"
    particles = pd.read_csv(out / "particles.csv")
    frames = pd.read_csv(out / "frames.csv")
    assert sorted(frames["frame"]) == list(range(6))
    truth = pd.read_csv(tmp_path / "sim_truth.csv")
    # Counts per frame agree with the truth to within a few particles.
    measured = particles.groupby("frame").size().reindex(range(6), fill_value=0).to_numpy()
    expected = truth.groupby("frame").size().reindex(range(6), fill_value=0).to_numpy()
    assert np.all(np.abs(measured - expected) <= np.maximum(2, 0.2 * expected))
    labels = tifffile.imread(out / "labels.tif")
    assert labels.shape[0] == 6
    # particles.csv's label column points at the right pixels of labels.tif.
    row = particles.iloc[len(particles) // 2]
    page = labels[int(row["frame"])]
    ys, xs = np.nonzero(page == row["label"])
    assert abs(xs.mean() - row["x_px"]) < 0.5 and abs(ys.mean() - row["y_px"]) < 0.5


def test_outline_option_reaches_the_segmenter_and_the_records(tmp_path):
    movie = tmp_path / "sim.tif"
    assert etemlive("simulate", str(movie), "--scenario", "ripening", "--seed", "2",
                    "--frames", "2", "--size", "256").returncode == 0
    out = tmp_path / "out"
    result = etemlive("analyze", str(movie), "--out", str(out), "--headless", "--backend", "onnx",
                      "--outline", "half-contrast", "--no-track", "--no-report")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "summary.json").read_text())["outline"] == "half-contrast"
    assert json.loads((out / "config.json").read_text())["outline"] == "half-contrast"
    bad = etemlive("analyze", str(movie), "--out", str(tmp_path / "o2"), "--outline", "hand")
    assert bad.returncode != 0 and "invalid choice: 'hand'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_scale_bar_calibrates_and_is_masked_out(tmp_path):
    """A figure with no metadata: the burned-in bar gives the pixel size and is not a particle."""
    import cv2

    from etemlive.scale import draw_scale_bar

    image = np.full((400, 400), 200, np.uint8)
    rng = np.random.default_rng(1)
    centres = [(80, 80), (200, 120), (120, 260), (260, 240)]
    for x, y in centres:
        cv2.circle(image, (x, y), 14, 60, -1)  # dark particles, 28 px across
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    image = draw_scale_bar(image, length_px=100, text="50 nm", bright=False)
    path = tmp_path / "figure.png"
    cv2.imwrite(str(path), image)
    out = tmp_path / "out"
    result = etemlive("analyze", str(path), "--out", str(out), "--headless", "--backend",
                      "classical", "--scale-bar-nm", "50", "--no-report")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pixel_size_source"] == "scale bar"
    assert summary["pixel_size_nm"] == pytest.approx(0.5, rel=0.02)
    particles = pd.read_csv(out / "particles.csv")
    # The bar and its label (bottom-right corner, rows > 330, columns > 270) are not particles.
    assert not ((particles["y_px"] > 330) & (particles["x_px"] > 270)).any()
    big = particles[particles["diameter_nm"] > 10]
    assert len(big) == len(centres)
    assert big["diameter_nm"].to_numpy() == pytest.approx(np.full(4, 14.0), rel=0.08)


def test_live_bad_endpoint_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    result = etemlive("live", "nonsense", "--out", str(out), "--headless", "--backend", "classical")
    assert_one_line_error(result, "nonsense")
    assert not out.exists()
