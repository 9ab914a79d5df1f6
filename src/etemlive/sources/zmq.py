"""Live frames from a ZeroMQ stream (a camera, ``etemlive serve``, another process).

:class:`ZmqSource` owns one SUB (or PULL) socket and a receive thread. The thread
polls with a short timeout (so it can always be stopped), decodes each message
(:func:`etemlive.protocol.decode`, zero-copy), checks the frame numbering and puts
frames in a bounded queue. The consumer iterates the source. What happens when the
analysis is slower than the camera is an explicit policy:

``"drop-oldest"`` (live default)
    The receive thread never waits for the analysis: when the queue is full the
    oldest queued frame is discarded and counted, so the analysis always works on
    recent frames and latency stays bounded.
``"lossless"``
    The receive thread waits for room in the queue; ZeroMQ's high-water marks then
    push back on the sender (PUSH/PULL: ``serve --socket push`` blocks). For
    replays where every frame matters. A PUB publisher never blocks, so over
    PUB/SUB frames lost upstream still show up as gaps.

Counters are exact: at the end (after :meth:`ZmqSource.close`)
``received == analysed + dropped + malformed``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from ..errors import InputError
from ..frames import Frame, validate_pixel_size_nm
from ..protocol import MAX_FRAME_BYTES, EndOfSeries, ProtocolError, decode

logger = logging.getLogger(__name__)

POLICIES = ("drop-oldest", "lossless")

_TCP = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\s]+):(?P<port>\*|\d{1,5})$")
_IPC = re.compile(r"^ipc://\S+$")
_INPROC = re.compile(r"^inproc://\S+$")


def check_endpoint(endpoint: str, *, bind: bool) -> str:
    """Validate a ZeroMQ endpoint string and return it.

    Accepted: ``tcp://HOST:PORT`` (``PORT`` 1-65535; when binding also ``*`` or
    ``0`` for a random free port, and ``HOST`` may be ``*``), ``ipc://PATH`` and
    ``inproc://NAME``.

    Raises
    ------
    InputError
        With one line saying what is wrong and giving an example.
    """
    if not isinstance(endpoint, str):
        raise InputError(f"endpoint must be a string like tcp://127.0.0.1:5555, got {endpoint!r}")
    match = _TCP.match(endpoint)
    if match:
        port = match["port"]
        if port == "*" or int(port) == 0:
            if not bind:
                raise InputError(f"cannot connect to {endpoint}: give a port, e.g. tcp://127.0.0.1:5555")
        elif not 1 <= int(port) <= 65535:
            raise InputError(f"bad port in {endpoint}: use 1-65535, e.g. tcp://127.0.0.1:5555")
        if match["host"] == "*" and not bind:
            raise InputError(f"cannot connect to host '*' in {endpoint}: give a host, e.g. 127.0.0.1")
        return endpoint
    if _IPC.match(endpoint) or _INPROC.match(endpoint):
        return endpoint
    raise InputError(
        f"bad endpoint {endpoint!r}: expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:5555) or ipc://PATH"
    )


def open_socket(
    socket_type: int, endpoint: str, *, bind: bool, options: dict[int, Any] | None = None
) -> tuple[zmq.Socket, str]:
    """Create a socket of ``socket_type`` on the shared context, bind or connect it.

    ``options`` (``{zmq.RCVHWM: 4, ...}``) are set before binding or connecting:
    high-water marks only apply to connections made after they are set.

    Returns the socket and the actual endpoint (with the port chosen when binding
    to ``*`` or ``0``). Raises :class:`InputError` with one line on a bad endpoint
    or a port in use.
    """
    check_endpoint(endpoint, bind=bind)
    if bind:
        endpoint = re.sub(r":0$", ":*", endpoint)  # ZeroMQ spells "random port" as *
    sock = zmq.Context.instance().socket(socket_type)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in (options or {}).items():
        sock.setsockopt(option, value)
    try:
        if bind:
            sock.bind(endpoint)
            actual = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            sock.connect(endpoint)
            actual = endpoint
    except zmq.ZMQError as err:
        sock.close(linger=0)
        verb = "bind" if bind else "connect to"
        if err.errno == zmq.EADDRINUSE:
            raise InputError(
                f"cannot bind {endpoint}: the address is already in use; choose another port"
            ) from None
        raise InputError(f"cannot {verb} {endpoint}: {err.strerror}") from None
    return sock, actual


@dataclass(frozen=True)
class StreamCounters:
    """A consistent snapshot of a stream's health counters.

    Attributes
    ----------
    received : int
        Data messages received (every message except ``end``), good or bad.
    analysed : int
        Frames handed to the consumer.
    dropped : int
        Frames discarded by the drop policy, or still queued at ``close()``.
    malformed : int
        Messages rejected (bad header, buffer, numbering...).
    queued : int
        Frames waiting in the queue now (0 after ``close()``).
    gaps : int
        Frame numbers missing upstream, over all series: holes in the numbering,
        frames before the first one seen, and (from the ``end`` message's
        ``n_frames``) frames after the last one seen.
    malformed_by_kind : dict
        ``malformed`` split by :class:`~etemlive.protocol.ProtocolError` kind.
    gaps_by_series : dict
        ``gaps`` split by series name.
    series_ended : int
        ``end`` messages seen.
    """

    received: int = 0
    analysed: int = 0
    dropped: int = 0
    malformed: int = 0
    queued: int = 0
    gaps: int = 0
    malformed_by_kind: dict[str, int] = field(default_factory=dict)
    gaps_by_series: dict[str, int] = field(default_factory=dict)
    series_ended: int = 0

    @property
    def consistent(self) -> bool:
        """``received == analysed + dropped + malformed + queued``."""
        return self.received == self.analysed + self.dropped + self.malformed + self.queued

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for summary.json)."""
        return dataclasses.asdict(self)


