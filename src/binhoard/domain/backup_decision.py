"""Whether to take a backup now, of which type, and on which parent: pure, from the
site's backups, the schedule and an explicit ``now`` (``domain/schedule.py`` has the
rules; this combines them the way ``binhoard backup create`` and the daemon ask).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from binhoard.domain.errors import NotFoundError
from binhoard.domain.manifest import BackupManifest, BackupType
from binhoard.domain.schedule import Due, backup_due, choose_backup_type, incremental_parent


@dataclass(frozen=True)
class BackupSchedule:
    """``backup_settings`` as the decision needs them (UTC hour and minute, interval,
    incremental backups and the days of full ones)."""

    hour: int
    minute: int
    interval_minutes: int
    incremental_enabled: bool = False
    full_backup_days: Collection[str] = frozenset()


@dataclass(frozen=True)
class BackupDecision:
    """What ``take_backup`` decided, reported before the backup starts."""

    backup_type: BackupType | None  # None: no backup now
    reason: str  # why this type, or why no backup
    schedule: Due | None = None  # what the schedule said, when asked (``if_due``)


def decide_backup(
    schedule: BackupSchedule,
    server_id: int,
    backups: Sequence[BackupManifest],
    now: datetime,
    *,
    requested: BackupType | None = None,
    if_due: bool = False,
) -> BackupDecision:
    """Whether to take a backup now and which type: the schedule's answer (``backup_due``)
    when ``if_due``, then the type asked for, else the schedule's (``choose_backup_type``)."""
    due = None
    if if_due:
        due = backup_due(now, backups, schedule.hour, schedule.minute, schedule.interval_minutes)
        if not due.due:
            return BackupDecision(None, due.reason, due)
    if requested is not None:
        return BackupDecision(requested, f"{requested} backup requested", due)
    choice = choose_backup_type(
        now,
        backups,
        server_id,
        schedule.incremental_enabled,
        schedule.full_backup_days,
    )
    return BackupDecision(choice.backup_type, choice.reason, due)


def choose_parent(backups: Sequence[BackupManifest], server_id: int) -> BackupManifest:
    """The backup an incremental builds on (``incremental_parent``); raises if none."""
    parent = incremental_parent(backups, server_id)
    if parent is None:
        raise NotFoundError(
            f"no earlier backup of server_id {server_id} to build an incremental backup on"
        )
    return parent
