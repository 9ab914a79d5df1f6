"""The self-contained HTML report of a run (``report.html``).

One file, no network needed to view it: plots embedded as base64 PNG, CSS inline,
no scripts. Sections: input and calibration, counts and size over time, size
distributions, kinetics, growth curves, events, pipeline health. The plots are
regenerated from the output folder by :func:`etemlive.analysis.analyze_output`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .analysis import NOT_ENOUGH_DATA, _read_csv, _write_atomic, analyze_output

#: section ids and headings, in order (tests and readers rely on the ids).
SECTIONS: tuple[tuple[str, str], ...] = (
    ("input", "Input and calibration"),
    ("time", "Counts and size over time"),
    ("distributions", "Size distributions"),
    ("kinetics", "Kinetics"),
    ("growth", "Growth curves"),
    ("events", "Events"),
    ("health", "Pipeline health"),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;
margin-top:1.6em}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;height:auto;
margin:.4em 0;border:1px solid #eee}.muted{color:#777}.warn{color:#a40}
nav a{margin-right:1em}.grid{display:flex;flex-wrap:wrap;gap:1em}.grid>figure{margin:0}
"""


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return "&ndash;" if not math.isfinite(v) else format(v, spec)
    return html.escape(str(value))


def _kv_table(items: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in items
    )
    return f"<table>{rows}</table>"


def _df_table(df: pd.DataFrame, *, max_rows: int = 200, floatfmt: str = ".4g") -> str:
    if df is None or len(df) == 0:
        return f'<p class="muted">{NOT_ENOUGH_DATA}: no rows</p>'
    shown = df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    body = []
    for row in shown.itertuples(index=False):  # display only (at most max_rows rows)
        cells = []
        for v in row:
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            cells.append(f'<td class="num">{_fmt(v, floatfmt)}</td>' if num else f"<td>{_fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = (f'<p class="muted">{len(df) - max_rows} more rows in the CSV</p>'
            if len(df) > max_rows else "")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{more}"


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return f'<p class="muted">{html.escape(alt)}: no plot</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"</figure>")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.extend(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out.append((key, ", ".join(str(x) for x in v) if v else "none"))
        else:
            out.append((key, v))
    return out


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>\n{body}\n</section>\n'


