"""Where the U-Net and the classical pipeline put a particle's outline (issue 8 diagnosis).

Three measurements, printed as markdown tables (docs/model.md, "Outline width"):

1. ``msa_sintering`` test set: the mean image contrast, U-Net probability and classical
   foreground fraction against the signed distance (px) from the hand-drawn outline.
   Contrast is 1 at the particle's median, 0 at the background's median.
2. ``msa_sintering``: signed diameter error (px) of matched particles with the frame
   analysed at native sampling and forced to 2x / 4x binning (is the width a sampling
   effect, or where the network puts the edge?).
3. Simulator (``ripening``, 1024^2, 0.5 nm/px, ~49 px particles): signed diameter error
   (px) against the exact labels for weak (mean free path 25 nm) and strongly scattering
   (5 nm, nearly saturated) particles under detector blur 0.8 / 2.5 / 3.5 px.
4. The same kind of frame with its edges changed after rendering: a bright halo
   (what an under-focus Fresnel fringe looks like) and a long-tailed detector PSF.

Usage: ``python tools/diag_outline_width.py [--onnx PATH]`` (about 30 s on 2 cores;
needs ``../shared/data/msa_sintering``); ``--onnx`` checks other weights than the
shipped ``engines/unet.onnx``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.io import imread
from skimage.measure import label as connected_components

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from etemlive.measure import measure_particles  # noqa: E402
from etemlive.metrics import match_instances  # noqa: E402
from etemlive.segment.backends import DEFAULT_ENGINES_DIR, OnnxRunner, UNetSegmenter  # noqa: E402
from etemlive.segment.classical import ClassicalSegmenter  # noqa: E402
from etemlive.sources import simulate as sim  # noqa: E402

MSA = ROOT.parent / "shared" / "data" / "msa_sintering" / "test"
ONNX_PATH = DEFAULT_ENGINES_DIR / "unet.onnx"  # set from --onnx


def make_unet() -> UNetSegmenter:
    """The U-Net segmenter on ONNX Runtime (CPU) with the weights under test."""
    return UNetSegmenter(OnnxRunner(ONNX_PATH))


def msa_frames():
    """(image, true instance labels) of the msa test set."""
    for p in sorted((MSA / "images").glob("image_*.png")):
        im = imread(p)
        lab = imread(MSA / "labels" / p.name.replace("image_", "label_"))
        im = im[..., 0] if im.ndim == 3 else im
        lab = lab[..., 0] if lab.ndim == 3 else lab
        yield im.astype(np.float32), connected_components(lab > 0)


def signed_diameter_error_px(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Predicted minus true equivalent diameter (px) of the instances matched at IoU >= 0.5."""
    m = match_instances(pred, true)
    dp = measure_particles(pred, 1.0).set_index("label").loc[m.pred_ids, "diameter_nm"]
    dt = measure_particles(true, 1.0).set_index("label").loc[m.true_ids, "diameter_nm"]
    return dp.to_numpy() - dt.to_numpy()


def edge_profile() -> str:
    unet, classical = make_unet(), ClassicalSegmenter()
    sums: dict[int, np.ndarray] = {}
    for im, true in msa_frames():
        inside = true > 0
        # signed distance to the hand-drawn outline: negative inside, positive outside
        dist = np.round(ndi.distance_transform_edt(~inside) - ndi.distance_transform_edt(inside))
        smooth = ndi.gaussian_filter(im, 1.0)
        bg, fg = np.median(im[dist > 15]), np.median(im[dist < -8])
        contrast = (smooth - bg) / (fg - bg)
        prob = unet.predict_maps(im)[0]
        cl = classical.segment(im, 1.0) > 0
        for k in [k for k in range(-6, 9) if k]:
            s = dist == k
            row = np.array([contrast[s].sum(), prob[s].sum(), cl[s].sum(), s.sum()])
            sums[k] = sums.get(k, 0) + row
    lines = ["| distance from hand outline (px) | image contrast | U-Net probability | classical foreground |",
             "|---|---|---|---|"]
    for k in sorted(sums):
        c, p, f, n = sums[k]
        lines.append(f"| {k:+d} | {c / n:.2f} | {p / n:.2f} | {f / n:.2f} |")
    return "\n".join(lines)


