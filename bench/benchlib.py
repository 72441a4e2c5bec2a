"""What the benchmarks share: warming the VM's memory before a timed step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def warm_memory(directory: Path, size: int) -> None:
    """Writes ``size`` bytes to a scratch file in ``directory`` and deletes it, untimed.

    The development machines are virtual machines that hand free memory back to the host
    a few seconds after it is freed (free page reporting); touching such memory again
    costs ~2 CPU s per GiB more (writing 1 GiB into the page cache: 0.2 s just after a
    deletion, 1.9-2.3 s after 15 s of idleness). Without this, whichever step runs right
    after another step's files were deleted gets the cheap memory (the first restore of a
    round paid up to 2 s more than the second, whichever tool it was).
    """
    path = directory / "warm-up.tmp"
    block = bytes(MIB)
    with path.open("wb") as out:
        for _ in range(size // MIB):
            out.write(block)
    path.unlink()


def run_in_child(script: str, spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Runs ``script --child SPEC`` in a fresh process (``env`` added to the
    environment), so that what it measures (peak RSS above all) is its own; returns the
    JSON object it prints last."""
    done = subprocess.run(
        [sys.executable, script, "--child", json.dumps(spec)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} {spec.get('mode')} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
