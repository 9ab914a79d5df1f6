"""The dashboard in its own process, fed by the run over a local ZeroMQ socket.

Why a process: the window's Python work (pyqtgraph updates, painting) holds the GIL
that the analysis threads need between their numpy / OpenCV calls, so on a small
machine an in-process window slows the analysis by more than the CPU it uses. In its
own process, at a lower scheduling priority (``nice``), the display competes for CPU
only, and the OS gives the analysis precedence.

Parent side (the process that runs the pipeline):

``SnapshotServer(provider)``
    A thread that answers the window's requests from ``provider.latest_snapshot()``,
    ``track_history()`` and ``stop()``; the pipeline is never called from elsewhere.
``run_dashboard_process(provider, ...) -> int``
    Start the server and the window process; return when the window has closed.

Window side (``python -m etemlive._dashboard_proc ENDPOINT``):

``RemoteProvider(endpoint)``
    A :class:`~etemlive.dashboard.SnapshotProvider` over the socket: the window reads
    it exactly as it reads a pipeline in the same process.

Wire format: requests are small JSON objects (the run never unpickles what arrives on
its socket); replies are a pickle (protocol 5) with the big arrays (frame, labels) as
out-of-band frames, sent and received without copies. The frame is sent only when it
is new *and* the window will draw it (within its CPU budget, not paused); the
history travels incrementally (rows the window does not have yet); events and live
fits only when they changed. The endpoint is a Unix socket in a private (0700)
folder where the platform has them, else TCP on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zmq

from .snapshot import PipelineSnapshot, PipelineStats

log = logging.getLogger(__name__)

__all__ = ["RemoteProvider", "SnapshotServer", "main", "run_dashboard_process"]

_HISTORY_COLUMNS = ("frame", "time_s", "diameter_nm")


def encode(obj: Any) -> list[Any]:
    """Pickle ``obj`` with its contiguous arrays as separate zero-copy frames."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [header, *(b.raw() for b in buffers)]


def decode(frames: Sequence[Any]) -> Any:
    """Inverse of :func:`encode` (``frames`` as bytes or ``zmq.Frame``)."""
    views = [f.buffer if isinstance(f, zmq.Frame) else f for f in frames]
    return pickle.loads(views[0], buffers=views[1:])


# ----------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------


def _private_endpoint() -> tuple[str, str | None]:
    """A local endpoint only this user can reach: (endpoint, folder to remove or None)."""
    if hasattr(zmq, "IPC_PATH_MAX_LEN") and zmq.has("ipc"):
        folder = tempfile.mkdtemp(prefix="etemlive-dash-")  # mode 0700
        path = os.path.join(folder, "s")
        if len(path) < zmq.IPC_PATH_MAX_LEN:
            return f"ipc://{path}", folder
        shutil.rmtree(folder, ignore_errors=True)
    return "tcp://127.0.0.1:*", None