def render_report(out_dir: str | Path, result: Mapping[str, Any]) -> str:
    """The report's HTML text, from :func:`analyze_output`'s result for ``out_dir``."""
    out = Path(out_dir)
    summary: Mapping[str, Any] = result.get("summary", {})
    plots: Mapping[str, Path] = result.get("plots", {})
    kin: Mapping[str, Any] = result.get("kinetics", {})
    unit = result.get("time_unit", "s")
    parts: dict[str, str] = {}

    # input and calibration
    px = summary.get("pixel_size_nm")
    calib = [
        ("input", summary.get("input")),
        ("pixel size (nm/px)", px),
        ("pixel size source", summary.get("pixel_size_source")),
        ("frame interval (s)", summary.get("frame_interval_s")),
        ("time unit", "frames (no frame interval known)" if unit == "frame" else "seconds"),
        ("backend", summary.get("backend")),
        ("device", summary.get("device")),
        # sizes depend on where outlines are drawn (network edge or half contrast)
        ("U-Net outlines", summary.get("outline") or "-"),
        ("etemlive version", summary.get("version")),
    ]
    warn = "" if px else '<p class="warn">No pixel size recorded: sizes may be in px.</p>'
    parts["input"] = warn + _kv_table(calib)

    # counts and size over time
    series: pd.DataFrame = result.get("series", pd.DataFrame())
    if len(series):
        stats = [
            ("frames with particles", len(series)),
            ("particles per frame (first / last)",
             f"{int(series['count'].iloc[0])} / {int(series['count'].iloc[-1])}"),
            ("mean diameter nm (first / last)",
             f"{_fmt(2 * series['mean_radius_nm'].iloc[0])} / "
             f"{_fmt(2 * series['mean_radius_nm'].iloc[-1])}"),
        ]
        parts["time"] = _kv_table(stats)
    else:
        parts["time"] = f'<p class="muted">{NOT_ENOUGH_DATA}: no particles recorded</p>'
    parts["time"] += ('<div class="grid">' + _img(plots.get("count_vs_time"), "count vs time")
                      + _img(plots.get("mean_size_vs_time"), "mean size vs time") + "</div>")

    # distributions
    fit = result.get("final_fit")
    dist: pd.DataFrame = result.get("distributions", pd.DataFrame())
    body = []
    if fit is not None and fit.status == "ok":
        best = fit.best_fit
        body.append(
            f"<p>Last window: n = {fit.n} particles; best model by BIC: "
            f"<b>{html.escape(best.model)}</b> with <b>{best.n_components}</b> "
            f"{'family' if best.n_components == 1 else 'families'}. Shape compared with "
            f"LSW theory (rho = r/&lt;r&gt;): KS distance {_fmt(fit.ks_lsw, '.3f')} to LSW "
            f"(n = 3), {_fmt(fit.ks_wagner, '.3f')} to Wagner (n = 2).</p>"
        )
    else:
        body.append(f'<p class="muted">Size distribution: {NOT_ENOUGH_DATA} '
                    f"(fewer than 20 sized particles in the last window)</p>")
    body.append('<div class="grid">' + _img(plots.get("size_histogram"), "size histogram with fits")
                + _img(plots.get("reduced_size_lsw"), "reduced size vs LSW / Wagner") + "</div>")
    if len(dist):
        cols = ["window_start_frame", "window_end_frame", "model", "component", "weight",
                "weight_err", "mean_nm", "mean_err_nm", "std_nm", "std_err_nm", "n", "n_tracks",
                "bic", "selected", "status"]
        sel = dist.loc[dist["selected"].astype(bool) | (dist["model"] == "none"), cols]
        body.append("<p>Selected model per window (all candidates in distributions.csv; "
                    "n = particle observations in the window, n_tracks = particles fitted, "
                    "each once; uncertainties are 1-sigma bootstrap):</p>")
        body.append(_df_table(sel, max_rows=60))
    parts["distributions"] = "".join(body)

    # kinetics
    co = kin.get("coarsening", {})
    body = []
    if co.get("status") == "ok":
        ci = (f"[{_fmt(co.get('n_ci_low'), '.2f')}, {_fmt(co.get('n_ci_high'), '.2f')}]")
        body.append(
            f"<p>&lt;r&gt;<sup>n</sup> &minus; &lt;r<sub>0</sub>&gt;<sup>n</sup> = k t: "
            f"<b>n = {_fmt(co.get('n'), '.2f')}</b> (95 % CI {ci}), "
            f"k = {_fmt(co.get('k'))} {html.escape(str(co.get('k_unit', '')))}, "
            f"r<sub>0</sub> = {_fmt(co.get('r0_nm'), '.3g')} nm. "
            f"Mechanism: <b>{html.escape(str(co.get('mechanism')))}</b>.</p>"
        )
    else:
        body.append(f'<p class="muted">Coarsening fit: {html.escape(str(co.get("status", NOT_ENOUGH_DATA)))}</p>')
    for note in kin.get("notes", []):
        body.append(f'<p class="warn">{html.escape(note)}</p>')
    mr = kin.get("merge_rate", {})
    gr = kin.get("growth_rate_vs_size", {})
    body.append(_kv_table([
        ("merge events", mr.get("total_merges")),
        ("vanish events", mr.get("total_vanish")),
        ("merges / (merges + vanishes)", mr.get("merge_fraction_of_disappearances")),
        ("growth-rate fit", gr.get("status")),
        ("critical radius r* (nm)", gr.get("critical_radius_nm")),
        ("r* / <r>", gr.get("critical_over_mean")),
        ("fraction of track segments shrinking", gr.get("fraction_shrinking")),
    ]))
    body.append('<div class="grid">' + _img(plots.get("kinetics_fit"), "kinetics fit")
                + _img(plots.get("growth_rate_vs_size"), "growth rate vs size") + "</div>")
    parts["kinetics"] = "".join(body)

    # growth curves
    tracks = _read_csv(out / "tracks.csv")
    body = [_img(plots.get("growth_curves"), "growth curves of the longest tracks")]
    if tracks is not None and len(tracks) and "n_frames" in tracks:
        top = tracks.sort_values("n_frames", ascending=False).head(15)
        body.append("<p>Longest tracks (tracks.csv):</p>" + _df_table(top))
    parts["growth"] = "".join(body)

    # events
    events = _read_csv(out / "events.csv")
    if events is not None and len(events) and "kind" in events:
        counts = events["kind"].value_counts()
        body = [_kv_table([(k, int(v)) for k, v in counts.items()])]
        # merges and splits first: they are the rare, telling events
        rank = (~events["kind"].isin(["merge", "split"])).astype(int)
        shown = events.assign(_r=rank).sort_values(["_r", "frame"], kind="stable").drop(
            columns="_r")
        body.append("<p>Events (merges and splits first):</p>" + _df_table(shown, max_rows=100))
        parts["events"] = "".join(body)
    else:
        parts["events"] = '<p class="muted">No events recorded.</p>'

    # health
    health_keys = ("status", "frames_seen", "frames_analysed", "frames_dropped", "frames_malformed",
                   "frames_failed", "gaps", "elapsed_s", "fps", "latency_p50_ms",
                   "latency_p99_ms", "latency_max_ms", "workers")
    items = [(k, summary[k]) for k in health_keys if k in summary]
    rest = {k: v for k, v in summary.items() if k not in health_keys and k not in
            ("input", "pixel_size_nm", "pixel_size_source", "frame_interval_s", "version")}
    body = [_kv_table(items) if items else '<p class="muted">No summary.json found.</p>']
    warnings = summary.get("warnings") or []
    for w in warnings:
        body.append(f'<p class="warn">{html.escape(str(w))}</p>')
    if rest:
        body.append("<details><summary>All of summary.json</summary>"
                    + _kv_table(_flatten(rest)) + "</details>")
    parts["health"] = "".join(body)

    title = f"etemlive report: {summary.get('input') or out.name}"
    nav = "".join(f'<a href="#{sid}">{html.escape(t)}</a>' for sid, t in SECTIONS)
    sections = "".join(_section(sid, t, parts[sid]) for sid, t in SECTIONS)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1><p class=\"muted\">Output folder: {html.escape(str(out))}"
        f"</p><nav>{nav}</nav>\n{sections}</body></html>\n"
    )


def write_report(
    out_dir: str | Path, *, n_bootstrap: int = 50, window_frames: int | None = None
) -> Path:
    """Analyse ``out_dir`` (regenerating PNGs, distributions.csv, kinetics.json) and
    write ``report.html``, one self-contained file.

    Parameters
    ----------
    out_dir : path
        A run's output folder (design.md "Output folder contract").
    n_bootstrap : int
        Bootstrap resamples for the distribution uncertainties.
    window_frames : int, optional
        Frames per size-distribution window (default: about 10 windows per run).

    Returns
    -------
    Path
        ``out_dir / "report.html"``.

    Raises
    ------
    InputError
        ``out_dir`` is not a folder.
    """
    out = Path(out_dir)
    result = analyze_output(out, n_bootstrap=n_bootstrap, window_frames=window_frames)
    path = out / "report.html"
    _write_atomic(path, render_report(out, result))
    return path
