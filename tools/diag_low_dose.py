"""Recall by particle size at the lowest benchmark dose, U-Net beside classical (issue 8).

Which particles do both segmenters miss at 10 e-/px? Simulator seed 3004 (a
development seed, not a benchmark one), 512^2 at 0.5 nm/px, frames 0, 4, 7 of 8;
true particles binned by equivalent diameter (px), border particles excluded as in
the benchmark. Prints a markdown table (docs/model.md, Known limits).

Usage: ``python tools/diag_low_dose.py [--onnx PATH]`` (about 40 s on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from etemlive.measure import measure_particles  # noqa: E402
from etemlive.metrics import match_instances  # noqa: E402
from etemlive.segment.backends import DEFAULT_ENGINES_DIR, OnnxRunner, UNetSegmenter  # noqa: E402
from etemlive.segment.classical import ClassicalSegmenter  # noqa: E402
from etemlive.sources.simulate import DOSES, SimulationConfig, simulate  # noqa: E402

BINS_PX = (0, 6, 10, 16, 24, 10_000)
SCENARIOS = ("ripening", "coalescence", "dense", "nucleation")


def recall_by_size(segmenter, scenario: str) -> np.ndarray:
    """(found, total) per diameter bin of the true particles not cut by the border."""
    counts = np.zeros((len(BINS_PX) - 1, 2), dtype=int)
    cfg = SimulationConfig(scenario=scenario, seed=3004, n_frames=8, size_px=512,
                           dose_e_per_px=DOSES["low"])
    for frame in simulate(cfg):
        if frame.index not in (0, 4, 7):
            continue
        truth = frame.labels.astype(np.int32)
        m = match_instances(segmenter.segment(frame.image, cfg.pixel_size_nm), truth)
        d_px = measure_particles(truth, cfg.pixel_size_nm).set_index("label")["diameter_nm"]
        d_px = d_px.loc[m.true_kept] / cfg.pixel_size_nm
        found = np.isin(d_px.index, m.true_ids)
        which = np.digitize(d_px.to_numpy(), BINS_PX) - 1
        counts[:, 0] += np.bincount(which[found], minlength=len(counts))[: len(counts)]
        counts[:, 1] += np.bincount(which, minlength=len(counts))[: len(counts)]
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", type=Path, default=DEFAULT_ENGINES_DIR / "unet.onnx")
    args = p.parse_args(argv)
    segs = {"U-Net": UNetSegmenter(OnnxRunner(args.onnx)), "classical": ClassicalSegmenter()}
    heads = [f"{lo}-{hi} px" if hi < 10_000 else f">= {lo} px" for lo, hi in zip(BINS_PX[:-1], BINS_PX[1:], strict=True)]
    print("| scenario | segmenter | " + " | ".join(heads) + " |")
    print("|---|---|" + "---|" * len(heads))
    for scenario in SCENARIOS:
        for name, seg in segs.items():
            c = recall_by_size(seg, scenario)
            cells = [f"{f / n:.2f} ({n})" if n else "-" for f, n in c]
            print(f"| {scenario} | {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    from _diag import run_tool

    run_tool(main, __file__)
