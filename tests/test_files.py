"""Movie readers on real files in real formats, written by each format's own library.

Where no library writes a format (Velox emd, FEI ser, Gatan dm3), tests/data_makers.py
writes it from the published layout and RosettaSciIO, an independent reader, is
checked to read the same pixels and calibration first.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from data_makers import write_dm3, write_ser, write_velox_emd

from etemlive.errors import CalibrationError, InputError
from etemlive.frames import FRAME_DTYPES, FrameSource
from etemlive.sources.files import (
    SUPPORTED_EXTENSIONS,
    as_frame_image,
    length_to_nm,
    open_movie,
    time_to_s,
)

tifffile = pytest.importorskip("tifffile")


def _stack(n: int = 6, rows: int = 24, cols: int = 40, dtype=np.uint16, seed: int = 0):
    """A stack whose frame i is identifiable: pixel (0, 0) holds i."""
    rng = np.random.default_rng(seed)
    high = 250 if np.dtype(dtype) == np.uint8 else 4000
    stack = rng.integers(0, high, (n, rows, cols)).astype(dtype)
    stack[:, 0, 0] = np.arange(n)
    return stack


def _read_all(movie) -> np.ndarray:
    return np.stack([f.image for f in movie])


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text.strip() == text and text
    return text


def _write_hspy(path: Path, data: np.ndarray, axes: list[dict], **options) -> Path:
    """A HyperSpy file written by RosettaSciIO's own hspy writer."""
    from rsciio.hspy import file_writer

    file_writer(str(path), **options, signal={
        "data": data, "axes": axes, "metadata": {"General": {"title": path.stem}, "Signal": {}},
        "original_metadata": {}, "attributes": {"_lazy": False}, "tmp_parameters": {},
        "learning_results": {}, "models": {}, "package_info": {"name": "", "version": ""},
    })
    return path


# ----------------------------------------------------------------------------- conversions


@pytest.mark.parametrize(
    ("value", "unit", "expected_nm"),
    [
        (1.5, "nm", 1.5),
        (0.0025, "\u00b5m", 2.5),  # micro sign
        (0.0025, "\u03bcm", 2.5),  # Greek mu
        (0.0025, "um", 2.5),
        (0.0025, "micron", 2.5),
        (0.0025, "\\u00B5m", 2.5),  # ImageJ's literal escape
        (12.5, "\u00c5", 1.25),  # A with ring
        (12.5, "\u212b", 1.25),  # Angstrom sign
        (12.5, "A", 1.25),
        (350.0, "pm", 0.35),
        (3.5e-10, "m", 0.35),
        (1.0, "px", None),
        (1.0, "1/nm", None),
        (0.0, "nm", None),
        (-2.0, "nm", None),
        (float("nan"), "nm", None),
    ],
)
def test_length_to_nm(value, unit, expected_nm):
    got = length_to_nm(value, unit)
    if expected_nm is None:
        assert got is None
    else:
        assert got == pytest.approx(expected_nm, rel=1e-12)


@pytest.mark.parametrize(
    ("value", "unit", "expected_s"),
    [(0.5, "s", 0.5), (40, "ms", 0.04), (250, "\u00b5s", 2.5e-4), (2, "min", 120.0),
     (1, "frames", None), (0, "s", None)],
)
def test_time_to_s(value, unit, expected_s):
    got = time_to_s(value, unit)
    assert got == (None if expected_s is None else pytest.approx(expected_s))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_frame_dtypes_pass_through_unchanged(dtype):
    image = np.arange(12, dtype=dtype).reshape(3, 4)
    out = as_frame_image(image)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize(
    ("image", "expected_dtype"),
    [
        (np.array([[0, 1], [2, 65535]], dtype=np.int32), np.uint16),
        (np.array([[0, 1], [2, 300]], dtype=np.int16), np.uint16),
        (np.array([[0, -1], [2, 3]], dtype=np.int16), np.float32),
        (np.array([[0, 1], [2, 70000]], dtype=np.int64), np.float32),
        (np.array([[0.5, 1.25], [2.0, -3.0]], dtype=np.float64), np.float32),
        (np.array([[0.5, 1.25], [2.0, -3.0]], dtype=np.float16), np.float32),
        (np.array([[1, 2], [3, 4]], dtype=">u2"), np.uint16),  # big-endian TIFF data
    ],
)
def test_other_dtypes_are_converted_exactly(image, expected_dtype):
    out = as_frame_image(image)
    assert out.dtype == expected_dtype and out.dtype in FRAME_DTYPES
    np.testing.assert_array_equal(out.astype(np.float64), image.astype(np.float64))


