"""Promotion against a MemoryStore: the record race, what readers see of a deposed
primary's late uploads, and the deposed archiver stopping (docs/format.md,
"Promotions and fencing")."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from binhoard.config import parse_settings
from binhoard.domain.catalog import BinlogRecord, StreamMarker, closed_key
from binhoard.domain.errors import ConflictError
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.manifest import SnapshotPosition
from binhoard.domain.promotion import Promotion, promotion_key
from binhoard.ops.archive import BinlogArchiver
from binhoard.ops.catalog import read_site, read_streams
from binhoard.ops.promote import promote_stream
from binhoard.ops.sitecache import open_cache
from binhoard.ports.server import ServerBinlogs
from binhoard.storage.store import MemoryStore, ObjectInfo
from tests.support.binlogs import BinlogWriter
from tests.support.fakeserver import fake_archiver
from tests.support.sites import (
    HISTORY,
    SERVER_ID,
    SiteBuilder,
    position,
    put_full_backup,
    site_config,
)
from tests.unit.test_archive_ops import (
    BACKUP_ID,
    IDENTITY,
    T0,
    Server,
    put_backup,
    settings_for,
)

NOW = datetime(2026, 1, 2, tzinfo=UTC)
P = GtidPosition.parse
NEW = 202
OLD = 7  # the server of tests.unit.test_archive_ops's Server and backup


def _site() -> tuple[MemoryStore, SiteBuilder]:
    """Stream A of SERVER_ID with 3 records (0-101-1..30)."""
    store = MemoryStore()
    build = SiteBuilder(store)
    build.backup("A")
    build.archive("A", 3)
    return store, build


def _late(build: SiteBuilder, seq: int) -> BinlogRecord:
    """The deposed primary's next record, written after the takeover point."""
    (record,) = build.archive("A")
    assert record.seq == seq
    return record


def test_a_promotion_is_written_once_and_readers_fence_the_deposed_primary() -> None:
    store, build = _site()
    result = promote_stream(
        store, "A", server_id=NEW, position=position(30), now=NOW, history=HISTORY
    )
    assert result.promotion is not None and result.new_stream_needed is None
    assert (result.promotion.takes_over_at, result.promotion.gtid_position) == (3, position(30))
    late = _late(build, 3)  # the old primary's pass that read the site before it
    (stream,) = read_streams(store)
    assert [r.seq for r in stream.records] == [0, 1, 2]
    assert stream.fenced == (late,)
    assert (stream.owner, stream.seq_after) == (NEW, 4)
    assert stream.end_position == position(30)
    # Promoting again is nothing new: it owns the stream.
    again = promote_stream(
        store, "A", server_id=NEW, position=position(30), now=NOW, history=HISTORY
    )
    assert again.promotion is None and again.new_stream_needed is None


class RacingStore(MemoryStore):
    """Runs ``before_promotion`` just before the first promotion record is written:
    another node's whole promotion slots in between this node's read and its write."""

    before_promotion: object = None

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        hook = self.before_promotion
        if callable(hook) and "/promotions/" in key:
            self.before_promotion = None
            hook()
        return super().put(key, data, if_absent=if_absent)


def test_two_nodes_promoting_at_once_exactly_one_wins() -> None:
    store = RacingStore()
    build = SiteBuilder(store)
    build.backup("A")
    build.archive("A", 2)
    won = {}

    def other_node() -> None:
        won["other"] = promote_stream(
            store, "A", server_id=303, position=position(20), now=NOW, history=HISTORY
        )

    store.before_promotion = other_node
    with pytest.raises(ConflictError, match="another node promoted itself"):
        promote_stream(store, "A", server_id=NEW, position=position(20), now=NOW, history=HISTORY)
    (stream,) = read_streams(store)
    assert [p.server_id for p in stream.promotions] == [303]
    assert stream.owner == 303 and won["other"].promotion == stream.promotions[0]


def test_a_node_promoted_twice_in_one_stream_gets_two_records() -> None:
    store, _ = _site()
    promote_stream(store, "A", server_id=NEW, position=position(30), now=NOW, history=HISTORY)
    promote_stream(store, "A", server_id=SERVER_ID, position=position(30), now=NOW, history=HISTORY)
    promote_stream(store, "A", server_id=NEW, position=position(30), now=NOW, history=HISTORY)
    (stream,) = read_streams(store)
    assert [p.server_id for p in stream.promotions] == [NEW, SERVER_ID, NEW]
    assert [p.key for p in stream.promotions] == [promotion_key("A", n) for n in range(3)]


