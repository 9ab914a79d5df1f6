"""U-Net runtimes behind one interface, and :func:`make_segmenter`.

Every runner has ``name``, ``device`` and ``predict(batch) -> maps``: a float32
``(N, 1, H, W)`` batch of normalized frames (H, W multiples of 16) in, float32
``(N, 2, H, W)`` probabilities out (channel 0 particle, channel 1 normalized
distance; see :mod:`etemlive.segment.unet`). Runners:

- :class:`OnnxRunner`: ONNX Runtime, CPU (and its CUDA provider where installed);
- :class:`TorchRunner`: torch fp32 on CPU or CUDA (the reference);
- :class:`TorchCudaRunner`: torch on CUDA tuned for throughput: FP16, channels-last,
  one CUDA graph per input shape, pinned host buffers, batches of queued frames;
- :class:`etemlive.segment.tensorrt.TensorRTRunner`: a TensorRT engine built from
  the ONNX file and cached as a plan (``etemlive build-engine``).

:class:`UNetSegmenter` wraps a runner into the :class:`~etemlive.segment.Segmenter`
protocol: normalization, padding, tiling with blended overlaps for large frames,
and :func:`~etemlive.segment.instances.maps_to_instances`.

Pixel size: the network sees the frame at its native sampling. It was trained
over particle diameters of ~4 to ~85 px (diameters 1-100 nm at 0.05-2 nm/px,
the simulator choosing the pixel size so particles fall in that range), so it is
scale-robust inside that range and no resampling is done; ``pixel_size_nm`` is
validated and used only by measurement downstream.

Heavy imports (torch, tensorrt) happen only when such a backend is chosen.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ..config import OUTLINES
from ..errors import BackendUnavailable, InputError
from ..frames import validate_pixel_size_nm
from .instances import (
    half_contrast_outlines,
    instances_and_regions,
    keep_consistent_contrast,
)

#: Backends accepted by :func:`make_segmenter` (and the CLI's ``--backend``).
BACKENDS = ("auto", "tensorrt", "onnx", "torch", "classical")
#: Default folder of shipped weights (``<repo>/engines``).
DEFAULT_ENGINES_DIR = Path(__file__).resolve().parents[3] / "engines"
SIZE_MULTIPLE = 16
MIN_SIZE_PX = 32
ONNX_REBUILD_HINT = "rebuild it with `python tools/export_onnx.py` (from engines/unet.pt)"


class Runner(Protocol):
    """A U-Net runtime: ``predict`` float32 (N,1,H,W) -> float32 (N,2,H,W)."""

    name: str
    device: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


# ---------------------------------------------------------------- pre-processing
def normalize_frame(
    image: np.ndarray, *, low_pct: float = 0.5, high_pct: float = 99.5, dark_field: bool | None = None
) -> np.ndarray:
    """Robust per-frame normalization to bright-field polarity: background ~1, particles ~0.

    Percentiles ``low_pct``/``high_pct`` map to 0/1. Polarity is made canonical: a
    dark-field / HAADF frame (bright particles on a dark background) is inverted, so
    the network only ever sees dark particles and bright grains of a carbon film are
    never taken for dark-field particles (they were, on real bright-field images).
    The polarity is decided by :func:`dark_field_polarity` unless ``dark_field`` is given.
    Percentiles are taken on a strided subsample (~65k px) so a 2048^2 frame costs
    a few ms; values are clipped to [-0.5, 1.5] to tame hot pixels.

    Parameters
    ----------
    image : ndarray (H, W)
        Any real dtype.
    dark_field : bool or None
        True: invert (bright particles); False: keep; None: decide from the frame.

    Returns
    -------
    ndarray (H, W) float32

    Raises
    ------
    InputError
        Not 2-D, empty, or containing NaN / inf.
    """
    img = np.asarray(image)
    check_frame(img)
    img = img.astype(np.float32, copy=False)
    step = max(1, int(np.sqrt(img.size / 65536)))
    lo, hi = np.percentile(img[::step, ::step], [low_pct, high_pct])
    scale = 1.0 / max(float(hi - lo), 1e-6)
    if dark_field is None:
        dark_field = dark_field_polarity(img)
    if dark_field:
        out = (np.float32(hi) - img) * np.float32(scale)  # invert to bright field
    else:
        out = (img - np.float32(lo)) * np.float32(scale)
    return np.clip(out, -0.5, 1.5, out=out)


def dark_field_polarity(image: np.ndarray) -> bool:
    """True when the frame's particles are brighter than its background (dark field / HAADF).

    The classical pipeline's decision (:func:`etemlive.segment.classical.detect_polarity`):
    the sign of the skewness of a 4x area-averaged copy with the large-scale trend
    removed (particles are the minority phase, so they make the long tail). Through
    stage 2 the U-Net compared the 0.5 / 99.5 % tails of the raw pixels, which shot
    noise decides on its own (Poisson skewness ``1 / sqrt(counts)``: a long bright
    tail at a few e-/px) and so does strong correlated noise: the tail rule inverted
    all 34 low-dose (10 e-/px) simulator frames checked (seeds 3004-3005) and all 12
    ``samem_nanorod`` frames, and 28 % of the stage-2 training tiles. The skewness
    rule: 102 / 102 simulator frames at all three doses, 20 / 20 ``msa_sintering``,
    33 / 33 ``ardagen_catalysts``, ``samem_nanorod`` 9 / 12 at native sampling and
    12 / 12 binned 2x or 4x (where the scale check analyses it). ~3 ms per 1024^2 frame.
    """
    from .classical import detect_polarity

    return detect_polarity(image) == "bright"


def normalize_frames_torch(x, dark_field):
    """:func:`normalize_frame` of a (N, H, W) float32 torch tensor on its own device (GPU path).

    Same percentiles (linear interpolation, strided ~65k px subsample) and clip to
    [-0.5, 1.5]; ``dark_field`` (N bools, from :func:`dark_field_polarity` on the
    host) says which frames to invert.
    """
    import torch

    n, h, w = x.shape
    probs = torch.tensor([0.005, 0.995], device=x.device)
    step = max(1, int(np.sqrt(h * w / 65536)))
    q = torch.quantile(x[:, ::step, ::step].reshape(n, -1), probs, dim=1)
    scale = 1.0 / (q[1] - q[0]).clamp_min(1e-6)
    invert = torch.as_tensor(np.asarray(dark_field, bool), device=x.device)
    sign = torch.where(invert, -scale, scale).view(n, 1, 1)
    origin = torch.where(invert, q[1], q[0]).view(n, 1, 1)
    return ((x - origin) * sign).clamp_(-0.5, 1.5)


def check_frame(image: np.ndarray) -> None:
    """Raise :class:`InputError` for a frame that is not 2-D real numbers or holds NaN/inf."""
    if image.ndim != 2 or image.size == 0:
        raise InputError(f"a frame must be a non-empty 2-D image, got shape {image.shape}")
    if image.dtype.kind not in "uif":
        raise InputError(f"a frame must hold real numbers, got dtype {image.dtype}")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise InputError("frame contains NaN or infinite pixels; it is skipped")


def pad_to_multiple(image: np.ndarray, multiple: int = SIZE_MULTIPLE, minimum: int = MIN_SIZE_PX) -> np.ndarray:
    """Reflect-pad a 2-D image at the bottom/right to a multiple of ``multiple`` (>= ``minimum``)."""
    h, w = image.shape
    ph = -(-max(h, minimum) // multiple) * multiple - h
    pw = -(-max(w, minimum) // multiple) * multiple - w
    if ph == 0 and pw == 0:
        return image
    if ph < h and pw < w:
        return cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
    return np.pad(image, ((0, ph), (0, pw)), mode="symmetric")  # tiny frames: repeated reflection


def _tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, n - tile, step))
    starts.append(n - tile)
    return starts


def _blend_window(tile: int, overlap: int) -> np.ndarray:
    # Linear ramp over the overlap on each side (floor 1e-3 so image-border tiles keep weight).
    i = np.arange(tile, dtype=np.float32) + 0.5
    ramp = np.clip(np.minimum(i, tile - i) / max(overlap, 1), 1e-3, 1.0)
    return np.outer(ramp, ramp).astype(np.float32)


def predict_tiled(
    runner: Runner, image: np.ndarray, *, tile_px: int, overlap_px: int, batch_size: int = 4
) -> np.ndarray:
    """Predict maps of a large normalized frame tile by tile, blending overlaps.

    Tiles of ``tile_px`` (a multiple of 16) overlap by ``overlap_px``; each tile's
    prediction is weighted by a linear ramp across the overlap, so the result has
    no seams. ``image`` is (H, W) float32, already padded to >= ``tile_px``.

    Returns
    -------
    ndarray (2, H, W) float32
    """
    h, w = image.shape
    th, tw = min(tile_px, h), min(tile_px, w)
    win = _blend_window(tile_px, overlap_px)[:th, :tw]
    acc = np.zeros((2, h, w), np.float32)
    wsum = np.zeros((h, w), np.float32)
    corners = [(y, x) for y in _tile_starts(h, th, overlap_px) for x in _tile_starts(w, tw, overlap_px)]
    buf = np.empty((min(batch_size, len(corners)), 1, th, tw), np.float32)
    for b0 in range(0, len(corners), batch_size):
        chunk = corners[b0 : b0 + batch_size]
        for i, (y, x) in enumerate(chunk):
            buf[i, 0] = image[y : y + th, x : x + tw]
        maps = runner.predict(buf[: len(chunk)])
        for i, (y, x) in enumerate(chunk):
            acc[:, y : y + th, x : x + tw] += maps[i] * win
            wsum[y : y + th, x : x + tw] += win
    acc /= wsum
    return acc


# ---------------------------------------------------------------- segmenter
class UNetSegmenter:
    """The U-Net as a :class:`~etemlive.segment.Segmenter`.

    Parameters
    ----------
    runner : Runner
        Any runtime above.
    max_frame_px : int
        Frames with a side above this (px) are tiled (memory); smaller frames run whole.
    tile_px, overlap_px : int
        Tile side and overlap (px) when tiling.
    threshold, core_threshold, min_area_px
        Passed to :func:`~etemlive.segment.instances.maps_to_instances`.
    workers : int or None
        Threads for the instance step of :meth:`segment_batch` (default: CPU count).
    auto_bin, min_median_diameter_px, max_bin
        Scale check (:meth:`_check_scale`): a frame whose detections have a median
        diameter below ``min_median_diameter_px`` is analysed binned 2x, up to
        ``max_bin``.
    consistent_contrast : bool
        Drop instances whose contrast sign disagrees with the frame's particles
        (:func:`~etemlive.segment.instances.keep_consistent_contrast`).
    outline : {"network", "half-contrast"}
        Where outlines are drawn: the network's edge (the particle's geometric edge, the
        simulator's truth), or trimmed to half of each particle's contrast, the edge
        hand annotations draw (:func:`~etemlive.segment.instances.half_contrast_outlines`;
        docs/model.md "Outline width").
    """

    def __init__(
        self,
        runner: Runner,
        *,
        max_frame_px: int = 2048,
        tile_px: int = 1024,
        overlap_px: int = 96,
        threshold: float = 0.5,
        core_threshold: float = 0.5,
        min_area_px: int = 4,
        workers: int | None = None,
        auto_bin: bool = True,
        min_median_diameter_px: float = 6.0,
        max_bin: int = 4,
        consistent_contrast: bool = True,
        outline: str = "network",
    ) -> None:
        if tile_px % SIZE_MULTIPLE or tile_px < 2 * overlap_px or tile_px < MIN_SIZE_PX:
            raise ValueError(f"tile_px must be a multiple of 16 and >= 2 overlap_px, got {tile_px}")
        self.runner = runner
        self.name = runner.name
        self.device = runner.device
        self.max_frame_px = int(max_frame_px)
        self.tile_px = int(tile_px)
        self.overlap_px = int(overlap_px)
        self.threshold = float(threshold)
        self.core_threshold = float(core_threshold)
        self.min_area_px = int(min_area_px)
        self.workers = workers or os.cpu_count() or 1
        self.auto_bin = bool(auto_bin)
        self.min_median_diameter_px = float(min_median_diameter_px)
        self.max_bin = int(max_bin)
        self.consistent_contrast = bool(consistent_contrast)
        if outline not in OUTLINES:
            raise InputError(f"outline must be one of {', '.join(OUTLINES)}, got {outline!r}")
        self.outline = outline
        self.last_bin = 1  # binning used for the last frame (1 = native)
        # Frames the pipeline should gather per network call: on a GPU a batch of
        # queued frames costs little more than one; a CPU gains nothing from it.
        self.batch_frames = 4 if str(self.device).startswith("cuda") else 1
        self._runner_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"UNetSegmenter(name={self.name!r}, device={self.device!r})"

    # maps ------------------------------------------------------------
    def predict_maps(self, image: np.ndarray) -> np.ndarray:
        """Probability maps (2, H, W) float32 of one raw frame (normalized, padded, tiled here)."""
        return self.predict_maps_batch([image])[0]

    def predict_maps_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Maps (2, H, W) float32 of several frames (same-shape frames run as one batch)."""
        return [m.astype(np.float32) / 255.0 if m.dtype == np.uint8 else m for m in self._maps(images)]

    def _maps(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        # float32 maps, or uint8 maps (probability x 255) from a runner that quantizes on
        # the GPU (a quarter of the bytes to copy back; thresholds on uint8 are cheap).
        # One runner call at a time: runners reuse their buffers / CUDA graphs, and the
        # scale check may call from an instance thread.
        with self._runner_lock:
            return self._maps_unlocked(images)

    def _maps_unlocked(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        if hasattr(self.runner, "predict_frames") and all(
            np.ndim(im) == 2 and max(np.shape(im)) <= self.max_frame_px for im in images
        ):
            return self._predict_on_device(images)
        norm = [normalize_frame(im) for im in images]
        out: list[np.ndarray | None] = [None] * len(norm)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(norm):
            if max(im.shape) > self.max_frame_px:
                padded = pad_to_multiple(im, SIZE_MULTIPLE, max(self.tile_px, MIN_SIZE_PX))
                maps = predict_tiled(self.runner, padded, tile_px=self.tile_px, overlap_px=self.overlap_px)
                out[i] = maps[:, : im.shape[0], : im.shape[1]]
            else:
                groups.setdefault(im.shape, []).append(i)
        min_px = max(MIN_SIZE_PX, getattr(self.runner, "min_size_px", MIN_SIZE_PX))
        max_batch = getattr(self.runner, "max_batch", None) or len(norm)
        for (h, w), idx in groups.items():
            for c0 in range(0, len(idx), max_batch):
                chunk = idx[c0 : c0 + max_batch]
                batch = np.stack([pad_to_multiple(norm[i], SIZE_MULTIPLE, min_px) for i in chunk])[:, None]
                maps = self.runner.predict(batch)
                for j, i in enumerate(chunk):
                    out[i] = maps[j, :, :h, :w]
        return out  # type: ignore[return-value]

    def _predict_on_device(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        # The runner normalizes and pads on the GPU (raw frames in, fewer host passes).
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            im = np.asarray(im)
            check_frame(im)
            groups.setdefault((im.shape, im.dtype.str), []).append(i)
        for idx in groups.values():
            maps = self.runner.predict_frames([np.asarray(images[i]) for i in idx])
            for j, i in enumerate(idx):
                out[i] = maps[j]
        return out  # type: ignore[return-value]

    # labels ----------------------------------------------------------
    def _instances(self, maps: np.ndarray) -> np.ndarray:
        return self._instances_and_regions(maps)[0]

    def _instances_and_regions(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return instances_and_regions(
            maps[0], maps[1], threshold=self.threshold,
            core_threshold=self.core_threshold, min_area_px=self.min_area_px,
        )

    def _labels_checked(self, image: np.ndarray, maps: np.ndarray) -> np.ndarray:
        # scale check + instances, run on the instance thread pool
        return self._check_scale(image, maps)

    def _raw_detection_diameters(self, region_areas_px: np.ndarray) -> np.ndarray:
        """Equivalent diameters (px) of the connected regions of ``prob > threshold``
        (their areas from :func:`~etemlive.segment.instances.instances_and_regions`), at
        least ``min_area_px``: the network's detections before the instance step's
        splits and confidence filters."""
        area = np.asarray(region_areas_px)
        return 2.0 * np.sqrt(area[area >= self.min_area_px] / np.pi)

    def _check_scale(self, image: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """Instance labels of ``image`` from its ``maps``, re-analysed binned 2x (then 4x)
        when the typical detection is implausibly small.

        The network was trained on particles >= ~4 px and on white (shot) noise. On
        real frames with structure at the pixel scale it reads that structure as
        particles: the carbon-film grain of ``msa_sintering`` (60-80 px particles,
        2-4 px grains) and the strong, spatially correlated (JPEG / liquid-cell)
        noise of ``samem_nanorod`` (one 60 x 25 px rod; 450-1 100 noise blobs, median
        diameter ~5 px). A median diameter below ``min_median_diameter_px`` (6)
        over >= 20 raw detections triggers an analysis of the frame binned 2x (area average: noise
        correlated over ~b px becomes ~white again, particles stay), and again at 4x
        if still below; labels are scaled back with nearest-neighbour.
        The decision uses the raw detections (connected regions of ``prob >
        threshold``), not the final instances: the instance step's confidence filters
        remove exactly the small, unsure blobs that show the frame is too fine for
        the network (with them, this check had stopped triggering: samem F1 0.04).
        Measured with raw detections: simulator seeds 3002-3005 (512^2, all
        scenarios and doses) bin only nucleation frames (9 of 36; tiny nuclei, F1
        unchanged: 0.28 / 0.68 / 0.85 -> 0.28 / 0.68 / 0.86 on seeds 3002-3003), every
        other scenario's median is >= 11 px; 2 of the 33 ardagen images are binned
        (medians 5.9 px, thousands of detections), all 12 samem frames (4x), 3 of 20
        msa images (2x).
        """
        b = 1
        h, w = image.shape
        analysed = image
        while True:
            # the instance step labels the raw detections anyway: their sizes come with it
            labels, region_areas_px = self._instances_and_regions(maps)
            if not (self.auto_bin and b < self.max_bin and min(h, w) // (2 * b) >= MIN_SIZE_PX):
                break
            diameter_px = self._raw_detection_diameters(region_areas_px)
            if diameter_px.size < 20 or np.median(diameter_px) >= self.min_median_diameter_px:
                break
            b *= 2
            analysed = cv2.resize(np.asarray(image, np.float32), (w // b, h // b), interpolation=cv2.INTER_AREA)
            maps = self._maps([analysed])[0]
        if self.consistent_contrast:
            thr = self.threshold * 255.0 if maps.dtype == np.uint8 else self.threshold
            labels = keep_consistent_contrast(labels, analysed, maps[0] > thr)
        self.last_bin = b
        if b > 1:
            labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
        if self.outline == "half-contrast":
            labels = half_contrast_outlines(labels, image)
        return labels

    def segment(self, image: np.ndarray, pixel_size_nm: float) -> np.ndarray:
        """int32 instance labels of one frame (0 = background).

        Raises :class:`InputError` for a NaN-containing or non-2-D frame and
        :class:`~etemlive.errors.CalibrationError` for a bad pixel size.
        """
        validate_pixel_size_nm(pixel_size_nm)
        return self._check_scale(np.asarray(image), self._maps([image])[0])

    def segment_batch(self, images: Sequence[np.ndarray], pixel_size_nm: float) -> list[np.ndarray]:
        """Labels of several queued frames: one network batch, instance steps on a thread pool."""
        validate_pixel_size_nm(pixel_size_nm)
        maps = self._maps(images)
        images = [np.asarray(im) for im in images]
        if len(maps) == 1 or self.workers == 1:
            return [self._labels_checked(im, m) for im, m in zip(images, maps, strict=True)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="instances")
        return list(self._pool.map(self._labels_checked, images, maps))

    def segment_stream(
        self, images: Iterable[np.ndarray], pixel_size_nm: float, *, batch_size: int = 4
    ) -> Iterator[np.ndarray]:
        """Labels of a stream of frames, in order, overlapping the network and the instance step.

        Frames are sent to the runner in batches of ``batch_size``; while the runner
        works on batch k+1, a thread pool turns batch k's maps into labels. At most
        two batches are in flight, so memory stays bounded.
        """
        validate_pixel_size_nm(pixel_size_nm)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="instances")
        pending: deque = deque()
        batch: list[np.ndarray] = []

        def flush() -> None:
            for im, maps in zip(batch, self._maps(batch), strict=True):
                pending.append(self._pool.submit(self._labels_checked, np.asarray(im), maps))
            batch.clear()

        for im in images:
            batch.append(im)
            if len(batch) == batch_size:
                flush()
                while len(pending) > 2 * batch_size:
                    yield pending.popleft().result()
        if batch:
            flush()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        """Stop the instance thread pool (if any)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


# ---------------------------------------------------------------- ONNX Runtime
class OnnxRunner:
    """ONNX Runtime runner (CPU, or the CUDA provider when ``device='cuda'`` and installed)."""

    def __init__(self, onnx_path: str | Path, *, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise InputError(f"ONNX model not found: {path}; {ONNX_REBUILD_HINT}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    "ONNX Runtime has no CUDA provider here; install onnxruntime-gpu or use --backend torch"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as err:  # ORT raises its own exception types for corrupt files
            raise InputError(
                f"ONNX model {path} is corrupt or unreadable ({type(err).__name__}); {ONNX_REBUILD_HINT}"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self.name = "onnx"
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N,1,H,W) -> float32 (N,2,H,W) probabilities."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]


# ---------------------------------------------------------------- torch
def _torch_device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}"
    return "cpu"


class TorchRunner:
    """Reference torch runner, fp32, CPU or CUDA."""

    def __init__(self, weights_path: str | Path, *, device: str = "cpu") -> None:
        import torch

        from .unet import UNetProbabilities, load_unet

        self.torch_device = torch.device(device)
        if self.torch_device.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailable("torch sees no CUDA GPU here; use --backend onnx (CPU)")
            # the fp32 reference must be fp32: no TF32 tensor-core rounding in convolutions
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        unet, self.meta = load_unet(weights_path)
        self.model = UNetProbabilities(unet).to(self.torch_device).eval()
        self.name = "torch"
        self.device = _torch_device_name(self.torch_device)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.torch_device)
            return self.model(x).float().cpu().numpy()


class TorchCudaRunner:
    """torch on CUDA tuned for throughput.

    FP16 weights and activations, channels-last memory, one CUDA graph captured per
    input shape (launch overhead gone), page-locked host buffers with asynchronous
    copies, and batches: :meth:`UNetSegmenter.segment_batch` sends queued frames
    of one shape together. Returns float32 maps like every runner.

    Parameters
    ----------
    weights_path : path
        ``engines/unet.pt``.
    device : str
        ``"cuda"`` or ``"cuda:N"``.
    fp16, channels_last, cuda_graphs : bool
        The tunings above (each can be switched off for comparison).
    """

    def __init__(
        self,
        weights_path: str | Path,
        *,
        device: str = "cuda",
        fp16: bool = True,
        channels_last: bool = True,
        cuda_graphs: bool = True,
    ) -> None:
        import torch

        from .unet import UNetProbabilities, fold_batchnorm, load_unet

        if not torch.cuda.is_available():
            raise BackendUnavailable("torch sees no CUDA GPU here; use --backend onnx (CPU)")
        self.torch_device = torch.device(device)
        self.dtype = torch.float16 if fp16 else torch.float32
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs
        unet, self.meta = load_unet(weights_path)
        fold_batchnorm(unet)  # BN folded into the convs: fewer memory passes
        model = UNetProbabilities(unet).to(self.torch_device, dtype=self.dtype).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        torch.backends.cudnn.benchmark = True
        self.name = "torch"
        self.device = _torch_device_name(self.torch_device) + (" fp16" if fp16 else " fp32")
        self.stream = torch.cuda.Stream(self.torch_device)
        self._cache: dict[tuple[int, ...], dict] = {}

    def _slot(self, shape: tuple[int, ...]) -> dict:
        import torch

        slot = self._cache.get(shape)
        if slot is not None:
            return slot
        n, _, h, w = shape
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        slot = {
            "host_in": torch.empty(shape, dtype=torch.float32, pin_memory=True),
            "host_out": torch.empty((n, 2, h, w), dtype=torch.float16 if self.dtype == torch.float16 else torch.float32, pin_memory=True),
            "dev_in": torch.empty(shape, dtype=torch.float32, device=self.torch_device),
        }
        with torch.cuda.stream(self.stream), torch.inference_mode():
            def run() -> torch.Tensor:
                x = slot["dev_in"].to(self.dtype).contiguous(memory_format=fmt)
                return self.model(x).contiguous()

            for _ in range(3):  # warm-up (cudnn autotune) before capture
                slot["dev_out"] = run()
            if self.cuda_graphs:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    slot["dev_out"] = run()
                slot["graph"] = graph
            else:
                slot["run"] = run
        self.stream.synchronize()
        if len(self._cache) >= 8:  # bound GPU memory held by graphs of old shapes
            self._cache.pop(next(iter(self._cache)))
        self._cache[shape] = slot
        return slot

    def predict_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Raw frames of one shape and dtype -> maps (N, 2, H, W) uint8 (probability x 255, a copy).

        Normalization (as :func:`normalize_frame`) and reflect padding run on the
        GPU, and the maps are quantized there to uint8 (error <= 1/510, inside the
        fp16 tolerance): the host copies raw pixels in and a quarter of the fp32
        bytes back. uint16 frames travel as int16 bit patterns (torch has no
        uint16 arithmetic).
        """
        import torch
        import torch.nn.functional as F

        n = len(frames)
        h, w = frames[0].shape
        dt = frames[0].dtype
        if dt not in (np.uint8, np.uint16, np.int16, np.float32):
            frames = [np.asarray(f, np.float32) for f in frames]
            dt = np.dtype(np.float32)
        hp = -(-max(h, MIN_SIZE_PX) // SIZE_MULTIPLE) * SIZE_MULTIPLE
        wp = -(-max(w, MIN_SIZE_PX) // SIZE_MULTIPLE) * SIZE_MULTIPLE
        if hp - h >= h or wp - w >= w:  # tiny frame: reflect padding needs the CPU path
            norm = np.stack([pad_to_multiple(normalize_frame(f)) for f in frames])[:, None]
            return np.rint(self.predict(norm)[:, :, :h, :w] * 255).astype(np.uint8)
        slot = self._slot((n, 1, hp, wp))
        key = ("raw", n, h, w, dt.str)
        raw = self._cache.get(key)
        if raw is None:
            host_dt = np.int16 if dt == np.uint16 else dt
            host = torch.from_numpy(np.empty((n, h, w), host_dt)).pin_memory()
            raw = {"host": host, "dev": torch.empty_like(host, device=self.torch_device)}
            self._cache[key] = raw
        host_np = raw["host"].numpy()
        dark = [dark_field_polarity(f) for f in frames]  # host side, as normalize_frame
        for i, f in enumerate(frames):
            host_np[i] = f.view(np.int16) if dt == np.uint16 else f
        with torch.cuda.stream(self.stream), torch.inference_mode():
            raw["dev"].copy_(raw["host"], non_blocking=True)
            x = raw["dev"]
            x = (x.to(torch.int32) & 0xFFFF).float() if dt == np.uint16 else x.float()
            xn = normalize_frames_torch(x, dark)
            xn = F.pad(xn[:, None], (0, wp - w, 0, hp - h), mode="reflect")
            slot["dev_in"].copy_(xn)
            if "graph" in slot:
                slot["graph"].replay()
            else:
                slot["dev_out"] = slot["run"]()
            if "host_u8" not in raw:
                raw["host_u8"] = torch.empty((n, 2, h, w), dtype=torch.uint8, pin_memory=True)
            q8 = (slot["dev_out"][:, :, :h, :w].float() * 255).round_().to(torch.uint8)
            raw["host_u8"].copy_(q8, non_blocking=True)
        self.stream.synchronize()
        return raw["host_u8"].numpy().copy()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch

        batch = np.ascontiguousarray(batch, np.float32)
        slot = self._slot(tuple(batch.shape))
        slot["host_in"].numpy()[...] = batch
        with torch.cuda.stream(self.stream), torch.inference_mode():
            slot["dev_in"].copy_(slot["host_in"], non_blocking=True)
            if "graph" in slot:
                slot["graph"].replay()
            else:
                slot["dev_out"] = slot["run"]()
            slot["host_out"].copy_(slot["dev_out"], non_blocking=True)
        self.stream.synchronize()
        return slot["host_out"].numpy().astype(np.float32)


# ---------------------------------------------------------------- factory
def _has_nvidia_driver() -> bool:
    # Cheap check before importing torch/tensorrt (an import of torch costs seconds).
    if os.environ.get("ETEMLIVE_ASSUME_GPU") == "1":
        return True
    marks = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0")
    return any(Path(m).exists() for m in marks) or shutil.which("nvidia-smi") is not None


def _cuda_available() -> bool:
    if not _has_nvidia_driver() or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def make_segmenter(
    backend: str = "auto",
    *,
    engines_dir: str | Path | None = None,
    device: str | None = None,
    **options,
):
    """Build the segmenter for ``backend``.

    Parameters
    ----------
    backend : {"auto", "tensorrt", "onnx", "torch", "classical"}
        ``auto`` picks the fastest available: a TensorRT plan (tensorrt installed
        and a GPU), else the tuned torch CUDA runner (GPU), else ONNX Runtime (CPU).
    engines_dir : path, optional
        Folder holding ``unet.pt`` / ``unet.onnx`` / plans (default: the shipped ``engines/``).
    device : str, optional
        ``"cpu"`` or ``"cuda[:N]"``; default: the GPU when the backend can use one.
    **options
        Passed to :class:`UNetSegmenter` (``max_frame_px``, ``tile_px``, ``core_threshold`` ...).

    Raises
    ------
    InputError
        Unknown backend; missing or corrupt weights / ONNX (one line with the fix).
    BackendUnavailable
        The backend cannot run here (no GPU, package not installed).
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    engines = Path(engines_dir) if engines_dir is not None else DEFAULT_ENGINES_DIR
    if backend == "classical":
        from .classical import ClassicalSegmenter

        return ClassicalSegmenter()
    if backend == "auto":
        if device is None or device.startswith("cuda"):
            if importlib.util.find_spec("tensorrt") is not None and _cuda_available():
                try:
                    return make_segmenter("tensorrt", engines_dir=engines, device=device, **options)
                except BackendUnavailable:
                    pass
            if _cuda_available():
                return make_segmenter("torch", engines_dir=engines, device=device or "cuda", **options)
        return make_segmenter("onnx", engines_dir=engines, device="cpu", **options)
    if backend == "onnx":
        return UNetSegmenter(OnnxRunner(engines / "unet.onnx", device=device or "cpu"), **options)
    if backend == "torch":
        if importlib.util.find_spec("torch") is None:
            raise BackendUnavailable("torch is not installed; `pip install etemlive[torch]` or use --backend onnx")
        dev = device or ("cuda" if _cuda_available() else "cpu")
        if dev.startswith("cuda"):
            return UNetSegmenter(TorchCudaRunner(engines / "unet.pt", device=dev), **options)
        return UNetSegmenter(TorchRunner(engines / "unet.pt", device=dev), **options)
    # tensorrt
    from .tensorrt import TensorRTRunner

    options.setdefault("max_frame_px", TensorRTRunner.max_size_px)
    return UNetSegmenter(TensorRTRunner.from_onnx(engines / "unet.onnx", device=device or "cuda"), **options)


def time_call(fn, *args, repeat: int = 5, warmup: int = 1) -> list[float]:
    """Wall times (s) of ``repeat`` calls after ``warmup`` calls (benchmark helper)."""
    for _ in range(warmup):
        fn(*args)
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        out.append(time.perf_counter() - t0)
    return out


def build_engine(onnx_path: str | Path | None = None, out_path: str | Path | None = None, fp16: bool = True) -> Path:
    """Build the TensorRT plan of the ONNX model (``etemlive build-engine``); see :mod:`.tensorrt`.

    ``onnx_path`` defaults to the shipped ``engines/unet.onnx``; ``out_path`` to the
    cache name (GPU, TensorRT version, precision, ONNX hash) beside it.
    """
    from .tensorrt import build_engine as _build

    return _build(onnx_path or DEFAULT_ENGINES_DIR / "unet.onnx", out_path, fp16=fp16)
