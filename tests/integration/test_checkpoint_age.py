"""Before a backup, InnoDB's checkpoint is brought within a bound of the redo's end (real
server): nothing is done when it already is, the server's settings always come back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from binhoard.app import open_server
from binhoard.ops.backup import FlushSettingsJournal
from binhoard.server import sql
from tests.support.configs import settings_for
from tests.support.sandboxes import SandboxFactory
from tests.support.workload import create_schema, write_rows

FLUSH_SETTINGS = (
    "innodb_max_dirty_pages_pct",
    "innodb_max_dirty_pages_pct_lwm",
    "innodb_adaptive_flushing",
    "innodb_io_capacity",
)


def test_checkpoint_age_is_bounded_only_when_over_the_limit(sandboxes: SandboxFactory) -> None:
    box = sandboxes.new()
    conn = box.connect()
    try:
        settings = sql.variables(conn, *FLUSH_SETTINGS)
        sql.bound_checkpoint_age(conn)  # whatever start-up left behind

        idle = sql.bound_checkpoint_age(conn)
        # Under the limit nothing is forced, so nothing is waited for (its duration is
        # not asserted: a loaded CI machine makes any wall-clock bound flaky).
        assert not idle.forced and idle.reached

        # ~800 KiB of redo, which InnoDB on its own would not checkpoint for a long time.
        create_schema(box)
        write_rows(box, 2000, seed=1)
        assert sql.checkpoint(conn).age > sql.CHECKPOINT_AGE_LIMIT

        gave_up = sql.bound_checkpoint_age(conn, limit=0, timeout=0)
        assert gave_up.forced and not gave_up.reached
        assert sql.variables(conn, *FLUSH_SETTINGS) == settings

        before = sql.checkpoint(conn)
        bounded = sql.bound_checkpoint_age(conn)
        assert bounded.forced and bounded.reached
        assert sql.checkpoint(conn).checkpoint_lsn >= before.lsn - sql.CHECKPOINT_AGE_LIMIT
        assert bounded.seconds < sql.CHECKPOINT_WAIT_SECONDS
        assert sql.variables(conn, *FLUSH_SETTINGS) == settings
    finally:
        conn.close()


class RecordingJournal:
    def __init__(self, conn: sql.Connection) -> None:
        self.conn = conn
        self.saved: dict[str, str] | None = None
        self.server_when_saved: dict[str, str] | None = None
        self.cleared_with: dict[str, str] | None = None

    def save(self, values: dict[str, str]) -> None:
        self.saved = values
        self.server_when_saved = sql.variables(self.conn, *FLUSH_SETTINGS)

    def clear(self) -> None:
        self.cleared_with = sql.variables(self.conn, *FLUSH_SETTINGS)


def test_changed_settings_are_journaled_and_a_killed_run_is_undone(
    sandboxes: SandboxFactory, tmp_path: Path
) -> None:
    box = sandboxes.new()
    conn = box.connect()
    watcher = box.connect()
    try:
        original = sql.variables(conn, *FLUSH_SETTINGS)
        create_schema(box)
        write_rows(box, 2000, seed=2)
        journal = RecordingJournal(watcher)
        sql.bound_checkpoint_age(conn, journal=journal, limit=0, timeout=0)
        # Saved before anything changed, cleared only once everything was back.
        assert journal.saved == original == journal.server_when_saved
        assert journal.cleared_with == original

        # A backup killed while the settings were changed: its journal is on disk.
        settings = settings_for(box, tmp_path / "site")
        left = FlushSettingsJournal(settings.state_directory)
        flushing = open_server(settings).flushing
        left.save(original)
        sql.query(conn, "SET GLOBAL innodb_io_capacity = @@GLOBAL.innodb_io_capacity_max")
        sql.query(conn, "SET GLOBAL innodb_adaptive_flushing = OFF")
        assert sql.variables(conn, *FLUSH_SETTINGS) != original
        left.restore_left_over(flushing)
        assert sql.variables(conn, *FLUSH_SETTINGS) == original
        assert not (settings.state_directory / "innodb-flush-settings.json").exists()
        left.restore_left_over(flushing)  # nothing left: nothing done
    finally:
        conn.close()
        watcher.close()


def test_a_damaged_journal_puts_back_the_startup_values_and_says_so(
    sandboxes: SandboxFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The saved values are lost: taking the changed ones for the server's own (as the
    next backup did, after 'ignoring unreadable state file') kept it flushing at full
    I/O capacity for good. The startup values (my.cnf, else the defaults) go back."""
    box = sandboxes.new(options={"innodb_io_capacity": "300"})
    settings = settings_for(box, tmp_path / "site")
    path = settings.state_directory / "innodb-flush-settings.json"
    conn = box.connect()
    try:
        original = sql.variables(conn, *FLUSH_SETTINGS)
        assert original["innodb_io_capacity"] == "300"
        for damage in (
            b'{"settings": {"innodb_io_capa',
            b"[]",
            json.dumps({"settings": {"innodb_io_capacity": "lots"}}).encode(),
            json.dumps({"settings": {"secure_file_priv": "/"}}).encode(),
        ):
            sql.query(conn, "SET GLOBAL innodb_io_capacity = @@GLOBAL.innodb_io_capacity_max")
            sql.query(conn, "SET GLOBAL innodb_adaptive_flushing = OFF")
            sql.query(conn, "SET GLOBAL innodb_max_dirty_pages_pct = 0")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(damage)
            caplog.clear()
            FlushSettingsJournal(settings.state_directory).restore_left_over(
                open_server(settings).flushing
            )
            assert sql.variables(conn, *FLUSH_SETTINGS) == original, damage
            assert not path.exists()
            assert any(
                f"{path} is damaged" in r.getMessage()
                and "innodb_io_capacity=300" in r.getMessage()
                for r in caplog.records
            ), damage
    finally:
        conn.close()
