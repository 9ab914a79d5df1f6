"""Dynamic batching of concurrent segment() calls (segment/batching.py), with the real
U-Net on ONNX Runtime and the real pipeline."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from etemlive.errors import InputError
from etemlive.segment.backends import make_segmenter
from etemlive.segment.batching import BatchingSegmenter
from etemlive.sources.simulate import SimulatedSource, SimulationConfig, simulate

CONFIG = SimulationConfig(scenario="coalescence", seed=5, n_frames=6, size_px=128)


@pytest.fixture(scope="module")
def unet():
    return make_segmenter("onnx")


@pytest.fixture(scope="module")
def frames():
    return [f.image for f in simulate(CONFIG)]


def _concurrently(batcher, images, px):
    results: list = [None] * len(images)
    start = threading.Barrier(len(images))

    def call(i):
        start.wait()
        try:
            results[i] = batcher.segment(images[i], px)
        except Exception as err:  # noqa: BLE001 (checked by the test)
            results[i] = err

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_concurrent_calls_share_batches_and_get_their_own_labels(unet, frames):
    px = CONFIG.pixel_size_nm
    batcher = BatchingSegmenter(unet, max_batch=4, max_wait_s=0.5)
    results = _concurrently(batcher, frames[:4], px)
    assert batcher.frames == 4 and batcher.batches < 4  # at least one real batch
    for image, labels in zip(frames[:4], results, strict=True):
        alone = unet.segment(image, px)
        assert labels.shape == image.shape and labels.dtype == alone.dtype
        # Same network, batched or not: the same particles (fp32 sums may differ in the
        # last bits between batch sizes, so pixels at a threshold may flip).
        assert len(np.unique(labels)) == len(np.unique(alone))
        assert ((labels > 0) == (alone > 0)).mean() > 0.999


def test_a_bad_frame_fails_alone(unet, frames):
    px = CONFIG.pixel_size_nm
    bad = frames[1].astype(np.float32).copy()
    bad[10, 10] = np.nan
    batcher = BatchingSegmenter(unet, max_batch=3, max_wait_s=0.5)
    results = _concurrently(batcher, [frames[0], bad, frames[2]], px)
    assert isinstance(results[1], InputError)
    assert isinstance(results[0], np.ndarray) and isinstance(results[2], np.ndarray)
    assert results[0].max() > 0 and results[2].max() > 0


def test_a_lone_frame_is_not_held_back(unet, frames):
    batcher = BatchingSegmenter(unet, max_batch=4, max_wait_s=0.01)
    labels = batcher.segment(frames[0], CONFIG.pixel_size_nm)
    assert batcher.batches == 1 and batcher.frames == 1 and labels.max() > 0


def test_frames_of_different_pixel_sizes_go_to_different_batches(unet, frames):
    batcher = BatchingSegmenter(unet, max_batch=4, max_wait_s=0.5)
    seen: list[float] = []
    inner = batcher.segmenter

    class Recording:  # records what reaches the network, then runs it
        name, device = inner.name, inner.device

        def segment_batch(self, images, px):
            seen.append(px)
            return inner.segment_batch(images, px)

    batcher.segmenter = Recording()
    images = frames[:4]
    pxs = [0.5, 0.5, 1.0, 1.0]
    results: list = [None] * 4
    start = threading.Barrier(4)

    def call(i):
        start.wait()
        results[i] = batcher.segment(images[i], pxs[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(set(seen)) == [0.5, 1.0] and all(r is not None for r in results)


def test_batching_needs_a_batch_call_and_sane_settings(unet):
    class NoBatch:
        def segment(self, image, px):
            return np.zeros(image.shape, np.int32)

    with pytest.raises(TypeError, match="segment_batch"):
        BatchingSegmenter(NoBatch())
    with pytest.raises(ValueError, match="max_batch"):
        BatchingSegmenter(unet, max_batch=0)


def test_pipeline_batches_a_gpu_style_segmenter_and_matches_single_frames(tmp_path):
    from etemlive.pipeline import Pipeline
    from etemlive.record import Recorder

    def run(out, batch_frames):
        seg = make_segmenter("onnx")
        seg.batch_frames = batch_frames  # what a CUDA segmenter sets (4)
        pipeline = Pipeline(SimulatedSource(CONFIG), seg, Recorder(out),
                            pixel_size_nm=CONFIG.pixel_size_nm, pixel_size_source="metadata",
                            frame_interval_s=CONFIG.frame_interval_s)
        return pipeline, pipeline.run()

    batched, summary = run(tmp_path / "batched", 3)
    single, summary_single = run(tmp_path / "single", 1)
    assert isinstance(batched.segmenter, BatchingSegmenter) and batched.workers == 3
    assert not isinstance(single.segmenter, BatchingSegmenter) and single.workers == 1
    assert summary["frames_analysed"] == summary_single["frames_analysed"] == CONFIG.n_frames
    assert summary["segment_batches"] == batched.segmenter.batches <= CONFIG.n_frames
    a = pd.read_csv(tmp_path / "batched" / "frames.csv")
    b = pd.read_csv(tmp_path / "single" / "frames.csv")
    assert list(a["frame"]) == list(b["frame"]) == list(range(CONFIG.n_frames))  # in order
    assert np.abs(a["count"] - b["count"]).max() <= 1