class SnapshotServer:
    """Answers a dashboard process's requests from a snapshot provider, on its own thread.

    Parameters
    ----------
    provider : SnapshotProvider
        The running pipeline (``latest_snapshot``, ``track_history``, ``stop``, ``running``).
    poll_ms : int
        How often the thread checks whether it should end (ms).

    Notes
    -----
    The server keeps no per-client state beyond references to the last objects sent:
    each request says what the window already has (frame index, history rows, events and fit tokens), and the reply carries only
    what is newer. A request that cannot be parsed gets an error reply and is counted
    in ``bad_requests``; the thread keeps serving.
    """

    def __init__(self, provider: Any, *, poll_ms: int = 100) -> None:
        self.provider = provider
        self.poll_ms = int(poll_ms)
        self.endpoint = ""
        self.requests = 0
        self.frames_sent = 0
        self.bad_requests = 0
        self._folder: str | None = None
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._sent_events: object = None
        self._sent_fit: object = None

    def start(self) -> str:
        """Bind and start serving; return the endpoint the window connects to."""
        self._thread = threading.Thread(target=self._serve, name="etemlive-dashboard-server",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(10.0)
        if self._error is not None:
            raise self._error
        return self.endpoint

    def close(self) -> None:
        """Stop serving and remove the socket's folder."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> SnapshotServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        context = zmq.Context()
        sock = context.socket(zmq.REP)
        sock.linger = 0
        try:
            endpoint, self._folder = _private_endpoint()
            sock.bind(endpoint)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException as err:  # handed to start()
            self._error = err
            self._ready.set()
            sock.close(0)
            context.term()
            return
        self._ready.set()
        try:
            while not self._closing.is_set():
                if not sock.poll(self.poll_ms):
                    continue
                message = sock.recv()
                self.requests += 1
                try:
                    reply = self._answer(message)
                except Exception as err:  # noqa: BLE001 (a bad request must not end serving)
                    self.bad_requests += 1
                    log.warning("dashboard request failed: %s", err)
                    reply = {"error": f"{type(err).__name__}: {err}"}
                sock.send_multipart(encode(reply), copy=False)
        finally:
            sock.close(0)
            context.term()

    def _answer(self, message: bytes) -> dict[str, Any]:
        request = json.loads(message)
        if not isinstance(request, dict):
            raise ValueError("a request must be a JSON object")
        op = request.get("op")
        if op == "snapshot":
            return self._snapshot_reply(request)
        if op == "history":
            table = self.provider.track_history(int(request["track_id"]))
            return {"history": table}
        if op == "stop":
            self.provider.stop()
            return {"ok": True}
        raise ValueError(f"unknown request {op!r}")

    def _snapshot_reply(self, request: dict[str, Any]) -> dict[str, Any]:
        snap = self.provider.latest_snapshot()
        reply: dict[str, Any] = {"running": bool(getattr(self.provider, "running", True))}
        if snap is None:
            return reply
        reply["stats"] = snap.stats
        reply["time_unit"] = snap.time_unit
        # The final frame is always sent: the window shows the run's end state.
        wanted = request.get("want_frame", True) or not reply["running"]
        if snap.frame_index != int(request.get("frame", -1)) and wanted:
            reply["frame"] = {
                "frame_index": snap.frame_index,
                "time_s": snap.time_s,
                "image": snap.image,
                "display_scale": snap.display_scale,
                "labels": snap.labels,
                "particles": snap.particles,
            }
            self.frames_sent += 1
        have_rows = int(request.get("rows", 0))
        history = snap.history
        if have_rows > len(history):  # a different run: send it all
            have_rows = 0
        if len(history) > have_rows:
            reply["history_start"] = have_rows
            reply["history"] = {c: np.ascontiguousarray(history[c].to_numpy()[have_rows:])
                                for c in history.columns}
        # Tokens are ids of the objects last sent, kept referenced here so that no other
        # object can take their id while the window may still quote it.
        if id(snap.events) != request.get("events"):
            self._sent_events = snap.events
            reply["events"] = (id(snap.events), snap.events)
        fit = snap.live_fit
        if fit is not None and id(fit) != request.get("fit"):
            self._sent_fit = fit
            reply["live_fit"] = (id(fit), fit)
        return reply


def run_dashboard_process(
    provider: Any,
    *,
    title: str = "etemlive",
    refresh_hz: float = 20.0,
    cpu_budget: float | str | None = "auto",
    nice: int = 19,
    close_when_finished: bool = False,
    save_png: str | os.PathLike[str] | None = None,
    stats_json: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Show the dashboard for a run in its own process; return when the window closes.

    Parameters
    ----------
    provider : SnapshotProvider
        The running pipeline.
    title, refresh_hz, cpu_budget
        As :func:`etemlive.dashboard.run_dashboard`.
    nice : int
        Scheduling niceness added to the window process (POSIX), so that on a busy
        machine the analysis gets the CPU first (19, the lowest priority; nice 10 is
        measured beside it in docs/benchmarks.md, Dashboard). 0 keeps the parent's
        priority.
    close_when_finished : bool
        Close the window by itself once the run has finished (scripts, benchmarks);
        by default it stays open on the final state until the user closes it.
    save_png : path, optional
        Save a PNG of the window when it closes.
    stats_json : path, optional
        Write the window's counts (``redraws``, ``skipped``, ``redraw_errors``), its
        process's CPU seconds (``cpu_s``) and its CPU share from the first frame on
        (``cores_after_first_frame``) here when it closes.
    env : dict, optional
        Environment of the window process (default: this process's).

    Returns
    -------
    int
        0 when the window was closed (by the user, Ctrl-C or SIGTERM, or at the run's
        end with ``close_when_finished``); the window process's exit code otherwise
        (it failed: the caller goes on headless).
    """
    server = SnapshotServer(provider)
    endpoint = server.start()
    cmd = [sys.executable, "-m", "etemlive._dashboard_proc", endpoint, "--title", title,
           "--refresh-hz", repr(float(refresh_hz)), "--cpu-budget", str(cpu_budget),
           "--nice", str(int(nice)), "--parent-pid", str(os.getpid())]
    if close_when_finished:
        cmd.append("--close-when-finished")
    if save_png is not None:
        cmd += ["--save-png", os.fspath(save_png)]
    if stats_json is not None:
        cmd += ["--stats-json", os.fspath(stats_json)]
    interrupted = threading.Event()
    previous: dict[int, Any] = {}
    env = dict(os.environ if env is None else env)
    # The window imports this same etemlive, wherever it was imported from here.
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    try:
        proc = subprocess.Popen(cmd, env=env)
        if threading.current_thread() is threading.main_thread():
            def close_window(signum: int, _frame: Any) -> None:
                # The window closes itself on SIGTERM (and asks the run to stop).
                interrupted.set()
                if proc.poll() is None:
                    proc.terminate()

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, close_window)
        while True:
            try:
                code = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
    if code != 0 and interrupted.is_set():
        return 0
    return code


