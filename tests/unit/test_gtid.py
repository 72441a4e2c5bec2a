"""MariaDB GTIDs and positions: parsing, formatting and the position algebra."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from binhoard.domain.gtid import Gtid, GtidOrderError, GtidPosition, GtidState

U32 = 2**32 - 1
U64 = 2**64 - 1

gtids = st.builds(
    Gtid,
    domain_id=st.integers(0, U32),
    server_id=st.integers(0, U32),
    seq_no=st.integers(0, U64),
)
# Small domains so that positions and GTIDs often share a domain.
small_gtids = st.builds(
    Gtid,
    domain_id=st.integers(0, 3),
    server_id=st.integers(1, 3),
    seq_no=st.integers(1, 50),
)
positions = st.lists(small_gtids, max_size=5).map(GtidPosition.from_binlog_state)


# --- Gtid ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-1-7", Gtid(0, 1, 7)),
        (" 1-2-9 ", Gtid(1, 2, 9)),
        ("0-1-0", Gtid(0, 1, 0)),
        (f"{U32}-{U32}-{U64}", Gtid(U32, U32, U64)),
        ("007-1-1", Gtid(7, 1, 1)),
    ],
)
def test_gtid_parses(text: str, expected: Gtid) -> None:
    assert Gtid.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0-1",
        "0-1-7-8",
        "0:1:7",
        "a-1-7",
        "-1-1-7",
        "0-1-+7",
        "0-1-1_000",
        "0-1-\u0667",  # an Arabic-Indic digit: int() would take it, MariaDB does not
        f"{U32 + 1}-1-1",
        f"0-{U32 + 1}-1",
        f"0-1-{U64 + 1}",
        "0 -1-7",
    ],
)
def test_gtid_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="GTID"):
        Gtid.parse(text)


@pytest.mark.parametrize("bad", [-1, U32 + 1, True, 1.0, "1"])
def test_gtid_validates_fields(bad: object) -> None:
    with pytest.raises(ValueError, match="domain_id"):
        Gtid(bad, 1, 1)  # type: ignore[arg-type]


def test_gtid_is_frozen_and_hashable() -> None:
    gtid = Gtid(0, 1, 7)
    with pytest.raises(AttributeError):
        gtid.seq_no = 8  # type: ignore[misc]
    assert {gtid, Gtid(0, 1, 7)} == {gtid}
    assert str(gtid) == "0-1-7"


@given(gtids)
def test_gtid_round_trips(gtid: Gtid) -> None:
    assert Gtid.parse(gtid.format()) == gtid


# --- GtidPosition: text ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", ""),
        ("   ", ""),
        ("0-1-7", "0-1-7"),
        ("1-2-9,0-1-7", "0-1-7,1-2-9"),
        ("0-1-7, 1-2-9", "0-1-7,1-2-9"),
        ("10-1-1,2-1-1", "2-1-1,10-1-1"),  # numeric domain order, not string order
    ],
)
def test_position_parses_to_canonical_text(text: str, canonical: str) -> None:
    position = GtidPosition.parse(text)
    assert position.format() == canonical
    assert str(position) == canonical


@pytest.mark.parametrize("text", ["0-1-7,", ",0-1-7", "0-1-7,,1-2-9", "0-1-7;1-2-9", "x"])
def test_position_rejects_malformed_lists(text: str) -> None:
    with pytest.raises(ValueError, match="GTID"):
        GtidPosition.parse(text)


def test_position_rejects_two_gtids_of_one_domain() -> None:
    with pytest.raises(ValueError, match="two GTIDs for domain 0"):
        GtidPosition.parse("0-1-7,0-2-9")


def test_binlog_state_folds_to_the_furthest_gtid_per_domain() -> None:
    # As in a Gtid_list after a failover: one entry per (domain, server).
    state = [Gtid(1, 7, 1), Gtid(0, 1, 100), Gtid(0, 2, 150), Gtid(0, 3, 120)]
    assert GtidPosition.from_binlog_state(state) == GtidPosition.parse("0-2-150,1-7-1")


def test_binlog_state_prefers_the_later_listed_on_equal_seq() -> None:
    state = [Gtid(0, 1, 5), Gtid(0, 2, 5)]
    assert GtidPosition.from_binlog_state(state)[0] == Gtid(0, 2, 5)


@given(st.lists(gtids, max_size=6))
def test_position_round_trips(gtid_list: list[Gtid]) -> None:
    position = GtidPosition.from_binlog_state(gtid_list)
    assert GtidPosition.parse(position.format()) == position
    assert GtidPosition(position.gtids) == position


# --- GtidPosition: mapping behaviour -------------------------------------------------------
def test_position_is_an_immutable_mapping_of_domains() -> None:
    position = GtidPosition.parse("1-2-9,0-1-7")
    assert list(position) == [0, 1]
    assert len(position) == 2
    assert position[1] == Gtid(1, 2, 9)
    assert 1 in position  # a domain id: Mapping semantics
    assert position.get(5) is None
    assert position.seq_no(0) == 7
    assert position.seq_no(5) == 0
    assert position == GtidPosition.parse("0-1-7,1-2-9")
    assert hash(position) == hash(GtidPosition.parse("0-1-7,1-2-9"))
    assert position != {0: Gtid(0, 1, 7), 1: Gtid(1, 2, 9)}
    assert repr(position) == "GtidPosition('0-1-7,1-2-9')"
    assert not GtidPosition()
    with pytest.raises(TypeError):
        GtidPosition(["0-1-7"])  # type: ignore[list-item]


def test_position_meets_the_flavour_protocol() -> None:
    state: GtidState[Gtid] = GtidPosition.parse("0-1-7")
    assert state.contains(Gtid(0, 1, 7))
    assert state.advance(Gtid(0, 1, 8)).format() == "0-1-8"


# --- GtidPosition: algebra ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("position", "gtid", "contained"),
    [
        ("0-1-7", "0-1-7", True),
        ("0-1-7", "0-1-3", True),
        ("0-1-7", "0-2-3", True),  # server ids do not matter under strict mode
        ("0-1-7", "0-1-8", False),
        ("0-1-7", "1-1-1", False),
        ("", "0-1-1", False),
    ],
)
def test_contains(position: str, gtid: str, contained: bool) -> None:
    assert GtidPosition.parse(position).contains(Gtid.parse(gtid)) is contained


@pytest.mark.parametrize(
    ("a", "b", "a_covers_b"),
    [
        ("", "", True),
        ("0-1-7", "", True),
        ("", "0-1-7", False),
        ("0-1-7", "0-1-7", True),
        ("0-1-8", "0-1-7", True),
        ("0-1-7", "0-1-8", False),
        ("0-1-7,1-1-3", "0-1-7", True),
        ("0-1-7", "0-1-7,1-1-3", False),
        ("0-1-9,1-1-1", "0-1-7,1-1-3", False),
    ],
)
def test_covers(a: str, b: str, a_covers_b: bool) -> None:
    assert GtidPosition.parse(a).covers(GtidPosition.parse(b)) is a_covers_b


def test_advance_returns_a_new_position() -> None:
    before = GtidPosition.parse("0-1-7")
    after = before.advance(Gtid(1, 2, 1))
    assert before.format() == "0-1-7"
    assert after.format() == "0-1-7,1-2-1"
    assert after.advance(Gtid(0, 3, 8)).format() == "0-3-8,1-2-1"


@pytest.mark.parametrize("gtid", ["0-1-7", "0-1-6", "0-2-7"])
def test_strict_advance_refuses_duplicates_and_going_back(gtid: str) -> None:
    position = GtidPosition.parse("0-1-7")
    with pytest.raises(GtidOrderError, match="does not follow 0-1-7"):
        position.advance(Gtid.parse(gtid))
    assert position.advance(Gtid.parse(gtid), strict=False)[0] == Gtid.parse(gtid)


@given(positions, small_gtids)
def test_advance_is_monotonic(position: GtidPosition, gtid: Gtid) -> None:
    if gtid.seq_no <= position.seq_no(gtid.domain_id):
        with pytest.raises(GtidOrderError):
            position.advance(gtid)
        return
    after = position.advance(gtid)
    assert after.covers(position)
    assert not position.covers(after)
    assert after.contains(gtid)
    assert set(after) == set(position) | {gtid.domain_id}
    assert all(after[d] == position[d] for d in position if d != gtid.domain_id)


@given(positions)
def test_covers_is_reflexive(position: GtidPosition) -> None:
    assert position.covers(position)
    assert position.covers(GtidPosition())


@given(positions, positions, positions)
def test_covers_is_transitive(a: GtidPosition, b: GtidPosition, c: GtidPosition) -> None:
    if a.covers(b) and b.covers(c):
        assert a.covers(c)


@given(positions, positions)
def test_covers_both_ways_means_same_progress(a: GtidPosition, b: GtidPosition) -> None:
    if a.covers(b) and b.covers(a):
        assert set(a) == set(b)
        assert all(a.seq_no(d) == b.seq_no(d) for d in a)


@given(positions, positions)
def test_merge_is_the_least_upper_bound(a: GtidPosition, b: GtidPosition) -> None:
    merged = a.merge(b)
    assert merged.covers(a)
    assert merged.covers(b)
    assert set(merged) == set(a) | set(b)
    assert all(merged.seq_no(d) == max(a.seq_no(d), b.seq_no(d)) for d in merged)


@given(positions, small_gtids)
def test_contains_agrees_with_covers(position: GtidPosition, gtid: Gtid) -> None:
    assert position.contains(gtid) == position.covers(GtidPosition([gtid]))


def test_equal_sequence_numbers_of_two_servers_diverge() -> None:
    # A deposed primary's 0-1-73 next to its successor's 0-2-73: two transactions.
    mine, theirs = GtidPosition.parse("0-1-73,1-1-5"), GtidPosition.parse("0-2-73,1-1-5")
    assert mine.covers(theirs)  # by sequence number only: why diverges_from exists
    assert mine.diverges_from(theirs) == [(Gtid(0, 1, 73), Gtid(0, 2, 73))]
    assert mine.diverges_from(GtidPosition.parse("0-2-72,1-2-5")) == [
        (Gtid(1, 1, 5), Gtid(1, 2, 5))
    ]
    assert not mine.diverges_from(mine)
    assert not mine.diverges_from(GtidPosition.parse("0-2-74"))
