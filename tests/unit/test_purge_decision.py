"""domain/purge.py: which binlogs may go, in tables with a fixed clock, and a Hypothesis
invariant: nothing is purged that an open stream lacks or a reported node has not
applied, and the answer is always a bounded prefix of the index without the active file."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from binhoard.domain.gtid import GtidPosition
from binhoard.domain.purge import (
    LocalBinlog,
    NodeReport,
    PurgeDecision,
    PurgeRules,
    Stream,
    applied,
    decide,
)

NOW = 1_800_000_000.0
HOUR = 3600.0
RULES = PurgeRules(
    min_age=600,
    max_files=10,
    max_report_age=HOUR,
    observing=False,
    purge_when_observe_no_streams=True,
)


def pos(text: str) -> GtidPosition:
    return GtidPosition.parse(text)


def files(*ends: str, age: float = HOUR) -> list[LocalBinlog]:
    """binlog.000001.. closed ``age`` ago with these end states; the last one active."""
    found = [
        LocalBinlog(f"binlog.{i:06d}", 100 * i, NOW - age, pos(end))
        for i, end in enumerate(ends, start=1)
    ]
    last = found[-1]
    found[-1] = LocalBinlog(last.name, last.size, None, None)
    return found


def stream(binlogs: Sequence[LocalBinlog], stored: int, sid: str = "s1") -> Stream:
    held = binlogs[:stored]
    end = held[-1].end_state if held and held[-1].end_state else pos("")
    return Stream(sid, pos(""), frozenset(b.name for b in held), end)


def node(name: str, position: str, age: float = 0.0, key: str = "gtid_current_pos") -> NodeReport:
    return NodeReport(name, {key: position}, NOW - age)


def run(
    binlogs: list[LocalBinlog],
    streams: Sequence[Stream],
    reports: Sequence[NodeReport] = (),
    rules: PurgeRules = RULES,
) -> PurgeDecision:
    return decide(binlogs, binlogs[-1].name, streams, reports, rules, now=NOW)


FOUR = files("0-1-10", "0-1-20", "0-1-30", "0-1-40")  # three closed, one active


@pytest.mark.parametrize(
    ("stored", "reports", "purged", "kind", "reason"),
    [
        # Stored everywhere, no node reported: every closed file goes.
        (3, [], 3, "active", "binlog.000004 is the active file"),
        (1, [], 1, "stream", "binlog.000002 is not stored in stream s1"),
        (3, [node("n1", "0-1-20")], 2, "replica", "binlog.000003 is not applied on node n1"),
        (3, [node("n1", "0-1-30"), node("n2", "0-1-5")], 0, "replica", "on node n2"),
        # A stale report keeps blocking, and says so.
        (3, [node("n1", "0-1-10", age=2 * HOUR)], 1, "stale_replica", "(its report is stale)"),
        # Same sequence number, another server: another history, not applied.
        (3, [node("n1", "0-2-30")], 0, "replica", "not applied on node n1"),
        # A node without a position of the domain has not applied it.
        (3, [node("n1", "1-1-99")], 0, "replica", "not applied on node n1"),
        (3, [NodeReport("n1", {}, NOW)], 0, "replica", "no position"),
        # gtid_slave_pos is used when gtid_current_pos is not reported.
        (3, [node("n1", "0-1-30", key="gtid_slave_pos")], 3, "active", "active file"),
    ],
)
def test_table(stored: int, reports: list[NodeReport], purged: int, kind: str, reason: str) -> None:
    decision = run(FOUR, [stream(FOUR, stored)], reports)
    assert [b.name for b in decision.purge] == [b.name for b in FOUR[:purged]]
    assert decision.kind == kind
    assert reason in decision.reason
    assert decision.purge_to == (FOUR[purged].name if purged else None)


def test_young_files_are_kept() -> None:
    binlogs = [*files("0-1-10", "0-1-20", age=2 * HOUR)[:1], *files("0-1-20", "0-1-30", age=60)]
    binlogs[1] = LocalBinlog("binlog.000002", 1, NOW - 60, pos("0-1-20"))
    binlogs[2] = LocalBinlog("binlog.000003", 1, None, None)
    decision = run(binlogs, [stream(binlogs, 2)])
    assert [b.name for b in decision.purge] == ["binlog.000001"]
    assert decision.kind == "age"
    assert "younger than min_binlog_age_before_purge (60 s < 600 s)" in decision.reason


def test_every_open_stream_must_hold_the_file() -> None:
    decision = run(FOUR, [stream(FOUR, 3, "s1"), stream(FOUR, 2, "s2")])
    assert decision.purge_to == "binlog.000003"
    assert "not stored in stream s2" in decision.reason


def test_no_open_stream_blocks_in_active_mode() -> None:
    decision = run(FOUR, [])
    assert not decision.purge
    assert decision.reason == "binlog.000001 is not stored: no open backup stream"


@pytest.mark.parametrize(("when_no_streams", "purged"), [(True, 3), (False, 0)])
def test_observe_without_streams(when_no_streams: bool, purged: int) -> None:
    rules = PurgeRules(600, 10, HOUR, observing=True, purge_when_observe_no_streams=when_no_streams)
    decision = run(FOUR, [], [node("n1", "0-1-30")], rules)
    assert len(decision.purge) == purged


def test_observe_compares_positions_not_names() -> None:
    """An observer's files are named by itself; the stream is the primary's."""
    rules = PurgeRules(600, 10, HOUR, observing=True, purge_when_observe_no_streams=True)
    primary = Stream("p", pos(""), frozenset({"other.000007"}), pos("0-1-20"))
    decision = run(FOUR, [primary], [], rules)
    assert decision.purge_to == "binlog.000003"
    assert "not stored in stream p" in decision.reason


def test_cap_bounds_a_pass() -> None:
    many = files(*(f"0-1-{i}" for i in range(1, 30)))
    rules = PurgeRules(600, 5, HOUR, observing=False, purge_when_observe_no_streams=True)
    decision = run(many, [stream(many, 28)], [node("n1", "0-1-99")], rules)
    assert len(decision.purge) == 5
    assert decision.capped and decision.kind == "cap"
    assert decision.purge_to == "binlog.000006"


def test_failover_applied_through_a_later_file() -> None:
    """After a failover the nodes are at 0-2-N: a later file of this history that ends
    at 0-2-M <= N shows the earlier 0-1 files were applied before it."""
    binlogs = files("0-1-100", "0-2-140", "0-2-150")
    decision = run(binlogs, [stream(binlogs, 2)], [node("n1", "0-2-145")])
    assert decision.purge_to == "binlog.000003"
    # Diverged: the node's 0-2 history is not the one of these files.
    assert not applied(pos("0-2-100"), [pos("0-1-100")])
    assert not applied(pos("0-3-200"), [pos("0-1-100"), pos("0-2-140")])
    assert applied(pos("0-1-100"), [pos("0-1-100")])


def test_stale_nodes_are_named_even_when_nothing_waits_for_them() -> None:
    decision = run(FOUR, [stream(FOUR, 3)], [node("n1", "0-1-99", age=2 * HOUR)])
    assert decision.stale_nodes == ("n1",)
    assert len(decision.purge) == 3


# --- the invariant -----------------------------------------------------------------------
SERVERS = st.integers(1, 3)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[LocalBinlog], list[Stream], list[NodeReport], int]:
    count = draw(st.integers(1, 12))
    seq, server, binlogs = 0, 1, []
    for i in range(1, count + 1):
        seq += draw(st.integers(0, 5))
        server = draw(SERVERS) if draw(st.booleans()) else server
        end = pos(f"0-{server}-{seq}") if seq else pos("")
        closed = NOW - draw(st.sampled_from([0.0, 100.0, HOUR]))
        binlogs.append(LocalBinlog(f"binlog.{i:06d}", i, closed, end))
    last = binlogs[-1]
    binlogs[-1] = LocalBinlog(last.name, last.size, None, None)
    streams = [
        stream(binlogs, draw(st.integers(0, count)), f"s{j}")
        for j in range(draw(st.integers(0, 2)))
    ]
    reports = [
        NodeReport(
            f"n{j}",
            {"gtid_current_pos": f"0-{draw(SERVERS)}-{draw(st.integers(1, 6 * count))}"},
            NOW - draw(st.sampled_from([0.0, 2 * HOUR])),
        )
        for j in range(draw(st.integers(0, 3)))
    ]
    return binlogs, streams, reports, draw(st.integers(1, 5))


@given(scenarios(), st.booleans())
def test_never_purges_what_is_unstored_or_unapplied(
    scenario: tuple[list[LocalBinlog], list[Stream], list[NodeReport], int], observing: bool
) -> None:
    binlogs, streams, reports, cap = scenario
    rules = PurgeRules(600, cap, HOUR, observing, purge_when_observe_no_streams=False)
    decision = run(binlogs, streams, reports, rules)
    purged = list(decision.purge)
    assert purged == binlogs[: len(purged)]
    assert len(purged) <= cap
    assert binlogs[-1] not in purged
    for binlog in purged:
        assert binlog.closed_at is not None and NOW - binlog.closed_at >= 600
        assert streams and all(s.holds(binlog, by_name=not observing) for s in streams)
        assert binlog.end_state is not None
        for report in reports:
            at = report.position()
            assert at is not None
            for domain, needed in binlog.end_state.items():
                # Applied: the node is at or past the file's end in this domain, and on
                # a server id this history had there at or after the file.
                assert at[domain].seq_no >= needed.seq_no
                ids = {
                    b.end_state[domain].server_id
                    for b in binlogs[binlogs.index(binlog) :]
                    if b.end_state is not None and domain in b.end_state
                }
                assert at[domain].server_id in ids
    if purged:
        assert decision.purge_to == binlogs[len(purged)].name


def test_a_file_before_the_backup_snapshot_is_in_the_backup() -> None:
    """No record names it (the stream starts after it), but the snapshot covers it."""
    s = Stream("s1", pos("0-1-20"), frozenset({"binlog.000003"}), pos("0-1-30"))
    decision = run(FOUR, [s])
    assert decision.purge_to == "binlog.000004"
    # Another server's snapshot at the same numbers is another history.
    other = Stream("s1", pos("0-2-20"), frozenset({"binlog.000003"}), pos("0-1-30"))
    assert run(FOUR, [other]).purge_to is None