def benchmark_transfer(n: int = 30, size: int = 2048, n_particles: int = 500,
                       display_max_px: int = 1024) -> dict[str, float]:
    """Time moving one new snapshot from the run to the window process's reader.

    A :class:`SnapshotServer` and a :class:`RemoteProvider` on a real local socket (in
    one process, so the time is the round trip: request, pickling, transfer, unpickling),
    fed ``n`` distinct snapshots of ``size`` x ``size`` frames reduced to the pipeline's
    display size, with ``n_particles`` particles. Returns ``ms_median``, ``ms_p90``,
    ``mb_per_frame`` (the arrays sent) and ``n``.
    """
    from .dashboard import synthetic_snapshots

    step = max(1, math.ceil(size / display_max_px))
    snaps = []
    for snap in synthetic_snapshots(n, size=size, n_particles=n_particles):
        snaps.append(PipelineSnapshot(
            frame_index=snap.frame_index, time_s=snap.time_s,
            image=np.ascontiguousarray(snap.image[::step, ::step]), display_scale=step,
            labels=np.ascontiguousarray(snap.labels[::step, ::step]), particles=snap.particles,
            history=snap.history, events=snap.events, stats=snap.stats))

    class _Cycle:
        running = True

        def __init__(self) -> None:
            self.k = 0

        def latest_snapshot(self) -> PipelineSnapshot:
            return snaps[self.k]

        def track_history(self, track_id: int) -> pd.DataFrame:
            return pd.DataFrame({c: [] for c in _HISTORY_COLUMNS})

        def stop(self) -> None:
            self.running = False

    provider = _Cycle()
    times_ms = []
    with SnapshotServer(provider) as server:
        remote = RemoteProvider(server.endpoint, wait_s=5.0)
        try:
            for k in range(n):
                provider.k = k
                t0 = time.perf_counter()
                snap = remote.latest_snapshot()
                times_ms.append((time.perf_counter() - t0) * 1e3)
                if snap is None or snap.frame_index != snaps[k].frame_index:
                    raise RuntimeError("the window's reader did not receive the new snapshot")
        finally:
            remote.close()
    first = snaps[0]
    return {
        "n": n,
        "ms_median": float(np.median(times_ms[1:])),
        "ms_p90": float(np.percentile(times_ms[1:], 90)),
        "mb_per_frame": (first.image.nbytes + first.labels.nbytes) / 2**20,
    }


# ----------------------------------------------------------------------------------
# Window side
# ----------------------------------------------------------------------------------


class _GrowingColumns:
    """Append-only float columns (the run's frames.csv history, as the window has it)."""

    def __init__(self) -> None:
        self._data: dict[str, np.ndarray] = {}
        self.n = 0

    def reset(self) -> None:
        self._data, self.n = {}, 0

    def extend(self, start: int, columns: dict[str, np.ndarray]) -> None:
        if start != self.n:
            if start != 0:
                return  # out of order: ignore, the next reply restarts from self.n
            self.reset()
        rows = len(next(iter(columns.values()))) if columns else 0
        need = self.n + rows
        for name, values in columns.items():
            column = self._data.get(name)
            if column is None:
                column = np.full(max(1024, need), np.nan)
            elif len(column) < need:
                column = np.concatenate([column, np.full(max(len(column), need), np.nan)])
            column[self.n:need] = values
            self._data[name] = column
        self.n = need

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({c: a[: self.n] for c, a in self._data.items()}, copy=False)


