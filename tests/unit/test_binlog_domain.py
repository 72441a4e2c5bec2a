"""Binlog segments, gap checks, name order and stop points (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from binhoard.domain.binlog import (
    STREAM_END,
    STREAM_START,
    BinlogSegment,
    DomainDropped,
    GtidDivergence,
    GtidGap,
    GtidOverlap,
    OutOfOrderName,
    SegmentProblem,
    StopPoint,
    TransactionIndexEntry,
    TransactionTable,
    binlog_sort_key,
    check_chain,
    stop_for_gtid,
    stop_for_time,
)
from binhoard.domain.gtid import Gtid, GtidOrderError, GtidPosition

P = GtidPosition.parse


def entries(*specs: tuple[str, int]) -> list[TransactionIndexEntry]:
    """Transactions laid out back to back from offset 256, 100 bytes each."""
    return [
        TransactionIndexEntry(Gtid.parse(gtid), commit_time, 256 + 100 * i, 356 + 100 * i)
        for i, (gtid, commit_time) in enumerate(specs)
    ]


def segment(name: str, start: str, *gtids: str, time: int = 1000) -> BinlogSegment:
    transactions = entries(*((g, time + i) for i, g in enumerate(gtids)))
    return BinlogSegment.from_transactions(name, 10_000, P(start), transactions)


# --- names -------------------------------------------------------------------------------
def test_binlog_names_sort_numerically() -> None:
    names = ["binlog.1000000", "binlog.000010", "binlog.000009", "binlog.999999"]
    assert sorted(names, key=binlog_sort_key) == [
        "binlog.000009",
        "binlog.000010",
        "binlog.999999",
        "binlog.1000000",
    ]
    assert binlog_sort_key("my.host-bin.000003") == ("my.host-bin", 3)


@pytest.mark.parametrize("name", ["binlog.index", "binlog", "binlog.", ".000001", "binlog.0001a"])
def test_non_binlog_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="not a binlog file name"):
        binlog_sort_key(name)


# --- transactions ------------------------------------------------------------------------
@pytest.mark.parametrize(("start", "end"), [(3, 10), (10, 10), (10, 9)])
def test_transaction_offsets_must_be_a_range(start: int, end: int) -> None:
    with pytest.raises(ValueError, match="offsets"):
        TransactionIndexEntry(Gtid(0, 1, 1), 0, start, end)


def test_transaction_table_behaves_like_a_list_of_entries() -> None:
    listed = entries(("0-1-1", 10), ("1-2-5", 12), ("0-1-2", 11))
    table = TransactionTable.from_entries(listed)
    assert len(table) == 3
    assert list(table) == listed
    assert table[-1] == listed[-1]
    assert list(table[1:]) == listed[1:]
    assert list(table[::2]) == listed[::2]
    assert list(table.commit_times) == [10, 12, 11]
    assert list(table.start_offsets) == [256, 356, 456]
    assert list(table.end_offsets) == [356, 456, 556]
    assert TransactionTable.from_bytes(table.to_bytes()) == table
    assert len(table.to_bytes()) == 3 * 48
    assert repr(table) == "TransactionTable(3 transactions)"
    with pytest.raises(IndexError):
        table[3]
    with pytest.raises(ValueError, match="whole number of rows"):
        TransactionTable.from_bytes(b"\0" * 47)


transaction_lists = st.lists(
    st.tuples(
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(4, 2**40),
        st.integers(1, 2**20),
    ),
    max_size=20,
)


@given(transaction_lists)
def test_transaction_table_round_trips(rows: list[tuple[int, int, int, int, int, int]]) -> None:
    listed = [
        TransactionIndexEntry(Gtid(d, s, q), t, start, start + length)
        for d, s, q, t, start, length in rows
    ]
    table = TransactionTable.from_entries(listed)
    assert list(table) == listed
    assert TransactionTable.from_bytes(table.to_bytes()) == table


# --- segments ----------------------------------------------------------------------------
def test_segment_summarises_its_transactions() -> None:
    listed = entries(("0-1-8", 1005), ("1-2-1", 1009), ("0-1-9", 1007))
    for transactions in (listed, TransactionTable.from_entries(listed)):
        seg = BinlogSegment.from_transactions("binlog.000002", 600, P("0-1-7"), transactions)
        assert seg.end_position == P("0-1-9,1-2-1")
        assert seg.transaction_count == 3
        assert (seg.first_gtid, seg.last_gtid) == (Gtid(0, 1, 8), Gtid(0, 1, 9))
        assert (seg.first_commit_time, seg.last_commit_time) == (1005, 1007)
        assert seg.max_commit_time == 1009


def test_empty_segment_keeps_its_start_as_end() -> None:
    seg = BinlogSegment.from_transactions("binlog.000003", 400, P("0-1-9"), [])
    assert seg.end_position == P("0-1-9")
    assert seg.transaction_count == 0
    assert seg.first_gtid is None
    assert seg.max_commit_time is None


@pytest.mark.parametrize("gtids", [("0-1-7",), ("0-1-8", "0-1-8"), ("0-1-9", "0-1-8")])
def test_segment_refuses_gtids_that_do_not_advance(gtids: tuple[str, ...]) -> None:
    with pytest.raises(GtidOrderError, match=r"binlog\.000001"):
        segment("binlog.000001", "0-1-7", *gtids)


def test_segment_refuses_overlapping_or_oversized_transactions() -> None:
    a, b = entries(("0-1-1", 0), ("0-1-2", 0))
    overlapping = TransactionIndexEntry(b.gtid, 0, a.end_offset - 1, b.end_offset)
    with pytest.raises(ValueError, match="overlaps"):
        BinlogSegment.from_transactions("binlog.000001", 10_000, P(""), [a, overlapping])
    with pytest.raises(ValueError, match="file end"):
        BinlogSegment.from_transactions("binlog.000001", a.end_offset - 1, P(""), [a])
    with pytest.raises(ValueError, match="binlog file name"):
        BinlogSegment.from_transactions("binlog.index", 10_000, P(""), [a])


# --- gap checks --------------------------------------------------------------------------
def test_chained_segments_have_no_problems() -> None:
    segments = [
        segment("binlog.000001", "", "0-1-1", "0-1-2"),
        segment("binlog.000002", "0-1-2"),  # rotated with nothing in it
        segment("binlog.000003", "0-1-2", "1-1-1", "0-1-3"),
        segment("binlog.000005", "0-1-3,1-1-1", "0-1-4"),  # a number skipped, GTIDs chain
    ]
    assert check_chain(segments) == []
    assert check_chain(segments, start=P("")) == []
    assert check_chain([]) == []


Case = tuple[
    str, list[BinlogSegment], GtidPosition | None, GtidPosition | None, list[SegmentProblem]
]
CASES: list[Case] = [
    (
        "gap",
        [
            segment("binlog.000001", "0-1-4", "0-1-5"),
            segment("binlog.000002", "0-1-9", "0-1-10"),
        ],
        None,
        None,
        [GtidGap("binlog.000001", "binlog.000002", 0, 6, 9)],
    ),
    (
        "gap in a new domain",
        [
            segment("binlog.000001", "0-1-4", "0-1-5"),
            segment("binlog.000002", "0-1-5,1-2-3"),
        ],
        None,
        None,
        [GtidGap("binlog.000001", "binlog.000002", 1, 1, 3)],
    ),
    (
        "overlap",
        [
            segment("binlog.000001", "0-1-4", "0-1-5", "0-1-6"),
            segment("binlog.000002", "0-1-4", "0-1-5"),
        ],
        None,
        None,
        [GtidOverlap("binlog.000001", "binlog.000002", 0, 5, 6)],
    ),
    (
        "fork",
        [
            segment("binlog.000001", "0-1-4", "0-1-5"),
            segment("binlog.000002", "0-2-5"),
        ],
        None,
        None,
        [GtidDivergence("binlog.000001", "binlog.000002", 0, Gtid(0, 1, 5), Gtid(0, 2, 5))],
    ),
    (
        "reset",
        [
            segment("binlog.000001", "0-1-4,1-1-1", "0-1-5"),
            segment("binlog.000002", "0-1-5"),
        ],
        None,
        None,
        [DomainDropped("binlog.000001", "binlog.000002", 1, Gtid(1, 1, 1))],
    ),
    (
        "names out of order, GTIDs fine",
        [
            segment("binlog.000010", "0-1-4", "0-1-5"),
            segment("binlog.000009", "0-1-5"),
        ],
        None,
        None,
        [OutOfOrderName("binlog.000010", "binlog.000009")],
    ),
    (
        "same file twice",
        [
            segment("binlog.000001", "0-1-4"),
            segment("binlog.000001", "0-1-4"),
        ],
        None,
        None,
        [OutOfOrderName("binlog.000001", "binlog.000001")],
    ),
    (
        "start position",
        [segment("binlog.000001", "0-1-4", "0-1-5")],
        P("0-1-2"),
        None,
        [GtidGap(STREAM_START, "binlog.000001", 0, 3, 4)],
    ),
    (
        "lost last file, seen from the end position",
        [segment("binlog.000001", "0-1-4", "0-1-5")],
        None,
        P("0-1-8"),
        [GtidGap("binlog.000001", STREAM_END, 0, 6, 8)],
    ),
    (
        "several problems, all reported",
        [
            segment("binlog.000002", "0-1-4,1-1-9", "0-1-5"),
            segment("binlog.000001", "0-1-7,1-1-2"),
        ],
        None,
        None,
        [
            OutOfOrderName("binlog.000002", "binlog.000001"),
            GtidGap("binlog.000002", "binlog.000001", 0, 6, 7),
            GtidOverlap("binlog.000002", "binlog.000001", 1, 3, 9),
        ],
    ),
]


@pytest.mark.parametrize(
    ("segments", "start", "end", "problems"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_chain_problems(
    segments: list[BinlogSegment],
    start: GtidPosition | None,
    end: GtidPosition | None,
    problems: list[SegmentProblem],
) -> None:
    assert check_chain(segments, start, end) == problems


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[BinlogSegment], list[list[Gtid]]]:
    """A gap-free history over two domains, cut into files (some empty)."""
    domains = draw(st.lists(st.sampled_from([0, 1]), min_size=1, max_size=30))
    next_seq = {0: draw(st.integers(1, 5)), 1: 1}
    history = []
    for domain in domains:
        history.append(Gtid(domain, 1 + domain, next_seq[domain]))
        next_seq[domain] += draw(st.sampled_from([1, 1, 1, 3]))  # strict mode allows jumps
    cuts = sorted(draw(st.lists(st.integers(0, len(history)), max_size=6)))
    pieces = [history[a:b] for a, b in zip([0, *cuts], [*cuts, len(history)], strict=True)]
    start = GtidPosition()
    segments = []
    for number, piece in enumerate(pieces, start=1):
        transactions = [
            TransactionIndexEntry(g, 1000 + i, 256 + 10 * i, 266 + 10 * i)
            for i, g in enumerate(piece)
        ]
        seg = BinlogSegment.from_transactions(f"binlog.{number:06d}", 10_000, start, transactions)
        segments.append(seg)
        start = seg.end_position
    return segments, pieces


@given(streams())
def test_a_gap_free_stream_chains(stream: tuple[list[BinlogSegment], list[list[Gtid]]]) -> None:
    segments, _ = stream
    assert check_chain(segments, start=GtidPosition(), end=segments[-1].end_position) == []


@given(streams(), st.data())
def test_a_missing_file_is_a_gap_naming_exactly_what_is_missing(
    stream: tuple[list[BinlogSegment], list[list[Gtid]]], data: st.DataObject
) -> None:
    segments, pieces = stream
    missing = data.draw(st.integers(0, len(segments) - 1))
    kept = segments[:missing] + segments[missing + 1 :]
    problems = check_chain(kept, start=GtidPosition(), end=segments[-1].end_position)
    lost = pieces[missing]
    if not lost:
        assert problems == []  # a file without transactions: nothing is missing
        return
    gaps = [p for p in problems if isinstance(p, GtidGap)]
    assert problems == gaps  # removing a file never looks like an overlap or a reset
    for domain in {g.domain_id for g in lost}:
        in_domain = [g.seq_no for g in lost if g.domain_id == domain]
        (gap,) = [g for g in gaps if g.domain_id == domain]
        assert gap.last_missing_seq == max(in_domain)
        # From just after the state before the lost file: that includes sequence
        # numbers skipped by jumps, which cannot be told apart from lost ones.
        start_seq = segments[missing].gtid_list_at_start.seq_no(domain)
        assert gap.first_missing_seq == start_seq + 1
        assert gap.first_missing_seq <= min(in_domain)
    assert {g.domain_id for g in gaps} == {g.domain_id for g in lost}


# --- stop points: time -------------------------------------------------------------------
TIME_CASES = [
    # (commit times in binlog order, target, expected count)
    ([], 100, 0),
    ([10, 20, 30], 5, 0),
    ([10, 20, 30], 10, 0),  # a transaction AT the target time is not applied
    ([10, 20, 30], 11, 1),
    ([10, 20, 30], 30, 2),
    ([10, 20, 30], 31, 3),
    ([10, 20, 20, 30], 21, 3),
    # Not monotonic: the stop is before the FIRST one at or past the target, even
    # though later transactions committed earlier.
    ([10, 25, 15, 30], 20, 1),
    ([10, 25, 15, 30], 26, 3),
    ([10, 9, 8], 10, 0),
]


@pytest.mark.parametrize(("times", "target", "count"), TIME_CASES)
def test_stop_for_time(times: list[int], target: int, count: int) -> None:
    transactions = entries(*((f"0-1-{i + 1}", t) for i, t in enumerate(times)))
    for given_as in (transactions, TransactionTable.from_entries(transactions)):
        stop = stop_for_time(given_as, target)
        assert stop.count == count
        expected_next = transactions[count] if count < len(transactions) else None
        assert stop.stop_before == expected_next
        assert stop.found == (expected_next is not None)


@given(st.lists(st.integers(0, 50), max_size=30), st.integers(0, 55))
def test_stop_for_time_matches_the_rule(times: list[int], target: int) -> None:
    transactions = entries(*((f"0-1-{i + 1}", t) for i, t in enumerate(times)))
    stop = stop_for_time(TransactionTable.from_entries(transactions), target)
    # Everything applied precedes the target; replay stops at the first transaction
    # at or past it, never later, whatever comes after.
    assert all(t < target for t in times[: stop.count])
    if stop.count < len(times):
        assert times[stop.count] >= target
        assert stop == StopPoint(stop.count, transactions[stop.count])
    else:
        assert stop == StopPoint(len(times), None)


# --- stop points: GTID -------------------------------------------------------------------
def test_stop_for_gtid_single_domain() -> None:
    transactions = entries(("0-1-5", 0), ("0-1-6", 0), ("0-1-7", 0), ("0-1-8", 0))
    stop = stop_for_gtid(transactions, P("0-1-6"), start=P("0-1-4"))
    assert (stop.count, stop.stop_before) == (2, transactions[2])
    assert stop.position == P("0-1-6")
    assert stop.reached
    end = stop_for_gtid(transactions, P("0-1-20"), start=P("0-1-4"))
    assert (end.count, end.stop_before, end.reached) == (4, None, False)


def test_stop_for_gtid_target_already_in_the_start() -> None:
    transactions = entries(("0-1-5", 0))
    stop = stop_for_gtid(transactions, P("0-1-3"), start=P("0-1-4"))
    assert (stop.count, stop.reached) == (0, True)


def test_stop_for_gtid_never_applies_beyond_the_target_in_another_domain() -> None:
    transactions = entries(("0-1-5", 0), ("1-2-1", 0), ("0-1-6", 0))
    stop = stop_for_gtid(transactions, P("0-1-6"), start=P("0-1-4"))
    assert stop.count == 1
    assert stop.stop_before == transactions[1]
    assert not stop.reached  # 0-1-6 comes after a transaction outside the target
    both = stop_for_gtid(transactions, P("0-1-6,1-2-1"), start=P("0-1-4"))
    assert (both.count, both.reached, both.position) == (3, True, P("0-1-6,1-2-1"))


def test_stop_for_gtid_on_a_sequence_number_that_does_not_exist() -> None:
    transactions = entries(("0-1-5", 0), ("0-1-9", 0))
    stop = stop_for_gtid(transactions, P("0-1-7"), start=P("0-1-4"))
    assert (stop.count, stop.position, stop.reached) == (1, P("0-1-5"), False)
    assert stop.found


def test_stop_for_gtid_refuses_transactions_already_in_the_start() -> None:
    transactions = entries(("0-1-4", 0), ("0-1-5", 0))
    with pytest.raises(GtidOrderError):
        stop_for_gtid(transactions, P("0-1-9"), start=P("0-1-4"))


@given(streams(), st.data())
def test_stop_for_gtid_at_a_transaction_reaches_it_exactly(
    stream: tuple[list[BinlogSegment], list[list[Gtid]]], data: st.DataObject
) -> None:
    _, pieces = stream
    history = [g for piece in pieces for g in piece]
    cut = data.draw(st.integers(0, len(history)))
    transactions = entries(*((g.format(), 0) for g in history))
    # The position right after `cut` transactions, as a target.
    target = GtidPosition.from_binlog_state(history[:cut])
    stop = stop_for_gtid(TransactionTable.from_entries(transactions), target)
    assert stop.reached
    assert stop.position == target
    assert stop.count == cut
