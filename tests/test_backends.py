"""One behaviour suite for every U-Net runtime, plus the factory and bad-input lines.

Runtimes: ONNX Runtime (CPU), torch fp32 (CPU), torch CUDA tuned FP16 (``gpu``
marker), TensorRT (``tensorrt`` marker). Each skips with its reason where it
cannot run. The shipped engines/unet.pt and engines/unet.onnx are used.
"""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

from etemlive.errors import BackendUnavailable, CalibrationError, EtemliveError, InputError
from etemlive.segment import Segmenter
from etemlive.segment.backends import (
    DEFAULT_ENGINES_DIR,
    OnnxRunner,
    TorchRunner,
    UNetSegmenter,
    make_segmenter,
    normalize_frame,
    pad_to_multiple,
)
from etemlive.segment.instances import maps_to_instances

ENGINES = DEFAULT_ENGINES_DIR
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
TRT_REASON = "TensorRT's full builder is not installable here (NVIDIA's index is unreachable)"


def _cuda() -> bool:
    if not HAS_TORCH:
        return False
    import torch

    return torch.cuda.is_available()


pytestmark = pytest.mark.skipif(
    not (ENGINES / "unet.pt").is_file() or not (ENGINES / "unet.onnx").is_file(),
    reason="shipped engines/unet.pt / unet.onnx missing (python tools/train_unet.py; python tools/export_onnx.py)",
)


def _runner(kind: str):
    if kind == "onnx":
        return OnnxRunner(ENGINES / "unet.onnx")
    if kind == "torch-cpu":
        if not HAS_TORCH:
            pytest.skip("torch is not installed")
        return TorchRunner(ENGINES / "unet.pt")
    if kind == "torch-cuda":
        if not _cuda():
            pytest.skip("no CUDA GPU")
        from etemlive.segment.backends import TorchCudaRunner

        return TorchCudaRunner(ENGINES / "unet.pt")
    if kind == "tensorrt":
        if not HAS_TRT or not _cuda():
            pytest.skip(TRT_REASON)
        from etemlive.segment.tensorrt import TensorRTRunner

        return TensorRTRunner.from_onnx(ENGINES / "unet.onnx")
    raise AssertionError(kind)


RUNTIMES = [
    "onnx",
    "torch-cpu",
    pytest.param("torch-cuda", marks=pytest.mark.gpu),
    pytest.param("tensorrt", marks=pytest.mark.tensorrt),
]
#: max abs probability difference allowed against torch fp32 (fp16 runtimes 1e-2)
TOLERANCE = {"onnx": 1e-3, "torch-cpu": 0.0, "torch-cuda": 1e-2, "tensorrt": 1e-2}

_cache: dict[str, object] = {}


@pytest.fixture(params=RUNTIMES)
def runtime(request):
    kind = request.param
    if kind not in _cache:
        _cache[kind] = _runner(kind)
    return kind, _cache[kind]


@pytest.fixture(scope="module")
def reference():
    if not HAS_TORCH:
        pytest.skip("torch is not installed")
    return UNetSegmenter(TorchRunner(ENGINES / "unet.pt"))


