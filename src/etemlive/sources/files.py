"""Movie readers: every supported file format as a streamed :class:`FrameSource`.

``open_movie(path)`` picks a reader by extension (or by the file's magic bytes when
the extension is unknown) and returns a context-managed source that yields one
:class:`~etemlive.frames.Frame` at a time. No reader loads the whole movie:
uncompressed TIFF, MRC and FEI ser frames are fetched with one positioned read each
(not memory-mapped, so resident memory stays at about one frame), compressed TIFF
is decoded page by page, dm3/dm4 frames are read at the data offset RosettaSciIO's
tag parser finds, HDF5 files (Velox / NCEM emd, HyperSpy hspy) are sliced one frame
at a time, videos are decoded frame by frame and image folders read one file per frame.

Pixel size (nm/px) and frame interval (s) come from the file's metadata where the
format has them; values the caller passes override them. A frame that cannot be
read mid-movie raises :class:`~etemlive.errors.InputError` from ``read_frame(i)``;
iteration records it in ``failed_frames`` and goes on with the next frame.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import threading
import time
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..frames import FRAME_DTYPES, Frame, validate_frame_interval_s, validate_pixel_size_nm

__all__ = [
    "IMAGE_EXTENSIONS",
    "SUPPORTED_EXTENSIONS",
    "MovieReader",
    "as_frame_image",
    "length_to_nm",
    "open_movie",
    "time_to_s",
]

_log = logging.getLogger(__name__)

#: Extensions of single images, also the files taken from an image folder.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

_TIFF_EXT = (".tif", ".tiff", ".btf", ".tf8")
_DM_EXT = (".dm3", ".dm4")
_VIDEO_EXT = (".mp4", ".avi", ".mov", ".mkv")
_MRC_EXT = (".mrc", ".mrcs", ".st", ".ali", ".rec")
_KIND_BY_EXT: dict[str, str] = {
    **{e: "tiff" for e in _TIFF_EXT},
    ".dm3": "dm",
    ".dm4": "dm",
    ".emd": "emd",
    ".ser": "ser",
    ".emi": "emi",
    **{e: "mrc" for e in _MRC_EXT},
    ".hspy": "hspy",
    **{e: "video" for e in _VIDEO_EXT},
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".bmp": "image",
}

#: Every file extension ``open_movie`` accepts (a folder of images is accepted too).
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".ome.tif", ".ome.tiff", *_KIND_BY_EXT)

# ITU-R BT.601 luma weights, the ones OpenCV and Pillow use for RGB -> gray.
_LUMA_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_LENGTH_NM: dict[str, float] = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometers": 1.0,
    "nanometre": 1.0,
    "μm": 1e3,  # NFKC turns the micro sign (U+00B5) into Greek mu (U+03BC)
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "mm": 1e6,
    "cm": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "meters": 1e9,
    "metre": 1e9,
    "å": 0.1,  # NFKC turns the Angstrom sign (U+212B) into U+00C5, lowered here
    "a": 0.1,
    "angstrom": 0.1,
    "angstroms": 0.1,
    "pm": 1e-3,
}

_TIME_S: dict[str, float] = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "ms": 1e-3,
    "μs": 1e-6,
    "us": 1e-6,
    "ns": 1e-9,
    "min": 60.0,
    "h": 3600.0,
}


# ----------------------------------------------------------------------------- helpers


def _one_line(text: object) -> str:
    """Collapse whitespace so an error message is a single readable line."""
    return " ".join(str(text).split())


def _norm_unit(unit: object) -> str:
    text = unicodedata.normalize("NFKC", str(unit)).strip()
    # ImageJ writes the micro sign as a literal escape in its description.
    text = text.replace("\\u00B5", "μ").replace("\\u00b5", "μ")
    return text.lower()


def length_to_nm(value: float, unit: object) -> float | None:
    """Convert a length to nm, or return None when it is unusable.

    Parameters
    ----------
    value : float
        Length in ``unit``.
    unit : str
        Unit name: nm, µm / um / micron, mm, m, Å / A / angstrom, pm (any case).

    Returns
    -------
    float or None
        The length in nm, or None for an unknown unit (pixels, reciprocal space)
        or a non-finite / non-positive value.
    """
    factor = _LENGTH_NM.get(_norm_unit(unit))
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if factor is None or not math.isfinite(value) or value <= 0:
        return None
    return value * factor


def time_to_s(value: float, unit: object) -> float | None:
    """Convert a duration to seconds; None for an unknown unit or a value <= 0."""
    factor = _TIME_S.get(_norm_unit(unit))
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if factor is None or not math.isfinite(value) or value <= 0:
        return None
    return value * factor


def as_frame_image(image: np.ndarray, *, bgr: bool = False) -> np.ndarray:
    """Return ``image`` as a 2-D gray frame of dtype uint8, uint16 or float32.

    Parameters
    ----------
    image : ndarray
        (rows, cols) gray, (rows, cols, 3|4) RGB(A), (rows, cols, 2) gray + alpha,
        (3|4, rows, cols) planar RGB(A), or a structured RGBA array (Gatan).
    bgr : bool
        True when the channels are in OpenCV's B, G, R order.

    Returns
    -------
    ndarray, shape (rows, cols)
        uint8, uint16 and float32 pass through (a copy only where needed); RGB
        becomes luminance (ITU-R BT.601) in the same dtype; float64 / float16 become
        float32; other integers become uint16 when all values lie in 0..65535, else
        float32.

    Raises
    ------
    InputError
        For boolean, complex or non-image (not 2-D after conversion) data.
    """
    a = np.asarray(image)
    if a.dtype.names is not None:  # Gatan RGBA as a structured dtype
        if all(c in a.dtype.names for c in ("R", "G", "B")):
            a = np.stack([a["R"], a["G"], a["B"]], axis=-1)
            bgr = False
        else:
            raise InputError(f"unsupported structured pixel type {a.dtype}")
    if a.dtype == np.bool_:
        raise InputError("boolean (mask) images are not movies: give the raw image data")
    if a.dtype.kind == "c":
        raise InputError("complex images (FFT / DPC data) are not supported: give real images")
    if a.dtype.kind not in "uif":
        raise InputError(f"unsupported pixel type {a.dtype}")
    if a.ndim == 3 and a.shape[-1] not in (2, 3, 4) and a.shape[0] in (3, 4):
        a = np.moveaxis(a, 0, -1)  # planar (samples first) RGB
    if a.ndim == 3 and a.shape[-1] == 2:
        a = a[..., 0]  # gray + alpha
    elif a.ndim == 3 and a.shape[-1] in (3, 4):
        a = _to_gray(a, bgr=bgr)
    if a.ndim != 2:
        raise InputError(
            f"frame has shape {tuple(a.shape)}: expected a 2-D gray image (rows, cols) or RGB"
        )
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype in FRAME_DTYPES:
        return np.ascontiguousarray(a)
    if a.dtype.kind == "f":
        return a.astype(np.float32)
    # Other integers: keep exact counts in uint16 when they fit, else float32.
    if a.size and (a.min() < 0 or a.max() > 65535):
        return a.astype(np.float32)
    return a.astype(np.uint16)


def _to_gray(rgb: np.ndarray, *, bgr: bool) -> np.ndarray:
    """Luminance of an (rows, cols, 3|4) array, alpha ignored, dtype kept."""
    weights = _LUMA_RGB[::-1] if bgr else _LUMA_RGB
    gray = rgb[..., :3].astype(np.float32, copy=False) @ weights
    if rgb.dtype.kind in "ui":
        info = np.iinfo(rgb.dtype)
        np.rint(gray, out=gray)
        np.clip(gray, info.min, info.max, out=gray)
        return gray.astype(rgb.dtype)
    return gray


def _natural_key(name: str) -> list[Any]:
    """Sort key that puts frame_2 before frame_10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _movie_name(path: Path) -> str:
    name = path.name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem if path.suffix else name


