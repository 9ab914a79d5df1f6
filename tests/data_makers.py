"""Writers for small test files in formats whose own libraries cannot write them.

Velox .emd is HDF5, written with h5py following the layout Thermo Fisher's Velox
uses (``/Version`` JSON, ``/Data/Image/<uuid>/Data`` as (rows, cols, frames) with
one chunk per frame, ``Metadata`` as a JSON string stored in a uint8 column). FEI
TIA .ser and Gatan .dm3 are binary formats written here byte by byte from their
published descriptions (TIA series-file spec by C. Boothroyd; the DM3 tag-file
layout as documented by the DM3 reader projects). Each test also reads these files
with RosettaSciIO, an independent implementation, so a writer bug cannot hide.
"""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------- Velox emd


def write_velox_emd(
    path: Path,
    stack: np.ndarray,
    *,
    pixel_size_m: float,
    frame_time_s: float,
    detector: str = "HAADF",
) -> Path:
    """Write ``stack`` (frames, rows, cols) as a Velox EMD image series."""
    import h5py

    frames, rows, cols = stack.shape
    meta = {
        "BinaryResult": {
            "PixelSize": {"width": repr(pixel_size_m), "height": repr(pixel_size_m)},
            "PixelUnitX": "m",
            "PixelUnitY": "m",
            "Offset": {"x": "0", "y": "0"},
            "DetectorIndex": "0",
        },
        "Detectors": {"Detector-0": {"DetectorName": detector, "ExposureTime": "0.001"}},
        "Scan": {"FrameTime": repr(frame_time_s)},
        "Acquisition": {"AcquisitionStartDatetime": {"DateTime": "1700000000"}},
        "Instrument": {"InstrumentClass": "Titan"},
    }
    meta_bytes = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "Version", data=np.array([json.dumps({"format": "Velox", "version": "11"}).encode()])
        )
        group = f.create_group(f"Data/Image/{uuid.uuid4().hex}")
        group.create_dataset(
            "Data", data=np.ascontiguousarray(np.moveaxis(stack, 0, -1)),
            chunks=(rows, cols, 1),
        )
        # Velox stores the metadata JSON once per frame, one column per frame.
        column = np.zeros((meta_bytes.size + 16, frames), dtype=np.uint8)
        column[: meta_bytes.size, :] = meta_bytes[:, None]
        group.create_dataset("Metadata", data=column)
    return path


# ----------------------------------------------------------------------------- FEI ser

_SER_TYPE = {np.dtype("uint8"): 1, np.dtype("uint16"): 2, np.dtype("uint32"): 3,
             np.dtype("int8"): 4, np.dtype("int16"): 5, np.dtype("int32"): 6,
             np.dtype("float32"): 7, np.dtype("float64"): 8}


def write_ser(
    path: Path,
    stack: np.ndarray,
    *,
    pixel_size_m: float,
    frame_interval_s: float | None = None,
    valid_frames: int | None = None,
) -> Path:
    """Write ``stack`` (frames, rows, cols) as a TIA series file, version 0x0220.

    Layout: 34-byte header (byte order 0x4949, series id 0x0197, version 0x0220,
    data type 0x4122 = 2-D elements, tag type 0x4152 = time only, total / valid
    element counts, offset-array offset as uint64, number of dimensions), one
    dimension record (size, calibration offset / delta / element, description,
    units), then per frame a 2-D element (calibration X, Y, data type, sizes, pixels
    stored bottom row first) followed by its tag, and finally the data and tag
    offset arrays (uint64 each).
    """
    frames, rows, cols = stack.shape
    valid = frames if valid_frames is None else valid_frames
    dtype = np.dtype(stack.dtype).newbyteorder("<")
    desc, units = b"Time", (b"s" if frame_interval_s else b"")
    out = bytearray()
    out += struct.pack("<HHHIIII", 0x4949, 0x0197, 0x0220, 0x4122, 0x4152, frames, valid)
    offset_array_pos = len(out)
    out += struct.pack("<QI", 0, 1)  # offset-array offset (patched below), 1 dimension
    out += struct.pack("<iddii", frames, 0.0, float(frame_interval_s or 1.0), 0, len(desc))
    out += desc + struct.pack("<i", len(units)) + units
    data_offsets, tag_offsets = [], []
    for i in range(frames):
        data_offsets.append(len(out))
        out += struct.pack("<ddiddiHII", 0.0, pixel_size_m, 0, 0.0, pixel_size_m, 0,
                           _SER_TYPE[np.dtype(stack.dtype)], cols, rows)
        out += np.ascontiguousarray(stack[i][::-1]).astype(dtype).tobytes()
        tag_offsets.append(len(out))
        out += struct.pack("<HHI", 0x4152, 0, 1700000000 + i)
    struct.pack_into("<Q", out, offset_array_pos, len(out))
    out += np.asarray(data_offsets, dtype="<u8").tobytes()
    out += np.asarray(tag_offsets, dtype="<u8").tobytes()
    Path(path).write_bytes(bytes(out))
    return Path(path)


