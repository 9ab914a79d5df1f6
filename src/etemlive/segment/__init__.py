"""Segmentation: image -> instance labels (0 = background, 1..N particles)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Segmenter(Protocol):
    """Turns one frame into instance labels.

    ``name`` is the backend (``classical``, ``onnx``, ``torch``, ``tensorrt``) and
    ``device`` says where it runs (``cpu``, ``cuda:0 NVIDIA H100 ...``).
    ``segment`` returns an int32 array of the image's shape, 0 = background and
    each particle a distinct positive value.
    """

    name: str
    device: str

    def segment(self, image: np.ndarray, pixel_size_nm: float) -> np.ndarray: ...
