"""Motion models: the batched Kalman maths equals one filterpy filter per track."""

from __future__ import annotations

import numpy as np
import pytest

from etemlive.errors import InputError
from etemlive.track.kalman import ConstantVelocityModel, MotionModel, NoMotionModel


def test_batched_cv_model_equals_filterpy_per_track():
    rng = np.random.default_rng(1)
    model = ConstantVelocityModel(
        position_noise_nm=0.7, velocity_noise_nm_per_s=0.3, measurement_noise_nm=0.4
    )
    dt = 0.5
    starts = rng.uniform(0, 100, (5, 2))
    filters = [model.make_filter(tuple(p), dt=dt) for p in starts]
    x, P = model.init(starts)
    for step in range(8):
        z = rng.uniform(0, 100, (5, 2))
        x, P = model.predict(x, P, dt)
        # some tracks missed now and then (predicted without an update), as in a gap
        seen = rng.random(5) < 0.7 if step else np.ones(5, bool)
        x[seen], P[seen] = model.update(x[seen], P[seen], z[seen])
        for kf, zi, s in zip(filters, z, seen, strict=True):
            kf.predict()
            if s:
                kf.update(zi)
    np.testing.assert_allclose(x, np.stack([kf.x.ravel() for kf in filters]), rtol=1e-10)
    np.testing.assert_allclose(
        model.full_covariance(P), np.stack([kf.P for kf in filters]), rtol=1e-10, atol=1e-12
    )


def test_cv_model_learns_a_constant_velocity():
    model = ConstantVelocityModel(
        position_noise_nm=0.01,
        velocity_noise_nm_per_s=0.01,
        measurement_noise_nm=0.1,
        initial_speed_nm_per_s=10.0,
    )
    x, P = model.init(np.array([[0.0, 0.0]]))
    for k in range(1, 20):
        x, P = model.predict(x, P, 1.0)
        x, P = model.update(x, P, np.array([[2.0 * k, -1.0 * k]]))
    np.testing.assert_allclose(x[0, 2:], [2.0, -1.0], atol=0.05)
    # the prediction one step ahead continues the line
    x1, _ = model.predict(x, P, 1.0)
    np.testing.assert_allclose(x1[0, :2], [40.0, -20.0], atol=0.2)


def test_cv_model_transition_uses_dt():
    F = ConstantVelocityModel().transition(0.25)
    assert F[0, 2] == 0.25 and F[1, 3] == 0.25 and F[0, 0] == 1.0


def test_no_motion_model():
    model = NoMotionModel()
    assert isinstance(model, MotionModel)
    x, P = model.init(np.array([[1.0, 2.0], [3.0, 4.0]]))
    x2, _ = model.predict(x, P, 10.0)
    np.testing.assert_array_equal(x2, x)
    x3, _ = model.update(x2, P, np.array([[5.0, 6.0], [7.0, 8.0]]))
    np.testing.assert_array_equal(x3, [[5.0, 6.0], [7.0, 8.0]])


def test_empty_update_is_fine():
    model = ConstantVelocityModel()
    x, P = model.init(np.zeros((0, 2)))
    x, P = model.predict(x, P, 1.0)
    x, P = model.update(x, P, np.zeros((0, 2)))
    assert x.shape == (0, 4) and model.full_covariance(P).shape == (0, 4, 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"position_noise_nm": -1.0},
        {"velocity_noise_nm_per_s": float("nan")},
        {"measurement_noise_nm": 0.0},
    ],
)
def test_cv_model_rejects_bad_noise(kwargs):
    with pytest.raises(InputError, match="must be a finite number"):
        ConstantVelocityModel(**kwargs)
