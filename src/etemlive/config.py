"""The run configuration: one typed, validated object, saved beside the results.

``config.json`` in every output folder holds it, and :func:`RunConfig.load` reads it
back, so a run can be repeated with the same settings.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import InputError

CONFIG_VERSION = 1
BACKENDS = ("auto", "tensorrt", "onnx", "torch", "classical")
#: Outline conventions of the U-Net backends (``--outline``): the network's edge, or half
#: of each particle's contrast (as drawn by hand); see docs/model.md "Outline width".
OUTLINES = ("network", "half-contrast")
DROP_POLICIES = ("drop-oldest", "lossless")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Settings of one run (``analyze``, ``live`` or ``demo``), validated at start-up.

    Attributes
    ----------
    mode : str
        ``analyze``, ``live`` or ``demo``.
    input : str
        Movie path or stream endpoint.
    out_dir : str
        Output folder.
    backend : str
        Segmentation backend, one of :data:`BACKENDS`.
    pixel_size_nm : float or None
        The user's pixel size (nm/px); None = from metadata.
    scale_bar_nm : float or None
        Length of a burned-in scale bar (nm), when the user gives it.
    frame_interval_s : float or None
        The user's frame interval (s); None = from metadata.
    save_labels : bool
        Write labels.tif.
    track : bool
        Link particles over time.
    policy : str
        Live queue policy when analysis is slower than the camera.
    workers : int or None
        Segmentation workers (None = automatic).
    outline : str
        U-Net outline convention, one of :data:`OUTLINES`.
    version : int
        Format version of this object.
    """

    mode: str
    input: str
    out_dir: str
    backend: str = "auto"
    pixel_size_nm: float | None = None
    scale_bar_nm: float | None = None
    frame_interval_s: float | None = None
    save_labels: bool = False
    track: bool = True
    policy: str = "drop-oldest"
    workers: int | None = None
    outline: str = "network"
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.mode not in ("analyze", "live", "demo"):
            raise InputError(f"unknown mode {self.mode!r}")
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.outline not in OUTLINES:
            raise InputError(f"unknown outline {self.outline!r}: choose {' or '.join(OUTLINES)}")
        if self.policy not in DROP_POLICIES:
            raise InputError(f"unknown policy {self.policy!r}: choose {' or '.join(DROP_POLICIES)}")
        for name in ("pixel_size_nm", "scale_bar_nm", "frame_interval_s"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value <= 0):
                option = "--" + name.replace("_", "-")
                raise InputError(f"{option} must be positive and finite, got {value!r}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be >= 1, got {self.workers}")
        if self.version != CONFIG_VERSION:
            raise InputError(f"config version {self.version} is not supported (expected {CONFIG_VERSION})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        from .record import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read config {str(path)!r}: {err}") from None
        if not isinstance(data, dict):
            raise InputError(f"config {str(path)!r} is not a JSON object")
        return cls.from_dict(data)
