"""SQL access to the server being backed up: connections and the facts binhoard reads.

Every pymysql error becomes a ``ServerError`` here (``server_error``) and nowhere else:
retryable when the connection or the server went away, not when the server refused the
user (access denied) or the statement (an SQL error), which fail the same way again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import pymysql

from binhoard.config import ClientParams, is_loopback_address
from binhoard.domain.errors import (
    ServerAccessDeniedError,
    ServerError,
    ServerQueryError,
)
from binhoard.domain.privileges import Grants, parse_grants
from binhoard.domain.server_facts import ServerFacts
from binhoard.ports.server import CheckpointWait, SettingsJournal

# The stubs make Connection generic; the runtime class is not subscriptable.
Connection: TypeAlias = "pymysql.connections.Connection[Any]"

# The server refused the account or a privilege: 1044 no access to a database, 1045 wrong
# user or password, 1698 no password where the account needs one (unix_socket accounts),
# 1142/1143/1370 table, column and routine access, 1227 a global privilege is missing,
# 1820/1862 the password must be changed / has expired, 4151 the account is locked.
ACCESS_DENIED_ERRNOS = frozenset({1044, 1045, 1142, 1143, 1227, 1370, 1698, 1820, 1862, 4151})
# The connection or the server went away, or the server is busy: worth another try.
# 1040 too many connections, 1053 shutdown in progress, 1152/1158-1161 network errors,
# 1205/1213 lock wait timeout and deadlock, 1927 connection killed, 4031 idle timeout.
# Client-side errors (2000-2999: cannot connect, lost connection, gone away) count too.
RETRYABLE_ERRNOS = frozenset({1040, 1053, 1152, 1158, 1159, 1160, 1161, 1205, 1213, 1927, 4031})


def server_error(exc: pymysql.err.MySQLError, purpose: str, *, password: str = "") -> ServerError:
    """The project's error for a pymysql error met while ``purpose`` (e.g. "reading the
    binlog index"): ``ServerAccessDeniedError`` and ``ServerQueryError`` are final,
    a plain ``ServerError`` (connection lost, server gone) is retryable. ``password`` is
    removed from the message should the server ever echo it."""
    errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    detail = str(exc.args[1]) if len(exc.args) > 1 else str(exc) or type(exc).__name__
    if password:
        detail = detail.replace(password, "***")
    message = f"{purpose}: MariaDB error {errno}: {detail}" if errno else f"{purpose}: {detail}"
    if errno in ACCESS_DENIED_ERRNOS:
        return ServerAccessDeniedError(
            f"{message} (access denied: check mysql.client_params.user and password, and "
            "the grants in docs/configuration.md; retrying will not help)",
            server_errno=errno,
        )
    if (
        isinstance(exc, pymysql.err.InterfaceError)  # used after the connection closed
        or errno in RETRYABLE_ERRNOS
        or 2000 <= errno < 3000
    ):
        return ServerError(message)
    return ServerQueryError(message, server_errno=errno)


def _local(params: ClientParams) -> bool:
    return params.unix_socket is not None or is_loopback_address(params.host)


def connect(params: ClientParams, *, timeout: float = 10) -> Connection:
    """Opens an autocommit connection; raises ``ServerError`` saying where it tried
    (``ServerAccessDeniedError`` when the server refused the user)."""
    password = params.password.get_secret_value()
    try:
        return pymysql.connect(
            host=params.host,
            port=params.port,
            user=params.user,
            password=password,
            unix_socket=str(params.unix_socket) if params.unix_socket else None,
            ssl={"ca": None} if params.require_ssl else None,
            # pymysql otherwise tries TLS on every connection (PREFERRED), building a
            # context that costs ~20 ms of CPU each time: three per archive pass, most of
            # an idle daemon's CPU. Over a socket or loopback it protects nothing.
            ssl_disabled=not params.require_ssl and _local(params),
            autocommit=True,
            connect_timeout=int(timeout),
            charset="utf8mb4",
        )
    except pymysql.err.MySQLError as exc:
        where = str(params.unix_socket) if params.unix_socket else f"{params.host}:{params.port}"
        raise server_error(
            exc, f"cannot connect to MariaDB at {where} as {params.user}", password=password
        ) from exc


def query(
    conn: Connection, sql: str, args: Any = None, *, purpose: str | None = None
) -> list[tuple[Any, ...]]:
    """Runs ``sql`` and returns its rows; a failure is a ``ServerError`` naming
    ``purpose`` (by default the statement itself, without its arguments)."""
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())
    except pymysql.err.MySQLError as exc:
        raise server_error(exc, purpose or _describe(sql), password=_password(conn)) from exc


def query_dicts(
    conn: Connection, sql: str, args: Any = None, *, purpose: str | None = None
) -> list[dict[str, Any]]:
    """``query`` with each row as a dict by column name (``SHOW SLAVE STATUS``)."""
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, args)
            names = [d[0] for d in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    except pymysql.err.MySQLError as exc:
        raise server_error(exc, purpose or _describe(sql), password=_password(conn)) from exc


def _describe(sql: str) -> str:
    text = " ".join(sql.split())
    return f"running {text if len(text) <= 100 else text[:97] + '...'}"


def _password(conn: Connection) -> str:
    value = getattr(conn, "password", b"")
    return value.decode("latin1") if isinstance(value, bytes) else str(value or "")


def variables(conn: Connection, *names: str) -> dict[str, str]:
    placeholders = ", ".join(["%s"] * len(names))
    rows = query(
        conn,
        f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({placeholders})",
        names,
        purpose=f"reading server variables {', '.join(names)}",
    )
    return {str(name): "" if value is None else str(value) for name, value in rows}


def grants(conn: Connection) -> Grants:
    """The global privileges of this session: ``SHOW GRANTS`` without ``FOR``, which
    also lists the grants of the role enabled at login (and the roles it has)."""
    rows = query(conn, "SHOW GRANTS", purpose="reading the user's privileges")
    return parse_grants(str(row[0]) for row in rows)


# The variables ServerFacts is made of. binlog_storage_engine exists from MariaDB 12.3
# on; SHOW VARIABLES simply leaves out a name the server does not have.
FACT_VARIABLES = (
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
    "binlog_storage_engine",
)


def server_facts(conn: Connection) -> ServerFacts:
    return facts_from_variables(variables(conn, *FACT_VARIABLES))


def facts_from_variables(v: Mapping[str, str]) -> ServerFacts:
    """The facts in the server's ``SHOW GLOBAL VARIABLES`` values (``FACT_VARIABLES``)."""
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
        binlog_storage_engine=v.get("binlog_storage_engine", "").strip(),
    )


