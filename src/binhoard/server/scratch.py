"""A scratch server for restore tests (``ports.server.ScratchServer``): a sandbox
(``sandbox.py``) with an empty datadir, on 127.0.0.1, in a directory of its own.

The restored datadir brings the source's accounts, whose passwords binhoard does not
know and whose grants it must not rely on (``CHECK TABLE`` of every table needs more
than a backup account has). So the scratch server's option file names an ``init-file``
that creates an account of its own at every start, with a random password kept in that
0600 file inside the 0700 directory, not binlogged (the restored GTID state stays the
source's). The account exists only in the scratch copy, which is removed afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from binhoard.config import MySQLSettings
from binhoard.server.mariadb import MariaDBServer
from binhoard.server.sandbox import Sandbox

USER = "binhoard_restore_test"


class MariaDBScratch:
    def __init__(
        self, directory: Path, *, port: int | None, server_id: int, apply_threads: int
    ) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)  # a copy of the data: no one else reads it
        init_file = directory / "init.sql"
        password = secrets.token_urlsafe(24)
        account = f"'{USER}'@'localhost'"
        fd = os.open(init_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(
                "SET SESSION sql_log_bin = 0;\n"
                f"CREATE OR REPLACE USER {account} IDENTIFIED BY '{password}';\n"
                f"GRANT ALL PRIVILEGES ON *.* TO {account};\n"
            )
        self._sandbox = Sandbox(
            directory, server_id=server_id, port=port, options={"init-file": str(init_file)}
        )
        box = self._sandbox
        box.create(initialize=False)
        mysql = MySQLSettings.model_validate(
            {
                "client_params": {
                    "user": USER,
                    "password": password,
                    "unix_socket": str(box.socket),
                },
                "config_file_name": str(box.cnf),
                "data_directory": str(box.datadir),
                "binlog_prefix": str(box.binlog_prefix),
                "relay_log_prefix": str(box.relay_dir / "relay"),
                "relay_log_index_file": str(box.relay_dir / "relay.index"),
            }
        )
        self._server = MariaDBServer(
            mysql, state_directory=directory / "state", apply_threads=apply_threads
        )

    @property
    def directory(self) -> Path:
        return self._sandbox.directory

    @property
    def server(self) -> MariaDBServer:
        return self._server

    @property
    def port(self) -> int:
        return self._sandbox.port

    @property
    def datadir(self) -> Path:
        return self._sandbox.datadir

    @property
    def config_file(self) -> Path:
        return self._sandbox.cnf

    def kill(self) -> None:
        self._sandbox.kill()

    def destroy(self) -> None:
        remove_scratch(self._sandbox.directory)


def remove_scratch(directory: Path) -> None:
    """Kills the server of the scratch ``directory`` if one runs (found by its option
    file on its command line: never another process) and removes the directory."""
    if not directory.exists():
        return
    Sandbox(directory).kill()
    shutil.rmtree(directory, ignore_errors=True)


class MariaDBScratchServers:
    """``ports.server.ScratchServers`` for MariaDB (``app.scratch_servers``)."""

    def __init__(self, *, port: int | None, apply_threads: int) -> None:
        self.port = port
        self.apply_threads = apply_threads

    def create(self, directory: Path, server_id: int) -> MariaDBScratch:
        return MariaDBScratch(
            directory, port=self.port, server_id=server_id, apply_threads=self.apply_threads
        )

    def remove(self, directory: Path) -> None:
        remove_scratch(directory)
