"""DECTRIS SIMPLON v1 stream adapter: bitshuffle-LZ4 codec and DectrisSource on real sockets."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import zmq

from etemlive.frames import FrameSource
from etemlive.protocol import ProtocolError
from etemlive.sources.dectris import (
    ENCODINGS,
    DectrisSource,
    decode_bslz4,
    decode_image,
    default_block_elems,
    encode_bslz4,
    encode_image,
    simulate_simplon_stream,
)

pytestmark = pytest.mark.timeout(60)

SHAPES = [(37, 53), (64, 64), (1, 7), (300, 301)]  # sizes that are and are not multiples of 8
DTYPES = ["uint8", "uint16", "uint32", "float32"]


def _image(shape: tuple[int, int], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.poisson(5.0, shape) * 3).astype(dtype)


def _reference_chunk(image: np.ndarray) -> bytes:
    """bitshuffle-LZ4 bytes written by the reference implementation (HDF5 filter via hdf5plugin)."""
    h5py = pytest.importorskip("h5py", reason="h5py is the reference bitshuffle encoder")
    hdf5plugin = pytest.importorskip("hdf5plugin", reason="hdf5plugin carries the bitshuffle filter")
    with h5py.File(io.BytesIO(), "w") as f:
        d = f.create_dataset(
            "x", data=image[None], chunks=(1, *image.shape), **hdf5plugin.Bitshuffle(nelems=0, cname="lz4")
        )
        return bytes(d.id.read_direct_chunk((0, 0, 0))[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bslz4_matches_the_reference_implementation(shape: tuple[int, int], dtype: str) -> None:
    image = _image(shape, dtype)
    reference = _reference_chunk(image)
    assert encode_bslz4(image) == reference  # byte for byte
    np.testing.assert_array_equal(decode_bslz4(reference, shape, dtype), image)


@pytest.mark.parametrize(("itemsize", "expected"), [(1, 8192), (2, 4096), (4, 2048), (8, 1024)])
def test_default_block_size_follows_bitshuffle(itemsize: int, expected: int) -> None:
    assert default_block_elems(itemsize) == expected


def test_bslz4_rejects_bad_data() -> None:
    blob = encode_bslz4(_image((64, 64), "uint16"))
    with pytest.raises(ValueError, match="header says 8192 bytes"):
        decode_bslz4(blob, (64, 65), "uint16")
    with pytest.raises(ValueError):
        decode_bslz4(blob[:-10], (64, 64), "uint16")
    with pytest.raises(ValueError, match="12-byte header"):
        decode_bslz4(blob[:5], (64, 64), "uint16")


def _valid_encodings() -> list[tuple[str, str]]:
    """Every (encoding, type) pair a detector can send: bitshuffle width == type width."""
    pairs = []
    for encoding in ENCODINGS:
        for dtype in DTYPES:
            bits = 8 * np.dtype(dtype).itemsize
            if not encoding.startswith("bs") or encoding.startswith(f"bs{bits}-"):
                pairs.append((encoding, dtype))
    return pairs


@pytest.mark.parametrize(("encoding", "dtype"), _valid_encodings())
def test_decode_image_every_encoding(encoding: str, dtype: str) -> None:
    image = _image((12, 20), dtype)
    data = encode_image(image, encoding)
    info = {"htype": "dimage_d-1.0", "shape": [20, 12], "type": dtype, "encoding": encoding}
    out = decode_image(info, data)
    assert out.shape == (12, 20)  # SIMPLON shape is [x, y]
    expected_dtype = np.float32 if dtype == "uint32" else np.dtype(dtype)
    assert out.dtype == expected_dtype
    np.testing.assert_array_equal(out, image.astype(expected_dtype))


@pytest.mark.parametrize(
    ("info", "data", "kind"),
    [
        ({"shape": [4, 2], "type": "uint16"}, bytes(16), "missing_field"),
        ({"shape": [4, -2], "type": "uint16", "encoding": "<"}, bytes(16), "bad_shape"),
        ({"shape": [4, 2], "type": "int64", "encoding": "<"}, bytes(64), "bad_dtype"),
        ({"shape": [4, 2], "type": "uint16", "encoding": "zstd<"}, bytes(16), "bad_encoding"),
        ({"shape": [4, 2], "type": "uint32", "encoding": "bs16-lz4<"}, bytes(16), "bad_encoding"),
        ({"shape": [4, 2], "type": "uint16", "encoding": "<"}, bytes(15), "length_mismatch"),
        ({"shape": [4, 2], "type": "uint16", "encoding": "lz4<"}, b"\xff" * 9, "bad_data"),
        ({"shape": [4, 2], "type": "uint16", "encoding": "bs16-lz4<"}, b"\x00" * 20, "bad_data"),
        ({"shape": [10**5, 10**5], "type": "uint16", "encoding": "<"}, bytes(16), "too_large"),
    ],
)
def test_decode_image_errors(info: dict, data: bytes, kind: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_image(info, data)
    assert err.value.kind == kind


def _pusher() -> tuple[zmq.Socket, str]:
    sock = zmq.Context.instance().socket(zmq.PUSH)  # the detector's socket type
    sock.setsockopt(zmq.LINGER, 1000)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}"


@pytest.mark.parametrize("encoding", [None, "<", "lz4<"])
def test_dectris_stream_end_to_end(encoding: str | None) -> None:
    images = [_image((48, 40), "uint16", seed=i) for i in range(12)]
    push, endpoint = _pusher()
    with DectrisSource(endpoint, policy="lossless", idle_timeout_s=10, pixel_size_nm=0.3) as src:
        assert isinstance(src, FrameSource)
        for message in simulate_simplon_stream(images, series_id=7, encoding=encoding, frame_time_s=0.02, n_images=12):
            push.send_multipart(message)
        frames = list(src)
    push.close()
    assert [f.index for f in frames] == list(range(12))
    for frame, image in zip(frames, images, strict=True):
        np.testing.assert_array_equal(frame.image, image)
    assert [f.timestamp_s for f in frames] == pytest.approx([0.02 * i for i in range(12)])
    assert {f.series for f in frames} == {"7"}
    assert all(f.pixel_size_nm == 0.3 and f.received_s is not None for f in frames)
    assert src.frame_interval_s == 0.02
    assert src.n_frames == 12
    assert src.detector_config["compression"] == "bslz4"
    c = src.counters
    assert (c.received, c.analysed, c.malformed, c.gaps, c.series_ended) == (12, 12, 0, 0, 1)


def test_dectris_uint32_counts_become_float32_and_missing_images_are_gaps() -> None:
    images = [_image((16, 24), "uint32", seed=i) for i in range(8)]
    messages = list(simulate_simplon_stream(images, series_id=3, n_images=8, header_detail="basic"))
    del messages[1 + 2]  # image 2 lost
    del messages[-2]  # image 7 lost: the end message's nimages reveals it
    push, endpoint = _pusher()
    with DectrisSource(endpoint, policy="lossless", idle_timeout_s=10) as src:
        for message in messages:
            push.send_multipart(message)
        frames = list(src)
    push.close()
    assert [f.index for f in frames] == [0, 1, 3, 4, 5, 6]
    assert all(f.image.dtype == np.float32 for f in frames)
    np.testing.assert_array_equal(frames[2].image, images[3].astype(np.float32))
    assert src.counters.gaps == 2


def test_dectris_malformed_messages_are_counted_and_skipped() -> None:
    images = [_image((8, 8), "uint16", seed=i) for i in range(4)]
    good = list(simulate_simplon_stream(images, series_id=1, header_detail="none"))
    image_1 = good[2]
    bad = [
        [b"not json"],
        [json.dumps({"htype": "dimage-2.0", "series": 1, "frame": 9}).encode()],
        image_1[:3],  # three parts
        [image_1[0], image_1[1], b"\x00" * 5, image_1[3]],  # raw data corrupted
        [image_1[0], json.dumps({"htype": "dimage_d-1.0", "shape": [8, 8], "type": "uint16", "encoding": "<"}).encode(),
         bytes(10), image_1[3]],
    ]
    push, endpoint = _pusher()
    with DectrisSource(endpoint, policy="lossless", idle_timeout_s=10) as src:
        push.send_multipart(good[0])
        push.send_multipart(good[1])
        for message in bad:
            push.send_multipart(message)
        for message in good[2:]:
            push.send_multipart(message)
        frames = list(src)
    push.close()
    assert [f.index for f in frames] == [0, 1, 2, 3]
    c = src.counters
    assert c.malformed_by_kind == {"not_json": 1, "bad_htype": 1, "parts": 1, "bad_data": 1, "length_mismatch": 1}
    assert c.received == c.analysed + c.dropped + c.malformed
    assert src.frame_interval_s is None  # header_detail "none": no configuration