class RemoteProvider:
    """A snapshot provider that reads a :class:`SnapshotServer` over ZeroMQ.

    Every :meth:`latest_snapshot` call sends at most one request and waits at most
    ``wait_s`` for its reply (the window's timer must stay responsive); a reply that
    comes later is taken on the next call. A run that stops answering for
    ``timeout_s`` is shown as finished ("connection lost").

    Parameters
    ----------
    endpoint : str
        The server's endpoint.
    wait_s : float
        Longest wait for a reply per call (s).
    timeout_s : float
        Silence after which the run is taken as gone (s).
    parent_pid : int, optional
        The run's process id; when it is gone the window shows the run as finished.
    idle_poll_hz : float
        Most requests per second while :attr:`frame_wanted` says no (counters only).
    """

    def __init__(self, endpoint: str, *, wait_s: float = 0.03, timeout_s: float = 10.0,
                 parent_pid: int | None = None, idle_poll_hz: float = 4.0) -> None:
        self.endpoint = endpoint
        self.wait_s = float(wait_s)
        self.timeout_s = float(timeout_s)
        self.parent_pid = parent_pid
        self.running = True
        self.connection_lost = False
        #: (wall s, this process's CPU s) when the first frame arrived, else None.
        self.first_frame_s: tuple[float, float] | None = None
        #: Called before each request: False when the window would not draw a new
        #: frame now (paused, over its CPU budget), so the frame is not sent.
        self.frame_wanted: Callable[[], bool] | None = None
        self._context = zmq.Context()
        self._snap_sock = self._socket()
        self._ctl_sock = self._socket()
        self._pending_since: float | None = None
        self._last_request_s = -math.inf
        self._idle_s = 1.0 / float(idle_poll_hz)
        self._snapshot: PipelineSnapshot | None = None
        self._last_reply_s = time.monotonic()
        self._frame: dict[str, Any] | None = None
        self._stats = PipelineStats()
        self._time_unit = "s"
        self._history = _GrowingColumns()
        self._events: tuple[int | None, pd.DataFrame] = (None, pd.DataFrame())
        self._fit: tuple[int | None, Any] = (None, None)

    def _socket(self) -> zmq.Socket:
        sock = self._context.socket(zmq.REQ)
        sock.linger = 0
        # A request may be re-sent after a timeout; stale replies are then dropped.
        sock.setsockopt(zmq.REQ_RELAXED, 1)
        sock.setsockopt(zmq.REQ_CORRELATE, 1)
        sock.connect(self.endpoint)
        return sock

    def close(self) -> None:
        for sock in (self._snap_sock, self._ctl_sock):
            sock.close(0)
        self._context.term()

    def attach_window(self, window: Any) -> None:
        """Ask for frames only when ``window`` will draw them (run_dashboard calls this)."""
        def wanted() -> bool:
            budget = getattr(window, "cpu_budget", None)
            return not window.paused and (budget is None or budget.within())

        self.frame_wanted = wanted

    # -------------------------------------------------------------- protocol
    def latest_snapshot(self) -> PipelineSnapshot | None:
        """The newest state of the run as the window has it (never blocks long)."""
        now = time.monotonic()
        if self._pending_since is None:
            want = True if self.frame_wanted is None else bool(self.frame_wanted())
            # A window that would not draw a new frame now (paused, over its CPU
            # budget) asks only for the counters, and at most idle_poll_hz.
            if not want and self._frame is not None and now - self._last_request_s < self._idle_s:
                return self._snapshot
            request = {
                "op": "snapshot",
                "frame": -1 if self._frame is None else int(self._frame["frame_index"]),
                "want_frame": want,
                "rows": self._history.n,
                "events": self._events[0],
                "fit": self._fit[0],
            }
            self._snap_sock.send(json.dumps(request).encode())
            self._pending_since = self._last_request_s = now
        if self._snap_sock.poll(int(self.wait_s * 1000)):
            self._apply(decode(self._snap_sock.recv_multipart(copy=False)))
            self._pending_since = None
            self._last_reply_s = time.monotonic()
            self._snapshot = self._build_snapshot()
        elif time.monotonic() - self._last_reply_s > self.timeout_s or self._parent_gone():
            self._lose_connection()
        return self._snapshot

    def _build_snapshot(self) -> PipelineSnapshot | None:
        # Built once per reply: the window sees the same object until something changed.
        if self._frame is None:
            return None
        frame = self._frame
        return PipelineSnapshot(
            frame_index=frame["frame_index"],
            time_s=frame["time_s"],
            image=frame["image"],
            display_scale=frame["display_scale"],
            labels=frame["labels"],
            particles=frame["particles"],
            history=self._history.table(),
            events=self._events[1],
            tracks={},
            stats=self._stats,
            time_unit=self._time_unit,
            live_fit=self._fit[1],
        )

    def track_history(self, track_id: int) -> pd.DataFrame:
        """Growth curve of one track (empty when the run does not answer within 1 s)."""
        reply = self._call({"op": "history", "track_id": int(track_id)})
        table = None if reply is None else reply.get("history")
        if table is None:
            return pd.DataFrame({c: [] for c in _HISTORY_COLUMNS})
        return table

    def stop(self) -> None:
        """Ask the run to stop (closing the window calls it)."""
        if not self.connection_lost:
            self._call({"op": "stop"})

    # -------------------------------------------------------------- internals
    def _call(self, request: dict[str, Any], timeout_s: float = 1.0) -> dict[str, Any] | None:
        self._ctl_sock.send(json.dumps(request).encode())
        if not self._ctl_sock.poll(int(timeout_s * 1000)):
            return None
        reply = decode(self._ctl_sock.recv_multipart(copy=False))
        if "error" in reply:
            log.warning("the run refused %s: %s", request.get("op"), reply["error"])
            return None
        return reply

    def _apply(self, reply: dict[str, Any]) -> None:
        if "error" in reply:
            log.warning("the run refused a snapshot request: %s", reply["error"])
            return
        self.running = bool(reply.get("running", True))
        if "stats" in reply:
            self._stats = reply["stats"]
            self._time_unit = reply.get("time_unit", "s")
        if "frame" in reply:
            if self._frame is None:  # the window's steady state starts here
                self.first_frame_s = (time.perf_counter(), time.process_time())
            self._frame = reply["frame"]
        if "history" in reply:
            self._history.extend(int(reply["history_start"]), reply["history"])
        if "events" in reply:
            self._events = reply["events"]
        if "live_fit" in reply:
            self._fit = reply["live_fit"]

    def _parent_gone(self) -> bool:
        if self.parent_pid is None:
            return False
        return os.getppid() != self.parent_pid

    def _lose_connection(self) -> None:
        if not self.connection_lost:
            log.warning("the run stopped answering; showing it as finished")
        self.connection_lost = True
        self.running = False


