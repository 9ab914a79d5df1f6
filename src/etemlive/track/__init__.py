"""Particle tracking: Kalman motion models, Hungarian linking with drift compensation and
merge / split / appear / vanish events, and MOT evaluation against ground truth."""

from __future__ import annotations

from .kalman import ConstantVelocityModel, MotionModel, NoMotionModel
from .tracker import (
    EVENT_COLUMNS,
    TRACK_COLUMNS,
    Tracker,
    TrackerConfig,
    TrackStep,
    link,
    link_with_events,
    solve_gated_assignment,
    track_frames,
)

__all__ = [
    "ConstantVelocityModel",
    "EVENT_COLUMNS",
    "MotionModel",
    "NoMotionModel",
    "TRACK_COLUMNS",
    "TrackStep",
    "Tracker",
    "TrackerConfig",
    "link",
    "link_with_events",
    "solve_gated_assignment",
    "track_frames",
]
