"""The etemlive/1 wire format: round trips, zero copy, and every malformed kind."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from etemlive.errors import InputError
from etemlive.frames import Frame
from etemlive.protocol import (
    ERROR_KINDS,
    PROTOCOL,
    EndOfSeries,
    ProtocolError,
    decode,
    encode_end,
    encode_frame,
)


def _frame(dtype: str = "uint16", shape: tuple[int, int] = (3, 4)) -> Frame:
    image = (np.arange(shape[0] * shape[1]) * 7 % 251).astype(dtype).reshape(shape)
    return Frame(index=5, timestamp_s=0.25, pixel_size_nm=0.42, image=image, series="run-a")


def _header(**changes: object) -> dict:
    header = {
        "protocol": PROTOCOL,
        "kind": "frame",
        "series": "s",
        "frame": 0,
        "timestamp_s": 0.0,
        "shape": [2, 3],
        "dtype": "uint16",
        "pixel_size_nm": 1.0,
    }
    header.update(changes)
    return header


def _message(header: dict, n_bytes: int = 12) -> list[bytes]:
    return [json.dumps(header).encode(), bytes(n_bytes)]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_round_trip_every_dtype(dtype: str) -> None:
    frame = _frame(dtype)
    parts = encode_frame(frame)
    assert len(parts) == 2
    out = decode([bytes(p) for p in parts], received_s=12.5)
    assert isinstance(out, Frame)
    assert out.image.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out.image, frame.image)
    assert (out.index, out.timestamp_s, out.pixel_size_nm, out.series, out.received_s) == (
        5, 0.25, 0.42, "run-a", 12.5,
    )


def test_header_is_the_documented_json() -> None:
    header = json.loads(encode_frame(_frame("float32", (2, 5)))[0])
    assert header == {
        "protocol": "etemlive/1", "kind": "frame", "series": "run-a", "frame": 5,
        "timestamp_s": 0.25, "shape": [2, 5], "dtype": "float32", "pixel_size_nm": 0.42,
    }


def test_encode_does_not_copy_contiguous_images() -> None:
    frame = _frame("uint16", (8, 8))
    pixels = encode_frame(frame)[1]
    assert np.shares_memory(np.frombuffer(pixels, dtype=np.uint16), frame.image)
    assert len(pixels) == 8 * 8 * 2


def test_decode_is_zero_copy_and_read_only() -> None:
    buffer = bytearray(np.arange(6, dtype="<u2").tobytes())
    out = decode([json.dumps(_header()).encode(), memoryview(buffer)])
    buffer[0] = 99  # the image is a view on the received buffer
    assert out.image[0, 0] == 99
    assert out.image.shape == (2, 3)


def test_decode_accepts_zmq_frames() -> None:
    zmq = pytest.importorskip("zmq")
    parts = [zmq.Frame(bytes(p)) for p in encode_frame(_frame("uint8"))]
    np.testing.assert_array_equal(decode(parts).image, _frame("uint8").image)


def test_encode_converts_big_endian_and_strided_images() -> None:
    base = np.arange(24, dtype=">u2").reshape(4, 6)
    frame = Frame(0, 0.0, None, base[:, ::2], series="s")
    out = decode([bytes(p) for p in encode_frame(frame)])
    np.testing.assert_array_equal(out.image, base[:, ::2].astype(np.uint16))
    assert out.pixel_size_nm is None


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((2, 2, 3), np.uint8), "2-D"),
        (np.zeros((2, 2), np.int32), "int32"),
    ],
)
def test_encode_rejects_what_the_protocol_cannot_carry(image: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match):
        encode_frame(Frame(0, 0.0, None, image))


def test_encode_rejects_nan_timestamp() -> None:
    with pytest.raises(InputError, match="finite"):
        encode_frame(Frame(0, math.nan, None, np.zeros((2, 2), np.uint8)))


def test_end_round_trip() -> None:
    parts = encode_end("run-a", 17)
    assert len(parts) == 1
    assert decode(parts) == EndOfSeries("run-a", 17)


BAD_MESSAGES = {
    "not_json": [b"\xff{not json", bytes(12)],
    "not_json_array": [b"[1, 2]", bytes(12)],
    "bad_protocol": _message(_header(protocol="etemlive/0")),
    "bad_kind": _message(_header(kind="frames")),
    "missing_field": _message({k: v for k, v in _header().items() if k != "timestamp_s"}),
    "missing_pixel_size": _message({k: v for k, v in _header().items() if k != "pixel_size_nm"}),
    "bad_type_frame": _message(_header(frame="3")),
    "bad_type_bool": _message(_header(frame=True)),
    "bad_type_series": _message(_header(series=3)),
    "bad_type_timestamp": _message(_header(timestamp_s="0.1")),
    "bad_frame": _message(_header(frame=-1)),
    "bad_dtype": _message(_header(dtype="int64")),
    "bad_shape_negative": _message(_header(shape=[-2, 3])),
    "bad_shape_3d": _message(_header(shape=[1, 2, 3])),
    "bad_shape_float": _message(_header(shape=[2.0, 3])),
    "too_large": _message(_header(shape=[10**9, 10**9])),
    "short_buffer": _message(_header(), n_bytes=11),
    "long_buffer": _message(_header(), n_bytes=13),
    "one_part": _message(_header())[:1],
    "three_parts": [*_message(_header()), b"extra"],
    "end_two_parts": [encode_end("s", 1)[0], b"x"],
    "nan_pixel_size": [json.dumps(_header(pixel_size_nm=float("nan"))).encode(), bytes(12)],
    "negative_pixel_size": _message(_header(pixel_size_nm=-0.5)),
    "string_pixel_size": _message(_header(pixel_size_nm="0.5")),
    "empty": [],
}

EXPECTED_KIND = {
    "not_json": "not_json", "not_json_array": "not_json", "bad_protocol": "bad_protocol",
    "bad_kind": "bad_kind", "missing_field": "missing_field", "missing_pixel_size": "missing_field",
    "bad_type_frame": "bad_type", "bad_type_bool": "bad_type", "bad_type_series": "bad_type",
    "bad_type_timestamp": "bad_type", "bad_frame": "bad_frame", "bad_dtype": "bad_dtype",
    "bad_shape_negative": "bad_shape", "bad_shape_3d": "bad_shape", "bad_shape_float": "bad_shape",
    "too_large": "too_large", "short_buffer": "length_mismatch", "long_buffer": "length_mismatch",
    "one_part": "parts", "three_parts": "parts", "end_two_parts": "parts",
    "nan_pixel_size": "bad_pixel_size", "negative_pixel_size": "bad_pixel_size",
    "string_pixel_size": "bad_pixel_size", "empty": "parts",
}


@pytest.mark.parametrize("name", sorted(BAD_MESSAGES))
def test_every_malformed_message_has_its_kind(name: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(BAD_MESSAGES[name])
    assert info.value.kind == EXPECTED_KIND[name]
    assert info.value.kind in ERROR_KINDS
    assert "\n" not in str(info.value)
    assert isinstance(info.value, InputError)


def test_size_limit_is_configurable() -> None:
    parts = [bytes(p) for p in encode_frame(_frame("uint16", (16, 16)))]  # 512 bytes
    assert decode(parts, max_frame_bytes=512).image.shape == (16, 16)
    with pytest.raises(ProtocolError, match="exceeds the limit of 511") as info:
        decode(parts, max_frame_bytes=511)
    assert info.value.kind == "too_large"