# How much redo may separate InnoDB's checkpoint from a backup's start. An incremental
# backup copies every page whose LSN is above its parent's to_lsn (the checkpoint), so
# it copies again the pages changed within this much redo before the parent. Measured
# here, bytes of pages changed per byte of redo: bulk inserts ~0.8, a young server's
# schema and rows ~11, single-row updates scattered over a table 40-125. So 256 KiB
# re-copies at most ~32 MiB (1 MiB let a 19 MB full backup's incremental grow from 6.6
# to 15.4 MB), while an idle server, which gathers a few KiB of redo between backups
# (mariabackup itself writes ~1.2 KiB), is never flushed.
CHECKPOINT_AGE_LIMIT = 256 * 1024
# The longest a backup waits for the checkpoint; it starts afterwards either way. Here
# that is enough to flush the pages of ~100 MB written just before (4.0-5.0 s), and a
# server that keeps writing got there in 1-3.5 s.
CHECKPOINT_WAIT_SECONDS = 5.0

# While waiting: everything dirty counts as over the limit (pct 0), the page cleaner
# flushes innodb_io_capacity pages a second oldest first instead of averaging that with
# recent rates (adaptive flushing: 8.0 s instead of 4.9 s for 100 MB of fresh writes),
# and innodb_io_capacity is raised to the innodb_io_capacity_max the operator allows for
# bursts. Restored in reverse order: the low-water mark goes back after the maximum it
# must not exceed.
_FAST_FLUSH = (
    ("innodb_max_dirty_pages_pct_lwm", "0"),
    ("innodb_max_dirty_pages_pct", "0"),
    ("innodb_adaptive_flushing", "OFF"),
    ("innodb_io_capacity", "@@GLOBAL.innodb_io_capacity_max"),
)


@dataclass(frozen=True)
class Checkpoint:
    lsn: int  # Innodb_lsn_current: the end of the redo log
    checkpoint_lsn: int  # Innodb_lsn_last_checkpoint: what mariabackup records as to_lsn

    @property
    def age(self) -> int:
        """Bytes of redo since the checkpoint (``Innodb_checkpoint_age``)."""
        return self.lsn - self.checkpoint_lsn


def checkpoint(conn: Connection) -> Checkpoint:
    rows = dict(
        query(
            conn,
            "SHOW GLOBAL STATUS WHERE Variable_name IN "
            "('Innodb_lsn_current', 'Innodb_lsn_last_checkpoint')",
        )
    )
    return Checkpoint(
        lsn=int(rows["Innodb_lsn_current"]), checkpoint_lsn=int(rows["Innodb_lsn_last_checkpoint"])
    )


