"""The steps of the tests that cross MariaDB series, each run where its series is: as
``$PY -m tests.support.crossing STEP DIR SERVER_ID ...`` on this host or in the other
series' root (``tests/support/servers.py``). One Python process a step, each printing
one JSON object, keeps those tests quick.

    backup DIR ID SITE KEY     a new sandbox with a table and a full backup, then stopped
    upgrade DIR SITE KEY       DIR's sandbox started by this series, mariadb-upgrade, a
                               row, then the backup the schedule calls an incremental
    source DIR ID              a new sandbox writes binlogs from an empty state
    apply DIR ID FILE...       a new sandbox applies them through the relay-log method

KEY is a file holding the age identity of SITE.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from binhoard.app import backup_config, open_server, open_site
from binhoard.config import Settings, parse_settings
from binhoard.crypto.age import Identity
from binhoard.domain.relay_plan import BatchFile
from binhoard.ops.backup import take_backup
from binhoard.ops.site import list_backups
from binhoard.server.sandbox import Sandbox
from tests.support import ops
from tests.support.configs import config_for
from tests.support.workload import checksums, create_schema, write_rows

SCHEMA = """
    CREATE DATABASE d;
    CREATE TABLE d.t (id INT PRIMARY KEY, v VARCHAR(20));
    INSERT INTO d.t VALUES (1, 'a'), (2, 'b');
"""
# Beyond write_rows' inserts and updates: DDL, column types with their own binlog
# encodings, large values, a non-transactional table and an XA transaction.
MORE = """
    ALTER TABLE app.accounts ADD COLUMN flag INT DEFAULT 3, ADD KEY (owner);
    CREATE TABLE app.shapes (id INT PRIMARY KEY, j JSON, d DATETIME(6), x DECIMAL(20,6),
        e ENUM('a','b'), b BIT(9), t TIME(3), f DOUBLE) ENGINE=InnoDB;
    INSERT INTO app.shapes VALUES (1, '{"a": [1, 2]}', '2024-01-01 10:00:00.123456',
        12345.678901, 'b', b'101010101', '-12:00:00.5', 1e-300);
    UPDATE app.accounts SET note = REPEAT('x', 3000) WHERE id % 7 = 0;
    DELETE FROM app.events WHERE id % 5 = 0;
    CREATE TABLE app.plain (id INT PRIMARY KEY) ENGINE=MyISAM;
    INSERT INTO app.plain VALUES (1), (2);
    XA START 'x1'; INSERT INTO app.shapes (id) VALUES (2); XA END 'x1'; XA PREPARE 'x1';
    XA COMMIT 'x1';
    FLUSH BINARY LOGS;
"""


@contextmanager
def running(box: Sandbox) -> Iterator[Sandbox]:
    box.start()
    try:
        yield box
    finally:
        box.stop()


def settings(box: Sandbox, site: Path, key: Path) -> Settings:
    identity = Identity.parse(key.read_text())
    return parse_settings(config_for(box, site, identity=identity), source="crossing")


def version(box: Sandbox) -> str:
    return str(box.query("SELECT @@version")[0][0])


def backup(directory: Path, server_id: int, site: Path, key: Path) -> dict[str, Any]:
    with running(Sandbox(directory, server_id=server_id)) as box:
        box.execute_script(SCHEMA)
        config = settings(box, site, key)
        taken = ops.backup(config, open_site(config))
        return {"version": version(box), "backup_id": taken.backup_id}


class Warnings(logging.Handler):
    """binhoard's warnings, as an operator reads them on standard error."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def upgrade(directory: Path, site: Path, key: Path) -> dict[str, Any]:
    warnings = Warnings()
    logging.getLogger("binhoard").addHandler(warnings)
    with running(Sandbox(directory)) as box:
        subprocess.run(
            ["mariadb-upgrade", f"--defaults-file={box.cnf}", "--user=root", "--silent"],
            check=True,
        )
        box.query("INSERT INTO d.t VALUES (3, 'c')")
        config = settings(box, site, key)
        store = open_site(config)
        take_backup(open_server(config), store, backup_config(config), requested="incremental")
        return {
            "version": version(box),
            "types": [b.backup_type for b in list_backups(store)],
            "warnings": warnings.messages,
        }


def source(directory: Path, server_id: int) -> dict[str, Any]:
    with running(Sandbox(directory, server_id=server_id)) as box:
        box.query("RESET MASTER")  # the sandbox's own setup is no part of the workload
        create_schema(box)
        write_rows(box, 1000, seed=1)
        box.execute_script(MORE)
        write_rows(box, 200, seed=2)
        box.query("FLUSH BINARY LOGS")
        closed = [str(row[0]) for row in box.query("SHOW BINARY LOGS")][:-1]
        return {
            "version": version(box),
            "files": [str(box.binlog_dir / name) for name in closed],
            "gtid": box.query("SELECT @@gtid_current_pos")[0][0],
            "checksums": checksums(box),
        }


def apply(directory: Path, server_id: int, files: list[str]) -> dict[str, Any]:
    with running(Sandbox(directory, server_id=server_id)) as box:
        config = parse_settings(config_for(box, directory / "site"), source="crossing")
        server = open_server(config)
        server.set_gtid_state("")  # as a restore does, from the (empty) snapshot
        applier = server.relay_applier()
        batch = [BatchFile(Path(path), server.binlogs.read(Path(path))) for path in files]
        result = applier.apply_batch(batch)
        position = applier.finish()
        return {
            "version": version(box),
            "transactions": result.transactions,
            "gtid": position.format(),
            "checksums": checksums(box),
        }


def main(step: str, directory: str, *args: str) -> dict[str, Any]:
    where = Path(directory)
    if step == "backup":
        return backup(where, int(args[0]), Path(args[1]), Path(args[2]))
    if step == "upgrade":
        return upgrade(where, Path(args[0]), Path(args[1]))
    if step == "source":
        return source(where, int(args[0]))
    return apply(where, int(args[0]), list(args[1:]))


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
