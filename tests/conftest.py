"""Shared test settings: strict numpy errors, offscreen Qt, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Qt windows in tests are real but offscreen (no display on CI).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

#: ../shared/data beside the checkout (real external images; never copied into the repo).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _numpy_errors_raise():
    """Numerical warnings (overflow, invalid, divide) fail tests instead of passing silently."""
    with np.errstate(all="raise", under="ignore"):
        yield


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA
