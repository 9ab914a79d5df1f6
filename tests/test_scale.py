"""Tests of etemlive.scale: scale-bar detection, label reading, pixel-size resolution."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from etemlive.errors import CalibrationError, InputError
from etemlive.scale import (
    detect_scale_bar,
    draw_scale_bar,
    parse_scale_label,
    remove_scale_bar,
    resolve_pixel_size,
    scale_bar_mask,
    tesseract_available,
)

needs_tesseract = pytest.mark.skipif(
    not tesseract_available(),
    reason="tesseract binary not installed (apt-get install tesseract-ocr)",
)


def background(seed: int, shape=(480, 600)) -> np.ndarray:
    """A TEM-like uint8 image: smooth texture, gray blobs (particles), noise; no bar."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.normal(120, 25, shape).astype(np.float32), (0, 0), 3)
    for _ in range(30):
        center = (int(rng.integers(0, shape[1])), int(rng.integers(0, shape[0])))
        cv2.circle(img, center, int(rng.integers(4, 15)), float(rng.uniform(40, 200)), -1)
    return np.clip(img + rng.normal(0, 8, shape), 25, 230).astype(np.uint8)


@pytest.mark.parametrize(("text", "nm"), [
    ("20 nm", 20.0), ("0.2 um", 200.0), ("0.2 µm", 200.0), ("0.2 μm", 200.0), ("500 pm", 0.5),
    ("2 Å", 0.2), ("50nm", 50.0), ("1,5 um", 1500.0), ("l00 nm", 100.0), ("O.5 um", 500.0),
    ("Scale: 100.nm", 100.0), ("", None), (None, None), ("nm", None), ("2 a", None),
    ("0 nm", None),
])
def test_parse_scale_label(text, nm):
    assert parse_scale_label(text) == (pytest.approx(nm) if nm is not None else None)


FONTS = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_PLAIN,
         cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX]


@pytest.mark.parametrize("case", range(10))
def test_bar_length_found_exactly(case):
    rng = np.random.default_rng(case)
    length = int(rng.integers(50, 260))
    img = draw_scale_bar(
        background(case), length_px=length, text="20 nm", font=FONTS[case % 5],
        font_scale=[0.6, 1.0, 1.4][case % 3], thickness=1 + case % 2, bright=case % 2 == 0,
        box=case % 4 < 2, corner=["br", "bl", "tr", "tl"][case % 4],
        bar_height_px=int(rng.integers(2, 10)),
    )
    bar = detect_scale_bar(img, ocr=False)
    assert bar is not None
    assert bar.length_px == length
    assert bar.polarity == ("bright" if case % 2 == 0 else "dark")
    assert bar.label_bbox is not None and bar.label_text is None
    # the user's --scale-bar-nm gives the pixel size
    assert bar.pixel_size_nm(20.0) == pytest.approx(20.0 / length, rel=0.02)
    assert bar.pixel_size_nm() is None  # label not read (ocr=False)
    assert 0 < bar.confidence <= 1


def test_bar_survives_jpeg_and_other_dtypes():
    img = draw_scale_bar(background(3), length_px=150, text="50 nm", bright=True)
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    jpeg = cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE)
    assert detect_scale_bar(jpeg, ocr=False).length_px == pytest.approx(150, abs=1)
    as16 = img.astype(np.uint16) * 257
    assert detect_scale_bar(as16, ocr=False).length_px == 150
    asf = img.astype(np.float32) / 255
    rgb = np.repeat(img[:, :, None], 3, axis=2)
    assert detect_scale_bar(asf, ocr=False).length_px == 150
    assert detect_scale_bar(rgb, ocr=False).length_px == 150


@pytest.mark.parametrize("seed", range(4))
def test_no_bar_no_detection(seed):
    assert detect_scale_bar(background(seed)) is None


def test_flat_image_and_bad_shapes():
    assert detect_scale_bar(np.full((64, 64), 7, np.uint8)) is None
    with pytest.raises(InputError, match="2-D gray image"):
        detect_scale_bar(np.zeros(10))


@needs_tesseract
@pytest.mark.parametrize(("text", "font", "scale", "bright", "box"), [
    ("20 nm", cv2.FONT_HERSHEY_SIMPLEX, 0.8, True, False),
    ("0.2 um", cv2.FONT_HERSHEY_DUPLEX, 1.0, False, False),
    ("50 nm", cv2.FONT_HERSHEY_PLAIN, 1.5, True, True),
    ("500 pm", cv2.FONT_HERSHEY_COMPLEX, 0.7, False, True),
    ("100 nm", cv2.FONT_HERSHEY_TRIPLEX, 1.2, True, False),
])
def test_label_read_by_ocr_gives_pixel_size_within_2_percent(text, font, scale, bright, box):
    length = 180
    img = draw_scale_bar(background(11), length_px=length, text=text, font=font,
                         font_scale=scale, thickness=2 if scale >= 1 else 1, bright=bright, box=box)
    bar = detect_scale_bar(img)
    truth_nm = parse_scale_label(text)
    assert bar.label_nm == pytest.approx(truth_nm)
    assert bar.pixel_size_nm() == pytest.approx(truth_nm / length, rel=0.02)
    px, source = resolve_pixel_size(metadata_nm=None, user_nm=None, image=img)
    assert source == "scale bar" and px == pytest.approx(truth_nm / length, rel=0.02)