def binning() -> str:
    lines = ["| U-Net analysis of msa | F1 | signed diameter error (px) |", "|---|---|---|"]
    for b in (1, 2, 4, "half-contrast"):
        seg = make_unet()
        if b == "half-contrast":  # native sampling, outlines at half contrast
            seg.outline = b
        elif b > 1:  # force the scale check's binning
            seg.min_median_diameter_px, seg.max_bin = 1e9, b
        errs, n_match, n_all = [], 0, 0
        for im, true in msa_frames():
            pred = seg.segment(im, 1.0)
            m = match_instances(pred, true)
            n_match, n_all = n_match + m.n_matched, n_all + m.n_pred + m.n_true
            errs.append(signed_diameter_error_px(pred, true))
        label = {
            1: "native sampling (scale check decides)",
            "half-contrast": '--outline half-contrast (see "Half-contrast outlines")',
        }.get(b, f"forced {b}x binning")
        lines.append(f"| {label} | {2 * n_match / n_all:.3f} | {np.concatenate(errs).mean():+.2f} |")
    return "\n".join(lines)


def simulated_blur() -> str:
    unet, classical = make_unet(), ClassicalSegmenter()
    lines = ["| particle mean free path (nm) | blur sigma (px) | U-Net error (px) | classical error (px) |",
             "|---|---|---|---|"]
    for mfp in (25.0, 5.0):
        for blur in (0.8, 2.5, 3.5):
            cfg = sim.SimulationConfig(scenario="ripening", seed=1001, n_frames=1, size_px=1024,
                                       blur_sigma_px=blur, particle_mfp_nm=mfp, pixel_size_nm=0.5,
                                       mean_diameter_nm=25.0)
            frame = list(sim.simulate(cfg))[-1]
            cells = []
            for seg in (unet, classical):
                e = signed_diameter_error_px(seg.segment(frame.image, 0.5), frame.labels)
                cells.append(f"{e.mean():+.2f} (n {len(e)})")
            lines.append(f"| {mfp:g} | {blur:g} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def simulated_edges() -> str:
    """Signed diameter error on one simulated frame whose edges are changed after the
    fact: a bright halo outside dark particles (unsharp mask: ``I + k (I - G_4 * I)``,
    what an under-focus Fresnel fringe looks like) and a long-tailed detector PSF
    (``(1 - w) I + w G_s * I``)."""
    import cv2

    unet, classical = make_unet(), ClassicalSegmenter()
    cfg = sim.SimulationConfig(scenario="ripening", seed=1001, n_frames=1, size_px=1024,
                               blur_sigma_px=1.5, pixel_size_nm=0.5, mean_diameter_nm=25.0,
                               dose_e_per_px=1000)
    frame = list(sim.simulate(cfg))[-1]
    image = frame.image.astype(np.float32)
    halo = image - cv2.GaussianBlur(image, (0, 0), 4.0)
    variants = {"as simulated (blur 1.5 px)": image,
                "bright halo, k 0.5": image + 0.5 * halo,
                "bright halo, k 1": image + halo,
                "PSF tail, w 0.35, s 6 px": 0.65 * image + 0.35 * cv2.GaussianBlur(image, (0, 0), 6.0),
                "PSF tail, w 0.35, s 10 px": 0.65 * image + 0.35 * cv2.GaussianBlur(image, (0, 0), 10.0)}
    lines = ["| edge change | U-Net error (px) | classical error (px) |", "|---|---|---|"]
    for name, im in variants.items():
        cells = [f"{signed_diameter_error_px(seg.segment(im, 0.5), frame.labels).mean():+.2f}"
                 for seg in (unet, classical)]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global ONNX_PATH
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", type=Path, default=ONNX_PATH, help="U-Net ONNX file to check")
    ONNX_PATH = p.parse_args(argv).onnx
    if not MSA.is_dir():
        print(f"diag_outline_width: {MSA} not found (shared data absent)", file=sys.stderr)
        return 1
    print(edge_profile(), binning(), simulated_blur(), simulated_edges(), sep="\n\n")
    return 0


if __name__ == "__main__":
    from _diag import run_tool

    run_tool(main, __file__)
