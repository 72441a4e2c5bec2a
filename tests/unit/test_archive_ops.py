"""The archiver against a MemoryStore and synthetic binlog files: who wins when two
writers archive the same file, what happens to objects no record names, and how a
stream that cannot advance is reported."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from binhoard.config import Settings, parse_settings
from binhoard.crypto.age import Identity
from binhoard.domain.catalog import (
    ArchiveStatus,
    archive_status_key,
    binlog_data_key,
    identity_of_data_key,
)
from binhoard.domain.errors import ArchiveStalledError, TransientStorageError
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.manifest import (
    SnapshotPosition,
)
from binhoard.metrics import Metrics
from binhoard.ops.archive import (
    archive_end_notes,
    publish,
    raise_if_stalled,
    status_file,
)
from binhoard.ops.catalog import read_streams
from binhoard.ports.server import ServerBinlogs
from binhoard.storage.store import MemoryStore, ObjectInfo, read_all
from binhoard.storage.wrappers import MetricsStore
from tests.support.binlogs import BinlogWriter
from tests.support.fakeserver import fake_archiver
from tests.support.sites import CountingObserver, put_full_backup, site_config

IDENTITY = Identity.generate()
SERVER_ID = 7
BACKUP_ID = "20260101T000000Z-0000abcd"
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def settings_for(root: Path) -> Settings:
    return parse_settings(site_config(root, server_id=SERVER_ID, identity=IDENTITY), source="test")


class Server:
    """Binlog files on disk and the backup whose stream they continue."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True)
        self.names: list[str] = []
        self.seq = 0
        self.state: tuple[Gtid, ...] = ()

    def write_file(self, transactions: int, payload: int = 100) -> BinlogWriter:
        writer = BinlogWriter(SERVER_ID, T0 + len(self.names), self.state)
        for _ in range(transactions):
            self.seq += 1
            writer.transaction(Gtid(0, SERVER_ID, self.seq), T0 + self.seq, [bytes(payload)])
        name = f"binlog.{len(self.names) + 1:06d}"
        writer.close(self.directory / name)
        self.names.append(name)
        if self.seq:
            self.state = (Gtid(0, SERVER_ID, self.seq),)
        return writer

    def binlogs(self) -> ServerBinlogs:
        """The index as the server lists it, with a new active file after the others."""
        active = f"binlog.{len(self.names) + 1:06d}"
        return ServerBinlogs(self.directory, (*self.names, active), active)


def put_backup(store: MemoryStore, snapshot: SnapshotPosition) -> None:
    put_full_backup(
        store, BACKUP_ID, snapshot, server_id=SERVER_ID, when=datetime.fromtimestamp(T0, UTC)
    )


def site_with_one_file(tmp_path: Path) -> tuple[Server, MemoryStore]:
    """A backup whose snapshot is right after binlog.000001's Gtid_list, and that file
    closed with 20 transactions: the first file the stream needs."""
    server = Server(tmp_path / "binlogs")
    store = MemoryStore()
    writer = BinlogWriter(SERVER_ID, T0)
    snapshot_at = writer.offset
    server.write_file(20)
    put_backup(store, SnapshotPosition("binlog.000001", snapshot_at, ""))
    return server, store


class RacingStore(MemoryStore):
    """A MemoryStore that runs ``before_first_record`` just before the first binlog
    record is written: another writer's whole pass slots in between this writer's
    upload and its record."""

    def __init__(self) -> None:
        super().__init__()
        self.before_first_record: Callable[[], None] | None = None

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        hook = self.before_first_record
        if hook is not None and "/binlogs/" in key and key.startswith("streams/"):
            self.before_first_record = None
            hook()
        return super().put(key, data, if_absent=if_absent)


def test_two_writers_one_record_wins_and_the_loser_removes_its_object(tmp_path: Path) -> None:
    server = Server(tmp_path / "binlogs")
    store = RacingStore()
    snapshot_at = BinlogWriter(SERVER_ID, T0).offset
    server.write_file(20)
    put_backup(store, SnapshotPosition("binlog.000001", snapshot_at, ""))
    first = fake_archiver(settings_for(tmp_path / "a"), store)
    second = fake_archiver(settings_for(tmp_path / "b"), store)
    seen: dict[str, Any] = {}

    def other_host_archives() -> None:
        seen["uploads"] = {i.key for i in store.list("binlogs/")}  # the first writer's
        seen["report"] = second.archive_files(server.binlogs())

    store.before_first_record = other_host_archives
    report = first.archive_files(server.binlogs())
    (lost,) = report.streams
    assert lost.error is not None and "two archivers" in lost.error
    assert report.stalled and report.records_written == 0

    assert seen["report"].records_written == 1
    (stream,) = read_streams(store)
    (record,) = stream.records
    (loser_key,) = seen["uploads"]
    assert record.object.key != loser_key
    # Only the winner's object is left: the loser removed its own.
    assert {i.key for i in store.list("binlogs/")} == {record.object.key}
    assert stream.problems() == []


