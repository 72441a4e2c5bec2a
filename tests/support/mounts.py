"""Small tmpfs mounts for tests of real file-system faults (a datadir that is a mount
point, a full relay or temporary directory). Needs root and a kernel that lets this
process mount; CI runs as root. Where mounting is impossible the test is skipped, saying
why."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """Mounts a tmpfs of ``size`` bytes on ``path`` (created if missing); unmounts after
    (lazily if something still holds it open, so that cleanup never fails a test)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    result = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def resize(path: Path, size: int) -> None:
    """Frees space the way an operator would: the tmpfs on ``path`` grows to ``size``."""
    result = _mount("-o", f"remount,size={size}", str(path))
    assert result.returncode == 0, result.stderr
