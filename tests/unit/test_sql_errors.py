"""pymysql errors become the project's errors in one place (server/sql.py)."""

from __future__ import annotations

from typing import Any

import pymysql
import pytest

from binhoard.domain.errors import (
    ServerAccessDeniedError,
    ServerError,
    ServerQueryError,
)
from binhoard.server import sql

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(
    ("error", "kind", "retryable"),
    [
        (
            pymysql.err.OperationalError(
                1045, "Access denied for user 'bk'@'localhost' (using password: YES)"
            ),
            ServerAccessDeniedError,
            False,
        ),
        (
            pymysql.err.OperationalError(
                1044, "Access denied for user 'bk'@'localhost' to database 'app'"
            ),
            ServerAccessDeniedError,
            False,
        ),
        (
            pymysql.err.OperationalError(1698, "Access denied for user 'root'@'localhost'"),
            ServerAccessDeniedError,
            False,
        ),
        (
            pymysql.err.OperationalError(
                1227,
                "Access denied; you need (at least one of) the "
                "READ_ONLY ADMIN privilege(s) for this operation",
            ),
            ServerAccessDeniedError,
            False,
        ),
        (
            pymysql.err.ProgrammingError(1146, "Table 'nope.t' doesn't exist"),
            ServerQueryError,
            False,
        ),
        (
            pymysql.err.OperationalError(1193, "Unknown system variable 'nope'"),
            ServerQueryError,
            False,
        ),
        (
            pymysql.err.OperationalError(
                2003,
                "Can't connect to MySQL server on '127.0.0.1' ([Errno 111] Connection refused)",
            ),
            ServerError,
            True,
        ),
        (
            pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"),
            ServerError,
            True,
        ),
        (pymysql.err.OperationalError(1927, "Connection was killed"), ServerError, True),
        (pymysql.err.InterfaceError(0, ""), ServerError, True),
    ],
)
def test_errors_are_mapped_by_what_retrying_can_do(
    error: pymysql.err.MySQLError, kind: type[ServerError], retryable: bool
) -> None:
    mapped = sql.server_error(error, "reading the binlog index")
    assert type(mapped) is kind
    assert mapped.retryable is retryable
    assert mapped.message.startswith("reading the binlog index: ")
    if kind is ServerAccessDeniedError:
        assert "access denied" in mapped.message and "retrying will not help" in mapped.message


def test_the_password_never_appears_in_the_message() -> None:
    error = pymysql.err.ProgrammingError(1064, f"syntax error near '{SECRET}' at line 1")
    mapped = sql.server_error(error, "setting a password", password=SECRET)
    assert SECRET not in mapped.message and "***" in mapped.message


class _Cursor:
    """Fails as a server would: on execute, with the error it was given."""

    def __init__(self, error: pymysql.err.MySQLError) -> None:
        self.error = error
        self.description: Any = None

    def __enter__(self) -> _Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, statement: str, args: Any = None) -> int:
        raise self.error

    def fetchall(self) -> list[tuple[Any, ...]]:
        raise AssertionError("not reached")


class _Connection:
    def __init__(self, error: pymysql.err.MySQLError) -> None:
        self.error = error
        self.password = SECRET.encode("latin1")  # as pymysql keeps it

    def cursor(self) -> _Cursor:
        return _Cursor(self.error)


def test_query_raises_the_projects_error_naming_the_statement_or_its_purpose() -> None:
    conn: Any = _Connection(pymysql.err.ProgrammingError(1146, f"Table '{SECRET}.t' missing"))
    with pytest.raises(ServerQueryError) as caught:
        sql.query(conn, "SELECT *\n   FROM nope.t WHERE a = %s", ("x",))
    assert caught.value.message.startswith("running SELECT * FROM nope.t WHERE a = %s: ")
    assert caught.value.server_errno == 1146
    assert SECRET not in caught.value.message
    with pytest.raises(ServerAccessDeniedError) as denied:
        sql.query_dicts(
            _Connection(pymysql.err.OperationalError(1227, "need SLAVE MONITOR")),  # type: ignore[arg-type]
            "SHOW SLAVE STATUS",
            purpose="reading the applier's status",
        )
    assert denied.value.message.startswith("reading the applier's status: MariaDB error 1227")
    assert not denied.value.retryable
