"""Deleting backups with their streams (``ops/expire.py``) on the memory store: what goes,
what stays (binlog data objects other streams share), and a crash at every single
delete, after which the next run converges on the site an uninterrupted run leaves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from binhoard.app import backup_config
from binhoard.config import parse_settings
from binhoard.domain.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    TransientStorageError,
)
from binhoard.domain.manifest import manifest_key
from binhoard.domain.retention import GfsCounts, RetentionPolicy
from binhoard.ops.backup import cleanup_leftovers
from binhoard.ops.catalog import read_site
from binhoard.ops.expire import DeletionJournal, delete_backup, prune, retention_policy
from binhoard.ops.marks import preserve
from binhoard.storage.store import MemoryStore, ObjectStore, read_all
from binhoard.storage.wrappers import FaultPlan, FaultyStore
from tests.support.sites import SiteBuilder, full_incremental_full, site_config

KEEP_TWO = RetentionPolicy(count_min=0, count_max=2)


def now() -> datetime:
    # The memory store stamps objects with the wall clock: leftovers' age is against it.
    return datetime.now(UTC)


def build_site(store: ObjectStore) -> SiteBuilder:
    """``full_incremental_full`` (A, B on A, C), then a full D (file 8) that closes C;
    each stream shares a binlog file's object with the next."""
    build = full_incremental_full(store)
    build.backup("D")
    build.archive("C", 1)
    build.archive("D", 1)
    build.mark("C", completed=False, closed_by="D")
    build.mark("D")
    build.put_objects()
    return build


def contents(store: ObjectStore) -> dict[str, bytes]:
    return {info.key: read_all(store, info.key) for info in store.list()}


def assert_consistent(store: ObjectStore) -> None:
    """What every reader relies on: no backup or stream broken, every record's data
    object there, every incremental's parents there."""
    site = read_site(store)
    assert site.backups.broken == {}
    assert site.broken_streams == {}
    present = {info.key for info in store.list()}
    for stream in site.streams:
        for record in stream.records:
            assert record.object.key in present, record.key


def binlog_keys(store: ObjectStore) -> set[str]:
    return {info.key for info in store.list("binlogs/")}


def test_prune_deletes_whole_streams_and_the_binlogs_only_they_name(tmp_path: Path) -> None:
    store = MemoryStore()
    build_site(store)
    journal = DeletionJournal(tmp_path)
    report = prune(store, KEEP_TWO, now(), journal=journal)
    assert [(d.backup_id, d.action, d.rule) for d in report.decisions] == [
        ("A", "delete", "count-max"),
        ("B", "delete", "count-max"),
        ("C", "keep", "window"),
        ("D", "keep", "newest"),
    ]
    assert [d.backup_id for d in report.deleted] == ["B", "A"]  # the incremental first
    keys = set(contents(store))
    assert not any(
        k.startswith(("backups/A/", "backups/B/", "streams/A/", "streams/B/")) for k in keys
    )
    # Files 1-5 were A's and B's only; 6 is shared with C, 7 and 8 are C's and D's.
    assert binlog_keys(store) == {f"binlogs/101/binlog.{n:06d}" for n in (6, 7, 8)}
    assert [d.binlog_objects for d in report.deleted] == [1, 4]
    assert_consistent(store)
    assert journal.pending() == set()
    # Nothing more to do, and a dry run deletes nothing.
    assert prune(store, KEEP_TWO, now(), journal=journal).deleted == []
    store2 = MemoryStore()
    build_site(store2)
    before = contents(store2)
    dry = prune(store2, KEEP_TWO, now(), dry_run=True)
    assert [d.action for d in dry.decisions] == ["delete", "delete", "keep", "keep"]
    assert dry.deleted == [] and contents(store2) == before


def test_a_crash_at_any_delete_leaves_a_consistent_site_and_the_next_prune_finishes(
    tmp_path: Path,
) -> None:
    reference = MemoryStore()
    build_site(reference)
    counting = FaultyStore(reference, FaultPlan(operations=frozenset({"delete"})))
    prune(counting, KEEP_TWO, now())
    expected = contents(reference)
    deletes = counting.calls["delete"]
    assert deletes > 10
    for n in range(1, deletes + 1):
        store = MemoryStore()
        build_site(store)
        journal = DeletionJournal(tmp_path / f"crash-{n}")
        faulty = FaultyStore(
            store, FaultPlan(operations=frozenset({"delete"}), fail_calls=frozenset({n}))
        )
        with pytest.raises(TransientStorageError):
            prune(faulty, KEEP_TWO, now(), journal=journal)
        assert_consistent(store)
        assert journal.pending() == {"A", "B"}
        # This host knows what it was deleting: the next prune finishes it at once.
        report = prune(store, KEEP_TWO, now(), journal=journal)
        assert contents(store) == expected, f"crash at delete {n}"
        assert journal.pending() == set()
        assert_consistent(store)
        assert {d.backup_id for d in report.finished} <= {"A", "B"}


