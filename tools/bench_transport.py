#!/usr/bin/env python
"""Transport benchmark: serve -> ZmqSource against bare pyzmq, and overload behaviour.

Section for ``tools/bench.py`` (``run(quick) -> str``, Markdown). Two parts:

1. Throughput, lossless (PUSH/PULL, nothing lost): ``serve`` (etemlive/1 messages,
   header + zero-copy buffer) into ``ZmqSource`` (receive thread, validation,
   zero-copy decode, bounded queue) against a bare pyzmq PUSH/PULL of the same
   buffers with ``copy=False``, in the same run, over tcp and ipc, for
   1024x1024, 2048x2048 and 4096x4096 uint16 frames.
2. Overload: a PUB camera at twice the rate the analysis sustains (the analysis is
   a fixed-cost consumer), drop-oldest policy: latency from receipt to analysis
   done (p50 / p99), resident memory sampled every second, and the counters.

Usage: ``python tools/bench_transport.py [--quick] [--overload-seconds S]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import numpy as np
import psutil
import zmq

from etemlive.frames import Frame
from etemlive.serve import ServeThread
from etemlive.sources.zmq import ZmqSource

SIZES = (1024, 2048, 4096)


def _endpoint(transport: str, tag: str) -> str:
    if transport == "tcp":
        return "tcp://127.0.0.1:0"
    return f"ipc://{tempfile.gettempdir()}/etemlive-bench-{os.getpid()}-{tag}.sock"


def bare_pushpull(image: np.ndarray, n: int, transport: str) -> float:
    """Frames per second of a bare pyzmq PUSH -> PULL of ``image``'s buffer (copy=False)."""
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    endpoint = _endpoint(transport, "bare")
    if endpoint.endswith(":0"):
        endpoint = f"tcp://127.0.0.1:{push.bind_to_random_port('tcp://127.0.0.1')}"
    else:
        push.bind(endpoint)
    pull = ctx.socket(zmq.PULL)
    pull.connect(endpoint)
    buf = memoryview(image).cast("B")

    def send() -> None:
        for _ in range(n):
            push.send(buf, copy=False)

    sender = threading.Thread(target=send)
    sender.start()
    times = np.empty(n)
    for i in range(n):
        pull.recv(copy=False)
        times[i] = time.perf_counter()
    sender.join()
    push.close()
    pull.close(linger=0)
    return (n - 1) / (times[-1] - times[0])


def etemlive_transport(image: np.ndarray, n: int, transport: str) -> tuple[float, dict]:
    """Frames per second of serve (PUSH) -> ZmqSource (PULL, lossless), and the counters."""
    frames = [Frame(i, i * 0.01, 0.5, image, "bench") for i in range(n)]
    server = ServeThread(frames, _endpoint(transport, "etemlive"), socket_type="push")
    server.start()
    endpoint = server.wait_ready()
    times = np.empty(n)
    count = 0
    with ZmqSource(endpoint, socket_type="pull", policy="lossless", idle_timeout_s=30) as src:
        for _frame in src:
            times[count] = time.perf_counter()
            count += 1
    server.join(30)
    counters = src.counters.as_dict()
    counters["lost"] = n - count
    return (count - 1) / (times[count - 1] - times[0]), counters


