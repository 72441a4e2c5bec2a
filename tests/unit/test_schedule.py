"""The backup schedule: which type, and when a backup is due (pure, UTC)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from binhoard import config
from binhoard.domain.manifest import (
    BackupManifest,
    BackupType,
    LsnRange,
    ObjectRef,
    SnapshotPosition,
)
from binhoard.domain.schedule import (
    WEEKDAYS,
    backup_due,
    choose_backup_type,
    format_utc,
    incremental_parent,
    latest_slot,
    next_slot,
)

SERVER = 7
OTHER = 8


def at(text: str) -> datetime:
    """``2026-11-21 03:00`` in UTC (2026-11-21 is a Saturday)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ref(key: str) -> ObjectRef:
    return ObjectRef(key, "zstd", (), 1, "0" * 64, 1, "0" * 64)


def backup(
    started: datetime, backup_type: BackupType = "full", server_id: int = SERVER, tag: str = "0"
) -> BackupManifest:
    backup_id = f"{started.astimezone(UTC):%Y%m%dT%H%M%SZ}-{tag * 8}"
    return BackupManifest(
        backup_id=backup_id,
        backup_type=backup_type,
        parent_backup_id=None,
        chain=(backup_id,),
        server_id=server_id,
        flavour="mariadb",
        server_version="10.11.19-MariaDB",
        tool_version="mariabackup",
        started_at=started,
        completed_at=started + timedelta(minutes=5),
        snapshot=SnapshotPosition("binlog.000001", 4, ""),
        lsn=LsnRange(0, 0, 0),
        data=ref(f"backups/{backup_id}/data"),
        my_cnf=ref(f"backups/{backup_id}/my.cnf"),
    )


def test_weekday_names_are_the_configuration_s() -> None:
    assert WEEKDAYS == config.WEEKDAYS


# --- incremental or full ---------------------------------------------------------------------
def test_incremental_parent_is_the_newest_backup_of_the_same_server() -> None:
    old = backup(at("2026-11-19 03:00"))
    newer = backup(at("2026-11-20 03:00"), "incremental")
    foreign = backup(at("2026-11-21 03:00"), server_id=OTHER)
    assert incremental_parent([newer, foreign, old], SERVER) == newer
    assert incremental_parent([foreign], SERVER) is None
    # Within one second the id does not order backups; the start time does.
    first = backup(at("2026-11-21 03:00:00.100000"), tag="f")
    second = backup(at("2026-11-21 03:00:00.900000"), "incremental", tag="0")
    assert incremental_parent([second, first], SERVER) == second
    assert incremental_parent([], SERVER) is None


SAT_NOON = at("2026-11-21 12:00")
FRI_FULL = backup(at("2026-11-20 03:00"))
SAT_FULL = backup(at("2026-11-21 03:00"))
SAT_INC = backup(at("2026-11-21 09:00"), "incremental")
SAT_FULL_OTHER = backup(at("2026-11-21 04:00"), server_id=OTHER)

TYPE_CASES = [
    # (enabled, days, backups, expected, reason contains)
    (False, {"sat"}, [FRI_FULL], "full", "disabled"),
    (False, {"sun"}, [FRI_FULL, SAT_INC], "full", "disabled"),
    (True, {"sun"}, [], "full", "no earlier backup of server_id 7"),
    (True, {"sun"}, [SAT_FULL_OTHER], "full", "no earlier backup of server_id 7"),
    (
        True,
        {"sun"},
        [FRI_FULL],
        "incremental",
        f"sat is not a full-backup day; building on {FRI_FULL.backup_id}",
    ),
    (True, {"mon", "sun"}, [FRI_FULL, SAT_INC], "incremental", SAT_INC.backup_id),
    (True, {"sat"}, [FRI_FULL], "full", "sat is a full-backup day"),
    (True, {"sat"}, [FRI_FULL, SAT_FULL_OTHER], "full", "sat is a full-backup day"),
    (
        True,
        {"sat"},
        [FRI_FULL, SAT_FULL],
        "incremental",
        f"today's full backup {SAT_FULL.backup_id}",
    ),
    (True, {"fri", "sat"}, [SAT_FULL, SAT_INC], "incremental", f"building on {SAT_INC.backup_id}"),
    # An incremental taken today is not today's full backup.
    (True, {"sat"}, [FRI_FULL, SAT_INC], "full", "sat is a full-backup day"),
]


