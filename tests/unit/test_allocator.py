"""The allocator tuning takes effect on glibc (the only C library binhoard ships for), and
what it keeps can be given back (the daemon does, after a backup)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from binhoard.allocator import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_the_thresholds() -> None:
    assert keep_freed_memory()
    assert keep_freed_memory()  # idempotent: the CLI and a bench may both apply it


# In a process of its own: what this one's allocator holds is not the test's business.
_KEPT_THEN_RELEASED = """
import sys
from binhoard.allocator import keep_freed_memory, release_freed_memory

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")

assert keep_freed_memory()
before = rss_mib()
blocks = [bytearray(1024 * 1024) for _ in range(48)]  # below the mmap threshold: the heap
del blocks
kept = rss_mib()
assert release_freed_memory()
print(round(kept - before), round(rss_mib() - before))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_buffers_are_kept_until_released() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _KEPT_THEN_RELEASED], check=True, capture_output=True, text=True
    ).stdout
    kept, released = (int(n) for n in out.split())
    assert kept >= 40, out  # the 48 MiB freed stay in the process (under TRIM_THRESHOLD)
    assert released <= 8, out  # and go back to the kernel once released
