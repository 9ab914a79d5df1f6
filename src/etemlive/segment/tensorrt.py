"""TensorRT runtime: FP16 engine built from ``engines/unet.onnx``, cached as a plan.

Written against the TensorRT 10 Python API (``pip install etemlive[tensorrt]``;
the wheels come from NVIDIA's package index). Device buffers and the CUDA stream
are torch CUDA tensors, so the backend needs torch with CUDA as well.

Plan cache: a plan only runs on the GPU model and TensorRT version that built it,
so the cached plan's name carries both, plus the precision and the first 12 hex
digits of the ONNX file's SHA-256:
``unet-<gpu>-trt<version>-<fp16|fp32>-<onnx sha>.plan`` beside the ONNX file. A
changed ONNX, another GPU or another TensorRT version therefore gives another name
and a rebuild; a cached plan that fails to deserialize is rebuilt. An explicit
plan file (``etemlive build-engine --out X.plan``) gets a ``X.plan.json`` sidecar;
loading it on a different GPU / TensorRT / ONNX is refused with one line.

Optimization profile: batch 1-8, height and width 256-4096 px (optimum 4 x 1024^2);
:class:`~etemlive.segment.backends.UNetSegmenter` pads smaller frames and tiles
larger ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, InputError

MIN_SIDE_PX = 256
OPT_SIDE_PX = 1024
MAX_SIDE_PX = 4096
MAX_BATCH = 8
OPT_BATCH = 4
INPUT_NAME = "image"
OUTPUT_NAME = "maps"
UNAVAILABLE = (
    "TensorRT is not installed (the full builder comes from NVIDIA's package index: "
    "`pip install etemlive[tensorrt]`); use --backend torch or onnx"
)


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(UNAVAILABLE) from None
    if not hasattr(trt, "Builder"):  # the lean runtime wheel cannot build engines
        raise BackendUnavailable(UNAVAILABLE)
    return trt


def _import_torch_cuda(device: str):
    try:
        import torch
    except ImportError:
        raise BackendUnavailable("the TensorRT backend needs torch with CUDA for its buffers") from None
    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA GPU here, so TensorRT cannot run; use --backend onnx (CPU)")
    return torch, torch.device(device)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plan_identity(onnx_path: str | Path, gpu_name: str, trt_version: str, fp16: bool) -> dict:
    """What a plan is valid for: GPU model, TensorRT version, precision, ONNX hash."""
    return {"gpu": gpu_name, "tensorrt": trt_version, "fp16": bool(fp16),
            "onnx_sha256": _sha256(Path(onnx_path))}


def plan_cache_path(onnx_path: str | Path, identity: dict) -> Path:
    """Cached plan path beside the ONNX file, named by GPU, TensorRT version, precision, ONNX hash."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", identity["gpu"]).strip("-").lower()
    prec = "fp16" if identity["fp16"] else "fp32"
    return Path(onnx_path).with_name(
        f"unet-{gpu}-trt{identity['tensorrt']}-{prec}-{identity['onnx_sha256'][:12]}.plan"
    )


def _onnx_and_identity(onnx_path: str | Path, device: str, fp16: bool) -> tuple[Any, Path, dict]:
    """TensorRT module, checked ONNX path and the identity its plan must match here."""
    trt = _import_trt()
    torch, dev = _import_torch_cuda(device)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"ONNX model not found: {onnx_path}; rebuild it with `python tools/export_onnx.py`")
    return trt, onnx_path, plan_identity(onnx_path, torch.cuda.get_device_name(dev), trt.__version__, fp16)