class FailingRecordStore(MemoryStore):
    """Refuses binlog record writes while ``fail`` is set, as a store that went away
    between the upload and the record would (or a process killed right there)."""

    fail = True

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        if self.fail and key.startswith("streams/") and "/binlogs/" in key:
            raise TransientStorageError("the store went away")
        return super().put(key, data, if_absent=if_absent)


def two_files_records_refused(tmp_path: Path) -> tuple[Server, FailingRecordStore]:
    """A backup whose stream needs binlog.000001 (20 transactions) and binlog.000002
    (5), both closed, in a store that refuses their records until ``fail`` is unset."""
    server = Server(tmp_path / "binlogs")
    store = FailingRecordStore()
    snapshot_at = BinlogWriter(SERVER_ID, T0).offset
    server.write_file(20)
    server.write_file(5)
    put_backup(store, SnapshotPosition("binlog.000001", snapshot_at, ""))
    return server, store


def test_an_upload_never_recorded_is_removed_by_the_next_pass_on_this_host(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path / "binlogs")
    store = FailingRecordStore()
    snapshot_at = BinlogWriter(SERVER_ID, T0).offset
    server.write_file(20)
    put_backup(store, SnapshotPosition("binlog.000001", snapshot_at, ""))
    archiver = fake_archiver(settings_for(tmp_path / "host"), store)
    failed = archiver.archive_files(server.binlogs())
    assert failed.stalled and "the store went away" in (failed.streams[0].error or "")
    (unrecorded,) = [i.key for i in store.list("binlogs/")]
    store.fail = False
    report = archiver.archive_files(server.binlogs())
    assert report.records_written == 1
    (stream,) = read_streams(store)
    assert {i.key for i in store.list("binlogs/")} == {stream.records[0].object.key}
    assert unrecorded != stream.records[0].object.key


def test_other_hosts_unrecorded_objects_are_removed_only_after_the_grace_period(
    tmp_path: Path,
) -> None:
    server, store = site_with_one_file(tmp_path)
    theirs = binlog_data_key((SERVER_ID, "binlog.000009", T0, "ab" * 6), "cd" * 8, ".age")
    store.put(theirs, [b"another host, mid-pass"])
    clock = {"now": datetime.now(UTC) + timedelta(hours=23)}
    archiver = fake_archiver(settings_for(tmp_path / "host"), store, now=lambda: clock["now"])
    archiver.archive_files(server.binlogs())
    assert store.stat(theirs)  # younger than 24 hours: may be in use
    clock["now"] += timedelta(hours=2)  # 25 hours old, but the last sweep was 2 hours ago
    archiver.archive_files(server.binlogs())
    assert {i.key for i in store.list("binlogs/")} == {read_streams(store)[0].records[0].object.key}


def test_data_keys_name_the_file_with_or_without_an_upload_token() -> None:
    identity = (3, "mysql-bin.000042", 1_700_000_000, "0123456789ab")
    new = binlog_data_key(identity, "f" * 16, ".zst.age")
    assert (
        new == "binlogs/3/mysql-bin.000042-1700000000-0123456789ab-ffffffffffffffff.binlog.zst.age"
    )
    old = "binlogs/3/mysql-bin.000042-1700000000-0123456789ab.binlog.zst.age"
    assert identity_of_data_key(new) == identity_of_data_key(old) == identity
    assert identity_of_data_key("binlogs/3/mysql-bin.000042-1700000000-0123456789ab.binlog") == (
        identity
    )
    assert identity_of_data_key("backups/x/data.xbstream.zst.age") is None


