"""Pixel size: the user's value, else the file's metadata, else a scale bar in the image.

Images without calibration (journal figures, screenshots, exported JPEGs) often carry
a burned-in scale bar: a long, thin, uniform horizontal bar, white or black, usually
near a corner, with a label such as "20 nm" or "0.2 um" beside it.
:func:`detect_scale_bar` finds it with vectorized morphology and connected components
(an opening with a long horizontal line keeps only long horizontal runs; the end ticks
and the text disappear), then finds the label beside it and reads it with Tesseract
when the ``tesseract`` binary is installed (``apt-get install tesseract-ocr``);
otherwise the user gives the bar's length (``--scale-bar-nm``).
:func:`scale_bar_mask` marks the bar and its label so they are left out of the analysis.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import CalibrationError, InputError
from .frames import validate_pixel_size_nm

#: nm per unit, for scale-bar labels (lower-case keys; "a" is the angstrom).
UNIT_NM: dict[str, float] = {"pm": 1e-3, "a": 0.1, "å": 0.1, "nm": 1.0, "um": 1e3, "mm": 1e6}

_LABEL_RE = re.compile(
    r"(?<![\d.])(\d+(?:[.,]\d+)?)[\s.,:;'`]*(nm|um|µm|μm|mm|pm|Å|A)(?![a-z])", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class ScaleBar:
    """A scale bar found in an image.

    Attributes
    ----------
    length_px : float
        Length of the bar in px (leftmost to rightmost bar pixel, inclusive).
    bar_bbox : tuple of int
        ``(min_row, min_col, max_row, max_col)`` of the bar, max exclusive (as skimage).
    label_bbox : tuple of int or None
        The same for the label text beside the bar, None when no text was found.
    label_text : str or None
        The label as read by OCR (None without Tesseract or when unreadable).
    label_nm : float or None
        The length the label states, in nm (None when unread).
    confidence : float
        0..1, how bar-like the detection is (fill, thinness, contrast, a label nearby).
    polarity : str
        ``"bright"`` (white bar) or ``"dark"`` (black bar).
    box_bbox : tuple of int or None
        The uniform box the bar and label sit on, when there is one.
    """

    length_px: float
    bar_bbox: tuple[int, int, int, int]
    label_bbox: tuple[int, int, int, int] | None
    label_text: str | None
    label_nm: float | None
    confidence: float
    polarity: str
    box_bbox: tuple[int, int, int, int] | None = None

    def pixel_size_nm(self, scale_bar_nm: float | None = None) -> float | None:
        """nm per px from ``scale_bar_nm`` (the user's) or else the label; None if neither."""
        length_nm = scale_bar_nm if scale_bar_nm is not None else self.label_nm
        if length_nm is None or self.length_px <= 0:
            return None
        return float(length_nm) / self.length_px


def tesseract_available() -> bool:
    """True when the ``tesseract`` OCR binary is on PATH."""
    return shutil.which("tesseract") is not None


def parse_scale_label(text: str | None) -> float | None:
    """Length in nm stated by a scale-bar label ("20 nm", "0.2 um", "0.2 µm", "500 pm", "2 Å").

    Returns None when no number with a known unit is found.

    Examples
    --------
    >>> parse_scale_label("0.2 um")
    200.0
    >>> parse_scale_label("50nm")
    50.0
    """
    if not text:
        return None
    # common OCR confusions inside numbers: O -> 0, l / I -> 1, comma decimal mark
    t = re.sub(r"(?<=\d)[oO](?=\d|\s|[a-zA-Z])", "0", text.strip())
    t = re.sub(r"(?<![a-zA-Z])[oO](?=[.,]\d)", "0", t)
    t = re.sub(r"(?<![a-zA-Z])[lI](?=\d|\s*[nu]m)", "1", t)
    t = t.replace("μ", "u").replace("µ", "u")
    m = _LABEL_RE.search(t)
    if m is None:
        return None
    value = float(m.group(1).replace(",", "."))
    unit = m.group(2)
    key = "a" if unit in ("A", "Å") else unit.lower().replace("µ", "u").replace("μ", "u")
    if key == "a" and unit == "a":  # a lower-case "a" is not an angstrom sign
        return None
    if value <= 0:
        return None
    return value * UNIT_NM[key]


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Gray uint8 view of an image (min..max stretched for other dtypes)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = cv2.cvtColor(img[..., :3].astype(np.uint8) if img.dtype != np.uint8 else img[..., :3],
                           cv2.COLOR_RGB2GRAY)
    if img.ndim != 2 or img.size == 0:
        raise InputError(f"scale-bar detection needs a 2-D gray image, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    f = img.astype(np.float32)
    finite = np.isfinite(f)
    if not finite.any():
        raise InputError("scale-bar detection: the image has no finite pixels")
    lo, hi = float(f[finite].min()), float(f[finite].max())
    f = np.where(finite, f, lo)
    return np.clip((f - lo) * (255.0 / max(hi - lo, 1e-12)), 0, 255).astype(np.uint8)


def _enclosing_box(
    gray: np.ndarray, bar_bbox: tuple[int, int, int, int], bg: float, tol: float = 15.0
) -> tuple[int, int, int, int] | None:
    """Bounding box of a uniform label box the bar sits on, or None (bar on the image).

    The box is the connected region of pixels within ``tol`` of ``bg`` touching the
    bar's upper or lower side; it counts as a box when it stays inside the search window.
    """
    r0, c0, r1, c1 = bar_bbox
    rows, cols = gray.shape
    w, h = c1 - c0, r1 - r0
    reach = max(12 * h, int(0.25 * rows), 40)  # well beyond the label search reach
    wr0, wr1 = max(0, r0 - reach), min(rows, r1 + reach)
    wc0, wc1 = max(0, c0 - 2 * w), min(cols, c1 + 2 * w)
    win = (np.abs(gray[wr0:wr1, wc0:wc1].astype(np.float32) - bg) <= tol).astype(np.uint8)
    _, lab = cv2.connectedComponents(win, connectivity=4)
    mid = (c0 + c1) // 2 - wc0
    seeds = [lab[r - wr0, mid] for r in (r0 - 1, r1) if 0 <= r - wr0 < lab.shape[0]]
    seeds = [v for v in seeds if v > 0]
    if not seeds:
        return None
    ys, xs = np.nonzero(np.isin(lab, seeds))
    b0, b1, a0, a1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    touches = (b0 == 0 and wr0 > 0) or (b1 == lab.shape[0] and wr1 < rows) or (
        a0 == 0 and wc0 > 0) or (a1 == lab.shape[1] and wc1 < cols)
    if touches or (b1 - b0) * (a1 - a0) > 0.6 * lab.size:
        return None
    return int(b0 + wr0), int(a0 + wc0), int(b1 + wr0), int(a1 + wc0)


def _find_label(
    mask: np.ndarray, bar_bbox: tuple[int, int, int, int]
) -> tuple[int, int, int, int] | None:
    """Bounding box of the text line nearest to the bar in ``mask`` (same polarity)."""
    r0, c0, r1, c1 = bar_bbox
    rows, cols = mask.shape
    w, h = c1 - c0, r1 - r0
    reach = max(8 * h, int(0.12 * rows), 30)
    wr0, wr1 = max(0, r0 - reach), min(rows, r1 + reach)
    wc0, wc1 = max(0, c0 - w), min(cols, c1 + w)
    win = mask[wr0:wr1, wc0:wc1].astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(win, connectivity=8)
    if n <= 1:
        return None
    # the bar itself and whatever touches it (end caps) is not text
    on_bar = np.unique(lab[max(0, r0 - wr0):r1 - wr0, max(0, c0 - wc0):c1 - wc0])
    keep = np.ones(n, bool)
    keep[0] = False
    keep[on_bar] = False
    if not keep.any():
        return None
    x, y, cw, ch, area = (stats[keep, i] for i in range(5))
    # glyph-like: a few px at least, not taller than the search reach, not a long bar
    ok = (area >= 3) & (np.maximum(cw, ch) >= 3) & (ch <= reach) & (cw <= 1.2 * w + 10)
    if not ok.any():
        return None
    x, y, cw, ch = x[ok] + wc0, y[ok] + wr0, cw[ok], ch[ok]
    # vertical gap to the bar (0 when beside it on the same line)
    gap = np.maximum.reduce([r0 - (y + ch), y - r1, np.zeros_like(y)])
    hgap = np.maximum.reduce([c0 - (x + cw), x - c1, np.zeros_like(x)])
    dist = gap + hgap
    big = ch >= 4
    if not big.any():
        return None

    def grow(seed: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The text line through component ``seed``: vertically overlapping, close."""
        line = np.zeros(x.size, bool)
        line[seed] = True
        lr0, lc0, lr1, lc1 = y[seed], x[seed], y[seed] + ch[seed], x[seed] + cw[seed]
        for _ in range(x.size):  # at most one pass per component (few components)
            overlap = np.minimum(y + ch, lr1) - np.maximum(y, lr0)
            near = np.maximum(lc0 - (x + cw), x - lc1) <= 2.5 * (lr1 - lr0)
            add = ~line & big & (overlap >= 0.4 * np.minimum(ch, lr1 - lr0)) & near
            if not add.any():
                break
            line |= add
            lr0, lr1 = min(lr0, y[line].min()), max(lr1, (y + ch)[line].max())
            lc0, lc1 = min(lc0, x[line].min()), max(lc1, (x + cw)[line].max())
        return line, (int(lr0), int(lc0), int(lr1), int(lc1))

    # a label is a line of several glyphs near the bar; a lone blob (a particle) is not:
    # grow lines from the nearest few components, keep the one with most glyphs
    order = [i for i in np.argsort(dist, kind="stable") if big[i] and dist[i] <= reach][:6]
    if not order:
        return None
    best_box, best_key = None, None
    for seed in order:
        line, box = grow(int(seed))
        line_dist = float(dist[line].min())
        key = (min(int(line.sum()), 3), -line_dist)
        if best_key is None or key > best_key:
            best_box, best_key = box, key
    lr0, lc0, lr1, lc1 = best_box
    # small strokes (a glyph's detached top bar, dots) inside the line's slightly grown box
    tol = max(2, (lr1 - lr0) // 3)
    inside = (y >= lr0 - tol) & (y + ch <= lr1 + tol) & (x >= lc0 - tol) & (x + cw <= lc1 + tol)
    if inside.any():
        lr0, lr1 = min(lr0, y[inside].min()), max(lr1, (y + ch)[inside].max())
        lc0, lc1 = min(lc0, x[inside].min()), max(lc1, (x + cw)[inside].max())
    return int(lr0), int(lc0), int(lr1), int(lc1)


def _tesseract_line(exe: str, img: np.ndarray) -> tuple[str, float]:
    """One text line read by the tesseract binary from a uint8 image: (text, mean conf 0..100)."""
    with tempfile.TemporaryDirectory(prefix="etemlive-ocr-") as tmp:
        path = Path(tmp) / "label.png"
        cv2.imwrite(str(path), img)
        try:
            res = subprocess.run(
                [exe, str(path), "stdout", "--psm", "7", "-l", "eng", "tsv"],
                capture_output=True, text=True, timeout=20, check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return "", 0.0
    words, confs = [], []
    for line in res.stdout.splitlines()[1:]:
        f = line.split("\t")
        if len(f) == 12 and f[11].strip():
            try:
                conf = float(f[10])
            except ValueError:
                continue
            if conf >= 0:
                words.append(f[11].strip())
                confs.append(conf)
    return " ".join(words), float(np.mean(confs)) if confs else 0.0


def _ocr(gray: np.ndarray, bbox: tuple[int, int, int, int], polarity: str) -> str | None:
    """Read a label with the tesseract binary (one text line); None if unavailable.

    Reads the crop upscaled to ~48 px text height (then ~64 px if nothing confident
    came out), binarized as is, with thickened strokes (thin vector fonts) and with
    thinned strokes (small bold fonts), and gray; keeps the reading that parses as a
    length, preferring round values (1, 2, 2.5, 3, 4, 5 x 10^k) and higher confidence.
    """
    exe = shutil.which("tesseract")
    if exe is None:
        return None
    r0, c0, r1, c1 = bbox
    pad = max(3, (r1 - r0) // 3)
    crop = gray[max(0, r0 - pad):r1 + pad, max(0, c0 - pad):c1 + pad]
    if crop.size == 0:
        return None
    if polarity == "bright":  # tesseract wants dark text on white
        crop = 255 - crop
    readings = []
    # text about 48 px tall reads best; small bold fonts read better larger and thinned
    for target_px in (48.0, 64.0):
        scale = max(1.0, target_px / max(r1 - r0, 1))
        big = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        _, binary = cv2.threshold(big, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        k = max(5, int(target_px / 10)) | 1
        variants = (
            binary,
            cv2.erode(binary, np.ones((5, 5), np.uint8)),  # dark strokes grow (thin fonts)
            cv2.dilate(binary, np.ones((k, k), np.uint8)),  # strokes shrink (bold fonts)
            big,
        )
        for variant in variants:
            img = cv2.copyMakeBorder(variant, 20, 20, 20, 20, cv2.BORDER_CONSTANT, value=255)
            text, conf = _tesseract_line(exe, img)
            if text:
                nm = parse_scale_label(text)
                readings.append((nm is not None, nm is not None and _is_round(nm), conf, text))
        if any(r[0] and r[1] and r[2] >= 80 for r in readings):
            break  # a confident round reading: no need to try harder
    if not readings:
        return None
    # prefer a reading that parses, then one with a round value (bars are 1, 2, 5 x 10^k)
    return max(readings)[3]


def _is_round(length_nm: float) -> bool:
    """True for the lengths scale bars use: 1, 2, 2.5, 3, 4 or 5 times a power of ten."""
    mantissa = length_nm / 10 ** math.floor(math.log10(length_nm))
    return any(abs(mantissa - m) < 1e-6 for m in (1, 2, 2.5, 3, 4, 5, 10))


def detect_scale_bar(
    image: np.ndarray,
    *,
    min_length_frac: float = 0.04,
    max_length_frac: float = 0.8,
    ocr: bool = True,
) -> ScaleBar | None:
    """Find a scale bar (a long, thin, uniform horizontal bar) and read its label.

    Parameters
    ----------
    image : ndarray, shape (rows, cols) or (rows, cols, 3)
        Any dtype; non-uint8 images are stretched min..max to 0..255.
    min_length_frac, max_length_frac : float
        Accepted bar length as a fraction of the image width.
    ocr : bool
        Read the label with Tesseract when its binary is installed.

    Returns
    -------
    ScaleBar or None
        The most bar-like candidate, or None when nothing bar-like is found.
    """
    gray = _to_uint8(image)
    rows, cols = gray.shape
    min_len = max(12, int(round(min_length_frac * cols))) | 1  # odd: centred kernel, no shift
    max_h = max(3, int(0.06 * rows))
    lo_v, hi_v = int(gray.min()), int(gray.max())
    if hi_v - lo_v < 40:
        return None
    best: tuple[float, ScaleBar] | None = None
    line = cv2.getStructuringElement(cv2.MORPH_RECT, (min_len, 1))
    for polarity in ("bright", "dark"):
        # bars are drawn at the extreme gray value; JPEG leaves them within ~25 levels
        mask = gray >= hi_v - 25 if polarity == "bright" else gray <= lo_v + 25
        opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, line)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
        if n <= 1:
            continue
        x, y, w, h, area = (stats[1:, i].astype(float) for i in range(5))
        fill = area / (w * h)
        ok = (
            (w >= min_len) & (w <= max_length_frac * cols) & (h <= max_h)
            & (w >= 5 * h) & (fill >= 0.85)
        )
        for i in np.flatnonzero(ok):  # a handful of candidates, not per pixel
            c0, r0, c1, r1 = int(x[i]), int(y[i]), int(x[i] + w[i]), int(y[i] + h[i])
            bar_val = float(np.median(gray[r0:r1, c0:c1]))
            # the bar stands out from the pixels right above AND below it (a strip of a
            # label box beside a bar stands out less on the side away from the bar)
            sides = [gray[max(0, r0 - 2):r0, c0:c1], gray[r1:r1 + 2, c0:c1]]
            sides = [sd for sd in sides if sd.size]
            if not sides:
                continue
            contrast = min(abs(bar_val - float(np.median(sd))) for sd in sides) / 255.0
            # each row of the bar spans (nearly) its full length: a uniform rectangle
            sub = labels[r0:r1, c0:c1] == i + 1
            row_fill = float(np.median(sub.mean(axis=1)))
            # text is drawn like the bar, but anti-aliased / JPEG-blurred thin strokes
            # fall short of the bar's value: threshold halfway to the surroundings
            bg = float(np.median(np.concatenate([sd.ravel() for sd in sides])))
            half = 0.6 * bar_val + 0.4 * bg
            label_mask = gray >= half if polarity == "bright" else gray <= half
            box = _enclosing_box(gray, (r0, c0, r1, c1), bg)
            if box is not None:  # bar on a label box: the text is inside the box
                inside = np.zeros_like(label_mask)
                inside[box[0]:box[2], box[1]:box[3]] = True
                label_mask &= inside
            label_bbox = _find_label(label_mask, (r0, c0, r1, c1))
            score = (
                fill[i] * row_fill * contrast
                * min(1.0, (w[i] / h[i]) / 10.0) * (1.0 if label_bbox else 0.75)
            )
            if contrast < 0.15:
                continue
            bar = ScaleBar(
                length_px=float(w[i]),
                bar_bbox=(r0, c0, r1, c1),
                label_bbox=label_bbox,
                label_text=None,
                label_nm=None,
                confidence=float(min(1.0, score)),
                polarity=polarity,
                box_bbox=box,
            )
            if best is None or score > best[0]:
                best = (score, bar)
    if best is None:
        return None
    bar = best[1]
    if ocr and bar.label_bbox is not None and tesseract_available():
        text = _ocr(gray, bar.label_bbox, bar.polarity)
        bar = dataclasses.replace(bar, label_text=text, label_nm=parse_scale_label(text))
    return bar


def scale_bar_mask(image: np.ndarray, bar: ScaleBar | None, *, margin_px: int = 3) -> np.ndarray:
    """Boolean mask, True on the scale bar, its label and its box (pixels to leave out).

    Parameters
    ----------
    image : ndarray
        The image (only its shape is used).
    bar : ScaleBar or None
        From :func:`detect_scale_bar`; None gives an all-False mask.
    margin_px : int
        Margin added around both boxes, in px.
    """
    shape = np.asarray(image).shape[:2]
    mask = np.zeros(shape, dtype=bool)
    if bar is None:
        return mask
    for box in (bar.bar_bbox, bar.label_bbox, bar.box_bbox):
        if box is None:
            continue
        r0, c0, r1, c1 = box
        mask[max(0, r0 - margin_px):r1 + margin_px, max(0, c0 - margin_px):c1 + margin_px] = True
    return mask


def remove_scale_bar(image: np.ndarray, bar: ScaleBar | None, *, margin_px: int = 3) -> np.ndarray:
    """Copy of ``image`` with the bar and label painted over by the median background,
    so a segmenter finds no particle there."""
    out = np.array(image, copy=True)
    mask = scale_bar_mask(out, bar, margin_px=margin_px)
    if mask.any() and not mask.all():
        out[mask] = np.median(out[~mask])
    return out


def draw_scale_bar(
    image: np.ndarray,
    *,
    length_px: int,
    text: str,
    font: int = cv2.FONT_HERSHEY_SIMPLEX,
    font_scale: float = 0.8,
    thickness: int = 1,
    bright: bool = True,
    box: bool = False,
    corner: str = "br",
    bar_height_px: int = 6,
    margin_frac: float = 0.04,
) -> np.ndarray:
    """Copy of a uint8 gray ``image`` with a scale bar and its label burned in.

    The bar is ``length_px`` px long (inclusive), ``bar_height_px`` tall, white
    (``bright``) or black, in a corner (``"br"``, ``"bl"``, ``"tr"``, ``"tl"``), with
    ``text`` centred above it (OpenCV Hershey ``font``), optionally on a box of the
    opposite colour. Used to annotate figures and to test :func:`detect_scale_bar`.
    """
    img = np.array(image, dtype=np.uint8, copy=True)
    rows, cols = img.shape[:2]
    fg, bg = (255, 0) if bright else (0, 255)
    (tw, th), base = cv2.getTextSize(text, font, font_scale, thickness)
    span = max(length_px, tw)
    m = int(margin_frac * cols) + 8
    left = cols - m - span if corner[1] == "r" else m
    x0, tx = left + (span - length_px) // 2, left + (span - tw) // 2
    y0 = rows - m - bar_height_px if corner[0] == "b" else m + 2 * th + base + 14
    if box:
        cv2.rectangle(img, (left - 8, y0 - 2 * th - base - 14), (left + span + 8,
                      y0 + bar_height_px + 8), bg, -1)
    cv2.rectangle(img, (x0, y0), (x0 + length_px - 1, y0 + bar_height_px - 1), fg, -1)
    cv2.putText(img, text, (tx, y0 - 6 - base), font, font_scale, fg, thickness, cv2.LINE_AA)
    return img


def resolve_pixel_size(
    *,
    metadata_nm: float | None,
    user_nm: float | None,
    image: np.ndarray | None = None,
    scale_bar_nm: float | None = None,
) -> tuple[float, str]:
    """Pixel size in nm/px and its source: ``"user"`` > ``"metadata"`` > ``"scale bar"``.

    Parameters
    ----------
    metadata_nm : float or None
        Pixel size from the file's metadata.
    user_nm : float or None
        ``--pixel-size-nm`` from the user (wins over everything).
    image : ndarray, optional
        A frame in which to look for a scale bar when neither is known.
    scale_bar_nm : float, optional
        ``--scale-bar-nm``: the length the bar stands for, in nm (used instead of OCR).

    Raises
    ------
    CalibrationError
        No usable pixel size; the message says which option to pass.
    """
    if user_nm is not None:
        return validate_pixel_size_nm(user_nm, what="--pixel-size-nm"), "user"
    if metadata_nm is not None:
        try:
            return validate_pixel_size_nm(metadata_nm, what="metadata pixel size"), "metadata"
        except CalibrationError:
            pass  # a zero / NaN pixel size in the metadata: fall back to a scale bar
    if scale_bar_nm is not None:
        scale_bar_nm = validate_pixel_size_nm(scale_bar_nm, what="--scale-bar-nm")
    if image is not None:
        bar = detect_scale_bar(image, ocr=scale_bar_nm is None)
        if bar is not None:
            px = bar.pixel_size_nm(scale_bar_nm)
            if px is not None and math.isfinite(px) and px > 0:
                return float(px), "scale bar"
            raise CalibrationError(
                f"found a scale bar ({bar.length_px:.0f} px) but could not read its label: "
                "pass --scale-bar-nm L (its length in nm) or --pixel-size-nm X"
            )
    if scale_bar_nm is not None:
        raise CalibrationError("no scale bar found in the image: pass --pixel-size-nm X")
    raise CalibrationError("no pixel size: pass --pixel-size-nm X or --scale-bar-nm L")