# ----------------------------------------------------------------------------- base


class MovieReader:
    """A movie file opened for streaming: a :class:`~etemlive.frames.FrameSource`.

    Use :func:`open_movie` rather than the subclasses. Iterating yields frames in
    order; a frame that cannot be read is logged, recorded in ``failed_frames`` as
    ``(index, message)`` and skipped. ``read_frame(i)`` reads any frame and raises
    :class:`~etemlive.errors.InputError` naming the index instead.

    Attributes
    ----------
    name : str
        Movie name (file name without extension), also each frame's ``series``.
    path : Path
        The file or folder.
    format : str
        Short format name ("tiff", "mrc", "dm", "emd", "ser", "hspy", "video", "images").
    pixel_size_nm : float or None
        nm per pixel: the caller's value, else the metadata's, else None.
    pixel_size_source : {"user", "metadata", None}
    frame_interval_s : float or None
        Seconds between frames: the caller's value, else the metadata's.
    n_frames : int
        Number of frames the file declares.
    shape : tuple of int
        (rows, cols) of every frame.
    dtype : numpy.dtype
        dtype of frame 0 after conversion (uint8, uint16 or float32).
    failed_frames : list of (int, str)
        Frames the latest iteration could not read, with the reason.
    open_warnings : list of str
        Damage found at open that may hide frames the file no longer indexes.
    """

    format = ""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        pixel_size_nm: float | None = None,
        frame_interval_s: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = _movie_name(self.path)
        self.failed_frames: list[tuple[int, str]] = []
        #: Problems found while opening (e.g. a damaged TIFF IFD chain), one line each.
        self.open_warnings: list[str] = []
        self.n_frames = 0
        self.shape: tuple[int, int] = (0, 0)
        self.dtype = np.dtype(np.uint8)
        self._closed = False
        self._timestamps_s: Sequence[float] | None = None
        self._meta_pixel_size_nm: float | None = None
        self._meta_frame_interval_s: float | None = None
        # Validate the caller's values before touching the file.
        user_px = None if pixel_size_nm is None else validate_pixel_size_nm(pixel_size_nm)
        user_dt = None if frame_interval_s is None else validate_frame_interval_s(frame_interval_s)
        try:
            self._open()
            if self.n_frames <= 0:
                raise InputError(f"{self.path.name}: holds no frames (empty stack)")
            first_index, first = self._probe_first_frame()
        except InputError:
            self.close()
            raise
        except Exception as err:  # a parser tripping on damaged bytes, whatever its type
            self.close()
            what = f"{self.format} file" if self.format != "images" else "image folder"
            raise InputError(
                _one_line(f"{self.path.name}: not a readable {what} ({type(err).__name__}: "
                          f"{err}); is it corrupt or truncated?")
            ) from None
        except BaseException:
            self.close()
            raise
        self.shape = (int(first.shape[0]), int(first.shape[1]))
        self.dtype = first.dtype
        # Served once by read_frame(first_index), so opening costs no extra read.
        self._first: tuple[int, np.ndarray] | None = (first_index, first)
        if user_px is not None:
            self.pixel_size_nm: float | None = user_px
            self.pixel_size_source: str | None = "user"
        elif self._meta_pixel_size_nm is not None:
            self.pixel_size_nm = self._meta_pixel_size_nm
            self.pixel_size_source = "metadata"
        else:
            self.pixel_size_nm = None
            self.pixel_size_source = None
        if user_dt is not None:
            self.frame_interval_s: float | None = user_dt
            self._timestamps_s = None  # the caller's interval defines the time axis
        else:
            self.frame_interval_s = self._meta_frame_interval_s
        if self._timestamps_s is not None and len(self._timestamps_s) != self.n_frames:
            self._timestamps_s = None

    # -- to implement -------------------------------------------------------------
    def _open(self) -> None:
        """Open the file, read metadata, set n_frames and the ``_meta_*`` fields."""
        raise NotImplementedError

    def _read_raw(self, index: int) -> np.ndarray:
        """Return frame ``index`` as stored (any dtype, maybe RGB); may raise anything."""
        raise NotImplementedError

    def _release(self) -> None:
        """Close file handles."""

    _bgr = False

    # -- public -------------------------------------------------------------------
    def timestamp_s(self, index: int) -> float:
        """Time of frame ``index`` in s: metadata, else index * interval, else index."""
        if self._timestamps_s is not None:
            return float(self._timestamps_s[index])
        if self.frame_interval_s is not None:
            return index * self.frame_interval_s
        return float(index)

    def read_frame(self, index: int) -> Frame:
        """Read one frame.

        Parameters
        ----------
        index : int
            0-based frame number, ``0 <= index < n_frames``.

        Raises
        ------
        InputError
            When the frame cannot be read (truncated or corrupt data); the message
            names the frame index.
        """
        if self._closed:
            raise InputError(f"{self.name}: movie is closed")
        index = int(index)
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} out of range 0..{self.n_frames - 1}")
        received_s = time.perf_counter()
        if self._first is not None and self._first[0] == index:
            image, self._first = self._first[1], None
        else:
            image = self._read_image(index)
        if image.shape != self.shape:
            raise InputError(
                f"{self.name}: frame {index} has shape {image.shape}, "
                f"the movie's frames are {self.shape}"
            )
        return Frame(
            index=index,
            timestamp_s=self.timestamp_s(index),
            pixel_size_nm=self.pixel_size_nm,
            image=image,
            series=self.name,
            received_s=received_s,
        )

    def _probe_first_frame(self, max_tries: int = 8) -> tuple[int, np.ndarray]:
        """Read the first readable frame (shape and dtype come from it).

        A damaged frame 0 alone does not reject the movie: it is reported when
        iterated, like any other unreadable frame.
        """
        first_error: InputError | None = None
        for index in range(min(self.n_frames, max_tries)):
            try:
                return index, self._read_image(index)
            except InputError as err:
                first_error = first_error or err
        assert first_error is not None
        raise first_error

    def _read_image(self, index: int) -> np.ndarray:
        """Read and convert one frame; every failure becomes an InputError naming it."""
        try:
            raw = self._read_raw(index)
        except InputError as err:
            raise InputError(_one_line(f"{self.name}: frame {index}: {err}")) from None
        except Exception as err:  # a decoder failing on bad bytes, whatever its type
            raise InputError(
                _one_line(f"{self.name}: frame {index} cannot be read "
                          f"(corrupt or truncated file?): {type(err).__name__}: {err}")
            ) from None
        return self._convert(raw, index)

    def _convert(self, raw: np.ndarray, index: int) -> np.ndarray:
        try:
            return as_frame_image(raw, bgr=self._bgr)
        except InputError as err:
            raise InputError(_one_line(f"{self.name}: frame {index}: {err}")) from None

    def __iter__(self) -> Iterator[Frame]:
        self.failed_frames.clear()  # failures of the latest pass
        for index in range(self.n_frames):
            try:
                frame = self.read_frame(index)
            except InputError as err:
                self._record_failure(index, str(err))
                continue
            yield frame

    def _record_failure(self, index: int, message: str) -> None:
        self.failed_frames.append((index, message))
        _log.warning("%s", message)

    def __len__(self) -> int:
        return self.n_frames

    def close(self) -> None:
        """Release the file; idempotent."""
        if not self._closed:
            self._closed = True
            self._first = None
            self._release()

    def __enter__(self) -> MovieReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} {self.n_frames} frames {self.shape} "
            f"{self.dtype} pixel_size_nm={self.pixel_size_nm} ({self.pixel_size_source}) "
            f"frame_interval_s={self.frame_interval_s}>"
        )