def test_a_stream_that_cannot_advance_is_stalled_in_the_site_and_the_local_status(
    tmp_path: Path,
) -> None:
    """The last pass's outcome per stream is written to the site when it changes (a
    restore on another host reads it), and never rewritten by an idle pass."""
    server = Server(tmp_path / "binlogs")
    store = FailingRecordStore()
    snapshot_at = BinlogWriter(SERVER_ID, T0).offset
    server.write_file(20)
    put_backup(store, SnapshotPosition("binlog.000001", snapshot_at, ""))
    settings = settings_for(tmp_path / "host")
    clock = {"now": datetime(2026, 1, 2, tzinfo=UTC)}
    archiver = fake_archiver(settings, store, now=lambda: clock["now"])
    metrics = Metrics()
    status_key = archive_status_key(BACKUP_ID)

    first = archiver.archive_files(server.binlogs())
    publish(settings.state_directory, first, metrics)
    stalled = ArchiveStatus.from_bytes(read_all(store, status_key), key=status_key)
    assert stalled.stalled and "the store went away" in (stalled.reason or "")
    with pytest.raises(ArchiveStalledError, match="the store went away"):
        raise_if_stalled(first)
    assert metrics.value("binhoard.binlog.archive_stalled") == 1
    written = store.stat(status_key).last_modified
    end, warning = archive_end_notes(store, BACKUP_ID)  # what a restore --to-latest says
    assert "holds no transaction" in end
    assert warning is not None and "failed" in warning and "the store went away" in warning

    clock["now"] += timedelta(minutes=5)
    publish(
        settings.state_directory, archiver.archive_files(server.binlogs()), metrics
    )  # same outcome
    assert store.stat(status_key).last_modified == written  # not rewritten
    local = status_file(settings.state_directory).read() or {}
    assert local["stalled"] and local["stalled_since"] == "2026-01-02T00:00:00+00:00"

    store.fail = False
    clock["now"] += timedelta(minutes=5)
    recovered = archiver.archive_files(server.binlogs())
    publish(settings.state_directory, recovered, metrics)
    raise_if_stalled(recovered)
    ok = ArchiveStatus.from_bytes(read_all(store, status_key), key=status_key)
    assert not ok.stalled and ok.since == clock["now"]
    assert ok.end_position == GtidPosition.parse(f"0-{SERVER_ID}-20")
    assert metrics.value("binhoard.binlog.archive_stalled") == 0
    end, warning = archive_end_notes(store, BACKUP_ID)
    assert f"ends at transaction 0-{SERVER_ID}-20" in end and warning is None
    assert f"GTID position 0-{SERVER_ID}-20)" in end
    assert (status_file(settings.state_directory).read() or {})["stalled_since"] is None


def test_no_open_stream_is_a_stall(tmp_path: Path) -> None:
    server = Server(tmp_path / "binlogs")
    server.write_file(3)
    report = fake_archiver(settings_for(tmp_path / "host"), MemoryStore()).archive_files(
        server.binlogs()
    )
    with pytest.raises(ArchiveStalledError, match="no open backup stream"):
        raise_if_stalled(report)


def test_a_corrupt_archive_status_is_a_warning_for_a_restore_to_latest() -> None:
    """A restore --to-latest has finished when it reads the archiver's report: a damaged
    report is a warning naming it, never an error."""
    store = MemoryStore()
    put_backup(store, SnapshotPosition("binlog.000001", 4, ""))
    store.put(archive_status_key(BACKUP_ID), [b'{"outcome": "stalled", "reas'])
    end, warning = archive_end_notes(store, BACKUP_ID)
    assert "holds no transaction" in end
    assert warning is not None and "cannot tell whether" in warning
    assert f"streams/{BACKUP_ID}/archive-status.json" in warning


def test_what_a_pass_writes_is_cached_and_not_fetched_again(tmp_path: Path) -> None:
    """Records and markers a pass writes go into the site cache (once written): the next
    pass only lists. Objects never written (a refused write) are not cached."""
    server, memory = two_files_records_refused(tmp_path)
    observer = CountingObserver()
    store = MetricsStore(memory, observer)
    archiver = fake_archiver(settings_for(tmp_path / "host"), store)
    assert archiver.cache is not None

    failed = archiver.archive_files(server.binlogs())  # uploads, the record is refused
    assert failed.stalled
    assert not any("/binlogs/" in key for key in archiver.cache.load(f"streams/{BACKUP_ID}/"))

    memory.fail = False
    report = archiver.archive_files(server.binlogs())  # two records, then completed.json
    assert report.records_written == 2 and report.streams[0].completed
    observer.take()
    idle = archiver.archive_files(server.binlogs())
    assert idle.records_written == 0 and idle.streams[0].records == 2
    assert observer.take() == {"list": 2}  # backups/, and the stream from its last record
    # Another process on this host (a new archiver, same cache file) fetches nothing
    # either but the archive-status.json it has not seen yet.
    fake_archiver(settings_for(tmp_path / "host"), store).archive_files(server.binlogs())
    assert observer.take() == {"list": 2, "get": 1}


def test_a_file_whose_gtids_go_backwards_stalls_its_stream_naming_the_file(
    tmp_path: Path,
) -> None:
    """Strict mode broken on the server (0-1-5 after 0-1-7 in one file): the stream
    stops there with the file named; the pass itself goes on and reports."""
    server = Server(tmp_path / "binlogs")
    store = MemoryStore()
    snapshot_at = BinlogWriter(SERVER_ID, T0).offset
    writer = BinlogWriter(SERVER_ID, T0)
    for seq in (6, 7, 5):
        writer.transaction(Gtid(0, SERVER_ID, seq), T0 + seq, [bytes(100)])
    writer.close(server.directory / "binlog.000001")
    server.names.append("binlog.000001")
    put_backup(store, SnapshotPosition("binlog.000001", snapshot_at, ""))
    report = fake_archiver(settings_for(tmp_path / "host"), store).archive_files(server.binlogs())
    (problem,) = report.problems
    assert "binlog.000001" in problem and f"0-{SERVER_ID}-5" in problem
    assert report.stalled and report.records_written == 0
    assert list(store.list("binlogs/")) == []  # refused before anything is uploaded
