"""SQL access to the server being backed up: connections and the facts binhoard reads."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, TypeAlias

import pymysql

from binhoard.config import ClientParams
from binhoard.domain.errors import ServerError

# The stubs make Connection generic; the runtime class is not subscriptable.
Connection: TypeAlias = "pymysql.connections.Connection[Any]"


def connect(params: ClientParams, *, timeout: float = 10) -> Connection:
    """Opens an autocommit connection; raises ``ServerError`` saying where it tried."""
    try:
        return pymysql.connect(
            host=params.host,
            port=params.port,
            user=params.user,
            password=params.password.get_secret_value(),
            unix_socket=str(params.unix_socket) if params.unix_socket else None,
            ssl={"ca": None} if params.require_ssl else None,
            autocommit=True,
            connect_timeout=int(timeout),
            charset="utf8mb4",
        )
    except pymysql.err.MySQLError as exc:
        where = str(params.unix_socket) if params.unix_socket else f"{params.host}:{params.port}"
        raise ServerError(f"cannot connect to MariaDB at {where} as {params.user}: {exc}") from exc


def query(conn: Connection, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cursor:
        cursor.execute(sql, args)
        return list(cursor.fetchall())


def variables(conn: Connection, *names: str) -> dict[str, str]:
    placeholders = ", ".join(["%s"] * len(names))
    rows = query(conn, f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({placeholders})", names)
    return {str(name): "" if value is None else str(value) for name, value in rows}


@dataclass(frozen=True)
class ServerFacts:
    version: str
    server_id: int
    log_bin: bool
    binlog_format: str
    gtid_strict_mode: bool
    log_slave_updates: bool
    read_only: bool
    gtid_current_pos: str
    gtid_binlog_pos: str
    gtid_slave_pos: str

    def problems(self, expected_server_id: int | None = None) -> list[str]:
        """Why this server cannot be backed up by binhoard, if it cannot."""
        found: list[str] = []
        if not self.log_bin:
            found.append("log_bin is OFF: binary logging is required for point-in-time recovery")
        if self.binlog_format != "ROW":
            found.append(f"binlog_format is {self.binlog_format}, ROW is required")
        if not self.gtid_strict_mode:
            found.append("gtid_strict_mode is OFF, ON is required")
        if expected_server_id is not None and self.server_id != expected_server_id:
            found.append(
                f"server_id is {self.server_id} but the configuration says {expected_server_id}"
            )
        return found


def server_facts(conn: Connection) -> ServerFacts:
    v = variables(
        conn,
        "version",
        "server_id",
        "log_bin",
        "binlog_format",
        "gtid_strict_mode",
        "log_slave_updates",
        "read_only",
        "gtid_current_pos",
        "gtid_binlog_pos",
        "gtid_slave_pos",
    )
    return ServerFacts(
        version=v["version"],
        server_id=int(v["server_id"]),
        log_bin=v["log_bin"] == "ON",
        binlog_format=v["binlog_format"],
        gtid_strict_mode=v["gtid_strict_mode"] == "ON",
        log_slave_updates=v["log_slave_updates"] == "ON",
        read_only=v["read_only"] == "ON",
        gtid_current_pos=v["gtid_current_pos"],
        gtid_binlog_pos=v["gtid_binlog_pos"],
        gtid_slave_pos=v["gtid_slave_pos"],
    )


def flush_dirty_pages(conn: Connection, *, timeout: float = 60.0) -> bool:
    """Writes InnoDB's dirty pages out so that the checkpoint LSN moves to now.

    mariabackup records the *checkpoint* LSN at backup start as ``to_lsn``; on a quiet
    server the checkpoint does not move, and the next incremental then copies every page
    changed since the server started. Returns whether all pages were flushed in time;
    the previous settings are restored either way.
    """
    before = variables(conn, "innodb_max_dirty_pages_pct", "innodb_max_dirty_pages_pct_lwm")
    try:
        query(conn, "SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0")
        query(conn, "SET GLOBAL innodb_max_dirty_pages_pct = 0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = query(conn, "SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
            if int(rows[0][1]) == 0:
                return True
            time.sleep(0.05)
        return False
    finally:
        query(
            conn,
            "SET GLOBAL innodb_max_dirty_pages_pct = %s",
            (float(before["innodb_max_dirty_pages_pct"]),),
        )
        query(
            conn,
            "SET GLOBAL innodb_max_dirty_pages_pct_lwm = %s",
            (float(before["innodb_max_dirty_pages_pct_lwm"]),),
        )
