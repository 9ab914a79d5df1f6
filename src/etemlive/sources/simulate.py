"""Physics-based synthetic in-situ TEM movies with exact ground truth.

Image formation (mass-thickness contrast)
    Every particle is a 3-D solid (sphere, ellipsoid, rod = spherocylinder, cube,
    octahedron, hexagonal or triangular plate) lying on an amorphous-carbon film.
    Its projected thickness ``t(x, y)`` (nm) is evaluated in its own bounding box,
    supersampled (3 x 3 sub-pixels, the middle one at the pixel centre) so the
    rendered area matches the true projected area. Bright field: counts =
    dose * illumination * exp(-t_particle / mfp_particle - t_carbon / mfp_carbon
    - t_liquid / mfp_liquid) (particles dark). Dark field / HAADF: counts = dose *
    illumination * (floor + 1 - exp(-(t_particle / mfp + 0.15 * support terms)))
    (particles bright). The carbon film is a band-limited random thickness field that
    drifts with the sample; the illumination gradient and the liquid-cell bulge stay
    with the detector. A Gaussian detector PSF blurs the expected image, then Poisson
    shot noise at ``dose_e_per_px`` gives integer counts (uint16).

Dynamics (volume is what is conserved)
    Ostwald ripening after Lifshitz-Slyozov-Wagner: ``dr/dt = k / r^(n-2) * (1/r_c -
    1/r)`` with ``r_c`` chosen at every sub-step so total volume is conserved
    (``n = 3`` diffusion-limited, ``n = 2`` interface-limited); radii start from the
    LSW self-similar distribution of that ``n`` so ``<r>^n - <r0>^n = K t`` holds from
    the first frame, with ``K`` reported in :attr:`Simulation.metadata`. Particles
    whose radius falls under ``vanish_radius_px`` vanish (their residue is returned to
    the others). Growth by monomer attachment, nucleation at a decaying rate,
    Brownian translation (Stokes-Einstein: ``D ~ 1/r``) and rotation, constant
    approach velocities (coalescence scenario), stage drift. Two touching particles
    first form a neck over ``neck_duration_s`` (both keep their labels), then merge
    into one particle of the summed volume (a new id), elongated along the pair axis,
    which relaxes to a sphere with time constant ``relax_time_s``.

Ground truth
    ``labels`` (uint16): pixel centre inside the projected shape; where shapes overlap
    the thicker one (at that pixel) wins, so labels partition the image. Label value
    == ``truth_id``. The truth table has one row per visible particle per frame
    (:data:`TRUTH_COLUMNS`): centre, the analytic projected-footprint descriptors
    (equivalent-circle diameter, moment aspect ratio, roundness ``4 A / (pi
    feret_max^2)``, shape class in :data:`etemlive.measure.SHAPES` vocabulary), the
    3-D solid and its volume, and the label's pixel count. Events are
    :class:`SimEvent` tuples ``(frame, kind, ids, into_id)``: ``appear`` (nucleated),
    ``vanish`` (dissolved: last seen in ``frame - 1``), ``merge`` (``ids`` the two
    parents, ``into_id`` the new particle) and ``split`` (``ids`` the two children,
    ``into_id`` the parent they came from). Particles present at frame 0 get no
    ``appear`` event. Only events visible in the field of view are reported: one of
    the particles involved is in view in that frame or the one before (the sample
    region extends beyond the view by the drift).

Everything is deterministic from ``seed``: the same config gives identical bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from ..errors import InputError
from ..frames import Frame, validate_pixel_size_nm

__all__ = [
    "DOSES",
    "EVENT_COLUMNS",
    "SCENARIOS",
    "SOLIDS",
    "TRUTH_COLUMNS",
    "SimEvent",
    "SimFrame",
    "SimulatedSource",
    "Simulation",
    "SimulationConfig",
    "TRAINING_PARAMETERS",
    "render_training_sample",
    "simulate",
    "write_simulation",
]

#: Scenario names accepted by :class:`SimulationConfig`.
SCENARIOS: tuple[str, ...] = ("ripening", "coalescence", "nucleation", "dense", "liquid", "shapes")

#: Named electron doses in e-/px per frame (incident electrons per pixel).
DOSES: dict[str, float] = {"low": 10.0, "default": 100.0, "high": 1000.0}

#: 3-D particle models, in the order of their integer codes.
SOLIDS: tuple[str, ...] = (
    "sphere", "ellipsoid", "rod", "cube", "octahedron", "hexagonal_plate", "triangular_plate",
)
_SPHERE, _ELLIPSOID, _ROD, _CUBE, _OCTAHEDRON, _HEXPLATE, _TRIPLATE = range(len(SOLIDS))

#: Column -> dtype of the per-frame truth table (one row per visible particle).
TRUTH_COLUMNS: dict[str, str] = {
    "frame": "int64",
    "time_s": "float64",
    "truth_id": "int64",
    "x_px": "float64",
    "y_px": "float64",
    "diameter_nm": "float64",
    "aspect_ratio": "float64",
    "roundness": "float64",
    "shape": "object",
    "area_px": "int64",
    "touches_edge": "bool",
    "area_nm2": "float64",
    "feret_max_nm": "float64",
    "radius_nm": "float64",
    "volume_nm3": "float64",
    "solid": "object",
    "orientation_deg": "float64",
    "dx_px": "float64",
    "dy_px": "float64",
}

#: Columns of ``<stem>_events.csv``.
EVENT_COLUMNS: tuple[str, ...] = ("frame", "kind", "ids", "into_id")

_MAX_ID = np.iinfo(np.uint16).max
_SUPPORT_HAADF_WEIGHT = 0.15  # light elements scatter little to high angles (~Z^1.7)
_HAADF_FLOOR = 0.005  # dark-field detector floor as a fraction of the dose


class SimEvent(NamedTuple):
    """One truth event: ``(frame, kind, ids, into_id)``; see the module docstring."""

    frame: int
    kind: str
    ids: tuple[int, ...]
    into_id: int | None


@dataclass(frozen=True)
class SimFrame:
    """One simulated frame with its exact ground truth.

    Attributes
    ----------
    index : int
        0-based frame number.
    time_s : float
        ``index * frame_interval_s``.
    image : ndarray of uint16, shape (size_px, size_px)
        Detector counts.
    labels : ndarray of uint16, same shape
        Instance labels, 0 = background, value == ``truth_id``.
    truth : DataFrame
        One row per visible particle, columns :data:`TRUTH_COLUMNS`.
    events : list of SimEvent
        Events that first show in this frame.
    drift_px : tuple of float
        Cumulative stage drift (dx, dy) in px applied to this frame.
    """

    index: int
    time_s: float
    image: np.ndarray
    labels: np.ndarray
    truth: pd.DataFrame
    events: list[SimEvent]
    drift_px: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated movie; validated at construction.

    ``None`` means "the scenario's default" (see :meth:`resolved`).

    Parameters
    ----------
    scenario : str
        One of :data:`SCENARIOS`.
    seed : int
        Seed of ``np.random.default_rng``; the same config gives identical bytes.
    n_frames : int
        Frames in the movie.
    size_px : int
        Frame side in px (square frames).
    pixel_size_nm : float
        nm per px.
    frame_interval_s : float
        Time between frames, s.
    dose_e_per_px : float or None
        Incident electrons per pixel per frame (:data:`DOSES`); None: ``"low"`` for
        ``liquid``, ``"default"`` otherwise.
    bright_field : bool
        True: dark particles on a bright background; False: HAADF / dark field.
    drift_px_per_frame : float
        Stage drift speed, px per frame (direction wanders slowly).
    blur_sigma_px : float
        Detector PSF (Gaussian sigma), px; 0 = none.
    ripening_exponent : float
        LSW exponent n (3 diffusion-limited, 2 interface-limited), in [1.5, 5].
    ripening_rate : float or None
        ``k`` in ``dr/dt = k / r^(n-2) (1/r_c - 1/r)``, nm^n/s; None: chosen so the
        mean radius grows by ``ripening_growth_factor`` over the movie.
    ripening_growth_factor : float
        Used when ``ripening_rate`` is None.
    n_particles : int or None
        Initial number of particles (nucleation: expected number of nuclei); None:
        from the scenario's area fraction.
    mean_diameter_nm : float or None
        Initial mean diameter (dense: the small family's mean).
    brownian_d_nm2_per_s : float or None
        Translational diffusion coefficient of a 5 nm radius particle (scales 1/r).
    growth_rate_nm_per_s : float or None
        Radial growth rate by monomer attachment at the start (decays with the
        supersaturation, time constant half the movie).
    carbon_thickness_nm, carbon_texture_nm : float
        Mean support-film thickness and the std of its fine texture, nm.
    liquid_thickness_nm : float or None
        Liquid layer thickness (liquid scenario), nm.
    particle_mfp_nm : float
        Mass-thickness mean free path of the particle material, nm (contrast).
    illumination_gradient : float
        Fractional change of illumination across the field.
    vanish_radius_px : float
        A particle whose radius falls below this vanishes.
    neck_duration_s, relax_time_s : float or None
        Coalescence neck growth time and shape relaxation time; None: 3 frames each.
    split_rate_per_s : float or None
        Per-particle rate of splitting into two (default 0).
    coalescence : bool or None
        Whether touching particles neck and merge; None: all scenarios but ``dense``
        and ``shapes``.
    supersample : int
        Sub-pixels per pixel side for anti-aliasing (odd, so one sits at the centre).
    """

    scenario: str = "ripening"
    seed: int = 0
    n_frames: int = 100
    size_px: int = 512
    pixel_size_nm: float = 0.5
    frame_interval_s: float = 0.5
    dose_e_per_px: float | None = None
    bright_field: bool = True
    drift_px_per_frame: float = 0.3
    blur_sigma_px: float = 0.8
    ripening_exponent: float = 3.0
    ripening_rate: float | None = None
    ripening_growth_factor: float = 1.8
    n_particles: int | None = None
    mean_diameter_nm: float | None = None
    brownian_d_nm2_per_s: float | None = None
    growth_rate_nm_per_s: float | None = None
    carbon_thickness_nm: float = 10.0
    carbon_texture_nm: float = 1.5
    liquid_thickness_nm: float | None = None
    particle_mfp_nm: float = 25.0
    illumination_gradient: float = 0.1
    vanish_radius_px: float = 1.0
    neck_duration_s: float | None = None
    relax_time_s: float | None = None
    split_rate_per_s: float | None = None
    coalescence: bool | None = None
    supersample: int = 3

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise InputError(
                f"unknown simulation scenario {self.scenario!r}: choose one of {', '.join(SCENARIOS)}"
            )
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("n_frames", self.n_frames, 1, 1_000_000)
        _check_int("size_px", self.size_px, 16, 16384)
        _check_int("supersample", self.supersample, 1, 9)
        if self.supersample % 2 == 0:
            raise InputError(f"simulation supersample must be odd, got {self.supersample}")
        validate_pixel_size_nm(self.pixel_size_nm, what="simulation pixel_size_nm")
        _check_float("frame_interval_s", self.frame_interval_s, 0.0, math.inf, low_open=True)
        if self.dose_e_per_px is not None:
            _check_float("dose_e_per_px", self.dose_e_per_px, 0.0, 1e6, low_open=True)
        _check_float("drift_px_per_frame", self.drift_px_per_frame, 0.0, 100.0)
        _check_float("blur_sigma_px", self.blur_sigma_px, 0.0, 50.0)
        _check_float("ripening_exponent", self.ripening_exponent, 1.5, 5.0)
        if self.ripening_rate is not None:
            _check_float("ripening_rate", self.ripening_rate, 0.0, math.inf)
        _check_float("ripening_growth_factor", self.ripening_growth_factor, 1.0, 10.0)
        if self.n_particles is not None:
            _check_int("n_particles", self.n_particles, 0, 60_000)
        if self.mean_diameter_nm is not None:
            _check_float("mean_diameter_nm", self.mean_diameter_nm, 0.0, 1000.0, low_open=True)
        for name in ("brownian_d_nm2_per_s", "growth_rate_nm_per_s", "liquid_thickness_nm",
                     "split_rate_per_s"):
            value = getattr(self, name)
            if value is not None:
                _check_float(name, value, 0.0, 1e6)
        for name in ("neck_duration_s", "relax_time_s"):
            value = getattr(self, name)
            if value is not None:
                _check_float(name, value, 0.0, 1e6, low_open=True)
        _check_float("carbon_thickness_nm", self.carbon_thickness_nm, 0.0, 1e4)
        _check_float("carbon_texture_nm", self.carbon_texture_nm, 0.0, 1e3)
        _check_float("particle_mfp_nm", self.particle_mfp_nm, 0.0, 1e5, low_open=True)
        _check_float("illumination_gradient", self.illumination_gradient, 0.0, 0.9)
        _check_float("vanish_radius_px", self.vanish_radius_px, 0.0, 100.0, low_open=True)
        for name in ("bright_field", "coalescence"):
            value = getattr(self, name)
            if not (isinstance(value, bool | np.bool_) or (value is None and name != "bright_field")):
                raise InputError(f"simulation {name} must be True or False, got {value!r}")

    def resolved(self) -> SimulationConfig:
        """A copy with every ``None`` replaced by the scenario's default value."""
        dt = self.frame_interval_s
        duration_s = max(self.n_frames - 1, 1) * dt
        d: dict[str, Any] = dict(_SCENARIO_DEFAULTS[self.scenario])
        d.setdefault("dose_e_per_px", DOSES["default"])
        d.setdefault("liquid_thickness_nm", 0.0)
        d.setdefault("brownian_d_nm2_per_s", 0.0)
        d.setdefault("growth_rate_nm_per_s", 0.0)
        d.setdefault("split_rate_per_s", 0.0)
        d.setdefault("coalescence", self.scenario not in ("dense", "shapes"))
        if "growth_rate_nm_per_s_total" in d:
            # radial growth spread over the supersaturation decay (time constant T/2)
            d["growth_rate_nm_per_s"] = d.pop("growth_rate_nm_per_s_total") / (
                0.5 * duration_s * (1 - math.exp(-2.0)))
        d.pop("growth_rate_nm_per_s_total", None)
        d["neck_duration_s"] = 3 * dt
        d["relax_time_s"] = 3 * dt
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                value = d.get(f.name)
            out[f.name] = value
        return dataclasses.replace(self, **out)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of the fields (``<stem>_meta.json`` stores the resolved one)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SimulationConfig:
        """The config back from :meth:`to_dict` (e.g. ``meta["config"]``); validated."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown simulation setting(s): {', '.join(unknown)}")
        return cls(**values)


# Scenario defaults for the None fields; "area_fraction" drives the particle count.
_SCENARIO_DEFAULTS: dict[str, dict[str, Any]] = {
    "ripening": {"mean_diameter_nm": 6.0, "area_fraction": 0.10, "coalescence": False},
    "coalescence": {"mean_diameter_nm": 8.0, "area_fraction": 0.08,
                    "brownian_d_nm2_per_s": 0.02, "split_rate_per_s": 0.0},
    "nucleation": {"mean_diameter_nm": 1.6, "area_fraction": 0.0,
                   "growth_rate_nm_per_s_total": 3.5, "nuclei_per_nm2": 1 / 500.0},
    "dense": {"mean_diameter_nm": 6.0, "area_fraction": 0.40},
    "liquid": {"mean_diameter_nm": 10.0, "area_fraction": 0.04, "dose_e_per_px": DOSES["low"],
               "brownian_d_nm2_per_s": 4.0, "liquid_thickness_nm": 100.0},
    "shapes": {"mean_diameter_nm": 10.0, "area_fraction": 0.10},
}


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputError(f"simulation {name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InputError(f"simulation {name} must be in [{lo}, {hi}], got {value}")


def _check_float(name: str, value: Any, lo: float, hi: float, *, low_open: bool = False) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"simulation {name} must be a number, got {value!r}") from None
    bad = not math.isfinite(v) or v > hi or v < lo or (low_open and v <= lo)
    if bad:
        bound = f"({lo}, {hi}]" if low_open else f"[{lo}, {hi}]"
        raise InputError(f"simulation {name} must be finite and in {bound}, got {value!r}")


# --------------------------------------------------------------------------------------
# Geometry of the solids: dimensions from volume, projected-footprint descriptors
# --------------------------------------------------------------------------------------

def solid_dimensions(solid: np.ndarray, radius_nm: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-particle dimensions (nm), shape (n, 3), from the volume-equivalent radius.

    ``q`` is the shape parameter: in-plane aspect for ellipsoids (a / b) and rods
    (length / width), diameter / thickness for plates; ignored otherwise. Columns:
    sphere (R, -, -); ellipsoid (a, b, c); rod (rho, half cylinder length, -);
    cube (half edge, -, -); octahedron (vertex distance a, -, -); hexagonal plate
    (circumradius, thickness, -); triangular plate (inradius, thickness, -).
    """
    solid = np.asarray(solid)
    r = np.asarray(radius_nm, dtype=np.float64)
    q = np.maximum(np.asarray(q, dtype=np.float64), 1.0)
    vol = 4.0 / 3.0 * np.pi * r**3
    dims = np.zeros((r.size, 3))
    dims[:, 0] = r
    m = solid == _ELLIPSOID
    b = r[m] * q[m] ** (-1.0 / 3.0)
    dims[m] = np.stack([q[m] * b, b, b], axis=1)
    m = solid == _ROD
    rho = np.cbrt(vol[m] / (np.pi * (2.0 * (q[m] - 1.0) + 4.0 / 3.0)))
    dims[m, 0], dims[m, 1] = rho, rho * (q[m] - 1.0)
    m = solid == _CUBE
    dims[m, 0] = 0.5 * np.cbrt(vol[m])
    m = solid == _OCTAHEDRON
    dims[m, 0] = np.cbrt(0.75 * vol[m])
    m = solid == _HEXPLATE
    rho = np.cbrt(vol[m] * q[m] / (3.0 * math.sqrt(3.0)))
    dims[m, 0], dims[m, 1] = rho, 2.0 * rho / q[m]
    m = solid == _TRIPLATE
    side = np.cbrt(4.0 * vol[m] * q[m] / math.sqrt(3.0))
    dims[m, 0], dims[m, 1] = side / (2.0 * math.sqrt(3.0)), side / q[m]
    return dims