def scene(size=(256, 256), seed=0, bright_field=True):
    """A simple synthetic frame: disks on a noisy background (polarity selectable), with labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    lab = np.zeros(size, np.int32)
    k = 0
    for cy, cx, r in [(60, 60, 14), (60, 180, 9), (180, 70, 20), (170, 180, 12), (120, 120, 6)]:
        if cy + r < size[0] and cx + r < size[1]:
            k += 1
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    base = np.where(lab > 0, 0.45, 1.0) if bright_field else np.where(lab > 0, 1.0, 0.15)
    img = rng.poisson(base * 200).astype(np.uint16)
    return img, lab


def sim_frame(size_px=256, seed=7, scenario="dense"):
    sim = pytest.importorskip("etemlive.sources.simulate")
    cfg = sim.SimulationConfig(scenario=scenario, seed=seed, n_frames=1, size_px=size_px)
    f = next(iter(sim.simulate(cfg)))
    return f.image, f.labels.astype(np.int32), float(cfg.pixel_size_nm)


# ---------------------------------------------------------------- behaviour suite
def test_predict_shape_dtype_range(runtime):
    kind, r = runtime
    n = 2
    side = 256 if kind == "tensorrt" else 96
    x = np.stack([pad_to_multiple(normalize_frame(scene((side, side), s)[0])) for s in range(n)])[:, None]
    y = r.predict(x)
    assert y.shape == (n, 2, side, side) and y.dtype == np.float32
    assert np.isfinite(y).all() and y.min() >= 0.0 and y.max() <= 1.0


@pytest.mark.parametrize("shape", [(256, 256), (200, 232), (19, 13)])
def test_segment_labels_of_frame_shape(runtime, shape):
    _, r = runtime
    seg = UNetSegmenter(r)
    assert isinstance(seg, Segmenter)
    img, _ = scene((max(shape[0], 1), max(shape[1], 1)))
    lab = seg.segment(img[: shape[0], : shape[1]], 0.5)
    assert lab.shape == shape and lab.dtype == np.int32 and lab.min() >= 0
    ids = np.unique(lab)
    np.testing.assert_array_equal(ids, np.arange(ids.size))  # consecutive 0..N


@pytest.mark.parametrize("bright_field", [True, False])
def test_segment_finds_the_disks_both_polarities(runtime, bright_field):
    _, r = runtime
    img, truth = scene(bright_field=bright_field)
    lab = UNetSegmenter(r).segment(img, 0.5)
    assert lab.max() == truth.max()
    for k in range(1, truth.max() + 1):
        vals, counts = np.unique(lab[truth == k], return_counts=True)
        inter = counts.max()
        union = (truth == k).sum() + (lab == vals[np.argmax(counts)]).sum() - inter
        assert vals[np.argmax(counts)] > 0 and inter / union > 0.75


def test_agrees_with_torch_fp32(runtime, reference):
    kind, r = runtime
    img, _, px = sim_frame(256, seed=3, scenario="coalescence")
    seg = UNetSegmenter(r)
    m = seg.predict_maps(img).astype(np.float32)
    m_ref = reference.predict_maps(img)
    assert np.abs(m - m_ref).max() <= max(TOLERANCE[kind], 1e-7)
    assert seg.segment(img, px).max() == reference.segment(img, px).max()


def test_nan_frame_and_bad_pixel_size(runtime):
    _, r = runtime
    seg = UNetSegmenter(r)
    img = scene()[0].astype(np.float32)
    img[5, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        seg.segment(img, 0.5)
    with pytest.raises(CalibrationError):
        seg.segment(scene()[0], float("nan"))
    with pytest.raises(InputError, match="2-D"):
        seg.segment(np.zeros((4, 4, 3), np.uint8), 0.5)


def test_segment_batch_equals_single(runtime):
    _, r = runtime
    seg = UNetSegmenter(r, workers=2)
    frames = [scene(seed=s)[0] for s in range(3)] + [scene((200, 232), 9)[0]]
    batch = seg.segment_batch(frames, 0.5)
    stream = list(seg.segment_stream(iter(frames), 0.5, batch_size=2))
    seg.close()
    for f, b, s in zip(frames, batch, stream, strict=True):
        single = seg.segment(f, 0.5)
        assert b.shape == f.shape and b.max() == single.max() == s.max()


# ---------------------------------------------------------------- model quality
def test_shipped_model_on_simulator_frame():
    metrics = pytest.importorskip("etemlive.metrics")
    img, truth, px = sim_frame(512, seed=11, scenario="dense")
    lab = make_segmenter("onnx").segment(img, px)
    score = metrics.score_segmentation(lab, truth, px)
    assert score["f1"] >= 0.85, score


def test_tiling_has_no_seams():
    """A frame tiled with blended overlaps gives the maps of the whole frame (within 0.05)."""
    img, _, px = sim_frame(384, seed=5, scenario="ripening")
    r = _runner("onnx")
    whole = UNetSegmenter(r, max_frame_px=4096)
    tiled = UNetSegmenter(r, max_frame_px=256, tile_px=256, overlap_px=96)
    mw, mt = whole.predict_maps(img), tiled.predict_maps(img)
    assert mt.shape == mw.shape
    diff = np.abs(mw - mt)
    assert diff.mean() < 5e-3 and np.percentile(diff, 99.9) < 0.1
    # the seam region (tile boundaries) is no worse than elsewhere
    nw, nt = maps_to_instances(*mw).max(), maps_to_instances(*mt).max()
    assert abs(int(nw) - int(nt)) <= max(1, nw // 50)


# ---------------------------------------------------------------- shipped files
def test_shipped_onnx_matches_shipped_weights():
    from etemlive.segment.unet import file_sha256

    r = OnnxRunner(ENGINES / "unet.onnx")
    assert r.metadata["etemlive_weights_sha256"] == file_sha256(ENGINES / "unet.pt")
    if HAS_TORCH:
        x = pad_to_multiple(normalize_frame(scene((128, 160))[0]))[None, None]
        np.testing.assert_allclose(r.predict(x), TorchRunner(ENGINES / "unet.pt").predict(x), atol=1e-3)


def test_shipped_weights_small():
    assert (ENGINES / "unet.pt").stat().st_size <= 20e6
    assert (ENGINES / "unet.onnx").stat().st_size <= 20e6


# ---------------------------------------------------------------- factory and bad input
def test_make_segmenter_onnx_and_auto_on_cpu(monkeypatch):
    seg = make_segmenter("onnx")
    assert seg.name == "onnx" and seg.device == "cpu"
    if not _cuda():
        auto = make_segmenter("auto")
        assert auto.name == "onnx"  # a CPU machine falls back to ONNX Runtime


def test_make_segmenter_unknown_backend():
    with pytest.raises(InputError, match="unknown backend 'magic'"):
        make_segmenter("magic")


def test_tensorrt_unavailable_is_one_line():
    if HAS_TRT and _cuda():
        pytest.skip("TensorRT is installed here")
    with pytest.raises(BackendUnavailable) as err:
        make_segmenter("tensorrt")
    assert "\n" not in str(err.value) and ("TensorRT" in str(err.value) or "GPU" in str(err.value))


def test_torch_cuda_without_gpu_is_one_line():
    if not HAS_TORCH or _cuda():
        pytest.skip("needs torch on a machine without a GPU")
    with pytest.raises(BackendUnavailable, match="no CUDA GPU"):
        make_segmenter("torch", device="cuda")


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", None])
def test_bad_weights_file_is_one_line(tmp_path, content):
    if not HAS_TORCH:
        pytest.skip("torch is not installed")
    if content is not None:
        (tmp_path / "unet.pt").write_bytes(content)
    with pytest.raises(InputError) as err:
        make_segmenter("torch", engines_dir=tmp_path, device="cpu")
    msg = str(err.value)
    assert "\n" not in msg and "unet.pt" in msg and "tools/train_unet.py" in msg


@pytest.mark.parametrize("content", [b"garbage onnx", None])
def test_bad_onnx_file_is_one_line(tmp_path, content):
    if content is not None:
        (tmp_path / "unet.onnx").write_bytes(content)
    with pytest.raises(InputError) as err:
        make_segmenter("onnx", engines_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "unet.onnx" in msg and "tools/export_onnx.py" in msg
    assert isinstance(err.value, EtemliveError)


def test_no_network_access(monkeypatch):
    """Building and running a segmenter never opens a network connection (no downloads)."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    seg = make_segmenter("onnx")
    assert seg.segment(scene()[0], 0.5).max() > 0


