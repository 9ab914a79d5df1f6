"""Motion models for the tracker: a constant-velocity Kalman filter and a no-motion model.

A motion model is stateless maths over *stacked* track states, so the tracker predicts
and updates every track of a frame in one vectorized call (no Python loop per track).
Each track still has exactly the filter of a filterpy ``KalmanFilter``:
:meth:`ConstantVelocityModel.make_filter` builds that per-track filter, and the batched
``predict`` / ``update`` apply its very matrices (F, Q, H, R) and its update equations
(Joseph form) to all tracks at once; ``tests/test_kalman.py`` checks both agree.

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

    States are arrays ``x`` of shape (n, state_dim) and covariances ``P`` of shape
    (n, state_dim, state_dim); positions are the first two state entries (x, y) in nm.
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

    # -- the batched protocol --------------------------------------------------------
    def init(self, positions_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions_nm = np.asarray(positions_nm, dtype=float).reshape(-1, 2)
        n = len(positions_nm)
        x = np.zeros((n, 4))
        x[:, :2] = positions_nm
        P = np.broadcast_to(np.diag(self._p0_diag()), (n, 4, 4)).copy()
        return x, P

    def predict(self, x: np.ndarray, P: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        F = self.transition(dt)
        x = x @ F.T
        P = F @ P @ F.T + self.process_noise(dt)
        return x, P

    def update(
        self, x: np.ndarray, P: np.ndarray, positions_nm: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if len(x) == 0:
            return x, P
        r2 = self.measurement_noise_nm**2
        # H picks (x, y), so H P H' is the top-left 2x2 block and P H' the first two columns.
        PHT = P[:, :, :2]
        S = P[:, :2, :2] + r2 * np.eye(2)
        K = PHT @ _inv2(S)
        y = np.asarray(positions_nm, dtype=float) - x[:, :2]
        x = x + np.einsum("nij,nj->ni", K, y)
        I_KH = np.broadcast_to(np.eye(4), P.shape).copy()
        I_KH[:, :, :2] -= K
        # Joseph form, as filterpy: P = (I-KH) P (I-KH)' + K R K'
        P = I_KH @ P @ I_KH.transpose(0, 2, 1) + r2 * (K @ K.transpose(0, 2, 1))
        return x, P


@lru_cache(maxsize=64)
def _cv_transition_cached(dt: float) -> np.ndarray:
    F = np.eye(4)
    F[0, 2] = F[1, 3] = dt
    F.setflags(write=False)
    return F


def _cv_transition(dt: float) -> np.ndarray:
    return _cv_transition_cached(dt)


def _inv2(S: np.ndarray) -> np.ndarray:
    """Inverse of a stack of 2x2 matrices (n, 2, 2), closed form."""
    a, b, c, d = S[:, 0, 0], S[:, 0, 1], S[:, 1, 0], S[:, 1, 1]
    det = a * d - b * c
    out = np.empty_like(S)
    out[:, 0, 0] = d / det
    out[:, 0, 1] = -b / det
    out[:, 1, 0] = -c / det
    out[:, 1, 1] = a / det
    return out


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
