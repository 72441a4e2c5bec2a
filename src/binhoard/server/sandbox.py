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

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from binhoard.domain.errors import SandboxError, ServerError
from binhoard.domain.privileges import (
    BACKUP_PRIVILEGES,
    RESTORE_PRIVILEGES,
    grant_statement,
    marker_grant_statement,
)
from binhoard.server.process import (
    DEFAULT_START_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    ServerProcess,
    find_executable,
)

# Settings binhoard requires of a server it backs up and restores into.
REQUIRED_SETTINGS: Mapping[str, str] = {
    "log_bin": "ON",
    "binlog_format": "ROW",
    "gtid_strict_mode": "ON",
    "log_slave_updates": "ON",
}


# The account binhoard uses in a sandbox, with exactly the documented grants
# (docs/configuration.md, "Grants"), so that tests using it prove those grants enough.
# A sandbox listens on loopback and its socket only: the password is no secret.
SANDBOX_USER = "binhoard"
SANDBOX_PASSWORD = "binhoard-sandbox"  # noqa: S105 - see above
SANDBOX_ACCOUNT = f"'{SANDBOX_USER}'@'localhost'"
SANDBOX_GRANTS = (
    grant_statement(SANDBOX_ACCOUNT, BACKUP_PRIVILEGES),
    grant_statement(SANDBOX_ACCOUNT, RESTORE_PRIVILEGES),
    marker_grant_statement(SANDBOX_ACCOUNT),
)

# Starts tried when the port turns out taken (chosen free, bound by someone else before
# mariadbd could): each attempt moves the sandbox to another free port.
PORT_ATTEMPTS = 5


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
    def _meta_data(self) -> dict[str, Any]:
        try:
            data = json.loads(self._meta_file.read_text())
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def _meta(self) -> dict[str, int]:
        data = self._meta_data()
        if not data:
            return {}
        return {"port": int(data["port"]), "server_id": int(data["server_id"])}

    def _write_meta(self, **changes: Any) -> None:
        data = {**self._meta_data(), **changes}
        tmp = self._meta_file.with_name(self._meta_file.name + ".tmp")
        tmp.write_text(json.dumps(data) + "\n")
        tmp.replace(self._meta_file)

    @property
    def port(self) -> int:
        return self._meta().get("port") or self._requested_port or 0

    @property
    def server_id(self) -> int:
        return self._meta().get("server_id") or self._requested_server_id or 0

    @property
    def created(self) -> bool:
        """Configured (my.cnf written), whether or not its datadir is initialised."""
        return self._meta_file.exists()

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
    def create(self, *, initialize: bool = True) -> None:
        """Writes the configuration and initialises the datadir (once).

        ``initialize=False`` leaves the datadir empty, for a restore to move a backup into.
        """
        if self.exists or (not initialize and self._meta_file.exists()):
            return
        for sub in ("", "data", "binlogs", "relay", "tmp"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        meta = self._meta()
        port = meta.get("port") or self._requested_port or free_loopback_port()
        server_id = meta.get("server_id") or self._requested_server_id or port
        # A port someone asked for stays; one chosen here may move if found taken.
        port_fixed = bool(self._meta_data().get("port_fixed", self._requested_port is not None))
        self._write_cnf(port, server_id)
        identity = {"port": port, "server_id": server_id, "port_fixed": port_fixed}
        if not initialize:
            # The datadir comes from a backup, with the source's accounts (and its binhoard
            # user): none is created here.
            self._write_meta(**identity, user_created=True)
            return
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
        self._write_meta(**identity, user_created=False)

    @property
    def process(self) -> ServerProcess:
        return ServerProcess(self.cnf, log_file=self.directory / "mariadbd.out")

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> SandboxStatus:
        """Starts the server (creating it first if needed); returns once it answers SQL."""
        self.create()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            log_offset = _size(self.error_log)
            try:
                self.process.start(
                    self._answers,
                    timeout=timeout,
                    describe_failure=lambda: (
                        f"error log {self.error_log}:\n{_tail_file(self.error_log)}"
                    ),
                )
                break
            except ServerError:
                if attempt == PORT_ATTEMPTS or not self._port_was_taken(log_offset):
                    raise
                self._move_to(free_loopback_port())
        self._create_user()
        return self.status()

    def _port_was_taken(self, log_offset: int) -> bool:
        """Whether the start that wrote the error log from ``log_offset`` on failed
        because its TCP port was in use (and the port may be changed)."""
        if self._meta_data().get("port_fixed"):
            return False
        try:
            with self.error_log.open("rb") as log:
                log.seek(log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return False
        return "Address already in use" in text

    def _move_to(self, port: int) -> None:
        """Gives the sandbox another TCP port: in my.cnf (edited in place, keeping the
        options it was created with) and in sandbox.json, so restarts keep it."""
        text = self.cnf.read_text()
        moved, count = re.subn(r"(?m)^port=\d+$", f"port={port}", text)
        if count != 1:
            raise SandboxError(f"cannot change the port in {self.cnf}: no single port= line")
        self.cnf.write_text(moved)
        self._write_meta(port=port)

    def _create_user(self) -> None:
        """The binhoard account with the documented grants, once per initialised datadir."""
        if self._meta_data().get("user_created", True):
            return
        conn = self.connect()
        try:
            with conn.cursor() as cursor:
                # Not binlogged: a new sandbox starts with an empty GTID history, and the
                # account is setup, not data (a restore brings it with the datadir).
                cursor.execute("SET SESSION sql_log_bin = 0")
                cursor.execute(
                    f"CREATE USER IF NOT EXISTS {SANDBOX_ACCOUNT} IDENTIFIED BY %s",
                    (SANDBOX_PASSWORD,),
                )
                for statement in SANDBOX_GRANTS:
                    cursor.execute(statement)
        finally:
            conn.close()
        self._write_meta(user_created=True)

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            self.query("SELECT 1")
        except pymysql.err.MySQLError:
            return False
        return True

    def pid(self) -> int | None:
        return self.process.pid()

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> bool:
        """Stops this instance only (SIGTERM to its pid). Returns False if not running."""
        return self.process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would: for tests of crash recovery."""
        self.process.kill()

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
                "client_params": {
                    "user": SANDBOX_USER,
                    "password": SANDBOX_PASSWORD,
                    "unix_socket": str(self.socket),
                },
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


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _tail_file(path: Path, lines: int = 15) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no error log)"