@pytest.mark.parametrize(
    ("at", "force", "taken_at", "reason"),
    [
        (20, False, None, "has not applied the whole archive"),
        (20, True, 2, None),  # gives up record 2 (0-101-21..30)
    ],
)
def test_a_node_behind_the_archive_applies_it_first_or_forces(
    at: int, force: bool, taken_at: int | None, reason: str | None
) -> None:
    store, _ = _site()
    if reason is not None:
        with pytest.raises(ConflictError, match=reason):
            promote_stream(
                store, "A", server_id=NEW, position=position(at), now=NOW, history=HISTORY
            )
        (stream,) = read_streams(store)
        assert stream.promotions == ()
        return
    result = promote_stream(
        store, "A", server_id=NEW, position=position(at), now=NOW, history=HISTORY, force=force
    )
    assert result.promotion is not None and result.promotion.forced
    assert result.promotion.takes_over_at == taken_at
    (stream,) = read_streams(store)
    assert [r.seq for r in stream.records] == [0, 1] and [r.seq for r in stream.fenced] == [2]


def test_a_node_on_another_history_starts_a_new_stream() -> None:
    store, _ = _site()
    other = GtidPosition.parse(f"0-{NEW}-30")  # same seq_no, another server: divergence
    result = promote_stream(store, "A", server_id=NEW, position=other, now=NOW, history=HISTORY)
    assert result.promotion is None
    assert (
        result.new_stream_needed is not None
        and "not on the stream's history" in result.new_stream_needed
    )


def test_an_unreadable_promotion_stops_the_stream_where_ownership_is_known() -> None:
    store, _ = _site()
    promote_stream(store, "A", server_id=NEW, position=position(30), now=NOW, history=HISTORY)
    store.put(promotion_key("A", 1), [b"not json"])
    (stream,) = read_site(store).streams
    assert stream.broken is not None and stream.broken.key == promotion_key("A", 1)
    assert [r.seq for r in stream.records] == [0, 1, 2]


def _taken_over(tmp_path: Path) -> tuple[Server, MemoryStore, BinlogArchiver, Promotion]:
    """This server (OLD) archived one file into its stream, which NEW then took over."""
    server = Server(tmp_path / "binlogs")
    store = MemoryStore()
    server.write_file(5)
    put_backup(store, SnapshotPosition("binlog.000001", BinlogWriter(7, T0).offset, ""))
    archiver = fake_archiver(settings_for(tmp_path / "host"), store)
    assert archiver.archive_files(server.binlogs()).records_written == 1
    (stream,) = read_streams(store)
    result = promote_stream(
        store, BACKUP_ID, server_id=NEW, position=stream.end_position, now=NOW, history=HISTORY
    )
    assert result.promotion is not None
    return server, store, archiver, result.promotion


def test_the_deposed_archiver_stops_and_says_so(tmp_path: Path) -> None:
    server, store, archiver, promotion = _taken_over(tmp_path)
    server.write_file(5)  # the deposed primary keeps taking writes
    report = archiver.archive_files(server.binlogs())
    assert report.records_written == 0 and report.streams == []
    (deposed,) = report.deposed
    assert deposed.new_owner_server_id == NEW and deposed.promotion_key == promotion.key
    assert any("deposed" in p for p in report.problems)
    (stream,) = read_streams(store)
    assert len(stream.records) == 1 and stream.fenced == ()


def test_the_deposed_archiver_stays_deposed_once_the_new_owner_closes_the_stream(
    tmp_path: Path,
) -> None:
    """The new owner's first backup covers the stream seconds after the promotion and
    closes it: the old primary, still taking writes, must not then find "no open
    stream" and start one of its own (docs/failover.md, "The old primary")."""
    server, store, archiver, _ = _taken_over(tmp_path)
    newer = "20260102T010000Z-0000ef02"  # the new owner's first backup, which closes it
    put_full_backup(store, newer, SnapshotPosition("binlog.000001", 4, "0-7-5"), server_id=NEW)
    closed = StreamMarker(BACKUP_ID, NOW, 0, successor=newer)
    store.put(closed_key(BACKUP_ID), [closed.to_bytes()], if_absent=True)
    server.write_file(5)
    report = archiver.archive_files(server.binlogs())
    assert [d.stream_id for d in report.deposed] == [BACKUP_ID]
    assert report.records_written == 0
    assert not any("take a backup" in p for p in report.problems)


