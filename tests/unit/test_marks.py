"""An operator's marks on a backup (preserved until, broken) as create-only documents:
the newest holds, every reader honours them, and they cost no request once cached."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from binhoard.domain.documents import CorruptDocumentError
from binhoard.domain.errors import NotFoundError
from binhoard.domain.marks import BackupMark, mark_key, parse_mark_key
from binhoard.domain.restore_plan import BrokenBackupError
from binhoard.ops.catalog import read_site
from binhoard.ops.marks import mark_broken, preserve
from binhoard.ops.restore_backup import resolve_backup
from binhoard.ops.site import list_backups, read_backups
from binhoard.ops.sitecache import open_cache
from binhoard.storage.store import MemoryStore, read_all
from binhoard.storage.wrappers import MetricsStore
from tests.support.sites import CountingObserver, full_incremental_full

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def store() -> MemoryStore:
    """Full A, incremental B on A, full C."""
    store = MemoryStore()
    full_incremental_full(store)
    return store


def test_marks_round_trip_and_their_keys_are_checked() -> None:
    mark = BackupMark("A", "preserve", 3, NOW, preserve_until=NOW + timedelta(days=1))
    assert mark.key == "backups/A/preserve/0000000003.json"
    assert BackupMark.from_bytes(mark.to_bytes(), key=mark.key) == mark
    assert parse_mark_key(mark.key) == ("A", "preserve", 3)
    assert parse_mark_key("backups/A/manifest.json") is None
    assert parse_mark_key("backups/A/broken/12.json") is None
    with pytest.raises(CorruptDocumentError, match="names preserve mark 3 of A"):
        BackupMark.from_bytes(mark.to_bytes(), key=mark_key("A", "preserve", 4))
    broken = BackupMark("A", "broken", 0, NOW, broken=True, reason="disk died")
    assert BackupMark.from_bytes(broken.to_bytes(), key=broken.key) == broken


def test_the_newest_preservation_holds(store: MemoryStore) -> None:
    until = NOW + timedelta(days=7)
    first = preserve(store, "A", until, now=NOW)
    assert first.seq == 0
    assert read_backups(store).entries[0].preserve_until == until
    later = preserve(store, "A", until + timedelta(days=1), now=NOW)
    assert later.seq == 1
    assert read_backups(store).entries[0].preserve_until == until + timedelta(days=1)
    cleared = preserve(store, "A", None, now=NOW)
    assert cleared.key == "backups/A/preserve/0000000002.json"
    assert read_backups(store).entries[0].preserve_until is None
    with pytest.raises(NotFoundError, match="no backup X in memory"):
        preserve(store, "X", until, now=NOW)


def test_an_unreadable_newest_preservation_is_reported_not_ignored(store: MemoryStore) -> None:
    mark = preserve(store, "A", NOW + timedelta(days=1), now=NOW)
    store.replace_raw(mark.key, b"{}")
    entry = read_backups(store).entries[0]
    assert entry.preserve_until is None
    assert entry.preserve_unreadable is not None
    assert entry.preserve_unreadable.key == mark.key
    assert entry.broken is None  # the backup itself is fine
    preserve(store, "A", None, now=NOW)  # a newer one repairs it
    assert read_backups(store).entries[0].preserve_unreadable is None


def test_a_backup_marked_broken_is_never_restored_or_built_on(store: MemoryStore) -> None:
    mark_broken(store, "A", reason="restore test failed", now=NOW)
    listing = read_backups(store)
    broken = listing.broken
    assert broken["A"].key == "backups/A/broken/0000000000.json"
    assert broken["A"].reason == (
        "backup A was marked broken at 2026-03-10 12:00:00 UTC: restore test failed"
    )
    assert "builds on backup A, which is broken" in broken["B"].reason  # its incremental
    assert listing.entries[0].broken_mark is not None
    assert [m.backup_id for m in list_backups(store)] == ["C"]
    site = read_site(store)
    assert set(site.broken_streams) == {"A", "B"}
    with pytest.raises(BrokenBackupError, match="marked broken"):
        resolve_backup(store, "A")
    # Taken back: usable again.
    mark_broken(store, "A", broken=False, now=NOW)
    assert read_backups(store).broken == {}


def test_an_unreadable_broken_mark_breaks_the_backup(store: MemoryStore) -> None:
    mark = mark_broken(store, "C", now=NOW)
    store.replace_raw(mark.key, read_all(store, mark.key)[:-5])
    assert read_backups(store).broken["C"].key == mark.key


def test_marks_cost_no_request_once_cached(store: MemoryStore, tmp_path: Path) -> None:
    for backup_id in ("A", "B", "C"):
        preserve(store, backup_id, NOW + timedelta(days=1), now=NOW)
        preserve(store, backup_id, NOW + timedelta(days=2), now=NOW)
    mark_broken(store, "C", now=NOW)
    observer = CountingObserver()
    counted = MetricsStore(store, observer)
    cache = open_cache(tmp_path, counted.describe())
    try:
        read_backups(counted, cache)
        cache.commit()
        # 3 manifests and the newest mark of each kind: 3 + 3 + 1, never the older ones.
        assert observer.take() == {"list": 1, "get": 7}
        read_backups(counted, cache)
        assert observer.take() == {"list": 1}
    finally:
        cache.close()
