"""Restore tests, decided: when one is due, whether a backup fits the scratch space the
settings allow, which ``server_id`` the scratch server takes, and what its checks mean.

Pure: times are given (UTC, timezone-aware), sizes are given. ``ops/restore_test.py``
does the work; the daemon's controller and ``binhoard restore-test`` decide with these.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from binhoard.domain.errors import format_bytes
from binhoard.domain.schedule import Due, format_utc, latest_slot, next_slot

# ``BackupManifest.extra`` key recording the marker row (``ops/backup.py``): "written",
# or why none was (a read-only server, a missing privilege, ``write_marker`` off).
MARKER_EXTRA = "marker"
MARKER_WRITTEN = "written"
# Not only a replica's: a promoted primary is read-only until the operator sets
# read_only=OFF, and its first backup is taken at once (docs/failover.md).
READ_ONLY_NO_MARKER = "the server was read-only when the backup was taken: no marker written"
# What backups recorded for it before, which named every read-only server a replica.
_READ_ONLY_BEFORE = "the server is read-only (a replica): no marker written"

# The largest server_id MariaDB takes; scratch servers count down from it.
MAX_SERVER_ID = 2**32 - 1


def restore_test_due(
    now: datetime,
    last_started: datetime | None,
    hour: int,
    minute: int,
    interval_minutes: int,
) -> Due:
    """Whether a scheduled restore test is due: none started since the latest slot
    (the slots of ``backup_hour``/``backup_minute``/``backup_interval_minutes``, with
    ``restore_test``'s own values: ``domain/schedule.latest_slot``)."""
    slot = latest_slot(now, hour, minute, interval_minutes)
    following = next_slot(now, hour, minute, interval_minutes)
    if last_started is not None and last_started >= slot:
        why = f"the last test started at {format_utc(last_started)}, after {format_utc(slot)}"
        return Due(due=False, next_at=following, reason=why, slot=slot)
    why = f"no restore test since the scheduled time {format_utc(slot)}"
    return Due(due=True, next_at=following, reason=why, slot=slot)


def disk_needed(chain_plain_bytes: int, binlog_bytes: int, binlog_budget: int) -> int:
    """What a test of a backup takes on the scratch file system at its peak, about: the
    extracted chain (the datadir it becomes), the binlogs downloaded but not applied yet
    (at most ``restore_max_binlog_bytes``), and as much again of binlogs the scratch
    server writes while applying them (``log_slave_updates``)."""
    return chain_plain_bytes + 2 * min(binlog_bytes, binlog_budget)


def disk_problem(needed: int, free: int, max_bytes: int | None) -> str | None:
    """Why a test needing ``needed`` bytes must not start (``None``: it may): more than
    ``restore_test.max_disk_bytes``, or more than the scratch file system has free."""
    if max_bytes is not None and needed > max_bytes:
        return (
            f"it needs about {format_bytes(needed)} of scratch space, more than "
            f"restore_test.max_disk_bytes ({format_bytes(max_bytes)})"
        )
    if needed > free:
        return (
            f"it needs about {format_bytes(needed)} of scratch space and the scratch "
            f"directory's file system has {format_bytes(free)} free"
        )
    return None


def scratch_server_id(known: Collection[int]) -> int:
    """A ``server_id`` for the scratch server that none of the site's servers has: a
    restore refuses a target with its source's id (``domain/restore_target.py``)."""
    candidate = MAX_SERVER_ID
    while candidate in known:
        candidate -= 1
    return candidate


def marker_missing_reason(extra: Mapping[str, object]) -> str | None:
    """``None`` when the backup's source wrote its marker row; else why it did not
    (a backup taken before markers existed says so too)."""
    recorded = extra.get(MARKER_EXTRA)
    if recorded == MARKER_WRITTEN:
        return None
    if recorded is None:
        return "the backup records no marker (taken without one)"
    if recorded == _READ_ONLY_BEFORE:
        return READ_ONLY_NO_MARKER
    return str(recorded)


@dataclass(frozen=True)
class TableCheck:
    """One table's ``CHECK TABLE``: ``ok`` when its last status row says OK."""

    table: str  # schema.table
    ok: bool
    message: str


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str  # one sentence: what passed, or the first thing that failed


def judge(
    backup_id: str,
    tables: Sequence[TableCheck],
    *,
    marker_skipped: str | None,
    marker_found: bool,
) -> Verdict:
    """The result of a restore test whose restore completed: every table checks OK, and
    the marker row of ``backup_id`` is there unless the source wrote none
    (``marker_skipped`` says why; then it is not held against the backup)."""
    bad = [t for t in tables if not t.ok]
    problems = []
    if bad:
        listed = "; ".join(f"{t.table}: {t.message}" for t in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        problems.append(
            f"CHECK TABLE failed for {len(bad)} of {len(tables)} tables: {listed}{more}"
        )
    if marker_skipped is None and not marker_found:
        problems.append(
            f"the marker row of backup {backup_id} is missing from "
            "binhoard.backup_marker (its source wrote it before the backup)"
        )
    if problems:
        return Verdict(False, "; ".join(problems))
    marker = (
        f"marker of {backup_id} found" if marker_skipped is None else f"no marker: {marker_skipped}"
    )
    return Verdict(True, f"{len(tables)} tables checked OK; {marker}")