def test_a_cached_reader_sees_a_promotion_that_lands_later(tmp_path: Path) -> None:
    store, build = _site()
    cache = open_cache(tmp_path / "state", store.describe())
    read_site(store, cache, incremental=True)
    promote_stream(store, "A", server_id=NEW, position=position(30), now=NOW, history=HISTORY)
    late = _late(build, 3)
    (stream,) = read_site(store, cache, incremental=True).streams
    assert stream.owner == NEW and stream.fenced == (late,)
    assert list(stream.records) == build.records["A"][:3]


def test_a_server_given_the_stream_back_continues_from_its_own_binlog_at_the_position(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path / "binlogs")
    store = MemoryStore()
    server.write_file(5)
    put_backup(store, SnapshotPosition("binlog.000001", BinlogWriter(7, T0).offset, ""))
    archiver = fake_archiver(settings_for(tmp_path / "host"), store)
    archiver.archive_files(server.binlogs())
    (stream,) = read_streams(store)
    promote_stream(
        store, BACKUP_ID, server_id=NEW, position=stream.end_position, now=NOW, history=HISTORY
    )
    (mine,) = stream.records
    # The new owner's record holds no transaction (it was promoted, then demoted): the
    # stream ends where this server's second file starts.
    theirs = replace(mine, seq=1, server_id=NEW)
    store.put(theirs.key, [theirs.to_bytes()], if_absent=True)
    back = promote_stream(
        store,
        BACKUP_ID,
        server_id=7,
        position=theirs.gtid_position_at_end,
        now=NOW,
        history=HISTORY,
    )
    assert back.promotion is not None and back.promotion.takes_over_at == 2
    server.write_file(5)
    report = archiver.archive_files(server.binlogs())
    assert report.records_written == 1 and report.deposed == []
    (stream,) = read_streams(store)
    assert [(r.server_id, r.name) for r in stream.records] == [
        (7, "binlog.000001"),
        (NEW, "binlog.000001"),
        (7, "binlog.000002"),
    ]
    assert stream.problems() == [] and stream.end_position == P("0-7-10")


def _replica_binlog(path: Path, replicated: range, own: range) -> BinlogWriter:
    """A promoted replica's binlog (log_slave_updates): the old primary's transactions
    it replicated (their GTIDs keep server 7), then its own as the new primary."""
    writer = BinlogWriter(NEW, T0 + 100)
    for seq in replicated:
        writer.server_id = OLD  # a replicated event keeps its origin's server_id
        writer.transaction(Gtid(0, OLD, seq), T0 + seq, [bytes(50)])
    writer.server_id = NEW
    for seq in own:
        writer.transaction(Gtid(0, NEW, seq), T0 + seq, [bytes(50)])
    writer.close(path)
    return writer


def _primary_died(tmp_path: Path) -> tuple[MemoryStore, Path, BinlogArchiver]:
    """Stream BACKUP_ID of server 7, archived up to 0-7-5; the new owner's (empty)
    binlog directory and archiver."""
    primary = Server(tmp_path / "primary")
    store = MemoryStore()
    primary.write_file(5)
    put_backup(store, SnapshotPosition("binlog.000001", BinlogWriter(7, T0).offset, ""))
    fake_archiver(settings_for(tmp_path / "old"), store).archive_files(primary.binlogs())
    replica = tmp_path / "replica"
    replica.mkdir()
    settings = parse_settings(
        site_config(tmp_path / "new", server_id=NEW, identity=IDENTITY), source="test"
    )
    return store, replica, fake_archiver(settings, store)


def _index(directory: Path, files: int) -> ServerBinlogs:
    names = tuple(f"binlog.{n:06d}" for n in range(1, files + 2))
    return ServerBinlogs(directory, names, names[-1])