# ----------------------------------------------------------------------------- Gatan dm3

# DM tag encodings of numpy dtypes (array elements) and DM ImageData.DataType codes.
_DM_ENC = {np.dtype("int16"): 2, np.dtype("int32"): 3, np.dtype("uint16"): 4,
           np.dtype("uint32"): 5, np.dtype("float32"): 6, np.dtype("float64"): 7,
           np.dtype("int8"): 9, np.dtype("uint8"): 10}
_DM_IMAGE_TYPE = {np.dtype("int16"): 1, np.dtype("float32"): 2, np.dtype("uint8"): 6,
                  np.dtype("int32"): 7, np.dtype("int8"): 9, np.dtype("uint16"): 10,
                  np.dtype("uint32"): 11, np.dtype("float64"): 12}


class _Unnamed(list):
    """A DM tag group whose entries have no names (Dimensions, ImageList, ...)."""


def _dm3_value(value: object, parts: list[bytes]) -> None:
    """One DM3 data tag body after its name: '%%%%', info array (big-endian), data (LE)."""
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        info = [20, _DM_ENC[np.dtype(value.dtype)], arr.size]
        payload = arr.data  # no copy of the (large) pixel block
    elif isinstance(value, str):  # DM stores text as an array of UTF-16 code units
        codes = np.frombuffer(value.encode("utf-16-le"), dtype="<u2")
        info, payload = [20, 4, codes.size], codes.tobytes()
    elif isinstance(value, bool):
        info, payload = [8], struct.pack("<B", value)
    elif isinstance(value, int):
        info, payload = [3], struct.pack("<i", value)
    elif isinstance(value, float):
        info, payload = [6], struct.pack("<f", value)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as a DM tag")
    parts += [b"%%%%", struct.pack(f">I{len(info)}I", len(info), *info), payload]


def _dm3_group(items: dict | _Unnamed, parts: list[bytes]) -> None:
    entries = list(items.items() if isinstance(items, dict) else (("", v) for v in items))
    parts.append(struct.pack(">BBI", 0, 1, len(entries)))
    for name, value in entries:
        label = name.encode("latin-1")
        is_group = isinstance(value, dict | _Unnamed)
        parts.append(struct.pack(">BH", 20 if is_group else 21, len(label)) + label)
        if is_group:
            _dm3_group(value, parts)
        else:
            _dm3_value(value, parts)


def write_dm3(
    path: Path,
    data: np.ndarray,
    *,
    scale: float,
    units: str,
    frame_scale: float = 1.0,
    frame_units: str = "",
) -> Path:
    """Write a 2-D image or a (frames, rows, cols) stack as a DigitalMicrograph 3 file.

    DM3: a 16-byte header (version 3, size, byte order 1 = little-endian data) then
    one root tag group. The image lives in ``ImageList/<unnamed>/ImageData`` with
    ``Data`` (pixel array), ``DataType``, ``PixelDepth``, ``Dimensions`` (X, Y[, Z]
    as unnamed longs) and ``Calibrations/Dimension`` (Origin, Scale, Units per axis).
    Tag headers are big-endian; tag data follow the header's byte order.
    """
    dtype = np.dtype(data.dtype)
    dims = list(data.shape[::-1])  # DM lists X (columns) first
    calibrations = [{"Origin": 0.0, "Scale": float(scale), "Units": units}] * 2
    if data.ndim == 3:
        calibrations.append({"Origin": 0.0, "Scale": float(frame_scale), "Units": frame_units})
    image = {
        "ImageData": {
            "Calibrations": {
                "Brightness": {"Origin": 0.0, "Scale": 1.0, "Units": ""},
                "Dimension": _Unnamed(calibrations),
                "DisplayCalibratedUnits": True,
            },
            "Data": np.ascontiguousarray(data),
            "DataType": _DM_IMAGE_TYPE[dtype],
            "Dimensions": _Unnamed(int(d) for d in dims),
            "PixelDepth": dtype.itemsize,
        },
        "ImageTags": {"etemlive": {"written by": "tests/data_makers.py"}},
        "Name": Path(path).stem,
    }
    parts: list[bytes] = []
    _dm3_group({"ImageList": _Unnamed([image])}, parts)
    parts.append(bytes(8))  # DM3 files end with 8 zero bytes
    size = sum(memoryview(p).nbytes for p in parts)
    with open(path, "wb") as fh:
        fh.write(struct.pack(">III", 3, size + 4, 1))
        for part in parts:
            fh.write(part)
    return Path(path)