def _budget(text: str) -> float | str | None:
    if text.lower() in ("none", "off", "0"):
        return None
    if text == "auto":
        return "auto"
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"cpu budget must be auto, none or > 0, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the window process (``python -m etemlive._dashboard_proc``)."""
    parser = argparse.ArgumentParser(prog="etemlive-dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("endpoint")
    parser.add_argument("--title", default="etemlive")
    parser.add_argument("--refresh-hz", type=float, default=20.0)
    parser.add_argument("--cpu-budget", type=_budget, default="auto")
    parser.add_argument("--nice", type=int, default=19)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--close-when-finished", action="store_true")
    parser.add_argument("--save-png", type=Path, default=None)
    parser.add_argument("--stats-json", type=Path, default=None,
                        help="write the window's redraw counts and CPU seconds here at exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="etemlive dashboard: %(message)s")
    if args.nice and hasattr(os, "nice"):
        try:
            os.nice(args.nice)
        except OSError:  # not allowed here: run at the parent's priority
            pass
    provider = RemoteProvider(args.endpoint, parent_pid=args.parent_pid)
    try:
        from .dashboard import run_dashboard

        counts = run_dashboard(provider, title=args.title, refresh_hz=args.refresh_hz,
                               cpu_budget=args.cpu_budget,
                               close_when_finished=args.close_when_finished,
                               save_png=args.save_png)
        if args.stats_json is not None:
            stats = {**counts, "cpu_s": time.process_time()}
            if provider.first_frame_s is not None:  # CPU share from the first frame on
                wall0, cpu0 = provider.first_frame_s
                stats["cores_after_first_frame"] = (
                    (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9))
            args.stats_json.write_text(json.dumps(stats))
    except Exception as err:  # noqa: BLE001 (one line for the user, not a traceback)
        print(f"etemlive: the dashboard window failed: {type(err).__name__}: {err}",
              file=sys.stderr)
        return 1
    finally:
        provider.close()
    return 0


if __name__ == "__main__":  # pragma: no cover (run as a process by run_dashboard_process)
    sys.exit(main())
