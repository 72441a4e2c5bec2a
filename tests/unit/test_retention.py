"""Retention as a pure function: every rule table-tested with a fixed clock, and the
invariants (what is never deleted) checked on random catalogs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from binhoard.domain.retention import (
    GfsCounts,
    RetentionCandidate,
    RetentionPolicy,
    plan_deletion,
    plan_retention,
)

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def backup(
    backup_id: str, age: timedelta, *, parent: RetentionCandidate | None = None, **kw: Any
) -> RetentionCandidate:
    chain = (*parent.chain, backup_id) if parent is not None else (backup_id,)
    return RetentionCandidate(backup_id, NOW - age, chain=chain, **kw)


def plan(
    backups: list[RetentionCandidate],
    *,
    count_min: int = 0,
    count_max: int = 100,
    age_days: float | None = None,
    gfs: GfsCounts | None = None,
) -> dict[str, tuple[str, str]]:
    policy = RetentionPolicy(
        count_min,
        count_max,
        None if age_days is None else timedelta(days=age_days),
        gfs or GfsCounts(),
    )
    return {d.backup_id: (d.action, d.rule) for d in plan_retention(backups, policy, NOW)}


def daily(count: int) -> list[RetentionCandidate]:
    """``count`` backups, one a day, the newest one day old: b1 oldest."""
    return [backup(f"b{i + 1}", (count - i) * DAY) for i in range(count)]


@pytest.mark.parametrize(
    ("count_min", "count_max", "expected"),
    [
        # newest first: b5 is the newest usable backup, then by rank
        (
            2,
            3,
            {
                "b5": ("keep", "newest"),
                "b4": ("keep", "count-min"),
                "b3": ("keep", "window"),
                "b2": ("delete", "count-max"),
                "b1": ("delete", "count-max"),
            },
        ),
        (
            0,
            1,
            {
                "b5": ("keep", "newest"),
                "b4": ("delete", "count-max"),
                "b3": ("delete", "count-max"),
                "b2": ("delete", "count-max"),
                "b1": ("delete", "count-max"),
            },
        ),
        (5, 5, {f"b{i}": ("keep", "newest" if i == 5 else "count-min") for i in range(1, 6)}),
    ],
)
def test_counts(count_min: int, count_max: int, expected: dict[str, tuple[str, str]]) -> None:
    assert plan(daily(5), count_min=count_min, count_max=count_max) == expected


def test_a_backup_expires_only_once_a_newer_one_is_older_than_the_window() -> None:
    backups = [
        backup("b40", 40 * DAY),
        backup("b35", 35 * DAY),
        backup("b20", 20 * DAY),
        backup("b1", DAY),
    ]
    assert plan(backups, count_min=1, age_days=30) == {
        "b40": ("delete", "expired"),  # b35 covers the window's start
        "b35": ("keep", "window"),  # restores to 30 days ago start from it
        "b20": ("keep", "window"),
        "b1": ("keep", "newest"),
    }


def test_a_backup_exactly_at_the_start_of_the_window_covers_it() -> None:
    backups = [backup("old", 31 * DAY), backup("edge", 30 * DAY), backup("new", DAY)]
    assert plan(backups, age_days=30)["old"] == ("delete", "expired")
    assert plan(backups, age_days=30)["edge"] == ("keep", "window")


def test_backup_count_min_keeps_expired_backups_and_count_max_caps_the_window() -> None:
    backups = [backup("b40", 40 * DAY), backup("b35", 35 * DAY), backup("b1", DAY)]
    assert plan(backups, count_min=3, age_days=30)["b40"] == ("keep", "count-min")
    many = daily(10)
    decided = plan(many, count_max=4, age_days=30)
    assert [b for b, (action, _) in decided.items() if action == "keep"] == [
        "b7",
        "b8",
        "b9",
        "b10",
    ]
    assert decided["b6"] == ("delete", "count-max")


def test_reasons_name_the_rule_and_the_numbers() -> None:
    backups = [backup("b40", 40 * DAY), backup("b35", 35 * DAY), backup("b1", DAY)]
    policy = RetentionPolicy(0, 2, timedelta(days=30))
    reasons = {d.backup_id: d.reason for d in plan_retention(backups, policy, NOW)}
    assert reasons["b40"] == "2 newer usable backups exist; backup_count_max is 2"
    assert reasons["b35"] == (
        "restores to the start of the 30-day window (backup_age_days_max), "
        "2026-02-08 12:00:00 UTC, start from it"
    )
    assert reasons["b1"] == "the newest backup that can be restored"
    policy = RetentionPolicy(0, 5, timedelta(days=30))
    reasons = {d.backup_id: d.reason for d in plan_retention(backups, policy, NOW)}
    assert reasons["b40"] == (
        "b35, newer, was taken 2026-02-03 12:00:00 UTC, before the 30-day window "
        "(backup_age_days_max) began at 2026-02-08 12:00:00 UTC: no restore in the window "
        "starts from this one"
    )


def test_an_open_stream_and_a_preserved_backup_are_never_deleted() -> None:
    backups = [
        backup("open", 9 * DAY, open=True),
        backup("kept", 8 * DAY, preserve_until=NOW + DAY),
        backup("lapsed", 7 * DAY, preserve_until=NOW - DAY),
        backup("unreadable", 6 * DAY, preserve_unreadable="corrupt"),
        backup("new", DAY),
    ]
    assert plan(backups, count_max=1) == {
        "open": ("keep", "open-stream"),
        "kept": ("keep", "preserved"),
        "lapsed": ("delete", "count-max"),
        "unreadable": ("keep", "preserved"),
        "new": ("keep", "newest"),
    }
    reasons = {d.backup_id: d.reason for d in plan_retention(backups, RetentionPolicy(0, 1), NOW)}
    assert reasons["kept"] == "preserved until 2026-03-11 12:00:00 UTC"
    assert "cannot be read (corrupt)" in reasons["unreadable"]


def test_broken_backups_count_for_nothing_and_go_once_a_newer_one_can_be_restored() -> None:
    backups = [
        backup("u1", 5 * DAY),
        backup("x2", 4 * DAY, broken="its manifest is corrupt"),
        backup("u3", 3 * DAY),
        backup("x4", 2 * DAY, broken="marked broken"),
        backup("x5", DAY, broken="marked broken", preserve_until=NOW + DAY),
    ]
    decided = plan(backups, count_min=2, count_max=2)
    assert decided == {
        "u1": ("keep", "count-min"),  # broken ones do not take its place
        "x2": ("delete", "broken"),
        "u3": ("keep", "newest"),
        "x4": ("keep", "broken"),  # nothing newer can be restored
        "x5": ("keep", "preserved"),
    }
    reasons = {d.backup_id: d.reason for d in plan_retention(backups, RetentionPolicy(2, 2), NOW)}
    assert reasons["x2"] == "broken (its manifest is corrupt); u3, newer, can be restored"
    assert reasons["x4"] == "broken (marked broken), but no newer backup can be restored"


def test_a_backup_whose_manifest_cannot_be_read_is_ordered_by_its_id() -> None:
    backups = [
        RetentionCandidate("20260301T000000Z-aaaaaaaa", None, broken="manifest corrupt"),
        backup("new", DAY),
        RetentionCandidate("20260309T230000Z-bbbbbbbb", None, broken="manifest corrupt"),
    ]
    assert plan(backups) == {
        "20260301T000000Z-aaaaaaaa": ("delete", "broken"),
        "new": ("keep", "newest"),
        "20260309T230000Z-bbbbbbbb": ("keep", "broken"),
    }


def test_a_kept_incremental_keeps_its_whole_chain() -> None:
    f1 = backup("f1", 6 * DAY)
    i1 = backup("i1", 5 * DAY, parent=f1)
    i2 = backup("i2", 4 * DAY, parent=i1)
    f2 = backup("f2", 3 * DAY)
    i3 = backup("i3", 2 * DAY, parent=f2)
    assert plan([f1, i1, i2, f2, i3], count_max=2) == {
        "f1": ("delete", "count-max"),
        "i1": ("delete", "count-max"),
        "i2": ("delete", "count-max"),
        "f2": ("keep", "window"),
        "i3": ("keep", "newest"),
    }
    decided = plan([f1, i1, i2, f2, i3], count_max=1)
    assert decided["f2"] == ("keep", "parent")
    # A preserved incremental keeps the backups it builds on, however old.
    i2 = backup("i2", 4 * DAY, parent=i1, preserve_until=NOW + DAY)
    decided = plan([f1, i1, i2, f2, i3], count_max=1)
    assert decided["f1"] == decided["i1"] == ("keep", "parent")
    reasons = {
        d.backup_id: d.reason
        for d in plan_retention([f1, i1, i2, f2, i3], RetentionPolicy(0, 1), NOW)
    }
    assert reasons["f1"] == "incremental i2, kept, builds on it"


def test_grandfather_father_son_keeps_the_newest_of_each_period_on_top() -> None:
    # Every 12 hours for 10 days: two backups a day.
    backups = [backup(f"h{n}", n * 12 * timedelta(hours=1)) for n in range(20, 0, -1)]
    decided = plan(backups, count_max=1, gfs=GfsCounts(daily=3))
    kept = [b for b, (action, _) in decided.items() if action == "keep"]
    # NOW is 12:00: h1 (00:00 today) is today's newest, h2 (12:00) yesterday's, h4 the
    # day before's.
    assert kept == ["h4", "h2", "h1"]
    assert decided["h2"] == ("keep", "gfs")
    reasons = {
        d.backup_id: d.reason
        for d in plan_retention(backups, RetentionPolicy(0, 1, gfs=GfsCounts(daily=3)), NOW)
    }
    assert reasons["h2"] == "the newest backup of 2026-03-09 (retention.daily 3)"


@pytest.mark.parametrize(
    ("gfs", "label"),
    [
        # The last 2 hours *that have a backup*: 11:00 today (the newest) and 3 days ago.
        (GfsCounts(hourly=2), "2026-03-07 12:00 UTC (retention.hourly 2)"),
        (GfsCounts(weekly=2), "2026-W10 (retention.weekly 2)"),
        (GfsCounts(monthly=2), "2026-02 (retention.monthly 2)"),
        (GfsCounts(yearly=2), "2025 (retention.yearly 2)"),
    ],
)
def test_grandfather_father_son_periods(gfs: GfsCounts, label: str) -> None:
    times = [
        NOW - timedelta(days=400),
        NOW - timedelta(days=30),
        NOW - timedelta(days=3),
        NOW - timedelta(minutes=50),
        NOW - timedelta(minutes=10),
    ]
    backups = [RetentionCandidate(f"t{i}", t, chain=(f"t{i}",)) for i, t in enumerate(times)]
    decisions = plan_retention(backups, RetentionPolicy(0, 1, gfs=gfs), NOW)
    assert [d.reason for d in decisions if d.rule == "gfs"] == [f"the newest backup of {label}"]


def test_now_must_have_a_time_zone() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        plan_retention([], RetentionPolicy(0, 1), NOW.replace(tzinfo=None))


def test_deleting_by_hand_says_what_retention_would_refuse() -> None:
    f1 = backup("f1", 6 * DAY)
    i1 = backup("i1", 5 * DAY, parent=f1)
    f2 = backup("f2", 4 * DAY, open=True, preserve_until=NOW + DAY)
    f3 = backup("f3", 3 * DAY)
    backups = [f1, i1, f2, f3]
    assert plan_deletion(backups, "nope", NOW) is None
    whole = plan_deletion(backups, "f1", NOW)
    assert whole is not None
    assert whole.backup_ids == ("i1", "f1")  # the incremental first
    assert whole.refusals == ("incremental backups build on f1 and would be deleted with it: i1",)
    single = plan_deletion(backups, "i1", NOW)
    assert single is not None and single.backup_ids == ("i1",) and single.refusals == ()
    open_one = plan_deletion(backups, "f2", NOW)
    assert open_one is not None
    assert open_one.refusals == ("its stream is open: it still receives binlogs",)
    newest = plan_deletion(backups, "f3", NOW)
    assert newest is not None
    assert newest.refusals == ("the newest backup that can be restored",)
    i2 = backup("i2", 2 * DAY, parent=f3)
    with_newest = plan_deletion([f1, i1, f2, f3, i2], "f3", NOW)
    assert with_newest is not None
    assert with_newest.refusals == (
        "i2, which builds on it: the newest backup that can be restored",
        "incremental backups build on f3 and would be deleted with it: i2",
    )


# --- invariants on random catalogs ----------------------------------------------------------
@st.composite
def catalogs(draw: st.DrawFn) -> list[RetentionCandidate]:
    count = draw(st.integers(0, 12))
    backups: list[RetentionCandidate] = []
    for n in range(count):
        age = timedelta(hours=draw(st.integers(0, 24 * 60)))
        parent = draw(st.sampled_from([None, *backups])) if backups else None
        backups.append(
            backup(
                f"b{n}",
                age,
                parent=parent,
                open=draw(st.booleans()),
                broken=draw(st.sampled_from([None, None, "broken"])),
                preserve_until=draw(st.sampled_from([None, NOW + DAY, NOW - DAY])),
            )
        )
    return backups


@settings(max_examples=300, deadline=None)
@given(
    catalogs(),
    st.integers(0, 5),
    st.integers(1, 8),
    st.sampled_from([None, 1.0, 7.0, 30.0]),
    st.builds(GfsCounts, daily=st.integers(0, 3), monthly=st.integers(0, 2)),
)
def test_what_retention_never_deletes(
    backups: list[RetentionCandidate],
    count_min: int,
    extra: int,
    age_days: float | None,
    gfs: GfsCounts,
) -> None:
    policy = RetentionPolicy(
        count_min, count_min + extra, None if age_days is None else timedelta(days=age_days), gfs
    )
    decisions = plan_retention(backups, policy, NOW)
    assert sorted(d.backup_id for d in decisions) == sorted(b.backup_id for b in backups)
    kept = {d.backup_id for d in decisions if d.keep}
    by_id = {b.backup_id: b for b in backups}
    usable = sorted((b for b in backups if b.broken is None), key=lambda b: (b.time, b.backup_id))
    if usable:
        assert usable[-1].backup_id in kept
    assert len(kept & {b.backup_id for b in usable}) >= min(count_min, len(usable))
    for b in backups:
        if (b.open and b.broken is None) or (b.preserve_until or NOW) > NOW:
            assert b.backup_id in kept
    for backup_id in kept:
        assert set(by_id[backup_id].chain) <= kept
