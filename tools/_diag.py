"""Shared entry point of the ``tools/diag_*.py`` scripts."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from etemlive.errors import EtemliveError


def run_tool(main: Callable[[], int], script: str) -> None:
    """Run ``main`` and exit with its code; a missing or corrupt input (an
    :class:`EtemliveError`, e.g. the ONNX file) exits 1 with one line, not a traceback."""
    try:
        code = main()
    except EtemliveError as err:
        print(f"{Path(script).name}: error: {err}", file=sys.stderr)
        code = 1
    raise SystemExit(code)