def test_the_new_owner_archives_from_inside_its_binlog_at_the_promotion_position(
    tmp_path: Path,
) -> None:
    store, replica, archiver = _primary_died(tmp_path)
    # The replica replicated 0-7-1..8 (6..8 never archived: the primary died), was
    # promoted at 0-7-8, and wrote 0-202-9..10 in the same binlog.
    _replica_binlog(replica / "binlog.000001", range(1, 9), range(9, 11))
    taken = promote_stream(
        store, BACKUP_ID, server_id=NEW, position=P("0-7-8"), now=NOW, history=HISTORY
    )
    assert taken.promotion is not None
    assert (taken.promotion.takes_over_at, taken.promotion.gtid_position) == (1, P("0-7-5"))
    report = archiver.archive_files(_index(replica, 1))
    assert report.records_written == 1 and report.deposed == [] and not report.problems
    (stream,) = read_streams(store)
    _, handed = stream.records
    assert (handed.server_id, handed.name, handed.seq) == (NEW, "binlog.000001", 1)
    # It starts right after 0-7-5 in the replica's file: 0-7-6..8 come from there.
    assert handed.start_offset > 4 and handed.gtid_list_at_start == GtidPosition()
    assert stream.problems() == [] and stream.end_position == P("0-202-10")


def test_a_taken_over_stream_is_closed_once_the_new_owners_own_stream_covers_it(
    tmp_path: Path,
) -> None:
    store, replica, archiver = _primary_died(tmp_path)
    _replica_binlog(replica / "binlog.000001", range(1, 9), range(9, 11))
    promote_stream(store, BACKUP_ID, server_id=NEW, position=P("0-7-8"), now=NOW, history=HISTORY)
    # The new owner's first full backup, its snapshot inside its next file.
    writer = BinlogWriter(NEW, T0 + 200, (Gtid(0, NEW, 10),))
    writer.transaction(Gtid(0, NEW, 11), T0 + 11, [bytes(50)])
    own = "20260101T020000Z-0000beef"
    at = writer.offset
    put_full_backup(store, own, SnapshotPosition("binlog.000002", at, "0-202-11"), server_id=NEW)
    writer.transaction(Gtid(0, NEW, 12), T0 + 12, [bytes(50)])
    writer.close(replica / "binlog.000002")
    report = archiver.archive_files(_index(replica, 2))
    assert report.records_written == 3 and not report.problems
    taken, mine = read_streams(store)
    assert taken.stream_id == BACKUP_ID and mine.stream_id == own
    assert taken.closed is not None and taken.closed.successor == own
    assert taken.end_position == mine.end_position == P("0-202-12")


def test_a_new_owner_whose_binlogs_start_after_the_position_is_told_so(tmp_path: Path) -> None:
    store, replica, archiver = _primary_died(tmp_path)
    # Binary logging began after 0-7-7: the transactions 0-7-6..7 are in none of its files.
    writer = BinlogWriter(NEW, T0 + 100, (Gtid(0, OLD, 7),))
    writer.transaction(Gtid(0, NEW, 8), T0 + 8, [bytes(50)])
    writer.close(replica / "binlog.000001")
    promote_stream(store, BACKUP_ID, server_id=NEW, position=P("0-7-7"), now=NOW, history=HISTORY)
    report = archiver.archive_files(_index(replica, 1))
    assert report.records_written == 0
    (stalled,) = report.streams
    assert any("start after the promotion's position 0-7-5" in p for p in stalled.problems)


def test_a_deposed_primary_archives_into_none_of_its_streams(tmp_path: Path) -> None:
    # Its newer stream (a backup taken after the one the new owner restored from) was
    # not taken over, but what the server commits from now on is another history.
    server = Server(tmp_path / "binlogs")
    store = MemoryStore()
    server.write_file(5)
    put_backup(store, SnapshotPosition("binlog.000001", BinlogWriter(7, T0).offset, ""))
    newer = "20260101T010000Z-0000ef01"
    at = BinlogWriter(7, T0 + 1, server.state).offset
    put_full_backup(store, newer, SnapshotPosition("binlog.000002", at, "0-7-5"), server_id=7)
    archiver = fake_archiver(settings_for(tmp_path / "host"), store)
    # Taken over before this server archived anything (a new owner restored from the
    # backup alone; it replicated 0-7-1..5 and continues from the snapshot).
    taken = promote_stream(
        store, BACKUP_ID, server_id=NEW, position=P("0-7-5"), now=NOW, history=HISTORY
    )
    assert taken.promotion is not None and taken.promotion.takes_over_at == 0
    server.write_file(5)
    report = archiver.archive_files(server.binlogs())
    assert report.records_written == 0 and [d.stream_id for d in report.deposed] == [BACKUP_ID]
    assert all(not s.records for s in read_streams(store) if s.stream_id == newer)
