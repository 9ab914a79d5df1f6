"""U-Net benchmark section: accuracy beside classical, CPU speed, runtime agreement, GPU rows.

``run(quick=False) -> str`` returns the Markdown section for docs/benchmarks.md
(``tools/bench.py`` collects it). It measures here: ONNX Runtime speed at 1024^2
(model only and end to end: normalize + network + instances + measure), the
agreement of ONNX Runtime with torch fp32, and accuracy on held-out simulator
seeds and on the real annotated images through the segmentation table of
``tools/bench_segmentation.py`` (the U-Net beside classical, one scorer).

GPU rows cannot be measured on a machine without a GPU: they are read from
``docs/unet_gpu_bench.json``, written on a lent GPU by::

    python tools/bench_unet.py --gpu --out docs/unet_gpu_bench.json

and printed with the device they were measured on; absent, the rows say
"not measured".

The model card's held-out table (docs/model.md, Metrics; ~2 minutes on 2 cores)::

    python tools/bench_unet.py --heldout 3002 3003 [--onnx a.onnx b.onnx] [--no-real] \
        [--outline network half-contrast]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT / "src", ROOT / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from etemlive.segment.backends import (  # noqa: E402
    DEFAULT_ENGINES_DIR,
    OnnxRunner,
    TorchRunner,
    UNetSegmenter,
    normalize_frame,
    pad_to_multiple,
)
from etemlive.segment.instances import maps_to_instances  # noqa: E402

GPU_JSON = ROOT / "docs" / "unet_gpu_bench.json"


def sim_frames(size_px: int, n: int, *, seed: int = 123, scenario: str = "dense", dose: str = "default"):
    """``n`` simulator frames (uint16) and labels at ``size_px``^2, plus the pixel size (nm)."""
    from etemlive.sources import simulate as sim

    kw = {"scenario": scenario, "seed": seed, "n_frames": n, "size_px": size_px}
    doses = getattr(sim, "DOSES", {})
    if dose in doses:
        kw["dose_e_per_px"] = doses[dose]
    cfg = sim.SimulationConfig(**kw)
    frames = list(sim.simulate(cfg))
    return [f.image for f in frames], [f.labels for f in frames], float(cfg.pixel_size_nm)


def _pctl(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


# ---------------------------------------------------------------- GPU
def gpu_bench(size_px: int = 2048, *, seconds: float = 6.0, batch_size: int = 8, engines: Path = DEFAULT_ENGINES_DIR) -> dict:
    """Torch CUDA FP16 runner at ``size_px``^2: model-only fps, end-to-end fps, latency, agreement."""
    import torch

    from etemlive.segment.backends import TorchCudaRunner

    weights = engines / "unet.pt"
    images, labels, px_nm = sim_frames(size_px, 8, scenario="ripening")
    dense, _, _ = sim_frames(size_px, 4, scenario="dense")
    res: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "size_px": size_px,
                 "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "cpu_cores": os.cpu_count()}
    fast = TorchCudaRunner(weights, device="cuda")
    seg = UNetSegmenter(fast, max_frame_px=4096)

    # model only: normalized batch already on the host, graph replay, maps back to host (fp16)
    for bs in (1, 4, batch_size, 2 * batch_size):
        frames = [images[i % len(images)] for i in range(bs)]
        fast.predict_frames(frames)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            fast.predict_frames(frames)
            n += bs
        res[f"model_fps_b{bs}"] = round(n / (time.perf_counter() - t0), 1)
    # pure GPU time of the network (graph replay only, no transfers)
    slot = fast._slot((batch_size, 1, size_px, size_px))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    reps = 20
    with torch.cuda.stream(fast.stream):
        for _ in range(reps):
            slot["graph"].replay()
    fast.stream.synchronize()
    res["network_only_fps"] = round(reps * batch_size / (time.perf_counter() - t0), 1)

    # end to end: raw uint16 frame in -> int32 labels out (normalize, network, instances), streamed
    def stream(n_frames: int, bs: int, frames=images):
        it = (frames[i % len(frames)] for i in range(n_frames))
        t0 = time.perf_counter()
        out = list(seg.segment_stream(it, px_nm, batch_size=bs))
        return len(out) / (time.perf_counter() - t0)

    stream(2 * batch_size, batch_size)
    for bs in (4, batch_size):
        res[f"e2e_fps_b{bs}"] = round(stream(max(64, int(seconds * 20)), bs), 1)
    res["e2e_fps_dense"] = round(stream(48, batch_size, dense), 1)
    res["particles_per_frame"] = int(seg.segment(images[0], px_nm).max())
    res["particles_per_frame_dense"] = int(seg.segment(dense[0], px_nm).max())
    # latency of one frame, alone (segment(): normalize + network + instances)
    lat = []
    for i in range(60):
        t0 = time.perf_counter()
        seg.segment(images[i % len(images)], px_nm)
        lat.append(time.perf_counter() - t0)
    res["latency_p50_ms"] = round(_pctl(lat[5:], 50), 2)
    res["latency_p99_ms"] = round(_pctl(lat[5:], 99), 2)
    # instance step alone on one core
    for name, im in (("", images[0]), ("_dense", dense[0])):
        maps = seg._maps([im])[0]
        t_inst = []
        for _ in range(5):
            t0 = time.perf_counter()
            maps_to_instances(maps[0], maps[1])
            t_inst.append(time.perf_counter() - t0)
        res[f"instances_ms_one_core{name}"] = round(1e3 * float(np.median(t_inst)), 1)

    # agreement: fp32 torch CUDA and ONNX Runtime CPU vs fp16 fast runner, same normalized input
    ref = UNetSegmenter(TorchRunner(weights, device="cuda"), max_frame_px=4096)
    onnx = UNetSegmenter(OnnxRunner(engines / "unet.onnx"), max_frame_px=4096)
    d16, d_onnx, counts = [], [], []
    for im in images[:4]:
        m32 = ref.predict_maps(im)
        m16 = seg.predict_maps(im).astype(np.float32)
        mon = onnx.predict_maps(im)
        d16.append(float(np.abs(m32 - m16).max()))
        d_onnx.append(float(np.abs(m32 - mon).max()))
        counts.append([int(ref._instances(m).max()) for m in (m32, m16, mon)])
    res["max_abs_diff_fp16_vs_fp32"] = max(d16)
    res["max_abs_diff_onnx_cpu_vs_torch_cuda_fp32"] = max(d_onnx)
    res["instance_counts_fp32_fp16_onnx"] = counts
    return res


# ---------------------------------------------------------------- CPU
def cpu_speed(size_px: int = 1024, *, repeat: int = 5, engines: Path = DEFAULT_ENGINES_DIR) -> dict:
    """ONNX Runtime on this CPU at ``size_px``^2: network, instances, end to end (with measure)."""
    images, _, px_nm = sim_frames(size_px, 3)
    seg = UNetSegmenter(OnnxRunner(engines / "unet.onnx"))
    x = pad_to_multiple(normalize_frame(images[0]))[None, None]
    seg.runner.predict(x)
    t_net = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        maps = seg.runner.predict(x)[0]
        t_net.append(time.perf_counter() - t0)
    t_inst = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        maps_to_instances(maps[0], maps[1])
        t_inst.append(time.perf_counter() - t0)
    try:
        from etemlive.measure import measure_particles
    except ImportError:
        measure_particles = None
    t_e2e = []
    for i in range(repeat):
        t0 = time.perf_counter()
        lab = seg.segment(images[i % len(images)], px_nm)
        if measure_particles is not None:
            measure_particles(lab, px_nm)
        t_e2e.append(time.perf_counter() - t0)
    return {
        "size_px": size_px, "network_ms": round(1e3 * float(np.median(t_net)), 1),
        "instances_ms": round(1e3 * float(np.median(t_inst)), 1),
        "e2e_ms": round(1e3 * float(np.median(t_e2e)), 1), "e2e_fps": round(1 / float(np.median(t_e2e)), 2),
        "with_measure": measure_particles is not None,
    }


def runtime_agreement(engines: Path = DEFAULT_ENGINES_DIR, size_px: int = 512) -> dict:
    """ONNX Runtime vs torch fp32 (CPU) on simulator frames: max prob diff and instance counts."""
    images, _, _ = sim_frames(size_px, 3, scenario="coalescence")
    a = UNetSegmenter(OnnxRunner(engines / "unet.onnx"))
    b = UNetSegmenter(TorchRunner(engines / "unet.pt"))
    diffs, same = [], True
    for im in images:
        ma, mb = a.predict_maps(im), b.predict_maps(im)
        diffs.append(float(np.abs(ma - mb).max()))
        same &= int(a._instances(ma).max()) == int(b._instances(mb).max())
    return {"max_abs_diff": max(diffs), "same_counts": bool(same), "frames": len(images)}


def accuracy_table(quick: bool) -> str:
    """The segmentation table of tools/bench_segmentation.py with the U-Net beside classical."""
    try:
        import bench_segmentation
    except ImportError as err:
        return f"(accuracy table not produced: tools/bench_segmentation.py missing: {err})\n"
    from etemlive.segment.backends import make_segmenter
    from etemlive.segment.classical import ClassicalSegmenter

    # the U-Net twice: its own outlines, and trimmed to half contrast as hand annotations
    # are drawn (--outline half-contrast; the simulator's truth is the geometric edge)
    segs = {"classical": ClassicalSegmenter(), "unet (onnx)": make_segmenter("onnx"),
            "unet (onnx, half-contrast)": make_segmenter("onnx", outline="half-contrast")}
    # the segmentation section's own scorer and tables (its speed table is not repeated here)
    sim_table, _ = bench_segmentation.accuracy_simulated(segs, quick=quick)
    real_table = bench_segmentation.accuracy_real(segs, quick=quick)
    return f"{sim_table}\n\n{real_table}\n"


def _gray(path: Path) -> np.ndarray:
    from skimage.io import imread

    im = imread(path)
    return im[..., :3].mean(axis=-1).astype(np.float32) if im.ndim == 3 else im


def real_f1(seg) -> dict[str, float]:
    """F1 of ``seg`` on the three real sets, read and scored as ``bench_segmentation.accuracy_real``."""
    from skimage.io import imread

    from etemlive.metrics import aggregate_scores, read_yolo_boxes, score_against_mask, score_boxes

    data = ROOT.parent / "shared" / "data"
    out: dict[str, float] = {}
    samem = data / "samem_nanorod"
    if samem.is_dir():
        sc = []
        for p in sorted((samem / "images").glob("*.jpg")):
            mask = imread(samem / "masks" / (p.stem + ".png"))
            mask = mask.max(axis=-1) if mask.ndim == 3 else mask
            sc.append(score_against_mask(seg.segment(_gray(p), 1.0), mask > 0, 1.0))
        out["samem"] = aggregate_scores(sc)["f1"]
    msa = data / "msa_sintering" / "test"
    if msa.is_dir():
        sc = []
        for p in sorted((msa / "images").glob("image_*.png")):
            im = imread(p)
            im = im[..., 0] if im.ndim == 3 else im
            sc.append(score_against_mask(seg.segment(im, 1.0),
                                         imread(msa / "labels" / p.name.replace("image_", "label_")), 1.0))
        out["msa"] = aggregate_scores(sc)["f1"]
    arda = data / "ardagen_catalysts"
    if arda.is_dir():
        sc = []
        for p in sorted((arda / "images").iterdir()):
            label = arda / "labels" / (p.stem + ".txt")
            if label.exists():
                im = _gray(p)
                sc.append(score_boxes(seg.segment(im, 1.0), read_yolo_boxes(label, im.shape)))
        out["ardagen"] = aggregate_scores(sc)["f1"]
    return out


def heldout_summary(seeds: tuple[int, ...], onnx_paths: list[Path], *, size_px: int = 512,
                    real: bool = True, outlines: tuple[str, ...] = ("network",)) -> str:
    """The model card's held-out table (docs/model.md, Metrics): classical and each ONNX file.

    Simulator: every scenario at the three named doses, seeds ``seeds`` (never the
    benchmark's 1000-1001), ``size_px``^2, frames 0, 4, 7 of 8; per (scenario, dose)
    pooled scores, then the mean F1 over scenarios per dose and over all 18; diameter
    MAE (mean) and aspect / roundness RMSE (root mean square) over the default and
    high doses. Real sets: F1 as ``bench_segmentation.accuracy_real`` scores them.
    Each ONNX file is scored with each of the ``outlines`` conventions.
    """
    from etemlive.metrics import aggregate_scores, score_segmentation
    from etemlive.segment.classical import ClassicalSegmenter
    from etemlive.sources.simulate import DOSES, SCENARIOS, SimulationConfig, simulate

    segs = {"classical": ClassicalSegmenter()}
    for path in onnx_paths:
        for outline in outlines:
            name = f"unet ({path.name})" if outline == "network" else f"unet ({path.name}, {outline})"
            segs[name] = UNetSegmenter(OnnxRunner(path, threads=1), workers=1, outline=outline)
    scores: dict[tuple[str, str, str], list[dict]] = {}
    for scenario in SCENARIOS:
        for dose_name, dose in DOSES.items():
            for seed in seeds:
                cfg = SimulationConfig(scenario=scenario, seed=seed, n_frames=8, size_px=size_px,
                                       dose_e_per_px=dose)
                for frame in simulate(cfg):
                    if frame.index not in (0, 4, 7):
                        continue
                    truth = frame.labels.astype(np.int32)
                    for name, seg in segs.items():
                        scores.setdefault((name, scenario, dose_name), []).append(
                            score_segmentation(seg.segment(frame.image, cfg.pixel_size_nm), truth,
                                               cfg.pixel_size_nm))
    lines = [f"Held-out simulator seeds {', '.join(map(str, seeds))} ({size_px}^2, frames 0, 4, 7 of 8), "
             "mean F1 over the six scenarios; real sets: F1.", "",
             "| segmenter | low | default | high | all 18 | diameter MAE nm (def+high) | aspect RMSE "
             "| roundness RMSE | samem | msa | ardagen |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, seg in segs.items():
        agg = {(sc, d): aggregate_scores(v) for (n, sc, d), v in scores.items() if n == name}
        f1 = {d: np.mean([a["f1"] for (_, dd), a in agg.items() if dd == d]) for d in DOSES}
        hi = [a for (_, d), a in agg.items() if d != "low"]
        mae = np.nanmean([a["diameter_mae_nm"] for a in hi])
        asp = np.sqrt(np.nanmean([a["aspect_ratio_rmse"] ** 2 for a in hi]))
        rnd = np.sqrt(np.nanmean([a["roundness_rmse"] ** 2 for a in hi]))
        r = real_f1(seg) if real else {}
        cells = [f"{f1[d]:.3f}" for d in DOSES] + [f"{np.mean([a['f1'] for a in agg.values()]):.3f}",
                                                   f"{mae:.3f}", f"{asp:.3f}", f"{rnd:.3f}"]
        cells += [f"{r[k]:.3f}" if k in r else "-" for k in ("samem", "msa", "ardagen")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gpu_rows() -> str:
    if not GPU_JSON.is_file():
        return ("| torch CUDA FP16, 2048^2 | not measured | not measured | not measured |\n"
                "| TensorRT FP16, 2048^2 | not measured | not measured | not measured |\n")
    g = json.loads(GPU_JSON.read_text())
    bmax = max(int(k.split("_b")[1]) for k in g if k.startswith("model_fps_b"))
    emax = max(int(k.split("_b")[1]) for k in g if k.startswith("e2e_fps_b"))
    return (
        f"| torch CUDA FP16, {g['size_px']}^2, {g['device']} ({g['date']}) | {g[f'model_fps_b{bmax}']} "
        f"(batch {bmax}; network alone {g['network_only_fps']}) | {g[f'e2e_fps_b{emax}']} (batch {emax}, "
        f"{g['cpu_cores']} CPU threads for instances) | p50 {g['latency_p50_ms']}, p99 {g['latency_p99_ms']} |\n"
        "| TensorRT FP16 | not measured (no TensorRT on the lent GPU) | not measured | not measured |\n"
        + (f"\nGPU rows: {g.get('scenario', '')}; code measured: {g['code']}.\n" if "code" in g else "")
    )


def run(quick: bool = False) -> str:
    """The U-Net section of docs/benchmarks.md (Markdown)."""
    engines = DEFAULT_ENGINES_DIR
    out = ["## U-Net\n"]
    out.append(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores; command: "
               f"`python tools/bench.py{' --quick' if quick else ''}` (section tools/bench_unet.py).\n")
    c = cpu_speed(512 if quick else 1024, repeat=3 if quick else 7)
    out.append("\n### Speed\n\n| runtime | model only (frames/s) | end to end (frames/s) | latency (ms) |\n|---|---|---|---|\n")
    out.append(f"| ONNX Runtime CPU, {c['size_px']}^2 | {1e3 / c['network_ms']:.1f} | {c['e2e_fps']} "
               f"({'with' if c['with_measure'] else 'without'} measure) | {c['e2e_ms']} (instances {c['instances_ms']}) |\n")
    out.append(gpu_rows())
    a = runtime_agreement(engines)
    out.append(f"\nRuntime agreement (ONNX Runtime vs torch fp32, CPU, {a['frames']} frames 512^2): "
               f"max abs probability difference {a['max_abs_diff']:.2e}, identical instance counts: {a['same_counts']}.\n")
    if GPU_JSON.is_file():
        g = json.loads(GPU_JSON.read_text())
        out.append(f"On {g['device']}: fp16 vs fp32 max abs difference {g['max_abs_diff_fp16_vs_fp32']:.2e}; "
                   f"ONNX CPU vs torch CUDA fp32 {g['max_abs_diff_onnx_cpu_vs_torch_cuda_fp32']:.2e}; instance counts "
                   f"(fp32, fp16, onnx) per frame {g['instance_counts_fp32_fp16_onnx']}.\n")
    out.append("\n### Accuracy (held-out simulator seeds and real images, beside classical)\n\n")
    out.append(accuracy_table(quick))
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="U-Net benchmark")
    p.add_argument("--gpu", action="store_true", help="measure the torch CUDA runner (GPU machine)")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--out", default="", help="write the GPU results (json) here")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--engines", default=str(DEFAULT_ENGINES_DIR), help="folder with unet.pt and unet.onnx")
    p.add_argument("--heldout", type=int, nargs="+", metavar="SEED",
                   help="print the model card's held-out table for these simulator seeds (e.g. 3002 3003)")
    p.add_argument("--onnx", type=Path, nargs="+", default=None,
                   help="with --heldout: ONNX files to compare (default: the shipped engines/unet.onnx)")
    p.add_argument("--no-real", action="store_true", help="with --heldout: skip the real sets")
    p.add_argument("--outline", nargs="+", default=["network"], choices=("network", "half-contrast"),
                   help="with --heldout: outline conventions to score each ONNX file with")
    args = p.parse_args(argv)
    if args.heldout:
        onnx = args.onnx or [Path(args.engines) / "unet.onnx"]
        print(heldout_summary(tuple(args.heldout), onnx, real=not args.no_real,
                              outlines=tuple(args.outline)))
    elif args.gpu:
        res = gpu_bench(args.size, seconds=args.seconds, engines=Path(args.engines))
        text = json.dumps(res, indent=1)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
    else:
        print(run(quick=args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