def test_mask_covers_bar_and_label_only():
    img = draw_scale_bar(background(5), length_px=120, text="20 nm", bright=False, box=True)
    bar = detect_scale_bar(img, ocr=False)
    mask = scale_bar_mask(img, bar, margin_px=2)
    assert mask.shape == img.shape and mask.dtype == bool
    r0, c0, r1, c1 = bar.bar_bbox
    assert mask[r0:r1, c0:c1].all()
    lr0, lc0, lr1, lc1 = bar.label_bbox
    assert mask[lr0:lr1, lc0:lc1].all()
    assert mask.mean() < 0.06  # only the corner (bar, label, box)
    assert not scale_bar_mask(img, None).any()
    cleaned = remove_scale_bar(img, bar, margin_px=2)
    assert detect_scale_bar(cleaned, ocr=False) is None
    np.testing.assert_array_equal(cleaned[~mask], img[~mask])  # the rest untouched


def test_resolve_pixel_size_priority_and_errors():
    img = draw_scale_bar(background(2), length_px=200, text="100 nm", bright=True)
    assert resolve_pixel_size(metadata_nm=0.3, user_nm=0.5, image=img) == (0.5, "user")
    assert resolve_pixel_size(metadata_nm=0.3, user_nm=None, image=img) == (0.3, "metadata")
    px, src = resolve_pixel_size(metadata_nm=None, user_nm=None, image=img, scale_bar_nm=100.0)
    assert src == "scale bar" and px == pytest.approx(0.5)
    # metadata that is zero / NaN falls back to the bar
    px, src = resolve_pixel_size(metadata_nm=float("nan"), user_nm=None, image=img,
                                 scale_bar_nm=50.0)
    assert src == "scale bar" and px == pytest.approx(0.25)
    with pytest.raises(CalibrationError, match=r"no pixel size: pass --pixel-size-nm X or --scale-bar-nm L"):
        resolve_pixel_size(metadata_nm=None, user_nm=None, image=background(0))
    with pytest.raises(CalibrationError, match="no pixel size"):
        resolve_pixel_size(metadata_nm=None, user_nm=None)
    with pytest.raises(CalibrationError, match="no scale bar found"):
        resolve_pixel_size(metadata_nm=None, user_nm=None, image=background(0), scale_bar_nm=20)
    with pytest.raises(CalibrationError, match="--pixel-size-nm"):
        resolve_pixel_size(metadata_nm=None, user_nm=-1.0)
    with pytest.raises(CalibrationError, match="--scale-bar-nm"):
        resolve_pixel_size(metadata_nm=None, user_nm=None, image=img, scale_bar_nm=0.0)


def test_unreadable_label_asks_for_scale_bar_nm(monkeypatch):
    # OCR unavailable (PATH without tesseract): the bar is found but its length is unknown
    monkeypatch.setenv("PATH", "/nonexistent")
    img = draw_scale_bar(background(4), length_px=100, text="20 nm")
    bar = detect_scale_bar(img)
    assert bar is not None and bar.label_text is None and bar.label_nm is None
    with pytest.raises(CalibrationError, match="could not read its label: pass --scale-bar-nm"):
        resolve_pixel_size(metadata_nm=None, user_nm=None, image=img)


@pytest.mark.parametrize("bright", [True, False])
def test_bar_with_end_caps(bright):
    # many microscopes draw the bar with vertical end caps: the length is cap to cap
    img = background(5)
    v = 255 if bright else 0
    x0, x1, y = 400, 549, 440
    cv2.rectangle(img, (x0, y), (x1, y + 3), v, -1)
    cv2.rectangle(img, (x0, y - 8), (x0 + 2, y + 11), v, -1)
    cv2.rectangle(img, (x1 - 2, y - 8), (x1, y + 11), v, -1)
    cv2.putText(img, "100 nm", (430, y - 14), cv2.FONT_HERSHEY_SIMPLEX, 0.7, v, 2, cv2.LINE_AA)
    bar = detect_scale_bar(img, ocr=False)
    assert bar.length_px == x1 - x0 + 1
    assert bar.label_bbox is not None and bar.label_bbox[2] <= y
