#!/usr/bin/env python
"""Shape confusion matrices of etemlive.measure against simulator truth.

usage: python shape_confusion.py SEEDS [OLD_MEASURE.py]
  SEEDS e.g. 1000,1001; sizes 512 and 1024; scenarios shapes, coalescence, ripening.
  (a) measure the true labels, (b) classical segmentation matched to truth by IoU > 0.5;
  particles touching the image edge are left out.
"""
import importlib.util
import sys

import numpy as np
import pandas as pd

import etemlive.measure as measure
from etemlive.measure import SHAPES
from etemlive.segment.classical import ClassicalSegmenter
from etemlive.sources.simulate import SimulationConfig, simulate

if len(sys.argv) > 2:  # e.g. `git show HEAD~2:src/etemlive/measure.py` with absolute imports
    spec = importlib.util.spec_from_file_location("old_measure", sys.argv[2])
    measure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure)


def match(seg, truth_lab):
    s = seg.ravel().astype(np.int64)
    t = truth_lab.ravel().astype(np.int64)
    m = (s > 0) & (t > 0)
    u, cnt = np.unique(s[m] * 70000 + t[m], return_counts=True)
    ps, pt = u // 70000, u % 70000
    sa, ta = np.bincount(s), np.bincount(t)
    ok = cnt / (sa[ps] + ta[pt] - cnt) > 0.5
    return dict(zip(ps[ok], pt[ok], strict=True))

seeds = [int(x) for x in sys.argv[1].split(",")]
seg = ClassicalSegmenter()
for scen in ("shapes", "coalescence", "ripening"):
    rows = {"true labels": [], "classical seg": []}
    for seed in seeds:
        for size in (512, 1024):
            cfg = SimulationConfig(scenario=scen, seed=seed, n_frames=1, size_px=size)
            f = next(iter(simulate(cfg)))
            truth = f.truth.set_index("truth_id")["shape"]
            lab = seg.segment(f.image, cfg.pixel_size_nm)
            mt = measure.measure_particles(f.labels.astype(np.int32), cfg.pixel_size_nm)
            mt = mt[~mt.touches_edge]
            rows["true labels"].append(pd.DataFrame({"truth": truth.reindex(mt.label).to_numpy(),
                                                     "measured": mt["shape"].to_numpy()}))
            ms = measure.measure_particles(lab, cfg.pixel_size_nm)
            mp = match(lab, f.labels)
            ms = ms[~ms.touches_edge & ms.label.isin(list(mp))]
            rows["classical seg"].append(pd.DataFrame({"truth": truth.reindex([mp[i] for i in ms.label]).to_numpy(),
                                                       "measured": ms["shape"].to_numpy()}))
    for kind, r in rows.items():
        d = pd.concat(r).dropna()
        acc = (d.truth == d.measured).mean()
        rr = (d.measured[d.truth == "round"] == "round").mean()
        print(f"== {scen} / {kind}, seeds {seeds}, 512+1024 px: n={len(d)} accuracy={acc:.3f} round->round={rr:.3f}")
        print(pd.crosstab(d.truth, d.measured).reindex(columns=list(SHAPES), fill_value=0).to_string())