@pytest.mark.tensorrt
def test_tensorrt_plan_cache_named_by_gpu_and_version(tmp_path):
    if not HAS_TRT or not _cuda():
        pytest.skip(TRT_REASON)
    from etemlive.segment.tensorrt import TensorRTRunner, plan_cache_path, plan_identity

    onnx = tmp_path / "unet.onnx"
    onnx.write_bytes((ENGINES / "unet.onnx").read_bytes())
    r = TensorRTRunner.from_onnx(onnx)
    import tensorrt as trt
    import torch

    ident = plan_identity(onnx, torch.cuda.get_device_name(0), trt.__version__, True)
    plan = plan_cache_path(onnx, ident)
    assert r.plan_path == plan and plan.is_file()
    plan.write_bytes(b"corrupt")  # a stale/corrupt cached plan is rebuilt, never a crash
    assert TensorRTRunner.from_onnx(onnx).plan_path == plan and plan.stat().st_size > 1000


def test_plan_cache_path_changes_with_identity(tmp_path):
    from etemlive.segment.tensorrt import plan_cache_path

    base = {"gpu": "NVIDIA H100 80GB HBM3", "tensorrt": "10.7.0", "fp16": True, "onnx_sha256": "ab" * 32}
    p = plan_cache_path(tmp_path / "unet.onnx", base)
    assert p.parent == tmp_path and p.suffix == ".plan" and "nvidia-h100-80gb-hbm3" in p.name
    for key, value in [("gpu", "NVIDIA A100"), ("tensorrt", "10.8.0"), ("fp16", False), ("onnx_sha256", "cd" * 32)]:
        assert plan_cache_path(tmp_path / "unet.onnx", {**base, key: value}) != p


