"""serve(): the publisher, end to end into ZmqSource over real loopback sockets."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from etemlive.errors import InputError
from etemlive.frames import Frame
from etemlive.serve import ServeThread, serve
from etemlive.sources.zmq import ZmqSource

pytestmark = pytest.mark.timeout(60)


def _frames(n: int, series: str = "movie", shape: tuple[int, int] = (16, 24)) -> list[Frame]:
    return [
        Frame(i, i * 0.1, 0.7, np.full(shape, i % 250, np.uint8), series) for i in range(n)
    ]


class _Movie:
    """A minimal re-iterable FrameSource (what a movie reader or the simulator is)."""

    name = "movie.tif"
    pixel_size_nm = 0.7
    pixel_size_source = "metadata"
    frame_interval_s = 0.1
    n_frames = 5

    def __iter__(self):
        for i in range(self.n_frames):
            yield Frame(i, i * 0.1, 0.7, np.full((8, 8), i, np.uint16))

    def close(self) -> None:
        pass


def _start(source, **kwargs) -> tuple[ServeThread, str]:
    thread = ServeThread(source, "tcp://127.0.0.1:0", **kwargs)
    thread.start()
    return thread, thread.wait_ready()


@pytest.mark.parametrize("socket_type", ["pub", "push"])
def test_every_frame_and_the_end_arrive(socket_type: str) -> None:
    frames = _frames(25)
    # sndhwm: a PUB drops what its high-water mark cannot hold (camera semantics).
    server, endpoint = _start(frames, socket_type=socket_type, sndhwm=100)
    reader = "sub" if socket_type == "pub" else "pull"
    # PUB: the XPUB handshake holds the first frame until we subscribe (no slow joiner loss).
    with ZmqSource(endpoint, socket_type=reader, policy="lossless", queue_size=32, idle_timeout_s=10) as src:
        got = list(src)
    server.join(10)
    assert server.error is None
    assert server.frames_sent == 25
    assert [f.index for f in got] == list(range(25))
    assert all(np.array_equal(g.image, f.image) for g, f in zip(got, frames, strict=True))
    assert {f.series for f in got} == {"movie"}
    c = src.counters
    assert (c.received, c.analysed, c.series_ended, c.gaps) == (25, 25, 1, 0)


def test_pub_drops_under_overload_but_the_end_arrives_and_every_frame_is_accounted() -> None:
    n = 150
    frames = _frames(n, shape=(256, 256))
    server, endpoint = _start(frames, sndhwm=2)
    with ZmqSource(endpoint, queue_size=2, rcvhwm=2, idle_timeout_s=10) as src:
        got = []
        for frame in src:
            got.append(frame.index)
            time.sleep(0.005)  # slow analysis
    server.join(10)
    c = src.counters
    assert c.series_ended == 1  # the iteration ended on the end message, not the idle timeout
    assert got == sorted(got)
    # Every frame sent is either received here or a gap counted from the numbering.
    assert c.received + c.gaps == n
    assert server.frames_sent == c.received  # PUB drops at the sender, never silently in between
    assert c.received == c.analysed + c.dropped + c.malformed


def test_frames_without_series_get_the_source_name() -> None:
    server, endpoint = _start(_Movie(), socket_type="push")
    with ZmqSource(endpoint, socket_type="pull", policy="lossless", idle_timeout_s=10) as src:
        got = list(src)
    server.join(10)
    assert [f.series for f in got] == ["movie.tif"] * 5
    assert [int(f.image[0, 0]) for f in got] == [0, 1, 2, 3, 4]


def test_fps_sets_the_rate() -> None:
    fps = 50.0
    server, endpoint = _start(_frames(21), fps=fps, socket_type="push")
    with ZmqSource(endpoint, socket_type="pull", policy="lossless", queue_size=64, idle_timeout_s=10) as src:
        got = list(src)
    server.join(10)
    received = np.array([f.received_s for f in got])
    span_s = received[-1] - received[0]
    assert span_s == pytest.approx(20 / fps, rel=0.25)  # 20 intervals of 20 ms


def test_fault_hook_drop_corrupt_duplicate_reorder_are_counted() -> None:
    held: list = []

    def hook(i: int, parts: list) -> list:
        if i == 3:
            return []  # dropped on the wire
        if i == 5:
            return [[b"garbage header", parts[1]]]  # corrupted
        if i == 7:
            return [parts, parts]  # duplicated
        if i == 10:
            held.append(parts)  # reordered: 10 goes out after 11
            return []
        if i == 11:
            return [parts, held.pop()]
        return [parts]

    server, endpoint = _start(_frames(15), socket_type="push", fault_hook=hook)
    with ZmqSource(endpoint, socket_type="pull", policy="lossless", queue_size=32, idle_timeout_s=10) as src:
        got = [f.index for f in src]
    server.join(10)
    assert server.frames_sent == 15  # 15 in, one dropped, one duplicated
    assert got == [0, 1, 2, 4, 6, 7, 8, 9, 11, 12, 13, 14]
    c = src.counters
    assert c.malformed_by_kind == {"not_json": 1, "duplicate": 1, "backwards": 1}
    assert c.gaps == 3  # 3 (dropped), 5 (corrupted), 10 (late)
    assert c.received == 15
    assert c.received == c.analysed + c.dropped + c.malformed


def test_loop_repeats_until_stopped_and_numbering_restarts_cleanly() -> None:
    server, endpoint = _start(_Movie(), loop=True, fps=200, socket_type="push")
    with ZmqSource(endpoint, socket_type="pull", policy="lossless", idle_timeout_s=10) as src:
        got = []
        for frame in src:
            got.append(frame.index)
            if len(got) == 12:
                server.stop()  # serve still sends end: the iteration finishes by itself
    server.join(10)
    assert got[:12] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert src.counters.malformed == 0
    assert src.counters.series_ended == 1
    assert server.frames_sent == len(got)


def test_loop_needs_a_reiterable_source() -> None:
    with pytest.raises(InputError, match="re-iterable"):
        serve(iter(_frames(2)), "tcp://127.0.0.1:0", loop=True)


def test_push_without_reader_stops_promptly() -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    n = serve(_frames(5), "tcp://127.0.0.1:0", socket_type="push", stop_event=stop, linger_s=0.2)
    assert n == 0
    assert time.monotonic() - t0 < 3


def test_pub_without_subscriber_publishes_anyway() -> None:
    t0 = time.monotonic()
    assert serve(_frames(3), "tcp://127.0.0.1:0", wait_for_subscriber_s=0.2, linger_s=0.1) == 3
    assert time.monotonic() - t0 < 3


def test_serve_can_connect_to_a_binding_reader() -> None:
    with ZmqSource("tcp://127.0.0.1:0", bind=True, socket_type="pull", policy="lossless", idle_timeout_s=10) as src:
        n = serve(_frames(4), src.endpoint, socket_type="push", connect=True)
        assert [f.index for f in src] == [0, 1, 2, 3]
    assert n == 4


@pytest.mark.parametrize(
    ("bind", "kwargs", "match"),
    [
        ("localhost:5555", {}, "bad endpoint"),
        ("tcp://127.0.0.1:70000", {}, "bad port"),
        ("tcp://127.0.0.1:0", {"socket_type": "req"}, "unknown socket type"),
        ("tcp://127.0.0.1:0", {"fps": 0}, "--fps must be positive"),
    ],
)
def test_bad_arguments_are_one_line(bind: str, kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        serve(_frames(1), bind, **kwargs)
    assert "\n" not in str(info.value)


def test_port_in_use_is_one_line() -> None:
    holder = zmq.Context.instance().socket(zmq.PULL)
    port = holder.bind_to_random_port("tcp://127.0.0.1")
    try:
        with pytest.raises(InputError, match="already in use") as info:
            serve(_frames(1), f"tcp://127.0.0.1:{port}")
        assert "\n" not in str(info.value)
    finally:
        holder.close(linger=0)


def test_serve_thread_reports_errors() -> None:
    thread = ServeThread(_frames(1), "nonsense")
    thread.start()
    with pytest.raises(InputError, match="bad endpoint"):
        thread.wait_ready()
    thread.join(5)


def test_serve_a_movie_file_as_a_camera(tmp_path) -> None:
    """A real movie reader (TIFF stack) replayed through serve keeps pixels and pixel size."""
    tifffile = pytest.importorskip("tifffile")
    files = pytest.importorskip("etemlive.sources.files", reason="movie readers not available")
    stack = np.stack([np.full((20, 30), 100 + i, np.uint16) for i in range(6)])
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, stack)
    movie = files.open_movie(path, pixel_size_nm=0.35)
    server, endpoint = _start(movie, socket_type="push")
    with ZmqSource(endpoint, socket_type="pull", policy="lossless", idle_timeout_s=10) as src:
        got = list(src)
    server.join(10)
    movie.close()
    assert server.error is None
    assert [int(f.image[0, 0]) for f in got] == [100, 101, 102, 103, 104, 105]
    assert all(f.pixel_size_nm == pytest.approx(0.35) for f in got)
    assert src.counters.gaps == 0 and src.counters.malformed == 0
