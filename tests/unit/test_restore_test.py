"""Restore tests: the decisions (``domain/restore_test.py``: schedule, disk bounds, the
scratch server's id, the verdict), CHECK TABLE's rows read (``server/checks.py``), and
the op (``ops/restore_test.py``) against fake servers: a source that took a backup and
archived its binlogs, and scratch servers (``FakeScratchServers``) restored into."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from binhoard.app import archive_config, backup_config, restore_test_config
from binhoard.config import Settings
from binhoard.crypto.age import Identity
from binhoard.domain.errors import CancelledError, ConfigError, NotFoundError
from binhoard.domain.manifest import BackupManifest
from binhoard.domain.restore_test import (
    MAX_SERVER_ID,
    TableCheck,
    disk_needed,
    disk_problem,
    judge,
    marker_missing_reason,
    restore_test_due,
    scratch_server_id,
)
from binhoard.ops.archive import BinlogArchiver
from binhoard.ops.backup import create_backup
from binhoard.ops.restore_test import RestoreTestReport, run_restore_test
from binhoard.server.checks import table_checks
from binhoard.storage.store import MemoryStore
from tests.support.fakeserver import (
    FakeScratch,
    FakeScratchServers,
    FakeServer,
    ScriptedClock,
    fake_host,
)

IDENTITY = Identity.generate()
START = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


# --- the schedule -------------------------------------------------------------------------
def test_a_test_is_due_once_per_slot() -> None:
    now = datetime(2026, 3, 2, 5, 30, tzinfo=UTC)
    due = restore_test_due(now, None, 5, 0, 1440)
    assert due.due and "no restore test since" in due.reason
    assert due.slot == datetime(2026, 3, 2, 5, 0, tzinfo=UTC)
    assert due.next_at == datetime(2026, 3, 3, 5, 0, tzinfo=UTC)
    after = restore_test_due(now, datetime(2026, 3, 2, 5, 1, tzinfo=UTC), 5, 0, 1440)
    assert not after.due and "the last test started at 2026-03-02 05:01:00 UTC" in after.reason
    before = restore_test_due(now, datetime(2026, 3, 2, 4, 59, tzinfo=UTC), 5, 0, 1440)
    assert before.due


def test_the_slots_follow_the_backup_schedule_rules() -> None:
    # Every 6 hours from 01:00: the 07:00 slot is due at 08:00 after a test at 06:00.
    now = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    due = restore_test_due(now, datetime(2026, 3, 2, 6, 0, tzinfo=UTC), 1, 0, 360)
    assert due.due and due.slot == datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
    assert due.next_at == datetime(2026, 3, 2, 13, 0, tzinfo=UTC)


# --- bounds -------------------------------------------------------------------------------
def test_disk_needed_counts_the_chain_and_twice_the_binlogs_within_the_budget() -> None:
    assert disk_needed(1000, 300, 10_000) == 1600
    assert disk_needed(1000, 300, 100) == 1200  # never more binlogs at once than the budget


def test_a_backup_too_large_for_the_bounds_is_refused_saying_which() -> None:
    mib = 1024 * 1024
    assert disk_problem(10 * mib, 100 * mib, None) is None
    assert disk_problem(10 * mib, 100 * mib, 10 * mib) is None
    over_max = disk_problem(11 * mib, 100 * mib, 10 * mib)
    assert over_max is not None and "restore_test.max_disk_bytes" in over_max
    over_free = disk_problem(11 * mib, 10 * mib, None)
    assert over_free is not None and "free" in over_free and "max_disk_bytes" not in over_free


def test_the_scratch_server_id_is_none_of_the_sites() -> None:
    assert scratch_server_id({1, 7}) == MAX_SERVER_ID
    assert scratch_server_id({MAX_SERVER_ID, MAX_SERVER_ID - 1}) == MAX_SERVER_ID - 2


# --- the verdict ---------------------------------------------------------------------------
OK_TABLES = [TableCheck("app.t", True, "OK"), TableCheck("mysql.user", True, "OK")]


def test_every_table_ok_and_the_marker_found_passes() -> None:
    verdict = judge("b1", OK_TABLES, marker_skipped=None, marker_found=True)
    assert verdict.passed and verdict.reason == "2 tables checked OK; marker of b1 found"


def test_a_failed_table_or_a_missing_marker_fails_naming_it() -> None:
    bad = [*OK_TABLES, TableCheck("app.broken", False, "Size of datafile is: 10 Should be: 20")]
    verdict = judge("b1", bad, marker_skipped=None, marker_found=False)
    assert not verdict.passed
    assert "CHECK TABLE failed for 1 of 3 tables: app.broken: Size of datafile" in verdict.reason
    assert "the marker row of backup b1 is missing" in verdict.reason


def test_a_marker_the_source_could_not_write_is_not_held_against_the_backup() -> None:
    verdict = judge("b1", OK_TABLES, marker_skipped="the server is read-only", marker_found=False)
    assert verdict.passed and "no marker: the server is read-only" in verdict.reason
    assert marker_missing_reason({"marker": "written"}) is None
    assert marker_missing_reason({}) == "the backup records no marker (taken without one)"
    assert marker_missing_reason({"marker": "no marker: denied"}) == "no marker: denied"


def test_check_table_rows_are_read_per_table() -> None:
    rows: list[tuple[object, ...]] = [
        ("app.a", "check", "status", "OK"),
        ("app.b", "check", "warning", "Table is marked as crashed"),
        ("app.b", "check", "error", "Size of datafile is: 10 Should be: 20"),
        ("app.b", "check", "error", "Corrupt"),
        ("app.c", "check", "note", "The storage engine for the table doesn't support check"),
        ("app.d", "check", "status", "Table is already up to date"),
    ]
    assert table_checks(rows) == [
        TableCheck("app.a", True, "OK"),
        TableCheck("app.b", False, "Size of datafile is: 10 Should be: 20"),
        TableCheck("app.c", False, "The storage engine for the table doesn't support check"),
        TableCheck("app.d", True, "Table is already up to date"),
    ]


# --- the configuration ------------------------------------------------------------------------
def test_a_scratch_directory_overlapping_the_datadir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"restore_test\.scratch_directory: .* overlaps"):
        fake_host(tmp_path, IDENTITY, restore_test={"scratch_directory": str(tmp_path / "data/rt")})
    settings, _ = fake_host(tmp_path, IDENTITY)
    assert settings.scratch_directory == settings.temporary_directory / "restore-test"


# --- the op -----------------------------------------------------------------------------
@dataclass
class Source:
    settings: Settings
    server: FakeServer
    store: MemoryStore
    backup: BackupManifest


def source_in(directory: Path, **settings: Any) -> Source:
    """A source that committed 3 transactions, took a full backup, then 5 more in two
    binlog files, all archived."""
    config, server = fake_host(directory, IDENTITY, **settings)
    store = MemoryStore()
    server.commit(3)
    backup = create_backup(server, store, backup_config(config), now=ScriptedClock(START))
    for count in (2, 3):
        server.commit(count)
        server.binlogs.flush()
    archiver = BinlogArchiver(server, store, archive_config(config), use_cache=False)
    assert archiver.archive_once().problems == []
    return Source(config, server, store, backup)


@pytest.fixture
def source(tmp_path: Path) -> Source:
    return source_in(tmp_path / "source")


def run(source: Source, servers: FakeScratchServers, **kwargs: Any) -> RestoreTestReport:
    return run_restore_test(source.store, restore_test_config(source.settings), servers, **kwargs)


def test_the_newest_backup_restores_with_its_binlogs_and_passes(source: Source) -> None:
    servers = FakeScratchServers()
    report = run(source, servers)
    assert (report.outcome, report.stream_id, report.site) == (
        "passed",
        source.backup.backup_id,
        "default",
    )
    assert report.gtid == "0-7-8"  # every archived transaction, not only the snapshot's
    assert report.rto_seconds is not None and report.rto_seconds >= 0
    assert report.tables_checked == 2
    assert report.reason == f"2 tables checked OK; marker of {source.backup.backup_id} found"
    (scratch,) = servers.created
    # The copy was complete (the rows of every transaction), and is gone.
    assert scratch.destroyed and not scratch.directory.exists()
    assert scratch.server.server_id == MAX_SERVER_ID  # not the source's 7
    assert source.server.calls.count("check_tables") == 0  # the real server is untouched


def test_a_corrupt_table_fails_the_test_naming_it(source: Source) -> None:
    def corrupt(scratch: FakeScratch) -> None:
        scratch.server.checks.corrupt_tables["app.rows"] = "Size of datafile is: 5 Should be: 9"

    report = run(source, FakeScratchServers(corrupt))
    assert report.outcome == "failed"
    assert "CHECK TABLE failed for 1 of 2 tables: app.rows: Size of datafile" in report.reason
    assert report.gtid == "0-7-8"  # it did restore


def test_a_missing_marker_fails_the_test(source: Source) -> None:
    def forget(scratch: FakeScratch) -> None:
        scratch.server.checks.forget_markers = True

    report = run(source, FakeScratchServers(forget))
    assert report.outcome == "failed"
    assert f"the marker row of backup {source.backup.backup_id} is missing" in report.reason


def test_a_backup_of_a_read_only_server_has_no_marker_and_passes_saying_so(
    tmp_path: Path,
) -> None:
    # A replica, or a primary just promoted (read-only until the operator sets
    # read_only=OFF, its first backup taken at once): the message names neither.
    config, server = fake_host(tmp_path / "read-only", IDENTITY)
    server.read_only = True
    server.commit(2)
    store = MemoryStore()
    backup = create_backup(server, store, backup_config(config), now=ScriptedClock(START))
    assert "write_marker" not in server.calls  # a read-only server is never written to
    written = "the server was read-only when the backup was taken: no marker written"
    assert backup.extra == {"marker": written}
    report = run(Source(config, server, store, backup), FakeScratchServers())
    assert report.outcome == "passed"
    assert report.reason.endswith(f"no marker: {written}")
    assert "replica" not in report.reason


def test_an_older_backup_naming_every_read_only_server_a_replica_is_told_truly() -> None:
    before = {"marker": "the server is read-only (a replica): no marker written"}
    assert marker_missing_reason(before) == (
        "the server was read-only when the backup was taken: no marker written"
    )


def test_a_missing_marker_privilege_does_not_fail_the_backup(tmp_path: Path) -> None:
    config, server = fake_host(tmp_path / "source", IDENTITY)
    server.checks.marker_denied = True
    backup = create_backup(server, MemoryStore(), backup_config(config), now=ScriptedClock(START))
    marker = str(backup.extra["marker"])
    assert marker.startswith("no marker: binhoard's account may not write it: grant CREATE")
    assert "ON binhoard.*" in marker


def test_markers_can_be_turned_off(tmp_path: Path) -> None:
    config, server = fake_host(tmp_path / "source", IDENTITY, restore_test={"write_marker": False})
    backup = create_backup(server, MemoryStore(), backup_config(config), now=ScriptedClock(START))
    assert "write_marker" not in server.calls
    assert backup.extra == {"marker": "restore_test.write_marker is off"}


def test_a_backup_larger_than_max_disk_bytes_is_refused_before_anything(tmp_path: Path) -> None:
    source = source_in(tmp_path / "source", restore_test={"max_disk_bytes": 1024 * 1024})
    source.server.commit(1, payload=2 * 1024 * 1024)  # a binlog larger than the bound
    source.server.binlogs.flush()
    archiver = BinlogArchiver(source.server, source.store, archive_config(source.settings))
    assert archiver.archive_once().problems == []
    servers = FakeScratchServers()
    report = run(source, servers)
    assert report.outcome == "refused"
    assert "more than restore_test.max_disk_bytes (1.0 MiB)" in report.reason
    assert servers.created == [] and report.rto_seconds is None


def test_a_test_over_its_time_limit_is_killed_and_fails(tmp_path: Path) -> None:
    source = source_in(tmp_path / "source", restore_test={"time_limit": 0.2})
    hanging = threading.Event()

    def hang(scratch: FakeScratch) -> None:
        scratch.server.process.hang = hanging  # never answers until killed

    servers = FakeScratchServers(hang)
    report = run(source, servers)
    assert hanging.is_set()
    assert report.outcome == "failed"
    assert report.reason == "over restore_test.time_limit (0.2 s): stopped"
    (scratch,) = servers.created
    assert scratch.server.process.killed.is_set() and not scratch.directory.exists()


def test_a_named_stream_is_tested_and_an_unknown_one_is_not_found(source: Source) -> None:
    report = run(source, FakeScratchServers(), stream_id=source.backup.backup_id)
    assert report.stream_id == source.backup.backup_id
    with pytest.raises(NotFoundError, match="no backup 'nope'"):
        run(source, FakeScratchServers(), stream_id="nope")


def test_leftovers_of_a_killed_test_are_removed_first(source: Source) -> None:
    scratch = restore_test_config(source.settings).scratch
    (scratch / "data").mkdir(parents=True)
    servers = FakeScratchServers()
    assert run(source, servers).outcome == "passed"
    assert servers.removed == [scratch]


def test_a_cancelled_test_ends_without_a_result_and_leaves_nothing(source: Source) -> None:
    cancel = threading.Event()

    def cancel_now(_: FakeScratch) -> None:
        cancel.set()

    servers = FakeScratchServers(cancel_now)
    with pytest.raises(CancelledError):
        run(source, servers, cancel=cancel)
    assert not servers.created[0].directory.exists()


def test_the_report_as_json(source: Source) -> None:
    report = run(source, FakeScratchServers(), now=lambda: START + timedelta(hours=1))
    data = report.as_dict()
    assert data["result"] == "passed" and data["gtid"] == "0-7-8"
    assert data["started_at"] == "2026-01-05T11:00:00+00:00"
