"""The allocator tuning takes effect on glibc (the only C library binhoard ships for)."""

from __future__ import annotations

import platform

import pytest

from binhoard.allocator import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_the_thresholds() -> None:
    assert keep_freed_memory()
    assert keep_freed_memory()  # idempotent: the CLI and a bench may both apply it
