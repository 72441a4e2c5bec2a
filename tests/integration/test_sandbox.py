"""Sandbox MariaDB instances: real mariadbd processes, several at once, always cleaned up."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner

from binhoard.cli import cli
from binhoard.server.sandbox import REQUIRED_SETTINGS, Sandbox
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
