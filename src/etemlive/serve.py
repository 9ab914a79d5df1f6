"""Publish any frame source on ZeroMQ at a set rate: the camera stand-in.

``serve(source, "tcp://127.0.0.1:5555", fps=10)`` sends every frame of a movie
reader or the simulator as an etemlive/1 message (:mod:`etemlive.protocol`) and
closes the series with an ``end`` message. PUB is the default (like a camera: it
never waits for slow readers); PUSH makes a slow PULL reader push back (lossless
replays).

PUB and the slow joiner: a subscriber that connects after a message was sent never
sees it. ``serve`` therefore binds an XPUB socket (a PUB that also reports
subscriptions) and, before the first frame, waits up to ``wait_for_subscriber_s``
for a first subscription; with nobody listening it starts anyway, as a camera would.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import zmq

from .errors import EtemliveError, InputError
from .frames import Frame
from .protocol import encode_end, encode_frame
from .sources.zmq import open_socket

logger = logging.getLogger(__name__)

#: fault_hook(i, parts) -> list of messages (each a list of parts) to send instead.
FaultHook = Callable[[int, list[Any]], Sequence[Sequence[Any]]]

SOCKET_TYPES = {"pub": zmq.XPUB, "push": zmq.PUSH}


def _wait_for_subscriber(sock: zmq.Socket, timeout_s: float, stop: threading.Event) -> bool:
    deadline = time.monotonic() + timeout_s
    while not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if sock.poll(min(50, max(1, int(remaining * 1000))), zmq.POLLIN):
            if sock.recv()[:1] == b"\x01":  # XPUB: 1 = subscribe, 0 = unsubscribe
                return True
    return False


def _drain_subscriptions(sock: zmq.Socket) -> None:
    # XPUB queues (un)subscription notices; read them so they never pile up.
    while sock.poll(0, zmq.POLLIN):
        sock.recv()


def _send(sock: zmq.Socket, parts: Sequence[Any], stop: threading.Event, poll_ms: int) -> bool:
    """PUSH: send one message, waiting in short steps while the reader pushes back."""
    while not sock.poll(poll_ms, zmq.POLLOUT):
        if stop.is_set():
            return False
    sock.send_multipart(parts, copy=False)
    return True


def _publish(sock: zmq.Socket, parts: Sequence[Any]) -> bool:
    """PUB: send one message now, or drop it (return False) when a subscriber is full.

    The XPUB socket runs with XPUB_NODROP, so a full subscriber makes the send fail
    here (and we drop the frame, like a camera) instead of libzmq silently
    parking the subscriber, which would also lose the ``end`` message.
    """
    try:
        sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    return True


def _send_end(sock: zmq.Socket, parts: Sequence[Any], deadline_s: float) -> bool:
    """Send the end message, retrying until the reader has room or the deadline passes."""
    while True:
        try:
            sock.send_multipart(parts, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            if time.monotonic() > deadline_s:
                return False
            time.sleep(0.01)


def serve(
    source: Iterable[Frame],
    bind: str,
    *,
    fps: float | None = None,
    loop: bool = False,
    socket_type: str = "pub",
    stop_event: threading.Event | None = None,
    fault_hook: FaultHook | None = None,
    sndhwm: int = 16,
    connect: bool = False,
    wait_for_subscriber_s: float = 2.0,
    linger_s: float = 2.0,
    ready: Callable[[str], None] | None = None,
) -> int:
    """Publish the frames of ``source`` on ``bind`` and return how many frame messages were sent.

    Parameters
    ----------
    source : FrameSource or iterable of Frame
        What to send; with ``loop`` it must be re-iterable (a FrameSource).
    bind : str
        Endpoint to bind, e.g. ``tcp://127.0.0.1:5555`` (``tcp://127.0.0.1:0`` picks a
        free port, reported through ``ready``), or to connect to when ``connect``.
    fps : float or None
        Frames per second; None sends as fast as the socket takes them.
    loop : bool
        Start again at the first frame after the last one, until stopped; frame
        numbers restart at the source's first index each pass (receivers treat
        frame 0 as a new run) and the ``end`` message comes only when stopped.
    socket_type : {"pub", "push"}
        PUB never blocks (slow readers lose frames); PUSH blocks while the reader's
        queue and high-water marks are full.
    stop_event : threading.Event or None
        Set it to stop after the current frame; ``end`` is still sent.
    fault_hook : callable or None
        ``fault_hook(i, parts)`` for the i-th frame message (0-based) returns the
        messages to send instead: ``[]`` drops it, ``[parts, parts]`` duplicates it,
        modified parts corrupt it, holding one back and returning it later reorders.
        For tests.
    sndhwm : int
        Send high-water mark in messages.
    connect : bool
        Connect to ``bind`` instead of binding (to a reader that binds).
    wait_for_subscriber_s : float
        PUB only: longest wait for a first subscriber before sending (s).
    linger_s : float
        How long queued messages may still be delivered after the end (s).
    ready : callable or None
        Called with the actual endpoint as soon as it is bound (before the wait
        for a subscriber), so a caller that bound port 0 can connect a reader.

    Returns
    -------
    int
        Frame messages sent (after ``fault_hook``).

    Raises
    ------
    InputError
        Bad endpoint, port in use, unknown socket type, ``loop`` on a one-shot
        iterator, or a frame the protocol cannot carry.
    """
    if socket_type not in SOCKET_TYPES:
        raise InputError(f"unknown socket type {socket_type!r}: use 'pub' or 'push'")
    if fps is not None and not fps > 0:
        raise InputError(f"--fps must be positive, got {fps!r}")
    if loop and iter(source) is source:
        raise InputError("--loop needs a re-iterable source (a movie or the simulator), not an iterator")
    stop = stop_event if stop_event is not None else threading.Event()
    options = {zmq.SNDHWM: int(sndhwm)}
    if socket_type == "pub":
        options[zmq.XPUB_NODROP] = 1
    sock, endpoint = open_socket(SOCKET_TYPES[socket_type], bind, bind=not connect, options=options)
    poll_ms = 50
    n_sent = 0
    n_in = 0
    n_full = 0  # PUB: frames a full subscriber could not take
    last_index = -1  # end's n_frames is one more than the last frame number
    series = str(getattr(source, "name", "") or "")
    try:
        if ready is not None:
            ready(endpoint)
        if socket_type == "pub":
            if not _wait_for_subscriber(sock, wait_for_subscriber_s, stop):
                logger.info("no subscriber on %s after %.1f s: publishing anyway", endpoint, wait_for_subscriber_s)
        period_s = None if fps is None else 1.0 / fps
        next_s = time.perf_counter()
        while not stop.is_set():
            n_pass = 0
            for frame in source:
                if stop.is_set():
                    break
                if period_s is not None:
                    now = time.perf_counter()
                    if next_s - now > 0:
                        # Sleep in short steps so a stop request is honoured quickly.
                        while not stop.is_set() and (left := next_s - time.perf_counter()) > 0:
                            time.sleep(min(left, 0.05))
                    elif now - next_s > period_s:
                        next_s = now  # far behind (slow source): re-anchor, no burst
                    next_s += period_s
                if frame.series:
                    series = frame.series
                elif series:
                    frame = Frame(frame.index, frame.timestamp_s, frame.pixel_size_nm, frame.image, series)
                parts = encode_frame(frame)
                messages = [parts] if fault_hook is None else fault_hook(n_in, parts)
                n_in += 1
                n_pass += 1
                last_index = frame.index
                for message in messages:
                    if socket_type == "pub":
                        if _publish(sock, list(message)):
                            n_sent += 1
                        else:
                            n_full += 1
                    elif _send(sock, list(message), stop, poll_ms):
                        n_sent += 1
                    else:
                        break
                if socket_type == "pub":
                    _drain_subscriptions(sock)
            if not loop or n_pass == 0:
                break
        if n_full:
            logger.warning("%d frames not sent on %s: a subscriber was too slow", n_full, endpoint)
        # Best effort: a reader that went away must not block shutdown forever.
        if not _send_end(sock, encode_end(series, last_index + 1), time.monotonic() + linger_s):
            logger.warning("could not send the end message on %s: no reader took it", endpoint)
    finally:
        sock.close(linger=int(linger_s * 1000))
    return n_sent


class ServeThread(threading.Thread):
    """Run :func:`serve` in a background thread (for ``demo``, tests and benchmarks).

    ``start()`` then ``wait_ready()`` returns the bound endpoint (useful with port 0);
    ``stop()`` asks it to finish; after ``join()``, ``frames_sent`` holds the result
    and ``error`` any exception it raised (also re-raised by ``wait_ready``).
    """

    def __init__(self, source: Iterable[Frame], bind: str, **kwargs: Any) -> None:
        super().__init__(name=f"serve {bind}", daemon=True)
        self._source = source
        self._bind = bind
        self._kwargs = kwargs
        self.stop_event: threading.Event = kwargs.pop("stop_event", None) or threading.Event()
        self._ready = threading.Event()
        self.endpoint: str | None = None
        self.frames_sent: int | None = None
        self.error: BaseException | None = None

    def _on_ready(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._ready.set()

    def run(self) -> None:
        try:
            self.frames_sent = serve(
                self._source, self._bind, stop_event=self.stop_event, ready=self._on_ready, **self._kwargs
            )
        except BaseException as err:  # handed to the owner thread
            self.error = err
        finally:
            self._ready.set()

    def wait_ready(self, timeout_s: float = 10.0) -> str:
        """Wait until bound; return the endpoint or raise the serve error."""
        if not self._ready.wait(timeout_s):
            raise EtemliveError(f"serve on {self._bind} did not start within {timeout_s} s")
        if self.error is not None:
            raise self.error
        assert self.endpoint is not None
        return self.endpoint

    def stop(self) -> None:
        """Ask serve to finish after the current frame (it still sends ``end``)."""
        self.stop_event.set()
