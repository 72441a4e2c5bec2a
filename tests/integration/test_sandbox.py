"""Sandbox MariaDB instances: real mariadbd processes, several at once, always cleaned up."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from binhoard.cli import cli
from binhoard.domain.errors import ServerError
from binhoard.domain.privileges import BACKUP_PRIVILEGES, RESTORE_PRIVILEGES, parse_grants
from binhoard.server.sandbox import REQUIRED_SETTINGS, SANDBOX_ACCOUNT, Sandbox
from tests.support.sandboxes import SandboxFactory, sandbox_factory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/cmdline").read_bytes() != b""


def test_two_sandboxes_at_once_are_independent_and_cleaned_up() -> None:
    with sandbox_factory() as factory:
        one = factory.new("one")
        two = factory.new("two")
        pids = [one.pid(), two.pid()]
        assert None not in pids and pids[0] != pids[1]
        assert one.port != two.port
        one.query("CREATE DATABASE app")
        one.query("CREATE TABLE app.t (id INT PRIMARY KEY)")
        one.query("INSERT INTO app.t VALUES (1), (2)")
        two.query("CREATE DATABASE app")
        two.query("CREATE TABLE app.t (id INT PRIMARY KEY)")
        assert one.query("SELECT COUNT(*) FROM app.t") == [(2,)]
        assert two.query("SELECT COUNT(*) FROM app.t") == [(0,)]
        assert one.query("SELECT @@server_id")[0][0] != two.query("SELECT @@server_id")[0][0]
        root = factory.root
    assert all(pid is not None and not _alive(pid) for pid in pids)
    assert not root.exists()


def test_cleanup_happens_even_when_the_test_fails() -> None:
    pid = None
    root = None
    try:
        with sandbox_factory() as factory:
            box = factory.new()
            pid, root = box.pid(), factory.root
            raise RuntimeError("the test failed")
    except RuntimeError:
        pass
    assert pid is not None and not _alive(pid)
    assert root is not None and not root.exists()


def test_sandbox_has_the_settings_binhoard_requires(sandboxes: SandboxFactory) -> None:
    box = sandboxes.new()
    names = ", ".join(f"'{name}'" for name in REQUIRED_SETTINGS)
    rows = dict(box.query(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({names})"))
    assert rows == REQUIRED_SETTINGS
    assert box.query("SELECT @@default_storage_engine") == [("InnoDB",)]
    assert box.query("SELECT @@bind_address") == [("127.0.0.1",)]
    # The binlogs live outside the datadir, so a backup can be moved into an empty one.
    box.query("FLUSH BINARY LOGS")
    assert (box.binlog_dir / "binlog.000002").exists()


def test_stop_stops_only_that_instance_and_restart_keeps_data(
    sandboxes: SandboxFactory,
) -> None:
    one = sandboxes.new("one")
    two = sandboxes.new("two")
    one.query("CREATE DATABASE kept")
    port, server_id = one.port, one.server_id
    assert one.stop() is True
    assert one.pid() is None
    assert two.query("SELECT 1") == [(1,)]
    assert one.stop() is False
    one.start()
    assert (one.port, one.server_id) == (port, server_id)
    assert ("kept",) in one.query("SHOW DATABASES")


def test_stale_pid_file_is_not_trusted(sandboxes: SandboxFactory) -> None:
    box = sandboxes.new(start=False)
    box.create()
    # A pid file left by a crash, naming a process that is not this sandbox's server.
    box.pid_file.write_text(f"{os.getpid()}\n")
    assert box.pid() is None
    assert box.stop() is False
    assert _alive(os.getpid())


def test_cli_start_sql_status_stop(tmp_path: Path) -> None:
    root = tmp_path / "sb"
    runner = CliRunner()
    try:
        result = runner.invoke(cli, ["sandbox", "start", "c1", "--root", str(root)])
        assert result.exit_code == 0, result.output
        assert "sandbox c1 running" in result.output
        result = runner.invoke(
            cli,
            ["sandbox", "sql", "--name", "c1", "--root", str(root), "SELECT 40 + 2 AS answer"],
        )
        assert result.exit_code == 0, result.output
        assert result.output.splitlines() == ["answer", "42"]
        result = runner.invoke(cli, ["sandbox", "status", "c1", "--root", str(root), "--json"])
        assert result.exit_code == 0 and '"running": true' in result.output
        result = runner.invoke(cli, ["sandbox", "stop", "c1", "--root", str(root)])
        assert result.exit_code == 0 and "stopped" in result.output
        result = runner.invoke(cli, ["sandbox", "status", "c1", "--root", str(root)])
        assert result.exit_code == 1 and "stopped" in result.output
    finally:
        Sandbox(root / "c1").destroy()


def test_start_moves_to_another_port_when_its_port_is_taken(sandboxes: SandboxFactory) -> None:
    box = sandboxes.new(start=False)
    box.create()
    taken = box.port
    # Someone else binds the chosen port between its choice and mariadbd's bind.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        box.start()
        moved = box.port
        assert moved != taken
        assert box.query("SELECT @@port") == [(moved,)]
        assert json.loads((box.directory / "sandbox.json").read_text())["port"] == moved
        assert f"port={moved}\n" in box.cnf.read_text()
        with socket.create_connection(("127.0.0.1", moved), timeout=5):
            pass
        # A restart keeps the new port, and the server_id chosen at creation.
        server_id = box.server_id
        box.stop()
        box.start()
        assert (box.port, box.server_id) == (moved, server_id)


def test_a_port_asked_for_is_not_moved(sandboxes: SandboxFactory) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        box = sandboxes.new(start=False, port=taken)
        with pytest.raises(ServerError, match="exited"):
            box.start(timeout=30)
        assert box.port == taken


def test_sandbox_user_has_exactly_the_documented_grants(sandboxes: SandboxFactory) -> None:
    box = sandboxes.new()
    rows = [str(r[0]) for r in box.query(f"SHOW GRANTS FOR {SANDBOX_ACCOUNT}")]
    grants = parse_grants(rows)
    assert not grants.all_privileges
    assert grants.privileges == frozenset({*BACKUP_PRIVILEGES, *RESTORE_PRIVILEGES})
    # Creating it wrote nothing to the binlog: a new sandbox has no GTID history.
    assert box.query("SELECT @@gtid_binlog_pos, @@gtid_current_pos") == [("", "")]
