"""The ``etemlive`` command line (verbs per ../shared/design.md "CLI contract").

Every verb exits 0 on success. Bad input exits 2 with one readable line on stderr
(``etemlive: error: ...``), never a traceback; ``--debug`` shows the traceback.
Heavy modules are imported inside the verbs so ``etemlive --version`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import __version__
from .allocator import keep_freed_memory
from .config import OUTLINES
from .errors import EtemliveError, InputError

log = logging.getLogger("etemlive")

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
#: Live queue between reception and analysis. Small, because when analysis is slower
#: than the camera every queued frame adds a frame time of latency; the newest
#: frames are kept and the oldest dropped (and counted).
LIVE_QUEUE_FRAMES = 2


# --------------------------------------------------------------------------- helpers
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2 (its default too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"etemlive: error: {message} (see {self.prog} --help)\n")


def make_segmenter(backend: str, outline: str = "network") -> Any:
    """The segmenter for ``--backend`` (``auto`` falls back to the classical pipeline
    only when no network backend is installed at all) with the U-Net outline convention
    ``outline`` (the classical pipeline's Otsu threshold has its own)."""
    if backend == "classical":
        from .segment.classical import ClassicalSegmenter

        return ClassicalSegmenter()
    try:
        from .segment import backends
    except ImportError as err:
        if backend == "auto":
            log.warning("U-Net backends unavailable (%s); using the classical pipeline", err)
            from .segment.classical import ClassicalSegmenter

            return ClassicalSegmenter()
        raise EtemliveError(f"backend {backend!r} is not available: {err}") from None
    return backends.make_segmenter(backend, outline=outline)


def tracker_factory():
    """``(pixel_size_nm, frame_interval_s) -> Tracker``."""
    from .track.tracker import Tracker

    def factory(pixel_size_nm: float, frame_interval_s: float | None) -> Any:
        return Tracker(pixel_size_nm=pixel_size_nm, frame_interval_s=frame_interval_s)

    return factory


def _live_analysis() -> Any:
    """Size-distribution and kinetics fits refreshed during the run (every 25 frames)."""
    from .analysis import LiveAnalysis

    return LiveAnalysis(update_every_n_frames=25)


def _finish_outputs(out_dir: Path, *, report: bool) -> None:
    """Run the analysis (distributions, kinetics, plots) and the HTML report."""
    if not report:
        return
    try:
        from .report import write_report
    except ImportError as err:  # analysis not installed in this build
        log.warning("report skipped: %s", err)
        return
    try:
        path = write_report(out_dir)
        print(f"report: {path}")
    except EtemliveError as err:
        print(f"etemlive: warning: report not written: {err}", file=sys.stderr)


def _run_pipeline(pipeline: Any, *, headless: bool, title: str) -> dict[str, Any]:
    """Run ``pipeline`` on a worker thread; the main thread shows status or the dashboard.

    Ctrl-C (SIGINT) or SIGTERM stops the run cleanly: frames in flight finish and the
    summary is written.
    """
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.update(pipeline.run())
        except BaseException as err:  # handed back to the main thread
            failure.append(err)

    worker = threading.Thread(target=target, name="etemlive-pipeline", daemon=True)

    def on_signal(signum: int, _frame: Any) -> None:
        print(f"\netemlive: stopping ({signal.Signals(signum).name}); writing the summary",
              file=sys.stderr)
        pipeline.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker.start()
        if not headless:
            from .dashboard import run_dashboard_process

            # The window runs in its own process (no GIL shared with the analysis).
            code = run_dashboard_process(pipeline, title=title)
            if code == 0:  # closed: the run stops with its summary written
                pipeline.stop()
            else:  # the window failed: nothing is lost, the run goes on
                print(f"etemlive: the dashboard window exited with code {code}; "
                      "the run goes on headless", file=sys.stderr)
        _show_status_until_done(pipeline, worker)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        raise failure[0]
    return result


def _show_status_until_done(pipeline: Any, worker: threading.Thread) -> None:
    tty = sys.stderr.isatty()
    last = 0.0
    while worker.is_alive():
        worker.join(timeout=0.25)
        now = time.monotonic()
        if now - last >= (1.0 if tty else 5.0) and pipeline.analysed:
            line = pipeline.status_line()
            if tty:
                print("\r" + line[:200].ljust(120), end="", file=sys.stderr, flush=True)
            else:
                print(line, file=sys.stderr, flush=True)
            last = now
    if tty:
        print(file=sys.stderr)


def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    def fmt(value: Any, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) else "-"

    print(
        f"analysed {summary.get('frames_analysed', 0)} of {summary.get('frames_seen', 0)} frames "
        f"({summary.get('frames_dropped', 0)} dropped, {summary.get('frames_malformed', 0)} malformed) "
        f"at {fmt(summary.get('fps'), '.1f')} fps; latency p50 {fmt(summary.get('latency_p50_ms'), '.0f')} ms, "
        f"p99 {fmt(summary.get('latency_p99_ms'), '.0f')} ms; backend {summary.get('backend')} "
        f"({summary.get('device')}); pixel size {fmt(summary.get('pixel_size_nm'), '.4g')} nm "
        f"({summary.get('pixel_size_source')})"
    )
    print(f"results: {out_dir}")


def _decide_headless(args: argparse.Namespace) -> bool:
    if args.headless:
        return True
    try:
        from .dashboard import dashboard_available
    except ImportError as err:
        print(f"etemlive: dashboard unavailable ({err}); running headless", file=sys.stderr)
        return True
    ok, reason = dashboard_available()
    if not ok:
        print(f"etemlive: {reason}; running headless", file=sys.stderr)
        return True
    return False


# ------------------------------------------------------------------------------ verbs
def cmd_analyze(args: argparse.Namespace) -> int:
    from .config import RunConfig
    from .pipeline import Pipeline
    from .record import Recorder
    from .sources.files import open_movie

    config = RunConfig(
        mode="analyze", input=str(args.movie), out_dir=str(args.out), backend=args.backend,
        pixel_size_nm=args.pixel_size_nm, scale_bar_nm=args.scale_bar_nm,
        frame_interval_s=args.frame_interval_s, save_labels=args.save_labels,
        track=not args.no_track, workers=args.workers, outline=args.outline,
    )
    source = open_movie(args.movie, pixel_size_nm=args.pixel_size_nm,
                        frame_interval_s=args.frame_interval_s)
    with source:
        open_warnings = list(getattr(source, "open_warnings", ()) or ())
        for warning in open_warnings:
            print(f"etemlive: warning: {warning}", file=sys.stderr)
        pixel_size_nm, pixel_source, bar_mask = _resolve_calibration(source, args)
        headless = _decide_headless(args)
        segmenter = make_segmenter(args.backend, args.outline)
        recorder = Recorder(args.out, save_labels=args.save_labels)
        recorder.write_config(config.to_dict())
        pipeline = Pipeline(
            source, segmenter, recorder,
            pixel_size_nm=pixel_size_nm, pixel_size_source=pixel_source,
            frame_interval_s=source.frame_interval_s,
            tracker_factory=tracker_factory() if config.track else None,
            workers=args.workers, publish_snapshots=not headless, input_name=str(args.movie),
            max_frames=args.max_frames, exclude_mask=bar_mask, live_analysis=_live_analysis(),
            summary_extra={"input_warnings": open_warnings},
        )
        progress = _Progress(pipeline, source.n_frames) if headless and sys.stderr.isatty() else None
        if progress is not None:
            progress.start()
        try:
            summary = _run_pipeline(pipeline, headless=headless, title=f"etemlive: {args.movie}")
        finally:
            if progress is not None:
                progress.stop()
    _finish_outputs(Path(args.out), report=not args.no_report)
    _print_summary(summary, Path(args.out))
    return 0


def _resolve_calibration(
    source: Any, args: argparse.Namespace
) -> tuple[float, str, Any]:
    """Pixel size, its source, and the mask of a burned-in scale bar (or None).

    The user's value wins, then the file's metadata, then a scale bar found in the
    first frame (its label read by OCR, or its length given by ``--scale-bar-nm``).
    """
    from .scale import detect_scale_bar, resolve_pixel_size, scale_bar_mask

    if args.pixel_size_nm is not None or source.pixel_size_nm is not None:
        pixel_size_nm, origin = resolve_pixel_size(metadata_nm=source.pixel_size_nm,
                                                   user_nm=args.pixel_size_nm)
        return pixel_size_nm, origin, None
    read_frame = getattr(source, "read_frame", None)
    first = read_frame(0) if callable(read_frame) and getattr(source, "n_frames", 0) else None
    image = first.image if first is not None else None
    pixel_size_nm, origin = resolve_pixel_size(metadata_nm=None, user_nm=None, image=image,
                                               scale_bar_nm=args.scale_bar_nm)
    mask = None
    if origin == "scale bar" and image is not None:
        bar = detect_scale_bar(image, ocr=False)
        mask = scale_bar_mask(image, bar) if bar is not None else None
    return pixel_size_nm, origin, mask


class _Progress:
    """A progress bar on a terminal for file analysis (stderr, one line)."""

    def __init__(self, pipeline: Any, total: int | None) -> None:
        self.pipeline = pipeline
        self.total = total
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            done = self.pipeline.analysed
            if self.total:
                frac = min(done / self.total, 1.0)
                bar = "#" * int(30 * frac)
                print(f"\r[{bar:<30}] {done}/{self.total} frames", end="", file=sys.stderr, flush=True)


def cmd_live(args: argparse.Namespace) -> int:
    from .config import RunConfig
    from .record import Recorder
    from .sources.zmq import ZmqSource

    config = RunConfig(
        mode="live", input=args.endpoint, out_dir=str(args.out), backend=args.backend,
        pixel_size_nm=args.pixel_size_nm, frame_interval_s=args.frame_interval_s,
        save_labels=args.save_labels, track=not args.no_track, policy=args.policy,
        workers=args.workers, outline=args.outline,
    )
    headless = _decide_headless(args)
    segmenter = make_segmenter(args.backend, args.outline)
    # The socket first: a bad endpoint or a port in use leaves no output folder behind.
    source = ZmqSource(
        args.endpoint, bind=args.bind, socket_type=args.socket, policy=args.policy,
        pixel_size_nm=args.pixel_size_nm, idle_timeout_s=args.idle_timeout_s,
        queue_size=args.queue_size,
    )
    try:
        recorder = Recorder(args.out, save_labels=args.save_labels)
    except BaseException:
        source.close()
        raise
    recorder.write_config(config.to_dict())
    summary = _live_run(source, segmenter, recorder, args, headless=headless,
                        input_name=args.endpoint, config=config)
    _finish_outputs(Path(args.out), report=not args.no_report)
    _print_summary(summary, Path(args.out))
    return 0


def _live_run(source: Any, segmenter: Any, recorder: Any, args: argparse.Namespace, *,
              headless: bool, input_name: str, config: Any) -> dict[str, Any]:
    from .pipeline import Pipeline

    pipeline = Pipeline(
        source, segmenter, recorder,
        pixel_size_nm=args.pixel_size_nm,
        pixel_size_source="user" if args.pixel_size_nm else None,
        frame_interval_s=args.frame_interval_s or getattr(source, "frame_interval_s", None),
        tracker_factory=tracker_factory() if config.track else None,
        workers=args.workers, publish_snapshots=not headless, input_name=input_name,
        max_seconds=getattr(args, "seconds", None), live_analysis=_live_analysis(),
    )
    return _run_pipeline(pipeline, headless=headless, title=f"etemlive: {input_name}")


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulator -> serve (ZeroMQ on loopback) -> live analysis: the whole real path."""
    from .config import RunConfig
    from .record import Recorder
    from .serve import ServeThread
    from .sources.simulate import SimulatedSource, SimulationConfig
    from .sources.zmq import ZmqSource

    fps = args.fps
    n_frames = max(2, int(math.ceil(args.seconds * fps)) + int(2 * fps))
    sim = SimulationConfig(scenario=args.scenario, seed=args.seed, n_frames=n_frames,
                           size_px=args.size)
    headless = _decide_headless(args)
    segmenter = make_segmenter(args.backend, args.outline)
    simulated = SimulatedSource(sim)
    # Bound first on a free port; the publisher waits for its first subscriber, so
    # connecting afterwards loses no frame.
    camera = ServeThread(simulated, "tcp://127.0.0.1:0", fps=fps, socket_type="pub")
    camera.start()
    try:
        endpoint = camera.wait_ready()
        config = RunConfig(mode="demo", input=f"simulator {args.scenario} -> {endpoint}",
                           out_dir=str(args.out), backend=args.backend, track=True,
                           outline=args.outline)
        source = ZmqSource(endpoint, socket_type="sub", policy="drop-oldest",
                           idle_timeout_s=10.0, queue_size=LIVE_QUEUE_FRAMES)
        recorder = Recorder(args.out, save_labels=args.save_labels)
        recorder.write_config(config.to_dict())
        print(f"demo: simulated {args.scenario} movie, {args.size}x{args.size} px at {fps:g} fps, "
              f"served on {endpoint}, for {args.seconds:g} s", file=sys.stderr)
        args.pixel_size_nm = None
        args.frame_interval_s = None
        summary = _live_run(source, segmenter, recorder, args, headless=headless,
                            input_name=config.input, config=config)
    finally:
        camera.stop()
        camera.join(timeout=5)
        simulated.close()
    if camera.error is not None:
        raise camera.error
    _finish_outputs(Path(args.out), report=True)
    _print_summary(summary, Path(args.out))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve
    from .sources.files import open_movie

    source = open_movie(args.movie, pixel_size_nm=args.pixel_size_nm)
    with source:
        stop = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
        try:
            sent = serve(source, args.bind, fps=args.fps, loop=args.loop,
                         socket_type=args.socket, stop_event=stop)
        finally:
            signal.signal(signal.SIGINT, previous)
    print(f"served {sent} frames on {args.bind}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .sources.simulate import SimulationConfig, write_simulation

    kwargs: dict[str, Any] = dict(scenario=args.scenario, seed=args.seed, n_frames=args.frames,
                                  size_px=args.size)
    if args.pixel_size_nm is not None:
        kwargs["pixel_size_nm"] = args.pixel_size_nm
    if args.dose is not None:
        kwargs["dose_e_per_px"] = args.dose
    config = SimulationConfig(**kwargs)
    out = Path(args.out)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"simulate writes a TIFF stack: give OUT.tif, got {str(out)!r}")
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    paths = write_simulation(out, config)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    from .segment.backends import build_engine

    path = build_engine(args.onnx, args.out, fp16=args.fp16)
    print(f"engine: {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    out = Path(args.outdir)
    if not (out / "particles.csv").exists():
        raise InputError(f"{str(out)!r} is not an etemlive output folder (no particles.csv)")
    print(f"report: {write_report(out)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    script = Path(__file__).resolve().parents[2] / "tools" / "bench.py"
    if not script.exists():
        raise InputError("etemlive bench runs tools/bench.py from a source checkout; none found")
    sys.argv = [str(script), *(["--quick"] if args.quick else []),
                *(["--only", *args.only] if args.only else [])]
    runpy.run_path(str(script), run_name="__main__")
    return 0


# ------------------------------------------------------------------------------ parser
def _add_outline_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--outline", default="network", choices=OUTLINES,
                   help="U-Net outlines: the network's edge (geometric, as the simulator's "
                        "truth) or half of each particle's contrast (as drawn by hand)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="etemlive", description=(
        "Real-time nanoparticle analysis for in-situ / environmental TEM movies."))
    parser.add_argument("--version", action="version", version=f"etemlive {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)

    def add_run_options(p: argparse.ArgumentParser, *, live: bool) -> None:
        p.add_argument("--out", required=not live or None, type=Path, help="output folder")
        p.add_argument("--headless", action="store_true", help="no dashboard window")
        p.add_argument("--backend", default="auto",
                       choices=("auto", "tensorrt", "onnx", "torch", "classical"))
        _add_outline_option(p)
        p.add_argument("--pixel-size-nm", type=_positive_float, help="pixel size in nm/px (overrides metadata)")
        p.add_argument("--frame-interval-s", type=_positive_float, help="seconds between frames (overrides metadata)")
        p.add_argument("--save-labels", action="store_true", help="write labels.tif")
        p.add_argument("--no-track", action="store_true", help="measure only, no tracking")
        p.add_argument("--no-report", action="store_true", help="skip the HTML report at the end")
        p.add_argument("--workers", type=_positive_int, help="segmentation workers (default: automatic)")

    p = sub.add_parser("analyze", help="analyse a recorded movie")
    p.add_argument("movie", type=Path)
    add_run_options(p, live=False)
    p.add_argument("--scale-bar-nm", type=_positive_float, help="length of the burned-in scale bar (nm)")
    p.add_argument("--max-frames", type=_positive_int, help="stop after this many frames")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("live", help="analyse a camera stream (ZeroMQ)")
    p.add_argument("endpoint", help="e.g. tcp://127.0.0.1:5555")
    add_run_options(p, live=True)
    p.add_argument("--bind", action="store_true", help="bind instead of connect")
    p.add_argument("--socket", choices=("sub", "pull"), default="sub")
    p.add_argument("--policy", choices=("drop-oldest", "lossless"), default="drop-oldest")
    p.add_argument("--idle-timeout-s", type=_positive_float, help="stop after this long without frames")
    p.add_argument("--seconds", type=_positive_float, help="stop after this many seconds")
    p.add_argument("--queue-size", type=_positive_int, default=LIVE_QUEUE_FRAMES,
                   help="frames held between reception and analysis (small = low latency)")
    p.set_defaults(func=cmd_live, out=None)

    p = sub.add_parser("demo", help="simulated camera -> serve -> live analysis on loopback")
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--headless", action="store_true")
    p.add_argument("--seconds", type=_positive_float, default=20.0)
    p.add_argument("--scenario", default="coalescence")
    p.add_argument("--size", type=_positive_int, default=512, help="frame size in px")
    p.add_argument("--fps", type=_positive_float, default=10.0, help="camera frame rate")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backend", default="auto",
                   choices=("auto", "tensorrt", "onnx", "torch", "classical"))
    _add_outline_option(p)
    p.add_argument("--save-labels", action="store_true")
    p.add_argument("--workers", type=_positive_int)
    p.set_defaults(func=cmd_demo, no_track=False, no_report=False)

    p = sub.add_parser("serve", help="replay a movie as a camera (ZeroMQ publisher)")
    p.add_argument("movie", type=Path)
    p.add_argument("--bind", default="tcp://127.0.0.1:5555")
    p.add_argument("--fps", type=_positive_float)
    p.add_argument("--loop", action="store_true")
    p.add_argument("--socket", choices=("pub", "push"), default="pub")
    p.add_argument("--pixel-size-nm", type=_positive_float)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("simulate", help="write a simulated movie with exact ground truth")
    p.add_argument("out", type=Path, metavar="OUT.tif")
    p.add_argument("--scenario", default="coalescence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=_positive_int, default=50)
    p.add_argument("--size", type=_positive_int, default=512)
    p.add_argument("--pixel-size-nm", type=_positive_float)
    p.add_argument("--dose", type=_positive_float, help="electron dose, e-/px")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("build-engine", help="build a TensorRT engine from the ONNX model")
    p.add_argument("--onnx", type=Path, default=Path("engines/unet.onnx"))
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=cmd_build_engine)

    p = sub.add_parser("report", help="(re)write the HTML report of an output folder")
    p.add_argument("outdir", type=Path)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="run tools/bench.py (writes docs/benchmarks.md)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="+", help="sections to run")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("ETEMLIVE_DEBUG") == "1"
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="etemlive: %(levelname)s: %(message)s")
    if args.verb is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    if getattr(args, "out", "unset") is None and args.verb == "live":
        parser.exit(EXIT_BAD_INPUT, "etemlive: error: live needs --out DIR\n")
    keep_freed_memory()  # frame-sized buffers are reused, not re-faulted, every frame
    try:
        return int(args.func(args) or 0)
    except EtemliveError as err:
        if debug:
            raise
        print(f"etemlive: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("etemlive: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:
        if debug:
            raise
        where = f" {err.filename!r}" if getattr(err, "filename", None) else ""
        print(f"etemlive: error:{where} {err.strerror or err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # noqa: BLE001 (one line, never a traceback, for users)
        if debug:
            raise
        print(f"etemlive: internal error: {type(err).__name__}: {err} (rerun with --debug "
              "for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
