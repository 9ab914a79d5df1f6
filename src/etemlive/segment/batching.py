"""Dynamic batching: frames segmented concurrently by several threads go to the
network as one batch.

A GPU runs one batch of N frames much faster than N single frames (the kernels are
launched once and the device is kept busy), but the pipeline analyses a frame per
worker thread. :class:`BatchingSegmenter` sits between the two: each worker calls
``segment(frame)`` as usual; the calls that are waiting at the same moment (frames
queued behind each other) are gathered into one ``segment_batch`` call of the wrapped
segmenter, and every caller gets its own labels back. A lone frame waits at most
``max_wait_s`` for company, so a slow live stream keeps its latency.

No extra thread: the first waiting caller leads (gathers, runs the batch, hands out
results); the others wait on a condition variable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["BatchingSegmenter"]


class _Request:
    __slots__ = ("image", "pixel_size_nm", "labels", "error", "done")

    def __init__(self, image: np.ndarray, pixel_size_nm: float) -> None:
        self.image = image
        self.pixel_size_nm = pixel_size_nm
        self.labels: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class BatchingSegmenter:
    """Gathers concurrent ``segment`` calls into batches of the wrapped segmenter.

    Parameters
    ----------
    segmenter : Segmenter
        Must have ``segment_batch(images, pixel_size_nm) -> list of labels``.
    max_batch : int
        Most frames per batch (>= 1).
    max_wait_s : float
        Longest time the leader waits for more frames before running a smaller batch (s).

    Attributes
    ----------
    batches : int
        Batches run so far.
    frames : int
        Frames segmented so far (``frames / batches`` is the mean batch size).

    Notes
    -----
    A batch that raises (e.g. one NaN frame among good ones) is re-run frame by frame,
    so only the bad frame's caller gets the error. Frames with different pixel sizes
    go to different batches.
    """

    def __init__(self, segmenter: Any, *, max_batch: int = 4, max_wait_s: float = 0.002) -> None:
        if not hasattr(segmenter, "segment_batch"):
            raise TypeError(f"{type(segmenter).__name__} has no segment_batch: nothing to batch")
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        if not (max_wait_s >= 0):
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s!r}")
        self.segmenter = segmenter
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.name = getattr(segmenter, "name", "")
        self.device = getattr(segmenter, "device", "")
        self.batches = 0
        self.frames = 0
        self._cond = threading.Condition()
        self._waiting: list[_Request] = []
        self._busy = False

    def __repr__(self) -> str:
        return f"BatchingSegmenter({self.segmenter!r}, max_batch={self.max_batch})"

    def __getattr__(self, name: str) -> Any:
        # Everything else (last_bin, close, ...) is the wrapped segmenter's.
        if name == "segmenter":
            raise AttributeError(name)
        return getattr(self.segmenter, name)

    def segment(self, image: np.ndarray, pixel_size_nm: float) -> np.ndarray:
        """int32 instance labels of one frame, segmented in a batch with concurrent calls."""
        request = _Request(image, pixel_size_nm)
        with self._cond:
            self._waiting.append(request)
            self._cond.notify_all()
            while not request.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True  # this thread leads the next batch
                deadline = time.perf_counter() + self.max_wait_s
                while len(self._waiting) < self.max_batch:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = self._take_batch()
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        if request.error is not None:
            raise request.error
        assert request.labels is not None
        return request.labels

    def segment_batch(self, images: Sequence[np.ndarray], pixel_size_nm: float) -> list[np.ndarray]:
        """The wrapped segmenter's batch call (already a batch: passed through)."""
        return self.segmenter.segment_batch(images, pixel_size_nm)

    def _take_batch(self) -> list[_Request]:
        first = self._waiting[0].pixel_size_nm
        batch = [r for r in self._waiting if r.pixel_size_nm == first][: self.max_batch]
        taken = {id(r) for r in batch}
        self._waiting = [r for r in self._waiting if id(r) not in taken]
        return batch

    def _run(self, batch: list[_Request]) -> None:
        try:
            results = self.segmenter.segment_batch([r.image for r in batch], batch[0].pixel_size_nm)
            for r, labels in zip(batch, results, strict=True):
                r.labels = labels
        except Exception as err:  # noqa: BLE001 (handed to the callers)
            if len(batch) == 1:
                batch[0].error = err
            else:  # isolate the bad frame: each frame alone
                for r in batch:
                    try:
                        r.labels = self.segmenter.segment(r.image, r.pixel_size_nm)
                    except Exception as one:  # noqa: BLE001 (handed to its caller)
                        r.error = one
        except BaseException as err:  # interrupted: no caller may wait forever
            for r in batch:
                r.error = err
        finally:
            self.batches += 1
            self.frames += len(batch)
            for r in batch:
                if r.labels is None and r.error is None:
                    r.error = RuntimeError("the batch produced no labels for this frame")
                r.done = True