# ----------------------------------------------------------------------------- TIFF


class TiffMovie(MovieReader):
    """TIFF / OME-TIFF / ImageJ stacks via tifffile.

    Uncompressed contiguous data are read frame by frame with positioned reads;
    other files are decoded page by page. Metadata: ImageJ ``unit`` + XResolution and ``finterval``; OME
    ``PhysicalSizeX`` (+ unit), ``TimeIncrement`` and per-plane ``DeltaT``; a JSON
    ImageDescription with ``pixel_size_nm`` / ``frame_interval_s`` (our simulator);
    the FEI / Thermo Fisher SEM tag's ``[Scan] PixelWidth``.
    Plain TIFF resolution tags are ignored: most writers fill them with 72 dpi.
    """

    format = "tiff"

    def _open(self) -> None:
        import tifffile

        # tifffile logs (not raises) when the IFD chain is cut: keep those lines.
        catcher = _LogCatcher()
        tiff_log = logging.getLogger("tifffile")
        tiff_log.addHandler(catcher)
        try:
            self._tif = tifffile.TiffFile(self.path)
            series_list = self._tif.series
            len(self._tif.pages)  # walks every IFD, so damage shows up now
        except Exception as err:
            raise InputError(
                _one_line(f"{self.path.name}: not a readable TIFF file ({err}); "
                          "is it corrupt or truncated?")
            ) from None
        finally:
            tiff_log.removeHandler(catcher)
        if catcher.messages:
            self.open_warnings = [_one_line(m) for m in catcher.messages]
            _log.warning("%s: damaged TIFF structure (%s): frames may be missing",
                         self.path.name, self.open_warnings[0])
        if not series_list or not len(series_list[0].shape):
            raise InputError(f"{self.path.name}: TIFF holds no images (empty stack)")
        series = series_list[0]
        axes, shape = series.axes, tuple(series.shape)
        sample_axes = [i for i, a in enumerate(axes) if a == "S"]
        image_axes = {axes.rfind("Y"), axes.rfind("X"), *sample_axes}
        if -1 in image_axes:
            image_axes = {len(shape) - 2, len(shape) - 1, *sample_axes}
        frame_dims = [(axes[i], shape[i]) for i in range(len(shape)) if i not in image_axes]
        extra = [(a, n) for a, n in frame_dims if n > 1]
        if len(extra) > 1:
            raise InputError(
                f"{self.path.name}: {len(shape)}-D TIFF (axes {axes}, shape {shape}) has more "
                "than one frame axis; a movie needs one (split channels / z first)"
            )
        self.n_frames = int(np.prod([n for _, n in frame_dims], dtype=np.int64))
        self._frame_shape = tuple(shape[i] for i in range(len(shape)) if i in image_axes)
        self._frames: _FileFrames | None = None
        self._pages: Sequence[Any] | None = None
        if self.n_frames == 0:
            return
        offset = series.dataoffset
        # A cut file loses its IFD chain: tifffile then sees fewer pages than the
        # writer declared. Trust the declaration so the lost frames are reported.
        declared = self._declared_frames()
        page0 = self._tif.pages.first
        if declared > self.n_frames and len(self._frame_shape) == page0.ndim:
            _log.warning("%s: %d frames declared, %d found: file truncated or corrupt",
                         self.path.name, declared, self.n_frames)
            if page0.compression == 1 and page0.is_contiguous and (
                    self._tif.is_imagej or self.n_frames == 1):
                offset = page0.dataoffsets[0]  # ImageJ stacks are contiguous by design
            self.n_frames = declared
        if offset is not None:
            dtype = np.dtype(series.dtype).newbyteorder(self._tif.byteorder)
            self._frames = _FileFrames(self.path, offset=int(offset), dtype=dtype,
                                       frame_shape=self._frame_shape, n_frames=self.n_frames,
                                       what="TIFF")
        else:
            pages = series.pages
            if len(pages) > self.n_frames:
                raise InputError(
                    f"{self.path.name}: TIFF series of {self.n_frames} frames is stored in "
                    f"{len(pages)} pages; unsupported layout"
                )
            self._pages = pages
        try:
            self._read_tiff_metadata(series)
        except Exception as err:  # noqa: BLE001 - calibration is optional, pixels are not
            self.open_warnings.append(_one_line(f"metadata ignored: {err}"))
            _log.warning("%s: unreadable metadata ignored (%s)", self.path.name, err)

    def _declared_frames(self) -> int:
        """Frame count the writer put in ImageJ or tifffile metadata, else 0."""
        md = self._tif.imagej_metadata if self._tif.is_imagej else None
        if md and isinstance(md.get("images"), int):
            channels = md.get("channels", 1) if isinstance(md.get("channels"), int) else 1
            return md["images"] // max(channels, 1)
        for meta in self._tif.shaped_metadata or ():
            shape = meta.get("shape") if isinstance(meta, dict) else None
            if isinstance(shape, list) and len(shape) > len(self._frame_shape):
                return int(np.prod(shape[: len(shape) - len(self._frame_shape)]))
        return 0

    def _read_raw(self, index: int) -> np.ndarray:
        if self._frames is not None:
            return self._frames.read(index)
        pages = self._pages
        page = pages[index] if pages is not None and index < len(pages) else None
        if page is None:
            raise InputError("TIFF page missing (corrupt or truncated file)")
        return page.asarray()

    def _release(self) -> None:
        frames = getattr(self, "_frames", None)
        if frames is not None:
            frames.close()
        self._pages = None
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()

    # -- metadata ---------------------------------------------------------------
    def _read_tiff_metadata(self, series: Any) -> None:
        tif = self._tif
        page0 = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
        if tif.is_ome:
            self._ome_metadata(tif.ome_metadata)
        if tif.is_imagej:
            self._imagej_metadata(tif.imagej_metadata or {}, page0)
        for md in tif.shaped_metadata or ():
            self._json_metadata(md)
        if self._meta_pixel_size_nm is None and tif.is_fei:
            # Thermo Fisher (FEI) SEM / FIB TIFFs: an INI block with the pixel width in m.
            scan = (tif.fei_metadata or {}).get("Scan", {})
            self._meta_pixel_size_nm = length_to_nm(scan.get("PixelWidth", 0), "m")
        if self._meta_pixel_size_nm is None or self._meta_frame_interval_s is None:
            desc = page0.description or ""
            if desc.lstrip().startswith("{"):
                try:
                    self._json_metadata(json.loads(desc))
                except (ValueError, TypeError):
                    pass

    def _json_metadata(self, md: Any) -> None:
        if not isinstance(md, dict):
            return
        if self._meta_pixel_size_nm is None and "pixel_size_nm" in md:
            self._meta_pixel_size_nm = length_to_nm(md["pixel_size_nm"], "nm")
        if self._meta_frame_interval_s is None and "frame_interval_s" in md:
            self._meta_frame_interval_s = time_to_s(md["frame_interval_s"], "s")
        ts = md.get("timestamps_s")
        if self._timestamps_s is None and isinstance(ts, list) and len(ts) == self.n_frames:
            self._timestamps_s = [float(t) for t in ts]

    def _imagej_metadata(self, md: dict[str, Any], page0: Any) -> None:
        unit = md.get("unit")
        tag = page0.tags.get("XResolution")
        if unit and tag is not None and self._meta_pixel_size_nm is None:
            num, den = tag.value
            if num > 0:
                self._meta_pixel_size_nm = length_to_nm(den / num, unit)
        if self._meta_frame_interval_s is None and md.get("finterval"):
            self._meta_frame_interval_s = time_to_s(md["finterval"], md.get("tunit", "s"))

    def _ome_metadata(self, xml: str | None) -> None:
        if not xml:
            return
        try:
            root = ET.fromstring(xml)
        except ET.ParseError:
            _log.warning("%s: unreadable OME-XML ignored", self.path.name)
            return
        pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"),
                      None)
        if pixels is None:
            return
        size = pixels.get("PhysicalSizeX")
        if size is not None:
            # OME's default length unit is the micrometre.
            self._meta_pixel_size_nm = length_to_nm(size, pixels.get("PhysicalSizeXUnit", "µm"))
        dt = pixels.get("TimeIncrement")
        if dt is not None:
            self._meta_frame_interval_s = time_to_s(dt, pixels.get("TimeIncrementUnit", "s"))
        times: dict[int, float] = {}
        try:
            for plane in (e for e in pixels if e.tag.endswith("Plane")):
                delta = plane.get("DeltaT")
                factor = time_to_s(1.0, plane.get("DeltaTUnit", "s"))
                if delta is None or factor is None:
                    continue
                # A movie has one non-singleton axis among T, Z, C: the sum is its index.
                index = sum(int(plane.get(k, 0)) for k in ("TheT", "TheZ", "TheC"))
                times[index] = float(delta) * factor
        except ValueError:  # a damaged value: fall back to the interval
            times = {}
        if len(times) == self.n_frames and sorted(times) == list(range(self.n_frames)):
            # Times relative to frame 0, like index * interval.
            self._timestamps_s = [times[i] - times[0] for i in range(self.n_frames)]