def build_engine(onnx_path: str | Path, out_path: str | Path | None = None, fp16: bool = True,
                 *, device: str = "cuda") -> Path:
    """Build a TensorRT engine from the ONNX file and write its plan.

    Parameters
    ----------
    onnx_path : path
        ``engines/unet.onnx``.
    out_path : path, optional
        Plan file; default the cache name of :func:`plan_cache_path`. A
        ``<out>.json`` sidecar records what the plan is valid for.
    fp16 : bool
        Allow FP16 kernels.

    Returns
    -------
    Path of the plan.

    Raises
    ------
    BackendUnavailable
        No tensorrt package or no GPU.
    InputError
        ONNX missing or not parseable.
    """
    trt, onnx_path, identity = _onnx_and_identity(onnx_path, device, fp16)
    out = Path(out_path) if out_path is not None else plan_cache_path(onnx_path, identity)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"TensorRT cannot parse {onnx_path} ({errors}); re-export it with `python tools/export_onnx.py`")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(
        INPUT_NAME,
        (1, 1, MIN_SIDE_PX, MIN_SIDE_PX),
        (OPT_BATCH, 1, OPT_SIDE_PX, OPT_SIDE_PX),
        (MAX_BATCH, 1, MAX_SIDE_PX, MAX_SIDE_PX),
    )
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendUnavailable(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(bytes(plan))
    tmp.replace(out)
    out.with_name(out.name + ".json").write_text(json.dumps(identity, indent=1))
    return out


class TensorRTRunner:
    """Runs a TensorRT plan: float32 (N,1,H,W) -> float32 (N,2,H,W) probabilities.

    Use :meth:`from_onnx` (cached plan, built when missing or stale) or
    :meth:`from_plan` (an explicit plan, checked against its sidecar).
    """

    min_size_px = MIN_SIDE_PX
    max_size_px = MAX_SIDE_PX
    max_batch = MAX_BATCH

    def __init__(self, plan_path: str | Path, *, device: str = "cuda") -> None:
        trt = _import_trt()
        torch, dev = _import_torch_cuda(device)
        self._torch = torch
        self.torch_device = dev
        self.plan_path = Path(plan_path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        engine = self.runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if engine is None:
            raise InputError(
                f"TensorRT plan {self.plan_path} does not load on this GPU / TensorRT version; "
                "rebuild it with `etemlive build-engine`"
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream(dev)
        self.name = "tensorrt"
        self.device = f"{dev} {torch.cuda.get_device_name(dev)} TensorRT {trt.__version__}"

    @classmethod
    def from_onnx(cls, onnx_path: str | Path, *, device: str = "cuda", fp16: bool = True) -> TensorRTRunner:
        """Load the cached plan of ``onnx_path`` for this GPU/TensorRT, building it when missing or stale."""
        _, onnx_path, identity = _onnx_and_identity(onnx_path, device, fp16)
        plan = plan_cache_path(onnx_path, identity)
        if plan.is_file():
            try:
                return cls(plan, device=device)
            except InputError:
                pass  # corrupt or foreign plan under the cache name: rebuild below
        return cls(build_engine(onnx_path, plan, fp16=fp16, device=device), device=device)

    @classmethod
    def from_plan(cls, plan_path: str | Path, onnx_path: str | Path | None = None, *,
                  device: str = "cuda") -> TensorRTRunner:
        """Load an explicit plan; refuse it (one line) when its sidecar names another GPU/TensorRT/ONNX."""
        trt = _import_trt()
        torch, dev = _import_torch_cuda(device)
        plan_path = Path(plan_path)
        if not plan_path.is_file():
            raise InputError(f"TensorRT plan not found: {plan_path}; build it with `etemlive build-engine`")
        side = plan_path.with_name(plan_path.name + ".json")
        try:
            ident = json.loads(side.read_text())
        except (OSError, ValueError):
            raise InputError(f"TensorRT plan {plan_path} has no readable {side.name}; rebuild it with `etemlive build-engine`") from None
        here = {"gpu": torch.cuda.get_device_name(dev), "tensorrt": trt.__version__}
        stale = [k for k in here if ident.get(k) != here[k]]
        if onnx_path is not None and Path(onnx_path).is_file() and ident.get("onnx_sha256") != _sha256(Path(onnx_path)):
            stale.append("onnx")
        if stale:
            raise InputError(
                f"TensorRT plan {plan_path} was built for another {'/'.join(stale)} "
                f"({ident.get('gpu')}, TensorRT {ident.get('tensorrt')}); rebuild it with `etemlive build-engine`"
            )
        return cls(plan_path, device=device)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        batch = np.ascontiguousarray(batch, np.float32)
        n, _, h, w = batch.shape
        if n > MAX_BATCH or not (MIN_SIDE_PX <= h <= MAX_SIDE_PX and MIN_SIDE_PX <= w <= MAX_SIDE_PX):
            raise InputError(
                f"TensorRT engine takes batches <= {MAX_BATCH} of {MIN_SIDE_PX}-{MAX_SIDE_PX} px, got {batch.shape}"
            )
        with torch.cuda.stream(self.stream):  # copies and engine on one stream: ordered
            x = torch.from_numpy(batch).pin_memory().to(self.torch_device, non_blocking=True)
            y = torch.empty((n, 2, h, w), dtype=torch.float32, device=self.torch_device)
            self.context.set_input_shape(INPUT_NAME, (n, 1, h, w))
            self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
            self.context.set_tensor_address(OUTPUT_NAME, y.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return y.cpu().numpy()
