"""The etemlive ZeroMQ wire format (v1): encode, decode and validate one message.

A frame is a two-part ZeroMQ message: a UTF-8 JSON header, then the raw pixel
buffer (C order, little-endian). A series is closed by a one-part ``end`` message.
Nothing else travels on the wire (no pickle). ``docs/protocol.md`` is the full text.

Decoding never copies the pixels: the image is ``np.frombuffer`` on the received
buffer (read-only), so the cost of a message is independent of its size apart
from the transport itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError
from .frames import Frame

#: Protocol tag every header carries.
PROTOCOL = "etemlive/1"

#: Default limit on one frame's pixel buffer (bytes); larger frames are rejected.
MAX_FRAME_BYTES = 64 * 2**20

#: Limit on the JSON header (bytes); it is a few hundred bytes in practice.
MAX_HEADER_BYTES = 64 * 2**10

#: Wire dtype names -> little-endian numpy dtypes.
WIRE_DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("<u1"),
    "uint16": np.dtype("<u2"),
    "float32": np.dtype("<f4"),
}

#: Every ``ProtocolError.kind`` the decoder can report (stable, used as counter keys).
ERROR_KINDS = (
    "not_json",
    "bad_protocol",
    "bad_kind",
    "missing_field",
    "bad_type",
    "bad_frame",
    "bad_timestamp",
    "bad_dtype",
    "bad_shape",
    "too_large",
    "length_mismatch",
    "parts",
    "bad_pixel_size",
)


class ProtocolError(InputError):
    """A message that does not follow the protocol.

    Parameters
    ----------
    kind : str
        Short machine-readable reason (one of :data:`ERROR_KINDS`, or a
        receiver-specific kind such as ``"backwards"``); counters are keyed by it.
    message : str
        One readable line.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class EndOfSeries:
    """The ``end`` message: the publisher has sent the last frame of ``series``.

    Attributes
    ----------
    series : str
        Name of the series that ended.
    n_frames : int
        Number of frame messages the publisher sent in that series.
    """

    series: str
    n_frames: int


def _header_bytes(header: dict[str, Any]) -> bytes:
    # allow_nan=False: a NaN would make the header non-standard JSON.
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_frame(frame: Frame) -> list[bytes | memoryview]:
    """Encode a frame as the two parts of a ZeroMQ message.

    Parameters
    ----------
    frame : Frame
        2-D uint8, uint16 or float32 image with its metadata.

    Returns
    -------
    parts : list
        ``[header, pixels]``: the JSON header (bytes) and a memoryview on the
        image's buffer. The image is not copied when it is C-contiguous and
        little-endian (the usual case); the caller must not modify it until sent.

    Raises
    ------
    InputError
        If the image is not 2-D or has a dtype the protocol does not carry.
    """
    image = np.asarray(frame.image)
    if image.ndim != 2:
        raise InputError(f"a frame must be a 2-D image, got shape {image.shape}")
    name = image.dtype.name
    if name not in WIRE_DTYPES:
        raise InputError(
            f"frame dtype {image.dtype} is not carried by {PROTOCOL}: convert to uint8, uint16 or float32"
        )
    wire = WIRE_DTYPES[name]
    if image.dtype != wire or not image.flags.c_contiguous:
        image = np.ascontiguousarray(image, dtype=wire)  # only copies when needed
    pixel_size = frame.pixel_size_nm
    header = {
        "protocol": PROTOCOL,
        "kind": "frame",
        "series": str(frame.series),
        "frame": int(frame.index),
        "timestamp_s": float(frame.timestamp_s),
        "shape": [int(image.shape[0]), int(image.shape[1])],
        "dtype": name,
        "pixel_size_nm": None if pixel_size is None else float(pixel_size),
    }
    try:
        head = _header_bytes(header)
    except ValueError:
        raise InputError(
            f"frame {frame.index}: timestamp_s and pixel_size_nm must be finite numbers"
        ) from None
    # cast("B"): a flat byte view, which every transport accepts without copying.
    return [head, memoryview(image).cast("B")]


def encode_end(series: str, n_frames: int) -> list[bytes]:
    """Encode the one-part ``end`` message closing ``series`` after ``n_frames`` frames."""
    header = {"protocol": PROTOCOL, "kind": "end", "series": str(series), "n_frames": int(n_frames)}
    return [_header_bytes(header)]