def test_rgb_becomes_bt601_luminance_in_the_same_dtype():
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [100, 100, 100]]], dtype=np.uint8)
    # 0.299 R + 0.587 G + 0.114 B, rounded: 76.245, 149.685, 29.07, 100
    expected = np.array([[76, 150], [29, 100]], dtype=np.uint8)
    np.testing.assert_array_equal(as_frame_image(rgb), expected)
    rgba = np.concatenate([rgb, np.full((2, 2, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(as_frame_image(rgba), expected)  # alpha ignored
    np.testing.assert_array_equal(as_frame_image(rgb[..., ::-1], bgr=True), expected)
    planar = np.moveaxis(np.repeat(np.repeat(rgb, 3, 0), 3, 1), -1, 0)  # (3, 6, 6)
    assert as_frame_image(planar).shape == (6, 6)
    rgb16 = rgb.astype(np.uint16) * 257
    assert as_frame_image(rgb16).dtype == np.uint16
    assert as_frame_image(rgb16)[0, 0] == round(0.299 * 255 * 257)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((4, 4), dtype=bool), "boolean"),
        (np.zeros((4, 4), dtype=np.complex64), "complex"),
        (np.zeros((5, 6, 7), dtype=np.uint8), "2-D"),
        (np.zeros(7, dtype=np.uint8), "2-D"),
    ],
)
def test_unusable_images_are_rejected(image, match):
    with pytest.raises(InputError, match=match):
        as_frame_image(image)


def test_input_is_not_modified():
    image = np.array([[1.5, 2.5]], dtype=np.float64)
    before = image.copy()
    as_frame_image(image)
    np.testing.assert_array_equal(image, before)


# ----------------------------------------------------------------------------- TIFF


def test_imagej_hyperstack_calibration_and_frames(tmp_path):
    stack = _stack(8)
    path = tmp_path / "insitu.tif"
    # ImageJ: resolution in pixels per unit, unit micron, frame interval in s.
    tifffile.imwrite(path, stack, imagej=True, resolution=(1 / 0.0025, 1 / 0.0025),
                     metadata={"unit": "um", "finterval": 0.5, "axes": "TYX"})
    with open_movie(path) as movie:
        assert isinstance(movie, FrameSource)
        assert (movie.name, movie.n_frames, len(movie)) == ("insitu", 8, 8)
        assert movie.shape == (24, 40) and movie.dtype == np.uint16
        assert movie.pixel_size_nm == pytest.approx(2.5)
        assert movie.pixel_size_source == "metadata"
        assert movie.frame_interval_s == pytest.approx(0.5)
        frames = list(movie)
    assert [f.index for f in frames] == list(range(8))
    assert [f.timestamp_s for f in frames] == pytest.approx([0.5 * i for i in range(8)])
    assert all(f.series == "insitu" and f.pixel_size_nm == pytest.approx(2.5) for f in frames)
    assert all(f.received_s is not None for f in frames)
    np.testing.assert_array_equal(np.stack([f.image for f in frames]), stack)


def test_ome_tiff_physical_size_time_increment_and_plane_times(tmp_path):
    stack = _stack(5, dtype=np.float32)
    path = tmp_path / "series.ome.tif"
    delta_t = [0.0, 0.1, 0.25, 0.3, 0.5]  # irregular acquisition times
    tifffile.imwrite(path, stack, ome=True, metadata={
        "axes": "TYX", "PhysicalSizeX": 4.0, "PhysicalSizeXUnit": "\u00c5",
        "PhysicalSizeY": 4.0, "PhysicalSizeYUnit": "\u00c5", "TimeIncrement": 0.125,
        "TimeIncrementUnit": "s", "Plane": {"DeltaT": delta_t},
    })
    with open_movie(path) as movie:
        assert movie.name == "series"
        assert movie.pixel_size_nm == pytest.approx(0.4)
        assert movie.frame_interval_s == pytest.approx(0.125)
        frames = list(movie)
    assert [f.timestamp_s for f in frames] == pytest.approx(delta_t)
    np.testing.assert_array_equal(np.stack([f.image for f in frames]), stack)


def test_ome_tiff_default_unit_is_micrometre(tmp_path):
    path = tmp_path / "um.ome.tiff"
    tifffile.imwrite(path, _stack(3), ome=True, metadata={"axes": "TYX", "PhysicalSizeX": 0.002})
    with open_movie(path) as movie:
        assert movie.pixel_size_nm == pytest.approx(2.0)
        assert movie.frame_interval_s is None
        assert [f.timestamp_s for f in movie] == [0.0, 1.0, 2.0]


def test_simulator_json_description(tmp_path):
    path = tmp_path / "sim.tif"
    tifffile.imwrite(path, _stack(4), photometric="minisblack",
                     metadata={"pixel_size_nm": 0.8, "frame_interval_s": 0.2})
    with open_movie(path) as movie:
        assert movie.pixel_size_nm == pytest.approx(0.8)
        assert movie.frame_interval_s == pytest.approx(0.2)
        assert movie.read_frame(3).timestamp_s == pytest.approx(0.6)


def test_three_plane_tiff_marked_rgb_is_one_rgb_frame(tmp_path):
    # tifffile stores a (3, rows, cols) array as one planar RGB page unless told otherwise:
    # the file then really holds one RGB image, read as one gray frame.
    path = tmp_path / "rgb_planes.tif"
    stack = _stack(3, dtype=np.uint8)
    tifffile.imwrite(path, stack, photometric="rgb", planarconfig="separate")
    with open_movie(path) as movie:
        assert movie.n_frames == 1 and movie.shape == (24, 40)
        expected = np.rint(0.299 * stack[0] + 0.587 * stack[1] + 0.114 * stack[2])
        np.testing.assert_allclose(movie.read_frame(0).image, expected, atol=1)


def test_simulator_movie_and_labels_open(tmp_path):
    simulate = pytest.importorskip("etemlive.sources.simulate")
    config = simulate.SimulationConfig(scenario="ripening", seed=3, n_frames=3, size_px=64)
    paths = simulate.write_simulation(tmp_path / "sim.tif", config)
    for key in ("movie", "labels"):
        with open_movie(paths[key]) as movie:
            assert movie.n_frames == 3 and movie.shape == (64, 64)
            assert movie.pixel_size_nm == pytest.approx(config.pixel_size_nm)
            assert movie.frame_interval_s == pytest.approx(config.frame_interval_s)
            assert len(list(movie)) == 3


def test_json_timestamps_and_unreadable_metadata(tmp_path):
    path = tmp_path / "t.tif"
    times = [0.0, 0.4, 0.5, 1.5, 1.6]
    tifffile.imwrite(path, _stack(5), metadata={"pixel_size_nm": 0.5, "timestamps_s": times})
    with open_movie(path) as movie:
        assert [f.timestamp_s for f in movie] == times
        assert movie.open_warnings == []
    tifffile.imwrite(path, _stack(5), metadata={"pixel_size_nm": 0.5,
                                                "timestamps_s": ["a", "b", "c", "d", "e"]})
    with open_movie(path) as movie:  # bad calibration data never rejects readable pixels
        assert movie.n_frames == 5 and len(list(movie)) == 5
        assert any("metadata ignored" in w for w in movie.open_warnings)


def test_user_values_override_metadata(tmp_path):
    path = tmp_path / "sim.tif"
    tifffile.imwrite(path, _stack(4), photometric="minisblack",
                     metadata={"pixel_size_nm": 0.8, "frame_interval_s": 0.2})
    with open_movie(path, pixel_size_nm=1.7, frame_interval_s=2.0) as movie:
        assert (movie.pixel_size_nm, movie.pixel_size_source) == (1.7, "user")
        assert movie.frame_interval_s == 2.0
        frame = movie.read_frame(2)
    assert (frame.pixel_size_nm, frame.timestamp_s) == (1.7, 4.0)


def test_fei_sem_tiff_pixel_width(tmp_path):
    # The FEI_HELIOS tag (34682) holds an INI text; PixelWidth is in metres.
    ini = "[User]\nDate=01/01/2024\n[Scan]\nPixelWidth=2.5e-09\nPixelHeight=2.5e-09\n"
    path = tmp_path / "sem.tif"
    tifffile.imwrite(path, _stack(1)[0], extratags=[(34682, "s", 0, ini, True)])
    with open_movie(path) as movie:
        assert movie.pixel_size_nm == pytest.approx(2.5)
        assert movie.pixel_size_source == "metadata"


def test_uncalibrated_tiff_has_no_pixel_size_and_index_timestamps(tmp_path):
    path = tmp_path / "plain.tif"
    # 72 dpi is not a calibration; minisblack: 3 pages, not one planar RGB image.
    tifffile.imwrite(path, _stack(3), resolution=(72, 72), photometric="minisblack")
    with open_movie(path) as movie:
        assert movie.pixel_size_nm is None and movie.pixel_size_source is None
        assert movie.frame_interval_s is None
        assert [f.timestamp_s for f in movie] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_rgb_tiff_stack_becomes_gray(tmp_path, compression):
    rgb = np.zeros((3, 8, 10, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    rgb[1] //= 2
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", compression=compression)
    with open_movie(path) as movie:
        assert movie.shape == (8, 10) and movie.dtype == np.uint8
        images = _read_all(movie)
    expected = [round(0.299 * 200 + 0.587 * 100 + 0.114 * 50),
                round(0.299 * 100 + 0.587 * 50 + 0.114 * 25)]
    assert images[0, 0, 0] == expected[0] and images[1, 0, 0] == expected[1]


def test_single_page_tiff_is_a_one_frame_movie(tmp_path):
    path = tmp_path / "one.tiff"
    image = _stack(1)[0]
    tifffile.imwrite(path, image)
    with open_movie(path) as movie:
        assert movie.n_frames == 1
        np.testing.assert_array_equal(movie.read_frame(0).image, image)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_frames_stream_one_at_a_time(tmp_path, compression):
    """200 frames (25 MB) are read with the traced peak of a few frames, not the stack."""
    n, rows, cols = 200, 256, 256
    stack = np.random.default_rng(1).integers(0, 4096, (n, rows, cols), dtype=np.uint16)
    path = tmp_path / "long.tif"
    tifffile.imwrite(path, stack, compression=compression)
    frame_bytes = rows * cols * 2
    del stack
    checksum = 0
    tracemalloc.start()
    try:
        with open_movie(path) as movie:
            tracemalloc.reset_peak()
            for frame in movie:
                checksum += int(frame.image[0, 0])
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert movie.n_frames == n and not movie.failed_frames
    assert checksum > 0
    assert peak < 6 * frame_bytes, f"peak {peak / 1e6:.1f} MB for {frame_bytes / 1e6:.2f} MB frames"


@pytest.mark.parametrize("fmt", ["tif", "mrc", "ser", "dm3", "emd"])
def test_resident_memory_stays_flat_over_a_large_file(tmp_path, fmt):
    """Reading an 80 MB movie end to end grows RSS by far less than the file (no mmap)."""
    psutil = pytest.importorskip("psutil")
    n, side = 150, 512
    stack = np.random.default_rng(2).integers(0, 4096, (n, side, side), dtype=np.uint16)
    path = tmp_path / f"large.{fmt}"
    if fmt == "tif":
        tifffile.imwrite(path, stack)
    elif fmt == "mrc":
        mrcfile = pytest.importorskip("mrcfile")
        with mrcfile.new(path) as mrc:
            mrc.set_data(stack)
    elif fmt == "ser":
        write_ser(path, stack, pixel_size_m=1e-9)
    elif fmt == "dm3":
        write_dm3(path, stack, scale=1.0, units="nm")
    else:
        write_velox_emd(path, stack, pixel_size_m=1e-9, frame_time_s=1.0)
    del stack
    process = psutil.Process()
    with open_movie(path) as movie:
        before = process.memory_info().rss
        count = sum(1 for _ in movie)
        grown = process.memory_info().rss - before
    assert count == n
    assert grown < 16e6, f"RSS grew {grown / 1e6:.0f} MB reading a {path.stat().st_size / 1e6:.0f} MB file"


def test_read_frame_random_access_and_bounds(tmp_path):
    stack = _stack(6)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack, compression="zlib")
    with open_movie(path) as movie:
        for i in (5, 0, 3, 0):
            assert movie.read_frame(i).image[0, 0] == i
        with pytest.raises(IndexError):
            movie.read_frame(6)
    with pytest.raises(InputError, match="closed"):
        movie.read_frame(1)


def test_unknown_extension_is_sniffed_from_magic_bytes(tmp_path):
    path = tmp_path / "export.dat"
    tifffile.imwrite(path, _stack(2))
    with open_movie(path) as movie:
        assert movie.format == "tiff" and movie.n_frames == 2


# ----------------------------------------------------------------------------- MRC


def test_mrc_stack_with_voxel_size(tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    stack = _stack(5, dtype=np.float32)
    path = tmp_path / "movie.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(stack)
        mrc.voxel_size = 12.5  # Å
    with open_movie(path) as movie:
        assert movie.format == "mrc" and movie.n_frames == 5
        assert movie.pixel_size_nm == pytest.approx(1.25)
        assert movie.dtype == np.float32
        np.testing.assert_array_equal(_read_all(movie), stack)


def test_mrc_int16_counts_become_uint16_and_unset_voxel_is_none(tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    stack = _stack(3, dtype=np.int16)
    path = tmp_path / "counts.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(stack)
    with open_movie(path) as movie:
        assert movie.pixel_size_nm is None
        assert movie.dtype == np.uint16
        np.testing.assert_array_equal(_read_all(movie), stack.astype(np.uint16))


# ----------------------------------------------------------------------------- video


def _write_video(path: Path, fourcc: str, levels: list[int], fps: float = 20.0) -> None:
    cv2 = pytest.importorskip("cv2")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (64, 48))
    if not writer.isOpened():
        pytest.skip(f"OpenCV here cannot encode {fourcc}")
    for level in levels:
        bgr = np.zeros((48, 64, 3), dtype=np.uint8)
        bgr[..., 0], bgr[..., 1], bgr[..., 2] = level // 2, level, 255 - level  # B, G, R
        writer.write(bgr)
    writer.release()


@pytest.mark.parametrize(("fourcc", "suffix"), [("mp4v", ".mp4"), ("MJPG", ".avi")])
def test_video_frames_gray_and_fps(tmp_path, fourcc, suffix):
    levels = list(range(0, 240, 16))  # 15 frames
    path = tmp_path / f"clip{suffix}"
    _write_video(path, fourcc, levels, fps=25.0)
    with open_movie(path) as movie:
        assert movie.format == "video" and movie.n_frames == len(levels)
        assert movie.frame_interval_s == pytest.approx(0.04)
        assert movie.dtype == np.uint8 and movie.shape == (48, 64)
        frames = list(movie)
        assert not movie.failed_frames
    expected = [0.299 * (255 - v) + 0.587 * v + 0.114 * (v // 2) for v in levels]
    means = [float(f.image.mean()) for f in frames]
    assert means == pytest.approx(expected, abs=4.0)  # lossy codecs
    assert [f.timestamp_s for f in frames] == pytest.approx([0.04 * i for i in range(15)])


def test_video_random_access_seeks(tmp_path):
    levels = list(range(0, 240, 16))
    path = tmp_path / "clip.avi"
    _write_video(path, "MJPG", levels)
    with open_movie(path) as movie:
        first = [float(movie.read_frame(i).image.mean()) for i in (9, 2)]
    assert first[0] > first[1] + 20  # frame 9 is much brighter than frame 2


def test_truncated_video_reads_what_it_can(tmp_path):
    path = tmp_path / "clip.avi"
    levels = list(range(0, 240, 8))  # 30 frames
    cv2 = pytest.importorskip("cv2")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (64, 48))
    if not writer.isOpened():
        pytest.skip("OpenCV here cannot encode MJPG")
    for level in levels:
        writer.write(np.full((48, 64, 3), level, np.uint8))
    writer.release()
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    try:
        movie = open_movie(cut)
    except InputError as err:  # the container index was lost: a clean one-line error
        assert "\n" not in str(err)
        return
    with movie:
        frames = list(movie)
    assert 0 < len(frames) < 30 or movie.n_frames < 30
    assert len(frames) + len(movie.failed_frames) == movie.n_frames
    for frame in frames:  # what was decoded is the right frame (level 8 * index)
        assert abs(float(frame.image.mean()) - 8 * frame.index) < 4


# ----------------------------------------------------------------------------- image folders


def test_image_folder_in_natural_order(tmp_path):
    cv2 = pytest.importorskip("cv2")
    for i in range(1, 13):
        cv2.imwrite(str(tmp_path / f"frame_{i}.png"), np.full((10, 14), i * 10, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    with open_movie(tmp_path) as movie:
        assert movie.format == "images" and movie.n_frames == 12
        assert movie.name == tmp_path.name
        values = [int(f.image[0, 0]) for f in movie]
    assert values == [i * 10 for i in range(1, 13)]  # frame_2 before frame_10


def test_image_folder_bad_files_are_counted_and_skipped(tmp_path):
    cv2 = pytest.importorskip("cv2")
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"img{i:03d}.png"), np.full((10, 14, 3), 50 * i, np.uint8))
    (tmp_path / "img001.png").write_bytes(b"\x89PNG garbage")
    cv2.imwrite(str(tmp_path / "img003.png"), np.zeros((12, 14), np.uint8))  # wrong size
    with open_movie(tmp_path) as movie:
        values = [(f.index, int(f.image[0, 0])) for f in movie]
        failed = dict(movie.failed_frames)
    assert values == [(0, 0), (2, 100)]
    assert set(failed) == {1, 3}
    assert "frame 1" in failed[1] and "img001.png" in failed[1]
    assert "frame 3" in failed[3] and "shape" in failed[3]


def test_folder_of_tiffs_and_jpegs(tmp_path):
    cv2 = pytest.importorskip("cv2")
    tifffile.imwrite(tmp_path / "t1.tif", np.full((6, 8), 1000, np.uint16),
                     imagej=True, resolution=(2.0, 2.0), metadata={"unit": "nm"})
    tifffile.imwrite(tmp_path / "t2.tif", np.full((6, 8), 2000, np.uint16))
    with open_movie(tmp_path) as movie:
        assert movie.dtype == np.uint16
        assert movie.pixel_size_nm == pytest.approx(0.5)  # from the first TIFF
        assert [int(f.image[0, 0]) for f in movie] == [1000, 2000]
    jpg = tmp_path / "one.jpg"
    cv2.imwrite(str(jpg), np.full((6, 8, 3), 120, np.uint8))
    with open_movie(jpg) as movie:
        assert movie.n_frames == 1 and abs(int(movie.read_frame(0).image[0, 0]) - 120) <= 2


def test_gatan_insitu_folder_tree_of_dm_files(tmp_path):
    # Gatan's in-situ recorder: one dm file per frame in Hour/Minute/Second folders.
    stack = _stack(12, rows=8, cols=10)
    for i in range(12):
        folder = tmp_path / "Hour_00" / f"Minute_{i // 6:02d}" / f"Second_{i % 6:02d}"
        folder.mkdir(parents=True)
        write_dm3(folder / f"insitu_{i}.dm3", stack[i], scale=0.3, units="nm")
    with open_movie(tmp_path) as movie:
        assert movie.n_frames == 12 and movie.shape == (8, 10)
        assert movie.pixel_size_nm == pytest.approx(0.3, rel=1e-6)
        np.testing.assert_array_equal(_read_all(movie), stack)


def test_big_endian_tiff(tmp_path):
    stack = _stack(5)
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, stack, byteorder=">")
    with open_movie(path) as movie:
        images = _read_all(movie)
    assert images.dtype == np.uint16 and images.dtype.isnative
    np.testing.assert_array_equal(images, stack)


# ----------------------------------------------------------------------------- real data


def test_real_gatan_dm4(shared_data):
    path = shared_data / "particlespy" / "JEOL HAADF Image.dm4"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    from rsciio.digitalmicrograph import file_reader

    reference = file_reader(str(path))[0]["data"]
    with open_movie(path) as movie:
        assert movie.format == "dm" and movie.n_frames == 1
        assert movie._direct is not None
        assert movie.shape == (112, 112)
        assert movie.pixel_size_nm == pytest.approx(1.249, abs=5e-4)
        assert movie.pixel_size_source == "metadata"
        np.testing.assert_array_equal(movie.read_frame(0).image, reference)


def test_real_hyperspy_hspy(shared_data):
    path = shared_data / "particlespy" / "SiO2 HAADF Image.hspy"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open_movie(path) as movie:
        assert movie.format == "hspy" and movie.shape == (128, 128)
        assert movie.pixel_size_nm == pytest.approx(8.55, abs=5e-3)
        image = movie.read_frame(0).image
    assert image.dtype == np.float32 and np.isfinite(image).all() and image.std() > 0


def test_hspy_stack_written_by_rosettasciio(tmp_path):
    stack = _stack(4)
    axes = [
        {"name": "time", "size": 4, "scale": 0.25, "offset": 0.0, "units": "s", "navigate": True},
        {"name": "y", "size": 24, "scale": 0.0015, "offset": 0.0, "units": "µm",
         "navigate": False},
        {"name": "x", "size": 40, "scale": 0.0015, "offset": 0.0, "units": "µm",
         "navigate": False},
    ]
    path = _write_hspy(tmp_path / "stack.hspy", stack, axes)
    with open_movie(path) as movie:
        assert movie.n_frames == 4
        assert movie._direct is not None  # frames sliced from HDF5, not through dask
        assert movie.pixel_size_nm == pytest.approx(1.5)
        assert movie.frame_interval_s == pytest.approx(0.25)
        np.testing.assert_array_equal(_read_all(movie), stack)


# ----------------------------------------------------------------------------- written per spec


def test_velox_emd(tmp_path):
    from rsciio.emd import file_reader

    stack = _stack(5)
    path = write_velox_emd(tmp_path / "velox.emd", stack, pixel_size_m=0.35e-9, frame_time_s=0.5)
    reference = file_reader(str(path))[0]  # the independent reader agrees with our writer
    np.testing.assert_array_equal(reference["data"], stack)
    with open_movie(path) as movie:
        assert movie.format == "emd" and movie.n_frames == 5
        assert movie._direct is not None  # frames sliced from HDF5, not through dask
        assert movie.pixel_size_nm == pytest.approx(0.35)
        assert movie.frame_interval_s == pytest.approx(0.5)
        np.testing.assert_array_equal(_read_all(movie), stack)


def test_ncem_emd_written_by_rosettasciio(tmp_path):
    # Berkeley EMD (NCEM) marks no navigation axis: the leading axis is the frame axis.
    from rsciio.emd import file_writer

    stack = _stack(5)
    axes = [{"name": n, "size": k, "scale": sc, "offset": 0.0, "units": u, "navigate": False}
            for n, k, sc, u in (("t", 5, 0.2, "s"), ("y", 24, 5.0, "Å"),
                                ("x", 40, 5.0, "Å"))]
    path = tmp_path / "ncem.emd"
    file_writer(str(path), {"data": stack, "axes": axes, "attributes": {"_lazy": False},
                            "metadata": {"General": {"title": "ncem"}, "Signal": {}},
                            "original_metadata": {}})
    with open_movie(path) as movie:
        assert movie.n_frames == 5 and movie.shape == (24, 40)
        assert movie.pixel_size_nm == pytest.approx(0.5)
        assert movie.frame_interval_s == pytest.approx(0.2)
        np.testing.assert_array_equal(_read_all(movie), stack)


@pytest.mark.parametrize("fmt", ["emd", "hspy"])
def test_hdf5_file_is_released_on_close(tmp_path, fmt):
    h5py = pytest.importorskip("h5py")
    if fmt == "emd":
        path = write_velox_emd(tmp_path / "v.emd", _stack(2), pixel_size_m=1e-9, frame_time_s=1)
    else:
        axes = [{"name": n, "size": k, "scale": 1.0, "offset": 0.0, "units": "nm",
                 "navigate": n == "t"} for n, k in (("t", 2), ("y", 24), ("x", 40))]
        path = _write_hspy(tmp_path / "h.hspy", _stack(2), axes)
    movie = open_movie(path)
    with pytest.raises(OSError):
        h5py.File(path, "a")  # HDF5 refuses read-write while our read-only handle is open
    movie.close()
    h5py.File(path, "a").close()


def test_fei_ser_series(tmp_path):
    from rsciio.tia import file_reader

    stack = _stack(6, rows=32, cols=32)
    path = write_ser(tmp_path / "series_1.ser", stack, pixel_size_m=0.2e-9, frame_interval_s=0.1)
    reference = file_reader(str(path))[0]
    np.testing.assert_array_equal(reference["data"], stack)
    assert reference["axes"][-1]["scale"] == pytest.approx(0.2)  # nm
    with open_movie(path) as movie:
        assert movie.format == "ser" and movie.n_frames == 6
        assert movie.pixel_size_nm == pytest.approx(0.2)
        assert movie.frame_interval_s == pytest.approx(0.1)
        np.testing.assert_array_equal(_read_all(movie), stack)


def test_fei_emi_opens_its_first_ser(tmp_path):
    stack = _stack(3, rows=16, cols=16)
    write_ser(tmp_path / "acq_1.ser", stack, pixel_size_m=0.5e-9)
    write_ser(tmp_path / "acq_2.ser", stack[:1], pixel_size_m=2e-9)
    emi = tmp_path / "acq.emi"
    emi.write_bytes(b"<ObjectInfo></ObjectInfo>")
    with open_movie(emi) as movie:
        assert movie.n_frames == 3 and movie.pixel_size_nm == pytest.approx(0.5)
        np.testing.assert_array_equal(_read_all(movie), stack)
    (tmp_path / "acq_1.ser").unlink()
    (tmp_path / "acq_2.ser").unlink()
    with pytest.raises(InputError, match="acq_1.ser is missing") as err:
        open_movie(emi)
    _one_line(err)


def test_fei_ser_non_square_float_and_valid_count(tmp_path):
    stack = _stack(5, rows=20, cols=36, dtype=np.float32)
    path = write_ser(tmp_path / "s.ser", stack, pixel_size_m=1e-9, valid_frames=3)
    with open_movie(path) as movie:
        assert movie.n_frames == 3  # acquisition stopped early: only valid elements
        assert movie.frame_interval_s is None
        np.testing.assert_array_equal(_read_all(movie), stack[:3])


def test_truncated_ser_fails_only_the_cut_frames(tmp_path):
    stack = _stack(4, rows=32, cols=32)
    path = write_ser(tmp_path / "s.ser", stack, pixel_size_m=1e-9)
    data = bytearray(path.read_bytes())
    # Zero the offset of frame 3 to a position past the end: a corrupt offset array.
    table = int.from_bytes(data[22:30], "little")
    data[table + 3 * 8: table + 4 * 8] = (len(data) + 100).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with open_movie(path) as movie:
        frames = list(movie)
        assert [f.index for f in frames] == [0, 1, 2]
        assert movie.failed_frames[0][0] == 3 and "frame 3" in movie.failed_frames[0][1]
        with pytest.raises(InputError, match="frame 3"):
            movie.read_frame(3)


@pytest.mark.parametrize("desc_len", [-1, 2**31 - 1])
def test_ser_with_corrupt_length_field_is_rejected_quickly(tmp_path, desc_len):
    path = write_ser(tmp_path / "s.ser", _stack(3, rows=16, cols=16), pixel_size_m=1e-9)
    data = bytearray(path.read_bytes())
    data[34 + 24: 34 + 28] = desc_len.to_bytes(4, "little", signed=True)  # DescriptionLength
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt FEI .ser header") as err:
        open_movie(path)
    _one_line(err)


@pytest.mark.parametrize(
    ("units", "scale", "expected_nm"), [("nm", 0.5, 0.5), ("\u00c5", 2.5, 0.25),
                                        ("\u00b5m", 0.004, 4.0), ("pm", 50.0, 0.05)],
)
def test_gatan_dm3_stack(tmp_path, units, scale, expected_nm):
    from rsciio.digitalmicrograph import file_reader

    stack = _stack(5)
    path = write_dm3(tmp_path / "stack.dm3", stack, scale=scale, units=units,
                     frame_scale=0.25, frame_units="s")
    np.testing.assert_array_equal(file_reader(str(path))[0]["data"], stack)
    with open_movie(path) as movie:
        assert movie.format == "dm" and movie.n_frames == 5
        assert movie._direct is not None  # plain reads at the pixel-data offset
        assert movie.pixel_size_nm == pytest.approx(expected_nm, rel=1e-6)  # float32 tags
        assert movie.frame_interval_s == pytest.approx(0.25)
        np.testing.assert_array_equal(_read_all(movie), stack)


def test_gatan_dm3_single_float_image(tmp_path):
    image = np.random.default_rng(3).random((30, 20)).astype(np.float32)
    path = write_dm3(tmp_path / "one.dm3", image, scale=1.5, units="nm")
    with open_movie(path) as movie:
        assert movie.n_frames == 1 and movie.shape == (30, 20)
        np.testing.assert_array_equal(movie.read_frame(0).image, image)


# ----------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        open_movie(tmp_path / "nope.tif")
    _one_line(err)


def test_unknown_format_lists_supported(tmp_path):
    path = tmp_path / "notes.xyz"
    path.write_text("hello")
    with pytest.raises(InputError, match=r"unknown movie format '\.xyz'.*\.dm4") as err:
        open_movie(path)
    _one_line(err)


def test_garbage_with_tif_extension(tmp_path):
    path = tmp_path / "garbage.tif"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError, match="not a readable TIFF") as err:
        open_movie(path)
    _one_line(err)


@pytest.mark.parametrize("imagej", [False, True])
def test_truncated_tiff_keeps_complete_frames(tmp_path, imagej):
    stack = _stack(10)
    path = tmp_path / "cut.tif"
    if imagej:
        tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "TYX"})
    else:
        tifffile.imwrite(path, stack, metadata={"pixel_size_nm": 1.0})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    with open_movie(path) as movie:
        assert movie.n_frames == 10
        frames = list(movie)
        failed = [i for i, _ in movie.failed_frames]
        with pytest.raises(InputError, match=f"frame {failed[0]}") as err:
            movie.read_frame(failed[0])
        _one_line(err)
    assert frames and failed and [f.index for f in frames] + failed == list(range(10))
    np.testing.assert_array_equal(np.stack([f.image for f in frames]), stack[: len(frames)])