def footprint_descriptors(solid: np.ndarray, dims: np.ndarray) -> dict[str, np.ndarray]:
    """Analytic projected-footprint descriptors, vectorized over particles.

    Returns a dict of arrays: ``area_nm2``, ``feret_max_nm``, ``aspect_ratio``
    (major / minor axis of the inertia ellipse), ``roundness`` (4 A / (pi F^2)),
    ``circumradius_nm`` (bounding radius, for rendering).
    """
    solid = np.asarray(solid)
    d0, d1, _ = dims.T
    area = np.pi * d0**2
    feret = 2.0 * d0
    aspect = np.ones_like(d0)
    circ = d0.copy()
    m = solid == _ELLIPSOID
    area[m], feret[m], aspect[m] = np.pi * d0[m] * d1[m], 2 * d0[m], d0[m] / d1[m]
    m = solid == _ROD
    rho, hl = d0[m], d1[m]
    area[m] = 4.0 * rho * hl + np.pi * rho**2
    feret[m] = 2.0 * (hl + rho)
    circ[m] = hl + rho
    # second moments of rectangle (2 hl x 2 rho) plus two half disks at the ends
    i_along = 2 * rho * (2 * hl) ** 3 / 12 + 2 * (
        np.pi * rho**2 / 2 * hl**2 + 2 * hl * 2 * rho**3 / 3 + np.pi * rho**4 / 8)
    i_across = (2 * hl) * (2 * rho) ** 3 / 12 + np.pi * rho**4 / 4
    aspect[m] = np.sqrt(i_along / i_across)
    m = solid == _CUBE
    area[m], feret[m], circ[m] = 4 * d0[m] ** 2, 2 * math.sqrt(2) * d0[m], math.sqrt(2) * d0[m]
    m = solid == _OCTAHEDRON
    area[m], feret[m] = 2 * d0[m] ** 2, 2 * d0[m]
    m = solid == _HEXPLATE
    area[m], feret[m] = 1.5 * math.sqrt(3) * d0[m] ** 2, 2 * d0[m]
    m = solid == _TRIPLATE
    side = 2 * math.sqrt(3) * d0[m]
    area[m], feret[m], circ[m] = math.sqrt(3) / 4 * side**2, side, 2 * d0[m]
    roundness = np.clip(4 * area / (np.pi * np.maximum(feret, 1e-12) ** 2), 0.0, 1.0)
    return {"area_nm2": area, "feret_max_nm": feret, "aspect_ratio": aspect,
            "roundness": roundness, "circumradius_nm": circ}


def shape_class(solid: np.ndarray, aspect_ratio: np.ndarray) -> np.ndarray:
    """Truth shape class in the vocabulary of :data:`etemlive.measure.SHAPES`."""
    names = np.array(["round", "round", "elongated", "square", "square", "hexagon", "triangle"],
                     dtype=object)
    out = names[np.asarray(solid, dtype=np.int64)]
    out[np.asarray(aspect_ratio) >= 1.4] = "elongated"
    return out


# --------------------------------------------------------------------------------------
# Rendering: projected thickness in each particle's bounding box
# --------------------------------------------------------------------------------------

_HEX_NORMALS = np.array([[math.cos(a), math.sin(a)] for a in np.deg2rad([30.0, 90.0, 150.0])])
_TRI_NORMALS = np.array([[math.cos(a), math.sin(a)] for a in np.deg2rad([90.0, 210.0, 330.0])])