def throughput_section(quick: bool) -> str:
    counts = {1024: 400, 2048: 200, 4096: 40} if quick else {1024: 2000, 2048: 1000, 4096: 150}
    rows = []
    for transport in ("tcp", "ipc"):
        for size in SIZES:
            image = np.random.default_rng(0).integers(0, 4096, (size, size), dtype=np.uint16)
            n = counts[size]
            bare = bare_pushpull(image, n, transport)
            ours, counters = etemlive_transport(image, n, transport)
            mb = image.nbytes / 1e6
            lossless = counters["lost"] == 0 and counters["dropped"] == 0 and counters["malformed"] == 0
            rows.append(
                f"| {transport} | {size}x{size} ({image.nbytes / 2**20:.0f} MiB) | {n} | "
                f"{bare:.0f} ({bare * mb:.0f}) | {ours:.0f} ({ours * mb:.0f}) | {ours / bare:.2f} | "
                f"{'yes' if lossless else 'NO: ' + str(counters)} |"
            )
    return "\n".join(
        [
            "| transport | frame (uint16) | frames | bare pyzmq PUSH/PULL, frames/s (MB/s) | "
            "serve -> ZmqSource lossless, frames/s (MB/s) | ratio | no loss |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )


def overload(
    *, seconds: float, analysis_s: float = 0.02, size: int = 2048, queue_size: int = 8
) -> dict:
    """A PUB camera at 2x the analysis rate into a drop-oldest ZmqSource.

    The analysis is a fixed-cost consumer (``analysis_s`` per frame, a sleep, so
    the measurement is about the transport and the policy, not CPU contention).
    """
    fps = 2.0 / analysis_s
    image = np.random.default_rng(1).integers(0, 4096, (size, size), dtype=np.uint16)
    n_total = int(seconds * fps)

    class Camera:
        name = "overload"
        pixel_size_nm = 0.5
        pixel_size_source = "metadata"
        frame_interval_s = 1 / fps
        n_frames = n_total

        def __iter__(self):
            for i in range(n_total):
                yield Frame(i, i / fps, 0.5, image, "overload")

        def close(self) -> None:
            pass

    proc = psutil.Process()
    server = ServeThread(Camera(), "tcp://127.0.0.1:0", fps=fps, sndhwm=16)
    server.start()
    endpoint = server.wait_ready()
    latency_ms: list[float] = []
    rss_mib: list[float] = []
    next_sample = time.monotonic()
    t0 = time.monotonic()
    with ZmqSource(endpoint, queue_size=queue_size, idle_timeout_s=10) as src:
        for frame in src:
            time.sleep(analysis_s)  # the analysis
            latency_ms.append((time.perf_counter() - frame.received_s) * 1e3)
            if time.monotonic() >= next_sample:
                rss_mib.append(proc.memory_info().rss / 2**20)
                next_sample += 1.0
    wall_s = time.monotonic() - t0
    server.join(30)
    c = src.counters
    lat = np.array(latency_ms[len(latency_ms) // 10:])  # skip the first 10 %: queue filling
    rss = np.array(rss_mib[2:] if len(rss_mib) > 4 else rss_mib)
    return {
        "camera_fps": fps,
        "analysis_fps": 1 / analysis_s,
        "seconds": wall_s,
        "sent": server.frames_sent,
        "counters": c,
        "exact": c.received == c.analysed + c.dropped + c.malformed and c.received + c.gaps == n_total,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "rss_first_mib": float(rss[0]),
        "rss_max_mib": float(rss.max()),
        "rss_last_mib": float(rss[-1]),
        "analysed_fps": c.analysed / wall_s,
        "size": size,
        "queue_size": queue_size,
    }


def overload_section(seconds: float) -> str:
    r = overload(seconds=seconds)
    c = r["counters"]
    return "\n".join(
        [
            f"Camera (PUB, `serve --fps {r['camera_fps']:.0f}`) at 2x what the analysis sustains "
            f"({r['analysis_fps']:.0f} frames/s, a fixed {1e3 / r['analysis_fps']:.0f} ms per frame), "
            f"{r['size']}x{r['size']} uint16, drop-oldest, queue of {r['queue_size']}, "
            f"{r['seconds']:.0f} s:",
            "",
            "| sent | received | analysed | dropped | malformed | gaps | "
            "received = analysed + dropped + malformed, received + gaps = camera frames | "
            "analysed frames/s | latency p50 / p99 (ms) | p99 / p50 | RSS first / max / last (MiB) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {r['sent']} | {c.received} | {c.analysed} | {c.dropped} | {c.malformed} | {c.gaps} | "
            f"{'exact' if r['exact'] else 'NOT exact'} | {r['analysed_fps']:.1f} | "
            f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} | {r['p99_ms'] / r['p50_ms']:.2f} | "
            f"{r['rss_first_mib']:.0f} / {r['rss_max_mib']:.0f} / {r['rss_last_mib']:.0f} |",
        ]
    )


def run(quick: bool = False, overload_seconds: float | None = None) -> str:
    """The Markdown section for docs/benchmarks.md."""
    if overload_seconds is None:
        overload_seconds = 10.0 if quick else 30.0
    return "\n\n".join(
        [
            "## Transport (ZeroMQ, loopback)",
            "Raw transport, lossless: `serve(..., socket_type=\"push\")` in a thread into "
            "`ZmqSource(policy=\"lossless\", socket_type=\"pull\")`, the consumer only takes each "
            "frame; against a bare pyzmq PUSH/PULL (`copy=False`, one thread each) of the same "
            "buffer in the same run. Rate from the first to the last frame received.",
            throughput_section(quick),
            "### Overload (analysis slower than the camera)",
            overload_section(overload_seconds),
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--overload-seconds", type=float, default=None)
    args = parser.parse_args()
    print(run(quick=args.quick, overload_seconds=args.overload_seconds))
