"""Running the ``binhoard`` command line as an operator does: a child process of this
checkout's code, its output captured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from binhoard.cli import main

ROOT = Path(__file__).resolve().parents[2]


def cli_env() -> dict[str, str]:
    """The environment a child ``python -m binhoard`` needs to run this checkout."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def binhoard_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "binhoard", *args]


def run_binhoard(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Runs ``binhoard ARGS`` to its end; the caller checks ``returncode``."""
    return run_in_checkout(binhoard_command(*args), timeout=timeout)


def run_in_checkout(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Runs ``command`` in this checkout, with its code, to its end; the caller checks
    ``returncode``."""
    return subprocess.run(
        command,
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``binhoard ARGV`` in this process, as the command line runs it: (exit status,
    stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
