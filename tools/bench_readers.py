"""Benchmark section: movie-reader throughput and memory per file format.

For every format ``open_movie`` reads, a movie of N frames is written by that format's
own library (tifffile, mrcfile, OpenCV, RosettaSciIO) or by tests/data_makers.py (Velox
emd, TIA ser, DM3, written from their published layouts), then read end to end. Reported:
time to open, ms per frame and frames/s while iterating, and the growth of the process's
resident memory (RSS) over the whole read, which stays near one frame when streaming.

Run alone: ``python tools/bench_readers.py [--quick]``; part of ``tools/bench.py``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # data_makers: per-spec writers for emd / ser / dm3


def _writers() -> dict[str, Callable[[Path, np.ndarray], Path]]:
    import cv2
    import mrcfile
    import tifffile
    from data_makers import write_dm3, write_ser, write_velox_emd

    def tif(d: Path, s: np.ndarray) -> Path:
        tifffile.imwrite(d / "m.tif", s, photometric="minisblack",
                         metadata={"pixel_size_nm": 0.5})
        return d / "m.tif"

    def tif_zlib(d: Path, s: np.ndarray) -> Path:
        tifffile.imwrite(d / "m.tif", s, photometric="minisblack", compression="zlib")
        return d / "m.tif"

    def ome(d: Path, s: np.ndarray) -> Path:
        tifffile.imwrite(d / "m.ome.tif", s, ome=True,
                         metadata={"axes": "TYX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "nm"})
        return d / "m.ome.tif"

    def mrc(d: Path, s: np.ndarray) -> Path:
        with mrcfile.new(d / "m.mrc") as f:
            f.set_data(s)
            f.voxel_size = 5.0
        return d / "m.mrc"

    def ser(d: Path, s: np.ndarray) -> Path:
        return write_ser(d / "m.ser", s, pixel_size_m=0.5e-9)

    def dm3(d: Path, s: np.ndarray) -> Path:
        return write_dm3(d / "m.dm3", s, scale=0.5, units="nm")

    def emd(d: Path, s: np.ndarray) -> Path:
        return write_velox_emd(d / "m.emd", s, pixel_size_m=0.5e-9, frame_time_s=0.1)

    def hspy(d: Path, s: np.ndarray) -> Path:
        from rsciio.hspy import file_writer

        n, rows, cols = s.shape
        axes = [{"name": "t", "size": n, "scale": 0.1, "offset": 0.0, "units": "s",
                 "navigate": True}] + [
            {"name": a, "size": k, "scale": 0.5, "offset": 0.0, "units": "nm", "navigate": False}
            for a, k in (("y", rows), ("x", cols))]
        file_writer(str(d / "m.hspy"), {
            "data": s, "axes": axes, "metadata": {"General": {"title": "m"}, "Signal": {}},
            "original_metadata": {}, "attributes": {"_lazy": False}, "tmp_parameters": {},
            "learning_results": {}, "models": {}, "package_info": {"name": "", "version": ""},
        })
        return d / "m.hspy"

    def video(fourcc: str, ext: str) -> Callable[[Path, np.ndarray], Path]:
        def write(d: Path, s: np.ndarray) -> Path:
            path = d / f"m{ext}"
            w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0,
                                (s.shape[2], s.shape[1]), isColor=False)
            if not w.isOpened():
                raise RuntimeError(f"OpenCV cannot encode {fourcc} here")
            for frame in s:
                w.write((frame >> 4).astype(np.uint8))
            w.release()
            return path
        return write

    def png_folder(d: Path, s: np.ndarray) -> Path:
        folder = d / "frames"
        folder.mkdir()
        for i, frame in enumerate(s):
            cv2.imwrite(str(folder / f"frame_{i}.png"), frame)
        return folder

    return {"TIFF (uncompressed)": tif, "TIFF (zlib)": tif_zlib, "OME-TIFF": ome, "MRC": mrc,
            "FEI ser": ser, "Gatan dm3": dm3, "Velox emd": emd, "HyperSpy hspy": hspy,
            "mp4 (mp4v)": video("mp4v", ".mp4"), "avi (MJPG)": video("MJPG", ".avi"),
            "PNG folder": png_folder}


def _measure(path: Path) -> tuple[float, float, float, int]:
    """(open ms, ms per frame, RSS growth MB, frames) for one end-to-end read."""
    from etemlive.sources.files import open_movie

    try:
        import psutil

        process = psutil.Process()
        rss = lambda: process.memory_info().rss  # noqa: E731
    except ImportError:  # pragma: no cover
        rss = lambda: 0  # noqa: E731
    open_movie(path).close()  # one-time set-up (unit registries, codecs) is not open time
    t0 = time.perf_counter()
    movie = open_movie(path)
    t1 = time.perf_counter()
    before = rss()
    with movie:
        count = 0
        for frame in movie:
            count += frame.image.shape[0] > 0
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3 / max(count, 1), (rss() - before) / 1e6, count


def run(quick: bool = False) -> str:
    n, side = (30, 512) if quick else (100, 1024)
    stack = np.random.default_rng(0).integers(0, 4096, (n, side, side), dtype=np.uint16)
    # Import once up front: the first rsciio-backed open in a process pays ~1 s of
    # imports (dask, pint, h5py), which is reported separately, not per format.
    t0 = time.perf_counter()
    import dask.array  # noqa: F401
    import rsciio.digitalmicrograph  # noqa: F401
    import rsciio.emd  # noqa: F401
    import rsciio.hspy  # noqa: F401
    import_s = time.perf_counter() - t0
    rows = []
    for name, write in _writers().items():
        tmp = Path(tempfile.mkdtemp(prefix="etemlive-bench-readers-"))
        try:
            path = write(tmp, stack)
            size_mb = sum(p.stat().st_size for p in ([path] if path.is_file()
                                                      else path.iterdir())) / 1e6
            open_ms, frame_ms, rss_mb, count = _measure(path)
            rows.append(f"| {name} | {size_mb:.0f} | {count} | {open_ms:.1f} | {frame_ms:.2f} | "
                        f"{1e3 / frame_ms:.0f} | {rss_mb:+.1f} |")
        except Exception as err:  # noqa: BLE001 - a format that cannot run here is reported
            rows.append(f"| {name} | - | - | - | - | - | not run: {err} |")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    frame_mb = side * side * 2 / 1e6
    return "\n".join([
        "## Movie readers",
        "",
        f"{n} frames of {side}x{side} uint16 ({frame_mb:.1f} MB per frame; videos 8-bit) read "
        "end to end with `open_movie` (iteration, conversion included; files freshly written, "
        "so they sit in the OS page cache: this is the reader's own cost, not the disk's). "
        "RSS growth is over the whole read; a reader that loaded or memory-mapped the movie "
        f"would grow by about the file size ({n * frame_mb:.0f} MB). Importing the "
        f"RosettaSciIO readers (dm, emd, hspy) took {import_s:.1f} s once per process, and "
        "the first open of a format pays a one-time set-up (e.g. RosettaSciIO's unit "
        "registry, ~0.3 s for Velox emd): both are left out of the open times below.",
        "",
        "| format | file MB | frames | open ms (warm) | ms / frame | frames / s | RSS growth MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ])


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