class _LogCatcher(logging.Handler):
    """Collects the warnings a library logs while a file is opened."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# ----------------------------------------------------------------------------- MRC


class MrcMovie(MovieReader):
    """MRC image stacks: header via ``mrcfile``, frames by positioned reads; Å -> nm."""

    format = "mrc"

    def _open(self) -> None:
        import mrcfile
        from mrcfile.utils import data_dtype_from_header, data_shape_from_header

        try:
            with mrcfile.open(self.path, mode="r", header_only=True, permissive=False) as mrc:
                header = mrc.header
                dtype = data_dtype_from_header(header)
                shape = tuple(int(n) for n in data_shape_from_header(header))
                offset = int(header.nbytes) + int(header.nsymbt)
                voxel_x_a = float(mrc.voxel_size.x)
        except Exception as err:
            raise InputError(
                _one_line(f"{self.path.name}: not a readable MRC file ({err}); "
                          "is it corrupt or truncated?")
            ) from None
        if len(shape) > 3:
            raise InputError(
                f"{self.path.name}: 4-D MRC data (shape {shape}, e.g. a volume stack or "
                "4D-STEM) is not a movie of 2-D frames"
            )
        if len(shape) == 2:
            shape = (1, *shape)
        self.n_frames = shape[0]
        # mrcfile reports the voxel size in Å; 0 means "not set".
        self._meta_pixel_size_nm = length_to_nm(voxel_x_a, "Å")
        if self.n_frames > 0:
            self._frames = _FileFrames(self.path, offset=offset, dtype=dtype,
                                       frame_shape=shape[1:], n_frames=self.n_frames,
                                       what="MRC")

    def _read_raw(self, index: int) -> np.ndarray:
        return self._frames.read(index)

    def _release(self) -> None:
        frames = getattr(self, "_frames", None)
        if frames is not None:
            frames.close()


class _FileFrames:
    """Frames stored back to back in a file, each read with one positioned read.

    Reading (rather than memory-mapping) keeps the process's resident memory at one
    frame however far a 20 GB movie has been read. A file cut short keeps its
    complete leading frames; asking for a later one raises :class:`InputError`.
    """

    def __init__(self, path: Path, *, offset: int, dtype: np.dtype, frame_shape: tuple[int, ...],
                 n_frames: int, what: str) -> None:
        self.offset, self.dtype, self.frame_shape = int(offset), np.dtype(dtype), frame_shape
        self.frame_bytes = int(np.prod(frame_shape, dtype=np.int64)) * self.dtype.itemsize
        available = max(path.stat().st_size - self.offset, 0)
        self.n_complete = int(min(n_frames, available // max(self.frame_bytes, 1)))
        if self.n_complete == 0:
            raise InputError(
                f"{path.name}: truncated {what}: the pixel data need "
                f"{self.frame_bytes * n_frames} bytes, the file holds {available}"
            )
        if self.n_complete < n_frames:
            _log.warning("%s: truncated %s: only %d of %d frames are complete",
                         path.name, what, self.n_complete, n_frames)
        self._fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def read(self, index: int) -> np.ndarray:
        if index >= self.n_complete:
            raise InputError(
                f"truncated file: only frames 0..{self.n_complete - 1} are complete"
            )
        out = np.empty(self.frame_shape, dtype=self.dtype)
        with self._lock:  # seek + read must not interleave between threads
            self._fh.seek(self.offset + index * self.frame_bytes)
            got = self._fh.readinto(out.reshape(-1).view(np.uint8))
        if got != self.frame_bytes:
            raise InputError("short read: file changed or truncated while open")
        return out

    def close(self) -> None:
        self._fh.close()


# ----------------------------------------------------------------------------- FEI ser


_SER_DTYPES = {1: "<u1", 2: "<u2", 3: "<u4", 4: "<i1", 5: "<i2", 6: "<i4", 7: "<f4", 8: "<f8",
               9: "<c8", 10: "<c16"}
_SER_IMAGE_ELEMENT = 0x4122
_SER_SPECTRUM_ELEMENT = 0x4120
#: 2-D element header: cal. offset, delta, element for X then Y, data type, sizes X, Y.
_SER_ELEMENT_HEADER = struct.Struct("<ddiddiHII")


class SerMovie(MovieReader):
    """FEI / Thermo Fisher TIA ``.ser`` series of 2-D images.

    A streaming reader written from the published TIA series-file layout (header,
    dimension array, data and tag offset arrays, one calibrated element per frame);
    ``rsciio.tia`` reads every element at open, which a long movie cannot afford.
    The calibration delta is in metres; rows are stored bottom-up.
    """

    format = "ser"

    def _open(self) -> None:
        name = self.path.name
        self._fh = open(self.path, "rb")  # noqa: SIM115 - closed in _release
        self._size = self.path.stat().st_size
        head = self._fh.read(30)
        if len(head) < 30:
            raise InputError(f"{name}: truncated FEI .ser file (header incomplete)")
        order, series_id, version, data_type_id, tag_type_id, total, valid = struct.unpack(
            "<HHHIIII", head[:22])
        if order != 0x4949 or series_id != 0x0197:
            raise InputError(f"{name}: not an FEI TIA .ser file (bad magic); is it corrupt?")
        off_fmt = "<I" if version <= 0x0210 else "<Q"
        self._fh.seek(22)
        raw = self._fh.read(struct.calcsize(off_fmt) + 4)
        if len(raw) < struct.calcsize(off_fmt) + 4:
            raise InputError(f"{name}: truncated FEI .ser file (header incomplete)")
        (offset_array_offset,) = struct.unpack(off_fmt, raw[:-4])
        (n_dims,) = struct.unpack("<I", raw[-4:])
        if data_type_id == _SER_SPECTRUM_ELEMENT:
            raise InputError(f"{name}: .ser file holds 1-D spectra, not images")
        if data_type_id != _SER_IMAGE_ELEMENT:
            raise InputError(f"{name}: unknown .ser element type {data_type_id:#06x}")
        if n_dims > 8:
            raise InputError(f"{name}: corrupt FEI .ser header ({n_dims} dimensions)")
        dims = []
        for _ in range(n_dims):
            block = self._fh.read(28)
            if len(block) < 28:
                raise InputError(f"{name}: truncated FEI .ser file (dimension array)")
            size, _cal_offset, cal_delta, _cal_el, desc_len = struct.unpack("<iddii", block)
            desc = self._read_text(desc_len)
            (unit_len,) = struct.unpack("<i", self._fh.read(4).ljust(4, b"\xff"))
            units = self._read_text(unit_len)
            dims.append((size, cal_delta, desc, units))
        if sum(1 for d in dims if d[0] > 1) > 1:
            shape = tuple(d[0] for d in dims)
            raise InputError(
                f"{name}: 4-D .ser data (scan {shape} of 2-D patterns, e.g. 4D-STEM) "
                "is not a movie"
            )
        isz = struct.calcsize(off_fmt)
        self._fh.seek(offset_array_offset)
        table = self._fh.read(isz * total)
        if len(table) < isz * min(valid, total):
            raise InputError(f"{name}: truncated FEI .ser file (offset array missing)")
        offsets = np.frombuffer(table, dtype=off_fmt, count=len(table) // isz)
        self._offsets = offsets[: min(valid, len(offsets))].astype(np.int64)
        self.n_frames = int(len(self._offsets))
        if self.n_frames == 0:
            return
        first = self._element_header(0)
        cal_delta_x = first[1]
        # TIA stores calibrations in SI units (metres).
        self._meta_pixel_size_nm = length_to_nm(cal_delta_x, "m")
        if dims and dims[0][0] > 1:
            self._meta_frame_interval_s = time_to_s(dims[0][1], dims[0][3])

    def _read_text(self, length: int) -> str:
        # Lengths come from the file: a damaged one must not make us read gigabytes.
        if not 0 <= length <= 4096:
            raise InputError(f"{self.path.name}: corrupt FEI .ser header (text length {length})")
        return self._fh.read(length).decode("latin-1")

    def _element_header(self, index: int) -> tuple[Any, ...]:
        offset = int(self._offsets[index])
        self._fh.seek(offset)
        raw = self._fh.read(_SER_ELEMENT_HEADER.size)
        if len(raw) < _SER_ELEMENT_HEADER.size:
            raise InputError("truncated .ser element header")
        return _SER_ELEMENT_HEADER.unpack(raw)

    def _read_raw(self, index: int) -> np.ndarray:
        header = self._element_header(index)
        data_type, size_x, size_y = header[6], header[7], header[8]
        if data_type not in _SER_DTYPES:
            raise InputError(f"unknown .ser pixel type {data_type}")
        dtype = np.dtype(_SER_DTYPES[data_type])
        count = int(size_x) * int(size_y)
        if count * dtype.itemsize > self._size - int(self._offsets[index]):
            raise InputError(f"element of {size_x} x {size_y} pixels runs past the end of the "
                             "file (truncated or corrupt)")
        buf = self._fh.read(count * dtype.itemsize)
        if len(buf) < count * dtype.itemsize:
            raise InputError("truncated .ser element data (file cut short?)")
        # X varies fastest; TIA's origin is the bottom-left corner, so flip rows.
        return np.frombuffer(buf, dtype=dtype).reshape(size_y, size_x)[::-1]

    def _release(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()


# ----------------------------------------------------------------------------- rsciio


def _dask_compute(arr: Any) -> np.ndarray:
    # One frame is small: the synchronous scheduler avoids thread start-up per frame.
    return np.asarray(arr.compute(scheduler="synchronous"))


class _RsciioMovie(MovieReader):
    """Formats read lazily through RosettaSciIO (data stay on disk as dask arrays)."""

    def _load(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _open(self) -> None:
        try:
            signals = self._load()
        except InputError:
            raise
        except Exception as err:
            raise InputError(
                _one_line(f"{self.path.name}: cannot read this {self.format} file ({err}); "
                          "is it corrupt or truncated?")
            ) from None
        images = [s for s in signals if len(_split_axes(s["axes"])[2]) == 2]
        if not images:
            raise InputError(
                f"{self.path.name}: holds no 2-D images (only spectra or other signals)"
            )
        if len(images) > 1:
            _log.info("%s: %d image signals, reading the first (%s)", self.path.name,
                      len(images), images[0].get("metadata", {}).get("General", {}).get("title"))
        signal = images[0]
        data = signal["data"]
        axes, nav, sig = _split_axes(signal["axes"])
        if any(_norm_unit(axes[i].get("units", "")) in ("ev", "kev") for i in sig):
            raise InputError(
                f"{self.path.name}: holds a spectrum image (energy axis), not a movie of images"
            )
        if data.ndim != len(axes):
            raise InputError(f"{self.path.name}: data shape {data.shape} does not match its axes")
        if sum(1 for i in nav if data.shape[i] > 1) > 1:
            raise InputError(
                f"{self.path.name}: {data.ndim}-D data (shape {tuple(data.shape)}, e.g. "
                "4D-STEM) is not a movie: it has more than one navigation axis"
            )
        order = nav + sig
        if order != list(range(data.ndim)):
            data = data.transpose(order)
        self._data = data.reshape((-1, *data.shape[len(nav):]))
        self._raw_data = signal["data"]
        self.n_frames = int(self._data.shape[0])
        x_axis = axes[sig[-1]]
        self._meta_pixel_size_nm = length_to_nm(x_axis.get("scale", 0), x_axis.get("units", ""))
        y_axis = axes[sig[0]]
        y_nm = length_to_nm(y_axis.get("scale", 0), y_axis.get("units", ""))
        if (self._meta_pixel_size_nm and y_nm
                and not math.isclose(y_nm, self._meta_pixel_size_nm, rel_tol=1e-3)):
            _log.warning("%s: non-square pixels (x %.4g nm, y %.4g nm): using x",
                         self.path.name, self._meta_pixel_size_nm, y_nm)
        frame_axes = [axes[i] for i in nav if data.shape[nav.index(i)] > 1]
        if frame_axes:
            ax = frame_axes[0]
            self._meta_frame_interval_s = time_to_s(ax.get("scale", 0), ax.get("units", ""))
        self._signal = signal
        self._direct = self._direct_reader(signal["data"], len(nav), order)

    def _direct_reader(self, raw: Any, n_nav: int, order: list[int]) -> Callable[[int], Any] | None:
        """A frame reader that slices the HDF5 dataset itself, or None.

        A dask ``compute`` costs ~6 ms per frame in graph handling, an h5py slice of
        the same 1024^2 frame ~0.4 ms. Used only for the layouts known here (array
        order as stored; Velox's (rows, cols, frames)) and only after frame 0 read
        both ways agrees, so an unexpected layout falls back to dask.
        """
        ds = _h5_dataset_of(raw)
        if ds is None or ds.dtype != raw.dtype:
            return None
        shape = tuple(raw.shape)
        reader: Callable[[int], Any] | None = None
        if tuple(ds.shape) == shape and order == list(range(len(shape))):
            nav_shape = shape[:n_nav]
            reader = (lambda i: ds[tuple(int(k) for k in np.unravel_index(i, nav_shape))]
                      ) if nav_shape else (lambda i: ds[()])
        elif self.format == "emd" and ds.ndim == 3:
            rows, cols, frames = ds.shape
            if shape == (frames, rows, cols) and order == [0, 1, 2]:
                reader = lambda i: ds[:, :, i]  # noqa: E731 - Velox: (rows, cols, frames)
            elif shape == (rows, cols) and frames == 1:
                reader = lambda i: ds[:, :, 0]  # noqa: E731
        return self._checked(reader)

    def _checked(self, reader: Callable[[int], Any] | None) -> Callable[[int], Any] | None:
        """``reader`` if its frame 0 equals the one dask reads, else None."""
        if reader is None:
            return None
        try:
            agrees = np.array_equal(np.asarray(reader(0)), _dask_compute(self._data[0]))
        except Exception:  # noqa: BLE001 - any doubt: keep the dask path
            agrees = False
        return reader if agrees else None

    def _read_raw(self, index: int) -> np.ndarray:
        if self._direct is not None:
            return np.asarray(self._direct(index))
        return _dask_compute(self._data[index])

    def _release(self) -> None:
        data = getattr(self, "_raw_data", None)
        self._data = self._raw_data = self._direct = self._signal = None
        if data is not None:
            _close_h5_in_graph(data)


def _split_axes(axes: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int],
                                                          list[int]]:
    """Axes in array order, and the indices of the navigation and signal axes.

    Files without a navigation / signal distinction (NCEM EMD marks every axis as
    signal) are read as a stack of 2-D images along their leading axes.
    """
    axes = list(axes)
    if all("index_in_array" in ax for ax in axes):
        axes.sort(key=lambda ax: int(ax["index_in_array"]))
    nav = [i for i, ax in enumerate(axes) if ax.get("navigate", False)]
    sig = [i for i, ax in enumerate(axes) if not ax.get("navigate", False)]
    if not nav and len(sig) > 2:
        nav, sig = sig[:-2], sig[-2:]
    return axes, nav, sig


def _h5_datasets_of(data: Any) -> list[Any]:
    """The HDF5 datasets a lazy rsciio (dask) array reads from."""
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py comes with rsciio's HDF5 readers
        return []
    layers = getattr(getattr(data, "dask", None), "layers", None)
    if layers is None:  # not a dask array
        return []
    # The dataset sits in a small materialized layer ("original-array-..."); the
    # per-chunk layers are not expanded, which would cost O(chunks) for a long movie.
    values = [v for layer in layers.values() if (m := getattr(layer, "mapping", None))
              is not None and len(m) <= 4 for v in m.values()]
    values = [getattr(v, "value", v) for v in values]  # dask >= 2024.12 wraps in DataNode
    return [v for v in values if isinstance(v, h5py.Dataset)]


def _h5_dataset_of(data: Any) -> Any | None:
    datasets = _h5_datasets_of(data)
    return datasets[0] if len(datasets) == 1 else None


def _close_h5_in_graph(data: Any) -> None:
    """Close the HDF5 files a lazy rsciio array keeps open."""
    for ds in _h5_datasets_of(data):
        try:
            ds.file.close()
        except Exception:  # pragma: no cover - already closed
            pass


class DmMovie(_RsciioMovie):
    """Gatan DigitalMicrograph dm3 / dm4: tags via ``rsciio.digitalmicrograph``, frames by
    positioned reads at the pixel-data offset (RosettaSciIO's lazy array as fallback)."""

    format = "dm"

    def _load(self) -> list[dict[str, Any]]:
        from rsciio.digitalmicrograph import file_reader

        try:
            signals = file_reader(str(self.path), lazy=True)
        except ValueError as err:
            if "RGBA" not in str(err):
                raise
            # rsciio cannot map RGB images lazily; those are single snapshots.
            return file_reader(str(self.path), lazy=False)
        out = []
        for s in signals:
            shape = tuple(s["data"].shape)
            if len(shape) == 3:
                # Re-map with one frame per dask chunk so a frame read touches one frame.
                s = next(iter(
                    t for t in file_reader(str(self.path), lazy=True, chunks=(1, *shape[1:]))
                    if tuple(t["data"].shape) == shape
                ), s)
            out.append(s)
        return out


    def _direct_reader(self, raw: Any, n_nav: int, order: list[int]) -> Callable[[int], Any] | None:
        """Positioned reads at the pixel-data offset RosettaSciIO found in the tag tree.

        Through dask a frame costs a few ms of graph handling; a plain read of the
        same bytes ~0.3 ms. Used when the image is stored in C order as one block
        and frame 0 read both ways agrees; else the dask path stays.
        """
        om = self._signal.get("original_metadata") or {}
        tag = om.get("ImageList", {}).get("TagGroup0", {}).get("ImageData", {}).get("Data")
        shape = tuple(int(n) for n in raw.shape)
        if (not isinstance(tag, dict) or "offset" not in tag or order != list(range(len(shape)))
                or raw.dtype.names is not None or raw.dtype.kind == "c"):
            return None
        dtype = np.dtype(raw.dtype).newbyteorder("<" if tag.get("endian") == "little" else ">")
        if int(tag.get("size_bytes", -1)) != int(np.prod(shape)) * dtype.itemsize:
            return None
        try:
            frames = _FileFrames(self.path, offset=int(tag["offset"]), dtype=dtype,
                                 frame_shape=shape[n_nav:], n_frames=int(np.prod(shape[:n_nav])),
                                 what="dm")
        except InputError:
            return None
        reader = self._checked(frames.read)
        if reader is None:
            frames.close()
        else:
            self._dm_frames = frames
        return reader

    def _release(self) -> None:
        frames = getattr(self, "_dm_frames", None)
        if frames is not None:
            frames.close()
        super()._release()


class EmdMovie(_RsciioMovie):
    """Velox (Thermo Fisher) and NCEM .emd files via ``rsciio.emd`` (HDF5, lazy)."""

    format = "emd"

    def _load(self) -> list[dict[str, Any]]:
        from rsciio.emd import file_reader

        return file_reader(str(self.path), lazy=True, select_type="images")


class HspyMovie(_RsciioMovie):
    """HyperSpy .hspy files via ``rsciio.hspy`` (HDF5, lazy)."""

    format = "hspy"

    def _load(self) -> list[dict[str, Any]]:
        from rsciio.hspy import file_reader

        return file_reader(str(self.path), lazy=True)


# ----------------------------------------------------------------------------- video


class VideoMovie(MovieReader):
    """mp4 / avi / mov / mkv decoded frame by frame with OpenCV; fps -> frame interval."""

    format = "video"
    _bgr = True

    def _open(self) -> None:
        import cv2

        self._cv2 = cv2
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise InputError(
                f"{self.path.name}: OpenCV cannot open this video (corrupt, or a codec "
                "it lacks); convert it to a TIFF stack"
            )
        self.n_frames = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        self._meta_frame_interval_s = 1.0 / fps if math.isfinite(fps) and fps > 0 else None
        self._next = 0
        if self.n_frames <= 0:
            raise InputError(f"{self.path.name}: video holds no frames (empty or corrupt)")

    def _read_raw(self, index: int) -> np.ndarray:
        if index != self._next:
            self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, index)
        ok, image = self._cap.read()
        if not ok or image is None:
            self._next = -1  # position unknown: seek next time
            raise InputError("video frame cannot be decoded (truncated or corrupt file?)")
        self._next = index + 1
        return image

    def __iter__(self) -> Iterator[Frame]:
        self.failed_frames.clear()
        misses = 0
        for index in range(self.n_frames):
            try:
                frame = self.read_frame(index)
            except InputError as err:
                self._record_failure(index, str(err))
                misses += 1
                if misses >= 3:
                    # A cut video: every later frame fails the same way; stop seeking.
                    for rest in range(index + 1, self.n_frames):
                        self.failed_frames.append((rest, f"{self.name}: frame {rest}: not "
                                                   "decodable (video ends early)"))
                    _log.warning("%s: video ends early, frames %d..%d missing", self.name,
                                 index + 1, self.n_frames - 1)
                    return
                continue
            misses = 0
            yield frame

    def _release(self) -> None:
        cap = getattr(self, "_cap", None)
        if cap is not None:
            cap.release()


# ----------------------------------------------------------------------------- image folder


class ImageFolderMovie(MovieReader):
    """A folder of PNG / TIFF / JPEG / BMP (or Gatan dm3 / dm4) images, or one image file.

    Frame i is the i-th file sorted so that ``frame_2`` comes before ``frame_10``.
    When the folder itself holds no images its sub-folders are searched, sorted by
    relative path: Gatan's in-situ recorder writes one dm4 per frame under
    ``Hour_00/Minute_00/Second_00/``. The pixel size comes from the first file when
    it is a calibrated TIFF or dm file.
    """

    format = "images"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        files: Sequence[Path] | None = None,
        pixel_size_nm: float | None = None,
        frame_interval_s: float | None = None,
    ) -> None:
        self._files_given = files
        super().__init__(path, pixel_size_nm=pixel_size_nm, frame_interval_s=frame_interval_s)

    def _open(self) -> None:
        if self._files_given is not None:
            files = list(self._files_given)
        else:
            files = _list_images(self.path, recursive=False) or _list_images(
                self.path, recursive=True)
        if not files:
            raise InputError(
                f"folder {self.path} holds no images "
                f"({', '.join(IMAGE_EXTENSIONS + _DM_EXT)})"
            )
        self._files = files
        self.n_frames = len(files)
        first = files[0]
        reader = {**dict.fromkeys(_TIFF_EXT, TiffMovie), **dict.fromkeys(_DM_EXT, DmMovie)}.get(
            first.suffix.lower())
        if reader is not None:
            try:
                with reader(first) as movie:
                    self._meta_pixel_size_nm = movie._meta_pixel_size_nm
            except InputError:
                pass  # reported when frame 0 is read

    def _read_raw(self, index: int) -> np.ndarray:
        path = self._files[index]
        if path.suffix.lower() in _TIFF_EXT:
            import tifffile

            self._bgr = False
            try:
                return tifffile.imread(path, key=0)
            except Exception as err:
                raise InputError(_one_line(f"{path.name}: not a readable TIFF ({err})")) from None
        if path.suffix.lower() in _DM_EXT:
            self._bgr = False
            with DmMovie(path) as movie:  # one small file per frame
                if movie.n_frames != 1:
                    raise InputError(f"{path.name}: holds {movie.n_frames} frames, expected 1")
                return movie.read_frame(0).image
        import cv2

        self._bgr = True
        # imdecode of the bytes instead of imread: works for any path encoding.
        buf = np.fromfile(path, dtype=np.uint8)
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
        if image is None:
            raise InputError(f"{path.name}: not a readable image (corrupt or truncated?)")
        return image


