"""The backup marker and a restore test's checks, in SQL (``ports.server.ServerChecks``).

The marker is one row per backup in ``binhoard.backup_marker``, binhoard's own table:
written (and binlogged, as any write) right before a backup starts, so the backup holds
it and a restore of the backup must show it. Nothing else of the server is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from binhoard.domain.errors import ServerQueryError
from binhoard.domain.privileges import MARKER_SCHEMA
from binhoard.domain.restore_test import TableCheck
from binhoard.server import sql

TABLE = f"{MARKER_SCHEMA}.backup_marker"
# ER_BAD_DB_ERROR, ER_NO_SUCH_TABLE: created on first use.
_MISSING = (1049, 1146)
# Tables of these are not data: information_schema and performance_schema are views of
# the server's memory, sys is views.
_SYSTEM_SCHEMAS = ("information_schema", "performance_schema", "sys")
# CHECK TABLE takes a list: one statement per this many tables.
_CHECK_BATCH = 50


class MariaDBChecks:
    def __init__(self, session: Callable[[], AbstractContextManager[sql.Connection]]) -> None:
        self.session = session

    def write_marker(self, backup_id: str) -> None:
        insert = f"INSERT INTO {TABLE} (backup_id, written_at) VALUES (%s, UTC_TIMESTAMP(6))"
        with self.session() as conn:
            try:
                sql.query(conn, insert, (backup_id,), purpose="writing the backup marker")
            except ServerQueryError as exc:
                if exc.server_errno not in _MISSING:
                    raise
                sql.query(conn, f"CREATE DATABASE IF NOT EXISTS {MARKER_SCHEMA}")
                sql.query(
                    conn,
                    f"CREATE TABLE IF NOT EXISTS {TABLE} (backup_id VARCHAR(64) PRIMARY KEY, "
                    "written_at DATETIME(6) NOT NULL) ENGINE=InnoDB",
                )
                sql.query(conn, insert, (backup_id,), purpose="writing the backup marker")

    def has_marker(self, backup_id: str) -> bool:
        with self.session() as conn:
            try:
                rows = sql.query(conn, f"SELECT 1 FROM {TABLE} WHERE backup_id = %s", (backup_id,))
            except ServerQueryError as exc:
                if exc.server_errno in _MISSING:
                    return False
                raise
        return bool(rows)

    def check_tables(self) -> list[TableCheck]:
        with self.session() as conn:
            names = [
                f"`{schema}`.`{table}`"
                for schema, table in sql.query(
                    conn,
                    "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES "
                    "WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN (%s, %s, %s) "
                    "ORDER BY TABLE_SCHEMA, TABLE_NAME",
                    _SYSTEM_SCHEMAS,
                )
            ]
            checks: list[TableCheck] = []
            for batch in _batches(names, _CHECK_BATCH):
                rows = sql.query(conn, f"CHECK TABLE {', '.join(batch)}", purpose="CHECK TABLE")
                checks += table_checks(rows)
        return checks


def table_checks(rows: list[tuple[object, ...]]) -> list[TableCheck]:
    """``CHECK TABLE``'s rows (Table, Op, Msg_type, Msg_text), several per table: a table
    is OK when none of its rows is an error and its last status says OK (or that it is
    up to date); the message is the first error, else its last row."""
    by_table: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_table.setdefault(str(row[0]), []).append((str(row[2]).lower(), str(row[3])))
    checks = []
    for table, messages in by_table.items():
        errors = [text for kind, text in messages if kind == "error"]
        last_kind, last_text = messages[-1]
        ok = (
            not errors
            and last_kind == "status"
            and last_text.lower() in ("ok", "table is already up to date")
        )
        checks.append(TableCheck(table, ok, errors[0] if errors else last_text))
    return checks


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