def test_tiff_cut_inside_the_first_frame(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, _stack(10), metadata={"pixel_size_nm": 1.0})
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(InputError, match="truncated") as err:
        open_movie(path)
    _one_line(err)


@pytest.mark.parametrize("bad", [0, 2])
def test_compressed_tiff_with_corrupt_page(tmp_path, bad):
    stack = _stack(5)
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, stack, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[bad].dataoffsets[0], tif.pages[bad].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset: offset + count] = bytes(count)  # zero the compressed bytes of one frame
    path.write_bytes(bytes(data))
    with open_movie(path) as movie:  # a bad frame 0 alone does not reject the movie
        assert movie.shape == (24, 40)
        frames = list(movie)
        assert [f.index for f in frames] == [i for i in range(5) if i != bad]
        assert [i for i, _ in movie.failed_frames] == [bad]
        assert f"frame {bad}" in movie.failed_frames[0][1]
    np.testing.assert_array_equal(frames[-1].image, stack[4])


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="holds no images") as err:
        open_movie(tmp_path)
    _one_line(err)


def test_empty_stack(tmp_path):
    path = tmp_path / "empty.ser"
    write_ser(path, _stack(2, rows=8, cols=8), pixel_size_m=1e-9, valid_frames=0)
    with pytest.raises(InputError, match="empty") as err:
        open_movie(path)
    _one_line(err)


