"""The archiver's summary of a binlog file (``SegmentBuilder``, ``summarize_binlog``)
says exactly what the whole transaction table said (``tests/support/binlog_reference.py``,
``state_at_offset``), for any rows however they arrive, and for synthetic files read in
blocks of any size; every event is still verified."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from binhoard.domain.archiving import state_at_offset
from binhoard.domain.binlog import BinlogSegment, SegmentBuilder, TransactionTable
from binhoard.domain.errors import CorruptBinlogError
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.server.binlog_reader import read_binlog, summarize_binlog
from tests.support.binlog_reference import reference_segment
from tests.support.binlogs import BinlogWriter

Row = tuple[int, int, int, int, int, int]


@st.composite
def tables(draw: st.DrawFn) -> tuple[GtidPosition, list[Row]]:
    """A Gtid_list and rows: mostly valid (two domains, gaps, times out of order), with
    now and then an overlap, an empty range or a GTID that goes back."""
    start = GtidPosition(
        Gtid(d, 1, draw(st.integers(1, 5))) for d in draw(st.sets(st.sampled_from([0, 1, 2])))
    )
    seqs = {g.domain_id: g.seq_no for g in start.values()}
    offset = draw(st.integers(4, 300))
    rows: list[Row] = []
    for _ in range(draw(st.integers(0, 25))):
        domain = draw(st.sampled_from([0, 1, 2]))
        seq = seqs.get(domain, 0) + draw(st.sampled_from([1, 1, 2, 0, -1]))
        seqs[domain] = max(seq, 0)
        start_offset = offset + draw(st.sampled_from([0, 0, 5, -3]))
        length = draw(st.sampled_from([40, 100, 1, 0]))
        rows.append(
            (
                domain,
                draw(st.integers(1, 3)),
                max(seq, 0),
                draw(st.integers(900, 1100)),
                max(start_offset, 0),
                max(start_offset, 0) + length,
            )
        )
        offset = max(start_offset, 0) + length
    return start, rows


def _outcome(call: Callable[[], object]) -> object:
    """A value, or the type and message of what was raised."""
    try:
        return call()
    except ValueError as exc:
        return type(exc), str(exc)


@given(tables(), st.integers(0, 4000), st.data())
def test_from_transactions_summarises_as_before(
    table: tuple[GtidPosition, list[Row]], size: int, data: st.DataObject
) -> None:
    start, rows = table
    name = data.draw(st.sampled_from(["binlog.000007", "binlog.index"]))
    transactions = TransactionTable(rows)
    expected = _outcome(lambda: reference_segment(name, size, start, transactions))
    assert _outcome(lambda: BinlogSegment.from_transactions(name, size, start, transactions)) == (
        expected
    )


def _valid(table: tuple[GtidPosition, list[Row]]) -> bool:
    start, rows = table
    try:
        reference_segment("binlog.000001", 1 << 40, start, TransactionTable(rows))
    except ValueError:
        return False
    return True


@given(tables(), st.data())
def test_rows_in_pieces_give_the_segment_and_the_states_at_offsets(
    table: tuple[GtidPosition, list[Row]], data: st.DataObject
) -> None:
    start, rows = table
    ends = [r[5] for r in rows]
    offsets = data.draw(
        st.lists(st.one_of(st.sampled_from([4, *ends]), st.integers(0, 3000)), max_size=5)
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(rows)), max_size=4)))
    size = max(ends, default=4) + data.draw(st.integers(-50, 50))
    # Size known in advance (from_transactions), or only at the end (a file being read).
    builder = SegmentBuilder("binlog.000003", start, size=size, offsets=offsets)
    streaming = SegmentBuilder("binlog.000003", start, offsets=offsets)
    for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True):
        builder.extend_rows(rows[a:b])
        streaming.extend_rows(rows[a:b])
    transactions = TransactionTable(rows)
    expected = _outcome(lambda: reference_segment("binlog.000003", size, start, transactions))
    assert _outcome(lambda: builder.segment(size)) == expected
    if _valid(table) and size >= max(ends, default=0):
        # What a file read whole gives: rows in order, inside the file.
        assert _outcome(lambda: streaming.segment(size)) == expected
    elif _valid(table):
        # Not from a reader; still refused, though which row is named may differ.
        got = _outcome(lambda: streaming.segment(size))
        assert type(got) is type(expected)
        if isinstance(got, tuple) and isinstance(expected, tuple):
            assert got[0] is expected[0]
    assert builder.transaction_count == len(rows)
    assert builder.min_commit_time == min(transactions.commit_times, default=None)
    if _valid(table):  # the states are asked of files that read whole: ordered rows
        for offset in offsets:
            assert builder.state_at(offset) == state_at_offset(start, transactions, offset)
            assert streaming.state_at(offset) == builder.state_at(offset)
    with pytest.raises(KeyError):
        builder.state_at(max(offsets, default=0) + 10_000)


# --- files ---------------------------------------------------------------------------
def _file(path: Path, transactions: int, payload: int) -> tuple[list[int], list[int]]:
    """A closed file continuing domain 0 at 41, with domain 5 interleaved; returns the
    offsets between transactions and some offsets inside them."""
    writer = BinlogWriter(9, 1_700_000_000, (Gtid(0, 9, 40), Gtid(5, 2, 7)))
    boundaries = [writer.offset]
    inside = []
    for i in range(transactions):
        gtid = Gtid(5, 2, 8 + i) if i % 3 == 2 else Gtid(0, 9, 41 + i)
        # Commit times are not monotonic in binlog order: the summary must see that.
        writer.transaction(gtid, 1_700_000_000 + (i * 7919) % 500, [bytes(payload)] * (1 + i % 2))
        inside.append(writer.offset - 10)
        boundaries.append(writer.offset)
    writer.close(path)
    return boundaries, inside


@settings(max_examples=20, deadline=None)
@given(
    transactions=st.integers(0, 300),
    payload=st.sampled_from([10, 200, 3000]),
    block_size=st.sampled_from([4096, 5000, 65536, 8 << 20]),
)
def test_summarize_binlog_agrees_with_the_full_index(
    tmp_path_factory: pytest.TempPathFactory, transactions: int, payload: int, block_size: int
) -> None:
    path = tmp_path_factory.mktemp("b") / "binlog.000012"
    boundaries, inside = _file(path, transactions, payload)
    offsets = [*boundaries[:: max(1, len(boundaries) // 7)], *inside[:5], boundaries[-1]]
    summary = summarize_binlog(path, states_at=offsets, block_size=block_size)
    index = read_binlog(path)
    assert summary.segment() == index.segment()
    assert summary.transaction_count == len(index.transactions)
    assert summary.min_commit_time == min(index.transactions.commit_times, default=None)
    for field in ("size", "created", "gtid_list_at_start", "closed", "complete_offset"):
        assert getattr(summary, field) == getattr(index, field), field
    for offset in offsets:
        expected = state_at_offset(index.gtid_list_at_start, index.transactions, offset)
        assert summary.states_at[offset] == expected, offset
    assert all(summary.states_at[o] is None for o in inside[:5])


def test_a_damaged_event_fails_the_summary_as_it_fails_the_index(tmp_path: Path) -> None:
    path = tmp_path / "binlog.000001"
    boundaries, _ = _file(path, 50, 200)
    data = bytearray(path.read_bytes())
    data[boundaries[30] + 25] ^= 0x01  # inside a GTID event: its CRC32 fails
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptBinlogError) as full:
        read_binlog(path)
    with pytest.raises(CorruptBinlogError) as summary:
        summarize_binlog(path, states_at=[boundaries[0]])
    assert str(summary.value) == str(full.value)
    assert "CRC32" in str(summary.value)
