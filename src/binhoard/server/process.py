"""A mariadbd process identified by its defaults file: start, find, stop (no systemd).

The process is recognised by its command line (``--defaults-file`` naming the file), never
by a pid file alone: a pid file can outlive its server and the pid be reused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from binhoard.domain.errors import BinhoardError, ServerError

DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 120.0


def find_executable(*names: str) -> str:
    for name in names:
        for directory in (*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/sbin"):
            candidate = Path(directory) / name
            if directory and candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise ServerError(
        f"{names[0]} not found: install MariaDB 10.11 or 11.8 (scripts/install does it: "
        "apt-get install mariadb-server mariadb-client mariadb-backup)"
    )


class ServerProcess:
    """The ``mariadbd --defaults-file=<cnf>`` of one configuration file."""

    def __init__(self, cnf: Path, *, log_file: Path | None = None) -> None:
        self.cnf = cnf.resolve()
        self.log_file = log_file or self.cnf.with_name("mariadbd.out")

    def pid(self) -> int | None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._is_ours(int(entry.name)):
                return int(entry.name)
        return None

    def _is_ours(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return f"--defaults-file={self.cnf}".encode() in cmdline

    def start(
        self,
        ready: Callable[[], bool],
        *,
        timeout: float = DEFAULT_START_TIMEOUT,
        describe_failure: Callable[[], str] = lambda: "",
    ) -> int:
        """Starts mariadbd detached (it outlives this process) and waits until ``ready()``."""
        pid = self.pid()
        if pid is not None:
            self._wait(ready, timeout, None, describe_failure)
            return pid
        mariadbd = find_executable("mariadbd", "mysqld")
        with self.log_file.open("ab") as out:
            process = subprocess.Popen(
                [mariadbd, f"--defaults-file={self.cnf}"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # not killed by the terminal's signals to the CLI
                cwd=self.cnf.parent,
            )
        try:
            self._wait(ready, timeout, process, describe_failure)
        except BinhoardError as exc:
            if exc.retryable or process.poll() is not None:
                self._abandon(process)
            # Otherwise the server is up and answered with a final error (access denied):
            # it stays up, as it would have had binhoard found it running.
            raise
        except BaseException:
            self._abandon(process)
            raise
        return process.pid

    @staticmethod
    def _abandon(process: subprocess.Popen[bytes]) -> None:
        """Never leave a half-started server behind."""
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()

    def _wait(
        self,
        ready: Callable[[], bool],
        timeout: float,
        process: subprocess.Popen[bytes] | None,
        describe_failure: Callable[[], str],
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise ServerError(
                    f"mariadbd --defaults-file={self.cnf} exited with {process.returncode} "
                    f"while starting\n{describe_failure()}"
                )
            if ready():
                return
            time.sleep(0.05)
        raise ServerError(
            f"mariadbd --defaults-file={self.cnf} did not answer within {timeout:.0f} s\n"
            f"{describe_failure()}"
        )

    def wait_until(
        self,
        ready: Callable[[], bool],
        *,
        timeout: float = DEFAULT_START_TIMEOUT,
        describe_failure: Callable[[], str] = lambda: "",
    ) -> None:
        """Waits for a server started by someone else (``start_command``) to be ready."""
        self._wait(ready, timeout, None, describe_failure)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> bool:
        """SIGTERM to this server's pid, then waits. Returns False if it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if wait_gone(pid, timeout):
            return True
        # A clean shutdown did not finish in time; the caller asked for it to stop.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not wait_gone(pid, 10):
            raise ServerError(f"mariadbd (pid {pid}) of {self.cnf} does not stop")
        return True

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 10)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # Reap it if it is our child (tests start servers from this process).
        with contextlib.suppress(ChildProcessError):
            waited, _ = os.waitpid(pid, os.WNOHANG)
            if waited == pid:
                return True
        if not Path(f"/proc/{pid}/cmdline").exists() or _is_zombie(pid):
            return True
        time.sleep(0.05)
    return False


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True