def test_four_d_tiff(tmp_path):
    path = tmp_path / "tz.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 8, 8), np.uint8), imagej=True,
                     metadata={"axes": "TZYX"})
    with pytest.raises(InputError, match="4-D") as err:
        open_movie(path)
    _one_line(err)


def test_four_d_mrc(tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    path = tmp_path / "4d.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match="4-D") as err:
        open_movie(path)
    _one_line(err)


def test_four_d_stem_hspy(tmp_path):
    axes = [{"name": n, "size": k, "scale": 1.0, "offset": 0.0, "units": "nm", "navigate": nav}
            for n, k, nav in (("sy", 3, True), ("sx", 4, True), ("ky", 8, False),
                              ("kx", 8, False))]
    path = _write_hspy(tmp_path / "4dstem.hspy", np.zeros((3, 4, 8, 8), np.uint16), axes)
    with pytest.raises(InputError, match="4D-STEM") as err:
        open_movie(path)
    _one_line(err)


def test_spectrum_image_is_not_a_movie(tmp_path):
    axes = [{"name": "y", "size": 4, "scale": 1.0, "offset": 0.0, "units": "nm", "navigate": True},
            {"name": "x", "size": 5, "scale": 1.0, "offset": 0.0, "units": "nm", "navigate": True},
            {"name": "E", "size": 16, "scale": 0.01, "offset": 0.0, "units": "keV",
             "navigate": False}]
    path = _write_hspy(tmp_path / "eds.hspy", np.zeros((4, 5, 16), np.float32), axes)
    with pytest.raises(InputError, match="no 2-D images") as err:
        open_movie(path)
    _one_line(err)


def test_truncated_mrc_keeps_complete_frames(tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    stack = _stack(4, dtype=np.float32)  # 3840 bytes per frame
    path = tmp_path / "cut.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(stack)
        mrc.voxel_size = 10.0
    data = path.read_bytes()
    path.write_bytes(data[:-500])
    with open_movie(path) as movie:
        assert movie.n_frames == 4 and movie.pixel_size_nm == pytest.approx(1.0)
        np.testing.assert_array_equal(_read_all(movie), stack[:3])
        assert [i for i, _ in movie.failed_frames] == [3]
    path.write_bytes(data[:1024 + 100])  # header plus part of frame 0
    with pytest.raises(InputError, match="MRC") as err:
        open_movie(path)
    _one_line(err)


def test_garbage_dm4_and_emd(tmp_path):
    for name in ("bad.dm4", "bad.emd", "bad.ser", "bad.hspy", "bad.mrc"):
        path = tmp_path / name
        path.write_bytes(b"\x00\x01garbage" * 50)
        with pytest.raises(InputError) as err:
            open_movie(path)
        assert name in _one_line(err)


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -1.0, float("inf"), "abc"])
def test_bad_user_pixel_size_is_a_calibration_error(tmp_path, bad):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, _stack(2))
    with pytest.raises(CalibrationError, match="pixel size") as err:
        open_movie(path, pixel_size_nm=bad)
    _one_line(err)


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -0.5])
def test_bad_user_frame_interval(tmp_path, bad):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, _stack(2))
    with pytest.raises(InputError, match="frame interval"):
        open_movie(path, frame_interval_s=bad)