@pytest.mark.parametrize(("enabled", "days", "backups", "expected", "reason"), TYPE_CASES)
def test_choose_backup_type(
    enabled: bool,
    days: set[str],
    backups: Sequence[BackupManifest],
    expected: BackupType,
    reason: str,
) -> None:
    choice = choose_backup_type(SAT_NOON, backups, SERVER, enabled, days)
    assert choice.backup_type == expected
    assert reason in choice.reason


def test_the_day_is_the_utc_day_whatever_the_zones_of_now_and_the_backups() -> None:
    # 01:00 on Sunday at UTC+2 is 23:00 on Saturday, UTC.
    now = datetime(2026, 11, 22, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert choose_backup_type(now, [FRI_FULL], SERVER, True, {"sun"}).backup_type == "incremental"
    assert choose_backup_type(now, [FRI_FULL], SERVER, True, {"sat"}).backup_type == "full"
    # Started 23:30 Friday at UTC-5: 04:30 Saturday UTC, so Saturday's full backup exists.
    late_friday = backup(datetime(2026, 11, 20, 23, 30, tzinfo=timezone(timedelta(hours=-5))))
    choice = choose_backup_type(now, [late_friday], SERVER, True, {"sat"})
    assert choice.backup_type == "incremental"


def test_refuses_naive_times_and_unknown_days() -> None:
    with pytest.raises(ValueError, match="time zone"):
        choose_backup_type(datetime(2026, 11, 21), [FRI_FULL], SERVER, True, {"sat"})
    with pytest.raises(ValueError, match="weekday"):
        choose_backup_type(SAT_NOON, [FRI_FULL], SERVER, True, {"saturday"})
    with pytest.raises(ValueError, match="time zone"):
        backup_due(datetime(2026, 11, 21), [], 3, 0, 1440)


# --- when ------------------------------------------------------------------------------------
SLOT_CASES = [
    # ((hour, minute, interval), now, latest slot, next slot)
    ((3, 0, 1440), "2026-11-21 12:00", "2026-11-21 03:00", "2026-11-22 03:00"),
    ((3, 0, 1440), "2026-11-21 02:59:59", "2026-11-20 03:00", "2026-11-21 03:00"),
    ((3, 0, 1440), "2026-11-21 03:00", "2026-11-21 03:00", "2026-11-22 03:00"),
    ((23, 45, 1440), "2026-11-21 00:10", "2026-11-20 23:45", "2026-11-21 23:45"),
    # Four a day, from 03:00.
    ((3, 0, 360), "2026-11-21 10:00", "2026-11-21 09:00", "2026-11-21 15:00"),
    ((3, 0, 360), "2026-11-21 02:00", "2026-11-20 21:00", "2026-11-21 03:00"),
    ((3, 0, 360), "2026-11-21 21:00", "2026-11-21 21:00", "2026-11-22 03:00"),
    # 7 hours does not divide a day: 03:00, 10:00, 17:00, 00:00, then 03:00 again.
    ((3, 0, 420), "2026-11-21 01:00", "2026-11-21 00:00", "2026-11-21 03:00"),
    ((3, 0, 420), "2026-11-21 18:30", "2026-11-21 17:00", "2026-11-22 00:00"),
    ((3, 0, 420), "2026-11-21 03:00", "2026-11-21 03:00", "2026-11-21 10:00"),
    ((0, 30, 60), "2026-11-21 14:29", "2026-11-21 13:30", "2026-11-21 14:30"),
    ((0, 0, 1), "2026-11-21 14:29:30", "2026-11-21 14:29", "2026-11-21 14:30"),
    # Longer than a day: counted from 1970-01-01 03:00 (day 20778, 2026-11-21, is even).
    ((3, 0, 2880), "2026-11-22 12:00", "2026-11-21 03:00", "2026-11-23 03:00"),
    ((3, 0, 2880), "2026-11-21 02:00", "2026-11-19 03:00", "2026-11-21 03:00"),
]


@pytest.mark.parametrize(("schedule", "now", "latest", "following"), SLOT_CASES)
def test_slots(schedule: tuple[int, int, int], now: str, latest: str, following: str) -> None:
    assert latest_slot(at(now), *schedule) == at(latest)
    assert next_slot(at(now), *schedule) == at(following)


def test_slots_of_a_time_in_another_zone_are_in_utc() -> None:
    now = datetime(2026, 11, 21, 4, 30, tzinfo=timezone(timedelta(hours=2)))  # 02:30 UTC
    assert latest_slot(now, 3, 0, 1440) == at("2026-11-20 03:00")
    assert next_slot(now, 3, 0, 1440) == at("2026-11-21 03:00")
    assert latest_slot(now, 3, 0, 1440).tzinfo == UTC


DUE_CASES = [
    # (backups, due, reason contains)
    ([], True, "no backup exists"),
    ([backup(at("2026-11-21 02:59"))], True, "no backup started since"),
    ([backup(at("2026-11-21 03:00"))], False, "after the latest scheduled time"),
    ([backup(at("2026-11-21 03:00:05"), "incremental")], False, "2026-11-21 03:00:05 UTC"),
    ([backup(at("2026-11-21 11:00"), server_id=OTHER)], False, "after the latest"),
    ([backup(at("2026-11-21 11:00")), backup(at("2026-11-20 03:00"))], False, "11:00:00"),
]


@pytest.mark.parametrize(("backups", "due", "reason"), DUE_CASES)
def test_backup_due(backups: Sequence[BackupManifest], due: bool, reason: str) -> None:
    result = backup_due(SAT_NOON, backups, 3, 0, 1440)
    assert result.due is due
    assert reason in result.reason
    assert result.slot == at("2026-11-21 03:00")
    assert result.next_at == at("2026-11-22 03:00")


def test_format_utc() -> None:
    local = datetime(2026, 11, 21, 5, 0, 7, tzinfo=timezone(timedelta(hours=2)))
    assert format_utc(local) == "2026-11-21 03:00:07 UTC"


# --- properties ------------------------------------------------------------------------------
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
schedules = st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(1, 3 * 1440))