class _Numbering:
    """Per-stream frame-number bookkeeping: gaps, duplicates, going backwards."""

    def __init__(self) -> None:
        self.series: str | None = None
        self.last: int = -1

    def check(self, series: str, index: int) -> int:
        """Return the number of frames missing before ``index``; raise when out of order."""
        if series != self.series or index == 0:
            # A new series, or the publisher restarted: numbering starts again.
            # Frames before the first one seen (a late join) count as gaps.
            self.series, self.last = series, index
            return index
        if index <= self.last:
            kind = "duplicate" if index == self.last else "backwards"
            raise ProtocolError(kind, f"frame {index} of series {series!r} after frame {self.last}")
        missing = index - self.last - 1
        self.last = index
        return missing

    def end(self, series: str, n_frames: int) -> int:
        """Close ``series``; return the frames missing after the last one seen."""
        if series != self.series:
            return 0
        missing = max(0, n_frames - 1 - self.last)  # frames are numbered 0..n_frames-1
        self.series, self.last = None, -1
        return missing


class ZmqSource:
    """Frames from an etemlive ZeroMQ stream, as a :class:`~etemlive.frames.FrameSource`.

    Parameters
    ----------
    endpoint : str
        ``tcp://HOST:PORT`` or ``ipc://PATH`` to connect to (or to bind, see ``bind``).
    bind : bool
        Bind instead of connect (then publishers connect to us).
    socket_type : {"sub", "pull"}
        SUB for a PUB publisher (the default of ``serve``), PULL for PUSH.
    policy : {"drop-oldest", "lossless"}
        What to do when the queue is full (module docstring).
    queue_size : int
        Frames held between the receive thread and the consumer.
    max_frame_bytes : int
        Largest accepted frame buffer in bytes (default 64 MiB).
    pixel_size_nm : float or None
        The user's pixel size in nm/px; overrides the headers' value.
    receive_timeout_s : float
        Poll step of the receive thread and of the consumer's wait (s).
    idle_timeout_s : float or None
        End the iteration after this many seconds without any message.
    stop_on_end : bool
        End the iteration on an ``end`` message (default). When False the source
        keeps listening for the next series.
    rcvhwm : int or None
        ZeroMQ receive high-water mark in messages (default ``max(2, queue_size)``):
        small, so a lossless consumer pushes back on the sender early.

    Notes
    -----
    Frames are read-only views on the received message buffers (zero-copy).
    The socket is connected or bound in the constructor, so a bad endpoint or a
    port in use raises :class:`InputError` at once; ZeroMQ reconnects by itself
    when the publisher is restarted.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = False,
        socket_type: str = "sub",
        policy: str = "drop-oldest",
        queue_size: int = 8,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        pixel_size_nm: float | None = None,
        receive_timeout_s: float = 0.1,
        idle_timeout_s: float | None = None,
        stop_on_end: bool = True,
        rcvhwm: int | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise InputError(f"unknown policy {policy!r}: use 'drop-oldest' or 'lossless'")
        types = self._socket_types()
        if socket_type not in types:
            raise InputError(f"unknown socket type {socket_type!r}: use one of {', '.join(types)}")
        if not (isinstance(queue_size, int) and queue_size >= 1):
            raise InputError(f"queue_size must be an integer >= 1, got {queue_size!r}")
        if pixel_size_nm is not None:
            pixel_size_nm = validate_pixel_size_nm(pixel_size_nm, what="--pixel-size-nm")
        self.name = endpoint
        self.policy = policy
        self.queue_size = queue_size
        self.max_frame_bytes = int(max_frame_bytes)
        self.pixel_size_nm: float | None = pixel_size_nm
        self.pixel_size_source: str | None = "user" if pixel_size_nm is not None else None
        self.frame_interval_s: float | None = None
        self.n_frames: int | None = None
        self._user_pixel_size = pixel_size_nm
        self._receive_timeout_s = float(receive_timeout_s)
        self._idle_timeout_s = idle_timeout_s
        self._stop_on_end = stop_on_end

        options = {zmq.RCVHWM: rcvhwm if rcvhwm is not None else max(2, queue_size)}
        if socket_type == "sub":
            options[zmq.SUBSCRIBE] = b""
        self._sock, self.endpoint = open_socket(types[socket_type], endpoint, bind=bind, options=options)

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: collections.deque[Any] = collections.deque()
        self._stop = threading.Event()
        self._finished = False  # the receive thread has ended (end of stream / idle / error)
        self._received = 0
        self._analysed = 0
        self._dropped = 0
        self._malformed: collections.Counter[str] = collections.Counter()
        self._gaps: collections.Counter[str] = collections.Counter()
        self._series_ended = 0
        self._logged_kinds: set[str] = set()
        self._numbering = _Numbering()
        self._closed = False
        #: Why the receive thread ended: "end", "idle", "stopped" or "error: ..." (None while running).
        self.end_reason: str | None = None
        self._thread = threading.Thread(target=self._receive_loop, name=f"zmq-receive {endpoint}", daemon=True)
        self._thread.start()

    # -- subclass hooks ---------------------------------------------------------------
    @staticmethod
    def _socket_types() -> dict[str, int]:
        return {"sub": zmq.SUB, "pull": zmq.PULL}

    def _decode(self, parts: Sequence[Any], received_s: float) -> Frame | EndOfSeries | None:
        """Decode one message; None for control messages that carry no frame."""
        return decode(parts, max_frame_bytes=self.max_frame_bytes, received_s=received_s)

    # -- receive thread -----------------------------------------------------------------
    def _receive_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        timeout_ms = max(1, int(self._receive_timeout_s * 1000))
        last_message_s = time.monotonic()
        reason = "stopped"
        try:
            while not self._stop.is_set():
                if not poller.poll(timeout_ms):
                    idle = self._idle_timeout_s
                    if idle is not None and time.monotonic() - last_message_s > idle:
                        logger.info("no message for %.1f s on %s: stopping", idle, self.name)
                        reason = "idle"
                        break
                    continue
                parts = self._sock.recv_multipart(copy=False)
                received_s = time.perf_counter()
                last_message_s = time.monotonic()
                if self._handle(parts, received_s):
                    reason = "end" if not self._stop.is_set() else "stopped"
                    break
        except Exception as err:  # handed to the consumer, raised from __iter__
            reason = f"error: {err}"
            with self._cond:
                self._queue.append(err)
                self._cond.notify_all()
        finally:
            self._sock.close(linger=0)
            with self._cond:
                self.end_reason = reason
                self._finished = True
                self._cond.notify_all()

    def _handle(self, parts: Sequence[Any], received_s: float) -> bool:
        """Count and queue one message; return True when the stream should end.

        Each message is counted in one locked step together with where it went
        (malformed, dropped or queued), so every snapshot of the counters adds up.
        """
        missing = 0
        try:
            item = self._decode(parts, received_s)
            if isinstance(item, Frame):
                missing = self._numbering.check(item.series, item.index)
        except ProtocolError as err:
            self._count_malformed(err)
            return False
        if item is None:
            return False
        if isinstance(item, EndOfSeries):
            with self._cond:
                self._series_ended += 1
                trailing = self._numbering.end(item.series, item.n_frames)
                if trailing:
                    self._gaps[item.series] += trailing
                if self._stop_on_end:
                    self._queue.append(item)
                    self._cond.notify_all()
            return self._stop_on_end
        if self._user_pixel_size is not None:
            item = dataclasses.replace(item, pixel_size_nm=self._user_pixel_size)
        elif item.pixel_size_nm is not None and self.pixel_size_nm is None:
            self.pixel_size_nm, self.pixel_size_source = item.pixel_size_nm, "metadata"
        with self._cond:
            if self.policy == "lossless":
                while len(self._queue) >= self.queue_size and not self._stop.is_set():
                    self._cond.wait(self._receive_timeout_s)
            self._received += 1
            if missing:
                self._gaps[item.series] += missing
            if self._stop.is_set() and self.policy == "lossless":
                self._dropped += 1  # stopped while waiting for room: never queued
                return True
            if len(self._queue) >= self.queue_size:
                self._drop_oldest_frame()
            self._queue.append(item)
            self._cond.notify_all()
        return False

    def _drop_oldest_frame(self) -> None:
        # Called with the lock held. Only frames are ever queued alongside (rare)
        # end markers and errors, which must not be dropped.
        for i, queued in enumerate(self._queue):
            if isinstance(queued, Frame):
                del self._queue[i]
                self._dropped += 1
                return

    def _count_malformed(self, err: ProtocolError) -> None:
        with self._lock:
            self._received += 1
            self._malformed[err.kind] += 1
            first = err.kind not in self._logged_kinds
            self._logged_kinds.add(err.kind)
        if first:  # once per kind, so a broken sender cannot flood the log
            logger.warning(
                "malformed message (%s) on %s: %s; further ones of this kind are counted, not logged",
                err.kind, self.name, err,
            )

    # -- consumer side --------------------------------------------------------------------
    def __iter__(self) -> Iterator[Frame]:
        while True:
            with self._cond:
                while not self._queue and not self._finished and not self._stop.is_set():
                    self._cond.wait(self._receive_timeout_s)
                if self._stop.is_set() or not self._queue:
                    return
                item = self._queue.popleft()
                if isinstance(item, Frame):
                    self._analysed += 1
                self._cond.notify_all()  # room for a lossless receive thread
            if isinstance(item, Frame):
                yield item
            elif isinstance(item, EndOfSeries):
                return
            elif isinstance(item, BaseException):
                raise item

    @property
    def counters(self) -> StreamCounters:
        """A consistent snapshot of the counters (see :class:`StreamCounters`)."""
        with self._lock:
            return StreamCounters(
                received=self._received,
                analysed=self._analysed,
                dropped=self._dropped,
                malformed=sum(self._malformed.values()),
                queued=sum(isinstance(q, Frame) for q in self._queue),
                gaps=sum(self._gaps.values()),
                malformed_by_kind=dict(self._malformed),
                gaps_by_series=dict(self._gaps),
                series_ended=self._series_ended,
            )

    @property
    def running(self) -> bool:
        """True while the receive thread is listening."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Ask the receive thread and the iteration to end soon (thread- and signal-safe)."""
        self._stop.set()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop, join the receive thread and count frames left in the queue as dropped."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            if self._closed:
                return
            self._closed = True
            left = sum(isinstance(q, Frame) for q in self._queue)
            self._dropped += left
            self._queue.clear()

    def __enter__(self) -> ZmqSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