def test_supported_extensions_cover_the_formats():
    for ext in (".tif", ".tiff", ".ome.tif", ".dm3", ".dm4", ".emd", ".ser", ".emi", ".mrc",
                ".hspy",
                ".mp4", ".avi", ".png", ".jpg"):
        assert ext in SUPPORTED_EXTENSIONS
    assert all(ext.startswith(".") and ext == ext.lower() for ext in SUPPORTED_EXTENSIONS)


def _damage_writers() -> dict[str, object]:
    import cv2
    import mrcfile

    def mrc(path: Path, stack: np.ndarray) -> None:
        with mrcfile.new(path) as f:
            f.set_data(stack)

    def avi(path: Path, stack: np.ndarray) -> None:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 32),
                                 isColor=False)
        for frame in stack:
            writer.write((frame >> 4).astype(np.uint8))
        writer.release()

    axes = [{"name": n, "size": k, "scale": 1.0, "offset": 0.0, "units": u, "navigate": nav}
            for n, k, u, nav in (("t", 6, "s", True), ("y", 32, "nm", False),
                                 ("x", 32, "nm", False))]
    return {
        "x.tif": lambda p, s: tifffile.imwrite(p, s, photometric="minisblack"),
        "x.ome.tif": lambda p, s: tifffile.imwrite(p, s, ome=True, metadata={"axes": "TYX"}),
        "z.tif": lambda p, s: tifffile.imwrite(p, s, compression="zlib",
                                               photometric="minisblack"),
        "x.mrc": mrc,
        "x.ser": lambda p, s: write_ser(p, s, pixel_size_m=1e-9),
        "x.dm3": lambda p, s: write_dm3(p, s, scale=1.0, units="nm"),
        "x.emd": lambda p, s: write_velox_emd(p, s, pixel_size_m=1e-9, frame_time_s=1.0),
        "x.hspy": lambda p, s: _write_hspy(p, s, axes, chunks=(1, 32, 32)),
        "x.avi": avi,
    }