def _buffer(part: Any) -> memoryview:
    """A memoryview on one message part (bytes, memoryview or zmq.Frame) without copying."""
    buf = getattr(part, "buffer", None)  # zmq.Frame exposes its data as .buffer
    view = memoryview(buf if buf is not None else part)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _field(header: dict[str, Any], name: str) -> Any:
    if name not in header:
        raise ProtocolError("missing_field", f"header has no {name!r} field")
    return header[name]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_header(part: Any) -> dict[str, Any]:
    view = _buffer(part)
    if len(view) > MAX_HEADER_BYTES:
        raise ProtocolError("too_large", f"header of {len(view)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(view.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("not_json", "header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("not_json", "header is JSON but not an object")
    tag = _field(header, "protocol")
    if tag != PROTOCOL:
        raise ProtocolError("bad_protocol", f"protocol tag {tag!r} is not {PROTOCOL!r}")
    return header


def decode(
    parts: Sequence[Any],
    *,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    received_s: float | None = None,
) -> Frame | EndOfSeries:
    """Decode and validate one message.

    Parameters
    ----------
    parts : sequence of bytes, memoryview or zmq.Frame
        The message parts as received (``recv_multipart(copy=False)``).
    max_frame_bytes : int
        Largest accepted pixel buffer in bytes (default 64 MiB).
    received_s : float or None
        ``time.perf_counter()`` at receipt, stored in the frame.

    Returns
    -------
    Frame or EndOfSeries
        A frame whose ``image`` is a read-only view on the received buffer, or
        the end of a series.

    Raises
    ------
    ProtocolError
        With a short ``kind`` when any field or the buffer length is wrong.
    """
    if len(parts) == 0:
        raise ProtocolError("parts", "empty message")
    header = _parse_header(parts[0])
    kind = _field(header, "kind")
    series = _field(header, "series")
    if not isinstance(series, str):
        raise ProtocolError("bad_type", f"series must be a string, got {type(series).__name__}")
    if kind == "end":
        if len(parts) != 1:
            raise ProtocolError("parts", f"an end message has 1 part, got {len(parts)}")
        n_frames = _field(header, "n_frames")
        if not _is_int(n_frames) or n_frames < 0:
            raise ProtocolError("bad_type", f"n_frames must be an integer >= 0, got {n_frames!r}")
        return EndOfSeries(series, n_frames)
    if kind != "frame":
        raise ProtocolError("bad_kind", f"kind {kind!r} is neither 'frame' nor 'end'")
    if len(parts) != 2:
        raise ProtocolError("parts", f"a frame message has 2 parts, got {len(parts)}")

    index = _field(header, "frame")
    if not _is_int(index):
        raise ProtocolError("bad_type", f"frame must be an integer, got {index!r}")
    if index < 0:
        raise ProtocolError("bad_frame", f"frame number {index} is negative")
    timestamp_s = _field(header, "timestamp_s")
    if not _is_number(timestamp_s):
        raise ProtocolError("bad_type", f"timestamp_s must be a number, got {timestamp_s!r}")
    if not math.isfinite(timestamp_s):
        raise ProtocolError("bad_timestamp", f"timestamp_s {timestamp_s!r} is not finite")
    dtype_name = _field(header, "dtype")
    if not isinstance(dtype_name, str) or dtype_name not in WIRE_DTYPES:
        raise ProtocolError("bad_dtype", f"dtype {dtype_name!r} is not uint8, uint16 or float32")
    dtype = WIRE_DTYPES[dtype_name]
    shape = _field(header, "shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(_is_int(n) and n > 0 for n in shape)
    ):
        raise ProtocolError("bad_shape", f"shape must be [rows, cols] of positive integers, got {shape!r}")
    n_bytes = shape[0] * shape[1] * dtype.itemsize  # Python ints: no overflow on huge shapes
    if n_bytes > max_frame_bytes:
        raise ProtocolError(
            "too_large", f"frame of {n_bytes} bytes exceeds the limit of {max_frame_bytes} bytes"
        )
    pixel_size_nm = _field(header, "pixel_size_nm")
    if pixel_size_nm is not None:
        if not _is_number(pixel_size_nm) or not math.isfinite(pixel_size_nm) or pixel_size_nm <= 0:
            raise ProtocolError(
                "bad_pixel_size", f"pixel_size_nm must be positive and finite or null, got {pixel_size_nm!r}"
            )
        pixel_size_nm = float(pixel_size_nm)

    data = _buffer(parts[1])
    if len(data) != n_bytes:
        raise ProtocolError(
            "length_mismatch",
            f"buffer has {len(data)} bytes, shape {shape} x {dtype_name} needs {n_bytes}",
        )
    image = np.frombuffer(data, dtype=dtype).reshape(shape)
    return Frame(
        index=index,
        timestamp_s=float(timestamp_s),
        pixel_size_nm=pixel_size_nm,
        image=image,
        series=series,
        received_s=received_s,
    )
