"""Reading a site when objects are corrupt or missing (broken backups and streams), and
through the local cache (requests for what is new only, never trusted over the site)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from binhoard.domain.catalog import closed_key, completed_key, stream_prefix
from binhoard.domain.documents import CorruptDocumentError
from binhoard.domain.manifest import manifest_key
from binhoard.ops.catalog import read_site, read_streams
from binhoard.ops.site import list_backups, read_backups, read_manifest
from binhoard.ops.sitecache import CachedDocument, SiteCache, open_cache
from binhoard.storage.backends import LocalStore
from binhoard.storage.store import MemoryStore, ObjectStore, read_all
from binhoard.storage.wrappers import MetricsStore
from tests.support.sites import CountingObserver, SiteBuilder, full_incremental_full


def corrupt(store: MemoryStore, key: str) -> None:
    raw = read_all(store, key)
    store.replace_raw(key, raw.replace(b'"', b"'", 1))


@pytest.fixture
def site() -> tuple[MemoryStore, SiteBuilder]:
    """A full backup A with an incremental B on it, then a full C; streams A (closed by
    C), B (closed by C) and C (open)."""
    store = MemoryStore()
    return store, full_incremental_full(store)


# --- broken backups ----------------------------------------------------------------------
def test_a_corrupt_manifest_breaks_that_backup_and_its_incrementals_only(
    site: tuple[MemoryStore, SiteBuilder],
) -> None:
    store, _ = site
    corrupt(store, manifest_key("A"))
    listing = read_backups(store)
    assert [e.backup_id for e in listing.entries] == ["A", "B", "C"]
    assert [m.backup_id for m in listing.usable] == ["C"]
    broken = listing.broken
    assert broken["A"].key == manifest_key("A")
    assert "backups/A/manifest.json is corrupt" in broken["A"].reason
    assert broken["B"].key == manifest_key("A")
    assert "builds on backup A, which is broken" in broken["B"].reason
    assert [m.backup_id for m in list_backups(store)] == ["C"]


def test_a_missing_parent_breaks_an_incremental(site: tuple[MemoryStore, SiteBuilder]) -> None:
    store, _ = site
    store.delete(manifest_key("A"))
    broken = read_backups(store).broken
    assert list(broken) == ["B"]
    assert "manifest backups/A/manifest.json does not exist" in broken["B"].reason


def test_streams_of_broken_backups_are_broken_the_others_are_not(
    site: tuple[MemoryStore, SiteBuilder],
) -> None:
    store, _ = site
    corrupt(store, manifest_key("A"))
    state = read_site(store)
    assert [s.stream_id for s in state.streams] == ["B", "C"]  # A has no readable manifest
    b, c = state.streams
    assert b.broken is not None and b.broken.key == manifest_key("A")
    assert len(b.records) == 3  # intact: only the backup is unusable
    assert c.broken is None and c.problems() == []


# --- broken streams ----------------------------------------------------------------------
@pytest.mark.parametrize("what", ["record", "completed", "closed", "hole"])
def test_a_corrupt_record_or_marker_breaks_only_its_stream(
    site: tuple[MemoryStore, SiteBuilder], what: str
) -> None:
    store, build = site
    key = {
        "record": build.record_key("A", 2),
        "completed": completed_key("A"),
        "closed": closed_key("A"),
        "hole": build.record_key("A", 2),
    }[what]
    if what == "hole":
        store.delete(key)
    else:
        corrupt(store, key)
    a, b, c = read_streams(store)
    assert a.broken is not None
    assert a.broken.key == key
    assert key in a.broken.reason
    assert a.problems()[0].startswith("broken: ")
    # Records before a bad record are intact; a bad marker leaves every record.
    assert len(a.records) == (2 if what in ("record", "hole") else 4)
    assert b.broken is None and c.broken is None
    assert len(c.records) == 2


# --- the cache ---------------------------------------------------------------------------
def counted(store: ObjectStore) -> tuple[MetricsStore, CountingObserver]:
    observer = CountingObserver()
    return MetricsStore(store, observer), observer


def test_an_incremental_read_costs_requests_for_what_is_new_only(
    site: tuple[MemoryStore, SiteBuilder], tmp_path: Path
) -> None:
    memory, build = site
    store, calls = counted(memory)
    cache = open_cache(tmp_path, store.describe())
    first = read_site(store, cache, incremental=True)
    assert calls.take()["get"] == 3 + 7 + 2 + 5  # manifests, records, markers
    again = read_site(store, cache, incremental=True)
    assert again == first
    # One listing of backups/, one of the open stream C; closed A and B: nothing.
    assert calls.take() == {"list": 2}

    build.archive("C", 2)
    third = read_site(store, cache, incremental=True)
    assert calls.take() == {"list": 2, "get": 2}
    assert [len(s.records) for s in third.streams] == [4, 3, 4]
    # A new process (a new cache object on the same file) starts from the same rows.
    fresh = open_cache(tmp_path, store.describe())
    assert read_site(store, fresh, incremental=True) == third
    assert calls.take() == {"list": 2}


class LoadCountingCache(SiteCache):
    """The cache, counting the prefixes whose rows were loaded."""

    def __init__(self, path: Path, site: str) -> None:
        super().__init__(path, site)
        self.loaded: list[str] = []

    def load(self, prefix: str) -> dict[str, CachedDocument]:
        self.loaded.append(prefix)
        return super().load(prefix)


def test_a_closed_stream_is_built_once_per_process_from_the_cache(
    site: tuple[MemoryStore, SiteBuilder], tmp_path: Path
) -> None:
    """Closed and complete is final: later passes reuse the stream built, without loading
    its rows (5,000 records rebuilt every 5 s cost the idle daemon ~1% of a core)."""
    store, _ = site
    cache = LoadCountingCache(tmp_path / "cache.sqlite", store.describe())
    first = read_site(store, cache, incremental=True)  # lists A and B: in the cache now
    assert read_site(store, cache, incremental=True) == first  # built from the cache
    cache.loaded.clear()
    assert read_site(store, cache, incremental=True) == first
    assert cache.loaded == ["backups/", stream_prefix("C")]  # the open stream only
    # A full read still reads (and checks) every stream.
    cache.loaded.clear()
    assert read_site(store, cache) == first
    assert cache.loaded == ["backups/"] + [stream_prefix(s) for s in ("A", "B", "C")]
    # A backup found broken later still shows as broken, over the stream kept.
    corrupt(store, manifest_key("A"))  # B, an incremental on A, is broken with it
    streams = {s.stream_id: s for s in read_site(store, cache, incremental=True).streams}
    assert streams["B"].broken is not None and streams["C"].broken is None


def test_a_full_read_lists_everything_but_fetches_nothing_twice(
    site: tuple[MemoryStore, SiteBuilder], tmp_path: Path
) -> None:
    memory, _ = site
    store, calls = counted(memory)
    cache = open_cache(tmp_path, store.describe())
    first = read_site(store, cache)
    calls.take()
    assert read_site(store, cache) == first
    assert calls.take() == {"list": 4}
    assert read_site(store) == first  # the cache changes nothing


def test_the_cache_is_never_trusted_over_the_site(
    site: tuple[MemoryStore, SiteBuilder], tmp_path: Path
) -> None:
    memory, build = site
    cache = open_cache(tmp_path, memory.describe())
    read_site(memory, cache, incremental=True)

    # The open stream's last record deleted: the tail check sees it, the stream is
    # listed again whole and reported broken (a hole is not possible, so it is the end).
    memory.delete(build.record_key("C", 1))
    memory.put(build.record_key("C", 2), [read_all(memory, build.record_key("C", 0))])
    state = read_site(memory, cache, incremental=True)
    c = state.streams[-1]
    assert c.broken is not None and c.broken.key == build.record_key("C", 1)

    # A deleted backup goes with its stream, from the cache too.
    memory.delete(manifest_key("A"))
    memory.delete(manifest_key("B"))
    assert [s.stream_id for s in read_site(memory, cache, incremental=True).streams] == ["C"]
    assert cache.load("streams/A/") == {}
    assert cache.load("backups/A/") == {}

    # A manifest rewritten on the site (another size or version) is read again.
    corrupt(memory, manifest_key("C"))
    assert read_backups(memory, cache).broken["C"].key == manifest_key("C")


def test_a_corrupt_object_is_reported_on_every_read_and_never_cached(
    site: tuple[MemoryStore, SiteBuilder], tmp_path: Path
) -> None:
    memory, build = site
    corrupt(memory, build.record_key("C", 1))
    store, calls = counted(memory)
    cache = open_cache(tmp_path, store.describe())
    for _ in range(2):
        c = read_site(store, cache, incremental=True).streams[-1]
        assert c.broken is not None and c.broken.key == build.record_key("C", 1)
    assert calls.take()["get"] == 17 + 1  # the second read fetched the corrupt one again
    assert build.record_key("C", 1) not in cache.load("streams/C/")
    # Repaired on the site: read afresh, the stream is whole again.
    memory.replace_raw(build.record_key("C", 1), build.records["C"][1].to_bytes())
    assert read_site(store, cache, incremental=True).streams[-1].broken is None


def test_a_tampered_cache_row_is_discarded_and_read_from_the_site(
    site: tuple[MemoryStore, SiteBuilder], tmp_path: Path
) -> None:
    memory, build = site
    cache = open_cache(tmp_path, memory.describe())
    expected = read_site(memory, cache, incremental=True)
    cache.close()
    key = build.record_key("A", 1)
    with sqlite3.connect(tmp_path / "site-cache.sqlite") as db:
        (body,) = db.execute("SELECT body FROM documents WHERE key = ?", (key,)).fetchone()
        db.execute(
            "UPDATE documents SET body = ? WHERE key = ?", (body.replace(b"1", b"2", 1), key)
        )
    store, calls = counted(memory)
    cache = open_cache(tmp_path, memory.describe())
    assert read_site(store, cache, incremental=True) == expected
    assert calls.take() == {"list": 2, "get": 1}


def test_a_corrupt_cache_file_is_replaced(
    site: tuple[MemoryStore, SiteBuilder], tmp_path: Path
) -> None:
    memory, _ = site
    expected = read_site(memory)
    (tmp_path / "site-cache.sqlite").write_bytes(b"SQLite format 3\x00" + bytes(200) + b"junk")
    cache = open_cache(tmp_path, memory.describe())
    assert read_site(memory, cache, incremental=True) == expected
    assert read_site(memory, open_cache(tmp_path, memory.describe()), incremental=True) == expected


def test_sites_do_not_share_cache_rows(tmp_path: Path) -> None:
    one, two = LocalStore(tmp_path / "one"), LocalStore(tmp_path / "two")
    SiteBuilder(one).backup("A")
    SiteBuilder(two).backup("B")
    assert [s.stream_id for s in read_site(one, open_cache(tmp_path, one.describe())).streams] == [
        "A"
    ]
    cache_two = open_cache(tmp_path, two.describe())
    assert [s.stream_id for s in read_site(two, cache_two).streams] == ["B"]
    assert cache_two.load("backups/A/") == {}


def test_a_cache_that_cannot_be_written_is_bypassed(
    site: tuple[MemoryStore, SiteBuilder], tmp_path: Path
) -> None:
    memory, _ = site
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    cache = SiteCache(blocked / "site-cache.sqlite", memory.describe())
    assert read_site(memory, cache, incremental=True) == read_site(memory)


def test_reading_one_broken_backup_by_id_fails_naming_its_manifest(
    site: tuple[MemoryStore, SiteBuilder],
) -> None:
    """What a restore of that backup meets: a clear error naming the object."""
    store, _ = site
    corrupt(store, manifest_key("C"))
    with pytest.raises(CorruptDocumentError, match=r"backups/C/manifest\.json is corrupt"):
        read_manifest(store, "C")