@pytest.mark.parametrize("name", ["x.tif", "x.ome.tif", "z.tif", "x.mrc", "x.ser", "x.dm3",
                                  "x.emd", "x.hspy", "x.avi"])
def test_damaged_files_raise_input_error_or_read(tmp_path, name):
    """Cut or bit-flipped copies either open (bad frames listed) or raise InputError."""
    stack = _stack(6, rows=32, cols=32)
    good = tmp_path / name
    _damage_writers()[name](good, stack)
    data = good.read_bytes()
    rng = np.random.default_rng(7)
    variants = [data[: int(len(data) * f)] for f in np.linspace(0.0, 0.95, 12)]
    for _ in range(12):
        flipped = np.frombuffer(data, np.uint8).copy()
        flipped[rng.integers(0, flipped.size, 8)] = rng.integers(0, 256, 8)
        variants.append(flipped.tobytes())
    damaged = tmp_path / f"damaged_{name}"
    opened = 0
    for variant in variants:
        damaged.write_bytes(variant)
        try:
            with open_movie(damaged) as movie:
                frames = list(movie)
                opened += 1
                assert len(frames) + len(movie.failed_frames) == movie.n_frames
                assert all(f.image.shape == movie.shape for f in frames)
        except InputError as err:
            assert "\n" not in str(err) and str(err)
    assert opened >= 1  # bit flips in pixel data leave a readable file