def restore_flush_settings(conn: Connection, values: Mapping[str, str]) -> None:
    """Puts back flushing settings saved by a run that was killed before it could."""
    known = {name for name, _ in _FAST_FLUSH}
    for name, value in values.items():
        if name not in known:  # the names are spliced into SQL: only our own
            raise ServerError(f"refusing to restore unknown server setting {name!r}")
        query(conn, f"SET GLOBAL {name} = %s", (_setting_value(value),))


def flush_setting_names() -> tuple[str, ...]:
    """The server settings ``bound_checkpoint_age`` changes while it runs."""
    return tuple(name for name, _ in _FAST_FLUSH)


def startup_flush_settings(conn: Connection, configured: Mapping[str, str]) -> dict[str, str]:
    """The values the server starts with for the settings ``bound_checkpoint_age``
    changes: ``configured`` (its my.cnf's options, names with ``_``), else the compiled
    defaults. What to put back when the values saved before a change are lost."""
    names = flush_setting_names()
    placeholders = ", ".join(["%s"] * len(names))
    rows = query(
        conn,
        "SELECT LOWER(VARIABLE_NAME), DEFAULT_VALUE FROM information_schema.SYSTEM_VARIABLES "
        f"WHERE VARIABLE_NAME IN ({placeholders})",
        [name.upper() for name in names],
        purpose="reading the default flushing settings",
    )
    defaults = {str(name): "" if value is None else str(value) for name, value in rows}
    values = {}
    for name in names:
        value = configured.get(name)
        if value is None:
            value = defaults[name]
        elif value == "":  # a flag given without a value: ON
            value = "ON"
        values[name] = value
    return values


def bound_checkpoint_age(
    conn: Connection,
    *,
    journal: SettingsJournal | None = None,
    limit: int = CHECKPOINT_AGE_LIMIT,
    timeout: float = CHECKPOINT_WAIT_SECONDS,
    poll: float = 0.05,
) -> CheckpointWait:
    """Makes InnoDB's checkpoint recent before a backup, so the next incremental is small.

    mariabackup records as ``to_lsn`` the checkpoint it reads at BACKUP STAGE
    BLOCK_COMMIT (verified on 10.11: it follows a checkpoint that moves during the
    copy), and the next incremental copies every page changed after it. A quiet server
    does not move its checkpoint (InnoDB flushes ahead only above
    innodb_adaptive_flushing_lwm, 10% of the redo capacity), so without this the
    incremental would re-copy everything changed in that redo.

    When the age is within ``limit`` nothing is done (an idle server: one query). Else
    flushing is forced until the checkpoint passes the LSN that was ``limit`` behind the
    end of the redo at the start: a fixed target, so writes that continue meanwhile do
    not move it away. Gives up after ``timeout`` seconds; the settings are restored
    either way, and kept in ``journal`` while they are changed.
    """
    started = time.monotonic()
    before = checkpoint(conn)
    if before.age <= limit:
        return CheckpointWait(before.age, before.age, False, True, time.monotonic() - started)
    with _fast_flushing(conn, journal):
        reached = _wait_for_checkpoint(conn, before.lsn - limit, started + timeout, poll)
    after = checkpoint(conn)
    return CheckpointWait(before.age, after.age, True, reached, time.monotonic() - started)


def _wait_for_checkpoint(conn: Connection, target: int, deadline: float, poll: float) -> bool:
    while checkpoint(conn).checkpoint_lsn < target:
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


@contextmanager
def _fast_flushing(conn: Connection, journal: SettingsJournal | None) -> Iterator[None]:
    """``_FAST_FLUSH`` while the block runs; the previous values afterwards."""
    before = variables(conn, *(name for name, _ in _FAST_FLUSH))
    if journal is not None:
        journal.save(before)  # first: a kill from here on is undone by the next run
    changed: list[str] = []
    try:
        for name, value in _FAST_FLUSH:
            query(conn, f"SET GLOBAL {name} = {value}")
            changed.append(name)
        yield
    finally:
        for name in reversed(changed):
            query(conn, f"SET GLOBAL {name} = %s", (_setting_value(before[name]),))
    if journal is not None:
        journal.clear()  # only once every value is back


def _setting_value(text: str) -> int | float | str:
    """A value read by SHOW VARIABLES, typed so that SET accepts it back (numeric
    variables refuse quoted strings)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def flush_dirty_pages(conn: Connection, *, timeout: float = 60.0) -> bool:
    """Writes every dirty page of InnoDB out, to quiesce a server (bench/basebackup.py
    between timed steps). Backups use ``bound_checkpoint_age``, which waits for much less.

    Returns whether all pages were flushed in time; the previous settings are restored
    either way. The page cleaner runs once a second, so this takes a second or more
    even for a few dirty pages, and never ends while the server keeps writing.
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