def _list_images(folder: Path, *, recursive: bool) -> list[Path]:
    """Image files of ``folder`` (or its whole tree) in natural order of relative path."""
    suffixes = IMAGE_EXTENSIONS + _DM_EXT
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    files = [p for p in candidates
             if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()]
    return sorted(files, key=lambda p: _natural_key(p.relative_to(folder).as_posix()))


# ----------------------------------------------------------------------------- dispatch


_READERS: dict[str, type[MovieReader]] = {
    "tiff": TiffMovie,
    "mrc": MrcMovie,
    "ser": SerMovie,
    "dm": DmMovie,
    "emd": EmdMovie,
    "hspy": HspyMovie,
    "video": VideoMovie,
}


def _sniff(path: Path) -> str | None:
    """Guess the format from the first bytes, for files with unknown extensions."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return None
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or head[:2] == b"BM":
        return "image"
    if len(head) >= 212 and head[208:212] == b"MAP ":
        return "mrc"
    if head[:4] == b"\x49\x49\x97\x01":
        return "ser"
    if head[:4] in (b"\x00\x00\x00\x03", b"\x00\x00\x00\x04"):
        return "dm"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "hdf5"
    if head[4:8] == b"ftyp" or head[:4] == b"RIFF":
        return "video"
    return None


def _hdf5_kind(path: Path) -> str:
    import h5py

    with h5py.File(path, "r") as f:
        if "Version" in f or "Data" in f:
            return "emd"
        if "Experiments" in f or "file_format" in f.attrs:
            return "hspy"
    return "emd"


def open_movie(
    path: str | os.PathLike[str],
    *,
    pixel_size_nm: float | None = None,
    frame_interval_s: float | None = None,
) -> MovieReader:
    """Open a movie file (or a folder of images) as a streamed frame source.

    Parameters
    ----------
    path : str or Path
        A TIFF / OME-TIFF stack, Gatan .dm3 / .dm4, Velox .emd, FEI .ser, .mrc,
        HyperSpy .hspy, .mp4 / .avi / .mov / .mkv video, a single PNG / JPEG / BMP
        image, or a folder of PNG / TIFF / JPEG images (natural order).
    pixel_size_nm : float, optional
        nm per pixel; overrides the file's metadata (``pixel_size_source="user"``).
        A missing pixel size is not an error here.
    frame_interval_s : float, optional
        Seconds between frames; overrides the metadata's interval and timestamps.

    Returns
    -------
    MovieReader
        A context manager and iterable of :class:`~etemlive.frames.Frame`, with
        ``read_frame(i)``, ``n_frames``, ``shape``, ``dtype``, ``pixel_size_nm``,
        ``pixel_size_source``, ``frame_interval_s`` and ``failed_frames``.

    Raises
    ------
    InputError
        Missing file, unknown format, corrupt or truncated file, 4-D data, empty stack.
    CalibrationError
        ``pixel_size_nm`` not positive and finite.
    """
    # Bad options fail before the file is touched.
    if pixel_size_nm is not None:
        validate_pixel_size_nm(pixel_size_nm)
    if frame_interval_s is not None:
        validate_frame_interval_s(frame_interval_s)
    p = Path(path)
    if not p.exists():
        raise InputError(f"movie not found: {p}")
    options = {"pixel_size_nm": pixel_size_nm, "frame_interval_s": frame_interval_s}
    if p.is_dir():
        return ImageFolderMovie(p, **options)
    kind = _KIND_BY_EXT.get(p.suffix.lower())
    if kind is None:
        kind = _sniff(p)
        if kind == "hdf5":
            kind = _hdf5_kind(p)
        if kind is None:
            raise InputError(
                f"{p.name}: unknown movie format '{p.suffix}'; supported: "
                f"{', '.join(SUPPORTED_EXTENSIONS)} or a folder of images"
            )
    if kind == "image":
        return ImageFolderMovie(p, files=[p], **options)
    if kind == "emi":
        # TIA saves the metadata in NAME.emi and the frames in NAME_1.ser (NAME_2.ser ...
        # for further signals): read the first series.
        series = sorted(p.parent.glob(f"{p.stem}_[0-9]*.ser"), key=lambda q: _natural_key(q.name))
        if not series:
            raise InputError(f"{p.name}: its series file {p.stem}_1.ser is missing; "
                             "copy it next to the .emi file")
        return SerMovie(series[0], **options)
    return _READERS[kind](p, **options)
