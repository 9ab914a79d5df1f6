#!/usr/bin/env python
"""Simulator benchmark: speed per scenario, training-sample speed, ripening-law fidelity.

``run(quick=False) -> str`` returns a Markdown section for docs/benchmarks.md
(see tools/bench.py); ``python tools/bench_simulate.py [--quick]`` prints it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import curve_fit

from etemlive.sources.simulate import (
    SCENARIOS,
    Simulation,
    SimulationConfig,
    render_training_sample,
)


def _time_movie(scenario: str, size_px: int, n_frames: int) -> tuple[float, float]:
    """Seconds for the whole movie and mean visible particles per frame."""
    cfg = SimulationConfig(scenario=scenario, seed=0, n_frames=n_frames, size_px=size_px)
    start = time.perf_counter()
    count = 0
    for frame in Simulation(cfg).frames():
        count += len(frame.truth)
    return time.perf_counter() - start, count / n_frames


def _fit_exponent(t_s: np.ndarray, r_nm: np.ndarray) -> tuple[float, float]:
    """Least-squares n (and its standard error) of <r> = (r0^n + K t)^(1/n)."""

    def model(t, n, k, r0):
        return (np.abs(r0) ** n + np.abs(k) * t) ** (1.0 / n)

    p0 = [2.5, (r_nm[-1] ** 2.5 - r_nm[0] ** 2.5) / t_s[-1], r_nm[0]]
    params, cov = curve_fit(model, t_s, r_nm, p0=p0, maxfev=20000)
    return float(params[0]), float(np.sqrt(cov[0, 0]))


def _ripening_fit(n: float, seed: int, size_px: int, n_frames: int) -> tuple[float, float, int, int]:
    cfg = SimulationConfig(scenario="ripening", seed=seed, n_frames=n_frames, size_px=size_px,
                           ripening_exponent=n)
    t_s, r_nm, counts = [], [], []
    for frame in Simulation(cfg).frames():
        inner = frame.truth[~frame.truth["touches_edge"]]
        t_s.append(frame.time_s)
        r_nm.append(inner["diameter_nm"].mean() / 2)
        counts.append(len(inner))
    n_fit, n_err = _fit_exponent(np.array(t_s), np.array(r_nm))
    return n_fit, n_err, counts[0], counts[-1]


def run(quick: bool = False) -> str:
    """The Markdown section."""
    n_frames = 20 if quick else 100
    sizes = (512,) if quick else (512, 1024)
    lines = ["## Simulator", "",
             "Command: `python tools/bench_simulate.py" + (" --quick" if quick else "") + "`.",
             "",
             f"### Speed: {n_frames} frames per movie (dynamics, rendering, noise, truth table)", "",
             "| scenario | size | s per movie | ms per frame | particles per frame |",
             "| --- | --- | --- | --- | --- |"]
    for size in sizes:
        for scenario in SCENARIOS:
            seconds, particles = _time_movie(scenario, size, n_frames)
            lines.append(f"| {scenario} | {size}^2 | {seconds:.1f} | {1000 * seconds / n_frames:.0f} "
                         f"| {particles:.0f} |")
    rng = np.random.default_rng(0)
    n_samples = 20 if quick else 100
    times = []
    for _ in range(n_samples):
        start = time.perf_counter()
        render_training_sample(rng, 256)
        times.append(time.perf_counter() - start)
    lines += ["", f"`render_training_sample(rng, 256)`: median {1000 * np.median(times):.1f} ms, "
              f"p90 {1000 * np.percentile(times, 90):.1f} ms over {n_samples} samples.", "",
              "### Ripening law from the truth tables", "",
              "Default `ripening` movie (512^2, 100 frames, drift on), mean radius of the particles "
              "not cut by the border, fitted with `<r> = (r0^n + K t)^(1/n)` (n, K, r0 free).", "",
              "| true n | seed | fitted n | particles first -> last frame |",
              "| --- | --- | --- | --- |"]
    seeds = (0,) if quick else (0, 1, 2, 3)
    for n in (3.0, 2.0):
        for seed in seeds:
            n_fit, n_err, first, last = _ripening_fit(n, seed, 512, 100)
            lines.append(f"| {n:g} | {seed} | {n_fit:.2f} +- {n_err:.2f} | {first} -> {last} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(run(quick=parser.parse_args().quick))
