"""A MariaDB instance living in one directory: install, start, stop, query.

Used by ``binhoard sandbox`` (the quickstart and people trying binhoard), by the
integration tests as their fixture, and by restores that need a server started
directly (no systemd, no Docker). ``mariadbd`` is started with ``--defaults-file``
as its first argument so Debian's ``/etc/mysql/my.cnf`` never leaks in.

Layout of a sandbox directory::

    sandbox.json      port and server_id chosen at creation (kept across restarts)
    my.cnf            the only configuration the server reads
    data/             datadir
    binlogs/          binlog.NNNNNN and binlog.index (outside the datadir, so that a
                      restore can move a backup into an empty datadir)
    relay/            relay logs, for point-in-time apply
    tmp/  mariadbd.sock  mariadbd.pid  error.log
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from binhoard.domain.errors import SandboxError

# Settings binhoard requires of a server it backs up and restores into.
REQUIRED_SETTINGS: Mapping[str, str] = {
    "log_bin": "ON",
    "binlog_format": "ROW",
    "gtid_strict_mode": "ON",
    "log_slave_updates": "ON",
}

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 120.0


def find_executable(*names: str) -> str:
    for name in names:
        for directory in (*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/sbin"):
            candidate = Path(directory) / name
            if directory and candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise SandboxError(
        f"{names[0]} not found: install MariaDB 10.11 (scripts/install does it: "
        "apt-get install mariadb-server mariadb-client mariadb-backup)"
    )


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class SandboxStatus:
    name: str
    directory: Path
    running: bool
    pid: int | None
    port: int
    server_id: int
    socket: Path

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "directory": str(self.directory),
            "running": self.running,
            "pid": self.pid,
            "port": self.port,
            "server_id": self.server_id,
            "socket": str(self.socket),
        }


class Sandbox:
    """One MariaDB instance in ``directory``; nothing of it lives anywhere else."""

    def __init__(
        self,
        directory: Path | str,
        *,
        server_id: int | None = None,
        port: int | None = None,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory).resolve()
        self._requested_server_id = server_id
        self._requested_port = port
        self._options = dict(options or {})

    # --- paths -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def cnf(self) -> Path:
        return self.directory / "my.cnf"

    @property
    def datadir(self) -> Path:
        return self.directory / "data"

    @property
    def binlog_dir(self) -> Path:
        return self.directory / "binlogs"

    @property
    def binlog_prefix(self) -> Path:
        return self.binlog_dir / "binlog"

    @property
    def relay_dir(self) -> Path:
        return self.directory / "relay"

    @property
    def socket(self) -> Path:
        return self.directory / "mariadbd.sock"

    @property
    def pid_file(self) -> Path:
        return self.directory / "mariadbd.pid"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    @property
    def _meta_file(self) -> Path:
        return self.directory / "sandbox.json"

    # --- identity (persisted so that a restart keeps port and server_id) ---------
    def _meta(self) -> dict[str, int]:
        try:
            data = json.loads(self._meta_file.read_text())
        except FileNotFoundError:
            return {}
        return {"port": int(data["port"]), "server_id": int(data["server_id"])}

    @property
    def port(self) -> int:
        return self._meta().get("port") or self._requested_port or 0

    @property
    def server_id(self) -> int:
        return self._meta().get("server_id") or self._requested_server_id or 0

    @property
    def exists(self) -> bool:
        return self._meta_file.exists() and (self.datadir / "mysql").is_dir()

    def _write_cnf(self, port: int, server_id: int) -> None:
        settings: dict[str, str] = {
            "datadir": str(self.datadir),
            "socket": str(self.socket),
            "port": str(port),
            "bind-address": "127.0.0.1",
            "pid-file": str(self.pid_file),
            "log-error": str(self.error_log),
            "tmpdir": str(self.directory / "tmp"),
            "server_id": str(server_id),
            "log_bin": str(self.binlog_prefix),
            "log_bin_index": f"{self.binlog_prefix}.index",
            "binlog_format": "ROW",
            "gtid_strict_mode": "ON",
            "log_slave_updates": "ON",
            "relay_log": str(self.relay_dir / "relay"),
            "relay_log_index": str(self.relay_dir / "relay.index"),
            "relay_log_recovery": "OFF",
            "skip-slave-start": "",
            "default_storage_engine": "InnoDB",
            "innodb_buffer_pool_size": "128M",
            "innodb_log_file_size": "96M",
            "max_connections": "100",
            "character_set_server": "utf8mb4",
        }
        if os.geteuid() == 0:
            settings["user"] = "root"
        settings.update(self._options)
        lines = ["# written by binhoard sandbox", "[client]", f"socket={self.socket}", ""]
        lines.append("[mariadbd]")
        lines += [f"{k}={v}" if v != "" else k for k, v in settings.items()]
        self.cnf.write_text("\n".join(lines) + "\n")

    # --- lifecycle -------------------------------------------------------------
    def create(self) -> None:
        """Writes the configuration and initialises the datadir (once)."""
        if self.exists:
            return
        for sub in ("", "data", "binlogs", "relay", "tmp"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        meta = self._meta()
        port = meta.get("port") or self._requested_port or free_loopback_port()
        server_id = meta.get("server_id") or self._requested_server_id or port
        self._write_cnf(port, server_id)
        install_db = find_executable("mariadb-install-db", "mysql_install_db")
        result = subprocess.run(
            [
                install_db,
                f"--defaults-file={self.cnf}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise SandboxError(
                f"mariadb-install-db failed for sandbox {self.name} "
                f"(exit {result.returncode}): {_tail(result.stderr or result.stdout)}"
            )
        self._meta_file.write_text(json.dumps({"port": port, "server_id": server_id}) + "\n")

    def start(self, timeout: float = _START_TIMEOUT) -> SandboxStatus:
        """Starts the server (creating it first if needed); returns once it answers SQL."""
        self.create()
        if self.pid() is not None:
            self._wait_ready(timeout)
            return self.status()
        mariadbd = find_executable("mariadbd", "mysqld")
        log = self.directory / "mariadbd.out"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [mariadbd, f"--defaults-file={self.cnf}"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # survives the CLI that started it; not our signals
                cwd=self.directory,
            )
        try:
            self._wait_ready(timeout, process)
        except BaseException:
            # Never leave a half-started server behind.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
            raise
        return self.status()

    def _wait_ready(self, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise SandboxError(
                    f"mariadbd of sandbox {self.name} exited with {process.returncode} "
                    f"while starting; error log {self.error_log}:\n{_tail_file(self.error_log)}"
                )
            if self.socket.exists():
                try:
                    self.query("SELECT 1")
                    return
                except pymysql.err.MySQLError as exc:
                    last_error = str(exc)
            time.sleep(0.05)
        raise SandboxError(
            f"sandbox {self.name} did not answer within {timeout:.0f} s ({last_error}); "
            f"error log {self.error_log}:\n{_tail_file(self.error_log)}"
        )

    def pid(self) -> int | None:
        """The pid of this sandbox's running mariadbd, or None.

        A pid file can outlive its server and the pid can be reused; only a process
        whose command line names this sandbox's my.cnf counts.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            pid = None
        if pid is not None and self._is_ours(pid):
            return pid
        return self._find_by_cmdline()

    def _is_ours(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return f"--defaults-file={self.cnf}".encode() in cmdline

    def _find_by_cmdline(self) -> int | None:
        # The pid file appears a moment after the process starts.
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._is_ours(int(entry.name)):
                return int(entry.name)
        return None

    def stop(self, timeout: float = _STOP_TIMEOUT) -> bool:
        """Stops this instance (SIGTERM to its pid, then waits). Returns False if not running."""
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if _wait_gone(pid, timeout):
            return True
        # A clean shutdown did not finish in time; the caller asked for it to stop.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, 10):
            raise SandboxError(f"mariadbd of sandbox {self.name} (pid {pid}) does not stop")
        return True

    def kill(self) -> None:
        """SIGKILL, as a crash would: for tests of crash recovery."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)

    def destroy(self) -> None:
        """Stops the instance and removes its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def status(self) -> SandboxStatus:
        return SandboxStatus(
            name=self.name,
            directory=self.directory,
            running=self.pid() is not None,
            pid=self.pid(),
            port=self.port,
            server_id=self.server_id,
            socket=self.socket,
        )

    def binhoard_config(
        self, *, site_directory: Path, public_key: str, private_key: str | None, work_dir: Path
    ) -> dict[str, Any]:
        """A binhoard configuration (as data) that backs this sandbox up to a local directory."""
        keys: dict[str, Any] = {"public": public_key}
        if private_key is not None:
            keys["private"] = private_key
        return {
            "server_id": self.server_id,
            "state_directory": str(work_dir / "state"),
            "temporary_directory": str(work_dir / "tmp"),
            "mysql": {
                "config_file_name": str(self.cnf),
                "data_directory": str(self.datadir),
                "binlog_prefix": str(self.binlog_prefix),
                "relay_log_prefix": str(self.relay_dir / "relay"),
                "relay_log_index_file": str(self.relay_dir / "relay.index"),
                "client_params": {"user": "root", "unix_socket": str(self.socket)},
            },
            "backup_sites": {
                "default": {
                    "object_storage": {"storage_type": "local", "directory": str(site_directory)},
                    "encryption_keys": keys,
                }
            },
        }

    # --- SQL -------------------------------------------------------------------
    def connect(self, database: str | None = None) -> pymysql.connections.Connection[Any]:
        return pymysql.connect(
            unix_socket=str(self.socket),
            user="root",
            database=database,
            autocommit=True,
            connect_timeout=5,
        )

    def query(self, sql: str, args: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        finally:
            conn.close()

    def execute_script(self, sql: str) -> list[tuple[list[str], list[tuple[Any, ...]]]]:
        """Runs statements separated by ``;`` (as the ``mariadb`` client would, without
        DELIMITER support); returns (column names, rows) of each result set."""
        conn = pymysql.connect(
            unix_socket=str(self.socket),
            user="root",
            autocommit=True,
            connect_timeout=5,
            client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
        )
        results: list[tuple[list[str], list[tuple[Any, ...]]]] = []
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql)
                while True:
                    if cursor.description:
                        columns = [d[0] for d in cursor.description]
                        results.append((columns, list(cursor.fetchall())))
                    if not cursor.nextset():
                        break
        finally:
            conn.close()
        return results


def _wait_gone(pid: int, timeout: float) -> bool:
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
        time.sleep(0.05)
    return False


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _tail_file(path: Path, lines: int = 15) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no error log)"
