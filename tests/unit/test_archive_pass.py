"""An archive pass over a site with broken streams and backups, without a database
server: the server's binlog index is given (``ServerBinlogs``) and every stream has
caught up with it, so the pass only reads the site, marks and reports."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from binhoard.config import Settings, parse_settings
from binhoard.domain.catalog import completed_key
from binhoard.domain.manifest import SnapshotPosition, manifest_key
from binhoard.ops.catalog import read_streams
from binhoard.ports.server import ServerBinlogs
from binhoard.storage.store import MemoryStore, read_all
from binhoard.storage.wrappers import MetricsStore
from tests.support.fakeserver import fake_archiver
from tests.support.sites import (
    EPOCH,
    CountingObserver,
    SiteBuilder,
    binlog_name,
    position,
    put_full_backup,
    site_config,
)


def settings_in(directory: Path) -> Settings:
    return parse_settings(site_config(directory), source="test")


def idle_server(build: SiteBuilder) -> ServerBinlogs:
    """The server's index: every file the site has, and the active one after them."""
    names = tuple(binlog_name(n) for n in range(1, build.files + 2))
    return ServerBinlogs(directory=Path("/nonexistent"), names=names, active=names[-1])


def corrupt(store: MemoryStore, key: str) -> None:
    store.replace_raw(key, read_all(store, key).replace(b'"', b"'", 1))


@pytest.fixture
def site() -> tuple[MemoryStore, SiteBuilder]:
    """Two open streams of this server: A (older) and B; neither completed yet."""
    store = MemoryStore()
    build = SiteBuilder(store)
    build.backup("A")
    build.archive("A", 2)
    build.backup("B")
    build.archive("A", 1)
    build.archive("B", 1)
    return store, build


def test_a_broken_stream_is_reported_and_left_alone_the_others_go_on(
    site: tuple[MemoryStore, SiteBuilder], tmp_path: Path
) -> None:
    store, build = site
    corrupt(store, build.record_key("B", 0))
    archiver = fake_archiver(settings_in(tmp_path), store)
    report = archiver.archive_files(idle_server(build))

    assert [s.stream_id for s in report.streams] == ["A"]
    assert report.streams[0].completed and report.streams[0].problems == []
    (broken,) = report.broken
    assert (broken.stream_id, broken.key) == ("B", build.record_key("B", 0))
    assert report.problems == [f"stream B is broken: {broken.reason}"]
    assert build.record_key("B", 0) in broken.reason
    # Nothing written into B; A completed (and not closed: B cannot take over).
    a, b = read_streams(store)
    assert b.completed is None and b.broken is not None
    assert a.completed is not None and a.closed is None


def test_an_unreadable_manifest_is_reported_and_archiving_goes_on(
    site: tuple[MemoryStore, SiteBuilder], tmp_path: Path
) -> None:
    store, build = site
    corrupt(store, manifest_key("A"))
    report = fake_archiver(settings_in(tmp_path), store).archive_files(idle_server(build))
    assert [s.stream_id for s in report.streams] == ["B"]
    assert report.streams[0].completed
    assert [(b.stream_id, b.key) for b in report.broken] == [("A", manifest_key("A"))]
    store.stat(completed_key("B"))


def test_an_idle_pass_with_the_cache_reads_nothing_old(
    site: tuple[MemoryStore, SiteBuilder], tmp_path: Path
) -> None:
    memory, build = site
    build.archive("B", 300)
    build.mark("A", closed_by="B")
    observer = CountingObserver()
    store = MetricsStore(memory, observer)
    settings = settings_in(tmp_path)
    archiver = fake_archiver(settings, store)
    # Fills the cache and completes B: the completed.json it writes is cached too.
    archiver.archive_files(idle_server(build))
    observer.take()
    report = archiver.archive_files(idle_server(build))
    assert report.problems == []
    assert observer.take() == {"list": 2}  # backups/, and B from its last record on
    # Without the cache, every record is read again.
    fake_archiver(settings, store, use_cache=False).archive_files(idle_server(build))
    assert observer.take()["get"] > 300


@pytest.mark.parametrize(
    "damaged",
    [
        {"pending": ["MANIFEST", 5, None]},
        {"pending": "binlogs/x", "swept_at": "yesterday"},
        {"pending": 5, "swept_at": 1700000000},
        {"pending": [], "swept_at": "2024-05-01T00:00:00"},
    ],
)
def test_a_damaged_uploads_file_deletes_nothing_but_binlog_data(
    site: tuple[MemoryStore, SiteBuilder], tmp_path: Path, damaged: dict[str, object]
) -> None:
    """binlog-uploads.json names what the pass deletes at once: a damaged one (a key
    that is not a binlog upload, wrong types, a time that is not one) is ignored with a
    warning, never a traceback, and never costs a manifest."""
    store, build = site
    settings = settings_in(tmp_path)
    pending = damaged["pending"]
    if isinstance(pending, list):
        damaged = {
            **damaged,
            "pending": [manifest_key("A") if k == "MANIFEST" else k for k in pending],
        }
    (settings.state_directory / "binlog-uploads.json").parent.mkdir(parents=True, exist_ok=True)
    (settings.state_directory / "binlog-uploads.json").write_text(json.dumps(damaged))
    report = fake_archiver(settings, store).archive_files(idle_server(build))
    assert report.problems == []
    store.stat(manifest_key("A"))
    store.stat(manifest_key("B"))


def test_an_older_stream_is_closed_only_once_its_archive_reaches_the_new_snapshot(
    tmp_path: Path,
) -> None:
    """A new backup whose snapshot sits in the server's active file, after transactions,
    completes before that file is archived; the older stream must stay open until it
    has the file, or those transactions would be in neither stream."""
    store = MemoryStore()
    build = SiteBuilder(store)
    build.backup("A")
    build.archive("A", 2)  # A ends at transaction 20, the end of binlog.000002
    snapshot = SnapshotPosition(binlog_name(3), 1000, position(25).format())
    newer = put_full_backup(store, "B", snapshot, when=EPOCH + timedelta(hours=1))
    build.backups.append(newer)
    build.records["B"] = []
    archiver = fake_archiver(settings_in(tmp_path), store)

    def server(active: int) -> ServerBinlogs:
        names = tuple(binlog_name(n) for n in range(1, active + 1))
        return ServerBinlogs(directory=Path("/nonexistent"), names=names, active=names[-1])

    report = archiver.archive_files(server(3))
    assert report.problems == []
    a, b = read_streams(store)
    assert b.completed is not None and a.closed is None  # transactions 21-25 are only in A

    # The server closed binlog.000003 and a pass archived it into both streams.
    build.archive("A", 1)
    build.archive("B", 1)
    report = archiver.archive_files(server(4))
    assert report.problems == []
    a, b = read_streams(store)
    assert a.closed is not None and a.closed.successor == "B"
    assert a.end_position.covers(b.snapshot_gtid)
