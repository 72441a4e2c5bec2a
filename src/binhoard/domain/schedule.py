"""When a backup is due, and whether it is full or incremental: pure, all times in UTC.

Every function takes ``now`` explicitly and must be given timezone-aware datetimes; they
are compared and printed in UTC, the zone of ``backup_hour``/``backup_minute``, so that
the schedule never moves with the host's time zone or its daylight saving changes.

The CLI (``binhoard backup create``, ``--if-due``) and the daemon use these same
functions, so a cron line and the daemon take the same backups.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from binhoard.domain.manifest import BackupManifest, BackupType

# Indexed by ``datetime.weekday()``; the names of ``full_backup_week_schedule``.
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY = timedelta(days=1)
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        # A naive time could be local or UTC; guessing would move the schedule by hours.
        raise ValueError(f"{moment.isoformat()} has no time zone")
    return moment.astimezone(UTC)


def format_utc(moment: datetime) -> str:
    """``2026-11-21 03:00:00 UTC``: how the schedule's times are shown to people."""
    return f"{_utc(moment):%Y-%m-%d %H:%M:%S} UTC"


# --- incremental or full ---------------------------------------------------------------------
def incremental_parent(backups: Sequence[BackupManifest], server_id: int) -> BackupManifest | None:
    """The backup an incremental builds on: the newest one taken of this same server.

    LSNs are physical positions in one server's InnoDB; another server's backups (before
    a failover) cannot be a parent. Newest by start time to the microsecond: backup ids
    have whole seconds, and two quick backups can start within the same one.
    """
    candidates = [b for b in backups if b.server_id == server_id]
    return max(candidates, key=_start_order) if candidates else None


def _start_order(backup: BackupManifest) -> tuple[datetime, str]:
    return _utc(backup.started_at), backup.backup_id


class BackupChoice(NamedTuple):
    backup_type: BackupType
    reason: str  # one sentence for people: why this type


def choose_backup_type(
    now: datetime,
    backups: Sequence[BackupManifest],
    server_id: int,
    incremental_enabled: bool,
    full_backup_days: Collection[str],
) -> BackupChoice:
    """Full or incremental, by ``backup_settings.incremental``.

    Full when incrementals are disabled, when this server has no backup to build on, or
    when ``now`` falls on a full-backup day (UTC) on which no full backup of this server
    has started yet; incremental otherwise.
    """
    unknown = set(full_backup_days) - set(WEEKDAYS)
    if unknown:
        raise ValueError(f"unknown weekday names {sorted(unknown)}")
    now = _utc(now)
    if not incremental_enabled:
        return BackupChoice("full", "incremental backups are disabled")
    parent = incremental_parent(backups, server_id)
    if parent is None:
        return BackupChoice(
            "full", f"there is no earlier backup of server_id {server_id} to build on"
        )
    today = WEEKDAYS[now.weekday()]
    if today in full_backup_days:
        full_today = _full_backup_on(now, backups, server_id)
        if full_today is None:
            return BackupChoice(
                "full", f"{today} is a full-backup day and no full backup was taken today (UTC)"
            )
        return BackupChoice(
            "incremental",
            f"today's full backup {full_today.backup_id} exists; building on {parent.backup_id}",
        )
    return BackupChoice(
        "incremental", f"{today} is not a full-backup day; building on {parent.backup_id}"
    )


def _full_backup_on(
    now: datetime, backups: Sequence[BackupManifest], server_id: int
) -> BackupManifest | None:
    """A full backup of this server started on ``now``'s UTC day, if there is one."""
    for backup in backups:
        if (
            backup.server_id == server_id
            and backup.backup_type == "full"
            and _utc(backup.started_at).date() == now.date()
        ):
            return backup
    return None


# --- when ------------------------------------------------------------------------------------
def latest_slot(now: datetime, hour: int, minute: int, interval_minutes: int) -> datetime:
    """The most recent scheduled time at or before ``now``.

    With an interval of a day or less, slots are ``hour:minute`` UTC each day and every
    ``interval_minutes`` after it until the next day's ``hour:minute``, where the count
    starts again (360: four a day; 420: 03:00, 10:00, 17:00, 00:00, then 03:00). A longer
    interval cannot restart daily; its slots are every ``interval_minutes`` counted from
    ``hour:minute`` on 1970-01-01 (2880: every other day at ``hour:minute``).
    """
    now = _utc(now)
    anchor = _anchor(now, hour, minute, interval_minutes)
    step = timedelta(minutes=interval_minutes)
    return anchor + step * ((now - anchor) // step)


def next_slot(now: datetime, hour: int, minute: int, interval_minutes: int) -> datetime:
    """The first scheduled time strictly after ``now`` (see ``latest_slot``)."""
    now = _utc(now)
    anchor = _anchor(now, hour, minute, interval_minutes)
    following = latest_slot(now, hour, minute, interval_minutes) + timedelta(
        minutes=interval_minutes
    )
    if interval_minutes <= DAY // timedelta(minutes=1):
        return min(following, anchor + DAY)
    return following


def _anchor(now: datetime, hour: int, minute: int, interval_minutes: int) -> datetime:
    """Where the slots containing ``now`` are counted from (see ``latest_slot``)."""
    if interval_minutes < 1:
        raise ValueError(f"interval_minutes must be at least 1, got {interval_minutes}")
    if interval_minutes > DAY // timedelta(minutes=1):
        return _UNIX_EPOCH.replace(hour=hour, minute=minute)
    today = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return today if today <= now else today - DAY


@dataclass(frozen=True)
class Due:
    due: bool
    next_at: datetime  # the first slot after now
    reason: str
    slot: datetime  # the latest slot at or before now: the one a backup is due for


def backup_due(
    now: datetime,
    backups: Sequence[BackupManifest],
    hour: int,
    minute: int,
    interval_minutes: int,
) -> Due:
    """Whether a scheduled backup is due: the latest slot has no backup started at or
    after it. A backup of any server counts (after a failover the new primary's first
    backup serves the slot too)."""
    now = _utc(now)
    slot = latest_slot(now, hour, minute, interval_minutes)
    following = next_slot(now, hour, minute, interval_minutes)
    newest = max(backups, key=_start_order, default=None)
    if newest is not None and _utc(newest.started_at) >= slot:
        reason = (
            f"backup {newest.backup_id} started at {format_utc(newest.started_at)}, "
            f"after the latest scheduled time {format_utc(slot)}"
        )
        return Due(due=False, next_at=following, reason=reason, slot=slot)
    if newest is None:
        reason = f"no backup exists; scheduled time {format_utc(slot)}"
    else:
        reason = (
            f"no backup started since the scheduled time {format_utc(slot)} "
            f"(newest: {newest.backup_id})"
        )
    return Due(due=True, next_at=following, reason=reason, slot=slot)
