"""The two tested MariaDB series side by side, for the tests that cross them: the host's
own, and the other one in its Debian root (``scripts/server-root``), as CI has both."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import ROOT, run_in_checkout

SERVERS = ("mariadb-10.11", "mariadb-11.8")  # older series first


@functools.cache
def host_server() -> str:
    result = subprocess.run(
        [ROOT / "scripts" / "host-server"], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def series(server: str) -> str:
    """``mariadb-11.8`` -> ``11.8``."""
    return server.removeprefix("mariadb-")


def other_root() -> str:
    """The other series' name, once its root is built (or found built: ``.ci/run`` builds
    it before the suite); skips where no root can be entered."""
    inside = os.environ.get("BINHOARD_SERVER_ROOT")
    if inside:
        # The host's suite runs these, in both directions; a root cannot enter another.
        pytest.skip(f"runs from the host's suite, not inside the {inside} root")
    if os.geteuid() != 0:
        pytest.skip("entering a Debian root (scripts/server-root) needs root, as in CI")
    other = next(s for s in SERVERS if s != host_server())
    result = run_in_checkout([str(ROOT / "scripts" / "server-root"), "build", other], timeout=900)
    assert result.returncode == 0, f"scripts/server-root build {other}:\n{result.stderr}"
    return other


def run_with(
    server: str, script: str, *, binds: tuple[Path, ...] = (), timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Runs the shell ``script`` where ``server``'s MariaDB is: on this host, or inside
    its root with ``binds`` visible there, in this checkout. There ``$PY`` is a Python
    with binhoard's dependencies and this checkout's code, ``$BH`` its binhoard."""
    if server == host_server():
        python, command = sys.executable, ["sh", "-c"]
    else:
        # The root's venv (scripts/server-root puts it first on PATH and src on PYTHONPATH).
        mounts = [arg for path in binds for arg in ("--bind", str(path))]
        python = "python"
        command = [str(ROOT / "scripts" / "server-root"), "run", *mounts, server, "sh", "-c"]
    command.append(f'PY="{python}"\nBH="$PY -m binhoard"\n{script}')
    return run_in_checkout(command, timeout=timeout)
