"""Size distributions, coarsening / coalescence kinetics and plots of a run.

Pure functions over the tidy tables of an output folder (``particles.csv``,
``frames.csv``, ``events.csv``; see ``../shared/design.md``), plus
:class:`LiveAnalysis`, which the pipeline feeds one frame at a time and which refits
every N frames, and :func:`analyze_output`, which reads a finished (or still growing)
folder and writes ``distributions.csv``, ``kinetics.json`` and PNG plots.

"Not enough data" is a result, never an exception: every fit carries a ``status``.
Particles cut by the image border (``touches_edge``) are left out of size statistics.

Models
------
Size distributions: normal, log-normal and Gaussian mixtures in diameter or in
log-diameter (a small seeded EM with several starts, written here with numpy), the
number of families chosen by BIC; uncertainties by bootstrap (resampling tracks when
track ids are known, since one particle is seen in many frames). The reduced size
``rho = r / <r>`` is compared with the Lifshitz-Slyozov-Wagner curves (diffusion-
limited, n = 3, and Wagner's interface-limited, n = 2) by a Kolmogorov-Smirnov distance.

Kinetics: ``<r>^n - <r0>^n = k t`` fitted by least squares in ``r``; ``n`` from the
profile of the residual sum of squares, its 95 % interval by profile likelihood
(``N ln(RSS(n) / RSS_min) <= 3.84``). Per-particle ``dr/dt`` against ``r`` from track
segments, with the critical radius ``r*`` where ``dr/dt`` changes sign.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

NOT_ENOUGH_DATA = "not enough data"
#: fewest particles for a size-distribution fit.
MIN_PARTICLES = 20
#: fewest time points for a kinetics fit.
MIN_TIME_POINTS = 6
#: chi-square(1) 95 % quantile, for profile-likelihood intervals.
_CHI2_1_95 = 3.841458820694124

#: distributions.csv columns, in order.
DISTRIBUTION_COLUMNS: tuple[str, ...] = (
    "window_start_frame",
    "window_end_frame",
    "window_start_time_s",
    "window_end_time_s",
    "model",
    "n_components",
    "component",
    "weight",
    "weight_err",
    "mean_nm",
    "mean_err_nm",
    "std_nm",
    "std_err_nm",
    "log_mean",
    "log_std",
    "n",
    "n_tracks",
    "log_likelihood",
    "bic",
    "selected",
    "ks_lsw",
    "ks_wagner",
    "status",
)

PLOT_NAMES: tuple[str, ...] = (
    "count_vs_time",
    "mean_size_vs_time",
    "size_histogram",
    "reduced_size_lsw",
    "growth_curves",
    "kinetics_fit",
    "growth_rate_vs_size",
)


# --------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class Component:
    """One family of a fitted size distribution (sizes in nm; ``*_err`` = 1 sigma)."""

    weight: float
    mean_nm: float
    std_nm: float
    weight_err: float = float("nan")
    mean_err_nm: float = float("nan")
    std_err_nm: float = float("nan")
    #: mean and std of ln(diameter / nm) for log-normal components, else NaN.
    log_mean: float = float("nan")
    log_std: float = float("nan")


@dataclass(frozen=True, slots=True)
class ModelFit:
    """A fitted model: ``normal``, ``lognormal``, ``normal_mixture`` or ``lognormal_mixture``."""

    model: str
    components: tuple[Component, ...]
    log_likelihood: float
    bic: float
    n_params: int

    @property
    def n_components(self) -> int:
        return len(self.components)


@dataclass(frozen=True, slots=True)
class DistributionFit:
    """Result of :func:`fit_size_distribution`.

    Attributes
    ----------
    status : str
        ``"ok"`` or ``"not enough data"`` (then ``models`` is empty).
    n : int
        Number of diameters used.
    models : dict[str, ModelFit]
        Every fitted candidate, keyed ``"normal"``, ``"lognormal"``,
        ``"normal_mixture_k2"`` ... ``"lognormal_mixture_k3"``.
    best : str or None
        Key of the candidate with the lowest BIC.
    n_families : int
        Number of components of the best model (0 when not fitted).
    mean_nm, std_nm : float
        Sample mean and standard deviation of the diameters.
    ks_lsw, ks_wagner : float
        Kolmogorov-Smirnov distance of ``rho = d / <d>`` to the LSW (n = 3) and Wagner
        (n = 2) reduced-size distributions (0 = identical shape, 1 = disjoint).
    """

    status: str
    n: int
    models: dict[str, ModelFit] = field(default_factory=dict)
    best: str | None = None
    n_families: int = 0
    mean_nm: float = float("nan")
    std_nm: float = float("nan")
    ks_lsw: float = float("nan")
    ks_wagner: float = float("nan")

    @property
    def best_fit(self) -> ModelFit | None:
        return self.models.get(self.best) if self.best else None

    def best_of(self, family: str) -> ModelFit | None:
        """Lowest-BIC candidate whose key starts with ``family`` (e.g. ``"normal_mixture"``)."""
        cands = [m for k, m in self.models.items() if k == family or k.startswith(family + "_k")]
        return min(cands, key=lambda m: m.bic) if cands else None


@dataclass(frozen=True, slots=True)
class KineticsFit:
    """Result of :func:`fit_coarsening_kinetics` (``<r>^n - <r0>^n = k t``).

    Attributes
    ----------
    status : str
        ``"ok"``, ``"not enough data"`` or ``"no coarsening"`` (``<r>`` does not change).
    n, n_ci_low, n_ci_high : float
        Exponent and its 95 % profile-likelihood interval (NaN where the interval
        reaches the searched range ``n_range``: open).
    k : float
        Rate constant in nm^n per time unit.
    r0_nm : float
        Fitted ``<r>`` at ``t0``.
    t0 : float
        Time origin (first time point), in the time unit.
    mechanism : str
        ``"diffusion-limited ripening (n~3)"``, ``"interface-limited ripening (n~2)"``
        or ``"undetermined"``.
    rss_nm2 : float
        Residual sum of squares at the best fit.
    n_points : int
        Number of time points used.
    profile_n, profile_rss : tuple of float
        The profile RSS(n) on the grid (for plots).
    """

    status: str
    n: float = float("nan")
    n_ci_low: float = float("nan")
    n_ci_high: float = float("nan")
    k: float = float("nan")
    r0_nm: float = float("nan")
    t0: float = 0.0
    mechanism: str = "undetermined"
    rss_nm2: float = float("nan")
    n_points: int = 0
    profile_n: tuple[float, ...] = ()
    profile_rss: tuple[float, ...] = ()

    def predict(self, t: np.ndarray) -> np.ndarray:
        """``<r>(t)`` in nm from the fit (NaN when not fitted)."""
        t = np.asarray(t, dtype=float)
        if self.status != "ok":
            return np.full(t.shape, np.nan)
        base = self.r0_nm**self.n + self.k * (t - self.t0)
        return np.where(base > 0, np.abs(base) ** (1.0 / self.n), np.nan)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile_n"] = list(self.profile_n)
        d["profile_rss"] = list(self.profile_rss)
        return d


# --------------------------------------------------------------------------- EM
def _em_batch(
    x: np.ndarray,
    w: np.ndarray,
    mu: np.ndarray,
    var: np.ndarray,
    var_floor: float,
    *,
    max_iter: int = 200,
    tol: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EM for 1-D Gaussian mixtures, batched over B problems.

    ``x`` is (B, n) or (1, n) (shared data, several starts); ``w``, ``mu``, ``var``
    are (B, k). Returns the fitted ``w, mu, var`` (B, k) and log-likelihoods (B,).
    """
    x = x[:, :, None]  # (B, n, 1)
    n = x.shape[1]
    w, mu, var = w.copy(), mu.copy(), var.copy()
    ll_old = np.full(w.shape[0], -np.inf)

    def loglik_terms(w, mu, var):
        # log(w_j N(x | mu_j, var_j)) = c_j - z^2 / 2, with c_j per component
        c = np.log(np.maximum(w, 1e-300)) - 0.5 * np.log(2 * np.pi * var)
        z = (x - mu[:, None, :]) * (1.0 / np.sqrt(var))[:, None, :]
        logp = c[:, None, :] - 0.5 * z * z
        m = logp.max(axis=2, keepdims=True)
        lse = m + np.log(np.exp(logp - m).sum(axis=2, keepdims=True))
        return logp, lse

    for _ in range(max_iter):
        logp, lse = loglik_terms(w, mu, var)
        ll = lse[:, :, 0].sum(axis=1)
        resp = np.exp(logp - lse)  # (B, n, k)
        nk = resp.sum(axis=1) + 1e-12
        w = nk / n
        mu = (resp * x).sum(axis=1) / nk
        var = np.maximum((resp * (x - mu[:, None, :]) ** 2).sum(axis=1) / nk, var_floor)
        # converged when the mean log-likelihood per point stops moving
        if np.all(np.abs(ll - ll_old) <= tol * n):
            break
        ll_old = ll
    _, lse = loglik_terms(w, mu, var)
    return w, mu, var, lse[:, :, 0].sum(axis=1)


