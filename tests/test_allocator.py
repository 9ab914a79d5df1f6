"""keep_freed_memory: frame-sized buffers freed and allocated again do not fault their
pages in again (the reason it exists)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Frame-like work in a fresh interpreter: a few 8-16 MiB arrays made and freed 20 times;
# prints the page faults of the 20 repetitions.
_WORK = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from etemlive.allocator import keep_freed_memory
    if sys.argv[1] == "1":
        assert keep_freed_memory()
    def frame():
        a = np.ones((1024, 1024)); b = np.ones((1024, 1024), np.float32)
        c = a * 2 + b; d = np.ones((2048, 1024))
        return float(c[0, 0] + d[0, 0])
    frame()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        frame()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _page_faults(tuned: bool) -> int:
    out = subprocess.run([sys.executable, "-c", _WORK, "1" if tuned else "0"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")


@glibc
def test_tuned_process_reuses_freed_frame_buffers():
    # 20 frames x ~40 MiB of fresh pages would be ~200 000 faults; kept memory: ~none
    assert _page_faults(tuned=True) < 1000


@glibc
def test_default_allocator_faults_where_tuned_does_not():
    # the difference the setting makes on this C library (not a property of ours, but
    # it shows the test above measures something)
    assert _page_faults(tuned=False) > 10 * max(_page_faults(tuned=True), 100)

