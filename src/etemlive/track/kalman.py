"""Motion models for the tracker: a constant-velocity Kalman filter and a no-motion model.

A motion model is stateless maths over *stacked* track states, so the tracker predicts
and updates every track of a frame in one vectorized call (no Python loop per track).
Each track still has exactly the filter of a filterpy ``KalmanFilter``:
:meth:`ConstantVelocityModel.make_filter` builds that per-track filter, and the batched
``predict`` / ``update`` compute its very state and covariance (same F, Q, H, R) for all
tracks at once; ``tests/test_kalman.py`` checks both agree to 1e-10.

Positions are in nm in the drift-corrected stage frame; velocities in nm/s, or nm/frame
when the frame interval is unknown (``dt`` is then 1 frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, runtime_checkable

import numpy as np
from filterpy.kalman import KalmanFilter

from ..errors import InputError

__all__ = ["MotionModel", "ConstantVelocityModel", "NoMotionModel"]


@runtime_checkable
class MotionModel(Protocol):
    """What the tracker needs from a motion model (all methods vectorized over tracks).

    States are arrays ``x`` of shape (n, state_dim); positions are the first two state
    entries (x, y) in nm. Covariances ``P`` have one row per track in a layout the model
    chooses (the tracker only stacks, indexes and passes them back).
    """

    state_dim: int

    def init(self, positions_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New states and covariances for tracks born at ``positions_nm`` (n, 2)."""
        ...

    def predict(self, x: np.ndarray, P: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """States and covariances ``dt`` later (s, or frames when time is in frame units)."""
        ...

    def update(
        self, x: np.ndarray, P: np.ndarray, positions_nm: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """States and covariances after measuring ``positions_nm`` (n, 2)."""
        ...


def _check_noise(name: str, value: float, *, allow_zero: bool = True) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise InputError(
            f"{name} must be a finite number >= 0 (> 0 for the measurement noise), got {value!r}"
        )
    return value


@dataclass(frozen=True)
class ConstantVelocityModel:
    """Constant-velocity Kalman filter, state (x, y, vx, vy), one filterpy filter per track.

    Parameters
    ----------
    position_noise_nm : float
        Standard deviation of the unmodelled (Brownian-like) position change per second,
        nm; the process variance on position grows as ``position_noise_nm**2 * dt``.
    velocity_noise_nm_per_s : float
        Standard deviation of the random velocity change per second, nm/s; the process
        variance on velocity grows as ``velocity_noise_nm_per_s**2 * dt``.
    measurement_noise_nm : float
        Localization error of one centroid, nm (R = measurement_noise_nm**2 I).
    initial_speed_nm_per_s : float
        Prior standard deviation of a new track's velocity, nm/s (its mean is 0).

    When the tracker runs in frame units (unknown frame interval), ``dt`` is in frames and
    the "per second" values are read as "per frame".

    The covariance of every track stays ``kron([[p, c], [c, v]], I2)``: both axes start
    alike, F, Q, H and R treat them alike, so x and y never correlate and have equal
    variances. ``P`` is therefore kept as (n, 3) rows ``(p, c, v)``: position variance,
    position-velocity covariance and velocity variance per axis (nm^2, nm^2/s, nm^2/s^2);
    :meth:`full_covariance` gives filterpy's 4x4 matrices. A frame's predict and update
    are then a few column operations, whatever the number of tracks.
    """

    position_noise_nm: float = 1.0
    velocity_noise_nm_per_s: float = 0.5
    measurement_noise_nm: float = 0.5
    initial_speed_nm_per_s: float = 1.0

    state_dim = 4

    def __post_init__(self) -> None:
        _check_noise("position_noise_nm", self.position_noise_nm)
        _check_noise("velocity_noise_nm_per_s", self.velocity_noise_nm_per_s)
        _check_noise("measurement_noise_nm", self.measurement_noise_nm, allow_zero=False)
        _check_noise("initial_speed_nm_per_s", self.initial_speed_nm_per_s)

    # -- the per-track filterpy filter (the reference the batched maths reproduces) ----
    def make_filter(self, position_nm: tuple[float, float], dt: float = 1.0) -> KalmanFilter:
        """The filterpy ``KalmanFilter`` of one track born at ``position_nm``, step ``dt``."""
        kf = KalmanFilter(dim_x=4, dim_z=2)
        kf.x = np.array([[position_nm[0]], [position_nm[1]], [0.0], [0.0]])
        kf.P = np.diag(self._p0_diag())
        kf.F = self.transition(dt)
        kf.Q = self.process_noise(dt)
        kf.H = self.measurement_matrix()
        kf.R = np.eye(2) * self.measurement_noise_nm**2
        return kf

    def transition(self, dt: float) -> np.ndarray:
        """State transition F (4, 4) for a step of ``dt``."""
        return _cv_transition(float(dt))

    def process_noise(self, dt: float) -> np.ndarray:
        """Process noise Q (4, 4) for a step of ``dt``."""
        q_pos = self.position_noise_nm**2 * dt
        q_vel = self.velocity_noise_nm_per_s**2 * dt
        return np.diag([q_pos, q_pos, q_vel, q_vel])

    @staticmethod
    def measurement_matrix() -> np.ndarray:
        """H (2, 4): we measure the position only."""
        return np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])

    def _p0_diag(self) -> list[float]:
        r2 = self.measurement_noise_nm**2
        v2 = self.initial_speed_nm_per_s**2
        return [r2, r2, v2, v2]

    @staticmethod
    def full_covariance(P: np.ndarray) -> np.ndarray:
        """The (n, 4, 4) covariances (filterpy's ``P``) of compact rows ``(p, c, v)``."""
        P = np.asarray(P, dtype=float).reshape(-1, 3)
        out = np.zeros((len(P), 4, 4))
        for axis in (0, 1):
            out[:, axis, axis] = P[:, 0]
            out[:, axis, axis + 2] = out[:, axis + 2, axis] = P[:, 1]
            out[:, axis + 2, axis + 2] = P[:, 2]
        return out

    # -- the batched protocol --------------------------------------------------------
    def init(self, positions_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions_nm = np.asarray(positions_nm, dtype=float).reshape(-1, 2)
        n = len(positions_nm)
        x = np.zeros((n, 4))
        x[:, :2] = positions_nm
        P = np.empty((n, 3))
        P[:] = (self.measurement_noise_nm**2, 0.0, self.initial_speed_nm_per_s**2)
        return x, P

    def predict(self, x: np.ndarray, P: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        # x F' and F P F' + Q; per axis F P F' is linear in (p, c, v):
        # p + 2 dt c + dt^2 v, c + dt v, v
        Ft, A, q = _cv_step(float(dt), self.position_noise_nm, self.velocity_noise_nm_per_s)
        return x @ Ft, P @ A + q

    def update(
        self, x: np.ndarray, P: np.ndarray, positions_nm: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if len(x) == 0:
            return x, P
        # S = p + r^2 (the same on both axes); gains K = (p, c) / S per axis. The
        # covariance (I - KH) P, i.e. (p - Kp p, c - Kp c, v - Kv c), equals filterpy's
        # Joseph form for this optimal gain. Columns are gathered with take (contiguous
        # copies): broadcasting over strided views costs more than the maths here.
        S = P[:, 0] + self.measurement_noise_nm**2
        gain = P.take(_GAIN4, axis=1) / S[:, None]  # (Kp, Kp, Kv, Kv): x, y, vx, vy
        pos = np.asarray(positions_nm, dtype=float)
        y = pos.take(_XY4, axis=1) - x.take(_XY4, axis=1)  # innovation (dx, dy, dx, dy)
        return x + gain * y, P - gain.take(_GAIN_OF, axis=1) * P.take(_TIMES, axis=1)


#: (p, p, c, c): the gain of each state entry is its covariance with the position / S
_GAIN4 = np.array([0, 0, 1, 1])
#: the innovation component each state entry is corrected with
_XY4 = np.array([0, 1, 0, 1])
#: (I - KH) P per axis: entry k of P loses gain[_GAIN_OF[k]] x P[_TIMES[k]]
_GAIN_OF = np.array([0, 0, 2])
_TIMES = np.array([0, 1, 1])


@lru_cache(maxsize=64)
def _cv_transition_cached(dt: float) -> np.ndarray:
    F = np.eye(4)
    F[0, 2] = F[1, 3] = dt
    F.setflags(write=False)
    return F


def _cv_transition(dt: float) -> np.ndarray:
    return _cv_transition_cached(dt)


@lru_cache(maxsize=64)
def _cv_step(
    dt: float, position_noise_nm: float, velocity_noise_nm_per_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F' (4, 4), the (p, c, v) propagation matrix A (3, 3) and the process noise row q
    (3,) of a step of ``dt``: the same every frame of a movie, so built once (read-only)."""
    A = np.array([[1.0, 0.0, 0.0], [2.0 * dt, 1.0, 0.0], [dt * dt, dt, 1.0]])
    q = np.array([position_noise_nm**2 * dt, 0.0, velocity_noise_nm_per_s**2 * dt])
    Ft = _cv_transition_cached(dt).T
    for a in (A, q):
        a.setflags(write=False)
    return Ft, A, q


@dataclass(frozen=True)
class NoMotionModel:
    """Predicts that a particle stays where it was last seen (state (x, y), no covariance).

    Useful in tests and for slow, diffusing particles; the tracker's gate alone decides.
    """

    state_dim = 2

    def init(self, positions_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(positions_nm, dtype=float).reshape(-1, 2).copy()
        return x, np.zeros((len(x), 2, 2))

    def predict(self, x: np.ndarray, P: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        return x, P

    def update(
        self, x: np.ndarray, P: np.ndarray, positions_nm: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(positions_nm, dtype=float).reshape(-1, 2).copy(), P