def test_engines_dir_default_is_repo_engines():
    assert ENGINES == Path(__file__).resolve().parents[1] / "engines"


def test_grainy_frame_is_analysed_binned():
    """Pixel-scale grain read as hundreds of tiny particles triggers the 2x/4x re-analysis."""
    rng = np.random.default_rng(1)
    img, truth = scene((512, 512))
    # strong 1-2 px grain of both signs over the whole frame, particles enlarged 2x
    big = np.kron(truth[:256, :256], np.ones((2, 2), np.int32))
    base = np.where(big > 0, 0.55, 1.0)
    grain = cv2.GaussianBlur(rng.standard_normal((512, 512)).astype(np.float32), (0, 0), 1.0)
    frame = (base + 0.6 * grain / grain.std()) * 100 + 200
    frame = frame.astype(np.float32)
    seg = UNetSegmenter(_runner("onnx"))
    # What a model that reads the grain returns: hundreds of 3 x 3 px detections, and
    # unsure ones (probability 0.6: the instance step's confidence filter drops them,
    # the scale check must still see them). It must re-analyse the frame binned and
    # find the 5 disks.
    grainy = np.zeros((2, *frame.shape), np.float32)
    rows, cols = np.meshgrid(np.arange(4, 508, 16), np.arange(4, 508, 16), indexing="ij")
    for r, c in zip(rows.ravel(), cols.ravel(), strict=True):
        grainy[:, r:r + 3, c:c + 3] = 0.6
    assert maps_to_instances(grainy[0], grainy[1]).max() == 0  # all filtered as unsure
    lab = seg._check_scale(frame, grainy)
    assert seg.last_bin >= 2
    assert lab.shape == frame.shape
    assert abs(int(lab.max()) - int(big.max())) <= 1  # the 5 disks, not the grain
    # End to end: whatever the shipped model reads here, the result is the disks.
    lab = seg.segment(frame, 1.0)
    assert abs(int(lab.max()) - int(big.max())) <= 1
    # and a clean frame stays at native resolution
    seg.segment(scene()[0], 0.5)
    assert seg.last_bin == 1


