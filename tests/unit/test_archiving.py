"""Pure archiving decisions and the catalog's documents."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from binhoard.domain.archiving import (
    Archive,
    Missing,
    RotationTimer,
    Wait,
    archive_lag,
    next_step,
    offset_of_state,
    state_at_offset,
)
from binhoard.domain.binlog import TransactionIndexEntry
from binhoard.domain.catalog import (
    BinlogRecord,
    StreamMarker,
    binlog_record_key,
    chain_problems,
    seq_of_record_key,
    snapshot_inside,
)
from binhoard.domain.documents import CorruptDocumentError
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.manifest import ObjectRef

FILES = ("binlog.000003", "binlog.000004", "binlog.000005")


@pytest.mark.parametrize(
    ("last", "snapshot_file", "expected"),
    [
        # A new stream starts with the file holding its snapshot, at the snapshot's offset.
        (None, "binlog.000003", Archive("binlog.000003", 777)),
        (None, "binlog.000004", Archive("binlog.000004", 777)),
        # ... unless the server still writes it.
        (None, "binlog.000005", Wait("binlog.000005")),
        # Then the next file in the index, from its start.
        ("binlog.000003", "binlog.000003", Archive("binlog.000004", 4)),
        ("binlog.000004", "binlog.000003", Wait("binlog.000005")),
        # Files archived and purged since: the next one in the index is still found.
        ("binlog.000001", "binlog.000001", Archive("binlog.000003", 4)),
    ],
)
def test_next_step(last: str | None, snapshot_file: str, expected: object) -> None:
    assert next_step(last, snapshot_file, 777, FILES, FILES[-1]) == expected


def test_a_purged_snapshot_file_cannot_be_archived() -> None:
    step = next_step(None, "binlog.000002", 777, FILES, FILES[-1])
    assert isinstance(step, Missing) and step.needed == "binlog.000002"
    assert "binlog.000003" in step.detail


def test_binlogs_reset_behind_the_archive_are_reported() -> None:
    step = next_step("binlog.000009", "binlog.000001", 4, FILES, FILES[-1])
    assert isinstance(step, Missing) and "RESET MASTER" in step.detail


def test_numbers_past_999999_sort_after() -> None:
    files = ("binlog.999999", "binlog.1000000", "binlog.1000001")
    assert next_step("binlog.999999", "binlog.999999", 4, files, files[-1]) == Archive(
        "binlog.1000000", 4
    )


def _trx(seq: int, start: int, end: int, domain: int = 0) -> TransactionIndexEntry:
    return TransactionIndexEntry(Gtid(domain, 1, seq), 1000 + seq, start, end)


def test_state_at_offset_counts_transactions_that_end_before_it() -> None:
    start = GtidPosition.parse("0-1-10,1-1-3")
    trxs = [_trx(11, 300, 400), _trx(4, 400, 500, domain=1), _trx(12, 500, 600)]
    assert state_at_offset(start, trxs, 256) == start
    assert state_at_offset(start, trxs, 300) == start
    assert state_at_offset(start, trxs, 500) == GtidPosition.parse("0-1-11,1-1-4")
    assert state_at_offset(start, trxs, 900) == GtidPosition.parse("0-1-12,1-1-4")
    assert state_at_offset(start, trxs, 450) is None  # inside a transaction


def test_offset_of_state_is_the_first_boundary_with_exactly_that_state() -> None:
    start = GtidPosition.parse("0-1-10,1-1-3")
    trxs = [_trx(11, 300, 400), _trx(4, 400, 500, domain=1), _trx(12, 500, 600)]
    assert offset_of_state(start, trxs, start) == 4  # the file starts there
    assert offset_of_state(start, trxs, GtidPosition.parse("0-1-11,1-1-3")) == 400
    assert offset_of_state(start, trxs, GtidPosition.parse("0-1-12,1-1-4")) == 600
    # Never passed through: 0-1-12 before 1-1-4 is not a state of this file.
    assert offset_of_state(start, trxs, GtidPosition.parse("0-1-12,1-1-3")) is None
    assert offset_of_state(start, trxs, GtidPosition.parse("0-2-11,1-1-3")) is None


def test_rotation_timer_fires_interval_after_transactions_start_waiting() -> None:
    timer = RotationTimer(10)
    assert not timer.due(waiting=False, now=0)  # the first check: nothing waits
    assert not timer.due(waiting=True, now=5)  # the clock starts here
    assert not timer.due(waiting=True, now=14)
    assert timer.due(waiting=True, now=15)
    timer.rotated()
    assert not timer.due(waiting=True, now=16)
    assert not timer.due(waiting=False, now=30)  # caught up: reset
    assert not timer.due(waiting=True, now=31)
    assert timer.due(waiting=True, now=41)


def test_a_new_rotation_timer_finding_transactions_waiting_fires_at_once() -> None:
    """A daemon killed every few seconds (each start a new timer) still rotates: how long
    the transactions waited before the start is unknown, so they are taken as due."""
    for _restart in range(3):
        timer = RotationTimer(300)
        assert timer.due(waiting=True, now=0)
        timer.rotated()
        assert not timer.due(waiting=True, now=1)  # then the interval counts again
        assert timer.due(waiting=True, now=301)


def _record(seq: int, name: str, start: str, end: str, stream: str = "S") -> BinlogRecord:
    ref = ObjectRef(f"binlogs/1/{name}", "zstd", ("age1x",), 10, "a" * 64, 20, "b" * 64)
    end_pos = GtidPosition.parse(end)
    return BinlogRecord(
        stream_id=stream,
        seq=seq,
        server_id=1,
        name=name,
        object=ref,
        gtid_list_at_start=GtidPosition.parse(start),
        gtid_position_at_end=end_pos,
        first_gtid=None if start == end else end_pos[0],
        last_gtid=None if start == end else end_pos[0],
        first_commit_time=None if start == end else 100,
        last_commit_time=None if start == end else 101,
        min_commit_time=None if start == end else 99,
        max_commit_time=None if start == end else 102,
        transactions=0 if start == end else 1,
        start_offset=4,
        archived_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_record_round_trip_and_key_check() -> None:
    record = _record(7, "binlog.000002", "0-1-5", "0-1-9")
    assert record.key == "streams/S/binlogs/0000000007.json"
    assert BinlogRecord.from_bytes(record.to_bytes(), key=record.key) == record
    with pytest.raises(CorruptDocumentError, match="seq 7"):
        BinlogRecord.from_bytes(record.to_bytes(), key=binlog_record_key("S", 8))
    tampered = record.to_bytes().replace(b"binlog.000002", b"binlog.000003")
    with pytest.raises(CorruptDocumentError, match="checksum"):
        BinlogRecord.from_bytes(tampered, key=record.key)
    assert seq_of_record_key(record.key) == 7
    with pytest.raises(ValueError, match="not a binlog record key"):
        seq_of_record_key("streams/S/completed.json")


def test_marker_round_trip() -> None:
    marker = StreamMarker("S", datetime(2026, 1, 1, tzinfo=UTC), 3, successor="T")
    assert StreamMarker.from_bytes(marker.to_bytes(), key="k") == marker


def test_chain_problems_and_snapshot_position() -> None:
    records = [
        _record(0, "binlog.000001", "0-1-1", "0-1-5"),
        _record(1, "binlog.000002", "0-1-5", "0-1-5"),  # no transactions
        _record(2, "binlog.000004", "0-1-5", "0-1-9"),  # a number skipped: fine, it chains
    ]
    assert chain_problems(records) == []
    assert snapshot_inside(records[0], GtidPosition.parse("0-1-3"))
    assert not snapshot_inside(records[0], GtidPosition.parse("0-1-6"))
    broken = [*records, _record(3, "binlog.000005", "0-1-12", "0-1-13")]
    (gap,) = chain_problems(broken)
    assert (gap.before, gap.after) == ("binlog.000004", "binlog.000005")
    assert chain_problems(records, end=GtidPosition.parse("0-1-10")) != []


def test_archive_lag_names_what_the_archive_lacks() -> None:
    server = GtidPosition.parse("0-1-500,1-2-7")
    lag = archive_lag(server, GtidPosition.parse("0-1-100,1-2-7"))
    assert lag.transactions == 400
    assert lag.describe() == "400 transactions (0-1-101..0-1-500)"
    assert archive_lag(server, server).describe() == "0 transactions"
    assert archive_lag(server, GtidPosition()).transactions == 507
