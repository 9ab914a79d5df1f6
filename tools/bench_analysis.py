"""Benchmark section: size-distribution fits, coarsening kinetics and scale bars.

Measured against exact ground truth:

1. Ripening (simulator ``ripening``, exponent n = 3 and n = 2): ``fit_coarsening_kinetics``
   on the per-frame mean radius from the simulator's truth tables, and end to end from
   the classical segmenter's measurements (segment -> measure -> same fit).
2. Two families (simulator ``dense``): ``fit_size_distribution`` on the truth diameters
   (and on the classical segmenter's), family means and weights against the
   simulator's metadata.
3. Scale bars: synthetic images with bars of known length and labels in the OpenCV
   Hershey fonts, several sizes, white-on-dark and dark-on-white, with and without a
   label box, half of them JPEG-compressed; and the real images in
   ``../shared/data/ardagen_catalysts/images``.
4. Speed of the fits (on this machine, with whatever else runs on it).

Run alone: ``python tools/bench_analysis.py [--quick]``; part of ``tools/bench.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


# --------------------------------------------------------------------------- ripening
def _ripening_rows(n: float, seed: int, *, size_px: int, n_frames: int, growth: float,
                   end_to_end: bool, mean_diameter_nm: float | None = None) -> dict:
    from etemlive.analysis import fit_coarsening_kinetics, mean_radius_series
    from etemlive.sources.simulate import Simulation, SimulationConfig

    cfg = SimulationConfig(scenario="ripening", seed=seed, n_frames=n_frames, size_px=size_px,
                           ripening_exponent=n, ripening_growth_factor=growth,
                           mean_diameter_nm=mean_diameter_nm)
    sim = Simulation(cfg)
    truth, measured = [], []
    seg_s = 0.0
    if end_to_end:
        from etemlive.measure import measure_particles
        from etemlive.segment.classical import segment_classical
    for frame in sim.frames():
        truth.append(frame.truth)
        if end_to_end:
            t0 = time.perf_counter()
            labels = segment_classical(frame.image, cfg.pixel_size_nm)
            measured.append(measure_particles(labels, cfg.pixel_size_nm, frame=frame.index,
                                              time_s=frame.time_s))
            seg_s += time.perf_counter() - t0
    tr = pd.concat(truth, ignore_index=True)
    # truth: volume-equivalent radius of every particle in the field (the law's <r>)
    s = mean_radius_series(tr.assign(diameter_nm=2 * tr["radius_nm"], touches_edge=False))
    fit = fit_coarsening_kinetics(s["time_s"], s["mean_radius_nm"], sigma_nm=s["sem_radius_nm"])
    row = {"n_true": n, "seed": seed, "n0": int(s["count"].iloc[0]),
           "n_end": int(s["count"].iloc[-1]), "truth": fit}
    if end_to_end:
        m = pd.concat(measured, ignore_index=True)
        sm = mean_radius_series(m)
        row["measured"] = fit_coarsening_kinetics(sm["time_s"], sm["mean_radius_nm"],
                                                  sigma_nm=sm["sem_radius_nm"])
        row["seg_ms"] = 1e3 * seg_s / n_frames
    return row


def _fmt_fit(fit) -> str:
    if fit.status != "ok":
        return fit.status
    lo = "open" if np.isnan(fit.n_ci_low) else f"{fit.n_ci_low:.2f}"
    hi = "open" if np.isnan(fit.n_ci_high) else f"{fit.n_ci_high:.2f}"
    return f"{fit.n:.2f} [{lo}, {hi}]"


def ripening_section(quick: bool) -> str:
    seeds = (1,) if quick else (1, 2, 3)
    size, frames = 1024, 60
    growths = (2.5,) if quick else (2.5, 1.8)
    seg_ms = []
    lines = [
        "### Ripening exponent (simulator `ripening`)",
        "",
        f"`fit_coarsening_kinetics` on the per-frame mean radius, {size}x{size} px fields "
        f"(0.5 nm/px), {frames} frames, started from the LSW distribution (the simulator's "
        "default initial mean diameter unless said). "
        "Truth: the simulator's volume-equivalent radii of every particle in the field. "
        "End to end: `segment_classical` -> `measure_particles` -> mean equivalent-circle "
        "radius of the particles not cut by the border. n with its 95 % profile-likelihood "
        "interval; target |n - n_true| <= 0.3.",
        "",
        "| n true | growth of <r> | seed | particles start -> end | n from truth | error | "
        "n end to end (classical) | error | mechanism (truth) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    errors: dict[tuple[float, float, str], list[float]] = {}
    for growth in growths:
        for n in (3.0, 2.0):
            for seed in seeds:
                end_to_end = growth == 2.5
                row = _ripening_rows(n, seed, size_px=size, n_frames=frames, growth=growth,
                                     end_to_end=end_to_end)
                ft = row["truth"]
                err_t = ft.n - n
                errors.setdefault((growth, n, "truth"), []).append(abs(err_t))
                if end_to_end:
                    fm = row["measured"]
                    err_m = fm.n - n
                    errors.setdefault((growth, n, "measured"), []).append(abs(err_m))
                    e2e, e2e_err = _fmt_fit(fm), f"{err_m:+.2f}"
                    seg_ms.append(row["seg_ms"])
                else:
                    e2e, e2e_err = "not run", ""
                lines.append(
                    f"| {n:g} | {growth:g}x | {seed} | {row['n0']} -> {row['n_end']} | "
                    f"{_fmt_fit(ft)} | {err_t:+.2f} | {e2e} | {e2e_err} | {ft.mechanism} |"
                )
    if not quick:
        # the same at 8 nm initial mean diameter (16 px): the segmenter's size bias shrinks
        for n in (3.0, 2.0):
            row = _ripening_rows(n, 1, size_px=1536, n_frames=frames, growth=2.5,
                                 end_to_end=True, mean_diameter_nm=8.0)
            ft, fm = row["truth"], row["measured"]
            errors.setdefault((2.5, n, "measured, 8 nm start"), []).append(abs(fm.n - n))
            lines.append(
                f"| {n:g} | 2.5x, 8 nm start, 1536 px | 1 | {row['n0']} -> {row['n_end']} | "
                f"{_fmt_fit(ft)} | {ft.n - n:+.2f} | {_fmt_fit(fm)} | {fm.n - n:+.2f} | "
                f"{ft.mechanism} |")
    lines.append("")
    summary = []
    for (growth, n, kind), errs in sorted(errors.items()):
        summary.append(f"growth {growth:g}x, n = {n:g}, {kind}: max |error| {max(errs):.2f} "
                       f"over {len(errs)} seed(s)")
    lines += ["Summary: " + "; ".join(summary) + ".", ""]
    if seg_ms:
        lines += [f"(classical segmentation + measurement: {np.mean(seg_ms):.0f} ms per "
                  f"{size}x{size} frame on this machine)", ""]
    lines.append(
        "The interval assumes independent residuals; the per-frame means of one population "
        "are correlated in time (particles vanish one by one), so read it as a lower bound "
        "on the uncertainty. End-to-end errors add the segmenter's size bias, which changes "
        "with particle size and so with time (see the classical segmentation benchmarks).")
    return "\n".join(lines)


# --------------------------------------------------------------------------- dense
def _pm(err: float, digits: int = 2) -> str:
    """' +- err', or '' when no bootstrap was run for that model (NaN)."""
    return "" if not np.isfinite(err) else f" +- {err:.{digits}f}"


def dense_section(quick: bool) -> str:
    from etemlive.analysis import fit_size_distribution
    from etemlive.measure import measure_particles
    from etemlive.segment.classical import segment_classical
    from etemlive.sources.simulate import Simulation, SimulationConfig

    seeds = (1,) if quick else (1, 2, 3)
    size = 1024
    lines = [
        "### Two families (simulator `dense`)",
        "",
        f"`fit_size_distribution` (max 3 families, BIC; 100 bootstrap resamples) on the "
        f"diameters of the first frame, "
        f"{size}x{size} px at 0.5 nm/px, 40 % area fraction, half of the particles touching; "
        "particles cut by the border left out. Truth: the simulator's realized family means "
        "and weights (metadata). Target: means within 5 %, weights within 0.05.",
        "",
        "| seed | source | n | families by BIC: mean nm (weight) | two-family fit: mean 1 (nm) | "
        "err | mean 2 (nm) | err | weight 1 | err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for seed in seeds:
        cfg = SimulationConfig(scenario="dense", seed=seed, n_frames=1, size_px=size)
        sim = Simulation(cfg)
        frame = next(iter(sim.frames()))
        fams = sim.metadata["dense"]["families"]
        true_means = [f["realized_mean_diameter_nm"] for f in fams]
        true_w1 = fams[0]["realized_weight"]
        tr = frame.truth[~frame.truth["touches_edge"].astype(bool)]
        labels = segment_classical(frame.image, cfg.pixel_size_nm)
        m = measure_particles(labels, cfg.pixel_size_nm)
        m = m[~m["touches_edge"].astype(bool)]
        for source, d in (("truth", tr["diameter_nm"]), ("classical", m["diameter_nm"])):
            fit = fit_size_distribution(d.to_numpy(float), n_bootstrap=100, seed=seed)
            if fit.status != "ok":
                lines.append(f"| {seed} | {source} | {fit.n} | {fit.status} | | | | | | |")
                continue
            # the two-family fit (normal or log-normal mixture, lower BIC) against the truth
            two = [m for k, m in fit.models.items() if k.endswith("_k2")]
            c1, c2 = min(two, key=lambda m: m.bic).components
            best = ", ".join(f"{c.mean_nm:.2f} ({c.weight:.2f})"
                             for c in fit.best_fit.components)
            lines.append(
                f"| {seed} | {source} | {fit.n} | {fit.n_families}: {best} | "
                f"{c1.mean_nm:.2f}{_pm(c1.mean_err_nm)} (true {true_means[0]:.2f}) | "
                f"{100 * (c1.mean_nm / true_means[0] - 1):+.1f} % | "
                f"{c2.mean_nm:.2f}{_pm(c2.mean_err_nm)} (true {true_means[1]:.2f}) | "
                f"{100 * (c2.mean_nm / true_means[1] - 1):+.1f} % | "
                f"{c1.weight:.3f}{_pm(c1.weight_err, 3)} (true {true_w1:.3f}) | "
                f"{c1.weight - true_w1:+.3f} |"
            )
    lines += ["", "Weights are by number of particles. The truth weight counts every placed "
              "particle; the fit sees only those inside the frame and not cut by its border."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- scale bars
def _background(seed: int, shape=(512, 640)) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.normal(120, 25, shape).astype(np.float32), (0, 0), 3)
    for _ in range(30):
        center = (int(rng.integers(0, shape[1])), int(rng.integers(0, shape[0])))
        cv2.circle(img, center, int(rng.integers(4, 15)), float(rng.uniform(40, 200)), -1)
    return np.clip(img + rng.normal(0, 8, shape), 25, 230).astype(np.uint8)


def scale_section(quick: bool) -> str:
    import cv2

    from etemlive.scale import (
        detect_scale_bar,
        draw_scale_bar,
        parse_scale_label,
        tesseract_available,
    )

    fonts = {"SIMPLEX": cv2.FONT_HERSHEY_SIMPLEX, "DUPLEX": cv2.FONT_HERSHEY_DUPLEX,
             "PLAIN": cv2.FONT_HERSHEY_PLAIN, "COMPLEX": cv2.FONT_HERSHEY_COMPLEX,
             "TRIPLEX": cv2.FONT_HERSHEY_TRIPLEX, "COMPLEX_SMALL": cv2.FONT_HERSHEY_COMPLEX_SMALL}
    texts = ["20 nm", "0.2 um", "50 nm", "500 pm", "100 nm", "5 nm", "2 um", "10 nm", "200 nm",
             "1 um"]
    n_img = 24 if quick else 96
    rng = np.random.default_rng(0)
    ocr = tesseract_available()
    stats = {"found": 0, "length_exact": 0, "user_2pct": 0, "ocr_2pct": 0}
    by_font: dict[str, list[int]] = {}
    by_scale: dict[float, list[int]] = {}
    failures = []
    t_detect = []
    for i in range(n_img):
        font_name = list(fonts)[i % len(fonts)]
        text = texts[i % len(texts)]
        font_scale = [0.5, 0.8, 1.0, 1.4][(i // 6) % 4]
        length = int(rng.integers(60, 260))
        img = draw_scale_bar(
            _background(i), length_px=length, text=text, font=fonts[font_name],
            font_scale=font_scale, thickness=1 + (i // 24) % 2, bright=i % 2 == 0,
            box=(i // 2) % 2 == 0, corner=["br", "bl", "tr", "tl"][(i // 3) % 4],
            bar_height_px=int(rng.integers(3, 10)),
        )
        jpeg = i % 4 >= 2
        if jpeg:
            _, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
            img = cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE)
        truth_nm = parse_scale_label(text)
        true_px = truth_nm / length
        t0 = time.perf_counter()
        bar = detect_scale_bar(img, ocr=ocr)
        t_detect.append(time.perf_counter() - t0)
        ok_ocr = False
        if bar is not None:
            stats["found"] += 1
            stats["length_exact"] += abs(bar.length_px - length) <= 1
            stats["user_2pct"] += abs(bar.pixel_size_nm(truth_nm) / true_px - 1) <= 0.02
            px = bar.pixel_size_nm()
            ok_ocr = px is not None and abs(px / true_px - 1) <= 0.02
            stats["ocr_2pct"] += ok_ocr
        by_font.setdefault(font_name, []).append(ok_ocr)
        by_scale.setdefault(font_scale, []).append(ok_ocr)
        if not ok_ocr and len(failures) < 8:
            failures.append(f"{text!r} {font_name} x{font_scale}{' jpeg' if jpeg else ''}: "
                            f"read {bar.label_text if bar else None!r}")
    lines = [
        "### Scale bars",
        "",
        f"{n_img} synthetic 640x512 images (gray texture and blobs), a bar of random length "
        "60-260 px and 3-9 px height in a random corner, its label in 6 OpenCV Hershey fonts at "
        "scales 0.5-1.4, white-on-dark and dark-on-white, half on a label box, half saved as "
        "JPEG (quality 85). Pixel size within 2 % of the truth:",
        "",
        f"- bar found: {stats['found']}/{n_img}; length within 1 px: {stats['length_exact']}/{n_img}",
        f"- with the user's `--scale-bar-nm`: {stats['user_2pct']}/{n_img}",
    ]
    if ocr:
        lines.append(f"- label read by Tesseract OCR: {stats['ocr_2pct']}/{n_img}; by font: "
                     + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in by_font.items())
                     + "; by font scale: "
                     + ", ".join(f"{k:g} {sum(v)}/{len(v)}" for k, v in sorted(by_scale.items())))
        if failures:
            lines.append("- OCR misses (first few): " + "; ".join(failures))
    else:
        lines.append("- OCR: not run (tesseract binary not installed)")
    lines.append(f"- detection time (OCR included): median {1e3 * np.median(t_detect):.0f} ms")
    lines.append("")
    lines += _real_images_lines(quick)
    return "\n".join(lines)


def _real_images_lines(quick: bool) -> list[str]:
    import cv2

    from etemlive.scale import detect_scale_bar, draw_scale_bar

    folder = SHARED_DATA / "ardagen_catalysts" / "images"
    if not folder.is_dir():
        return [f"Real images: not run ({folder} not found)."]
    paths = sorted(folder.glob("*.jpg"))
    if quick:
        paths = paths[:8]
    found = []
    burned_ok = 0
    for i, p in enumerate(paths):
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        bar = detect_scale_bar(img, ocr=True)
        if bar is not None:
            found.append(f"{p.name}: {bar.length_px:.0f} px, label {bar.label_text!r}, "
                         f"confidence {bar.confidence:.2f}")
        # the same real image with a bar burned in (10 % of the width, "50 nm"), white on
        # a dark corner and black on a bright one (as a microscope draws it), or on a box
        length = max(40, img.shape[1] // 10)
        scale = img.shape[1] / 640
        rows, cols = img.shape
        corner = img[int(0.75 * rows):, int(0.6 * cols):]
        burned = draw_scale_bar(img, length_px=length, text="50 nm", font_scale=0.8 * scale,
                                thickness=max(1, int(round(2 * scale))),
                                bar_height_px=max(3, int(6 * scale)),
                                bright=bool(np.median(corner) < 128), box=i % 3 == 0)
        b2 = detect_scale_bar(burned, ocr=True)
        px = b2.pixel_size_nm() if b2 is not None else None
        burned_ok += px is not None and abs(px / (50.0 / length) - 1) <= 0.02
    lines = [
        f"Real images (`ardagen_catalysts/images`, {len(paths)} TEM / HAADF-STEM JPEGs, "
        "640-2048 px): bars detected in "
        f"{len(found)}/{len(paths)}" + (": " + "; ".join(found) if found else "") + ". "
        "Looking at them, these images carry no visible burned-in bar (they seem cropped "
        "away), so none found means no false positive on real particle images with "
        "saturated regions. The same images with a bar and label burned in (10 % of the "
        "width, \"50 nm\", white on a dark corner, black on a bright one, a third on a "
        "box): pixel size within "
        f"2 % from the OCR'd label in {burned_ok}/{len(paths)}.",
    ]
    return lines


# --------------------------------------------------------------------------- speed
def speed_section(quick: bool) -> str:
    from etemlive.analysis import fit_coarsening_kinetics, fit_size_distribution

    rng = np.random.default_rng(0)
    rows = ["### Speed", "", "Median of 3 runs on this machine (other work was running on it: "
            "upper bounds).", "", "| operation | ms |", "|---|---|"]
    for n in (200, 1000, 5000):
        d = np.concatenate([rng.normal(5, 0.5, n // 2), rng.normal(10, 1.0, n - n // 2)])
        for boot in (0, 50):
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                fit_size_distribution(d, n_bootstrap=boot)
                ts.append(time.perf_counter() - t0)
            rows.append(f"| `fit_size_distribution`, {n} diameters, {boot} bootstrap | "
                        f"{1e3 * np.median(ts):.0f} |")
    t = np.linspace(0, 100, 200)
    r = (4**3 + 5 * t) ** (1 / 3) * (1 + rng.normal(0, 0.005, t.size))
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        fit_coarsening_kinetics(t, r)
        ts.append(time.perf_counter() - t0)
    rows.append(f"| `fit_coarsening_kinetics`, 200 time points | {1e3 * np.median(ts):.0f} |")
    return "\n".join(rows)


def run(quick: bool = False) -> str:
    """The analysis section of docs/benchmarks.md (Markdown)."""
    t0 = time.perf_counter()
    parts = ["## Analysis: distributions, kinetics, scale bars", ""]
    for fn in (ripening_section, dense_section, scale_section, speed_section):
        parts += [fn(quick), ""]
    parts.append(f"Command: `python tools/bench_analysis.py{' --quick' if quick else ''}` "
                 f"({time.perf_counter() - t0:.0f} s).")
    return "\n".join(parts)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=("ripening", "dense", "scale", "speed"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    if args.only:
        print(globals()[f"{args.only}_section"](args.quick))
    else:
        print(run(quick=args.quick))