def _rod_frame(dose_e_per_px: float, seed: int = 0, size: int = 256):
    """A dark 60 x 24 px rod (transmission 0.7) on a bright-field background, Poisson noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    u, v = (xx - 130) * 0.8 + (yy - 120) * 0.6, -(xx - 130) * 0.6 + (yy - 120) * 0.8
    rod = (np.abs(u) <= 30) & (np.abs(v) <= 12)
    return rng.poisson(np.where(rod, 0.7, 1.0) * dose_e_per_px).astype(np.float32), rod


@pytest.mark.parametrize("dose", [3.0, 10.0, 1000.0])
def test_polarity_of_dark_rod_on_shot_noise(dose):
    """Shot noise's own bright tail (Poisson skewness 1/sqrt(counts)) must not flip a
    bright-field frame (the raw-pixel tail rule of stages 1-2 did, at low dose)."""
    from etemlive.segment.backends import dark_field_polarity

    img, rod = _rod_frame(dose)
    norm = normalize_frame(img)
    assert norm[rod].mean() < norm[~rod].mean()  # rod stays dark: not inverted
    assert not dark_field_polarity(img)
    # the same frame in dark field (bright rod on a dim background) is inverted
    df = np.random.default_rng(1).poisson(np.where(rod, 0.5, 0.1) * dose).astype(np.float32)
    norm = normalize_frame(df)
    assert norm[rod].mean() < norm[~rod].mean()
    if dose <= 10:
        # the raw-pixel tail rule of the stage 1-2 training got the bright-field frame wrong
        lo, med, hi = np.percentile(img, [0.5, 50, 99.5])
        assert hi - med > med - lo


def test_rod_in_strong_correlated_noise_is_found():
    """A rod under correlated noise as strong as its contrast (liquid cell, JPEG): the
    network reads the noise grains as small particles at native sampling; the scale
    check on its raw detections bins the frame and the rod is found."""
    metrics = pytest.importorskip("etemlive.metrics")
    rng = np.random.default_rng(5)
    size = 512
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    u, v = (xx - 260) * 0.8 + (yy - 240) * 0.6, -(xx - 260) * 0.6 + (yy - 240) * 0.8
    rod = (np.abs(u) <= 30) & (np.abs(v) <= 12)
    noise = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 1.2)
    frame = 110.0 - 22.0 * rod + 24.0 * noise / noise.std()
    seg = UNetSegmenter(_runner("onnx"))
    lab = seg.segment(frame.astype(np.float32), 1.0)
    assert seg.last_bin >= 2
    score = metrics.score_against_mask(lab, rod, 1.0)
    assert score["n_matched"] == 1, score
    assert lab.max() <= 3


@pytest.mark.parametrize("shape", [(256, 256), (301, 517), (48, 40)])
@pytest.mark.parametrize("dose", [5.0, 500.0])
def test_gpu_normalization_matches_normalize_frame(shape, dose):
    """The GPU path's normalization (run here on CPU tensors) equals normalize_frame,
    polarity decision included."""
    if not HAS_TORCH:
        pytest.skip("torch is not installed")
    import torch

    from etemlive.segment.backends import dark_field_polarity, normalize_frames_torch

    crop = (slice(0, shape[0]), slice(0, shape[1]))
    frames = [_rod_frame(dose, seed=s, size=max(shape))[0][crop] for s in range(2)]
    rod = _rod_frame(dose, size=max(shape))[1][crop]
    frames.append(np.random.default_rng(2).poisson(np.where(rod, 0.5, 0.1) * dose)
                  .astype(np.float32))  # dark field: bright rod
    dark = [dark_field_polarity(f) for f in frames]
    if min(shape) >= 256:  # the rod is inside the crop (else: noise only, either answer)
        assert dark == [False, False, True]
    got = normalize_frames_torch(torch.from_numpy(np.stack(frames)), dark).numpy()
    for g, f in zip(got, frames, strict=True):
        np.testing.assert_allclose(g, normalize_frame(f), atol=1e-4)


def test_half_contrast_outline_option():
    """Flat-top disks behind a 3 px blur: the network draws them ~3.5 px wider than they
    are (the foot of the ramp); ``outline="half-contrast"`` trims the same instances back
    to within 1.5 px of their size. An unknown convention is refused."""
    metrics = pytest.importorskip("etemlive.metrics")
    from etemlive.measure import measure_particles

    _, truth = scene()
    rng = np.random.default_rng(1)
    expected = cv2.GaussianBlur(np.where(truth > 0, 0.45, 1.0).astype(np.float32), (0, 0), 3.0)
    img = rng.poisson(expected * 500).astype(np.uint16)
    errors = {}
    for outline in ("network", "half-contrast"):
        seg = make_segmenter("onnx", outline=outline)
        assert seg.outline == outline
        lab = seg.segment(img, 0.5)
        match = metrics.match_instances(lab, truth)
        assert match.n_matched == truth.max() == lab.max()
        d_pred = measure_particles(lab, 1.0).set_index("label").loc[match.pred_ids]["diameter_nm"]
        d_true = measure_particles(truth, 1.0).set_index("label").loc[match.true_ids]["diameter_nm"]
        errors[outline] = d_pred.to_numpy() - d_true.to_numpy()
        if outline == "network":
            network = lab
    assert np.all(errors["network"] > 2.5)
    assert np.all(np.abs(errors["half-contrast"]) < 1.5)
    assert np.all(network[lab > 0] == lab[lab > 0])  # trimmed, same ids
    with pytest.raises(InputError, match="outline"):
        make_segmenter("onnx", outline="hand")
