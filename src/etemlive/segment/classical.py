"""Classical segmentation baseline: denoise, flatten, Otsu, morphology, watershed.

The pipeline of the seeds, made scale-aware and fast enough for live use:

1. **Size, polarity and noise first**, on a 4x area-averaged copy (noise / 4):
   polarity from the skewness (particles are the minority phase: < 0 dark
   particles, bright field; > 0 bright, dark field / HAADF; ``polarity``
   overrides), the particles' typical and large diameters from the inscribed
   radii of a first Otsu pass, and the contrast-to-noise ratio.
2. **Denoise** with a Gaussian (``cv2.GaussianBlur``, float32), sigma from the
   noise (1 px at the default dose, up to 3 px at low dose) and at least 5 % of
   the particle size (grainy real images). Chosen by measurement on the
   simulator at 1024^2 (``ripening`` / ``dense``, seed 1, this 2-core machine
   under load, CPU ms): Gaussian sigma 1: 1.9 ms, F1 0.989 / 0.944; median 5x5
   on uint8: 0.8 ms, F1 0.986 / 0.906; bilateral d=5: 6.9 ms, F1 0.975 / 0.859;
   ``cv2.fastNlMeansDenoising`` h=10 on uint8: 660 ms, F1 0.26 / 0.30 (its
   output is no longer white noise, which the noise-relative thresholds below
   rely on); skimage non-local means: ~1.1 s (72 ms per 256^2 tile).
   **Low dose** (steps 3-4 run twice): when the median region found after
   this first smoothing peaks under ``target_peak_snr`` (9) noise std and the
   noise is white (shot noise: its std after the blur matches the white-noise
   prediction; a carbon film's texture does not and is left alone), the frame
   is smoothed again with sigma scaled by the shortfall (at most 1.6x) and
   thresholded anew. Measured on simulator seeds 4000-4001 (512^2, 10 e-/px):
   mean F1 over the six scenarios 0.61 -> 0.73; at 100 and 1000 e-/px the
   first pass already clears the target and the second is not run.
   Chosen over a larger constant (sigma = 4.5 / c), which also helped at
   low dose but cost nucleation (tiny nuclei) and coalescence (narrow gaps)
   up to 0.06 F1 at the default dose.
   **Correlated noise** (grain, JPEG blocks: the noise std after the blur
   is far above the white-noise prediction) where most regions of the first
   pass are no stronger than the noise blobs such a frame shows anyway: the
   false-alarm level is set by random-field theory (the expected Euler
   characteristic of the smoothed noise, ``false_alarms`` blobs per frame,
   from the frame's number of independent resolution elements: its area
   times the noise field's roughness, both measured on the smoothed frame,
   so correlations count); scales ``sigma * 2^k`` are searched for the one
   at which the most blobs clear that level by 1 std, then stepped down by
   octaves while the strongest stays clear (the noise keeps falling with the
   scale, the outlines blur), and only regions above the false-alarm level
   there are kept, their split seeds from a distance smoothed at that scale;
   nothing significant: no particles. Measured: ``samem_nanorod`` (12 real
   liquid-cell frames, one rod each) F1 0.00 -> 0.96 (137 -> 13
   predictions); disks in 3 px correlated noise (tests) F1 0 -> 0.89-1.0;
   simulator frames (512^2, high dose) plus 3 px correlated noise of the
   frame's std: liquid F1 0.65 -> 0.73, shapes 0.37 -> 0.63, coalescence
   0.54 -> 0.35, ripening (2.5 px) 0.19 -> 0.08 (precision up, faint lost:
   many faint real particles look like noise to a per-frame false-alarm
   level). White-noise simulator frames and ``msa_sintering`` do not enter
   this branch.
3. **Background flattening**: a tilted plane is fitted and removed, then a grey
   opening (particles made bright) with a disk of twice the large particle
   diameter, on a downsampled copy, smoothed and subtracted: the carbon support
   and the illumination gradient go, the particles stay.
4. **Percentile stretch** (1, 99.5 %) to uint8 and **Otsu** (``cv2.threshold``),
   used in a **hysteresis**: a particle is a connected region above a
   noise-relative low threshold (2.5 sigma) whose peak reaches the Otsu level
   (at most 6 sigma, at least 4 sigma: a faint second family is kept, pure
   noise is not).
5. **Opening / closing** with a small disk, hole filling, then every region is
   trimmed to 20 % of its own peak contrast (``edge_fraction``): the outline of
   a sphere, whose projected thickness falls to zero at the rim, independent of
   the dose; gaps between neighbours reappear. Where the smoothing is a good
   part of a particle's radius (small particles, low dose) the blurred rim sits
   higher (0.32 of the peak at sigma = 0.4 R): each particle is trimmed at the
   larger of the two levels.
6. **Distance transform** (``cv2.distanceTransform``), normalized per connected
   region (``dist / max(dist in region)``, the seeds' normalization) as the
   watershed relief; seeds are the local maxima of the smoothed distance.
7. **Watershed** (scikit-image; only regions with two or more seeds, at half
   resolution when particles are >= 16 px), then adjacent regions are merged
   unless the distance dips between them by ``split_ratio`` of the lower peak
   (a relative, h-maxima-in-log-space criterion, the same for every size, so a
   small particle touching a large one is split as readily as two equal ones:
   the Ostwald-ripening case) or the particle signal dips by 4 noise sigma.
   The distance dip must also exceed the outline's own noise (~ sigma * noise
   / contrast px, ``split_outline_sigma``): at low dose noise carves 1-2 px
   waists into rods, which are not two particles.
8. Each particle is trimmed again to 20 % of its own peak (a faint particle
   beside a dark one), and objects under ``min_diameter_nm`` are removed.

Sizes are in nm and converted with the pixel size; where a size is ``None`` it is
derived from the particles' own size measured in step 1 (so the same defaults
work at 0.2 and at 2 nm/px). The few pixel constants are sampling limits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import watershed

from ..errors import InputError
from ..frames import validate_pixel_size_nm

_POLARITIES = ("auto", "dark", "bright")
#: A second, heavier smoothing pass is only run when it raises sigma by more than
#: this factor: a smaller change is not worth a second threshold pass.
_MIN_SMOOTHING_GAIN = 1.2
#: ... and only where the noise is mostly white (see ``whiteness`` below): on
#: the simulator 0.8-1.0 at low dose, on the real msa_sintering images 0.1-0.2.
_WHITE_NOISE_MIN = 0.5


@dataclass(frozen=True)
class ClassicalConfig:
    """Settings of the classical segmenter; all sizes in nm, validated.

    Parameters
    ----------
    polarity : {"auto", "dark", "bright"}
        Dark particles (bright field) or bright ones (dark field, HAADF); ``auto``
        decides from the intensity skewness.
    smoothing_nm : float or None
        Gaussian denoising sigma in nm; None: from the image's contrast-to-noise
        ratio ``c`` (4x-averaged percentile range / pixel noise) and the particle
        (median) size ``d`` of a first pass on the 4x-averaged copy:
        max(``smoothing_snr`` / c, ``smoothing_fraction`` * d) px, clipped to 1..8 px.
    smoothing_snr : float
        With ``smoothing_nm`` None, the noise-adaptive part of the first
        smoothing sigma is this over the contrast-to-noise ratio ``c``.
    target_peak_snr : float
        With ``smoothing_nm`` None: when the median peak of the regions found
        after the first smoothing is under this many noise std (low dose: ~6
        on the simulator at 10 e-/px, >= 8 at 100 e-/px), the frame is
        smoothed again with sigma scaled by ``target / peak`` (at most
        ``max_smoothing_gain``) and thresholded anew; 0 disables.
    max_smoothing_gain : float
        Largest factor of that second smoothing over the first (1..8): beyond
        ~1.6 x gaps between neighbours and tiny particles blur away.
    smoothing_fraction : float
        With ``smoothing_nm`` / ``morphology_nm`` None, the smoothing sigma and the
        morphology radius are at least this fraction of the particle size from
        the first pass (grainy real images need smoothing at the particle scale).
    watershed_half_res_px : float
        When the typical particle diameter is at least this (px), the split
        lines between touching particles are computed at half resolution (4x
        fewer pixels in the costliest stage); ``inf`` disables it. In px: it is a
        sampling trade-off, not a physical size.
    background_nm : float or None
        Radius of the background-flattening disk in nm; None: 2x the large
        (95th percentile) particle diameter of a first pass (at least 16 px).
    percentiles : tuple of float
        Low and high percentiles of the contrast stretch.
    morphology_nm : float or None
        Radius of the opening / closing disk in nm; None: ``smoothing_fraction`` *
        d, at least 1 px.
    split_ratio : float
        Relative prominence a distance peak needs over its saddle to seed its own
        particle (0..1); larger values split less.
    split_min_dip_px : float
        Minimum absolute depth (px) of the distance dip between two seeds for a
        split: the outline of a mask is only known to a pixel, so shallower dips
        along a rod or a facet are noise. In px on purpose (a sampling limit).
    split_sigma : float
        Two touching regions also stay apart when the particle signal dips
        between them by this many noise std (a faint particle beside a dark one).
    split_outline_sigma : float
        The shape cue's minimum distance dip grows with the outline's own
        uncertainty: at least this times ``sigma_s * noise / contrast`` px
        (``sigma_s`` the smoothing sigma, ``contrast`` the lower peak of the
        pair): at low dose noise carves waists of a pixel or two into rods,
        which must not cut them; at the default dose the floor
        ``split_min_dip_px`` rules.
    low_sigma, high_sigma : float
        Hysteresis thresholds in units of the background noise std above the
        background level: a particle is a connected region above ``low_sigma``
        whose peak reaches ``min(Otsu, high_sigma)``, and at least
        ``min_seed_sigma`` (an image of pure noise has no particles).
    false_alarms : float
        Expected number of noise blobs per frame above the significance level
        used for correlated noise (random-field theory, see the module
        docstring); smaller: a higher level.
    significant_fraction : float
        The correlated-noise search runs when fewer than this fraction of the
        first pass's regions reach that level (0 disables it).
    min_diameter_nm : float
        Particles with a smaller equivalent diameter are removed (a floor of 2 px
        always applies: below that shot noise makes blobs).
    fill_holes : bool
        Fill holes in the particle mask (particles with bright cores).
    edge_fraction : float
        Each particle's outline is where its contrast falls to this fraction of
        its own peak contrast (0..1), used unless ``snap_to_edges``: for spheres
        the projected thickness falls to zero at the rim, which the blurred
        image shows at ~0.2 of the peak.
    snap_to_edges : bool
        Trim particles to the contrast level of the steepest edges (see
        ``_snap_to_edges``). Off by default: for spheres (projected thickness ->
        0 at the rim) the hysteresis outline is already the footprint and
        trimming costs ~0.8 nm of diameter on the simulator; on for flat-topped
        particles (plates, cubes) which are otherwise oversized by the blur.
    """

    polarity: str = "auto"
    smoothing_nm: float | None = None
    background_nm: float | None = None
    percentiles: tuple[float, float] = (1.0, 99.5)
    morphology_nm: float | None = None
    split_ratio: float = 0.1
    split_min_dip_px: float = 0.5
    split_sigma: float = 4.0
    split_outline_sigma: float = 2.0
    dist_sigma_px: float = 1.2
    low_sigma: float = 2.5
    high_sigma: float = 6.0
    min_seed_sigma: float = 4.0
    min_diameter_nm: float = 1.0
    false_alarms: float = 0.01
    significant_fraction: float = 0.5
    smoothing_fraction: float = 0.05
    smoothing_snr: float = 3.0
    target_peak_snr: float = 9.0
    max_smoothing_gain: float = 1.6
    watershed_half_res_px: float = 16.0
    fill_holes: bool = True
    snap_to_edges: bool = False
    edge_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.polarity not in _POLARITIES:
            raise InputError(f"polarity must be one of {', '.join(_POLARITIES)}, "
                             f"got {self.polarity!r}")
        for name in ("smoothing_nm", "background_nm", "morphology_nm"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(f"{name} must be positive (nm) or None, got {value!r}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, "
                             f"got {self.percentiles!r}")
        if not 0 <= self.edge_fraction < 1:
            raise InputError(f"edge_fraction must be in [0, 1), got {self.edge_fraction!r}")
        if not 0 < self.split_ratio < 1:
            raise InputError(f"split_ratio must be in (0, 1), got {self.split_ratio!r}")
        for name in ("split_min_dip_px", "split_sigma", "split_outline_sigma",
                     "dist_sigma_px", "low_sigma", "high_sigma", "min_seed_sigma",
                     "smoothing_fraction", "smoothing_snr", "target_peak_snr"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.max_smoothing_gain, int | float)
                and 1.0 <= self.max_smoothing_gain <= 8.0):
            raise InputError(f"max_smoothing_gain must be in [1, 8], got "
                             f"{self.max_smoothing_gain!r}")
        if not (isinstance(self.false_alarms, int | float) and 0 < self.false_alarms <= 100):
            raise InputError(f"false_alarms must be in (0, 100] noise blobs per frame, got "
                             f"{self.false_alarms!r}")
        if not 0 <= self.significant_fraction <= 1:
            raise InputError(f"significant_fraction must be in [0, 1], got "
                             f"{self.significant_fraction!r}")
        if not self.watershed_half_res_px > 0:
            raise InputError(f"watershed_half_res_px must be > 0 (inf disables), got "
                             f"{self.watershed_half_res_px!r}")
        if not (math.isfinite(self.min_diameter_nm) and self.min_diameter_nm >= 0):
            raise InputError(f"min_diameter_nm must be >= 0 nm, got {self.min_diameter_nm!r}")


def _disk(radius_px: float) -> np.ndarray:
    r = max(int(round(radius_px)), 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _as_float(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"image must be 2-D (rows, cols), got shape {image.shape}")
    if image.size == 0:
        raise InputError("image is empty")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise InputError(f"image must be numeric, got dtype {image.dtype}")
    out = image.astype(np.float32, copy=True)
    if out.dtype.kind == "f" and image.dtype.kind == "f" and not np.isfinite(out).all():
        # NaN / inf pixels (dead pixels in float data) become the median.
        bad = ~np.isfinite(out)
        out[bad] = np.median(out[~bad]) if (~bad).any() else 0.0
    return out


def _skewness(x: np.ndarray) -> float:
    x = x.astype(np.float64, copy=False)
    m = x.mean()
    d = x - m
    var = np.mean(d * d)
    return float(np.mean(d * d * d) / var**1.5) if var > 0 else 0.0


def _background(image: np.ndarray, radius_px: float, particles_bright: bool) -> np.ndarray:
    """Large-scale background: grey opening (bright particles) / closing, downsampled."""
    rows, cols = image.shape
    factor = max(1, int(radius_px // 6))
    small = cv2.resize(image, (max(1, cols // factor), max(1, rows // factor)),
                       interpolation=cv2.INTER_AREA)
    kernel = _disk(radius_px / factor)
    op = cv2.MORPH_OPEN if particles_bright else cv2.MORPH_CLOSE
    # A tilted plane (illumination gradient) is fitted and removed first: near a
    # border an opening / closing cannot follow a ramp (it clips a band of one
    # kernel radius), which would leave a false "particle" along that border.
    sr, sc = small.shape
    yy, xx = np.mgrid[0:sr, 0:sc].astype(np.float32)
    design = np.stack([np.ones(sr * sc, np.float32), xx.ravel(), yy.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design, small.ravel(), rcond=None)
    plane = (coef[0] + coef[1] * xx + coef[2] * yy).astype(np.float32)
    bg = cv2.morphologyEx(small - plane, op, kernel, borderType=cv2.BORDER_REPLICATE)
    bg = cv2.GaussianBlur(bg, (0, 0), max(radius_px / factor, 0.5),
                          borderType=cv2.BORDER_REPLICATE) + plane
    return cv2.resize(bg, (cols, rows), interpolation=cv2.INTER_LINEAR)


def _blur_large(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur with a large sigma, computed on a downsampled copy (fast)."""
    rows, cols = image.shape
    factor = max(1, int(sigma_px // 4))
    small = cv2.resize(image, (max(1, cols // factor), max(1, rows // factor)),
                       interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma_px / factor, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (cols, rows), interpolation=cv2.INTER_LINEAR)


def _label_max(values: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Per-label maximum of ``values`` (index = label; -inf where absent)."""
    # Same dtype for ``out`` and the values keeps ``ufunc.at`` on its fast path.
    out = np.full(n_labels, -np.inf, dtype=values.dtype)
    idx = np.flatnonzero(labels)
    np.maximum.at(out, labels.ravel()[idx], values.ravel()[idx])
    return out.astype(np.float64)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes of a 0/1 uint8 mask: flood the background from the border."""
    rows, cols = mask.shape
    padded = np.zeros((rows + 2, cols + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = np.zeros((rows + 4, cols + 4), np.uint8)
    cv2.floodFill(padded, flood, (0, 0), 2)
    return (padded[1:-1, 1:-1] != 2).astype(np.uint8)


def _otsu_u8(x: np.ndarray, lo_pct: float, hi_pct: float) -> tuple[np.ndarray, float]:
    """Percentile stretch to uint8 and Otsu; returns (mask uint8 0/1, threshold 0..255)."""
    sample = x[::4, ::4]
    lo, hi = np.percentile(sample, [lo_pct, hi_pct])
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    u8 = cv2.convertScaleAbs(x, alpha=scale, beta=-lo * scale)  # saturates to 0..255
    # convertScaleAbs takes |v|: values below lo would wrap up; clip them first.
    u8[x < lo] = 0
    t, mask = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return mask, t


def _pixel_noise(image: np.ndarray) -> float:
    """Std of the pixel-to-pixel (white) noise, from neighbour differences (MAD)."""
    d = (image[::8, 1:] - image[::8, :-1]).ravel()
    # Horizontal neighbour differences: std * sqrt(2) of white noise, edges rare.
    med = np.median(d)
    mad = float(np.median(np.abs(d - med)))
    if mad == 0.0:
        # Sparse counts (dark field at low dose: mostly 0 e-/px) make the MAD
        # 0, and their noise is far from Gaussian: the plain std it is.
        return float(np.std(d)) / math.sqrt(2.0)
    return 1.4826 * mad / math.sqrt(2.0)


def _contrast_to_noise(noise: float, small_flat: np.ndarray,
                       percentiles: tuple[float, float]) -> float:
    """Robust contrast range of the 4x-averaged image over the raw pixel noise std."""
    lo, hi = np.percentile(small_flat, percentiles)
    return float(hi - lo) / noise if noise > 0 else math.inf


def _background_noise(flat: np.ndarray) -> tuple[float, float]:
    """Background level (histogram mode) and noise std of the particle-free side.

    Particles are bright in ``flat``, so the values below the mode are background
    only: their RMS distance to the mode is the noise std, unbiased by how much
    of the image the particles cover (a median / MAD is not, at 40 % cover).
    """
    step = max(1, int(math.sqrt(flat.size / 1e5)))  # ~1e5 samples are plenty
    sample = flat[::step, ::step].ravel()
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if not hi > lo:
        return float(lo), 1e-6
    hist, edges = np.histogram(sample, bins=256, range=(lo, hi))
    hist = cv2.GaussianBlur(hist.astype(np.float32).reshape(1, -1), (0, 0), 2.0).ravel()
    k = int(np.argmax(hist))
    mode = 0.5 * (edges[k] + edges[k + 1])
    below = sample[sample < mode] - mode
    sigma = float(np.sqrt(np.mean(below * below))) if below.size else float(hi - lo) / 6
    return float(mode), max(sigma, 1e-6)


def _hysteresis(flat: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """0/1 mask of the connected regions above ``low`` that reach above ``high``,
    and the peak values of those regions."""
    weak = (flat > low).astype(np.uint8)
    n, comp = cv2.connectedComponents(weak, connectivity=8)
    peak = _label_max(flat, comp, n)
    keep = peak > high
    keep[0] = False
    return keep[comp].astype(np.uint8), peak[keep]


def _roughness(flat: np.ndarray, mode: float, noise: float, mask: np.ndarray) -> float:
    """Roughness ``lambda`` (1/px^2) of the background noise field of ``flat``.

    ``lambda`` is the variance of a first derivative over the field's variance;
    from the correlation ``rho(1)`` of neighbouring background pixels (outside
    ``mask``, within 3 std of ``mode``), assuming a Gaussian correlation
    ``rho(h) = exp(-lambda h^2 / 2)``: 1 / (2 s^2) for white noise blurred by a
    Gaussian of sigma ``s``; smaller when the noise itself is correlated
    (grain, JPEG blocks), i.e. when fewer independent elements fill the frame.
    """
    step = 4 if min(flat.shape) >= 256 else 1  # every 4th row / column is plenty
    dev = flat - np.float32(mode)
    ok = (mask == 0) & (np.abs(dev) < 3.0 * noise)
    sums = []
    for a, b, oa, ob in ((dev[::step, :-1], dev[::step, 1:], ok[::step, :-1], ok[::step, 1:]),
                         (dev[:-1, ::step], dev[1:, ::step], ok[:-1, ::step], ok[1:, ::step])):
        both = oa & ob
        d = (a - b)[both]
        sums.append((float(np.sum(d.astype(np.float64) ** 2)), int(d.size)))
    n = sums[0][1] + sums[1][1]
    if n < 100:
        return 0.5  # too few background pixels: a 1 px correlation (conservative)
    var_d = (sums[0][0] + sums[1][0]) / n
    rho = min(max(1.0 - var_d / (2.0 * noise * noise), 1e-3), 1.0 - 1e-6)
    return -2.0 * math.log(rho)


def _false_alarm_sigma(n_px: float, roughness: float, alarms: float) -> float:
    """Threshold (noise std) that a smooth Gaussian noise field of ``n_px``
    pixels and roughness ``roughness`` exceeds ``alarms`` times per frame.

    The expected Euler characteristic of the excursion set above ``t``
    (random-field theory, Worsley et al. 1996): ``n_px * lambda / (2 pi)^1.5 *
    t exp(-t^2 / 2) + Q(t)``, i.e. the expected number of noise blobs above
    ``t``: the number of independent resolution elements sets the level.
    """
    resels = n_px * roughness / (2.0 * math.pi) ** 1.5

    def expected(t: float) -> float:
        return resels * t * math.exp(-0.5 * t * t) + 0.5 * math.erfc(t / math.sqrt(2.0))

    lo, hi = 1.0, 12.0
    if expected(lo) <= alarms:
        return lo
    for _ in range(40):  # bisection; expected() decreases for t >= 1
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expected(mid) > alarms else (lo, mid)
    return hi


def _detect(oriented: np.ndarray, sigma_px: float, bg_radius_px: float, pixel_noise: float,
            cfg: ClassicalConfig, seed_sigma: float | None = None
            ) -> tuple[float, np.ndarray, float, float, np.ndarray, float, np.ndarray]:
    """Flatten a smoothed frame (particles bright) and threshold it by hysteresis.

    Returns ``(sigma_px, flat, mode, noise, mask, peak_snr, peaks_z)``: the
    flattened image, its background level and noise std, the 0/1 particle
    mask, the median peak contrast of its regions in noise std (inf without
    regions) and every region's peak in noise std. ``seed_sigma`` (noise std)
    raises the seed threshold.
    """
    flat = oriented - _background(oriented, bg_radius_px, particles_bright=True)
    # Otsu on the stretched, flattened image; then hysteresis: particles are the
    # regions above a noise-based low threshold that reach the Otsu level (or a
    # clear noise multiple where Otsu sits higher, e.g. a faint second family).
    _, otsu_u8 = _otsu_u8(flat, *cfg.percentiles)
    lo_pct, hi_pct = np.percentile(flat[::4, ::4], cfg.percentiles)
    otsu = lo_pct + otsu_u8 / 255.0 * (hi_pct - lo_pct)
    mode, sigma = _background_noise(flat)
    # White pixel noise after the Gaussian has std noise / (2 sqrt(pi) sigma_px):
    # a floor for the histogram estimate, which few independent samples (heavy
    # smoothing of a small frame) can put too low (noise blobs then pass).
    sigma = max(sigma, pixel_noise / (2.0 * math.sqrt(math.pi) * sigma_px))
    low = mode + cfg.low_sigma * sigma
    # Seeds must clear the noise even where Otsu only splits noise (no particles).
    high = max(min(otsu, mode + cfg.high_sigma * sigma), mode + cfg.min_seed_sigma * sigma, low)
    if seed_sigma is not None:
        high = max(high, mode + seed_sigma * sigma)
    mask, peaks = _hysteresis(flat, low, high)
    peaks_z = (peaks - mode) / sigma
    peak_snr = float(np.median(peaks_z)) if peaks.size else math.inf
    return sigma_px, flat, mode, sigma, mask, peak_snr, peaks_z


def _smoothed_small(img: np.ndarray, sigma_px: float) -> tuple[np.ndarray, int]:
    """The frame smoothed at ``sigma_px`` on an area-averaged copy, and the
    copy's downsampling factor (>= 2 px of blur left at the small scale)."""
    rows, cols = img.shape
    factor = max(1, int(sigma_px // 2))
    small = cv2.resize(img, (max(1, cols // factor), max(1, rows // factor)),
                       interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small, (0, 0), sigma_px / factor,
                            borderType=cv2.BORDER_REFLECT), factor


def _significance_at(smoothed: tuple[np.ndarray, int], sigma_px: float, bg_radius_px: float,
                     bright: bool, cfg: ClassicalConfig) -> tuple[float, float, int]:
    """Peak of the frame smoothed at ``sigma_px`` (``smoothed``: from
    :func:`_smoothed_small`), its false-alarm level (both in noise std of that
    smoothed, flattened frame) and the number of regions at least 1 std above
    that level. The noise std is measured, so correlations are included."""
    blurred, factor = smoothed
    oriented = blurred if bright else -blurred
    radius = max(bg_radius_px, 4.0 * sigma_px) / factor
    flat = oriented - _background(oriented, radius, particles_bright=True)
    mode, noise = _background_noise(flat)
    weak = (flat > mode + cfg.low_sigma * noise).astype(np.uint8)
    alarm_z = _false_alarm_sigma(flat.size, _roughness(flat, mode, noise, weak), cfg.false_alarms)
    _, peaks = _hysteresis(flat, mode + cfg.low_sigma * noise, mode + alarm_z * noise)
    clear = int(np.sum(peaks >= mode + (alarm_z + 1.0) * noise))
    return (float(flat.max()) - mode) / noise, alarm_z, clear


def _scan_scales(img: np.ndarray, sigma0_px: float, bg_radius_px: float,
                 polarities: tuple[bool, ...], cfg: ClassicalConfig
                 ) -> tuple[float, bool, float, int] | None:
    """Smoothing scale and polarity at which the most blobs are clearly
    significant against the noise measured at that same scale.

    For correlated noise (grain, JPEG), whose std falls much more slowly with
    smoothing than white noise's, and whose blobs at a small scale are as
    strong as small particles. Scales ``sigma0 * 2^k`` up to 1/32 of the frame's
    short side are tried (:func:`_significance_at`); at each, the regions
    whose peak clears the false-alarm level by 1 noise std are counted (found
    in >= 84 % of frames: a blob only just at the level is not evidence).
    Returns ``(sigma_px, bright, alarm_z, count)`` of the largest count (ties:
    the largest excess of the strongest peak over its level), or None when no
    scale holds such a blob. The largest excess is often at a scale larger
    than the particles (the noise keeps falling): the caller steps down.
    """
    rows, cols = img.shape
    max_sigma = min(rows, cols) / 32.0
    best, best_key = None, (0, 0.0)
    sigma = sigma0_px * 2.0
    while sigma <= max_sigma:
        smoothed = _smoothed_small(img, sigma)
        for bright in polarities:
            z, alarm_z, count = _significance_at(smoothed, sigma, bg_radius_px, bright, cfg)
            if count > 0 and (count, z - alarm_z) > best_key:
                best, best_key = (sigma, bright, alarm_z, count), (count, z - alarm_z)
        sigma *= 2.0
    return best


def _estimate_diameter_px(mask: np.ndarray) -> tuple[float, float]:
    """Typical and large particle diameters (px) in a 0/1 mask.

    Twice the median and the 95th percentile of the components' inscribed radius
    (max of the distance transform), which touching particles do not inflate the
    way they inflate areas. (8, 8) px if nothing is found.
    """
    n, comp = cv2.connectedComponents(mask, connectivity=8)
    if n < 2:
        return 8.0, 8.0
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    radius = _label_max(dist, comp, n)[1:]
    radius = radius[radius >= 1.5]  # single pixels and slivers are noise
    if radius.size == 0:
        return 8.0, 8.0
    median, large = np.percentile(radius, [50, 95])
    return float(2.0 * median), float(2.0 * large)


def _markers(dist: np.ndarray, signal: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    """Seeds: local maxima (3x3) of the smoothed distance, as labelled plateaus."""
    peak = cv2.dilate(dist, np.ones((3, 3), np.uint8))
    seeds = (dist >= peak) & (dist >= 1.0)
    seeds = (seeds & (mask > 0)).astype(np.uint8)
    _, markers = cv2.connectedComponents(seeds, connectivity=8)
    return markers


#: Rim level of a sphere's projected thickness sqrt(R^2 - r^2) after a Gaussian
#: blur of sigma = q R, as a fraction of the blurred peak (numerical, R = 40 px).
_RIM_Q = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5])
_RIM_LEVEL = np.array([0.0, 0.169, 0.229, 0.273, 0.321, 0.377, 0.44, 0.563, 0.664, 0.739, 0.816])


def _snap_to_edges(labels: np.ndarray, contrast: np.ndarray, level: float | None = None,
                   blur_px: float = 0.0) -> tuple[np.ndarray, float]:
    """Trim every particle to the contrast level where its edge is steepest.

    The hysteresis mask ends where the signal leaves the noise, outside the
    physical edge of a flat-topped particle (a cube, a plate, a blurred real
    particle: edge at ~half contrast) but close to it for a sphere (projected
    thickness falls to zero at the rim). Which one an image holds is read off
    the image: with ``u`` = contrast / the particle's own peak contrast, the mean
    gradient magnitude (also / peak) over foreground pixels, binned by ``u``, is
    largest at the level ``f`` of the edges; pixels with ``u < f`` are removed.
    One level for the frame, each particle scaled by its own peak. With ``level``
    given, that fraction is used instead of the steepest one, raised for each
    particle to the rim level of a sphere of its size blurred by ``blur_px``
    (small particles under heavy smoothing: their blurred rim sits higher).

    Returns the trimmed labels and ``f``.
    """
    n = int(labels.max())
    if n == 0:
        return labels, 0.0
    fg = np.flatnonzero(labels)
    lab = labels.ravel()[fg]
    peak = _label_max(contrast, labels, n + 1)
    peak = np.where(peak > 0, peak, np.inf)
    scale = peak[lab]
    u = contrast.ravel()[fg] / scale
    if level is not None:
        cut = level
        if blur_px > 0:
            # The radius from the area at the lower level is too large; one
            # refinement with the area after the first cut gets close.
            area = np.bincount(lab, minlength=n + 1)
            for _ in range(2):
                radius = np.sqrt(area / math.pi)
                rim = np.interp(blur_px / np.maximum(radius, 0.5), _RIM_Q, _RIM_LEVEL)
                cut = np.maximum(level, rim)[lab]
                area = np.bincount(lab[u >= cut], minlength=n + 1)
        trimmed = labels.copy()
        trimmed.ravel()[fg[u < cut]] = 0
        return trimmed, level
    gx = cv2.Sobel(contrast, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(contrast, cv2.CV_32F, 0, 1, ksize=3)
    grad = np.sqrt(gx * gx + gy * gy).ravel()[fg] / 8.0  # Sobel 3x3 gain 8 for a unit slope
    g = grad / scale
    n_bins = 40
    b = np.clip((u * n_bins).astype(np.int64), 0, n_bins - 1)
    counts = np.bincount(b, minlength=n_bins)
    mean_g = np.bincount(b, weights=g, minlength=n_bins) / np.maximum(counts, 1)
    # Search 0..0.6 of the peak, in bins holding enough pixels to be trusted.
    usable = counts >= max(20, fg.size // 2000)
    usable[int(0.6 * n_bins):] = False
    if not usable.any():
        return labels, 0.0
    k = int(np.argmax(np.where(usable, mean_g, -np.inf)))
    level = k / n_bins  # lower edge of the steepest bin
    trimmed = labels.copy()
    trimmed.ravel()[fg[u < level]] = 0
    return trimmed, level


def _watershed_multi(dist: np.ndarray, markers: np.ndarray, regions: np.ndarray,
                     n_regions: int, factor: int = 1
                     ) -> tuple[np.ndarray, tuple | None, np.ndarray | None]:
    """Watershed of ``-dist_norm`` from ``markers``, run only where it matters.

    A connected region with a single seed is already one particle; only regions
    with two or more seeds go through the (costly) watershed, cropped to their
    bounding box. The relief is the distance normalized per connected region
    (``dist / max(dist in region)``, the seeds' normalization). Returns the
    labels, that bounding box and the mask of the watershed pixels in it (None,
    None when no region needed a watershed).
    """
    seeded = np.flatnonzero(markers)
    stride = int(markers.ravel()[seeded].max()) + 1 if seeded.size else 1
    pairs = np.unique(regions.ravel()[seeded].astype(np.int64) * stride
                      + markers.ravel()[seeded])
    seeds_per_region = np.bincount(pairs // stride, minlength=n_regions)
    multi = seeds_per_region >= 2
    multi[0] = False
    # Regions without a seed (too thin for a smoothed distance peak >= 1 px) are
    # noise slivers: dropped, as the watershed would leave them unlabelled.
    keep = seeds_per_region >= 1
    keep[0] = False
    labels = np.where(keep[regions], regions, 0).astype(np.int32)
    if not multi.any():
        return labels, None, None
    in_multi = multi[regions]
    # Bounding box of the multi-seed regions (columns searched in the row band only).
    rows = np.flatnonzero(np.logical_or.reduce(in_multi, axis=1))
    cols = np.flatnonzero(np.logical_or.reduce(in_multi[rows[0]:rows[-1] + 1], axis=0))
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    sub_mask = in_multi[box]
    sub_markers = np.where(sub_mask, markers[box], 0)
    sub_regions = regions[box]
    region_max = _label_max(dist[box], np.where(sub_mask, sub_regions, 0), n_regions)
    region_max[~np.isfinite(region_max) | (region_max <= 0)] = 1.0
    relief = -(dist[box] / region_max[sub_regions].astype(np.float32))
    if factor > 1:
        ws = _watershed_downsampled(relief, sub_markers, sub_mask, factor)
    else:
        ws = watershed(relief, sub_markers, mask=sub_mask)
    # Watershed regions get labels above every region id.
    labels[box][sub_mask] = ws[sub_mask] + n_regions
    return labels, box, sub_mask


def _watershed_downsampled(relief: np.ndarray, markers: np.ndarray, mask: np.ndarray,
                           factor: int) -> np.ndarray:
    """Watershed on ``factor``-times block-reduced arrays, labels repeated back.

    Relief: block mean; markers and mask: block max (no seed is lost, the mask
    keeps its connectivity). Only the split lines between touching particles
    are coarser (``factor`` px); the particle / background outline stays the
    full-resolution mask.
    """
    rows, cols = relief.shape
    pr, pc = (-rows) % factor, (-cols) % factor
    if pr or pc:
        relief = np.pad(relief, ((0, pr), (0, pc)), mode="edge")
        markers = np.pad(markers, ((0, pr), (0, pc)))
        mask = np.pad(mask, ((0, pr), (0, pc)))
    r2, c2 = relief.shape[0] // factor, relief.shape[1] // factor

    def blocks(a: np.ndarray) -> np.ndarray:
        return a.reshape(r2, factor, c2, factor)

    low_relief = blocks(relief).mean(axis=(1, 3))
    low_markers = blocks(markers).max(axis=(1, 3))
    low_mask = blocks(mask).any(axis=(1, 3))
    low = watershed(low_relief, low_markers, mask=low_mask)
    full = np.repeat(np.repeat(low, factor, axis=0), factor, axis=1)
    return full[:rows, :cols]


def _merge_weak_splits(labels: np.ndarray, dist: np.ndarray, intensity: np.ndarray,
                       cfg: ClassicalConfig, noise: float, smoothing_px: float
                       ) -> np.ndarray:
    """Merge adjacent watershed regions that are not separated by a real dip.

    Two cues, each computed for every pair of touching regions at once:

    * shape: the saddle of the distance transform (the highest ``min(d_p, d_q)``
      over 4-neighbour pixel pairs across their boundary) against the lower of
      the two peaks: a split needs ``saddle <= (1 - split_ratio) * peak`` (h-maxima
      in log space: one relative criterion for all sizes) and a dip of at least
      ``split_min_dip_px`` (the mask outline is only known to a pixel) and of
      ``split_outline_sigma * smoothing_px * noise / contrast`` px (the outline's
      position error at low contrast-to-noise, ``contrast`` the pair's lower
      signal peak);
    * contrast: the same saddle / peak on the smoothed particle signal; a dip
      deeper than ``split_sigma * noise`` separates a faint
      particle from a darker neighbour even when the outline shows no waist.

    A pair is merged when neither cue separates it; merges are transitive
    (connected components of the merge graph).
    """
    n = int(labels.max())
    if n < 2:
        return labels
    pa_list, pb_list, sd_list, si_list = [], [], [], []
    for a, b, sl_a, sl_b in (
        (labels[:, :-1], labels[:, 1:], np.s_[:, :-1], np.s_[:, 1:]),
        (labels[:-1, :], labels[1:, :], np.s_[:-1, :], np.s_[1:, :]),
    ):
        sel = (a != b) & (a > 0) & (b > 0)
        la, lb = a[sel], b[sel]
        pa_list.append(np.minimum(la, lb))
        pb_list.append(np.maximum(la, lb))
        sd_list.append(np.minimum(dist[sl_a][sel], dist[sl_b][sel]))
        si_list.append(np.minimum(intensity[sl_a][sel], intensity[sl_b][sel]))
    pa = np.concatenate(pa_list).astype(np.int64)
    pb = np.concatenate(pb_list).astype(np.int64)
    if pa.size == 0:
        return labels
    uniq, inv = np.unique(pa * (n + 1) + pb, return_inverse=True)
    ua, ub = np.divmod(uniq, n + 1)
    lower, saddle = [], []
    for values, saddles in ((dist, np.concatenate(sd_list)),
                            (intensity, np.concatenate(si_list))):
        peaks = _label_max(values, labels, n + 1)
        highest = np.full(uniq.size, -np.inf)
        np.maximum.at(highest, inv, saddles.astype(np.float64))
        lower.append(np.minimum(peaks[ua], peaks[ub]))
        saddle.append(highest)
    (d_low, i_low), (d_saddle, i_saddle) = lower, saddle
    # Outline position error ~ edge width * noise / contrast: a waist shallower
    # than that may be carved by noise (a rod at low dose), not by two particles.
    min_dip_px = np.maximum(cfg.split_min_dip_px, cfg.split_outline_sigma * smoothing_px
                            * noise / np.maximum(i_low, 1e-6 * noise))
    shape_apart = (d_low - d_saddle >= min_dip_px) & (d_saddle <= (1.0 - cfg.split_ratio) * d_low)
    keep_apart = shape_apart | (i_low - i_saddle >= cfg.split_sigma * noise)
    merge = ~keep_apart
    if not merge.any():
        return labels
    graph = coo_matrix((np.ones(int(merge.sum())), (ua[merge], ub[merge])), shape=(n + 1, n + 1))
    _, comp = connected_components(graph, directed=False)
    # Component ids -> consecutive labels, background stays 0.
    lut = np.zeros(n + 1, dtype=np.int32)
    _, first = np.unique(comp[1:], return_inverse=True)
    lut[1:] = first + 1
    return lut[labels]


def _overview(img: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """4x area-averaged copy, flattened (large-scale trend removed), and smoothed."""
    rows, cols = img.shape
    factor = 4 if min(rows, cols) >= 64 else 1
    small = cv2.resize(img, (max(1, cols // factor), max(1, rows // factor)),
                       interpolation=cv2.INTER_AREA)
    small_flat = small - _blur_large(small, max(small.shape) / 16)
    # One more pixel of blur at this scale (4 px of the frame) averages out
    # phase-contrast speckle of carbon films, which otherwise skews the
    # histogram the wrong way (measured on the 33 ardagen images: 32/33 right
    # without it, 33/33 with it).
    small_smooth = cv2.GaussianBlur(small_flat, (0, 0), 1.0)
    return factor, small_flat, small_smooth


def detect_polarity(image: np.ndarray) -> str:
    """``"dark"`` (particles darker than the background: bright field) or ``"bright"``
    (dark field / HAADF), from the skewness of a 4x-averaged, flattened copy:
    particles are the minority phase, so they make the histogram's long tail.

    Parameters
    ----------
    image : ndarray, shape (rows, cols)
        Gray frame. Not modified.
    """
    _, _, small_smooth = _overview(_as_float(image))
    return "bright" if _skewness(small_smooth) > 0 else "dark"


def segment_classical(image: np.ndarray, pixel_size_nm: float,
                      config: ClassicalConfig | None = None, *,
                      timings: dict[str, float] | None = None) -> np.ndarray:
    """Segment one frame into particle instances with the classical pipeline.

    Parameters
    ----------
    image : ndarray, shape (rows, cols)
        Gray frame (uint8, uint16 or float). Not modified.
    pixel_size_nm : float
        nm per px (> 0); converts every size of ``config``.
    config : ClassicalConfig or None
        Settings; None: defaults.
    timings : dict or None
        If given, filled with milliseconds per stage: ``denoise``, ``threshold``
        (polarity, flattening, stretch, Otsu, morphology), ``watershed``
        (distance, markers, watershed, merging, small-object removal).

    Returns
    -------
    ndarray of int32, shape (rows, cols)
        0 = background, particles 1..N (consecutive).
    """
    px = validate_pixel_size_nm(pixel_size_nm)
    cfg = config or ClassicalConfig()
    t0 = time.perf_counter()
    img = _as_float(image)
    rows, cols = img.shape

    # A 4x area-averaged copy: noise / 4, particles > 4 px kept. It gives the
    # polarity (skewness), the contrast-to-noise ratio and a first estimate of
    # the particle size, which scale the smoothing, background and morphology.
    factor, small_flat, small_smooth = _overview(img)
    if cfg.polarity == "auto":
        bright = _skewness(small_smooth) > 0
    else:
        bright = cfg.polarity == "bright"
    first, _ = _otsu_u8(small_smooth if bright else -small_smooth, *cfg.percentiles)
    size_px, large_px = (factor * d for d in _estimate_diameter_px(first))
    pixel_noise = _pixel_noise(img)
    if cfg.background_nm:
        bg_radius = cfg.background_nm / px
    else:
        bg_radius = max(2.0 * large_px, 16.0)
    bg_radius = min(bg_radius, max(rows, cols) / 2)
    if cfg.smoothing_nm:
        sigma_px = cfg.smoothing_nm / px
    else:
        snr = _contrast_to_noise(pixel_noise, small_flat, cfg.percentiles)
        k = cfg.smoothing_snr
        sigma_px = max(k / snr if snr > 0 else k, cfg.smoothing_fraction * size_px)
        sigma_px = float(np.clip(sigma_px, 1.0, 8.0))
    smooth = cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    t1 = time.perf_counter()
    found = _detect(smooth if bright else -smooth, sigma_px, bg_radius, pixel_noise, cfg)
    redo_s = 0.0
    # How white the noise is: its std after the blur over the white-noise
    # prediction (1: shot noise; ~0.1: support texture, which blurring keeps).
    whiteness = pixel_noise / (2.0 * math.sqrt(math.pi) * sigma_px * found[3])
    if not cfg.smoothing_nm and cfg.target_peak_snr > 0 and whiteness >= _WHITE_NOISE_MIN:
        # Low dose: the typical particle's peak is only a few noise std above the
        # background, so outlines are ragged and faint particles miss their
        # seeds. Smooth again, sigma scaled by the SNR shortfall (for particles
        # wider than the kernel and white noise, the peak SNR grows ~ linearly
        # with sigma). At the default dose the first pass already clears the
        # target, and textured backgrounds (real carbon films) do not average
        # out: nothing changes there.
        gain = min(cfg.target_peak_snr / found[5], cfg.max_smoothing_gain)
        if gain > _MIN_SMOOTHING_GAIN:
            td = time.perf_counter()
            sigma2 = min(sigma_px * gain, 8.0)
            smooth = cv2.GaussianBlur(img, (0, 0), sigma2, borderType=cv2.BORDER_REFLECT)
            redo_s = time.perf_counter() - td
            found = _detect(smooth if bright else -smooth, sigma2, bg_radius, pixel_noise, cfg)
    alarm_z = math.inf
    dist_sigma_px = cfg.dist_sigma_px
    if not cfg.smoothing_nm and whiteness < _WHITE_NOISE_MIN:
        # Noise blobs of this frame at this scale: the false-alarm level from
        # its number of independent resolution elements (random-field theory).
        alarm_z = _false_alarm_sigma(found[1].size, _roughness(*found[1:5]), cfg.false_alarms)
    peaks_z = found[6]
    if (math.isfinite(alarm_z)
            and (peaks_z.size == 0 or np.mean(peaks_z >= alarm_z) < cfg.significant_fraction)):
        # Correlated noise (grain, JPEG blocks; not white, see ``whiteness``)
        # and most regions found are no stronger than the noise blobs a frame
        # of this many independent resolution elements shows anyway: search
        # the scale (and, with ``auto``, the polarity) at which the strongest
        # blob is most significant against the noise at that scale, and keep
        # only regions significant there. Nothing significant: no particles.
        td = time.perf_counter()
        polarities = (bright, not bright) if cfg.polarity == "auto" else (bright,)
        scan = _scan_scales(img, found[0], bg_radius, polarities, cfg)
        if scan is None:
            found = _detect(smooth if bright else -smooth, found[0], bg_radius, pixel_noise,
                            cfg, seed_sigma=alarm_z)
        else:
            sigma2, bright, alarm_z, count = scan
            bg_radius = min(max(bg_radius, 4.0 * sigma2), max(rows, cols) / 2)
            # The best scale is often above the particles' (the correlated
            # noise keeps falling with the scale, the outline blurs): go down
            # by octaves while the strongest blob stays clearly significant
            # (peak >= level + 1 std) and no clear blob is lost.
            finer = sigma2 / 2.0
            while finer >= 2.0 * found[0]:
                z, alarm2, count2 = _significance_at(_smoothed_small(img, finer), finer,
                                                   bg_radius, bright, cfg)
                if z < alarm2 + 1.0 or count2 < count:
                    break
                sigma2, alarm_z, count, finer = finer, alarm2, count2, finer / 2.0
            smooth = _blur_large(img, sigma2) if sigma2 >= 4 else cv2.GaussianBlur(
                img, (0, 0), sigma2, borderType=cv2.BORDER_REFLECT)
            found = _detect(smooth if bright else -smooth, sigma2, bg_radius, pixel_noise,
                            cfg, seed_sigma=alarm_z)
            # The noise bends the outline over ~ the smoothing scale: wiggles
            # that long are not waists between particles, so the distance
            # that seeds the split is smoothed at that scale too (on
            # samem_nanorod it had cut 2 of the 12 rods in two).
            dist_sigma_px = max(dist_sigma_px, sigma2)
        redo_s += time.perf_counter() - td
    sigma_px, flat, mode, sigma, mask = found[:5]

    morph_px = (cfg.morphology_nm / px if cfg.morphology_nm
                else max(1.0, cfg.smoothing_fraction * size_px))
    if morph_px >= 0.5:
        k = _disk(morph_px)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, k)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k)
    if cfg.fill_holes:
        mask = _fill_holes(mask)
    if cfg.edge_fraction > 0 and not cfg.snap_to_edges:
        # Trim each region to edge_fraction of its own peak before splitting: the
        # noise-level outline bridges gaps and fills the waists between touching
        # particles that the distance transform needs to see.
        n_pre, pre = cv2.connectedComponents(mask, connectivity=8)
        pre, _ = _snap_to_edges(pre, flat - np.float32(mode), cfg.edge_fraction, sigma_px)
        mask = (pre > 0).astype(np.uint8)
    t2 = time.perf_counter()

    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    n_regions, regions = cv2.connectedComponents(mask, connectivity=8)
    smooth_dist = cv2.GaussianBlur(dist, (0, 0), dist_sigma_px)
    markers = _markers(smooth_dist, None, mask)
    # Split lines at half resolution when particles are large enough (median
    # > 16 px): the watershed is the costliest stage and scales with the pixels.
    ws_factor = 2 if size_px >= cfg.watershed_half_res_px else 1
    labels, box, in_ws = _watershed_multi(dist, markers, regions, n_regions, ws_factor)
    contrast = flat - np.float32(mode)
    if box is not None:
        # Only regions that went through the watershed can hold weak splits or
        # a faint particle beside a dark one: merge and re-trim those pixels.
        signal = cv2.GaussianBlur(contrast[box], (0, 0), 1.0)
        sub = _merge_weak_splits(np.where(in_ws, labels[box], 0), smooth_dist[box], signal,
                                 cfg, sigma, sigma_px)
        if not cfg.snap_to_edges:
            # Outline: a fixed fraction of each particle's own peak contrast.
            sub, _ = _snap_to_edges(sub, contrast[box], cfg.edge_fraction, sigma_px)
        # Merged ids restart at 1: shift them above every id outside the box.
        sub = np.where(sub > 0, sub + int(labels.max()), 0)
        labels[box] = np.where(in_ws, sub, labels[box])
    if cfg.snap_to_edges:
        # Steepest-edge level (flat-topped particles), one level for the frame.
        labels, _ = _snap_to_edges(labels, contrast)

    # Remove small objects (equivalent diameter under the floor).
    min_d_px = max(cfg.min_diameter_nm / px, 2.0)
    min_area = math.pi * min_d_px**2 / 4
    counts = np.bincount(labels.ravel())
    keep = counts >= min_area
    keep[0] = False
    lut = np.zeros(counts.size, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    labels = lut[labels]
    t3 = time.perf_counter()
    if timings is not None:
        timings["denoise"] = (t1 - t0 + redo_s) * 1e3
        timings["threshold"] = (t2 - t1 - redo_s) * 1e3
        timings["watershed"] = (t3 - t2) * 1e3
    return labels


class ClassicalSegmenter:
    """:class:`etemlive.segment.Segmenter` running :func:`segment_classical` on the CPU."""

    name = "classical"
    device = "cpu"

    def __init__(self, config: ClassicalConfig | None = None) -> None:
        self.config = config or ClassicalConfig()
        #: Milliseconds per stage of the last call (see :func:`segment_classical`).
        self.last_timings: dict[str, float] = {}

    def segment(self, image: np.ndarray, pixel_size_nm: float) -> np.ndarray:
        """Instance labels (int32) of one frame; see :func:`segment_classical`."""
        timings: dict[str, float] = {}
        labels = segment_classical(image, pixel_size_nm, self.config, timings=timings)
        self.last_timings = timings
        return labels