@given(moments, offsets, schedules)
def test_now_lies_between_consecutive_slots(
    now: datetime, zone: timezone, schedule: tuple[int, int, int]
) -> None:
    now = now.astimezone(zone)
    latest, following = latest_slot(now, *schedule), next_slot(now, *schedule)
    assert latest <= now < following
    # Both are slots, and none lies between them.
    assert latest_slot(latest, *schedule) == latest
    assert latest_slot(following, *schedule) == following
    assert latest_slot(following - timedelta(microseconds=1), *schedule) == latest
    assert following - latest <= timedelta(minutes=schedule[2])


@given(moments, st.integers(0, 23), st.integers(0, 59), st.integers(1, 1440))
def test_each_day_s_hour_minute_is_a_slot(
    now: datetime, hour: int, minute: int, interval: int
) -> None:
    day_anchor = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    assert latest_slot(day_anchor, hour, minute, interval) == day_anchor


@given(moments, schedules, st.integers(0, 10**6))
def test_a_backup_at_the_latest_slot_is_not_due_and_one_before_it_is(
    now: datetime, schedule: tuple[int, int, int], seconds_before: int
) -> None:
    slot = latest_slot(now, *schedule)
    taken = backup_due(now, [backup(slot, server_id=OTHER)], *schedule)
    assert not taken.due
    assert taken.next_at > now
    assert taken.next_at == next_slot(now, *schedule)
    earlier = slot - timedelta(seconds=1 + seconds_before)
    missed = backup_due(now, [backup(earlier)], *schedule)
    assert missed.due
    assert missed.slot == slot
