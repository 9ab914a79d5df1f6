"""ZmqSource on real loopback sockets: policies, counters, malformed input, restarts."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from etemlive.errors import CalibrationError, InputError
from etemlive.frames import Frame, FrameSource
from etemlive.protocol import PROTOCOL, encode_end, encode_frame
from etemlive.sources.zmq import ZmqSource, check_endpoint

pytestmark = pytest.mark.timeout(60)


def _frame(index: int, series: str = "s", dtype: str = "uint16", pixel_size_nm: float | None = 0.5) -> Frame:
    image = np.full((6, 5), index % 200, dtype=dtype)
    return Frame(index, index * 0.1, pixel_size_nm, image, series)


def _pusher(sndhwm: int = 1000) -> tuple[zmq.Socket, str]:
    """A bare PUSH socket on a random port, standing in for a sender."""
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.SNDHWM, sndhwm)  # before bind: a listener copies the options
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}"


def _drain(source: ZmqSource, delay_s: float = 0.0) -> list[Frame]:
    out = []
    for frame in source:
        out.append(frame)
        if delay_s:
            time.sleep(delay_s)
    return out


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_lossless_push_pull_delivers_everything(dtype: str) -> None:
    push, endpoint = _pusher()
    with ZmqSource(endpoint, socket_type="pull", policy="lossless", queue_size=2, idle_timeout_s=10) as src:
        assert isinstance(src, FrameSource)
        for i in range(30):
            push.send_multipart(encode_frame(_frame(i, dtype=dtype)), copy=False)
        push.send_multipart(encode_end("s", 30))
        frames = _drain(src)
    push.close()
    assert [f.index for f in frames] == list(range(30))
    assert all(f.image.dtype == np.dtype(dtype) and f.image[0, 0] == f.index for f in frames)
    assert all(f.received_s is not None for f in frames)
    c = src.counters
    assert (c.received, c.analysed, c.dropped, c.malformed, c.gaps, c.series_ended) == (30, 30, 0, 0, 0, 1)
    assert src.pixel_size_nm == 0.5 and src.pixel_size_source == "metadata"


def test_lossless_slow_consumer_back_pressures_without_loss() -> None:
    push, endpoint = _pusher(sndhwm=1)
    n = 40
    sent = threading.Event()
    # 1 MiB frames: 40 MiB cannot hide in the kernel's socket buffers.
    image = np.zeros((512, 1024), np.uint16)

    def send() -> None:
        for i in range(n):
            push.send_multipart(encode_frame(Frame(i, 0.0, None, image, "s")), copy=False)
        push.send_multipart(encode_end("s", n))
        sent.set()

    with ZmqSource(endpoint, socket_type="pull", policy="lossless", queue_size=2, idle_timeout_s=10) as src:
        sender = threading.Thread(target=send)
        sender.start()
        first = []
        for frame in src:
            first.append(frame.index)
            if len(first) == 5:
                # The consumer is behind: the sender must be blocked, not finished.
                time.sleep(0.3)
                assert not sent.is_set(), src.counters
                break
        rest = _drain(src, delay_s=0.002)
        sender.join(10)
    push.close()
    assert first + [f.index for f in rest] == list(range(n))
    c = src.counters
    assert (c.received, c.analysed, c.dropped, c.malformed) == (n, n, 0, 0)


def test_drop_oldest_counts_every_drop_and_keeps_the_newest() -> None:
    push, endpoint = _pusher()
    n = 60
    with ZmqSource(endpoint, socket_type="pull", queue_size=4, idle_timeout_s=10) as src:
        for i in range(n):
            push.send_multipart(encode_frame(_frame(i)))
        push.send_multipart(encode_end("s", n))
        time.sleep(0.3)  # let the receive thread take everything while nobody consumes
        frames = _drain(src, delay_s=0.02)
    push.close()
    indices = [f.index for f in frames]
    c = src.counters
    assert c.received == n
    assert c.dropped > 0
    assert c.analysed == len(frames)
    assert c.received == c.analysed + c.dropped + c.malformed
    assert indices == sorted(indices)
    assert indices[-1] == n - 1  # the newest frame is never the one dropped
    assert len(frames) <= 4 + 1
    assert c.gaps == 0  # drops are ours, not gaps upstream


def test_receive_thread_never_waits_for_a_slow_consumer() -> None:
    push, endpoint = _pusher()
    with ZmqSource(endpoint, socket_type="pull", queue_size=2, idle_timeout_s=10) as src:
        it = iter(src)
        for i in range(20):
            push.send_multipart(encode_frame(_frame(i)))
        next(it)
        deadline = time.monotonic() + 5
        while src.counters.received < 20 and time.monotonic() < deadline:
            time.sleep(0.01)  # the consumer holds its frame; the thread keeps receiving
        c = src.counters
        assert c.received == 20
        # 2 queued, or 1 when the consumer woke after everything had arrived.
        assert c.queued in (1, 2)
        assert c.analysed == 1
        assert c.received == c.analysed + c.dropped + c.malformed + c.queued
    push.close()
    assert src.counters.dropped == 19  # 17 by the policy + 2 still queued at close
    assert src.counters.queued == 0


def _bad(header: dict, n_bytes: int = 60) -> list[bytes]:
    return [json.dumps(header).encode(), bytes(n_bytes)]


def _good_header(index: int) -> dict:
    return {
        "protocol": PROTOCOL, "kind": "frame", "series": "s", "frame": index,
        "timestamp_s": 0.0, "shape": [6, 5], "dtype": "uint16", "pixel_size_nm": 0.5,
    }


def test_every_malformed_kind_on_a_real_socket_is_counted_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    def h(index: int, **changes: object) -> dict:
        return {**_good_header(index), **changes}

    bad = [
        ("not_json", [b"\x00\xffnope", bytes(60)]),
        ("bad_protocol", _bad(h(0, protocol="other/2"))),
        ("missing_field", _bad({k: v for k, v in h(0).items() if k != "series"})),
        ("bad_type", _bad(h("1"))),
        ("bad_dtype", _bad(h(0, dtype="complex64"))),
        ("bad_shape", _bad(h(0, shape=[-6, 5]))),
        ("too_large", _bad(h(0, shape=[2**20, 2**20]))),
        ("length_mismatch", _bad(h(0), n_bytes=59)),
        ("length_mismatch", _bad(h(0), n_bytes=61)),
        ("parts", _bad(h(0))[:1]),
        ("parts", [*_bad(h(0)), b"third"]),
        ("bad_pixel_size", [json.dumps(h(0, pixel_size_nm=float("nan"))).encode(), bytes(60)]),
        ("bad_pixel_size", _bad(h(0, pixel_size_nm=-1.0))),
    ]
    push, endpoint = _pusher()
    caplog.set_level(logging.WARNING, logger="etemlive.sources.zmq")
    with ZmqSource(endpoint, socket_type="pull", policy="lossless", idle_timeout_s=10) as src:
        index = 0
        for _ in range(2):  # every bad message twice: logged once per kind
            for _kind, message in bad:
                push.send_multipart(encode_frame(_frame(index)))
                push.send_multipart(message)
                index += 1
        # Frame numbers going backwards, and a duplicate.
        push.send_multipart(encode_frame(_frame(index - 5)))
        push.send_multipart(encode_frame(_frame(index - 1)))
        push.send_multipart(encode_frame(_frame(index)))
        push.send_multipart(encode_end("s", index + 1))
        frames = _drain(src)
    push.close()
    assert [f.index for f in frames] == list(range(index + 1))
    c = src.counters
    expected: dict[str, int] = {}
    for kind, _ in bad:
        expected[kind] = expected.get(kind, 0) + 2
    expected.update(backwards=1, duplicate=1)
    assert c.malformed_by_kind == expected
    assert c.malformed == 2 * len(bad) + 2
    assert c.received == c.analysed + c.dropped + c.malformed
    assert c.gaps == 0
    warnings = [r for r in caplog.records if "malformed message" in r.getMessage()]
    assert sorted({r.getMessage().split("(")[1].split(")")[0] for r in warnings}) == sorted(expected)
    assert len(warnings) == len(expected)  # once per kind, not per message


def test_gaps_are_counted_per_series_and_frame_zero_restarts() -> None:
    push, endpoint = _pusher()
    with ZmqSource(endpoint, socket_type="pull", policy="lossless", idle_timeout_s=10) as src:
        for i in [0, 1, 4, 5, 9]:  # 2 + 3 missing
            push.send_multipart(encode_frame(_frame(i, series="a")))
        for i in [2, 3]:  # a new series joined late: frames 0, 1 missing
            push.send_multipart(encode_frame(_frame(i, series="b")))
        for i in [0, 1]:  # series b restarts (publisher restarted): not backwards
            push.send_multipart(encode_frame(_frame(i, series="b")))
        push.send_multipart(encode_end("b", 2))
        frames = _drain(src)
    push.close()
    assert len(frames) == 9
    c = src.counters
    assert c.gaps_by_series == {"a": 5, "b": 2}
    assert c.gaps == 7
    assert c.malformed == 0


def test_user_pixel_size_overrides_the_header() -> None:
    push, endpoint = _pusher()
    with ZmqSource(endpoint, socket_type="pull", pixel_size_nm=0.25, policy="lossless", idle_timeout_s=10) as src:
        push.send_multipart(encode_frame(_frame(0, pixel_size_nm=0.5)))
        push.send_multipart(encode_frame(_frame(1, pixel_size_nm=None)))
        push.send_multipart(encode_end("s", 2))
        frames = _drain(src)
    push.close()
    assert [f.pixel_size_nm for f in frames] == [0.25, 0.25]
    assert (src.pixel_size_nm, src.pixel_size_source) == (0.25, "user")


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_bad_user_pixel_size_is_a_calibration_error(value: float) -> None:
    with pytest.raises(CalibrationError, match="positive and finite"):
        ZmqSource("tcp://127.0.0.1:5999", pixel_size_nm=value)


def test_idle_timeout_ends_the_iteration() -> None:
    _push, endpoint = _pusher()
    t0 = time.monotonic()
    with ZmqSource(endpoint, socket_type="pull", idle_timeout_s=0.3, receive_timeout_s=0.05) as src:
        assert list(src) == []
    assert 0.25 < time.monotonic() - t0 < 3
    _push.close()


def test_stop_from_another_thread_ends_the_iteration_promptly() -> None:
    _push, endpoint = _pusher()
    src = ZmqSource(endpoint, socket_type="pull", receive_timeout_s=0.05)
    threading.Timer(0.2, src.stop).start()
    t0 = time.monotonic()
    assert list(src) == []
    src.close()
    assert time.monotonic() - t0 < 2
    assert not src.running
    _push.close()


def test_subscriber_can_bind_and_publisher_connect() -> None:
    with ZmqSource("tcp://127.0.0.1:0", bind=True, socket_type="pull", policy="lossless", idle_timeout_s=10) as src:
        assert src.endpoint.startswith("tcp://127.0.0.1:") and not src.endpoint.endswith(":0")
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(src.endpoint)
        for i in range(3):
            push.send_multipart(encode_frame(_frame(i)))
        push.send_multipart(encode_end("s", 3))
        assert [f.index for f in src] == [0, 1, 2]
    push.close(linger=0)


@pytest.mark.parametrize(
    ("endpoint", "bind", "match"),
    [
        ("127.0.0.1:5555", False, "bad endpoint"),
        ("tcp://127.0.0.1", False, "bad endpoint"),
        ("tcp://127.0.0.1:99999", False, "bad port"),
        ("tcp://127.0.0.1:*", False, "give a port"),
        ("tcp://*:5555", False, "give a host"),
        ("udp://127.0.0.1:5555", True, "bad endpoint"),
    ],
)
def test_bad_endpoint_is_one_line(endpoint: str, bind: bool, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        ZmqSource(endpoint, bind=bind)
    assert "\n" not in str(info.value)


def test_port_in_use_is_one_line() -> None:
    holder, endpoint = _pusher()
    with pytest.raises(InputError, match="already in use") as info:
        ZmqSource(endpoint, bind=True)
    assert "\n" not in str(info.value)
    holder.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"policy": "newest"}, "unknown policy"), ({"socket_type": "req"}, "unknown socket type"),
     ({"queue_size": 0}, "queue_size")],
)
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        ZmqSource("tcp://127.0.0.1:5999", **kwargs)


def test_check_endpoint_accepts_ipc_and_random_ports() -> None:
    assert check_endpoint("ipc:///tmp/x.sock", bind=True) == "ipc:///tmp/x.sock"
    assert check_endpoint("tcp://*:0", bind=True) == "tcp://*:0"
    assert check_endpoint("tcp://[::1]:5555", bind=False) == "tcp://[::1]:5555"


_PUBLISHER = textwrap.dedent(
    """
    import sys, numpy as np
    from etemlive.frames import Frame
    from etemlive.serve import serve
    endpoint, series, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    frames = (Frame(i, i * 0.05, 0.5, np.full((32, 32), i % 250, np.uint8), series) for i in range(n))
    serve(frames, endpoint, fps=40, wait_for_subscriber_s=5.0)
    """
)


def _free_port() -> int:
    """A free TCP port below the kernel's ephemeral range.

    A plain socket (closed synchronously, unlike a ZeroMQ one) so the subscriber
    cannot reach a half-closed test listener; below the ephemeral range so that
    reconnect attempts while the publisher is down can never self-connect to it.
    """
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(20000, 30000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    pytest.skip("no free TCP port found in 20000-30000")


def test_publisher_killed_mid_stream_and_restarted(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    script = tmp_path / "publisher.py"
    script.write_text(_PUBLISHER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}

    def start(series: str, n: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(script), endpoint, series, str(n)],
            env=env, stderr=subprocess.PIPE, text=True,
        )

    with ZmqSource(endpoint, policy="lossless", queue_size=64, idle_timeout_s=20) as src:
        first = start("run", 10_000)
        got: list[Frame] = []
        it = iter(src)
        for frame in it:
            got.append(frame)
            if len(got) == 10:
                first.kill()  # no end message: the camera just dies
                first.wait(10)
                break
        second = start("run", 15)  # same endpoint, numbering restarts at 0
        rest = list(it)
        _, stderr = second.communicate(timeout=20)
    assert second.returncode == 0, stderr
    after = [f.index for f in rest]
    assert after[-15:] == list(range(15))  # the whole second run arrives after the restart
    c = src.counters
    assert c.malformed == 0
    assert c.series_ended == 1
    assert c.received == c.analysed + c.dropped + c.malformed
