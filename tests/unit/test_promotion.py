"""The promotion records and the fencing rule (domain/promotion.py, docs/format.md
"Promotions and fencing"): which binlog records of a stream count once a node took it
over, whatever order the deposed primary's late uploads and the promotion land in."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from binhoard.domain.catalog import BinlogRecord
from binhoard.domain.documents import CorruptDocumentError
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.manifest import ObjectRef
from binhoard.domain.promotion import (
    Promotion,
    continuity_problems,
    current_owner,
    deposed_by,
    fence,
    ordering_problem,
    owner_of,
    promotion_key,
    seq_of_promotion_key,
)

OLD, NEW, THIRD = 1, 2, 3
AT = datetime(2026, 1, 1, tzinfo=UTC)
P = GtidPosition.parse


def record(seq: int, server: int, start: str, end: str, *, offset: int = 4) -> BinlogRecord:
    """A record of a file of ``server`` from GTID state ``start`` to ``end`` (domain 0)."""
    first, last = P(start), P(end)
    return BinlogRecord(
        stream_id="S",
        seq=seq,
        server_id=server,
        name=f"binlog-{server}.{seq + 1:06d}",
        object=ObjectRef(f"binlogs/{server}/{seq}", "none", (), 1, "0" * 64, 1, "0" * 64),
        gtid_list_at_start=first,
        gtid_position_at_end=last,
        first_gtid=None,
        last_gtid=last[0] if last else None,
        first_commit_time=None,
        last_commit_time=None,
        min_commit_time=None,
        max_commit_time=None,
        transactions=last.seq_no(0) - first.seq_no(0),
        start_offset=offset,
        archived_at=AT,
    )


def promotion(
    n: int, server: int, takes_over_at: int, position: str, previous: int = OLD
) -> Promotion:
    return Promotion("S", n, server, previous, takes_over_at, P(position), AT)


# --- the document ---------------------------------------------------------------------
def test_a_promotion_round_trips_and_is_checked_against_its_key() -> None:
    made = replace(promotion(3, NEW, 7, "0-1-70,1-1-4"), forced=True)
    assert made.key == "streams/S/promotions/0000000003.json"
    assert Promotion.from_bytes(made.to_bytes(), key=made.key) == made
    assert seq_of_promotion_key(made.key) == 3
    assert seq_of_promotion_key("streams/S/binlogs/0000000003.json") is None
    with pytest.raises(CorruptDocumentError, match="names promotion 3"):
        Promotion.from_bytes(made.to_bytes(), key=promotion_key("S", 4))
    with pytest.raises(CorruptDocumentError, match="takes over at seq -1"):
        bad = replace(made, takes_over_at=-1)
        Promotion.from_bytes(bad.to_bytes(), key=bad.key)


def test_promotions_are_numbered_without_holes_and_never_go_back() -> None:
    first, second = promotion(0, NEW, 5, ""), promotion(1, OLD, 5, "")
    assert ordering_problem([first, second]) is None  # a later one at the same record
    assert ordering_problem([second]) == (
        promotion_key("S", 0),
        "promotion 0 of stream S is missing (promotion 1 exists)",
    )
    key, reason = ordering_problem([first, promotion(1, OLD, 4, "")]) or ("", "")
    assert key == promotion_key("S", 1) and "before promotion 0 (5)" in reason


# --- who owns which record --------------------------------------------------------------
@pytest.mark.parametrize(
    ("seq", "owner"),
    [(0, OLD), (4, OLD), (5, NEW), (8, NEW), (9, THIRD), (20, THIRD)],
)
def test_the_owner_of_a_record_is_the_newest_promotion_at_or_before_it(
    seq: int, owner: int
) -> None:
    promotions = [promotion(0, NEW, 5, ""), promotion(1, OLD, 9, ""), promotion(2, THIRD, 9, "")]
    assert owner_of(seq, OLD, promotions) == owner  # promotion 2 wins at 9 over 1
    assert current_owner(OLD, promotions) == THIRD
    assert current_owner(OLD, []) == OLD


def test_deposed_is_whoever_owned_the_stream_and_no_longer_does() -> None:
    once = [promotion(0, NEW, 5, "")]
    assert deposed_by(OLD, OLD, once) == once[0]
    assert deposed_by(NEW, OLD, once) is None
    assert deposed_by(THIRD, OLD, once) is None  # never owned it
    assert deposed_by(OLD, OLD, []) is None
    # Promoted twice in one stream: two records, and the second deposition counts.
    back_and_forth = [*once, promotion(1, OLD, 8, "", NEW), promotion(2, NEW, 9, "", OLD)]
    assert deposed_by(OLD, OLD, back_and_forth) == back_and_forth[2]
    assert deposed_by(NEW, OLD, back_and_forth) is None


# --- fencing: a table of late uploads -------------------------------------------------------
def test_a_deposed_primary_that_won_the_next_seq_before_the_promotion_is_fenced() -> None:
    # OLD archived 0-1-1..3 in records 0-2; NEW read them, promoted at 3 from 0-1-3. OLD
    # created record 3 (0-1-4, never replicated) before the promotion landed, and 4
    # after it; NEW's first record is therefore 5. 0-1-4 and 0-2-4 share a seq_no.
    records = [
        record(0, OLD, "", "0-1-1"),
        record(1, OLD, "0-1-1", "0-1-2"),
        record(2, OLD, "0-1-2", "0-1-3"),
        record(3, OLD, "0-1-3", "0-1-4"),
        record(4, OLD, "0-1-4", "0-1-5"),
        record(5, NEW, "0-1-2", "0-2-4", offset=900),  # contains 0-1-3: starts mid-file
        record(6, NEW, "0-2-4", "0-2-6"),
    ]
    promotions = [promotion(0, NEW, 3, "0-1-3")]
    split = fence(records, OLD, promotions)
    assert [r.seq for r in split.kept] == [0, 1, 2, 5, 6]
    assert [r.seq for r in split.fenced] == [3, 4]
    assert continuity_problems(split.kept, promotions, GtidPosition()) == []
    # Without the fencing rule the same records are a divergence, which is why readers
    # never see them unfenced.
    assert continuity_problems(records, [], GtidPosition())


def test_a_promotion_must_continue_where_the_kept_records_end() -> None:
    records = [record(0, OLD, "", "0-1-2"), record(1, NEW, "0-1-2", "0-2-5")]
    wrong = [promotion(0, NEW, 1, "0-1-1")]
    problems = continuity_problems(fence(records, OLD, wrong).kept, wrong, GtidPosition())
    assert any("archive before it ends at 0-1-2" in p for p in problems)
    late = [record(0, OLD, "", "0-1-2"), record(1, NEW, "0-1-4", "0-2-6")]
    right = [promotion(0, NEW, 1, "0-1-2")]
    problems = continuity_problems(fence(late, OLD, right).kept, right, GtidPosition())
    assert problems == [
        "binlog-2.000002 (record 1, server 2) does not contain the position 0-1-2 "
        "promotion 0 continues from"
    ]


def test_a_promotion_before_any_record_continues_from_the_snapshot() -> None:
    records = [record(0, OLD, "0-1-5", "0-1-6"), record(1, NEW, "0-1-5", "0-2-7")]
    promotions = [promotion(0, NEW, 0, "0-1-5")]
    split = fence(records, OLD, promotions)
    assert [r.seq for r in split.kept] == [1]
    assert continuity_problems(split.kept, promotions, P("0-1-5")) == []


# --- fencing under every interleaving ---------------------------------------------------------
@given(
    before=st.integers(0, 4),
    late_before_promotion=st.integers(0, 3),
    after=st.lists(st.sampled_from(["old", "new"]), max_size=10),
)
def test_whatever_the_interleaving_only_the_owner_of_each_point_counts(
    before: int, late_before_promotion: int, after: list[str]
) -> None:
    """The old primary archives ``before`` files; the new one reads them and promotes;
    ``late_before_promotion`` of the old one's files land between that read and the
    promotion; then ``after`` is the explicit order of the old primary's in-flight
    uploads (from passes that read the site before the promotion existed) and the new
    owner's. Every writer creates at the next free seq, as the store makes them."""
    site: list[BinlogRecord] = []
    old_seq = new_seq = 0  # domain-0 sequence numbers each server has written up to

    def old_writes() -> None:
        nonlocal old_seq
        site.append(record(len(site), OLD, f"0-1-{old_seq}" * bool(old_seq), f"0-1-{old_seq + 1}"))
        old_seq += 1

    for _ in range(before):
        old_writes()
    takes_over_at = len(site)
    at = site[-1].gtid_position_at_end if site else GtidPosition()
    for _ in range(late_before_promotion):
        old_writes()
    promotions = [Promotion("S", 0, NEW, OLD, takes_over_at, at, AT)]
    new_seq = before  # the new owner applied what was archived, then takes writes
    new_start = at.format()
    for writer in after:
        if writer == "old":
            old_writes()
            continue
        start = new_start or ("" if not new_seq else f"0-1-{new_seq}")
        site.append(record(len(site), NEW, start, f"0-2-{new_seq + 1}"))
        new_start = f"0-2-{new_seq + 1}"
        new_seq += 1

    split = fence(site, OLD, promotions)
    assert [r.server_id for r in split.kept if r.seq < takes_over_at] == [OLD] * before
    assert all(r.server_id == NEW for r in split.kept if r.seq >= takes_over_at)
    assert all(r.server_id == OLD and r.seq >= takes_over_at for r in split.fenced)
    assert len(split.kept) + len(split.fenced) == len(site)
    assert continuity_problems(split.kept, promotions, GtidPosition()) == []
    # Nothing the old primary wrote past the promotion point is ever in a kept record,
    # though 0-1-(before+1).. and 0-2-(before+1).. share sequence numbers.
    for kept in split.kept:
        last = kept.gtid_position_at_end[0]
        assert (last.server_id, last.seq_no <= before) == (OLD, True) or last.server_id == NEW
    for late in split.fenced:
        theirs = late.gtid_position_at_end
        ours = next(
            (r for r in split.kept if r.gtid_position_at_end.seq_no(0) == theirs.seq_no(0)), None
        )
        if ours is not None:
            assert ours.gtid_position_at_end.diverges_from(theirs)
