"""The pure decisions of point-in-time apply: batch plans, applied prefixes, relay files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from binhoard.domain.binlog import TransactionIndexEntry, TransactionTable
from binhoard.domain.errors import ApplyError, UsageError
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.relay_plan import (
    AppliedCounter,
    BatchPlan,
    applied_prefix,
    plan_batch,
    relay_file_name,
    relay_index_text,
)

P = GtidPosition.parse
TRX = 100  # bytes per transaction in these fake files
FIRST = 256  # offset of the first transaction (after FDE, Gtid_list, checkpoint)
ROTATE = 44


@dataclass(frozen=True)
class FakeBinlog:
    name: str
    size: int
    gtid_list_at_start: GtidPosition
    transactions: TransactionTable


def binlog(name: str, start: str, gtids: str, *, closed: bool = True) -> FakeBinlog:
    """A file holding ``gtids`` (``"0-1-5,0-1-6"``) back to back from offset 256."""
    entries = [
        TransactionIndexEntry(Gtid.parse(g), 1000 + i, FIRST + i * TRX, FIRST + (i + 1) * TRX)
        for i, g in enumerate(gtids.split(",") if gtids else [])
    ]
    end = FIRST + len(entries) * TRX
    return FakeBinlog(
        name, end + (ROTATE if closed else 0), P(start), TransactionTable.from_entries(entries)
    )


def end(i: int) -> int:
    """End offset of the ``i``-th transaction (0-based) of a fake file."""
    return FIRST + (i + 1) * TRX


F1 = binlog("binlog.000001", "", "0-1-1,0-1-2,0-1-3")
F2 = binlog("binlog.000002", "0-1-3", "0-1-4,0-1-5")
EMPTY3 = binlog("binlog.000003", "0-1-5", "")
F4 = binlog("binlog.000004", "0-1-5", "0-1-6,0-1-7,0-1-8", closed=False)


# --- relay files -------------------------------------------------------------------------
def test_relay_file_names_are_numbered_from_one_with_six_digits() -> None:
    assert relay_file_name("relay", 1) == "relay.000001"
    assert relay_file_name("mysqld-relay-bin", 42) == "mysqld-relay-bin.000042"
    assert relay_file_name("relay", 1_000_000) == "relay.1000000"
    with pytest.raises(ValueError, match="start at 1"):
        relay_file_name("relay", 0)


def test_relay_index_lists_absolute_paths_one_per_line() -> None:
    text = relay_index_text(Path("/srv/relay"), ["relay.000001", "relay.000002"])
    assert text == "/srv/relay/relay.000001\n/srv/relay/relay.000002\n"
    assert relay_index_text(Path("/srv/relay"), []) == ""


# --- plans -------------------------------------------------------------------------------
def plan(
    files: list[FakeBinlog], start: int, stop: int | None, position: str, basename: str = "relay"
) -> BatchPlan:
    result = plan_batch(files, start, stop, P(position), basename)
    assert result is not None
    return result


def test_whole_files_from_the_start() -> None:
    p = plan([F1, F2], 4, None, "")
    assert [(f.source, f.name, f.relay_name, f.first, f.count) for f in p.files] == [
        (0, "binlog.000001", "relay.000001", 0, 3),
        (1, "binlog.000002", "relay.000002", 0, 2),
    ]
    assert (p.start_offset, p.stop_offset, p.until_file) == (4, end(1), "relay.000002")
    assert p.transactions == 5
    assert p.expected_position == P("0-1-5")
    assert not p.stop_at_file_end


def test_snapshot_position_in_the_middle_of_the_first_file() -> None:
    p = plan([F1, F2], end(1), None, "0-1-2")
    assert (p.files[0].first, p.files[0].count) == (2, 1)
    assert p.start_offset == end(1)
    assert p.transactions == 3
    assert p.expected_position == P("0-1-5")


def test_snapshot_position_after_non_transaction_events() -> None:
    # mariabackup's position may follow events that are no transaction (a checkpoint):
    # any offset between transactions is a valid start.
    entries = [
        TransactionIndexEntry(Gtid.parse("0-1-1"), 1000, 256, 356),
        TransactionIndexEntry(Gtid.parse("0-1-2"), 1000, 400, 500),  # checkpoint at 356
    ]
    f = FakeBinlog("binlog.000001", 544, P(""), TransactionTable.from_entries(entries))
    p = plan([f], 380, None, "0-1-1")
    assert (p.files[0].first, p.files[0].count, p.start_offset) == (1, 1, 380)
    assert plan([f], 356, None, "0-1-1").files[0].first == 1
    assert plan([f], 400, None, "0-1-1").files[0].first == 1


def test_stop_at_a_transaction_in_the_last_file() -> None:
    p = plan([F1, F2], 4, end(0), "")
    assert p.files[-1].count == 1
    assert (p.stop_offset, p.transactions, p.expected_position) == (end(0), 4, P("0-1-4"))


def test_stop_in_the_first_and_only_file() -> None:
    p = plan([F1], end(0), end(1), "0-1-1")
    assert (p.files[0].first, p.files[0].count, p.expected_position) == (1, 1, P("0-1-2"))


def test_offsets_must_be_transaction_boundaries() -> None:
    with pytest.raises(UsageError, match="inside transaction 0-1-2"):
        plan_batch([F1], end(0) + 1, None, P("0-1-1"))
    with pytest.raises(UsageError, match="not the end of a transaction"):
        plan_batch([F1, F2], 4, end(0) + 1, P(""))
    with pytest.raises(UsageError, match="outside"):
        plan_batch([F1], F1.size + 1, None, P("0-1-3"))
    with pytest.raises(UsageError, match="outside"):
        plan_batch([F1], 3, None, P(""))
    with pytest.raises(UsageError, match="before start offset"):
        plan_batch([F1], end(1), end(0), P("0-1-2"))


def test_a_first_file_applied_to_its_end_is_skipped() -> None:
    # Resuming after a file's last transaction: the next file starts at 4, as relay.000001.
    p = plan([F1, F2], end(2), None, "0-1-3")
    assert [(f.source, f.relay_name) for f in p.files] == [(1, "relay.000001")]
    assert p.start_offset == 4
    # The Rotate after the last transaction is no transaction either.
    assert plan([F1, F2], F1.size, None, "0-1-3").files[0].source == 1


def test_trailing_files_without_transactions_are_left_out() -> None:
    # UNTIL at the end of a file never fires: the batch stops in the last file that has
    # something to apply.
    p = plan([F2, EMPTY3], 4, None, "0-1-3")
    assert [f.name for f in p.files] == ["binlog.000002"]
    assert p.stop_offset == end(1)
    # A stop before the last file's first transaction cannot be expressed: stop = None.
    p = plan([F1, F2], 4, None, "")
    assert p.until_file == "relay.000002"


def test_empty_files_between_are_kept() -> None:
    p = plan([F2, EMPTY3, F4], 4, end(0), "0-1-3")
    assert [(f.name, f.relay_name, f.count) for f in p.files] == [
        ("binlog.000002", "relay.000001", 2),
        ("binlog.000003", "relay.000002", 0),
        ("binlog.000004", "relay.000003", 1),
    ]
    assert p.expected_position == P("0-1-6")


def test_nothing_to_apply() -> None:
    assert plan_batch([], 4, None, P("")) is None
    assert plan_batch([EMPTY3], 4, None, P("0-1-5")) is None
    assert plan_batch([F1], end(2), None, P("0-1-3")) is None
    assert plan_batch([F1, EMPTY3], end(2), None, P("0-1-5")) is None


def test_stop_at_the_end_of_an_open_file_is_flagged() -> None:
    # A copy of a binlog still open has no Rotate: its last transaction ends the file.
    p = plan([F4], 4, None, "0-1-5")
    assert p.stop_offset == F4.size
    assert p.stop_at_file_end
    assert not plan([F4], 4, end(1), "0-1-5").stop_at_file_end


def test_a_server_behind_the_start_is_a_gap() -> None:
    with pytest.raises(ApplyError, match="gap"):
        plan_batch([F1], end(1), None, P("0-1-1"))
    with pytest.raises(ApplyError, match="gap"):
        plan_batch([F2], 4, None, P("0-1-2"))
    with pytest.raises(ApplyError, match="gap"):
        plan_batch([F2], 4, None, P(""))


def test_a_server_ahead_of_the_start_would_apply_twice() -> None:
    with pytest.raises(ApplyError, match="already applied") as info:
        plan_batch([F1], end(0), None, P("0-1-2"))
    assert info.value.gtid == "0-1-2"


def test_domains_advance_independently() -> None:
    a = binlog("binlog.000010", "0-1-9,1-1-4", "0-1-10,1-1-5,0-1-11,2-3-1")
    p = plan([a], 4, None, "0-1-9,1-1-4,5-1-3")
    assert p.expected_position == P("0-1-11,1-1-5,2-3-1,5-1-3")
    assert p.server_ids == {1, 3}  # a restored server with one of these ids would skip them
    # Another server's GTIDs in a domain (after a failover): seq_no is what counts.
    b = binlog("binlog.000011", "0-1-12", "0-2-13")
    assert plan([b], 4, None, "0-1-12").expected_position == P("0-2-13")


# --- applied prefix ----------------------------------------------------------------------
def test_nothing_applied_yet_starts_at_the_beginning() -> None:
    point = applied_prefix([F2, EMPTY3, F4], P("0-1-3"))
    assert (point.file_index, point.offset, point.applied, point.total) == (0, 4, 0, 5)
    assert point.next_gtid == Gtid.parse("0-1-4") and point.last_applied is None
    assert not point.done


def test_applied_to_the_middle_of_a_file() -> None:
    point = applied_prefix([F1, F2], P("0-1-4"))
    assert (point.file_index, point.offset, point.applied) == (1, end(0), 4)
    assert point.last_applied == Gtid.parse("0-1-4")
    assert point.next_gtid == Gtid.parse("0-1-5")


def test_applied_to_the_end_of_a_file_continues_with_the_next_at_4() -> None:
    point = applied_prefix([F1, F2], P("0-1-3"))
    assert (point.file_index, point.offset) == (1, 4)
    point = applied_prefix([F1, F2, EMPTY3, F4], P("0-1-5"))
    assert (point.file_index, point.offset) == (2, 4)
    assert plan_batch([F1, F2, EMPTY3, F4][2:], 4, None, P("0-1-5")) is not None


def test_everything_applied_is_done() -> None:
    point = applied_prefix([F1, F2, EMPTY3], P("0-1-5"))
    assert point.done and (point.file_index, point.offset) == (3, 4)
    assert point.next_gtid is None
    assert applied_prefix([F1], P("0-1-99")).done
    assert applied_prefix([], P("")).done


def test_snapshot_transactions_count_as_applied() -> None:
    # Transactions before a first batch's start offset are in the snapshot.
    point = applied_prefix([F1], P("0-1-2"))
    assert (point.file_index, point.offset, point.applied) == (0, end(1), 2)


def test_a_hole_in_the_applied_transactions_is_an_error() -> None:
    mixed = binlog("binlog.000020", "", "0-1-1,1-1-1,0-1-2,1-1-2")
    with pytest.raises(ApplyError, match="not a prefix") as info:
        applied_prefix([mixed], P("0-1-2"))  # 0-1-2 applied but 1-1-1 before it is not
    assert info.value.gtid == "1-1-1"
    point = applied_prefix([mixed], P("0-1-1,1-1-1"))
    assert (point.applied, point.offset, point.next_gtid) == (2, end(1), Gtid.parse("0-1-2"))


# --- progress ----------------------------------------------------------------------------
def test_progress_counts_applied_transactions_and_files() -> None:
    p = plan([F1, F2, EMPTY3, F4], end(0), None, "0-1-1")
    counter = AppliedCounter([F1, F2, EMPTY3, F4], p)
    assert counter.applied(P("0-1-1")) == 0
    assert counter.applied(P("0-1-3")) == 2
    assert counter.files_done(2) == 1
    assert counter.applied(P("0-1-5")) == 4
    assert counter.files_done(4) == 3  # the empty file is done with the one before it
    assert counter.applied(P("0-1-8,1-1-1")) == p.transactions == 7
    assert counter.files_done(7) == 4


def test_equal_sequence_numbers_of_another_server_are_divergence_not_applied() -> None:
    # After a failover the deposed primary writes 0-1-4.. while its successor writes
    # 0-2-4..: a server at 0-1-4 covers 0-2-4 by sequence number, yet holds none of it.
    new_owner = binlog("binlog.000002", "0-2-4", "0-2-5,0-2-6")
    with pytest.raises(ApplyError, match="another history"):
        plan_batch([new_owner], 4, None, P("0-1-4"))
    with pytest.raises(ApplyError, match="another server's transaction"):
        plan_batch([binlog("binlog.000002", "0-2-3", "0-2-4,0-2-5")], 4, None, P("0-1-4"))