def test_another_hosts_interrupted_deletion_waits_a_day_then_is_finished(tmp_path: Path) -> None:
    store = MemoryStore()
    build_site(store)
    faulty = FaultyStore(
        store, FaultPlan(operations=frozenset({"delete"}), fail_calls=frozenset({3}))
    )
    with pytest.raises(TransientStorageError):
        prune(faulty, KEEP_TWO, now(), journal=DeletionJournal(tmp_path / "other-host"))
    left = prune(store, KEEP_TWO, now(), journal=DeletionJournal(tmp_path / "this-host"))
    assert left.leftovers == ["B"]  # its manifest is gone: maybe a backup in progress
    assert any(k.startswith("streams/B/") for k in contents(store))
    later = prune(store, KEEP_TWO, now() + timedelta(hours=25))
    assert [d.backup_id for d in later.finished] == ["B"]
    assert not any(k.startswith(("streams/B/", "backups/B/")) for k in contents(store))
    assert binlog_keys(store) == {f"binlogs/101/binlog.{n:06d}" for n in (6, 7, 8)}


def test_the_next_backup_on_the_host_also_finishes_an_interrupted_deletion(tmp_path: Path) -> None:
    settings = parse_settings(site_config(tmp_path), source="test")
    store = MemoryStore()
    build_site(store)
    journal = DeletionJournal(settings.state_directory)
    faulty = FaultyStore(
        store, FaultPlan(operations=frozenset({"delete"}), fail_calls=frozenset({2}))
    )
    with pytest.raises(TransientStorageError):
        prune(faulty, KEEP_TWO, now(), journal=journal)
    assert cleanup_leftovers(backup_config(settings), store, now()) == ["B"]
    assert not any(k.startswith(("streams/B/", "backups/B/")) for k in contents(store))
    assert "binlogs/101/binlog.000005" not in binlog_keys(store)
    assert "binlogs/101/binlog.000006" in binlog_keys(store)  # C names it
    assert_consistent(store)


def test_delete_by_hand_refuses_what_retention_keeps_unless_forced(tmp_path: Path) -> None:
    store = MemoryStore()
    build_site(store)
    journal = DeletionJournal(tmp_path)
    with pytest.raises(NotFoundError, match="no backup X"):
        delete_backup(store, "X", now(), journal=journal)
    with pytest.raises(ConflictError, match="backup D: the newest backup that can be restored"):
        delete_backup(store, "D", now(), journal=journal)
    with pytest.raises(ConflictError, match=r"incremental backups build on A .*: B"):
        delete_backup(store, "A", now(), journal=journal)
    preserve(store, "C", now() + timedelta(days=1), now=now())
    with pytest.raises(ConflictError, match="backup C: preserved until"):
        delete_backup(store, "C", now(), journal=journal)
    assert [d.backup_id for d in delete_backup(store, "B", now(), journal=journal)] == ["B"]
    assert_consistent(store)
    assert [d.backup_id for d in delete_backup(store, "A", now(), journal=journal)] == ["A"]
    deleted = delete_backup(store, "C", now(), force=True, journal=journal)
    assert [d.backup_id for d in deleted] == ["C"]
    assert binlog_keys(store) == {"binlogs/101/binlog.000008"}  # D's
    assert [s.stream_id for s in read_site(store).streams] == ["D"]
    assert_consistent(store)


def test_forced_deletion_of_a_full_backup_takes_its_incrementals(tmp_path: Path) -> None:
    store = MemoryStore()
    build_site(store)
    deleted = delete_backup(store, "A", now(), force=True, journal=DeletionJournal(tmp_path))
    assert [d.backup_id for d in deleted] == ["B", "A"]
    assert_consistent(store)


def test_an_open_stream_is_kept_and_a_broken_backup_goes_once_a_newer_one_is_usable() -> None:
    store = MemoryStore()
    build = build_site(store)
    # D's stream is open; E, newer, is still catching up (open too) and so is C (not closed).
    store.delete("streams/C/closed.json")
    build.backup("E")
    store.put(manifest_key("B"), [b"not json"])  # B broken: a corrupt manifest
    decisions = prune(store, RetentionPolicy(0, 1), now(), dry_run=True).decisions
    # B's time is unknown (its manifest cannot be read, its id names none): oldest.
    assert [(d.backup_id, d.action, d.rule) for d in decisions] == [
        ("B", "delete", "broken"),
        ("A", "delete", "count-max"),
        ("C", "keep", "open-stream"),
        ("D", "keep", "open-stream"),
        ("E", "keep", "newest"),
    ]


def test_two_deletions_on_one_host_do_not_run_together(tmp_path: Path) -> None:
    store = MemoryStore()
    build_site(store)
    journal = DeletionJournal(tmp_path)
    with journal.locked(), pytest.raises(ConflictError, match="already running a deletion"):
        prune(store, KEEP_TWO, now(), journal=DeletionJournal(tmp_path))
    assert prune(store, KEEP_TWO, now(), journal=journal).deleted


def test_the_policy_comes_from_backup_settings(tmp_path: Path) -> None:
    data = site_config(tmp_path)
    data["backup_settings"] = {
        "backup_count_min": 2,
        "backup_count_max": 9,
        "backup_age_days_max": 1.5,
        "retention": {"daily": 7, "monthly": 12},
    }
    policy = retention_policy(parse_settings(data, source="test").backup_settings)
    assert policy == RetentionPolicy(2, 9, timedelta(hours=36), GfsCounts(daily=7, monthly=12))
    data["backup_settings"] = {"retention": {"daily": -1, "fortnightly": 2}}
    with pytest.raises(ConfigError) as raised:
        parse_settings(data, source="bh.json")
    assert raised.value.problems == [
        ("backup_settings.retention.daily", "Input should be greater than or equal to 0"),
        ("backup_settings.retention.fortnightly", "unknown key"),
    ]