def _fit_mixture(
    x: np.ndarray, k: int, rng: np.random.Generator, var_floor: float, n_init: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Best of ``n_init`` EM starts (quantile start + k-means++-like random starts)."""
    var0 = float(np.var(x))
    starts_mu = [np.quantile(x, (np.arange(k) + 0.5) / k)]
    for _ in range(n_init - 1):
        # k-means++ seeding: spread starts over the data, seeded
        c = [rng.choice(x)]
        for _ in range(k - 1):
            d2 = np.min((x[:, None] - np.asarray(c)[None, :]) ** 2, axis=1)
            p = d2 / d2.sum() if d2.sum() > 0 else None
            c.append(rng.choice(x, p=p))
        starts_mu.append(np.sort(np.asarray(c)))
    mu = np.stack(starts_mu)
    w = np.full_like(mu, 1.0 / k)
    var = np.full_like(mu, max(var0 / k**2, var_floor))
    w, mu, var, ll = _em_batch(x[None, :], w, mu, var, var_floor)
    i = int(np.nanargmax(ll))
    order = np.argsort(mu[i])
    return w[i][order], mu[i][order], var[i][order], float(ll[i])


def _bootstrap_mixture(
    x: np.ndarray,
    w: np.ndarray,
    mu: np.ndarray,
    var: np.ndarray,
    var_floor: float,
    idx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refit on bootstrap resamples ``x[idx]`` (B, n), warm-started; components sorted by mean."""
    b = idx.shape[0]
    xb = x[idx]
    wb, mub, varb, _ = _em_batch(
        xb, np.tile(w, (b, 1)), np.tile(mu, (b, 1)), np.tile(var, (b, 1)), var_floor, max_iter=60,
        tol=1e-6,
    )
    order = np.argsort(mub, axis=1)
    take = np.take_along_axis
    return take(wb, order, 1), take(mub, order, 1), take(varb, order, 1)


def _bootstrap_indices(
    n: int, n_bootstrap: int, rng: np.random.Generator, groups: np.ndarray | None
) -> np.ndarray:
    """(B, n) resampling indices; whole groups (tracks) are resampled when given."""
    if groups is None:
        return rng.integers(0, n, size=(n_bootstrap, n))
    # cluster bootstrap: draw tracks with replacement, then take their rows; trim /
    # pad to n rows so the batch is rectangular (row counts differ a little per draw)
    order = np.argsort(groups, kind="stable")
    _, starts, counts = np.unique(groups[order], return_index=True, return_counts=True)
    n_groups = starts.size
    out = np.empty((n_bootstrap, n), dtype=np.intp)
    for b in range(n_bootstrap):  # B iterations (not per particle)
        picks = rng.integers(0, n_groups, size=n_groups)
        lens = counts[picks]
        offs = np.repeat(starts[picks] - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
        rows = order[offs]
        if rows.size >= n:
            out[b] = rows[:n]
        else:
            out[b] = np.concatenate([rows, rows[rng.integers(0, rows.size, n - rows.size)]])
    return out


def _components(
    w: np.ndarray,
    mu: np.ndarray,
    var: np.ndarray,
    log_space: bool,
    boot: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
) -> tuple[Component, ...]:
    def to_nm(w, mu, var):
        if log_space:
            mean = np.exp(mu + var / 2)
            return w, mean, mean * np.sqrt(np.expm1(var))
        return w, mu, np.sqrt(var)

    cw, cm, cs = to_nm(w, mu, var)
    if boot is not None:
        bw, bm, bs = to_nm(*boot)
        ew, em, es = (np.std(a, axis=0, ddof=1) for a in (bw, bm, bs))
    else:
        ew = em = es = np.full(w.shape, np.nan)
    return tuple(
        Component(
            weight=float(cw[j]),
            mean_nm=float(cm[j]),
            std_nm=float(cs[j]),
            weight_err=float(ew[j]),
            mean_err_nm=float(em[j]),
            std_err_nm=float(es[j]),
            log_mean=float(mu[j]) if log_space else float("nan"),
            log_std=float(math.sqrt(var[j])) if log_space else float("nan"),
        )
        for j in range(w.size)
    )


# --------------------------------------------------------------------------- LSW
def _reduced_cdf(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Grid of ``rho = r / <r>`` and the CDF of the LSW (``"lsw"``) or Wagner curve."""
    if kind == "lsw":  # diffusion-limited, u = r / r_c in (0, 3/2), <u> = 1
        u = np.linspace(0, 1.5, 4001)[1:-1]
        logh = 2 * np.log(u) - 7 / 3 * np.log(3 + u) - 11 / 3 * np.log(1.5 - u) - 1.5 / (1.5 - u)
    else:  # Wagner, interface-limited, u in (0, 2)
        u = np.linspace(0, 2.0, 4001)[1:-1]
        logh = np.log(u) - 5 * np.log(2 - u) - 3 * u / (2 - u)
    h = np.exp(logh - logh.max())
    du = u[1] - u[0]
    h /= h.sum() * du
    rho = u / (np.sum(u * h) * du)  # rescale so that <rho> = 1
    cdf = np.cumsum(h) * du
    return rho, cdf / cdf[-1]


_LSW_CDF = _reduced_cdf("lsw")
_WAGNER_CDF = _reduced_cdf("wagner")


def reduced_size_pdf(rho: np.ndarray, kind: str = "lsw") -> np.ndarray:
    """Density of ``rho = r / <r>`` for the LSW (``"lsw"``, n = 3) or ``"wagner"`` (n = 2) theory."""
    grid, cdf = _LSW_CDF if kind == "lsw" else _WAGNER_CDF
    pdf = np.gradient(cdf, grid)
    return np.interp(np.asarray(rho, float), grid, pdf, left=0.0, right=0.0)


def ks_to_reduced(diameters_nm: np.ndarray, kind: str = "lsw") -> float:
    """Kolmogorov-Smirnov distance between ``d / <d>`` and a theory's reduced-size CDF."""
    d = np.asarray(diameters_nm, dtype=float)
    d = d[np.isfinite(d) & (d > 0)]
    if d.size == 0:
        return float("nan")
    rho = np.sort(d / d.mean())
    grid, cdf = _LSW_CDF if kind == "lsw" else _WAGNER_CDF
    f = np.interp(rho, grid, cdf, left=0.0, right=1.0)
    n = rho.size
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))


# --------------------------------------------------------------------------- distributions
def fit_size_distribution(
    diameters_nm: Sequence[float] | np.ndarray,
    *,
    max_components: int = 3,
    n_bootstrap: int = 100,
    groups: np.ndarray | None = None,
    seed: int = 0,
    min_particles: int = MIN_PARTICLES,
    n_init: int = 4,
    max_points: int = 20000,
) -> DistributionFit:
    """Fit normal, log-normal and mixture models to diameters; pick the families by BIC.

    Parameters
    ----------
    diameters_nm : array_like
        Particle diameters in nm (non-finite and non-positive values are ignored).
    max_components : int
        Largest number of families tried in the mixtures (>= 1).
    n_bootstrap : int
        Bootstrap resamples for the uncertainties of the reported models (the single
        normal and log-normal and the BIC-best mixture of each kind); 0 skips them (NaN).
    groups : ndarray, optional
        A track id per diameter: the bootstrap then resamples whole tracks, because one
        particle seen in many frames is not many independent draws.
    seed : int
        Seed of the EM starts and the bootstrap (results are reproducible).
    min_particles : int
        Fewer diameters than this give ``status="not enough data"``.
    n_init : int
        EM starts per mixture.
    max_points : int
        Larger samples are subsampled (seeded) to this many for speed.

    Returns
    -------
    DistributionFit
    """
    if max_components < 1:
        raise ValueError(f"max_components must be >= 1, got {max_components}")
    d = np.asarray(diameters_nm, dtype=float).ravel()
    keep = np.isfinite(d) & (d > 0)
    d = d[keep]
    g = None if groups is None else np.asarray(groups).ravel()[keep]
    n = int(d.size)
    if n < min_particles:
        return DistributionFit(status=NOT_ENOUGH_DATA, n=n)
    rng = np.random.default_rng(seed)
    if n > max_points:
        sel = rng.choice(n, max_points, replace=False)
        d = d[sel]
        g = None if g is None else g[sel]
        n = max_points
    logd = np.log(d)
    sum_logd = float(logd.sum())
    # variance floors (~2 % relative width): diameters from pixel areas are quantised,
    # and a component collapsing onto one value would have unbounded likelihood
    floor_lin = (0.02 * float(np.median(d))) ** 2
    floor_log = 0.02**2
    distinct = np.unique(d).size
    models: dict[str, ModelFit] = {}
    raw: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = {}
    for log_space, x, floor in ((False, d, floor_lin), (True, logd, floor_log)):
        base = "lognormal" if log_space else "normal"
        for k in range(1, max_components + 1):
            if 3 * k - 1 >= n or k > distinct:
                break
            w, mu, var, ll = _fit_mixture(x, k, rng, floor, n_init if k > 1 else 1)
            if log_space:
                ll -= sum_logd  # Jacobian: likelihood of d, comparable with linear models
            key = base if k == 1 else f"{base}_mixture_k{k}"
            p = 3 * k - 1
            models[key] = ModelFit(
                model=base if k == 1 else f"{base}_mixture",
                components=_components(w, mu, var, log_space, None),
                log_likelihood=float(ll),
                bic=float(p * math.log(n) - 2 * ll),
                n_params=p,
            )
            raw[key] = (w, mu, var, log_space)
    best = min(models, key=lambda key: models[key].bic)
    if n_bootstrap > 0:
        idx = _bootstrap_indices(n, n_bootstrap, rng, g)
        reported = {"normal", "lognormal", best}
        for fam in ("normal_mixture", "lognormal_mixture"):
            m = [key for key in models if key.startswith(fam)]
            if m:
                reported.add(min(m, key=lambda key: models[key].bic))
        for key in reported:
            w, mu, var, log_space = raw[key]
            x, floor = (logd, floor_log) if log_space else (d, floor_lin)
            boot = _bootstrap_mixture(x, w, mu, var, floor, idx)
            old = models[key]
            models[key] = ModelFit(
                old.model, _components(w, mu, var, log_space, boot), old.log_likelihood,
                old.bic, old.n_params,
            )
    return DistributionFit(
        status="ok",
        n=n,
        models=models,
        best=best,
        n_families=models[best].n_components,
        mean_nm=float(d.mean()),
        std_nm=float(d.std(ddof=1)),
        ks_lsw=ks_to_reduced(d, "lsw"),
        ks_wagner=ks_to_reduced(d, "wagner"),
    )


def model_pdf(fit: ModelFit, d_nm: np.ndarray) -> np.ndarray:
    """Probability density (per nm) of a fitted model at diameters ``d_nm``."""
    d = np.asarray(d_nm, dtype=float)
    out = np.zeros_like(d)
    log_space = fit.model.startswith("lognormal")
    for c in fit.components:
        if log_space:
            s = c.log_std
            with np.errstate(divide="ignore", invalid="ignore"):
                z = (np.log(d) - c.log_mean) / s
                pdf = np.where(d > 0, np.exp(-0.5 * z**2) / (d * s * math.sqrt(2 * math.pi)), 0.0)
        else:
            z = (d - c.mean_nm) / c.std_nm
            pdf = np.exp(-0.5 * z**2) / (c.std_nm * math.sqrt(2 * math.pi))
        out += c.weight * pdf
    return out


def _size_rows(particles: pd.DataFrame) -> pd.DataFrame:
    """Rows usable for size statistics: finite positive diameter, not cut by the border."""
    if particles is None or len(particles) == 0 or "diameter_nm" not in particles:
        return pd.DataFrame(columns=["frame", "time_s", "diameter_nm", "track_id"])
    p = particles
    ok = np.isfinite(p["diameter_nm"].to_numpy(float)) & (p["diameter_nm"].to_numpy(float) > 0)
    if "touches_edge" in p:
        ok &= ~_as_bool(p["touches_edge"])
    return p.loc[ok]


def _as_bool(s: pd.Series) -> np.ndarray:
    """Booleans from a CSV column that may read as bool, 0/1 or 'True'/'False'."""
    if pd.api.types.is_bool_dtype(s):
        return s.fillna(False).to_numpy(bool)
    if pd.api.types.is_numeric_dtype(s):
        return s.fillna(0).to_numpy().astype(bool)
    return s.astype(str).str.strip().str.lower().isin(("true", "1", "1.0", "yes")).to_numpy()


def size_distributions_table(
    particles: pd.DataFrame,
    *,
    window_frames: int | None = None,
    max_components: int = 3,
    n_bootstrap: int = 50,
    seed: int = 0,
    min_particles: int = MIN_PARTICLES,
) -> pd.DataFrame:
    """Fit size distributions per window of frames: the rows of ``distributions.csv``.

    Parameters
    ----------
    particles : DataFrame
        particles.csv rows (``frame``, ``time_s``, ``diameter_nm``, ``touches_edge``,
        optionally ``track_id``).
    window_frames : int, optional
        Frames per window (consecutive, by frame number). Default: the run is cut into
        about 10 windows.
    max_components, n_bootstrap, seed, min_particles
        As in :func:`fit_size_distribution`.

    Returns
    -------
    DataFrame
        One row per window x model x component (columns :data:`DISTRIBUTION_COLUMNS`).
        With track ids, each particle counts once per window (its mean diameter there):
        ``n`` is the number of rows (observations) in the window, ``n_tracks`` the number
        of particles fitted (0 without track ids: then every row is fitted);
        the models are ``normal``, ``lognormal`` and the BIC-best ``normal_mixture`` and
        ``lognormal_mixture``; ``selected`` marks the overall BIC-best. A window with too
        few particles has one row with ``model="none"`` and ``status="not enough data"``.
    """
    rows = _size_rows(particles)
    if len(rows) == 0:
        return pd.DataFrame(columns=list(DISTRIBUTION_COLUMNS))
    frames = rows["frame"].to_numpy(np.int64)
    f0, f1 = int(frames.min()), int(frames.max())
    if window_frames is None:
        window_frames = max(1, math.ceil((f1 - f0 + 1) / 10))
    if window_frames < 1:
        raise ValueError(f"window_frames must be >= 1, got {window_frames}")
    win = (frames - f0) // window_frames
    times = rows["time_s"].to_numpy(float) if "time_s" in rows else frames.astype(float)
    diam = rows["diameter_nm"].to_numpy(float)
    tid = rows["track_id"].to_numpy() if "track_id" in rows else None
    if tid is not None and (pd.isna(tid).any() or (tid.astype(float) < 0).any()):
        tid = None
    out: list[dict[str, Any]] = []
    for w_i in np.unique(win):  # one fit per window (a handful), not per particle
        m = win == w_i
        d_w = diam[m]
        n_obs = int(m.sum())
        if tid is not None:
            # one value per particle (its mean diameter in the window): the same particle
            # seen in many frames is one draw, not many (else BIC finds spurious families)
            d_w = pd.Series(d_w).groupby(tid[m]).mean().to_numpy()
        fit = fit_size_distribution(
            d_w,
            max_components=max_components,
            n_bootstrap=n_bootstrap,
            seed=seed,
            min_particles=min_particles,
        )
        base = {
            "window_start_frame": f0 + int(w_i) * window_frames,
            "window_end_frame": f0 + (int(w_i) + 1) * window_frames - 1,
            "window_start_time_s": float(times[m].min()),
            "window_end_time_s": float(times[m].max()),
            "n": n_obs,
            "n_tracks": d_w.size if tid is not None else 0,
            "ks_lsw": fit.ks_lsw,
            "ks_wagner": fit.ks_wagner,
            "status": fit.status,
        }
        out.extend(_fit_rows(fit, base))
    return pd.DataFrame(out, columns=list(DISTRIBUTION_COLUMNS))


def _fit_rows(fit: DistributionFit, base: Mapping[str, Any]) -> list[dict[str, Any]]:
    if fit.status != "ok":
        return [{**base, "model": "none", "n_components": 0, "component": 0, "selected": False}]
    keys = ["normal", "lognormal"]
    for fam in ("normal_mixture", "lognormal_mixture"):
        best = fit.best_of(fam)
        if best is not None:
            keys.append(next(k for k, v in fit.models.items() if v is best))
    rows = []
    for key in keys:
        mf = fit.models[key]
        for j, c in enumerate(mf.components):
            rows.append(
                {
                    **base,
                    "model": mf.model,
                    "n_components": mf.n_components,
                    "component": j,
                    "weight": c.weight,
                    "weight_err": c.weight_err,
                    "mean_nm": c.mean_nm,
                    "mean_err_nm": c.mean_err_nm,
                    "std_nm": c.std_nm,
                    "std_err_nm": c.std_err_nm,
                    "log_mean": c.log_mean,
                    "log_std": c.log_std,
                    "log_likelihood": mf.log_likelihood,
                    "bic": mf.bic,
                    "selected": key == fit.best,
                }
            )
    return rows


# --------------------------------------------------------------------------- kinetics
def _fit_fixed_n(
    tau: np.ndarray, u: np.ndarray, wts: np.ndarray, n: float
) -> tuple[float, float, float]:
    """Least-squares (u0, kappa, rss) of ``u = (u0^n + kappa tau)^(1/n)`` (scaled units)."""
    from scipy.optimize import least_squares

    # linear start: u^n is linear in tau
    a, kappa = np.polynomial.polynomial.polyfit(tau, u**n, 1, w=wts)
    u0 = max(a, 1e-6) ** (1.0 / n)

    def resid(p):
        base = np.maximum(p[0] ** n + p[1] * tau, 1e-12)
        return (base ** (1.0 / n) - u) * wts

    sol = least_squares(resid, x0=[u0, kappa], method="lm", xtol=1e-10, ftol=1e-12)
    return float(sol.x[0]), float(sol.x[1]), float(np.sum(sol.fun**2))


def fit_coarsening_kinetics(
    time_s: Sequence[float] | np.ndarray,
    mean_radius_nm: Sequence[float] | np.ndarray,
    *,
    sigma_nm: Sequence[float] | np.ndarray | None = None,
    n_range: tuple[float, float] = (1.0, 6.0),
    n_step: float = 0.05,
    min_points: int = MIN_TIME_POINTS,
) -> KineticsFit:
    """Fit ``<r>^n - <r0>^n = k (t - t0)`` to the mean radius over time.

    Parameters
    ----------
    time_s : array_like
        Times (s, or frames when the frame interval is unknown: ``k`` is then per frame).
    mean_radius_nm : array_like
        Mean particle radius at each time, in nm.
    sigma_nm : array_like, optional
        1-sigma uncertainty of each mean (e.g. std / sqrt(count)); weights the fit.
    n_range : (float, float)
        Range of exponents searched.
    n_step : float
        Grid step of the profile in ``n`` (refined around the minimum).
    min_points : int
        Fewer valid time points give ``status="not enough data"``.

    Returns
    -------
    KineticsFit
        ``n`` with its 95 % profile-likelihood interval and the mechanism it points to:
        diffusion-limited ripening when ``|n - 3| <= 0.5`` and the interval excludes 2,
        interface-limited when ``|n - 2| <= 0.5`` and it excludes 3, else undetermined.
    """
    from scipy.optimize import minimize_scalar

    t = np.asarray(time_s, dtype=float).ravel()
    r = np.asarray(mean_radius_nm, dtype=float).ravel()
    if t.shape != r.shape:
        raise ValueError(f"time_s and mean_radius_nm differ in length: {t.size} vs {r.size}")
    s = np.ones_like(r) if sigma_nm is None else np.asarray(sigma_nm, dtype=float).ravel()
    ok = np.isfinite(t) & np.isfinite(r) & (r > 0) & np.isfinite(s) & (s > 0)
    t, r, s = t[ok], r[ok], s[ok]
    order = np.argsort(t)
    t, r, s = t[order], r[order], s[order]
    if t.size < min_points or np.ptp(t) <= 0:
        return KineticsFit(status=NOT_ENOUGH_DATA, n_points=int(t.size))
    # scale to O(1) numbers: u = r / r_ref, tau = (t - t0) / T
    t0 = float(t[0])
    span = float(t[-1] - t0)
    r_ref = float(np.median(r))
    tau, u = (t - t0) / span, r / r_ref
    wts = np.median(s) / s
    rel_change = abs(np.polyfit(tau, u, 1)[0])  # fractional change over the run
    noise = np.std(np.diff(u)) / math.sqrt(2) if u.size > 2 else 0.0
    if rel_change < max(0.01, 2 * noise):
        return KineticsFit(status="no coarsening", n_points=int(t.size), t0=t0,
                           r0_nm=float(r[0]))
    grid = np.arange(n_range[0], n_range[1] + 1e-9, n_step)
    rss = np.array([_fit_fixed_n(tau, u, wts, n)[2] for n in grid])
    i = int(np.argmin(rss))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    if hi > lo:
        res = minimize_scalar(
            lambda n: _fit_fixed_n(tau, u, wts, n)[2], bounds=(lo, hi), method="bounded",
            options={"xatol": 1e-4},
        )
        n_hat = float(res.x) if res.fun <= rss[i] else float(grid[i])
    else:
        n_hat = float(grid[i])
    u0, kappa, rss_min = _fit_fixed_n(tau, u, wts, n_hat)
    npts = t.size
    # profile likelihood (Gaussian errors, sigma profiled out)
    stat = npts * np.log(np.maximum(rss, 1e-300) / max(rss_min, 1e-300))
    ci_lo, ci_hi = _profile_interval(grid, stat, n_hat)
    mechanism = _mechanism(n_hat, ci_lo, ci_hi)
    return KineticsFit(
        status="ok",
        n=n_hat,
        n_ci_low=ci_lo,
        n_ci_high=ci_hi,
        k=float(kappa * r_ref**n_hat / span),
        r0_nm=float(u0 * r_ref),
        t0=t0,
        mechanism=mechanism,
        rss_nm2=float(rss_min * r_ref**2 / np.mean(wts**2)),
        n_points=int(npts),
        profile_n=tuple(float(v) for v in grid),
        profile_rss=tuple(float(v) * r_ref**2 for v in rss),
    )


def _profile_interval(grid: np.ndarray, stat: np.ndarray, n_hat: float) -> tuple[float, float]:
    """Where the profile statistic crosses the chi2(1) 95 % level on each side of ``n_hat``
    (linear interpolation between grid points); NaN when it never does (open interval)."""
    i = int(np.searchsorted(grid, n_hat))
    # the best fit itself is a point of the profile (statistic 0)
    g = np.insert(grid, i, n_hat)
    st = np.insert(stat, i, 0.0)
    out = []
    for step in (-1, 1):
        k = i
        while 0 <= k + step < g.size and st[k + step] <= _CHI2_1_95:
            k += step
        j = k + step
        if not 0 <= j < g.size:  # still inside at the end of the searched range
            out.append(float("nan"))
            continue
        frac = (_CHI2_1_95 - st[k]) / (st[j] - st[k])
        out.append(float(g[k] + frac * (g[j] - g[k])))
    return out[0], out[1]


def _mechanism(n: float, lo: float, hi: float) -> str:
    lo_ = -np.inf if math.isnan(lo) else lo
    hi_ = np.inf if math.isnan(hi) else hi
    if abs(n - 3) <= 0.5 and not (lo_ <= 2 <= hi_):
        return "diffusion-limited ripening (n~3)"
    if abs(n - 2) <= 0.5 and not (lo_ <= 3 <= hi_):
        return "interface-limited ripening (n~2)"
    return "undetermined"


def mean_radius_series(particles: pd.DataFrame) -> pd.DataFrame:
    """Per frame: ``frame``, ``time_s``, ``count`` (all), ``n_sized`` (not at the border),
    ``mean_radius_nm``, ``std_radius_nm`` and ``sem_radius_nm`` (std / sqrt(n))."""
    cols = ["frame", "time_s", "count", "n_sized", "mean_radius_nm", "std_radius_nm",
            "sem_radius_nm"]
    if particles is None or len(particles) == 0:
        return pd.DataFrame(columns=cols)
    count = particles.groupby("frame").size().rename("count")
    rows = _size_rows(particles)
    r = (rows["diameter_nm"] / 2).groupby(rows["frame"])
    agg = pd.DataFrame({"n_sized": r.size(), "mean_radius_nm": r.mean(), "std_radius_nm": r.std()})
    t = particles.groupby("frame")["time_s"].first() if "time_s" in particles else None
    out = pd.concat([count, agg], axis=1)
    out["n_sized"] = out["n_sized"].fillna(0).astype(int)
    out["time_s"] = t if t is not None else out.index.astype(float)
    out["sem_radius_nm"] = out["std_radius_nm"] / np.sqrt(out["n_sized"].clip(lower=1))
    out = out.reset_index().rename(columns={"index": "frame"})
    return out[cols]


def growth_rate_vs_size(
    particles: pd.DataFrame,
    *,
    segment_frames: int = 10,
    min_points: int = 5,
    weight_power: float = 2.0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-particle growth rate ``dr/dt`` against radius ``r`` from track segments.

    Each track is cut into segments of ``segment_frames`` frames; a straight line fitted
    to ``r(t)`` in each segment (``min_points`` or more rows) gives one point
    (``r_nm`` = mean radius, ``drdt_nm_per_s`` = slope). All segments are fitted at
    once from grouped sums (no per-track Python loop).

    The critical radius ``r*`` (where ``dr/dt`` changes sign: smaller particles shrink,
    larger grow) comes from a straight-line fit of ``r^p dr/dt`` against ``r``
    (``p = weight_power``; LSW diffusion-limited ripening gives ``r^2 dr/dt = K (r/r* - 1)``,
    interface-limited ``r dr/dt = K (r/r* - 1)``), ``r* = -intercept / slope``.

    Returns
    -------
    points : DataFrame
        ``track_id``, ``segment``, ``n``, ``r_nm``, ``drdt_nm_per_s``.
    summary : dict
        ``status``, ``critical_radius_nm``, ``mean_radius_nm``, ``critical_over_mean``,
        ``fraction_shrinking``, ``n_segments``, ``weight_power``.
    """
    cols = ["track_id", "segment", "n", "r_nm", "drdt_nm_per_s"]
    empty = pd.DataFrame(columns=cols)
    summary: dict[str, Any] = {"status": NOT_ENOUGH_DATA, "n_segments": 0,
                               "weight_power": weight_power}
    rows = _size_rows(particles)
    if len(rows) == 0 or "track_id" not in rows:
        return empty, summary
    rows = rows.loc[rows["track_id"].notna() & (rows["track_id"].astype(float) >= 0)]
    if len(rows) == 0:
        return empty, summary
    tid = rows["track_id"].to_numpy(np.int64)
    frame = rows["frame"].to_numpy(np.int64)
    first = pd.Series(frame).groupby(tid).transform("min").to_numpy()
    seg = (frame - first) // segment_frames
    t = rows["time_s"].to_numpy(float) if "time_s" in rows else frame.astype(float)
    r = rows["diameter_nm"].to_numpy(float) / 2
    df = pd.DataFrame({"track_id": tid, "segment": seg, "t": t, "r": r})
    g = df.groupby(["track_id", "segment"])
    mt, mr = g["t"].transform("mean"), g["r"].transform("mean")
    df["tt"] = (df["t"] - mt) ** 2
    df["tr"] = (df["t"] - mt) * (df["r"] - mr)
    agg = df.groupby(["track_id", "segment"]).agg(
        n=("t", "size"), r_nm=("r", "mean"), stt=("tt", "sum"), str_=("tr", "sum")
    )
    agg = agg.loc[(agg["n"] >= min_points) & (agg["stt"] > 0)]
    agg["drdt_nm_per_s"] = agg["str_"] / agg["stt"]
    points = agg.reset_index()[cols]
    summary["n_segments"] = int(len(points))
    if len(points) < 10:
        return points, summary
    x = points["r_nm"].to_numpy(float)
    y = x**weight_power * points["drdt_nm_per_s"].to_numpy(float)
    slope, intercept = np.polyfit(x, y, 1)
    r_star = -intercept / slope if slope > 0 else float("nan")
    mean_r = float(rows["diameter_nm"].mean() / 2)
    ok = math.isfinite(r_star) and x.min() * 0.5 < r_star < x.max() * 2
    summary.update(
        status="ok" if ok else "no sign change",
        critical_radius_nm=float(r_star) if ok else float("nan"),
        mean_radius_nm=mean_r,
        critical_over_mean=float(r_star / mean_r) if ok else float("nan"),
        fraction_shrinking=float(np.mean(points["drdt_nm_per_s"] < 0)),
        fit_slope=float(slope),
        fit_intercept=float(intercept),
    )
    return points, summary


def merge_rate(
    events: pd.DataFrame | None,
    series: pd.DataFrame,
    *,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Merge (coalescence) events per time unit, and per particle, in ``n_bins`` time bins.

    ``series`` is :func:`mean_radius_series` output (gives frame -> time and counts).
    """
    out: dict[str, Any] = {"total_merges": 0, "total_vanish": 0, "time": [], "merges_per_time": [],
                           "merges_per_particle_per_time": []}
    if events is None or len(events) == 0 or len(series) < 2 or "kind" not in events:
        return out
    kind = events["kind"].astype(str)
    out["total_merges"] = int((kind == "merge").sum())
    out["total_vanish"] = int((kind == "vanish").sum())
    frame_t = pd.Series(series["time_s"].to_numpy(float), index=series["frame"].to_numpy())
    mf = events.loc[kind == "merge", "frame"].to_numpy(np.int64)
    t_all = series["time_s"].to_numpy(float)
    edges = np.linspace(t_all.min(), t_all.max(), min(n_bins, len(series)) + 1)
    t_merge = frame_t.reindex(mf).to_numpy(float)
    t_merge = t_merge[np.isfinite(t_merge)]
    counts, _ = np.histogram(t_merge, bins=edges)
    width = np.diff(edges)
    mean_count, _ = np.histogram(t_all, bins=edges, weights=series["count"].to_numpy(float))
    n_frames_bin, _ = np.histogram(t_all, bins=edges)
    mean_count = mean_count / np.maximum(n_frames_bin, 1)
    rate = counts / np.where(width > 0, width, np.nan)
    out["time"] = (0.5 * (edges[1:] + edges[:-1])).tolist()
    out["merges_per_time"] = rate.tolist()
    out["merges_per_particle_per_time"] = (rate / np.where(mean_count > 0, mean_count, np.nan)).tolist()
    dis = out["total_merges"] + out["total_vanish"]
    out["merge_fraction_of_disappearances"] = out["total_merges"] / dis if dis else None
    return out


# --------------------------------------------------------------------------- live
@dataclass(frozen=True, slots=True)
class LiveResult:
    """What :class:`LiveAnalysis` returns after a refit."""

    frame: int
    distribution: DistributionFit
    kinetics: KineticsFit


class LiveAnalysis:
    """Incremental analysis fed one frame at a time; refits every N frames.

    Keeps per frame only the kept diameters and track ids (small arrays) and the mean
    radius, so an update costs O(particles in the frame); a refit costs one distribution
    fit on the last ``window_frames`` frames (each tracked particle once) plus one
    kinetics fit on the mean-radius series.

    Parameters
    ----------
    update_every_n_frames : int
        Refit after this many new frames.
    window_frames : int
        Frames pooled for the live size distribution.
    max_components, n_bootstrap : int
        As in :func:`fit_size_distribution` (bootstrap is off by default live: cheap).
    """

    def __init__(
        self,
        update_every_n_frames: int = 25,
        *,
        window_frames: int = 25,
        max_components: int = 3,
        n_bootstrap: int = 0,
    ) -> None:
        if update_every_n_frames < 1 or window_frames < 1:
            raise ValueError("update_every_n_frames and window_frames must be >= 1")
        self.update_every_n_frames = update_every_n_frames
        self.window_frames = window_frames
        self.max_components = max_components
        self.n_bootstrap = n_bootstrap
        self._diam: list[np.ndarray] = []
        self._tid: list[np.ndarray] = []
        self._t: list[float] = []
        self._r: list[float] = []
        self._sem: list[float] = []
        self._since = 0
        self.latest: LiveResult | None = None

    def update(self, particles: pd.DataFrame, *, time_s: float | None = None) -> LiveResult | None:
        """Add one frame's particle rows; return a :class:`LiveResult` when it refits."""
        rows = _size_rows(particles)
        d = rows["diameter_nm"].to_numpy(float) if len(rows) else np.empty(0)
        tid = (rows["track_id"].to_numpy(float) if len(rows) and "track_id" in rows
               else np.full(d.size, np.nan))
        if time_s is None:
            time_s = float(particles["time_s"].iloc[0]) if len(particles) else (
                self._t[-1] + 1.0 if self._t else 0.0)
        self._diam.append(d)
        self._tid.append(tid)
        if len(self._diam) > self.window_frames:
            self._diam.pop(0)
            self._tid.pop(0)
        self._t.append(float(time_s))
        self._r.append(float(d.mean() / 2) if d.size else float("nan"))
        self._sem.append(float(d.std() / 2 / math.sqrt(d.size)) if d.size > 1 else float("nan"))
        self._since += 1
        if self._since < self.update_every_n_frames:
            return None
        return self.refit(frame=int(particles["frame"].iloc[0]) if len(particles) else -1)

    def refit(self, *, frame: int = -1) -> LiveResult:
        """Refit now on what has been fed."""
        self._since = 0
        d = np.concatenate(self._diam) if self._diam else np.empty(0)
        tid = np.concatenate(self._tid) if self._tid else np.empty(0)
        tracked = np.isfinite(tid) & (tid >= 0)
        if tracked.any():
            # each tracked particle once (its mean diameter over the window), as offline
            per_track = pd.Series(d[tracked]).groupby(tid[tracked]).mean().to_numpy()
            d = np.concatenate([per_track, d[~tracked]])
        dist = fit_size_distribution(
            d,
            max_components=self.max_components,
            n_bootstrap=self.n_bootstrap,
        )
        sem = np.asarray(self._sem)
        sem = np.where(np.isfinite(sem) & (sem > 0), sem, np.nanmedian(sem) if np.isfinite(sem).any() else 1.0)
        kin = fit_coarsening_kinetics(self._t, self._r, sigma_nm=sem, n_step=0.1)
        self.latest = LiveResult(frame=frame, distribution=dist, kinetics=kin)
        return self.latest


# --------------------------------------------------------------------------- output folder
def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None


def read_summary(out_dir: str | Path) -> dict[str, Any]:
    """summary.json of a run as a dict ({} when missing or unreadable)."""
    p = Path(out_dir) / "summary.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def _json_clean(obj: Any) -> Any:
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Mapping):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_json_clean(v) for v in obj]
    return obj


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def kinetics_summary(
    particles: pd.DataFrame | None,
    events: pd.DataFrame | None,
    *,
    time_unit: str = "s",
    field_area_nm2: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """All kinetics of a run: returns (JSON-ready dict, dict of arrays/objects for plots)."""
    series = mean_radius_series(particles if particles is not None else pd.DataFrame())
    has = series.dropna(subset=["mean_radius_nm"])
    sem = has["sem_radius_nm"].to_numpy(float)
    if sem.size and np.isfinite(sem).any():
        sem = np.where(np.isfinite(sem) & (sem > 0), sem, np.nanmedian(sem))
    else:
        sem = None
    kin = fit_coarsening_kinetics(
        has["time_s"].to_numpy(float), has["mean_radius_nm"].to_numpy(float), sigma_nm=sem
    )
    power = 1.0 if kin.mechanism.startswith("interface") else 2.0
    pts, grow = growth_rate_vs_size(particles if particles is not None else pd.DataFrame(),
                                    weight_power=power)
    per = "frame" if time_unit == "frame" else "s"
    dens: dict[str, Any] = {
        "time": series["time_s"].tolist(),
        "count": series["count"].tolist(),
        "per_um2": (series["count"] / (field_area_nm2 / 1e6)).tolist() if field_area_nm2 else None,
    }
    notes = []
    if time_unit == "frame":
        notes.append("no frame interval known: times are frame numbers and rates are per frame")
    out = {
        "time_unit": time_unit,
        "notes": notes,
        "coarsening": {
            **{k: v for k, v in kin.to_dict().items() if k not in ("profile_n", "profile_rss")},
            "model": "<r>^n - <r0>^n = k (t - t0)",
            "k_unit": f"nm^n/{per}",
            "ci": "95 % profile likelihood; null = open (reaches the searched range 1..6)",
        },
        "number_density": dens,
        "merge_rate": merge_rate(events, series),
        "growth_rate_vs_size": {**grow, "drdt_unit": f"nm/{per}"},
    }
    for k in ("merge_rate",):
        out[k]["rate_unit"] = f"1/{per}"
    return _json_clean(out), {"series": series, "kinetics": kin, "growth_points": pts,
                              "growth": grow}


def analyze_output(
    out_dir: str | Path,
    *,
    window_frames: int | None = None,
    max_components: int = 3,
    n_bootstrap: int = 50,
    plots: bool = True,
) -> dict[str, Any]:
    """Analyse an output folder: write ``distributions.csv``, ``kinetics.json`` and PNGs.

    Works on a finished or a still-growing folder; missing or empty tables give
    "not enough data" entries rather than errors.

    Returns
    -------
    dict
        ``distributions`` (DataFrame), ``kinetics`` (the kinetics.json dict),
        ``final_fit`` (:class:`DistributionFit` of the last window), ``plots``
        (name -> Path), ``time_unit``, ``summary`` (summary.json), plus ``series``
        (per-frame mean radius) and ``growth_points`` for reuse by the report.
    """
    from .errors import InputError

    out = Path(out_dir)
    if not out.is_dir():
        raise InputError(f"output folder not found: {out} (run `etemlive analyze` first)")
    summary = read_summary(out)
    particles = _read_csv(out / "particles.csv")
    events = _read_csv(out / "events.csv")
    time_unit = "frame" if summary.get("frame_interval_s") in (None, 0) else "s"
    if summary.get("time_unit") in ("s", "frame"):
        time_unit = summary["time_unit"]
    elif "frame_interval_s" not in summary and particles is not None and len(particles):
        # no summary: infer from the times themselves (frame numbers == times)
        same = np.allclose(particles["time_s"].to_numpy(float), particles["frame"].to_numpy(float))
        time_unit = "frame" if same else "s"
    field_area = _field_area_nm2(summary)
    dist = size_distributions_table(
        particles if particles is not None else pd.DataFrame(),
        window_frames=window_frames,
        max_components=max_components,
        n_bootstrap=n_bootstrap,
    )
    _write_atomic(out / "distributions.csv", dist.to_csv(index=False))
    kin_json, extra = kinetics_summary(particles, events, time_unit=time_unit,
                                       field_area_nm2=field_area)
    _write_atomic(out / "kinetics.json", json.dumps(kin_json, indent=2))
    # the last window's full fit, for the histogram plot
    rows = _size_rows(particles if particles is not None else pd.DataFrame())
    if len(rows) and len(dist):
        last = dist.iloc[-1]
        m = (rows["frame"] >= last["window_start_frame"]) & (rows["frame"] <= last["window_end_frame"])
        last_rows = rows.loc[m]
    else:
        last_rows = rows
    last_d = last_rows["diameter_nm"].to_numpy(float)
    if "track_id" in last_rows and len(last_rows) and (last_rows["track_id"].notna().all()):
        last_d = last_rows.groupby("track_id")["diameter_nm"].mean().to_numpy(float)
    final_fit = fit_size_distribution(last_d, n_bootstrap=0, max_components=max_components)
    result: dict[str, Any] = {
        "distributions": dist,
        "kinetics": kin_json,
        "final_fit": final_fit,
        "final_diameters_nm": last_d,
        "time_unit": time_unit,
        "summary": summary,
        "series": extra["series"],
        "growth_points": extra["growth_points"],
        "kinetics_fit": extra["kinetics"],
        "plots": {},
    }
    if plots:
        result["plots"] = write_plots(out, result, particles)
    return result


def _field_area_nm2(summary: Mapping[str, Any]) -> float | None:
    """Field of view in nm^2 from summary.json (``image_shape`` / ``shape`` and pixel size)."""
    px = summary.get("pixel_size_nm")
    shape = summary.get("image_shape") or summary.get("shape") or summary.get("frame_shape")
    try:
        if px and shape and len(shape) >= 2:
            return float(shape[-2]) * float(shape[-1]) * float(px) ** 2
    except (TypeError, ValueError):
        pass
    return None


def write_report(out_dir: str | Path) -> Path:
    """Write ``report.html`` of a run (see :func:`etemlive.report.write_report`)."""
    from .report import write_report as _write_report

    return _write_report(out_dir)


# --------------------------------------------------------------------------- plots
def _figure(width_in: float = 6.0, height_in: float = 3.6):
    """A matplotlib Figure on the Agg canvas (no pyplot: thread-safe, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}: {NOT_ENOUGH_DATA}", ha="center", va="center",
            transform=ax.transAxes, color="0.4")


def write_plots(
    out_dir: str | Path, result: Mapping[str, Any], particles: pd.DataFrame | None
) -> dict[str, Path]:
    """Write the PNG plots of :func:`analyze_output` into ``out_dir``; name -> path."""
    out = Path(out_dir)
    unit = result["time_unit"]
    tlabel = "time (frames)" if unit == "frame" else "time (s)"
    series: pd.DataFrame = result["series"]
    paths: dict[str, Path] = {}

    def save(fig, name):
        path = out / f"{name}.png"
        fig.savefig(path)
        paths[name] = path

    # count vs time
    fig = _figure()
    ax = fig.add_subplot()
    if len(series):
        ax.plot(series["time_s"], series["count"], color="C0", lw=1.2, label="all particles")
        ax.plot(series["time_s"], series["n_sized"], color="C1", lw=1.0, ls="--",
                label="sized (not at the border)")
        ax.legend(frameon=False, fontsize=8)
    else:
        _no_data(ax, "particle count")
    ax.set(xlabel=tlabel, ylabel="particles per frame", title="Particle count")
    save(fig, "count_vs_time")

    # mean size vs time with +-1 std band
    fig = _figure()
    ax = fig.add_subplot()
    s = series.dropna(subset=["mean_radius_nm"]) if len(series) else series
    if len(s):
        t = s["time_s"].to_numpy(float)
        m = 2 * s["mean_radius_nm"].to_numpy(float)
        sd = 2 * s["std_radius_nm"].fillna(0).to_numpy(float)
        ax.fill_between(t, m - sd, m + sd, color="C0", alpha=0.25, lw=0, label="+-1 std")
        ax.plot(t, m, color="C0", lw=1.2, label="mean diameter")
        ax.legend(frameon=False, fontsize=8)
    else:
        _no_data(ax, "mean size")
    ax.set(xlabel=tlabel, ylabel="diameter (nm)", title="Mean particle size")
    save(fig, "mean_size_vs_time")

    # size histogram with fits
    fig = _figure()
    ax = fig.add_subplot()
    fit: DistributionFit = result["final_fit"]
    d = np.asarray(result["final_diameters_nm"], float)
    if fit.status == "ok":
        ax.hist(d, bins="auto", density=True, color="0.8", edgecolor="0.6", label=f"n = {d.size}")
        grid = np.linspace(max(d.min() * 0.8, 1e-3), d.max() * 1.15, 400)
        for key, style in (("normal", ":"), ("lognormal", "--")):
            if key in fit.models:
                ax.plot(grid, model_pdf(fit.models[key], grid), ls=style, lw=1.2,
                        label=f"{key} (BIC {fit.models[key].bic:.0f})")
        best = fit.best_fit
        if best is not None and fit.best not in ("normal", "lognormal"):
            ax.plot(grid, model_pdf(best, grid), color="C3", lw=1.8,
                    label=f"{best.model}, {best.n_components} families (BIC {best.bic:.0f})")
        ax.legend(frameon=False, fontsize=7)
    else:
        _no_data(ax, "size distribution")
    ax.set(xlabel="diameter (nm)", ylabel="density (1/nm)",
           title="Size distribution (last window, best fit by BIC)")
    save(fig, "size_histogram")

    # reduced size rho = r / <r> against the LSW (n = 3) and Wagner (n = 2) curves
    fig = _figure()
    ax = fig.add_subplot()
    if fit.status == "ok":
        rho = d / d.mean()
        ax.hist(rho, bins=np.linspace(0, max(2.4, float(rho.max()) * 1.05), 31), density=True,
                color="0.8", edgecolor="0.6", label=f"measured, n = {d.size}")
        grid = np.linspace(0, 2.4, 400)
        ax.plot(grid, reduced_size_pdf(grid, "lsw"), color="C3", lw=1.6,
                label=f"LSW, n = 3 (KS {fit.ks_lsw:.2f})")
        ax.plot(grid, reduced_size_pdf(grid, "wagner"), color="C0", lw=1.6, ls="--",
                label=f"Wagner, n = 2 (KS {fit.ks_wagner:.2f})")
        ax.legend(frameon=False, fontsize=7)
    else:
        _no_data(ax, "reduced size distribution")
    ax.set(xlabel="rho = r / <r>", ylabel="density",
           title="Reduced size distribution vs ripening theory (last window)")
    save(fig, "reduced_size_lsw")

    # growth curves of the longest tracks
    fig = _figure()
    ax = fig.add_subplot()
    rows = _size_rows(particles if particles is not None else pd.DataFrame())
    if len(rows) and "track_id" in rows and rows["track_id"].notna().any():
        longest = rows["track_id"].value_counts().head(8).index
        for tid_, g in rows.loc[rows["track_id"].isin(longest)].groupby("track_id"):
            ax.plot(g["time_s"], g["diameter_nm"], lw=1.0, label=f"track {int(tid_)}")
        ax.legend(frameon=False, fontsize=7, ncol=2)
    else:
        _no_data(ax, "growth curves")
    ax.set(xlabel=tlabel, ylabel="diameter (nm)", title="Growth curves of the longest tracks")
    save(fig, "growth_curves")

    # kinetics fit: <r>(t) with the fit, and the profile of n
    fig = _figure(8.0, 3.6)
    ax, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    kin: KineticsFit = result["kinetics_fit"]
    if len(s):
        ax.plot(s["time_s"], s["mean_radius_nm"], ".", ms=3, color="0.4", label="<r> per frame")
    if kin.status == "ok":
        tt = np.linspace(float(s["time_s"].min()), float(s["time_s"].max()), 300)
        ax.plot(tt, kin.predict(tt), color="C3", lw=1.6,
                label=f"n = {kin.n:.2f}, {kin.mechanism}")
        ax2.plot(kin.profile_n, np.asarray(kin.profile_rss), color="C0")
        ax2.axvline(kin.n, color="C3", lw=1)
        for v in (kin.n_ci_low, kin.n_ci_high):
            if math.isfinite(v):
                ax2.axvline(v, color="C3", lw=0.8, ls="--")
        ax2.set_yscale("log")
    else:
        _no_data(ax2, f"kinetics ({kin.status})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, fontsize=7)
    ax.set(xlabel=tlabel, ylabel="mean radius (nm)", title="<r>^n - <r0>^n = k t")
    ax2.set(xlabel="exponent n", ylabel="RSS (nm^2)", title="profile (95 % CI dashed)")
    save(fig, "kinetics_fit")

    # dr/dt vs r
    fig = _figure()
    ax = fig.add_subplot()
    pts: pd.DataFrame = result["growth_points"]
    grow = result["kinetics"].get("growth_rate_vs_size", {})
    if len(pts):
        shown = pts.sample(4000, random_state=0) if len(pts) > 4000 else pts  # drawing time
        ax.plot(shown["r_nm"], shown["drdt_nm_per_s"], ".", ms=3, alpha=0.5, color="0.4",
                label="track segments")
        x = pts["r_nm"].to_numpy(float)
        if x.size >= 20:
            edges = np.unique(np.quantile(x, np.linspace(0, 1, 13)))
            idx = np.clip(np.digitize(x, edges) - 1, 0, edges.size - 2)
            med = pd.Series(pts["drdt_nm_per_s"].to_numpy(float)).groupby(idx).median()
            ax.plot(0.5 * (edges[med.index] + edges[med.index + 1]), med.to_numpy(), "o-",
                    color="C0", label="binned median")
        ax.axhline(0, color="k", lw=0.6)
        rc = grow.get("critical_radius_nm")
        if rc is not None and math.isfinite(rc):
            ax.axvline(rc, color="C3", ls="--", label=f"r* = {rc:.2f} nm")
        ax.legend(frameon=False, fontsize=7)
    else:
        _no_data(ax, "growth rate vs size")
    ax.set(xlabel="radius r (nm)", ylabel=f"dr/dt (nm/{'frame' if unit == 'frame' else 's'})",
           title="Growth rate vs size (ripening: small shrink, large grow)")
    save(fig, "growth_rate_vs_size")
    return paths
