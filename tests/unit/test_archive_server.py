"""``ops.archive`` through the server port, against a fake server whose binlogs are real
files (``tests/support/fakeserver.py``): what a pass asks of the server, rotations
(``flush_and_wait``, the forced rotation of ``ArchiveLoop``), purged files, refusals."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from binhoard.app import archive_config, backup_config
from binhoard.crypto.age import Identity
from binhoard.domain.errors import ServerError, ServerNotReadyError, UsageError
from binhoard.metrics import Metrics
from binhoard.ops.archive import ArchiveLoop, BinlogArchiver, flush_and_wait, status_file
from binhoard.ops.backup import create_backup
from binhoard.ops.catalog import read_streams
from binhoard.ops.restore_backup import digest_of
from binhoard.storage.pipeline import download
from binhoard.storage.store import MemoryStore
from tests.support.fakeserver import FakeServer, ScriptedClock, fake_host

IDENTITY = Identity.generate()
START = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def backed_up(tmp_path: Path, **settings: object) -> tuple[FakeServer, MemoryStore, BinlogArchiver]:
    """A server with a backup (after 3 transactions) and its archiver."""
    config, server = fake_host(tmp_path, IDENTITY, **settings)
    store = MemoryStore()
    server.commit(3)
    create_backup(server, store, backup_config(config), now=ScriptedClock(START))
    return server, store, BinlogArchiver(server, store, archive_config(config), use_cache=False)


def test_a_pass_archives_every_closed_file_from_the_snapshot_on(tmp_path: Path) -> None:
    server, store, archiver = backed_up(tmp_path)
    server.commit(4)
    server.binlogs.flush()
    server.commit(2)
    server.binlogs.flush()
    server.commit(1)  # in the active file: not archived
    calls = len(server.calls)

    report = archiver.archive_once()

    assert report.uploaded == ["binlog.000001", "binlog.000002"] and report.problems == []
    assert server.calls[calls:] == ["facts", "binlogs.list"]
    (stream,) = read_streams(store)
    assert [r.name for r in stream.records] == ["binlog.000001", "binlog.000002"]
    assert stream.records[0].start_offset == stream.backup.snapshot.binlog_pos
    assert stream.end_position.format() == "0-7-9"
    stored = b"".join(
        download(
            store,
            stream.records[1].object.key,
            expected=digest_of(stream.records[1].object),
            identities=[IDENTITY],
        )
    )
    assert stored == (server.binlogs.directory / "binlog.000002").read_bytes()
    # Caught up: the stream is completed; the next pass finds nothing to do.
    assert report.streams[0].completed and report.streams[0].caught_up
    assert archiver.archive_once().uploaded == []


def test_a_server_of_another_server_id_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    server, store, archiver = backed_up(tmp_path)
    server.commit(2)
    server.binlogs.flush()
    server.server_id = 8  # another server answers on the configured address
    before = {i.key for i in store.list()}
    with pytest.raises(ServerNotReadyError, match="cannot archive"):
        archiver.archive_once()
    assert {i.key for i in store.list()} == before
    assert server.calls[-1] == "facts"  # the binlog index was not even read


def test_flush_and_wait_rotates_and_returns_once_the_closed_file_is_stored(
    tmp_path: Path,
) -> None:
    server, store, archiver = backed_up(tmp_path)
    server.commit(2)
    name, report = flush_and_wait(archiver, timeout=5)
    assert name == "binlog.000001" and "binlogs.flush" in server.calls
    assert report is not None and report.uploaded == [name]
    assert read_streams(store)[0].records[-1].name == name


def test_flush_and_wait_without_a_backup_says_to_take_one(tmp_path: Path) -> None:
    config, server = fake_host(tmp_path, IDENTITY)
    archiver = BinlogArchiver(server, MemoryStore(), archive_config(config), use_cache=False)
    with pytest.raises(UsageError, match="take a backup first"):
        flush_and_wait(archiver, timeout=5)


def test_a_file_purged_before_it_was_archived_stops_the_stream_and_says_so(
    tmp_path: Path,
) -> None:
    server, _, archiver = backed_up(tmp_path)
    server.commit(2)
    server.binlogs.flush()
    server.commit(2)
    server.binlogs.flush()
    server.binlogs.purge_to("binlog.000002")
    assert server.binlogs.list().names == ("binlog.000002", "binlog.000003")
    report = archiver.archive_once()
    (problem,) = report.problems
    assert "binlog.000001" in problem and "purged before it was archived" in problem
    assert report.uploaded == [] and report.stalled


def test_the_loop_rotates_a_transaction_that_waits_too_long_once(tmp_path: Path) -> None:
    server, store, archiver = backed_up(
        tmp_path, backup_settings={"forced_binlog_rotation_interval": 60}
    )
    server.binlogs.flush()  # the snapshot's file is closed: the stream catches up
    seconds = [0.0]
    metrics = Metrics()
    loop = ArchiveLoop(archiver, metrics, clock=lambda: seconds[0])
    assert loop.tick().problems == []
    server.commit(1)  # waits in the active file
    flushes = server.calls.count("binlogs.flush")
    loop.tick()
    seconds[0] = 59.0
    loop.tick()
    assert server.calls.count("binlogs.flush") == flushes  # not before the interval
    seconds[0] = 61.0
    report = loop.tick()
    assert server.calls.count("binlogs.flush") == flushes + 1
    assert report.uploaded == ["binlog.000002"]
    assert read_streams(store)[0].end_position == server.binlog_position
    assert metrics.value("binhoard.binlog.forced_rotations") == 1
    seconds[0] = 200.0
    loop.tick()  # nothing waits now
    assert server.calls.count("binlogs.flush") == flushes + 1


def test_a_pass_against_a_stopped_server_is_a_published_failure(tmp_path: Path) -> None:
    server, _, archiver = backed_up(tmp_path)
    server.process.stop()
    metrics = Metrics()
    report = ArchiveLoop(archiver, metrics).tick()  # never raises: the service goes on
    assert report.failure is not None and "not running" in report.failure
    status = status_file(archiver.config.state_directory).read()
    assert status is not None and status["stalled"]
    assert metrics.value("binhoard.binlog.archive_pass_failures") == 1
    with pytest.raises(ServerError):
        archiver.archive_once()
