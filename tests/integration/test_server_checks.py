"""What binhoard checks of the server before it acts, against real servers and users."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from binhoard.app import open_server, open_site
from binhoard.config import parse_settings
from binhoard.domain.errors import (
    ServerAccessDeniedError,
    ServerError,
    ServerQueryError,
)
from binhoard.domain.privileges import BACKUP_PRIVILEGES, grant_statement
from binhoard.server import sql
from binhoard.server.sandbox import Sandbox
from tests.support import ops
from tests.support.cli import run_main as run
from tests.support.configs import config_for
from tests.support.sandboxes import SandboxFactory
from tests.support.waiting import wait_for

PASSWORD = "pw-of-a-test-user"


def user_config(box: Sandbox, site: Path, user: str, password: str, **top: Any) -> dict[str, Any]:
    data = config_for(box, site)
    data["mysql"]["client_params"] = {
        "user": user,
        "password": password,
        "unix_socket": str(box.socket),
    }
    data.update(top)
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def create_user(box: Sandbox, name: str, privileges: list[str]) -> str:
    account = f"'{name}'@'localhost'"
    box.query(f"CREATE USER {account} IDENTIFIED BY %s", (PASSWORD,))
    if privileges:
        box.query(grant_statement(account, privileges))
    return name


def site_files(site: Path) -> list[Path]:
    return [p for p in site.rglob("*") if p.is_file()] if site.exists() else []


def test_a_wrong_password_fails_at_once_saying_access_denied(
    sandboxes: SandboxFactory, tmp_path: Path
) -> None:
    box = sandboxes.new()
    data = user_config(box, tmp_path / "site", "binhoard", "not-the-password")
    settings = parse_settings(data, source="test")
    started = time.monotonic()
    with pytest.raises(ServerAccessDeniedError) as caught:
        open_server(
            settings
        ).process.ensure_running()  # the server runs: it answers, refusing the user
    assert time.monotonic() - started < 5
    assert "access denied" in caught.value.message.lower()
    assert "not-the-password" not in caught.value.message
    assert caught.value.server_errno == 1045 and not caught.value.retryable

    # Started by binhoard: the same, and the server it started stays up.
    box.stop()
    started = time.monotonic()
    with pytest.raises(ServerAccessDeniedError):
        open_server(settings).process.ensure_running()
    assert time.monotonic() - started < 30
    assert box.pid() is not None


def test_sql_errors_are_final_and_a_lost_connection_is_retryable(
    sandboxes: SandboxFactory, tmp_path: Path
) -> None:
    box = sandboxes.new()
    settings = parse_settings(config_for(box, tmp_path / "site"), source="test")
    conn = sql.connect(settings.mysql.client_params)
    try:
        with pytest.raises(ServerQueryError) as caught:
            sql.query(conn, "SELECT @@no_such_variable")
        assert caught.value.server_errno == 1193 and not caught.value.retryable
        assert caught.value.message.startswith(
            "running SELECT @@no_such_variable: MariaDB error 1193"
        )
        own_id = sql.query(conn, "SELECT CONNECTION_ID()")[0][0]
        box.query(f"KILL CONNECTION {int(own_id)}")
        with pytest.raises(ServerError) as lost:
            sql.variables(conn, "server_id")
        assert type(lost.value) is ServerError and lost.value.retryable
        assert lost.value.message.startswith("reading server variables server_id: ")
    finally:
        conn.close()


def test_documented_backup_grants_are_enough_to_back_up_and_archive(
    sandboxes: SandboxFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = sandboxes.new()
    user = create_user(box, "bk", list(BACKUP_PRIVILEGES))
    site = tmp_path / "site"
    config = write_config(tmp_path / "bk.json", user_config(box, site, user, PASSWORD))
    code, out, err = run(["status", "--config", str(config)], capsys)
    assert code == 0, out + err
    assert "ready       yes" in out
    assert "note: for point-in-time restore, user bk lacks READ_ONLY ADMIN" in out
    code, out, err = run(["backup", "create", "--config", str(config), "--full"], capsys)
    assert code == 0, out + err
    box.query("CREATE DATABASE app")
    box.query("FLUSH BINARY LOGS")
    code, out, err = run(["binlog", "archive", "--config", str(config)], capsys)
    assert code == 0, out + err
    archived = [p.name for p in site_files(site) if "binlog" in p.name]
    assert archived, out


def test_status_names_missing_privileges_and_they_are_needed(
    sandboxes: SandboxFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = sandboxes.new()
    # Through a default role, as a DBA might: its grants count like the user's own.
    box.query("CREATE ROLE bh_backup")
    box.query(grant_statement("bh_backup", ["RELOAD", "BINLOG MONITOR", "SUPER"]))
    user = create_user(box, "noproc", [])
    box.query("GRANT bh_backup TO 'noproc'@'localhost'")
    box.query("SET DEFAULT ROLE bh_backup FOR 'noproc'@'localhost'")
    site = tmp_path / "site"
    config = write_config(tmp_path / "noproc.json", user_config(box, site, user, PASSWORD))

    code, out, err = run(["status", "--config", str(config), "--json"], capsys)
    assert code == 5, out + err
    report = json.loads(out)
    assert report["ready"] is False
    assert [p.split(" (")[0] for p in report["problems"]] == ["user noproc lacks PROCESS"]
    assert any("lacks READ_ONLY ADMIN" in note for note in report["notes"])
    assert "the server is not ready to be backed up: user noproc lacks PROCESS" in err

    # The documented list is not longer than needed: without PROCESS mariabackup refuses,
    code, out, err = run(["backup", "create", "--config", str(config), "--full"], capsys)
    assert code == 5 and "PROCESS" in err, out + err
    assert not any(p.name.startswith("manifest") for p in site_files(site))
    # and without READ_ONLY ADMIN the applier cannot make the server read-only.
    settings = parse_settings(user_config(box, site, user, PASSWORD), source="test")
    conn = sql.connect(settings.mysql.client_params)
    try:
        with pytest.raises(ServerAccessDeniedError) as denied:
            sql.query(conn, "SET GLOBAL read_only = ON")
        assert "READ_ONLY ADMIN" in denied.value.message and denied.value.server_errno == 1227
    finally:
        conn.close()


def test_a_server_id_other_than_the_configured_one_is_refused_and_nothing_is_written(
    sandboxes: SandboxFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = sandboxes.new()
    site = tmp_path / "site"
    right = write_config(tmp_path / "right.json", config_for(box, site))
    code, out, err = run(["backup", "create", "--config", str(right), "--full"], capsys)
    assert code == 0, out + err
    before = sorted(site_files(site))

    data = config_for(box, site)
    data["server_id"] = box.server_id + 1
    wrong = write_config(tmp_path / "wrong.json", data)
    box.query("CREATE DATABASE app")
    box.query("FLUSH BINARY LOGS")
    expected = f"the server's server_id is {box.server_id} but the configuration says"
    for command in (["backup", "create", "--full"], ["binlog", "archive"], ["status"]):
        code, out, err = run([*command, "--config", str(wrong)], capsys)
        assert code == 5, (command, out, err)
        assert expected in out + err, (command, out, err)
    assert sorted(site_files(site)) == before
    settings = parse_settings(data, source="test")
    with pytest.raises(ServerError, match="cannot archive: the server's server_id"):
        ops.archiver(settings, open_site(settings)).archive_once()


def test_the_server_port_rotates_lists_and_purges_binlogs(
    sandboxes: SandboxFactory, tmp_path: Path
) -> None:
    """``Server.binlogs`` of MariaDB: what the archiver and binlog purge rely on."""
    box = sandboxes.new()
    binlogs = open_server(parse_settings(config_for(box, tmp_path / "site"), source="test")).binlogs
    first = binlogs.list()
    binlogs.flush()
    binlogs.flush()
    after = binlogs.list()
    assert (
        after.names[: len(first.names)] == first.names and len(after.names) == len(first.names) + 2
    )
    assert after.active == after.names[-1] != first.active
    assert after.path(after.active).exists()

    def purged() -> bool:
        # MariaDB stops early, silently, at a file its binlog checkpoint has not passed
        # yet (right after FLUSH, under load): what a purge op must expect too.
        binlogs.purge_to(after.active)
        return binlogs.list().names == (after.active,)

    wait_for("PURGE BINARY LOGS to reach the active file", purged)
    assert not after.path(first.active).exists()