def _local_thickness(solid: int, d: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Projected thickness (nm) at local coordinates u (along the particle), v (nm).

    ``d`` holds the dimensions (:func:`solid_dimensions`) as ``d[k]`` arrays that
    broadcast against ``u`` and ``v`` (one particle or a batch of them).
    """
    if solid == _SPHERE:
        return 2.0 * np.sqrt(np.maximum(d[0] ** 2 - u * u - v * v, 0.0))
    if solid == _ELLIPSOID:
        return 2.0 * d[2] * np.sqrt(np.maximum(1.0 - (u / d[0]) ** 2 - (v / d[1]) ** 2, 0.0))
    if solid == _ROD:
        du = np.maximum(np.abs(u) - d[1], 0.0)
        return 2.0 * np.sqrt(np.maximum(d[0] ** 2 - du * du - v * v, 0.0))
    if solid == _CUBE:
        inside = (np.abs(u) <= d[0]) & (np.abs(v) <= d[0])
        return inside * (2.0 * d[0])
    if solid == _OCTAHEDRON:
        return 2.0 * np.maximum(d[0] - np.abs(u) - np.abs(v), 0.0)
    normals = _HEX_NORMALS if solid == _HEXPLATE else _TRI_NORMALS
    extent = None
    for nx, ny in normals:
        proj = u * nx + v * ny
        if solid == _HEXPLATE:
            proj = np.abs(proj)
        extent = proj if extent is None else np.maximum(extent, proj)
    limit = (math.sqrt(3) / 2) * d[0] if solid == _HEXPLATE else d[0]
    return (extent <= limit) * d[1]


# Box sides (px) particles are batched into; padding wastes at most ~(1.5)^2 in area.
_BOX_SIDES = np.array([4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
                       1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384])
_BATCH_ELEMENTS = 1 << 21  # sub-pixel samples evaluated per numpy call (memory bound)
_BATCH_MAX_SIDE = 24  # boxes larger than this are rendered one by one, in place


def _render_one(thickness_nm, labels, zbuffer, i, x_px, y_px, solid, dims_nm, cos_t, sin_t,
                reach, ids, pixel_size_nm, s) -> None:
    """One particle in its tight bounding box (vectorized inside the box)."""
    rows, cols = thickness_nm.shape
    half = s // 2
    sub = (np.arange(s) - half) / s
    x0 = max(int(math.floor(x_px[i] - reach[i])), 0)
    x1 = min(int(math.ceil(x_px[i] + reach[i])) + 1, cols)
    y0 = max(int(math.floor(y_px[i] - reach[i])), 0)
    y1 = min(int(math.ceil(y_px[i] + reach[i])) + 1, rows)
    if x1 <= x0 or y1 <= y0:
        return
    h, w = y1 - y0, x1 - x0
    dx = (((np.arange(x0, x1)[:, None] + sub).ravel() - x_px[i]) * pixel_size_nm).astype(np.float32)
    dy = (((np.arange(y0, y1)[:, None] + sub).ravel() - y_px[i]) * pixel_size_nm).astype(np.float32)
    code = int(solid[i])
    d = dims_nm[i].astype(np.float32)
    if code == _SPHERE:
        u, v = dx[None, :], dy[:, None]
    else:
        c, sn = np.float32(cos_t[i]), np.float32(sin_t[i])
        u = dx[None, :] * c + dy[:, None] * sn
        v = dy[:, None] * c - dx[None, :] * sn
    t = _local_thickness(code, d, u, v)
    box = (slice(y0, y1), slice(x0, x1))
    thickness_nm[box] += t.reshape(h, s, w, s).mean(axis=(1, 3))
    centre = t[half::s, half::s]
    zb = zbuffer[box]
    win = (centre > 0) & ((centre > zb) | ((centre == zb) & (ids[i] > labels[box])))
    zb[win] = centre[win]
    labels[box][win] = ids[i]


def render_particles(
    thickness_nm: np.ndarray,
    labels: np.ndarray,
    zbuffer: np.ndarray,
    *,
    x_px: np.ndarray,
    y_px: np.ndarray,
    solid: np.ndarray,
    dims_nm: np.ndarray,
    theta_rad: np.ndarray,
    circumradius_nm: np.ndarray,
    ids: np.ndarray,
    pixel_size_nm: float,
    supersample: int = 3,
) -> None:
    """Add particles' projected thickness and write their labels, in place.

    Each particle is evaluated only in its bounding box, on ``supersample`` x
    ``supersample`` sub-pixels per pixel; the pixel gets the mean thickness
    (anti-aliased: the rendered volume and area match the solid's), and the
    particle's label where the thickness at the pixel centre is positive and larger
    than any other particle's there and than ``zbuffer``. Particles of the same solid
    and similar box size are evaluated together in one vectorized batch and
    scattered into the image with ``np.bincount``: no Python loop per particle.

    Parameters
    ----------
    thickness_nm : ndarray of float32, shape (rows, cols)
        Accumulated projected particle thickness (nm), modified in place.
    labels : ndarray of uint16, same shape
        Instance labels, modified in place.
    zbuffer : ndarray of float32, same shape
        Centre thickness of the label owner, modified in place (start at 0).
    x_px, y_px : ndarray
        Centres in image px (x = column, y = row; pixel centres at integers).
    solid, dims_nm, theta_rad, circumradius_nm, ids : ndarray
        Per-particle model (see :func:`solid_dimensions`), in-plane orientation,
        bounding radius and label value.
    pixel_size_nm : float
        nm per px.
    supersample : int
        Odd number of sub-pixels per side.
    """
    rows, cols = thickness_nm.shape
    s = int(supersample)
    half = s // 2
    sub = (np.arange(s) - half) / s  # sub-pixel offsets, the middle one at the centre
    x_px = np.asarray(x_px, np.float64)
    y_px = np.asarray(y_px, np.float64)
    reach = np.asarray(circumradius_nm, np.float64) / pixel_size_nm + 1.0
    visible = ((x_px + reach >= -0.5) & (x_px - reach <= cols - 0.5)
               & (y_px + reach >= -0.5) & (y_px - reach <= rows - 0.5))
    idx_all = np.flatnonzero(visible)
    if idx_all.size == 0:
        return
    need = 2 * np.ceil(reach[idx_all]).astype(np.int64) + 2
    side = _BOX_SIDES[np.minimum(np.searchsorted(_BOX_SIDES, need), _BOX_SIDES.size - 1)]
    cos_t, sin_t = np.cos(theta_rad), np.sin(theta_rad)
    flat_parts, weight_parts, cflat_parts, cthick_parts, cid_parts = [], [], [], [], []
    key = np.asarray(solid)[idx_all] * 100 + np.searchsorted(_BOX_SIDES, side)
    for k in np.unique(key):  # a handful of (solid, box size) groups per frame
        group = idx_all[key == k]
        b = int(side[key == k][0])
        if b > _BATCH_MAX_SIDE:
            # big boxes: the arithmetic dominates, so add each box in place (no index arrays)
            for i in group:
                _render_one(thickness_nm, labels, zbuffer, i, x_px, y_px, solid, dims_nm,
                            cos_t, sin_t, reach, ids, pixel_size_nm, s)
            continue
        per_chunk = max(1, _BATCH_ELEMENTS // (b * b * s * s))
        for start in range(0, group.size, per_chunk):
            g = group[start:start + per_chunk]
            n = g.size
            x0 = np.floor(x_px[g]).astype(np.int64) - (b // 2 - 1)
            y0 = np.floor(y_px[g]).astype(np.int64) - (b // 2 - 1)
            cols_g = x0[:, None] + np.arange(b)  # (n, b) pixel columns
            rows_g = y0[:, None] + np.arange(b)
            # float32 from here: offsets from the centre are small, and memory bandwidth rules
            dx = (((cols_g[:, :, None] + sub).reshape(n, b * s) - x_px[g, None])
                  * pixel_size_nm).astype(np.float32)
            dy = (((rows_g[:, :, None] + sub).reshape(n, b * s) - y_px[g, None])
                  * pixel_size_nm).astype(np.float32)
            code = int(solid[g[0]])
            d = [dims_nm[g, j].astype(np.float32)[:, None, None] for j in range(3)]
            if code == _SPHERE:
                u, v = dx[:, None, :], dy[:, :, None]
            else:
                c = cos_t[g].astype(np.float32)[:, None, None]
                sn = sin_t[g].astype(np.float32)[:, None, None]
                u = dx[:, None, :] * c + dy[:, :, None] * sn
                v = dy[:, :, None] * c - dx[:, None, :] * sn
            t = _local_thickness(code, d, u, v)  # (n, b*s, b*s)
            mean = t.reshape(n, b, s, b, s).mean(axis=(2, 4))
            centre = t[:, half::s, half::s]
            inside = ((rows_g >= 0) & (rows_g < rows))[:, :, None] & \
                     ((cols_g >= 0) & (cols_g < cols))[:, None, :]
            flat = rows_g[:, :, None] * cols + cols_g[:, None, :]
            m = inside & (mean > 0)
            flat_parts.append(flat[m])
            weight_parts.append(mean[m])
            m = inside & (centre > 0)
            cflat_parts.append(flat[m])
            cthick_parts.append(centre[m])
            cid_parts.append(np.broadcast_to(ids[g][:, None, None], m.shape)[m])
    if not flat_parts:
        return
    flat = np.concatenate(flat_parts)
    if flat.size:
        added = np.bincount(flat, weights=np.concatenate(weight_parts), minlength=rows * cols)
        thickness_nm += added.reshape(rows, cols).astype(thickness_nm.dtype, copy=False)
    cflat = np.concatenate(cflat_parts)
    if cflat.size:
        cthick = np.concatenate(cthick_parts)
        cid = np.concatenate(cid_parts)
        # per pixel, the particle with the thickest centre wins (ties: larger id)
        order = np.lexsort((cid, cthick, cflat))
        cflat, cthick, cid = cflat[order], cthick[order], cid[order]
        last = np.ones(cflat.size, bool)
        last[:-1] = cflat[1:] != cflat[:-1]
        cflat, cthick, cid = cflat[last], cthick[last], cid[last]
        zflat = zbuffer.reshape(-1)
        win = cthick > zflat[cflat]
        zflat[cflat[win]] = cthick[win]
        labels.reshape(-1)[cflat[win]] = cid[win]


def _render_necks(thickness_nm, labels, pairs, pixel_size_nm, supersample):
    """Bridge thickness between particle pairs in a neck; neck pixels go to the nearer one.

    ``pairs``: list of (xa, ya, ra_nm, ida, xb, yb, rb_nm, idb, neck_radius_nm).
    """
    rows, cols = thickness_nm.shape
    s = int(supersample)
    half = s // 2
    sub = (np.arange(s) - half) / s
    for xa, ya, ra, ida, xb, yb, rb, idb, rn in pairs:
        if rn <= 0:
            continue
        pad = rn / pixel_size_nm + 1.0
        x0 = max(int(math.floor(min(xa, xb) - pad)), 0)
        x1 = min(int(math.ceil(max(xa, xb) + pad)) + 1, cols)
        y0 = max(int(math.floor(min(ya, yb) - pad)), 0)
        y1 = min(int(math.ceil(max(ya, yb) + pad)) + 1, rows)
        if x1 <= x0 or y1 <= y0:
            continue
        h, w = y1 - y0, x1 - x0
        px = (np.arange(x0, x1)[:, None] + sub).ravel()
        py = (np.arange(y0, y1)[:, None] + sub).ravel()
        ex, ey = xb - xa, yb - ya
        length2 = max(ex * ex + ey * ey, 1e-12)
        # distance (nm) of each sub-pixel to the segment between the two centres
        tpar = np.clip(((px[None, :] - xa) * ex + (py[:, None] - ya) * ey) / length2, 0.0, 1.0)
        ddx = (px[None, :] - xa - tpar * ex) * pixel_size_nm
        ddy = (py[:, None] - ya - tpar * ey) * pixel_size_nm
        t = 2.0 * np.sqrt(np.maximum(rn * rn - ddx * ddx - ddy * ddy, 0.0))
        box = (slice(y0, y1), slice(x0, x1))
        neck = t.reshape(h, s, w, s).mean(axis=(1, 3))
        np.maximum(thickness_nm[box], neck, out=thickness_nm[box])
        centre = t[half::s, half::s]
        free = (centre > 0) & (labels[box] == 0)
        if free.any():
            da = np.hypot(px[half::s][None, :] - xa, py[half::s][:, None] - ya) / max(ra, 1e-9)
            db = np.hypot(px[half::s][None, :] - xb, py[half::s][:, None] - yb) / max(rb, 1e-9)
            owner = np.where(da <= db, ida, idb).astype(labels.dtype)
            labels[box][free] = owner[free]


# --------------------------------------------------------------------------------------
# Background: carbon film texture, illumination
# --------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Band-limited Gaussian random field with unit std (float32)."""
    rows, cols = shape
    if sigma_px > 8:
        # draw coarse and upsample: cheap for long correlation lengths
        factor = sigma_px / 4.0
        small = (max(int(math.ceil(rows / factor)) + 1, 4), max(int(math.ceil(cols / factor)) + 1, 4))
        field_small = _smooth_noise(rng, small, 4.0)
        # upsample by ~factor and crop; a field much coarser than the tile is just resized
        full = (min(int(small[1] * factor), 2 * cols + 8), min(int(small[0] * factor), 2 * rows + 8))
        out = cv2.resize(field_small, full, interpolation=cv2.INTER_CUBIC)[:rows, :cols]
        if out.shape != (rows, cols):
            out = cv2.resize(field_small, (cols, rows), interpolation=cv2.INTER_CUBIC)
    else:
        out = rng.standard_normal((rows, cols), dtype=np.float32)
        if sigma_px > 0.3:
            out = cv2.GaussianBlur(out, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    std = float(out.std())
    return ((out - out.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def carbon_thickness_field(rng: np.random.Generator, shape: tuple[int, int], pixel_size_nm: float,
                           *, mean_nm: float, texture_nm: float) -> np.ndarray:
    """Amorphous-carbon film thickness (nm): fine texture plus slow thickness variation."""
    fine = _smooth_noise(rng, shape, max(0.6, 0.5 / pixel_size_nm))
    coarse = _smooth_noise(rng, shape, max(2.0, 40.0 / pixel_size_nm))
    t = mean_nm + texture_nm * fine + 0.15 * mean_nm * coarse
    return np.maximum(t, 0.0).astype(np.float32)


def illumination_field(rng: np.random.Generator, shape: tuple[int, int], gradient: float) -> np.ndarray:
    """Relative illumination (mean ~1): a linear gradient plus a slight radial fall-off."""
    rows, cols = shape
    angle = rng.uniform(0, 2 * np.pi)
    yy = (np.arange(rows, dtype=np.float32)[:, None] / max(rows - 1, 1)) - 0.5
    xx = (np.arange(cols, dtype=np.float32)[None, :] / max(cols - 1, 1)) - 0.5
    lin = gradient * (np.cos(angle) * xx + np.sin(angle) * yy)
    radial = -0.5 * gradient * (xx * xx + yy * yy)
    return (1.0 + lin + radial).astype(np.float32)


def _line_kernel(length_px: float, angle_rad: float) -> np.ndarray:
    """Normalized linear motion-blur kernel (odd size), anti-aliased by supersampling."""
    size = int(math.ceil(length_px)) | 1
    kernel = np.zeros((size * 4, size * 4), np.float32)
    c = size * 2 - 0.5
    t = np.linspace(-0.5, 0.5, 8 * size) * length_px * 4
    cols = np.clip(np.round(c + t * math.cos(angle_rad)).astype(int), 0, size * 4 - 1)
    rows = np.clip(np.round(c + t * math.sin(angle_rad)).astype(int), 0, size * 4 - 1)
    np.add.at(kernel, (rows, cols), 1.0)
    kernel = cv2.resize(kernel, (size, size), interpolation=cv2.INTER_AREA)
    return kernel / kernel.sum()


def form_image(rng: np.random.Generator, particle_nm: np.ndarray, carbon_nm: np.ndarray,
               dose_illum: np.ndarray, static_attenuation: np.ndarray | float, *,
               particle_mfp_nm: float, carbon_mfp_nm: float, bright_field: bool,
               blur_sigma_px: float, motion_blur_px: float = 0.0,
               motion_angle_rad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Expected counts and a Poisson-noise image from projected thicknesses.

    ``motion_blur_px``: length of a linear smear (drift during the exposure) applied,
    like the detector PSF, to the expected image before the shot noise.

    Returns ``(expected float32, counts uint16)``.
    """
    a_particle = particle_nm * np.float32(1.0 / particle_mfp_nm)
    a_support = carbon_nm * np.float32(1.0 / carbon_mfp_nm) + static_attenuation
    if bright_field:
        expected = dose_illum * np.exp(-(a_particle + a_support))
    else:
        scattered = 1.0 - np.exp(-(a_particle + _SUPPORT_HAADF_WEIGHT * a_support))
        expected = dose_illum * (np.float32(_HAADF_FLOOR) + scattered)
    expected = expected.astype(np.float32, copy=False)
    if blur_sigma_px > 0:
        expected = cv2.GaussianBlur(expected, (0, 0), blur_sigma_px, borderType=cv2.BORDER_REFLECT)
    if motion_blur_px >= 1.0:
        expected = cv2.filter2D(expected, -1, _line_kernel(motion_blur_px, motion_angle_rad),
                                borderType=cv2.BORDER_REFLECT)
    counts = rng.poisson(np.maximum(expected, 0.0))
    return expected, np.minimum(counts, _MAX_ID).astype(np.uint16)


# --------------------------------------------------------------------------------------
# LSW self-similar size distribution
# --------------------------------------------------------------------------------------

def lsw_distribution(n: float, n_grid: int = 4000) -> tuple[np.ndarray, np.ndarray, float]:
    """LSW asymptotic distribution of rho = r / r_c for ``dr/dt = k r^(2-n)(1/r_c - 1/r)``.

    Returns ``(rho grid, pdf on the grid, gamma)`` where the critical radius grows as
    ``r_c^n = r_c0^n + n k gamma t``. For n = 3 this is the classical LSW form
    (rho_max = 3/2, gamma = 4/27), for n = 2 Wagner's (rho_max = 2, gamma = 1/4).
    """
    rho_max = n / (n - 1.0)
    gamma = rho_max ** (-n) * (rho_max - 1.0)
    rho = np.linspace(0.0, rho_max, n_grid + 1)[1:-1]
    w = rho ** (1.0 - n) * (rho - 1.0) / gamma - rho  # d rho / d ln r_c, < 0 below rho_max
    integrand = 3.0 / w
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1]) * np.diff(rho))])
    with np.errstate(under="ignore"):
        pdf = np.exp(cum) / np.abs(w)
    pdf /= np.trapezoid(pdf, rho)
    return rho, pdf, gamma


def _sample_lsw(rng: np.random.Generator, n: float, count: int) -> tuple[np.ndarray, float, float]:
    """Draw rho ~ LSW(n), stratified; return (rho samples in random order, mean rho, gamma).

    One draw per quantile stratum ((i + u) / count): the finite population is then a
    faithful LSW distribution, so its mean radius follows the asymptotic law from the
    first frame instead of wandering with the sampling noise of a few hundred draws.
    """
    rho, pdf, gamma = lsw_distribution(n)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(rho))])
    cdf /= cdf[-1]
    mean_rho = float(np.trapezoid(rho * pdf, rho))
    quantiles = (np.arange(count) + rng.random(count)) / max(count, 1)
    return np.interp(rng.permutation(quantiles), cdf, rho), mean_rho, gamma


# --------------------------------------------------------------------------------------
# The particle population (struct of arrays) and the simulation
# --------------------------------------------------------------------------------------

_FIELDS = {
    "id": np.int64, "x": np.float64, "y": np.float64, "r": np.float64, "solid": np.int64,
    "q": np.float64, "theta": np.float64, "vx": np.float64, "vy": np.float64,
    "partner": np.int64, "neck_t0": np.float64, "q0": np.float64, "relax_t0": np.float64,
}


@dataclass
class _Population:
    """Particles as parallel arrays (x, y in sample px; r = volume-equivalent radius, nm)."""

    a: dict[str, np.ndarray] = field(
        default_factory=lambda: {k: np.zeros(0, dtype=t) for k, t in _FIELDS.items()})

    def __len__(self) -> int:
        return int(self.a["id"].size)

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["a"][name]
        except KeyError:
            raise AttributeError(name) from None

    def add(self, **values: Any) -> None:
        n = np.size(values["id"])
        defaults = {"solid": _SPHERE, "q": 1.0, "theta": 0.0, "vx": 0.0, "vy": 0.0, "partner": 0,
                    "neck_t0": np.nan, "q0": 1.0, "relax_t0": np.nan}
        for k, t in _FIELDS.items():
            v = values.get(k, defaults.get(k))
            self.a[k] = np.concatenate([self.a[k], np.broadcast_to(np.asarray(v, dtype=t), (n,))])

    def keep(self, mask: np.ndarray) -> None:
        for k in self.a:
            self.a[k] = self.a[k][mask]

    def index_of(self, ids: np.ndarray) -> np.ndarray:
        order = np.argsort(self.a["id"])
        pos = np.searchsorted(self.a["id"], ids, sorter=order)
        return order[np.minimum(pos, len(self) - 1)]


class Simulation:
    """A seeded simulated movie; iterate :meth:`frames` to stream :class:`SimFrame`.

    Attributes
    ----------
    config : SimulationConfig
        The resolved configuration (no ``None`` left).
    metadata : dict
        Pixel size, frame interval, scenario, seed, the resolved config and the
        scenario's truth parameters (ripening exponent and ``K`` of ``<r>^n - <r0>^n
        = K t`` in nm^n/s; dense families' means, stds and weights).
    """

    def __init__(self, config: SimulationConfig) -> None:
        self.user_config = config
        self.config = cfg = config.resolved()
        self.rng = np.random.default_rng(cfg.seed)
        self.px = cfg.pixel_size_nm
        self.dt = cfg.frame_interval_s
        self.duration_s = max(cfg.n_frames - 1, 1) * self.dt
        size = cfg.size_px
        # stage drift: speed fixed, direction wanders slowly; image = sample + offset
        heading = self.rng.uniform(0, 2 * np.pi) + np.cumsum(
            self.rng.normal(0.0, 0.15, cfg.n_frames))
        steps = cfg.drift_px_per_frame * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        steps[0] = 0.0
        self.offsets = np.cumsum(steps, axis=0)
        # sample region seen by some frame: [lo, hi) in sample px
        self.lo = -self.offsets.max(axis=0)
        self.hi = size - self.offsets.min(axis=0)
        self.region_area_nm2 = float(np.prod(self.hi - self.lo)) * self.px**2
        self.next_id = 1
        self._prev_visible: set[int] = set()
        self.pop = _Population()
        self.metadata: dict[str, Any] = {
            "pixel_size_nm": self.px, "frame_interval_s": self.dt,
            "scenario": cfg.scenario, "seed": cfg.seed, "n_frames": cfg.n_frames,
            "size_px": size, "bright_field": cfg.bright_field,
            "dose_e_per_px": cfg.dose_e_per_px,
            "config": cfg.to_dict(),
        }
        self._defaults = _SCENARIO_DEFAULTS[cfg.scenario]
        getattr(self, f"_init_{cfg.scenario}")()
        # background in sample coordinates (with a margin), drifts with the sample
        pad = 4
        self.tex_origin = np.floor(self.lo).astype(np.int64) - pad
        tex_shape = (int(math.ceil(self.hi[1] - self.tex_origin[1])) + pad,
                     int(math.ceil(self.hi[0] - self.tex_origin[0])) + pad)
        self.carbon = carbon_thickness_field(self.rng, tex_shape, self.px,
                                             mean_nm=cfg.carbon_thickness_nm,
                                             texture_nm=cfg.carbon_texture_nm)
        illum = illumination_field(self.rng, (size, size), cfg.illumination_gradient)
        self.dose_illum = (cfg.dose_e_per_px * illum).astype(np.float32)
        if cfg.liquid_thickness_nm > 0:
            bulge = _smooth_noise(self.rng, (size, size), size / 6.0)
            liquid = cfg.liquid_thickness_nm * (1.0 + 0.1 * bulge)
            self.static_attenuation = (liquid / 300.0).astype(np.float32)  # water mfp ~300 nm
        else:
            self.static_attenuation = np.float32(0.0)
        self.thickness = np.zeros((size, size), np.float32)
        self.zbuffer = np.zeros((size, size), np.float32)

    # ---- helpers --------------------------------------------------------------------
    def _new_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        if self.next_id - 1 > _MAX_ID:
            raise InputError(
                f"simulation needs more than {_MAX_ID} particle ids (uint16 labels): "
                "use fewer frames or a smaller field"
            )
        return ids

    def _count_for(self, area_fraction: float, mean_area_nm2: float) -> int:
        if self.user_config.n_particles is not None:
            return int(self.user_config.n_particles)
        return int(round(area_fraction * self.region_area_nm2 / mean_area_nm2))

    def _place(self, radii_px: np.ndarray, gap_px: float, *, touching_fraction: float = 0.0,
               max_tries: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Random sequential placement without overlap (largest first).

        Returns (x, y, placed mask). ``touching_fraction`` of the particles are put
        in contact with an earlier one (dense packing with necks of zero width).
        """
        n = radii_px.size
        order = np.argsort(-radii_px, kind="stable")
        xs, ys = np.full(n, np.nan), np.full(n, np.nan)
        lo, hi = self.lo, self.hi
        cell = max(2.0 * float(radii_px.max(initial=1.0)) + gap_px, 1.0)
        grid: dict[tuple[int, int], list[int]] = {}
        placed: list[int] = []
        touch = self.rng.random(n) < touching_fraction
        cand_xy = self.rng.uniform(lo, hi, size=(n, max_tries, 2))
        angles = self.rng.uniform(0, 2 * np.pi, size=(n, max_tries))
        partners = self.rng.random((n, max_tries))
        squeeze = self.rng.uniform(0.9, 1.0, size=(n, max_tries))
        for i in order:  # placement is set-up, not per frame
            ri = radii_px[i]
            for k in range(max_tries):
                if touch[i] and placed:
                    j = placed[int(partners[i, k] * len(placed))]
                    dist = (ri + radii_px[j]) * squeeze[i, k]
                    x = xs[j] + dist * math.cos(angles[i, k])
                    y = ys[j] + dist * math.sin(angles[i, k])
                    if not (lo[0] <= x < hi[0] and lo[1] <= y < hi[1]):
                        continue
                    tol = -(ri + radii_px[j]) * 0.1  # allow the chosen contact only
                else:
                    x, y = cand_xy[i, k]
                    j, tol = -1, gap_px
                cx, cy = int(x // cell), int(y // cell)
                ok = True
                for gx in (cx - 1, cx, cx + 1):
                    for gy in (cy - 1, cy, cy + 1):
                        for m in grid.get((gx, gy), ()):
                            lim = ri + radii_px[m] + (tol if m == j else max(gap_px, 0.0))
                            if m != j and touch[i]:
                                lim = ri + radii_px[m] - (ri + radii_px[m]) * 0.02
                            if (x - xs[m]) ** 2 + (y - ys[m]) ** 2 < lim * lim:
                                ok = False
                                break
                        if not ok:
                            break
                    if not ok:
                        break
                if ok:
                    xs[i], ys[i] = x, y
                    grid.setdefault((cx, cy), []).append(i)
                    placed.append(i)
                    break
        ok = ~np.isnan(xs)
        return xs, ys, ok

    def _add_particles(self, radius_nm, x, y, **extra) -> np.ndarray:
        ids = self._new_ids(len(radius_nm))
        self.pop.add(id=ids, r=radius_nm, x=x, y=y, **extra)
        return ids

    # ---- scenario set-ups ------------------------------------------------------------
    def _init_ripening(self) -> None:
        cfg = self.config
        n = cfg.ripening_exponent
        mean_r0 = cfg.mean_diameter_nm / 2.0
        count = self._count_for(self._defaults["area_fraction"], np.pi * mean_r0**2 * 1.1)
        rho, mean_rho, gamma = _sample_lsw(self.rng, n, count)
        rc0 = mean_r0 / mean_rho
        r = rho * rc0
        r = r[r >= cfg.vanish_radius_px * self.px * 1.05]
        x, y, ok = self._place(r / self.px, gap_px=2.0)
        self._add_particles(r[ok], x[ok], y[ok])
        if cfg.ripening_rate is None:
            g = cfg.ripening_growth_factor
            k_mean = ((g * mean_r0) ** n - mean_r0**n) / self.duration_s
            self.k = k_mean / (mean_rho**n * n * gamma)
        else:
            self.k = float(cfg.ripening_rate)
            k_mean = self.k * mean_rho**n * n * gamma
        self.metadata["ripening"] = {
            "exponent_n": n, "rate_k_nm_n_per_s": self.k,
            "K_mean_radius_nm_n_per_s": k_mean, "K_critical_radius_nm_n_per_s": self.k * n * gamma,
            "mean_radius0_nm": float(np.mean(r[ok])) if ok.any() else mean_r0,
            "law": "<r>^n - <r0>^n = K t (r: volume-equivalent radius)",
            "mechanism": "diffusion-limited" if abs(n - 3) < 0.5 else (
                "interface-limited" if abs(n - 2) < 0.5 else "custom"),
        }

    def _init_coalescence(self) -> None:
        cfg = self.config
        mean_r = cfg.mean_diameter_nm / 2.0
        count = self._count_for(self._defaults["area_fraction"], np.pi * mean_r**2 * 1.2)
        n_pairs = count // 2
        ra = self.rng.uniform(0.6, 1.4, n_pairs) * mean_r
        rb = self.rng.uniform(0.6, 1.4, n_pairs) * mean_r
        gap_nm = self.rng.uniform(0.5, 3.0, n_pairs)
        t_contact = np.maximum(self.rng.uniform(0.05, 0.7, n_pairs) * self.duration_s, 2 * self.dt)
        angle = self.rng.uniform(0, 2 * np.pi, n_pairs)
        extent_px = (2 * ra + 2 * rb + gap_nm) / self.px
        cx, cy, ok = self._place(extent_px / 2 + 2.0, gap_px=3.0)
        ca, sa = np.cos(angle[ok]), np.sin(angle[ok])
        half_px = extent_px[ok] / 2
        # centres on the pair axis so surfaces are gap apart; approach speed closes it
        xa = cx[ok] - ca * (half_px - ra[ok] / self.px)
        ya = cy[ok] - sa * (half_px - ra[ok] / self.px)
        xb = cx[ok] + ca * (half_px - rb[ok] / self.px)
        yb = cy[ok] + sa * (half_px - rb[ok] / self.px)
        speed = gap_nm[ok] / self.px / t_contact[ok] / 2.0 * 1.02  # px/s each
        self._add_particles(ra[ok], xa, ya, vx=speed * ca, vy=speed * sa)
        self._add_particles(rb[ok], xb, yb, vx=-speed * ca, vy=-speed * sa)

    def _init_nucleation(self) -> None:
        cfg = self.config
        expected = (cfg.n_particles if cfg.n_particles is not None
                    else self._defaults["nuclei_per_nm2"] * self.region_area_nm2)
        tau = 0.5 * self.duration_s
        # rate(t) = rate0 exp(-t / tau) integrates to `expected` over the movie
        self.nucleation_tau_s = tau
        self.nucleation_rate0 = expected / (tau * (1.0 - math.exp(-self.duration_s / tau)))
        self.metadata["nucleation"] = {"expected_nuclei": expected,
                                       "rate0_per_s": self.nucleation_rate0,
                                       "supersaturation_tau_s": tau,
                                       "growth_rate0_nm_per_s": cfg.growth_rate_nm_per_s,
                                       "nucleus_radius_nm": cfg.mean_diameter_nm / 2}

    def _init_dense(self) -> None:
        cfg = self.config
        small = cfg.mean_diameter_nm
        families = [{"mean_diameter_nm": small, "std_diameter_nm": 0.08 * small, "weight": 0.6},
                    {"mean_diameter_nm": 2.2 * small, "std_diameter_nm": 0.08 * 2.2 * small,
                     "weight": 0.4}]
        w = np.array([f["weight"] for f in families])
        mean_area = sum(fam["weight"] * np.pi * (fam["mean_diameter_nm"] / 2) ** 2
                        for fam in families)
        count = self._count_for(self._defaults["area_fraction"], mean_area)
        fam = (self.rng.random(count) >= w[0]).astype(np.int64)
        means = np.array([f["mean_diameter_nm"] for f in families])[fam]
        stds = np.array([f["std_diameter_nm"] for f in families])[fam]
        d = np.maximum(self.rng.normal(means, stds), 2.5 * self.px)
        x, y, ok = self._place(d / 2 / self.px, gap_px=0.5, touching_fraction=0.5)
        self._add_particles(d[ok] / 2, x[ok], y[ok])
        # the drawn families, over all placed particles and over those wholly inside the
        # first frame (what an analysis that drops edge-cut particles sees)
        r_px = d / 2 / self.px
        inside = ok & (x - r_px >= 0) & (y - r_px >= 0)
        inside &= (x + r_px <= cfg.size_px - 1) & (y + r_px <= cfg.size_px - 1)
        realized = []
        for k, f in enumerate(families):
            entry = dict(f)
            for tag, sel in (("", ok), ("frame0_inside_", inside)):
                dk = d[sel & (fam == k)]
                entry[f"realized_{tag}mean_diameter_nm"] = float(dk.mean()) if dk.size else None
                entry[f"realized_{tag}std_diameter_nm"] = float(dk.std()) if dk.size else None
                entry[f"realized_{tag}weight"] = float(dk.size / max(sel.sum(), 1))
            realized.append(entry)
        self.metadata["dense"] = {"families": realized, "placed": int(ok.sum()),
                                  "requested": int(count), "weights": "by number"}

    def _init_liquid(self) -> None:
        cfg = self.config
        mean_r = cfg.mean_diameter_nm / 2.0
        count = self._count_for(self._defaults["area_fraction"], np.pi * mean_r**2 * 1.2)
        r = self.rng.uniform(0.6, 1.4, count) * mean_r
        solid = np.where(self.rng.random(count) < 0.2, _ROD, _SPHERE)
        q = np.where(solid == _ROD, self.rng.uniform(2.0, 4.0, count), 1.0)
        theta = self.rng.uniform(0, np.pi, count)
        dims = solid_dimensions(solid, r, q)
        circ = footprint_descriptors(solid, dims)["circumradius_nm"]
        x, y, ok = self._place(circ / self.px, gap_px=4.0)
        self._add_particles(r[ok], x[ok], y[ok], solid=solid[ok], q=q[ok], theta=theta[ok])

    def _init_shapes(self) -> None:
        cfg = self.config
        mean_r = cfg.mean_diameter_nm / 2.0
        count = self._count_for(self._defaults["area_fraction"], np.pi * mean_r**2 * 1.3)
        r = self.rng.uniform(0.6, 1.4, count) * mean_r
        solid = self.rng.integers(0, len(SOLIDS), count)
        q = np.ones(count)
        q = np.where(solid == _ELLIPSOID, self.rng.uniform(1.5, 2.3, count), q)
        q = np.where(solid == _ROD, self.rng.uniform(2.0, 4.5, count), q)
        q = np.where((solid == _HEXPLATE) | (solid == _TRIPLATE),
                     self.rng.uniform(2.0, 5.0, count), q)
        theta = self.rng.uniform(0, 2 * np.pi, count)
        dims = solid_dimensions(solid, r, q)
        circ = footprint_descriptors(solid, dims)["circumradius_nm"]
        x, y, ok = self._place(circ / self.px, gap_px=3.0)
        self._add_particles(r[ok], x[ok], y[ok], solid=solid[ok], q=q[ok], theta=theta[ok])

    # ---- dynamics ---------------------------------------------------------------------
    def _ripen(self, t_span: float, events: list[SimEvent], frame: int) -> None:
        """LSW ripening over ``t_span`` s with adaptive Euler sub-steps, volume conserved."""
        cfg, p = self.config, self.pop
        n, k = cfg.ripening_exponent, self.k
        r_min = cfg.vanish_radius_px * self.px
        remaining = t_span
        while remaining > 1e-12 and len(p) > 1:
            r = p.r
            v_total = float(np.sum(r**3))
            rc = float(np.sum(r ** (4 - n)) / np.sum(r ** (3 - n)))
            rate = k * r ** (2 - n) * (1.0 / rc - 1.0 / r)
            # step so no particle above 2 r_min changes radius by more than 5 %
            big = r > 2 * r_min
            limit = np.min(r[big] / np.maximum(np.abs(rate[big]), 1e-300)) if big.any() else 1.0
            step = min(remaining, 0.05 * limit)
            r_new = r + rate * step
            gone = r_new < r_min
            if gone.any():
                self._vanish(gone, events, frame)
                r_new = r_new[~gone]
            r_new = np.maximum(r_new, r_min)
            # return the dissolved residue: exact volume conservation
            r_new *= (v_total / np.sum(r_new**3)) ** (1.0 / 3.0)
            p.a["r"] = r_new
            remaining -= step

    def _vanish(self, gone: np.ndarray, events: list[SimEvent], frame: int) -> None:
        p = self.pop
        gone_ids = p.id[gone]
        for pid in gone_ids:
            events.append(SimEvent(frame, "vanish", (int(pid),), None))
        # break necks with vanished partners
        broken = np.isin(p.partner, gone_ids)
        p.partner[broken] = 0
        p.neck_t0[broken] = np.nan
        p.keep(~gone)

    def _grow(self, t0: float, t_span: float) -> None:
        cfg = self.config
        if cfg.growth_rate_nm_per_s <= 0 or len(self.pop) == 0:
            return
        tau = 0.5 * self.duration_s
        # integral of G exp(-t/tau) over [t0, t0 + t_span]
        dr = cfg.growth_rate_nm_per_s * tau * (math.exp(-t0 / tau) - math.exp(-(t0 + t_span) / tau))
        self.pop.a["r"] = self.pop.r + dr

    def _nucleate(self, t0: float, t_span: float, events: list[SimEvent], frame: int) -> None:
        tau = self.nucleation_tau_s
        expected = self.nucleation_rate0 * tau * (math.exp(-t0 / tau) - math.exp(-(t0 + t_span) / tau))
        count = int(self.rng.poisson(expected))
        if count == 0:
            return
        r0 = self.config.mean_diameter_nm / 2
        xy = self.rng.uniform(self.lo, self.hi, size=(count, 2))
        if len(self.pop):
            # no nucleus inside or touching an existing particle
            tree = cKDTree(np.stack([self.pop.x, self.pop.y], axis=1))
            dist, idx = tree.query(xy)
            clear = dist > (self.pop.r[idx] + r0) / self.px + 1.0
            xy = xy[clear]
        if xy.shape[0] == 0:
            return
        ids = self._add_particles(np.full(xy.shape[0], r0), xy[:, 0], xy[:, 1])
        events.extend(SimEvent(frame, "appear", (int(i),), None) for i in ids)

    def _move(self, t_span: float) -> None:
        cfg, p = self.config, self.pop
        if len(p) == 0:
            return
        x = p.x + p.vx * t_span
        y = p.y + p.vy * t_span
        if cfg.brownian_d_nm2_per_s > 0:
            d = cfg.brownian_d_nm2_per_s * 5.0 / np.maximum(p.r, 0.5)  # Stokes-Einstein
            step = np.sqrt(2.0 * d * t_span) / self.px
            x = x + step * self.rng.standard_normal(len(p))
            y = y + step * self.rng.standard_normal(len(p))
            d_rot = 3.0 * d / (4.0 * np.maximum(p.r, 0.5) ** 2)  # rad^2/s, sphere approximation
            p.a["theta"] = p.theta + np.sqrt(2 * d_rot * t_span) * self.rng.standard_normal(len(p))
        # reflect at the sample region's walls
        for coord, lo, hi in ((x, self.lo[0], self.hi[0]), (y, self.lo[1], self.hi[1])):
            span = hi - lo
            u = np.mod(coord - lo, 2 * span)
            coord[:] = lo + np.where(u > span, 2 * span - u, u)
        p.a["x"], p.a["y"] = x, y

    def _relax(self, t: float) -> None:
        p = self.pop
        active = ~np.isnan(p.relax_t0)
        if not active.any():
            return
        q = 1.0 + (p.q0[active] - 1.0) * np.exp(-(t - p.relax_t0[active]) / self.config.relax_time_s)
        done = q < 1.01
        q[done] = 1.0
        p.q[active] = q
        idx = np.flatnonzero(active)[done]
        p.solid[idx] = _SPHERE
        p.relax_t0[idx] = np.nan

    def _merge_ready(self, t: float, events: list[SimEvent], frame: int) -> None:
        """Pairs whose neck has grown for ``neck_duration_s`` become one particle."""
        p = self.pop
        ready = (p.partner > 0) & (t - p.neck_t0 >= self.config.neck_duration_s - 1e-9)
        ready &= p.id < p.partner  # each pair once
        if not ready.any():
            return
        ia = np.flatnonzero(ready)
        ib = p.index_of(p.partner[ia])
        va, vb = p.r[ia] ** 3, p.r[ib] ** 3
        r_new = np.cbrt(va + vb)
        wa = va / (va + vb)
        x = wa * p.x[ia] + (1 - wa) * p.x[ib]
        y = wa * p.y[ia] + (1 - wa) * p.y[ib]
        dx, dy = p.x[ib] - p.x[ia], p.y[ib] - p.y[ia]
        sep_nm = np.hypot(dx, dy) * self.px
        # elongated along the pair axis: semi-axis ~ 0.9 of the pair's half length
        a = 0.45 * (sep_nm + p.r[ia] + p.r[ib])
        q0 = np.clip((np.maximum(a, r_new) / r_new) ** 1.5, 1.0, 2.5)
        vx = wa * p.vx[ia] + (1 - wa) * p.vx[ib]
        vy = wa * p.vy[ia] + (1 - wa) * p.vy[ib]
        parents = np.stack([p.id[ia], p.id[ib]], axis=1)
        keep = np.ones(len(p), bool)
        keep[ia] = keep[ib] = False
        p.keep(keep)
        ids = self._add_particles(r_new, x, y, solid=np.where(q0 > 1.01, _ELLIPSOID, _SPHERE),
                                  q=q0, q0=q0, theta=np.arctan2(dy, dx),
                                  relax_t0=np.where(q0 > 1.01, t, np.nan), vx=vx, vy=vy)
        for (pa, pb), new in zip(parents, ids, strict=True):
            events.append(SimEvent(frame, "merge", (int(pa), int(pb)), int(new)))

    def _contacts(self, t: float) -> None:
        """Touching free particles start a neck (they keep their labels until merged)."""
        p = self.pop
        if len(p) < 2:
            return
        dims = solid_dimensions(p.solid, p.r, p.q)
        eq_r_px = np.sqrt(footprint_descriptors(p.solid, dims)["area_nm2"] / np.pi) / self.px
        tree = cKDTree(np.stack([p.x, p.y], axis=1))
        pairs = tree.query_pairs(2.0 * float(eq_r_px.max()), output_type="ndarray")
        if pairs.size == 0:
            return
        i, j = pairs[:, 0], pairs[:, 1]
        dist = np.hypot(p.x[i] - p.x[j], p.y[i] - p.y[j])
        touching = dist < (eq_r_px[i] + eq_r_px[j])
        free = p.partner == 0
        touching &= free[i] & free[j]
        order = np.argsort(dist[touching] / (eq_r_px[i] + eq_r_px[j])[touching], kind="stable")
        taken = np.zeros(len(p), bool)
        for a, b in pairs[touching][order]:  # few contacts per frame
            if taken[a] or taken[b]:
                continue
            taken[a] = taken[b] = True
            p.partner[a], p.partner[b] = p.id[b], p.id[a]
            p.neck_t0[a] = p.neck_t0[b] = t
            p.vx[a] = p.vy[a] = p.vx[b] = p.vy[b] = 0.0  # stuck together
            # they met between frames: back off along the axis to just touching
            dx, dy = p.x[b] - p.x[a], p.y[b] - p.y[a]
            d = math.hypot(dx, dy)
            if d > 1e-9:
                excess = 0.97 * (eq_r_px[a] + eq_r_px[b]) - d
                wa = p.r[b] ** 3 / (p.r[a] ** 3 + p.r[b] ** 3)  # the lighter moves more
                p.x[a] -= excess * wa * dx / d
                p.y[a] -= excess * wa * dy / d
                p.x[b] += excess * (1 - wa) * dx / d
                p.y[b] += excess * (1 - wa) * dy / d

    def _split(self, t_span: float, events: list[SimEvent], frame: int) -> None:
        rate = self.config.split_rate_per_s
        p = self.pop
        if rate <= 0 or len(p) == 0:
            return
        r_min = 3 * self.config.vanish_radius_px * self.px
        chosen = (self.rng.random(len(p)) < rate * t_span) & (p.partner == 0) & (p.r > r_min * 1.26)
        chosen &= np.isnan(p.relax_t0)
        if not chosen.any():
            return
        idx = np.flatnonzero(chosen)
        r_child = p.r[idx] / 2 ** (1 / 3)
        ang = self.rng.uniform(0, 2 * np.pi, idx.size)
        off = r_child / self.px * 1.15
        parents = p.id[idx]
        xs, ys = p.x[idx], p.y[idx]
        keep = np.ones(len(p), bool)
        keep[idx] = False
        p.keep(keep)
        ida = self._add_particles(r_child, xs + off * np.cos(ang), ys + off * np.sin(ang))
        idb = self._add_particles(r_child, xs - off * np.cos(ang), ys - off * np.sin(ang))
        for par, a, b in zip(parents, ida, idb, strict=True):
            events.append(SimEvent(frame, "split", (int(a), int(b)), int(par)))

    def _advance(self, frame: int, events: list[SimEvent]) -> None:
        """State from frame - 1 to frame."""
        t0 = (frame - 1) * self.dt
        t1 = frame * self.dt
        scen = self.config.scenario
        if scen == "ripening":
            self._ripen(self.dt, events, frame)
        self._grow(t0, self.dt)
        if scen == "nucleation":
            self._nucleate(t0, self.dt, events, frame)
        self._move(self.dt)
        if self.config.coalescence:
            self._merge_ready(t1, events, frame)
            self._relax(t1)
            self._contacts(t1)
        self._split(self.dt, events, frame)

    # ---- rendering --------------------------------------------------------------------
    def _render(self, frame: int, events: list[SimEvent]) -> SimFrame:
        cfg, p = self.config, self.pop
        size = cfg.size_px
        off = self.offsets[frame]
        x_img, y_img = p.x + off[0], p.y + off[1]
        dims = solid_dimensions(p.solid, p.r, p.q)
        desc = footprint_descriptors(p.solid, dims)
        self.thickness.fill(0.0)
        self.zbuffer.fill(0.0)
        labels = np.zeros((size, size), np.uint16)
        render_particles(self.thickness, labels, self.zbuffer, x_px=x_img, y_px=y_img,
                         solid=p.solid, dims_nm=dims, theta_rad=p.theta,
                         circumradius_nm=desc["circumradius_nm"], ids=p.id,
                         pixel_size_nm=self.px, supersample=cfg.supersample)
        in_neck = np.flatnonzero((p.partner > 0) & (p.id < p.partner))
        if in_neck.size:
            ib = p.index_of(p.partner[in_neck])
            progress = np.clip((frame * self.dt - p.neck_t0[in_neck]) / cfg.neck_duration_s
                               + 1.0 / 3.0, 0.0, 1.0)
            rn = progress * 0.6 * np.minimum(p.r[in_neck], p.r[ib])
            eq = np.sqrt(desc["area_nm2"] / np.pi) / self.px
            pairs = [(x_img[a], y_img[a], eq[a], p.id[a], x_img[b], y_img[b], eq[b], p.id[b],
                      rn_k) for a, b, rn_k in zip(in_neck, ib, rn, strict=True)]
            _render_necks(self.thickness, labels, pairs, self.px, cfg.supersample)
        m = np.array([[1.0, 0.0, -off[0] - self.tex_origin[0]],
                      [0.0, 1.0, -off[1] - self.tex_origin[1]]], dtype=np.float64)
        carbon = cv2.warpAffine(self.carbon, m, (size, size),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REFLECT)
        _, image = form_image(self.rng, self.thickness, carbon, self.dose_illum,
                              self.static_attenuation, particle_mfp_nm=cfg.particle_mfp_nm,
                              carbon_mfp_nm=100.0, bright_field=cfg.bright_field,
                              blur_sigma_px=cfg.blur_sigma_px)
        truth = self._truth_table(frame, labels, x_img, y_img, dims, desc, off)
        visible = set(truth["truth_id"].tolist())
        # only events someone watching this field of view could see: a particle involved
        # was in view in the previous frame or is in view now (drift margins hide some)
        seen = visible | self._prev_visible
        events = [e for e in events
                  if any(i in seen for i in e.ids) or (e.into_id is not None and e.into_id in seen)]
        self._prev_visible = visible
        return SimFrame(frame, frame * self.dt, image, labels, truth, events,
                        (float(off[0]), float(off[1])))

    def _truth_table(self, frame, labels, x_img, y_img, dims, desc, off) -> pd.DataFrame:
        p = self.pop
        n_ids = self.next_id
        area_px = np.bincount(labels.ravel(), minlength=n_ids)
        border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        on_edge = np.zeros(n_ids, bool)
        on_edge[border] = True
        a = area_px[p.id]
        vis = a > 0
        order = np.argsort(p.id[vis], kind="stable")
        sel = np.flatnonzero(vis)[order]
        nvis = sel.size
        table = pd.DataFrame({
            "frame": np.full(nvis, frame, np.int64),
            "time_s": np.full(nvis, frame * self.dt),
            "truth_id": p.id[sel],
            "x_px": x_img[sel],
            "y_px": y_img[sel],
            "diameter_nm": 2.0 * np.sqrt(desc["area_nm2"][sel] / np.pi),
            "aspect_ratio": desc["aspect_ratio"][sel],
            "roundness": desc["roundness"][sel],
            "shape": shape_class(p.solid[sel], desc["aspect_ratio"][sel]),
            "area_px": a[sel].astype(np.int64),
            "touches_edge": on_edge[p.id[sel]],
            "area_nm2": desc["area_nm2"][sel],
            "feret_max_nm": desc["feret_max_nm"][sel],
            "radius_nm": p.r[sel],
            "volume_nm3": 4.0 / 3.0 * np.pi * p.r[sel] ** 3,
            "solid": np.array(SOLIDS, dtype=object)[p.solid[sel]],
            "orientation_deg": np.rad2deg(np.mod(p.theta[sel], np.pi)),
            "dx_px": np.full(nvis, off[0]),
            "dy_px": np.full(nvis, off[1]),
        })
        return table.astype(TRUTH_COLUMNS)

    def frames(self) -> Iterator[SimFrame]:
        """Stream the movie one :class:`SimFrame` at a time (runs the dynamics once)."""
        for frame in range(self.config.n_frames):
            events: list[SimEvent] = []
            if frame > 0:
                self._advance(frame, events)
            yield self._render(frame, events)

    @property
    def total_volume_nm3(self) -> float:
        """Total particle volume in the sample region now, nm^3."""
        return float(4.0 / 3.0 * np.pi * np.sum(self.pop.r**3))


def simulate(config: SimulationConfig) -> Iterator[SimFrame]:
    """Stream a simulated movie, one :class:`SimFrame` at a time.

    Parameters
    ----------
    config : SimulationConfig
        Scenario, seed, size, optics and dynamics.

    Yields
    ------
    SimFrame
        Image (uint16 counts), labels (uint16, value == truth_id), truth table and events.

    Examples
    --------
    >>> cfg = SimulationConfig(scenario="coalescence", seed=1, n_frames=2, size_px=64)
    >>> [f.image.shape for f in simulate(cfg)]
    [(64, 64), (64, 64)]
    """
    return Simulation(config).frames()


class SimulatedSource:
    """A :class:`~etemlive.frames.FrameSource` over the simulator.

    Keeps the last frame's ground truth in ``last_truth``, ``last_labels``,
    ``last_events`` (and the whole last :class:`SimFrame` in ``last``).
    """

    pixel_size_source = "metadata"

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.name = f"sim-{config.scenario}-seed{config.seed}"
        self.pixel_size_nm: float = float(config.pixel_size_nm)
        self.frame_interval_s: float = float(config.frame_interval_s)
        self.n_frames: int = int(config.n_frames)
        self.metadata: dict[str, Any] = {}
        self.last: SimFrame | None = None
        self.last_truth: pd.DataFrame | None = None
        self.last_labels: np.ndarray | None = None
        self.last_events: list[SimEvent] = []
        self._closed = False

    def __iter__(self) -> Iterator[Frame]:
        sim = Simulation(self.config)
        self.metadata = sim.metadata
        for sf in sim.frames():
            if self._closed:
                return
            self.last, self.last_truth, self.last_labels = sf, sf.truth, sf.labels
            self.last_events = sf.events
            yield Frame(sf.index, sf.time_s, self.pixel_size_nm, sf.image, series=self.name)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> SimulatedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# Writing a movie with its ground truth
# --------------------------------------------------------------------------------------

def _imagej_kwargs(metadata: dict[str, Any], px: float, dt: float) -> dict[str, Any]:
    info = json.dumps({k: metadata[k] for k in ("pixel_size_nm", "frame_interval_s", "scenario",
                                                  "seed", "n_frames", "size_px")})
    return {
        "resolution": (1.0 / px, 1.0 / px),
        "metadata": {"axes": "TYX", "unit": "nm", "finterval": dt, "Info": info,
                     "pixel_size_nm": px, "frame_interval_s": dt},
    }


def write_simulation(path: str | Path, config: SimulationConfig) -> dict[str, Path]:
    """Write a simulated movie and its ground truth, streamed frame by frame.

    Files: ``path`` (ImageJ TIFF stack, uint16, pixel size in ``resolution`` with
    unit nm, ``finterval``; JSON with ``pixel_size_nm``, ``frame_interval_s``,
    ``scenario``, ``seed`` in the ImageJ ``Info`` property, and the same numbers as
    ``key=value`` lines of the ImageDescription), ``<stem>_labels.tif`` (uint16
    instance labels, same metadata), ``<stem>_truth.csv`` (:data:`TRUTH_COLUMNS`),
    ``<stem>_events.csv`` (frame, kind, ids space-separated, into_id) and
    ``<stem>_meta.json`` (resolved config and truth parameters).

    Returns
    -------
    dict
        ``{"movie", "labels", "truth", "events", "meta"}`` -> Path.
    """
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"simulation output must be a .tif file, got {str(path)!r}")
    if not path.parent.is_dir():
        raise InputError(f"output folder {str(path.parent)!r} does not exist: create it first")
    stem = path.with_suffix("")
    paths = {
        "movie": path,
        "labels": Path(f"{stem}_labels.tif"),
        "truth": Path(f"{stem}_truth.csv"),
        "events": Path(f"{stem}_events.csv"),
        "meta": Path(f"{stem}_meta.json"),
    }
    sim = Simulation(config)
    cfg = sim.config
    size, n = cfg.size_px, cfg.n_frames
    ij = _imagej_kwargs(sim.metadata, cfg.pixel_size_nm, cfg.frame_interval_s)
    label_queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=2)
    failure: list[BaseException] = []

    ended = threading.Event()

    def label_pages() -> Iterator[np.ndarray]:
        while (page := label_queue.get()) is not None:
            yield page
        ended.set()

    def write_labels() -> None:
        try:
            with tifffile.TiffWriter(paths["labels"], imagej=True) as tw:
                tw.write(label_pages(), shape=(n, size, size), dtype=np.uint16, **ij)
        except BaseException as err:  # handed to the main thread
            failure.append(err)
            while not ended.is_set() and label_queue.get() is not None:
                pass  # drain so the producer never blocks

    try:
        with open(paths["truth"], "w", newline="") as truth_f, \
                open(paths["events"], "w", newline="") as events_f:
            truth_f.write(",".join(TRUTH_COLUMNS) + "\n")
            events_f.write(",".join(EVENT_COLUMNS) + "\n")

            def movie_pages() -> Iterator[np.ndarray]:
                for sf in sim.frames():
                    label_queue.put(sf.labels)
                    sf.truth.to_csv(truth_f, header=False, index=False, float_format="%.8g",
                                    lineterminator="\n")
                    for ev in sf.events:
                        into = "" if ev.into_id is None else str(ev.into_id)
                        events_f.write(f"{ev.frame},{ev.kind},{' '.join(map(str, ev.ids))},{into}\n")
                    truth_f.flush()
                    events_f.flush()
                    yield sf.image

            writer = threading.Thread(target=write_labels, name="sim-labels-writer", daemon=True)
            writer.start()
            try:
                with tifffile.TiffWriter(path, imagej=True) as tw:
                    tw.write(movie_pages(), shape=(n, size, size), dtype=np.uint16, **ij)
            finally:
                label_queue.put(None)
                writer.join()
    except OSError as err:
        raise InputError(f"cannot write simulation to {str(path)!r}: {err.strerror or err}") from None
    if failure:
        raise InputError(f"cannot write {str(paths['labels'])!r}: {failure[0]}") from None
    meta = dict(sim.metadata)
    meta["files"] = {k: v.name for k, v in paths.items()}
    paths["meta"].write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
    return paths


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# --------------------------------------------------------------------------------------
# Random static scenes for U-Net training
# --------------------------------------------------------------------------------------

#: Parameters :func:`render_training_sample` draws; any of them can be overridden.
TRAINING_PARAMETERS: tuple[str, ...] = (
    "pixel_size_nm", "mean_diameter_nm", "size_spread", "scene", "coverage", "two_families",
    "family_ratio", "family_weight", "solids", "bright_field", "dose_e_per_px",
    "carbon_thickness_nm", "carbon_texture_nm", "particle_mfp_nm", "blur_sigma_px",
    "motion_blur_px", "motion_angle_deg", "illumination_gradient", "liquid_thickness_nm",
    "neck_fraction",
)
_SCENES = ("sparse", "medium", "dense", "pairs")
_SOLID_MIXES: dict[str, tuple[tuple[int, float], ...]] = {
    "round": ((_SPHERE, 0.8), (_ELLIPSOID, 0.2)),
    "faceted": ((_SPHERE, 0.1), (_CUBE, 0.25), (_OCTAHEDRON, 0.2), (_HEXPLATE, 0.25),
                (_TRIPLATE, 0.2)),
    "rods": ((_SPHERE, 0.3), (_ROD, 0.6), (_ELLIPSOID, 0.1)),
    "mixed": tuple((k, 1.0 / len(SOLIDS)) for k in range(len(SOLIDS))),
}


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _draw_training_params(rng: np.random.Generator, size_px: int,
                          overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(TRAINING_PARAMETERS))
    if unknown:
        raise InputError(f"render_training_sample: unknown parameter(s) {', '.join(unknown)}; "
                         f"known: {', '.join(TRAINING_PARAMETERS)}")
    p: dict[str, Any] = {}

    def pick(name: str, draw: Any) -> Any:
        # draw even when overridden so one override does not reshuffle the others
        value = draw()
        p[name] = overrides.get(name, value)
        return p[name]

    px = pick("pixel_size_nm", lambda: _log_uniform(rng, 0.05, 2.0))
    validate_pixel_size_nm(px, what="training pixel_size_nm")
    # particles between ~4 px and ~1/3 of the tile across, and within 1-100 nm
    d_lo = max(1.0, 4.0 * px)
    d_hi = max(d_lo * 1.01, min(100.0, size_px * px / 5.0))  # second family up to 1/3
    pick("mean_diameter_nm", lambda: _log_uniform(rng, d_lo, d_hi))
    pick("size_spread", lambda: float(rng.uniform(0.03, 0.35)))
    scene = pick("scene", lambda: _SCENES[int(rng.choice(4, p=[0.25, 0.3, 0.3, 0.15]))])
    if scene not in _SCENES:
        raise InputError(f"render_training_sample: scene must be one of {_SCENES}, got {scene!r}")
    cover = {"sparse": (0.01, 0.08), "medium": (0.08, 0.25), "dense": (0.3, 0.5),
             "pairs": (0.05, 0.2)}[scene]
    pick("coverage", lambda: float(rng.uniform(*cover)))
    pick("two_families", lambda: bool(rng.random() < (0.6 if scene == "dense" else 0.25)))
    pick("family_ratio", lambda: float(rng.uniform(1.6, 3.0)))
    pick("family_weight", lambda: float(rng.uniform(0.3, 0.8)))
    mix = pick("solids", lambda: ("round", "faceted", "rods", "mixed")[
        int(rng.choice(4, p=[0.45, 0.2, 0.15, 0.2]))])
    if mix not in _SOLID_MIXES:
        raise InputError(f"render_training_sample: solids must be one of {tuple(_SOLID_MIXES)}, "
                         f"got {mix!r}")
    pick("bright_field", lambda: bool(rng.random() < 0.65))
    pick("dose_e_per_px", lambda: _log_uniform(rng, 3.0, 3000.0))
    pick("carbon_thickness_nm", lambda: float(rng.uniform(3.0, 30.0)))
    pick("carbon_texture_nm", lambda: _log_uniform(rng, 0.2, 5.0))
    pick("particle_mfp_nm", lambda: _log_uniform(rng, 8.0, 80.0))
    pick("blur_sigma_px", lambda: float(rng.uniform(0.0, 2.0)))
    pick("motion_blur_px", lambda: float(rng.uniform(1.0, 6.0)) if rng.random() < 0.25 else 0.0)
    pick("motion_angle_deg", lambda: float(rng.uniform(0.0, 180.0)))
    pick("illumination_gradient", lambda: float(rng.uniform(0.0, 0.5)))
    pick("liquid_thickness_nm",
         lambda: float(rng.uniform(50.0, 300.0)) if rng.random() < 0.2 else 0.0)
    pick("neck_fraction", lambda: float(rng.uniform(0.0, 0.5)) if scene in ("dense", "pairs")
         else 0.0)
    return p


def _training_layout(rng: np.random.Generator, size_px: int, p: dict[str, Any]):
    """Particle radii (nm), centres (px), solids, shape parameters and orientations.

    Particles are drawn from a pool and placed in up to four vectorized rounds until
    the drawn coverage is reached: uniform positions, and in dense / pair scenes half
    of the later candidates right against an already placed particle (touching
    clusters); a candidate overlapping more than allowed is dropped.
    """
    px = p["pixel_size_nm"]
    mean_d = p["mean_diameter_nm"]
    area_px = size_px * size_px
    if p["two_families"]:
        big = mean_d * p["family_ratio"]
        w_small = p["family_weight"]
        mean_area = (w_small * mean_d**2 + (1 - w_small) * big**2) * math.pi / 4 / px**2
    else:
        mean_area = math.pi / 4 * (mean_d / px) ** 2
    count = min(max(1, int(round(p["coverage"] * area_px / mean_area))), 20_000)
    pool = 3 * count
    diam = mean_d * np.exp(p["size_spread"] * rng.standard_normal(pool))
    if p["two_families"]:
        fam = rng.random(pool) >= p["family_weight"]
        diam[fam] *= p["family_ratio"]
    # keep every particle between 4 px and a third of the tile across
    diam = np.clip(diam, 4.0 * px, size_px * px / 3.0)
    r = diam / 2.0
    codes, weights = zip(*_SOLID_MIXES[p["solids"]], strict=True)
    solid = np.asarray(codes)[rng.choice(len(codes), size=pool, p=np.asarray(weights))]
    q = np.ones(pool)
    q = np.where(solid == _ELLIPSOID, rng.uniform(1.1, 2.2, pool), q)
    q = np.where(solid == _ROD, rng.uniform(1.6, 6.0, pool), q)
    q = np.where((solid == _HEXPLATE) | (solid == _TRIPLATE), rng.uniform(1.5, 6.0, pool), q)
    theta = rng.uniform(0.0, 2 * np.pi, pool)
    dims = solid_dimensions(solid, r, q)
    desc = footprint_descriptors(solid, dims)
    circ_px = desc["circumradius_nm"] / px
    area_each_px = desc["area_nm2"] / px**2
    margin = 0.3 * float(circ_px.mean())
    xy = np.zeros((pool, 2))
    touching = p["scene"] in ("dense", "pairs")
    allowed = 0.85 if touching else 1.05
    # spacing radius: the bounding radius keeps gaps; for touching scenes the mean of
    # bounding and equivalent radii lets facets and corners meet
    reach_px = 0.5 * (circ_px + np.sqrt(area_each_px / np.pi)) if touching else circ_px
    kept = np.zeros(pool, bool)
    start, chunk = 0, count
    for round_ in range(6):
        stop = min(start + chunk, pool)
        if stop <= start:
            break
        cand = np.arange(start, stop)
        xy[cand] = rng.uniform(-margin, size_px + margin, size=(cand.size, 2))
        placed = np.flatnonzero(kept)
        glue = partners = None
        if touching and round_ > 0 and placed.size:
            # half of the candidates right against an already placed particle
            glue = cand[rng.random(cand.size) < 0.5]
            partners = placed[rng.integers(0, placed.size, glue.size)]
        elif p["scene"] == "pairs" and round_ == 0:
            # coalescing pairs: the second half of the first round against the first half
            half = cand.size // 2
            glue, partners = cand[half:2 * half], cand[:half]
        if glue is not None and glue.size:
            ang = rng.uniform(0, 2 * np.pi, glue.size)
            dist = (reach_px[glue] + reach_px[partners]) * rng.uniform(0.87, 1.0, glue.size)
            xy[glue] = xy[partners] + dist[:, None] * np.stack([np.cos(ang), np.sin(ang)], axis=1)
        kept[cand] = True
        kept &= _overlap_free(xy, reach_px, kept, new_from=start, allowed=allowed)
        start = stop
        deficit = p["coverage"] * area_px - float(area_each_px[kept].sum())
        chunk = int(deficit / max(float(area_each_px[kept].mean()) if kept.any() else mean_area,
                                  1.0))
        if chunk <= 0:
            break
    idx = np.flatnonzero(kept)
    return r[idx], xy[idx], solid[idx], q[idx], theta[idx], dims[idx], circ_px[idx]


def _overlap_free(xy: np.ndarray, circ_px: np.ndarray, kept: np.ndarray, *, new_from: int,
                  allowed: float) -> np.ndarray:
    """Mask keeping the particles of ``kept``, minus new ones (index >= ``new_from``)
    that overlap another by more than ``allowed`` x the sum of their bounding radii.

    Of two overlapping new particles the later one goes; particles placed in earlier
    rounds always stay. One vectorized pass over close pairs (cKDTree).
    """
    out = kept.copy()
    idx = np.flatnonzero(kept)
    if idx.size < 2:
        return out
    tree = cKDTree(xy[idx])
    pairs = tree.query_pairs(2.0 * float(circ_px[idx].max()) * allowed, output_type="ndarray")
    if pairs.size == 0:
        return out
    i, j = idx[pairs[:, 0]], idx[pairs[:, 1]]
    bad = np.hypot(*(xy[i] - xy[j]).T) < allowed * (circ_px[i] + circ_px[j])
    later = np.maximum(i[bad], j[bad])
    out[later[later >= new_from]] = False
    return out


def render_training_sample(
    rng: np.random.Generator, size_px: int = 256, **overrides: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One random static scene for segmentation training, with exact instance labels.

    Draws (or takes from ``overrides``, names in :data:`TRAINING_PARAMETERS`): pixel
    size 0.05-2 nm/px (log-uniform), mean particle diameter 1-100 nm limited so
    particles are 4 px to a third of the tile across, size spread, scene (sparse,
    medium, dense with touching particles, coalescing pairs), optional two size
    families, solids (round, faceted: cubes / octahedra / hexagonal and triangular
    plates, rods, mixed), bright or dark field, dose 3-3000 e-/px (log-uniform),
    carbon film thickness and texture, particle contrast (mass-thickness mean free
    path), detector blur, drift smear during the exposure, illumination gradient,
    an optional liquid layer, and necks between touching particles.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness; the same generator state gives the same sample.
    size_px : int
        Tile side, px.
    **overrides
        Fixed values for any drawn parameter.

    Returns
    -------
    image : ndarray of float32, shape (size_px, size_px)
        Raw detector counts (Poisson), not normalized.
    labels : ndarray of uint16, same shape
        Instance labels, 0 = background, 1..n (n = ``params["n_particles"]``).
    params : dict
        The parameters used, plus ``n_particles``.
    """
    _check_int("size_px", size_px, 16, 8192)
    p = _draw_training_params(rng, size_px, overrides)
    px = float(p["pixel_size_nm"])
    r, xy, solid, q, theta, dims, circ_px = _training_layout(rng, size_px, p)
    n = r.size
    thickness = np.zeros((size_px, size_px), np.float32)
    zbuffer = np.zeros_like(thickness)
    labels = np.zeros((size_px, size_px), np.uint16)
    ids = np.arange(1, n + 1, dtype=np.int64)
    render_particles(thickness, labels, zbuffer, x_px=xy[:, 0], y_px=xy[:, 1], solid=solid,
                     dims_nm=dims, theta_rad=theta, circumradius_nm=circ_px * px, ids=ids,
                     pixel_size_nm=px, supersample=3)
    if p["neck_fraction"] > 0 and n > 1:
        tree = cKDTree(xy)
        pairs = tree.query_pairs(2.0 * float(circ_px.max()), output_type="ndarray")
        if pairs.size:
            i, j = pairs[:, 0], pairs[:, 1]
            eq = np.sqrt(footprint_descriptors(solid, dims)["area_nm2"] / np.pi) / px
            close = np.hypot(*(xy[i] - xy[j]).T) < 1.1 * (eq[i] + eq[j])
            chosen = np.flatnonzero(close & (rng.random(close.size) < p["neck_fraction"]))[:64]
            neck_r = rng.uniform(0.2, 0.6, chosen.size) * np.minimum(r[i[chosen]], r[j[chosen]])
            necks = [(xy[a, 0], xy[a, 1], eq[a], a + 1, xy[b, 0], xy[b, 1], eq[b], b + 1, rn)
                     for a, b, rn in zip(i[chosen], j[chosen], neck_r, strict=True)]
            _render_necks(thickness, labels, necks, px, 3)
    carbon = carbon_thickness_field(rng, (size_px, size_px), px, mean_nm=p["carbon_thickness_nm"],
                                    texture_nm=p["carbon_texture_nm"])
    illum = illumination_field(rng, (size_px, size_px), p["illumination_gradient"])
    liquid = np.float32(p["liquid_thickness_nm"] / 300.0)
    _, counts = form_image(rng, thickness, carbon, (p["dose_e_per_px"] * illum).astype(np.float32),
                           liquid, particle_mfp_nm=p["particle_mfp_nm"], carbon_mfp_nm=100.0,
                           bright_field=p["bright_field"], blur_sigma_px=p["blur_sigma_px"],
                           motion_blur_px=p["motion_blur_px"],
                           motion_angle_rad=math.radians(p["motion_angle_deg"]))
    p["n_particles"] = int(np.count_nonzero(np.bincount(labels.ravel(), minlength=n + 1)[1:]))
    return counts.astype(np.float32), labels, p
