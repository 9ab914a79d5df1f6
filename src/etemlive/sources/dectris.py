"""Frames from a DECTRIS detector's SIMPLON ZeroMQ stream (API v1 message format).

A DECTRIS detector control unit (EIGER, EIGER2, QUADRO / ARINA) pushes one
multipart ZeroMQ message per event on a PUSH socket (port 9999 by default):

``dheader-1.0`` (series start)
    part 1 ``{"htype": "dheader-1.0", "series": ID, "header_detail": "basic"|"all"|"none"}``,
    part 2 (unless ``none``) the detector configuration (``x_pixels_in_detector``,
    ``frame_time`` in s, ``nimages``, ``ntrigger``, ``compression`` ...); with
    ``all`` more parts follow (flat field, pixel mask, count-rate table), ignored here.
``dimage-1.0`` (one per image)
    part 1 ``{"htype": "dimage-1.0", "series": ID, "frame": N, "hash": MD5}``,
    part 2 ``{"htype": "dimage_d-1.0", "shape": [x, y], "type": "uint16"|"uint32"|...,
    "encoding": "<"|"lz4<"|"bs16-lz4<"|"bs32-lz4<"|..., "size": BYTES}``,
    part 3 the pixel data, part 4 ``{"htype": "dconfig-1.0", "start_time": NS,
    "stop_time": NS, "real_time": NS}``, optional part 5 an appendix.
``dseries_end-1.0``
    one part ``{"htype": "dseries_end-1.0", "series": ID}``.

``shape`` is ``[x, y]`` (columns, rows): the image is ``(y, x)`` in numpy order.
``bs<bits>-lz4<`` is bitshuffle + LZ4 as in bitshuffle's HDF5 filter: a 12-byte
header (uncompressed size, uint64 big-endian; block size in bytes, uint32
big-endian), then per block a big-endian uint32 compressed size and the LZ4 block,
then the last ``n % 8`` elements uncompressed. LZ4 and bitshuffle come from
``imagecodecs`` (a core dependency), so no extra package is needed.

:class:`DectrisSource` reuses :class:`~etemlive.sources.zmq.ZmqSource`'s receive
thread, queue, drop policy and counters; only the message decoding differs.
Images are converted to the frame dtypes (uint32 counts become float32, exact up
to 2**24 counts). The detector's ``x_pixel_size`` is the physical sensor pitch, not
the specimen's pixel size, so ``pixel_size_nm`` comes from the user.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import imagecodecs
import numpy as np
import zmq

from ..frames import Frame
from ..protocol import MAX_FRAME_BYTES, EndOfSeries, ProtocolError
from .zmq import ZmqSource

#: Image encodings understood (SIMPLON ``encoding`` field; ``<`` = little-endian raw).
ENCODINGS = ("<", "lz4<", "bs8-lz4<", "bs16-lz4<", "bs32-lz4<")

#: SIMPLON ``type`` field -> little-endian dtype on the wire.
SIMPLON_TYPES = {
    "uint8": np.dtype("<u1"),
    "uint16": np.dtype("<u2"),
    "uint32": np.dtype("<u4"),
    "float32": np.dtype("<f4"),
}

_BSHUF_TARGET_BLOCK_BYTES = 8192  # bitshuffle's default block size rule
_BSHUF_MIN_BLOCK_ELEMS = 128


def default_block_elems(itemsize: int) -> int:
    """bitshuffle's default block size in elements for ``itemsize``-byte elements."""
    n = (_BSHUF_TARGET_BLOCK_BYTES // itemsize) // 8 * 8
    return max(n, _BSHUF_MIN_BLOCK_ELEMS)


def _block_sizes(n_elems: int, block_elems: int) -> list[int]:
    """Element counts of the compressed blocks: full blocks, then the remainder rounded down to 8."""
    n_full, left = divmod(n_elems, block_elems)
    sizes = [block_elems] * n_full
    if left - left % 8:
        sizes.append(left - left % 8)
    return sizes


def encode_bslz4(image: np.ndarray, *, block_elems: int = 0) -> bytes:
    """Compress ``image`` as bitshuffle-LZ4 with the 12-byte HDF5-filter header.

    Parameters
    ----------
    image : ndarray
        Any numeric array; its little-endian bytes are compressed in C order.
    block_elems : int
        Block size in elements (multiple of 8); 0 for bitshuffle's default.
    """
    flat = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<")).reshape(-1)
    itemsize = flat.dtype.itemsize
    block_elems = block_elems or default_block_elems(itemsize)
    shuffled = memoryview(imagecodecs.bitshuffle_encode(flat, blocksize=block_elems)).cast("B")
    pieces = [flat.nbytes.to_bytes(8, "big"), (block_elems * itemsize).to_bytes(4, "big")]
    offset = 0
    for n in _block_sizes(flat.size, block_elems):
        block = imagecodecs.lz4_encode(shuffled[offset:offset + n * itemsize], header=False)
        pieces += [len(block).to_bytes(4, "big"), block]
        offset += n * itemsize
    pieces.append(bytes(shuffled[offset:]))  # the last n % 8 elements travel as they are
    return b"".join(pieces)


def decode_bslz4(data: Any, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
    """Decompress bitshuffle-LZ4 data (with its 12-byte header) into an array.

    Parameters
    ----------
    data : bytes-like
        The compressed buffer.
    shape : tuple of int
        Array shape (numpy order).
    dtype : dtype
        Element type (little-endian).

    Raises
    ------
    ValueError
        If the data is truncated, inconsistent with ``shape`` x ``dtype``, or not LZ4.
    """
    dtype = np.dtype(dtype)
    view = memoryview(data).cast("B")
    n_elems = int(np.prod(shape))
    n_bytes = n_elems * dtype.itemsize
    if len(view) < 12:
        raise ValueError(f"bitshuffle-lz4 data of {len(view)} bytes has no 12-byte header")
    total = int.from_bytes(view[:8], "big")
    block_bytes = int.from_bytes(view[8:12], "big")
    if total != n_bytes:
        raise ValueError(f"bitshuffle-lz4 header says {total} bytes, shape x type needs {n_bytes}")
    block_elems = block_bytes // dtype.itemsize
    if block_elems <= 0 or block_elems % 8 or block_bytes % dtype.itemsize:
        raise ValueError(f"bad bitshuffle block size {block_bytes} bytes")
    shuffled = np.empty(n_elems, dtype)  # one buffer per frame, written in place
    out = memoryview(shuffled).cast("B")
    pos, offset = 12, 0
    # One LZ4 call per 8 KiB block (about 1000 per 8 MiB frame), each in C.
    for n in _block_sizes(n_elems, block_elems):
        size = n * dtype.itemsize
        if pos + 4 > len(view):
            raise ValueError("bitshuffle-lz4 data is truncated")
        c = int.from_bytes(view[pos:pos + 4], "big")
        pos += 4
        try:
            block = imagecodecs.lz4_decode(view[pos:pos + c], header=False, out=out[offset:offset + size])
        except imagecodecs.Lz4Error as err:
            raise ValueError(f"corrupt LZ4 block: {err}") from None
        if len(block) != size:
            raise ValueError("an LZ4 block decompressed to the wrong size")
        pos += c
        offset += size
    tail = n_bytes - offset
    if len(view) - pos != tail:
        raise ValueError(f"bitshuffle-lz4 data has {len(view) - pos} trailing bytes, expected {tail}")
    out[offset:] = view[pos:]
    return imagecodecs.bitshuffle_decode(shuffled, blocksize=block_elems).reshape(shape)


def _json(part: Any, what: str) -> dict[str, Any]:
    buf = getattr(part, "buffer", None)
    try:
        value = json.loads(bytes(buf if buf is not None else part))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("not_json", f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError("not_json", f"{what} is JSON but not an object")
    return value


def _bytes(part: Any) -> memoryview:
    buf = getattr(part, "buffer", None)
    return memoryview(buf if buf is not None else part).cast("B")


def decode_image(
    info: dict[str, Any], data: Any, *, max_frame_bytes: int = MAX_FRAME_BYTES
) -> np.ndarray:
    """Decode the pixel part of a ``dimage-1.0`` message from its ``dimage_d-1.0`` header.

    Returns a 2-D array of uint8, uint16 or float32 (uint32 counts become float32).
    Raises :class:`~etemlive.protocol.ProtocolError` (kinds ``missing_field``,
    ``bad_shape``, ``bad_dtype``, ``bad_encoding``, ``too_large``,
    ``length_mismatch``, ``bad_data``).
    """
    for key in ("shape", "type", "encoding"):
        if key not in info:
            raise ProtocolError("missing_field", f"dimage_d header has no {key!r} field")
    shape_xy = info["shape"]
    if (
        not isinstance(shape_xy, list)
        or len(shape_xy) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape_xy)
    ):
        raise ProtocolError("bad_shape", f"shape must be [x, y] positive integers, got {shape_xy!r}")
    shape = (shape_xy[1], shape_xy[0])  # SIMPLON [x, y] -> numpy (rows, cols)
    dtype = SIMPLON_TYPES.get(info["type"]) if isinstance(info["type"], str) else None
    if dtype is None:
        raise ProtocolError("bad_dtype", f"type {info['type']!r} is not one of {', '.join(SIMPLON_TYPES)}")
    encoding = info["encoding"]
    if encoding not in ENCODINGS:
        raise ProtocolError("bad_encoding", f"encoding {encoding!r} is not one of {', '.join(ENCODINGS)}")
    n_bytes = shape[0] * shape[1] * dtype.itemsize
    if n_bytes > max_frame_bytes:
        raise ProtocolError("too_large", f"image of {n_bytes} bytes exceeds the limit of {max_frame_bytes}")
    view = _bytes(data)
    if encoding == "<":
        if len(view) != n_bytes:
            raise ProtocolError("length_mismatch", f"raw image has {len(view)} bytes, {n_bytes} expected")
        image = np.frombuffer(view, dtype=dtype).reshape(shape)
    else:
        if encoding.startswith("bs") and int(encoding[2:].split("-")[0]) != 8 * dtype.itemsize:
            raise ProtocolError("bad_encoding", f"encoding {encoding} does not match type {info['type']}")
        try:
            if encoding == "lz4<":
                raw = imagecodecs.lz4_decode(view, header=False, out=n_bytes)
                if len(raw) != n_bytes:
                    raise ValueError("LZ4 data decompressed to the wrong size")
                image = np.frombuffer(raw, dtype=dtype).reshape(shape)
            else:
                image = decode_bslz4(view, shape, dtype)
        except (ValueError, imagecodecs.Lz4Error, imagecodecs.BitshuffleError) as err:
            raise ProtocolError("bad_data", f"cannot decompress {encoding} image: {err}") from None
    if image.dtype == np.uint32:
        image = image.astype(np.float32)
    return image


class DectrisSource(ZmqSource):
    """Frames from a DECTRIS SIMPLON v1 ZeroMQ stream, as a FrameSource.

    Parameters
    ----------
    endpoint : str
        The detector's stream endpoint, e.g. ``tcp://DCU-HOST:9999``.
    socket_type : {"pull", "sub"}
        PULL for the detector's PUSH socket (the SIMPLON default).
    **options
        ``bind``, ``policy``, ``queue_size``, ``max_frame_bytes``, ``pixel_size_nm``,
        ``receive_timeout_s``, ``idle_timeout_s``, ``stop_on_end``, ``rcvhwm``: as
        for :class:`~etemlive.sources.zmq.ZmqSource` (same counters and policies).

    Attributes
    ----------
    detector_config : dict
        The detector configuration from the newest ``dheader-1.0`` message.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        socket_type: str = "pull",
        bind: bool = False,
        policy: str = "drop-oldest",
        queue_size: int = 8,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        pixel_size_nm: float | None = None,
        receive_timeout_s: float = 0.1,
        idle_timeout_s: float | None = None,
        stop_on_end: bool = True,
        rcvhwm: int | None = None,
    ) -> None:
        self.detector_config: dict[str, Any] = {}
        self._series_id: str | None = None
        super().__init__(
            endpoint, bind=bind, socket_type=socket_type, policy=policy, queue_size=queue_size,
            max_frame_bytes=max_frame_bytes, pixel_size_nm=pixel_size_nm,
            receive_timeout_s=receive_timeout_s, idle_timeout_s=idle_timeout_s,
            stop_on_end=stop_on_end, rcvhwm=rcvhwm,
        )

    @staticmethod
    def _socket_types() -> dict[str, int]:
        return {"pull": zmq.PULL, "sub": zmq.SUB}

    def _decode(self, parts: Sequence[Any], received_s: float) -> Frame | EndOfSeries | None:
        if len(parts) == 0:
            raise ProtocolError("parts", "empty message")
        head = _json(parts[0], "message header")
        htype = head.get("htype")
        if htype == "dheader-1.0":
            self._series_id = str(head.get("series", ""))
            if head.get("header_detail", "basic") != "none" and len(parts) >= 2:
                config = _json(parts[1], "detector configuration")
                self.detector_config = config
                frame_time = config.get("frame_time")
                if isinstance(frame_time, (int, float)) and frame_time > 0:
                    self.frame_interval_s = float(frame_time)
                n_images, n_trigger = config.get("nimages"), config.get("ntrigger", 1)
                if isinstance(n_images, int) and isinstance(n_trigger, int):
                    self.n_frames = n_images * n_trigger
            return None
        if htype == "dseries_end-1.0":
            series = str(head.get("series", self._series_id or ""))
            return EndOfSeries(series, self.n_frames or 0)
        if htype != "dimage-1.0":
            raise ProtocolError("bad_htype", f"htype {htype!r} is not a SIMPLON v1 stream message")
        if len(parts) not in (4, 5):
            raise ProtocolError("parts", f"a dimage-1.0 message has 4 or 5 parts, got {len(parts)}")
        index = head.get("frame")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ProtocolError("bad_type", f"frame must be an integer >= 0, got {index!r}")
        if "series" not in head:
            raise ProtocolError("missing_field", "dimage header has no 'series' field")
        info = _json(parts[1], "dimage_d header")
        image = decode_image(info, parts[2], max_frame_bytes=self.max_frame_bytes)
        timing = _json(parts[3], "dconfig part")
        start_ns = timing.get("start_time")
        if isinstance(start_ns, (int, float)) and not isinstance(start_ns, bool):
            timestamp_s = float(start_ns) * 1e-9
        elif self.frame_interval_s is not None:
            timestamp_s = index * self.frame_interval_s
        else:
            timestamp_s = float(index)
        return Frame(
            index=index,
            timestamp_s=timestamp_s,
            pixel_size_nm=None,
            image=image,
            series=str(head["series"]),
            received_s=received_s,
        )


def _default_encoding(dtype: np.dtype) -> str:
    return f"bs{8 * dtype.itemsize}-lz4<"


def encode_image(image: np.ndarray, encoding: str) -> bytes:
    """Encode a 2-D image's pixels as SIMPLON ``encoding`` (``<``, ``lz4<``, ``bsNN-lz4<``)."""
    little = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<"))
    if encoding == "<":
        return little.tobytes()
    if encoding == "lz4<":
        return imagecodecs.lz4_encode(little.tobytes(), header=False)
    if encoding.startswith("bs") and encoding.endswith("-lz4<"):
        return encode_bslz4(little)
    raise ValueError(f"unknown encoding {encoding!r}")


def simulate_simplon_stream(
    images: Iterable[np.ndarray],
    *,
    series_id: int = 1,
    encoding: str | None = None,
    frame_time_s: float = 0.01,
    n_images: int | None = None,
    header_detail: str = "basic",
) -> Iterator[list[bytes]]:
    """The messages a DECTRIS detector sends for one series of ``images``.

    Yields the ``dheader-1.0`` message, one ``dimage-1.0`` message per image (4
    parts), and ``dseries_end-1.0``, each a list of bytes parts, ready for
    ``socket.send_multipart``. For tests and demos without a detector.

    Parameters
    ----------
    images : iterable of ndarray
        2-D uint8, uint16, uint32 or float32 images.
    series_id : int
        The series number the detector assigns at ``arm``.
    encoding : str or None
        One of :data:`ENCODINGS`; None picks ``bs<bits>-lz4<`` for the image type
        (the detector's ``bslz4`` compression).
    frame_time_s : float
        Frame time reported in the configuration and used for the timestamps.
    n_images : int or None
        ``nimages`` reported in the configuration (default: unknown, 1).
    header_detail : {"basic", "none"}
        Whether the configuration part is sent.
    """
    head = {"htype": "dheader-1.0", "series": series_id, "header_detail": header_detail}
    parts = [json.dumps(head).encode()]
    if header_detail != "none":
        config = {
            "frame_time": frame_time_s, "count_time": frame_time_s, "nimages": n_images or 1,
            "ntrigger": 1, "compression": "bslz4", "x_pixel_size": 75e-6, "y_pixel_size": 75e-6,
            "description": "etemlive SIMPLON simulator", "trigger_mode": "ints",
        }
        parts.append(json.dumps(config).encode())
    yield parts
    for index, image in enumerate(images):
        image = np.asarray(image)
        enc = encoding or _default_encoding(image.dtype)
        data = encode_image(image, enc)
        rows, cols = image.shape
        start_ns = int(round(index * frame_time_s * 1e9))
        yield [
            json.dumps({
                "htype": "dimage-1.0", "series": series_id, "frame": index,
                "hash": hashlib.md5(data).hexdigest(),
            }).encode(),
            json.dumps({
                "htype": "dimage_d-1.0", "shape": [cols, rows], "type": image.dtype.name,
                "encoding": enc, "size": len(data),
            }).encode(),
            data,
            json.dumps({
                "htype": "dconfig-1.0", "start_time": start_ns,
                "stop_time": start_ns + int(frame_time_s * 1e9), "real_time": int(frame_time_s * 1e9),
            }).encode(),
        ]
    yield [json.dumps({"htype": "dseries_end-1.0", "series": series_id}).encode()]
